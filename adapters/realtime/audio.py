"""Realtime audio formats: ``audio/pcm`` (16-bit, 24 kHz), ``audio/pcmu`` and ``audio/pcma``
(G.711 at 8 kHz, what telephony bridges send).

Engines want float32 at their own rate; the socket carries the session's format in both
directions. G.711 goes through FFmpeg's codecs (PyAV), and resampling through
:class:`~adapters.audio.pcm.StreamResampler`, so a stream cut into pieces of any size
converts the same as one whole buffer.
"""

from __future__ import annotations

import av
import numpy as np

from adapters.audio.pcm import StreamResampler, float_to_s16le, s16le_to_float
from adapters.audio.pipeline import SpeechAudioPipeline

FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
_CODEC = {"audio/pcmu": "pcm_mulaw", "audio/pcma": "pcm_alaw"}


def wire_rate(fmt: str) -> int:
    return 24_000 if fmt == "audio/pcm" else 8_000


def bytes_per_second(fmt: str) -> int:
    return 48_000 if fmt == "audio/pcm" else 8_000


def _g711_decode(codec: str, data: bytes) -> np.ndarray:
    ctx = av.CodecContext.create(codec, "r")
    ctx.sample_rate = 8_000
    ctx.layout = "mono"
    frames = ctx.decode(av.Packet(data))
    if not frames:
        return np.zeros(0, dtype=np.float32)
    ints = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    return ints.astype(np.float32) / 32767.0


def _g711_encode(codec: str, samples: np.ndarray) -> bytes:
    if not len(samples):
        return b""
    ctx = av.CodecContext.create(codec, "w")
    ctx.sample_rate = 8_000
    ctx.format = "s16"
    ctx.layout = "mono"
    ints = np.frombuffer(float_to_s16le(samples), dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(ints, format="s16", layout="mono")
    frame.sample_rate = 8_000
    return b"".join(bytes(p) for p in ctx.encode(frame))


def decode_wire(fmt: str, data: bytes) -> np.ndarray:
    """Wire bytes to float32 samples at :func:`wire_rate`."""
    if fmt == "audio/pcm":
        return s16le_to_float(data)
    return _g711_decode(_CODEC[fmt], data)


def encode_wire(fmt: str, samples: np.ndarray) -> bytes:
    """Float32 samples at :func:`wire_rate` to wire bytes."""
    if fmt == "audio/pcm":
        return float_to_s16le(samples)
    return _g711_encode(_CODEC[fmt], samples)


class InputConverter:
    """Wire audio to float32 at the rate the detector and recogniser use (16 kHz)."""

    def __init__(self, fmt: str, rate: int = 16_000) -> None:
        self.fmt = fmt
        self._carry = b""
        self._resampler = StreamResampler(wire_rate(fmt), rate)

    def push(self, data: bytes) -> np.ndarray:
        if self.fmt == "audio/pcm":  # a sample torn between two appends is kept for the next
            data, self._carry = self._carry + data, b""
            if len(data) % 2:
                data, self._carry = data[:-1], data[-1:]
        return self._resampler.push(decode_wire(self.fmt, data))


class WireEncoder:
    """The realtime formats as a :class:`~adapters.audio.pipeline.SpeechAudioPipeline`
    encoder: 16-bit PCM or G.711 are sample by sample, so nothing is held back."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def encode(self, samples: np.ndarray) -> bytes:
        return encode_wire(self.fmt, samples) if len(samples) else b""

    def finish(self) -> bytes:
        return b""


def wire_pipeline(fmt: str, tempo: float = 1.0) -> SpeechAudioPipeline:
    """Synthesised speech to a realtime session's output format, at its rate."""
    return SpeechAudioPipeline(
        "pcm", tempo=tempo, sample_rate=wire_rate(fmt), encoder=WireEncoder(fmt)
    )
