"""Decode an uploaded audio file (any common container) to float32 mono samples.

Transcription uploads arrive as whatever the client recorded: wav, mp3, flac,
ogg/opus, m4a/mp4, webm. PyAV probes the container from the bytes themselves, so
the filename the client sent is never trusted. Every failure becomes an
:class:`AudioDecodeError` with a message fit to show the client, because a broken
upload is the client's problem (HTTP 400), not a server error.

Audio has a budget in seconds (:data:`MAX_SECONDS`, set per request by the gateway): a
few kilobytes of FLAC can hold hours of silence, gigabytes once decoded. The duration
the container declares is checked before decoding, and decoding stops as soon as the
samples decoded pass the budget, since a declared duration can lie.
"""

from __future__ import annotations

import io
from contextvars import ContextVar

import av
import numpy as np

__all__ = ["MAX_SECONDS", "AudioDecodeError", "AudioTooLong", "decode_audio"]

#: The most seconds of audio one decode may produce (None: no limit). The gateway sets it
#: per request from ``[limits] max_audio_seconds``; it follows the call into worker threads.
MAX_SECONDS: ContextVar[float | None] = ContextVar("max_audio_seconds", default=1500.0)


class AudioDecodeError(ValueError):
    """The uploaded bytes are not audio this server can decode; the message is client-facing."""


class AudioTooLong(AudioDecodeError):
    """The audio is longer than the budget; the message is client-facing."""

    def __init__(self, limit: float) -> None:
        super().__init__(
            f"The audio is longer than the {_minutes(limit)} this server accepts per request."
        )
        self.limit = limit


def _minutes(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} seconds"


def _declared_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _new_resampler(target_rate: int) -> av.AudioResampler:
    return av.AudioResampler(format="flt", layout="mono", rate=target_rate)


def _collect(frames: list[av.AudioFrame], out: list[np.ndarray]) -> int:
    samples = 0
    for f in frames:
        if f.samples:
            out.append(f.to_ndarray().reshape(-1))
            samples += f.samples
    return samples


def decode_audio(
    data: bytes, target_rate: int = 16000, max_seconds: float | None = None
) -> np.ndarray:
    """Decode the first audio stream of ``data`` to float32 mono at ``target_rate``.

    Raises :class:`AudioDecodeError` if the bytes are empty, not a recognizable
    container, have no audio stream, fail to decode, or hold no samples, and
    :class:`AudioTooLong` past ``max_seconds`` (default: :data:`MAX_SECONDS`).
    """
    limit = MAX_SECONDS.get() if max_seconds is None else max_seconds
    if target_rate <= 0:
        raise ValueError("target_rate must be positive")
    if not data:
        raise AudioDecodeError("The audio file is empty.")

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(
            "The audio file could not be read: it is not a supported audio format or it is corrupt."
        ) from exc

    parts: list[np.ndarray] = []
    try:
        if not container.streams.audio:
            raise AudioDecodeError("The file contains no audio stream.")
        stream = container.streams.audio[0]
        declared = _declared_seconds(container, stream)
        if limit is not None and declared is not None and declared > limit:
            raise AudioTooLong(limit)
        budget = None if limit is None else int(limit * target_rate) + target_rate // 10
        produced = 0
        resampler = _new_resampler(target_rate)
        # swresample is configured from the first frame it sees; a stream whose
        # format changes midway (rare, e.g. concatenated mp3s) gets a fresh one.
        in_fmt: tuple | None = None
        try:
            for frame in container.decode(stream):
                key = (frame.format.name, frame.layout.name, frame.sample_rate)
                if in_fmt is not None and key != in_fmt:
                    _collect(resampler.resample(None), parts)
                    resampler = _new_resampler(target_rate)
                in_fmt = key
                frame.pts = None  # rely on sample counts, not (possibly broken) timestamps
                produced += _collect(resampler.resample(frame), parts)
                if budget is not None and produced > budget:
                    raise AudioTooLong(limit)
            _collect(resampler.resample(None), parts)
        except AudioDecodeError:
            raise
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise AudioDecodeError(
                "The audio file could not be decoded: it is corrupt or truncated."
            ) from exc
    finally:
        container.close()

    if not parts:
        raise AudioDecodeError("The audio file contains no audio samples.")
    return np.concatenate(parts).astype(np.float32, copy=False)
