"""Transcription and translation with faster-whisper (CTranslate2) on the CPU.

Segments are decoded lazily by faster-whisper, so they are handed on one by one: a
streamed transcription sends its first words while later audio is still being decoded.
Silero VAD (bundled with faster-whisper) drops silence and splits long audio; the
temperature fallback is capped because on garbled audio it can loop for many seconds.

The encoder sees each window cut to its speech plus a margin (option ``window``,
``"fitted"`` by default; ``"full"`` pads to Whisper's 30 s as faster-whisper does), and a
detected language reuses the decode's encoding (:mod:`.whisper_window`): a 5 s turn took
0.3 s instead of 1.3 s on two cores, with the same words on the recorded turns.
"""

from __future__ import annotations

import math
import os
from typing import AsyncIterator

import numpy as np

from ..base import (
    InvalidInput,
    Segment,
    TranscriptionEngine,
    TranscriptionInfo,
    TranscriptionOptions,
    TranscriptionStream,
    Word,
)
from .assets import resolve_whisper_weights

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_FALLBACK_STEPS = 2
_FALLBACK_STEP = 0.2


class FasterWhisperEngine(TranscriptionEngine):

    def __init__(
        self,
        name,
        context,
        *,
        weights: str = "whisper-base",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        beam_size: int = 1,
        window: str = "fitted",
    ) -> None:
        super().__init__(name, context)
        self.weights = weights
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads or min(4, os.cpu_count() or 1)
        self.beam_size = beam_size
        if window not in ("fitted", "full"):
            raise ValueError(f"window must be 'fitted' or 'full', not {window!r}")
        self.window = window
        self._model = None

    def load(self) -> None:
        from faster_whisper import WhisperModel

        from .whisper_window import FittedWhisper

        path = resolve_whisper_weights(self.weights, self.context.cache_dir)
        model_class = FittedWhisper if self.window == "fitted" else WhisperModel
        self._model = model_class(
            str(path),
            device="cpu",
            compute_type=self.compute_type,
            cpu_threads=self.cpu_threads,
        )

    def unload(self) -> None:
        self._model = None

    @property
    def multilingual(self) -> bool:
        return bool(self._model is not None and self._model.model.is_multilingual)

    def _check(self, options: TranscriptionOptions) -> None:
        if self.multilingual:
            return
        if options.task == "translate":
            raise InvalidInput(
                f"The model '{self.name}' is English-only and cannot translate.", param="model"
            )
        if options.language not in (None, "en"):
            raise InvalidInput(
                f"The model '{self.name}' only transcribes English.", param="language"
            )

    def _temperatures(self, temperature: float) -> list[float]:
        steps = [temperature + i * _FALLBACK_STEP for i in range(_FALLBACK_STEPS + 1)]
        return [round(t, 2) for t in steps if t <= 1.0] or [temperature]

    def _start(self, audio: np.ndarray, options: TranscriptionOptions):
        assert self._model is not None, "engine used before load()"
        segments, info = self._model.transcribe(
            audio,
            language=options.language,
            task=options.task,
            initial_prompt=options.prompt or None,
            temperature=self._temperatures(options.temperature),
            beam_size=self.beam_size,
            word_timestamps=options.word_timestamps or options.logprobs,
            condition_on_previous_text=False,
            **_chunking(options),
        )
        return segments, info

    async def transcribe(
        self, audio: np.ndarray, options: TranscriptionOptions
    ) -> TranscriptionStream:
        self._check(options)
        try:
            segments, info = await self.worker.run(self._start, audio, options)
        except ValueError as exc:  # e.g. a language code Whisper does not know
            raise InvalidInput(str(exc), param="language") from exc
        language = info.language if self.multilingual else "en"
        if options.task == "translate":
            language = "en"
        return TranscriptionStream(
            info=TranscriptionInfo(language=language, duration=float(info.duration)),
            segments=self._segments(segments),
        )

    async def _segments(self, segments) -> AsyncIterator[Segment]:
        async for raw in self.worker.iterate(lambda: iter(segments)):
            yield _segment(raw)


def _chunking(options: TranscriptionOptions) -> dict:
    """Given clips (a diarizer's speaker turns) are decoded one by one, and nothing else;
    otherwise Silero finds the speech, with the client's chunking_strategy (server_vad) as
    its settings, or faster-whisper's defaults (2 s of silence ends a chunk, 400 ms of
    padding)."""
    if options.clips:
        return {"vad_filter": False, "clip_timestamps": [t for clip in options.clips for t in clip]}
    if options.vad is None:
        return {"vad_filter": True}
    return {
        "vad_filter": True,
        "vad_parameters": {
            "threshold": options.vad.threshold,
            "min_silence_duration_ms": options.vad.silence_ms,
            "speech_pad_ms": options.vad.padding_ms,
        },
    }


def _segment(raw) -> Segment:
    words = [
        Word(word=w.word, start=float(w.start), end=float(w.end), probability=float(w.probability))
        for w in (raw.words or [])
    ]
    return Segment(
        id=int(raw.id) - 1,
        seek=int(raw.seek),
        start=float(raw.start),
        end=float(raw.end),
        text=raw.text,
        tokens=list(raw.tokens),
        temperature=float(raw.temperature or 0.0),
        avg_logprob=_finite(raw.avg_logprob),
        compression_ratio=_finite(raw.compression_ratio),
        no_speech_prob=_finite(raw.no_speech_prob),
        words=words,
    )


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0
