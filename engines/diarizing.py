"""A transcription model that says who spoke: a transcription member (Whisper) composed
with the GE2E speaker encoder, as ``speech-ensemble`` composes speech engines.

A request that asks for speakers (``options.diarize``) is diarized first (VAD, window
embeddings and clustering over the whole upload: about 2-3% of real time on two cores,
see :mod:`.diarization`), then transcribed with word timestamps; each word takes the
speaker of the frames it spans, and a segment ends where the speaker changes (or after
a pause of a second or more), so its text belongs to one speaker. Segments are handed on
as soon as the word after them shows they are over, while Whisper decodes on. A request
that does not ask for speakers (``json``, ``text``) is decoded the same way, so that every
format of this model carries the same words; its renderer leaves the speakers out.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import replace
from typing import AsyncIterator

import numpy as np

from .base import (
    Segment,
    TranscriptionEngine,
    TranscriptionOptions,
    TranscriptionStream,
    VadSettings,
    Word,
)
from .diarization import ClusterSettings, Timeline, diarize

SEGMENT_PAUSE = 1.0  # seconds between two words of one speaker that end a segment
CLIP_PADDING = 0.2  # seconds of audio kept either side of a speaker turn for Whisper


class DiarizingTranscriber(TranscriptionEngine):
    diarizes = True

    def __init__(
        self,
        name,
        context,
        *,
        transcriber: str = "whisper-base",
        threshold: float = ClusterSettings.threshold,
        min_speaker_seconds: float = ClusterSettings.min_speaker_seconds,
        reference_threshold: float = ClusterSettings.reference_threshold,
    ) -> None:
        super().__init__(name, context)
        self.transcriber = transcriber
        self.settings = ClusterSettings(
            threshold=threshold,
            min_speaker_seconds=min_speaker_seconds,
            reference_threshold=reference_threshold,
        )
        self._member: TranscriptionEngine | None = None
        self._stack: AsyncExitStack | None = None
        self._encoder = None

    def load(self) -> None:
        from .embedded.speaker_encoder import SpeakerEncoder

        self._encoder = SpeakerEncoder()

    def unload(self) -> None:
        self._encoder = None

    async def start(self) -> None:
        stack = AsyncExitStack()
        try:
            self._member = await stack.enter_async_context(
                self.context.registry.transcription(self.transcriber)
            )
            await super().start()  # the encoder, in a thread
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def stop(self) -> None:
        await super().stop()
        self._member = None
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    @property
    def member(self) -> TranscriptionEngine:
        assert self._member is not None, "engine used before start()"
        return self._member

    async def transcribe(
        self, audio: np.ndarray, options: TranscriptionOptions
    ) -> TranscriptionStream:
        references = [(s.name, s.audio) for s in options.known_speakers]
        vad = options.vad or VadSettings()
        timeline = await self.worker.run(
            diarize, self._encoder, audio, vad, self.settings, references
        )
        # Each speaker turn is decoded on its own: Whisper neither skips a turn inside a
        # 30 s window (it dropped a whole 16 s turn of the bench's conversation) nor runs
        # one speaker's words into the next one's.
        clips = _clips(timeline, len(audio) / self.sample_rate)
        heard = await self.member.transcribe(
            audio,
            replace(options, word_timestamps=True, diarize=False, known_speakers=(), clips=clips),
        )
        return TranscriptionStream(
            info=heard.info, segments=_by_speaker(timeline, heard.segments)
        )


def _clips(timeline: Timeline, duration: float) -> tuple[tuple[float, float], ...]:
    """The speaker turns, padded into the silence around them but never into the next or
    previous turn (overlapping clips would be transcribed twice)."""
    turns = timeline.turns
    clips = []
    for i, turn in enumerate(turns):
        low = turns[i - 1].end if i else 0.0
        high = turns[i + 1].start if i + 1 < len(turns) else duration
        clips.append((max(turn.start - CLIP_PADDING, low), min(turn.end + CLIP_PADDING, high)))
    return tuple(clips)


async def _by_speaker(timeline: Timeline, segments: AsyncIterator[Segment]):
    """Whisper's segments re-cut at speaker changes, each word with its speaker."""
    run: list[Word] = []
    speaker: str | None = None
    source: Segment | None = None
    count = 0
    last_end = 0.0

    def close() -> Segment:
        nonlocal count, last_end
        assert source is not None and speaker is not None
        start = max(run[0].start, last_end)  # segments never overlap
        last_end = max(run[-1].end, start)
        segment = Segment(
            id=count,
            seek=source.seek,
            start=start,
            end=last_end,
            text="".join(w.word for w in run),  # words keep their leading spaces
            tokens=[],
            temperature=source.temperature,
            avg_logprob=source.avg_logprob,
            compression_ratio=source.compression_ratio,
            no_speech_prob=source.no_speech_prob,
            words=list(run),
            speaker=speaker,
        )
        count += 1
        return segment

    async for segment in segments:
        words = segment.words
        if not words and segment.text.strip():
            words = [Word(segment.text, segment.start, segment.end, 1.0)]
        for word in words:
            who = timeline.speaker_between(word.start, word.end)
            if run and (who != speaker or word.start - run[-1].end >= SEGMENT_PAUSE):
                yield close()
                run = []
            if not run:
                speaker, source = who, segment
            run.append(word)
    if run:
        yield close()
