"""Turn detection on a live audio stream: Silero VAD (the ONNX model faster-whisper ships)
run window by window, with OpenAI's ``server_vad`` knobs on top.

faster-whisper's own wrapper restarts the model's recurrent state on every call, which
suits whole files; a socket delivers audio in 20-100 ms pieces, so this module keeps the
state (and the 64-sample context the model expects) across pieces.

``semantic_vad`` is served by the same detector: its eagerness picks the silence that
ends a turn (low 1.2 s, medium and auto 0.8 s, high 0.35 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE = 16_000
WINDOW = 512  # samples per Silero decision at 16 kHz (32 ms)
_CONTEXT = 64

SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 800, "auto": 800, "high": 350}

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


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int


@dataclass(frozen=True)
class Paused:
    """The first silent window after speech: the turn may be ending (a speculative
    transcription can start now instead of ``silence_duration_ms`` later)."""


@dataclass(frozen=True)
class Resumed:
    """Speech again before the silence was long enough: the turn goes on."""


class TurnDetector:
    """Speech start when a window crosses ``threshold``; stop after ``silence_duration_ms``
    below ``threshold - 0.15`` (Silero's own hysteresis). Times count from the start of
    the session's input audio, as OpenAI's do."""

    def __init__(self, settings: VadSettings, offset_samples: int = 0) -> None:
        self.settings = settings
        self.silero = SileroStream()
        self.samples = offset_samples  # audio seen so far (16 kHz samples)
        self.speaking = False
        self._silence = 0

    def push(self, samples: np.ndarray) -> list[object]:
        events: list[object] = []
        start = self.samples - len(self.silero._pending)
        self.samples += len(samples)
        low = max(self.settings.threshold - 0.15, 0.01)
        silence_windows = max(1, self.settings.silence_duration_ms * RATE // 1000 // WINDOW)
        for i, p in enumerate(self.silero.push(samples)):
            at = start + i * WINDOW
            if not self.speaking and p >= self.settings.threshold:
                self.speaking = True
                self._silence = 0
                begin = max(0, at - self.settings.prefix_padding_ms * RATE // 1000)
                events.append(SpeechStarted(begin * 1000 // RATE))
            elif self.speaking:
                if p < low:
                    self._silence += 1
                    if self._silence == 1:
                        events.append(Paused())
                elif self._silence:
                    if p >= self.settings.threshold:
                        self._silence = 0
                        events.append(Resumed())
                    else:  # between the thresholds: neither speech nor silence
                        self._silence += 1
                if self._silence >= silence_windows:
                    self.speaking = False
                    end = at - (silence_windows - 1) * WINDOW
                    events.append(SpeechStopped(end * 1000 // RATE))
        return events
