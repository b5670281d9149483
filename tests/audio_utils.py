"""Helpers for tests: decode what the gateway returns and measure it."""

from __future__ import annotations

import io

import av
import numpy as np


def decode(data: bytes, rate: int = 16_000) -> np.ndarray:
    from adapters.audio.decode import decode_audio

    return decode_audio(data, rate)


def duration(data: bytes) -> float:
    return len(decode(data)) / 16_000


def pcm_duration(data: bytes, rate: int = 24_000) -> float:
    assert len(data) % 2 == 0
    return len(data) / 2 / rate


def stream_info(data: bytes) -> tuple[str, int, int]:
    """(codec, sample rate, channels) of the first audio stream."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return stream.codec_context.name, stream.codec_context.sample_rate, stream.codec_context.channels


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples)))) if len(samples) else 0.0
