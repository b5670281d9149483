"""Whisper's encoder over the audio there is, not over a padded 30 s window.

faster-whisper pads every window's log-mel features to 30 s (3000 frames) before the
encoder, whose cost grows with its input: on the 2-core host Whisper base spent 0.43 s
encoding a 5 s turn, 0.05 s once the window was fitted to 10 s. CTranslate2's encoder
takes any window up to 3000 frames, and on the recorded turns the fitted window heard the
same words (the test suite compares both on real recordings). A margin of silence is kept
after the speech, and windows are never shorter than ``min_seconds``: with almost no room
after the last word, the decoder can loop on a short clip.

And a multilingual model asked to detect the language encoded the first window twice, once
for :meth:`detect_language` and once more for the decode. The detection's encoder output is
kept for the decode of that same window.
"""

from __future__ import annotations

import threading

import numpy as np
from faster_whisper import WhisperModel

FULL_WINDOW = 3000  # log-mel frames in Whisper's 30 s window (10 ms each)
_STEP = 100  # windows grow in whole seconds so that similar turns share a shape


def content_frames(features: np.ndarray) -> int:
    """Frames before the zero padding that faster-whisper adds after the features."""
    columns = np.flatnonzero(np.any(features.reshape(-1, features.shape[-1]) != 0, axis=0))
    return int(columns[-1]) + 1 if len(columns) else 0


def fitted_window(frames: int, margin: int, minimum: int) -> int:
    window = -(-(frames + margin) // _STEP) * _STEP
    return min(FULL_WINDOW, max(window, minimum))


class FittedWhisper(WhisperModel):
    """:class:`WhisperModel` whose encoder sees each window cut to its content plus a margin,
    and whose language detection's encoding is reused by the decode."""

    def __init__(self, *args, margin_seconds: float = 2.0, min_seconds: float = 8.0, **kw):
        super().__init__(*args, **kw)
        self.margin = int(margin_seconds * 100)
        self.minimum = int(min_seconds * 100)
        self._local = threading.local()

    def encode(self, features: np.ndarray):
        window = fitted_window(content_frames(features), self.margin, self.minimum)
        output = super().encode(features[..., :window])
        if getattr(self._local, "capturing", False) and self._local.captured is None:
            self._local.captured = output
        return output

    def detect_language(self, audio=None, features=None, **kwargs):
        self._local.capturing, self._local.captured = True, None
        try:
            result = super().detect_language(audio, features, **kwargs)
        finally:
            self._local.capturing = False
        # Only a detection from features (as transcribe() makes it) covers the window the
        # decode starts with; one from raw audio computed its own features.
        self._local.detected = (features, self._local.captured) if audio is None else None
        return result

    def generate_segments(self, features, tokenizer, options, log_progress, encoder_output=None):
        detected, self._local.detected = getattr(self._local, "detected", None), None
        if encoder_output is None and detected is not None and _same_start(detected[0], features):
            encoder_output = detected[1]
        return super().generate_segments(features, tokenizer, options, log_progress, encoder_output)


def _same_start(detected: np.ndarray | None, features: np.ndarray) -> bool:
    """Whether the detection looked at these features from their first frame (the same
    memory: ``detected`` is kept alive beside its encoding, so it cannot be reused)."""
    if detected is None:
        return False
    return detected.__array_interface__["data"][0] == features.__array_interface__["data"][0]
