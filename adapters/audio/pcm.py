"""Plain PCM helpers: sample conversion and resampling of float32 mono audio.

Engines work in float32 mono at whatever rate their model uses; the wire speaks
16-bit little-endian PCM and clients ask for other rates. These helpers are the one
place where that conversion happens, so every path clips and scales the same way.

Resampling goes through FFmpeg's swresample (via PyAV) rather than a hand-written
interpolator: it is band-limited, fast, and already shipped inside the PyAV wheel.
"""

from __future__ import annotations

import av
import numpy as np

__all__ = ["float_to_s16le", "s16le_to_float", "resample", "StreamResampler"]

_S16_SCALE = 32767.0


def float_to_s16le(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] to 16-bit little-endian bytes.

    Clipping first keeps an overdriven model output from wrapping around to the
    opposite sign, which would be heard as a loud crack instead of mild distortion.
    """
    x = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return (x * _S16_SCALE).round().astype("<i2").tobytes()


def s16le_to_float(data: bytes) -> np.ndarray:
    """16-bit little-endian bytes to float32 samples, the inverse of :func:`float_to_s16le`.

    A trailing odd byte (a torn sample) is dropped rather than raising: a stream cut
    mid-sample should still yield the audio that did arrive.
    """
    usable = len(data) - (len(data) % 2)
    ints = np.frombuffer(data[:usable], dtype="<i2")
    return ints.astype(np.float32) / _S16_SCALE


def _to_frame(samples: np.ndarray, rate: int) -> av.AudioFrame:
    """Wrap float32 mono samples in a packed ``flt`` mono AudioFrame."""
    arr = np.ascontiguousarray(np.asarray(samples, dtype=np.float32).reshape(1, -1))
    frame = av.AudioFrame.from_ndarray(arr, format="flt", layout="mono")
    frame.sample_rate = rate
    return frame


def _frames_to_array(frames: list[av.AudioFrame]) -> np.ndarray:
    """Concatenate packed ``flt`` mono frames into one float32 vector."""
    parts = [f.to_ndarray().reshape(-1) for f in frames if f.samples]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


class StreamResampler:
    """Resample audio that arrives in pieces (one synthesized sentence at a time).

    One swresample context lives across all pushes so its filter history carries
    over; resampling each piece independently would restart the filter at every
    boundary and leave audible clicks and small gaps between sentences.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        if from_rate <= 0 or to_rate <= 0:
            raise ValueError("sample rates must be positive")
        self.from_rate = int(from_rate)
        self.to_rate = int(to_rate)
        self._resampler: av.AudioResampler | None = None
        if self.from_rate != self.to_rate:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.to_rate)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed the next piece; returns whatever output is ready (may lag by a few ms)."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._resampler is None:
            return x.copy()
        if x.size == 0:
            return np.zeros(0, dtype=np.float32)
        return _frames_to_array(self._resampler.resample(_to_frame(x, self.from_rate)))

    def flush(self) -> np.ndarray:
        """Drain the samples the filter still holds; call once after the last push."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return _frames_to_array(self._resampler.resample(None))


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """One-shot resample of a whole float32 mono clip; identity when the rates match."""
    r = StreamResampler(from_rate, to_rate)
    head = r.push(samples)
    tail = r.flush()
    return np.concatenate([head, tail]) if tail.size else head
