"""Real recordings (tests/recordings) as a microphone streams them into a realtime session,
where each one's speech ends, and how well a transcript matches what was read."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import jiwer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.realtime.audio import InputConverter  # noqa: E402
from adapters.realtime.vad import SpeechStopped, TurnDetector, VadSettings  # noqa: E402
from tests.recordings import NAMES, TEXTS, pcm24k  # noqa: E402

BYTES_PER_MS = 48  # 24 kHz 16-bit mono


@dataclass(frozen=True)
class Recording:
    name: str
    pcm: bytes  # 24 kHz s16le, as audio/pcm sessions send it
    speech_end: int  # byte offset just after the last speech sample
    reference: str  # what the speaker reads

    @property
    def chinese(self) -> bool:
        return any("\u4e00" <= c <= "\u9fff" for c in self.reference)


def speech_end(pcm: bytes) -> int:
    """Where the speech in ``pcm`` ends, found by the gateway's own streaming detector (Silero
    with server_vad's defaults) fed 20 ms pieces as the server is: the start of the silence
    after the last speech. Silence at the end of the file counts as silence."""
    converter, detector = InputConverter("audio/pcm"), TurnDetector(VadSettings())
    audio, piece, end_ms = pcm + bytes(BYTES_PER_MS * 1000), 20 * BYTES_PER_MS, None
    for start in range(0, len(audio), piece):
        for event in detector.push(converter.push(audio[start : start + piece])):
            if isinstance(event, SpeechStopped):
                end_ms = event.audio_end_ms
    if end_ms is None:
        raise ValueError("no speech heard")
    return min(len(pcm), end_ms * BYTES_PER_MS)


def load() -> list[Recording]:
    recordings = []
    for name in NAMES:
        pcm = pcm24k(name)
        recordings.append(Recording(name, pcm, speech_end(pcm), TEXTS[name]))
    return recordings


def error_rate(recording: Recording, transcript: str) -> float:
    """Character error rate for Chinese (punctuation and spaces left out), word error rate
    for English (lowercased, punctuation left out)."""
    if recording.chinese:
        def chars(text: str) -> str:
            return "".join(c for c in text if not c.isspace()
                           and not unicodedata.category(c).startswith("P"))
        return jiwer.cer(chars(recording.reference), chars(transcript) or " ")
    words = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(),
                           jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                           jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(recording.reference, transcript or " ", reference_transform=words,
                     hypothesis_transform=words)


class Microphone:
    """Streams to a realtime connection as a microphone does: fixed pieces, each sent when
    its last sample would have been captured (piece k at start + (k + 1) * piece, on the
    monotonic clock, so a late send is caught up and drift does not add up), and silence
    whenever there is nothing to say."""

    def __init__(self, conn, piece_ms: int = 20) -> None:
        self.conn = conn
        self.piece = piece_ms * BYTES_PER_MS
        self.period = piece_ms / 1000
        self._audio = bytearray()  # queued, not sent yet
        self._consumed = 0  # bytes of queued audio sent so far
        self._marks: list[tuple[int, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    def start(self) -> Microphone:
        self._task = asyncio.create_task(self._run())
        return self

    def say(self, recording: Recording) -> asyncio.Future:
        """Queue ``recording``; the future gets the monotonic time at which the piece holding
        its last speech sample was sent."""
        done = asyncio.get_running_loop().create_future()
        at = self._consumed + len(self._audio) + recording.speech_end
        self._marks.append((at, done))
        self._audio += recording.pcm
        return done

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        started, k = time.monotonic(), 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, started + k * self.period - time.monotonic()))
            n = min(self.piece, len(self._audio))
            piece = bytes(self._audio[:n]) + bytes(self.piece - n)
            del self._audio[:n]
            await self.conn.input_audio_buffer.append(audio=base64.b64encode(piece).decode())
            self._consumed += n
            now = time.monotonic()
            for mark in [m for m in self._marks if m[0] <= self._consumed]:
                self._marks.remove(mark)
                mark[1].set_result(now)
