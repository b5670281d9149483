"""Turn detection on a live audio stream: Silero VAD (the ONNX model faster-whisper ships)
run window by window, with OpenAI's ``server_vad`` and ``semantic_vad`` on top.

faster-whisper's own wrapper restarts the model's recurrent state on every call, which
suits whole files; a socket delivers audio in 20-100 ms pieces, so this module keeps the
state (and the 64-sample context the model expects) across pieces.

Events, in session samples (16 kHz) and milliseconds from the start of the input audio:

* ``SpeechStarted`` when a window crosses ``threshold``;
* ``Gap`` at the first clearly silent window after speech (under ``threshold - 0.15``):
  between two words (people leave such gaps of 32-96 ms between some of theirs), or the
  start of a pause. ``sample`` is the middle of that window, a place to cut the speech
  that splits no word. Dips that stay above it were not used: cut there, the gateway's
  own fluent voice was misheard at the cut ("that guided" as "The guy did"); the
  session cuts a long phrase there to hear it while the user goes on (see
  gateway/api/realtime/hearing.py);
* ``Paused`` once the silence after speech has lasted ``pause_ms`` (200 ms, whole windows:
  224 ms). The gaps between words in the test recordings last 32-64 ms and their pauses
  inside a turn 288-576 ms, so a speculative transcription starts at a real pause, not at
  every word. 200 ms is also the silence after a turn that the end-of-turn model was
  trained on (pipecat pairs it with a VAD stopping after 0.2 s). ``end_sample`` is where
  the silence began: where the speech ended;
* ``Resumed`` when speech comes back after a ``Paused``;
* ``SpeechStopped`` when the turn ends, ``audio_end_ms`` being where the silence began.

``server_vad`` ends a turn after ``silence_duration_ms`` of silence. ``semantic_vad`` asks
an end-of-turn model (Smart Turn v3.2, :mod:`.end_of_turn`) at every ``Paused`` whether
what was said so far is a complete turn. When its probability reaches the eagerness's
``complete_at`` the turn ends then, ``pause_ms`` plus the model's time (about 50 ms)
after the speech; otherwise the detector keeps listening, asks again at the next pause,
and ends the turn anyway after the eagerness's ``silence_ms``. At the end of the test
recordings the model says 0.96-0.99, and cut between two words of a sentence mostly
under 0.2, so ``medium`` (and ``auto``) keeps the model's own 0.5 and 2 s; ``high``
ends sooner (0.3, and 1 s at the latest), ``low`` waits for a surer answer (0.7, 4 s).
These stay within OpenAI's maximum timeouts (8, 4 and 2 s for low, medium and high).

The model runs on a thread, never in :meth:`TurnDetector.push`, which runs on the event
loop: its answer is read by a later push, and a realtime client keeps streaming (silence
included), so that is the next 20-100 ms piece.
"""

from __future__ import annotations

import collections
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import structlog

from . import end_of_turn

RATE = 16_000
WINDOW = 512  # samples per Silero decision at 16 kHz (32 ms)
_CONTEXT = 64
PAUSE_MS = 200
# Audio before the first speech window the end-of-turn model hears, as pipecat gives it.
_PRE_SPEECH = RATE // 2

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Eagerness:
    complete_at: float  # P(turn complete) at a pause that ends the turn at once
    silence_ms: int  # the silence that ends the turn whatever the model said


SEMANTIC_EAGERNESS = {
    "low": Eagerness(complete_at=0.7, silence_ms=4000),
    "medium": Eagerness(complete_at=0.5, silence_ms=2000),
    "auto": Eagerness(complete_at=0.5, silence_ms=2000),
    "high": Eagerness(complete_at=0.3, silence_ms=1000),
}

_model = None


def _session():
    """One ONNX session per process: it is stateless, the state lives in each stream."""
    global _model
    if _model is None:
        from faster_whisper.vad import get_vad_model

        _model = get_vad_model()
    return _model.session


class SileroStream:
    """Speech probability per 32 ms window, state carried between calls."""

    def __init__(self) -> None:
        self._session = _session()
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> list[float]:
        data = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        whole = len(data) // WINDOW * WINDOW
        self._pending = data[whole:]
        probs = []
        for start in range(0, whole, WINDOW):
            window = data[start : start + WINDOW]
            batch = np.concatenate([self._context, window])[None, :]
            out, self._h, self._c = self._session.run(
                None, {"input": batch, "h": self._h, "c": self._c}
            )
            self._context = window[-_CONTEXT:]
            probs.append(float(np.asarray(out).reshape(-1)[0]))
        return probs


@dataclass
class VadSettings:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    pause_ms: int = PAUSE_MS
    # semantic_vad: the end-of-turn probability that ends a turn at a pause (None: server_vad)
    complete_at: float | None = None


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int


@dataclass(frozen=True)
class Gap:
    """A silent window inside speech: the words before it may be heard apart."""

    sample: int  # session sample (16 kHz) in the middle of the window


@dataclass(frozen=True)
class Paused:
    """The silence after speech has lasted ``pause_ms``: the turn may be ending (a
    speculative transcription can start now instead of when the turn ends)."""

    end_sample: int  # session sample (16 kHz) where the silence began


@dataclass(frozen=True)
class Resumed:
    """Speech again after a ``Paused``, before the turn ended: the turn goes on."""


class RecentAudio:
    """The last few seconds of input, addressed by session sample index."""

    def __init__(self, keep: int, start: int) -> None:
        self.keep = keep
        self.start = start  # session sample index of the first sample held
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._held = 0

    def append(self, samples: np.ndarray) -> None:
        self._chunks.append(np.asarray(samples, dtype=np.float32))
        self._held += len(samples)
        while self._held - len(self._chunks[0]) >= self.keep:
            dropped = self._chunks.popleft()
            self._held -= len(dropped)
            self.start += len(dropped)

    def between(self, first: int, stop: int) -> np.ndarray:
        """Samples ``[first, stop)`` of the session, as far as they are still held."""
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        held = np.concatenate(self._chunks)
        return held[max(0, first - self.start) : max(0, stop - self.start)]


def _windows(ms: int) -> int:
    """Whole 32 ms windows that last at least ``ms`` (one at least)."""
    return max(1, -(-ms * RATE // (1000 * WINDOW)))


class TurnDetector:
    """Speech start when a window crosses ``threshold``; silence is a window below
    ``threshold - 0.15`` (Silero's own hysteresis) and, once silence began, any window
    short of ``threshold``. Times count from the start of the session's input audio, as
    OpenAI's do."""

    def __init__(self, settings: VadSettings, offset_samples: int = 0) -> None:
        self.settings = settings
        self.silero = SileroStream()
        self.samples = offset_samples  # audio seen so far (16 kHz samples)
        self.speaking = False
        self._low = max(settings.threshold - 0.15, 0.01)
        # server_vad's stop keeps its windows as before: whole windows within the silence
        self._stop_windows = max(1, settings.silence_duration_ms * RATE // 1000 // WINDOW)
        self._pause_windows = min(_windows(settings.pause_ms), self._stop_windows)
        self._silence = 0  # silent windows in a row
        self._silence_began = 0  # session sample of the first of them
        self._paused = False
        self._turn_began = 0  # session sample the end-of-turn model hears from
        self._verdict: Future | None = None
        semantic = settings.complete_at is not None
        # the model's 8 s, and a second more: a push is appended before its windows are read
        keep = end_of_turn.SAMPLES + RATE
        self._recent = RecentAudio(keep, offset_samples) if semantic else None

    def push(self, samples: np.ndarray) -> list[object]:
        events: list[object] = []
        start = self.samples - len(self.silero._pending)
        self.samples += len(samples)
        if self._recent is not None:
            self._recent.append(samples)
        for i, p in enumerate(self.silero.push(samples)):
            events.extend(self._window(start + i * WINDOW, p))
        return events

    def _window(self, at: int, p: float) -> list[object]:
        if not self.speaking:
            return [self._start(at)] if p >= self.settings.threshold else []
        if p >= self.settings.threshold:
            return self._speech_again()
        if p < self._low or self._silence:
            return self._quiet(at)
        return []  # between the thresholds while speech goes on: still speech

    def _start(self, at: int) -> SpeechStarted:
        self.speaking = True
        self._reset_silence()
        self._turn_began = at - _PRE_SPEECH
        begin = max(0, at - self.settings.prefix_padding_ms * RATE // 1000)
        return SpeechStarted(begin * 1000 // RATE)

    def _speech_again(self) -> list[object]:
        paused = self._paused
        self._reset_silence()
        return [Resumed()] if paused else []

    def _quiet(self, at: int) -> list[object]:
        events: list[object] = []
        if self._silence == 0:
            self._silence_began = at
            events.append(Gap(at + WINDOW // 2))
        self._silence += 1
        if self._silence == self._pause_windows:
            self._paused = True
            events.append(Paused(self._silence_began))
            self._ask_model(stop=at + WINDOW)
        if self._silence >= self._stop_windows or self._model_says_complete():
            events.append(self._stop())
        return events

    def _stop(self) -> SpeechStopped:
        self.speaking = False
        self._reset_silence()
        return SpeechStopped(self._silence_began * 1000 // RATE)

    def _reset_silence(self) -> None:
        self._silence = 0
        self._paused = False
        if self._verdict is not None:
            self._verdict.cancel()  # still queued behind another session's: never run
            self._verdict = None

    def _ask_model(self, stop: int) -> None:
        """semantic_vad: is the turn heard up to ``stop`` complete? (answered on a thread)"""
        if self._recent is None:
            return
        audio = self._recent.between(max(self._turn_began, stop - end_of_turn.SAMPLES), stop)
        self._verdict = end_of_turn.predict(audio)

    def _model_says_complete(self) -> bool:
        verdict = self._verdict
        if verdict is None or not verdict.done():
            return False
        self._verdict = None  # one answer per pause; the next pause asks again
        try:
            probability = verdict.result()
        except Exception as exc:  # noqa: BLE001 - the silence still ends the turn
            log.warning("end_of_turn_model_failed", error=str(exc))
            return False
        return probability >= self.settings.complete_at
