"""Decode an uploaded audio file (any common container) to float32 mono samples.

Transcription uploads arrive as whatever the client recorded: wav, mp3, flac,
ogg/opus, m4a/mp4, webm. PyAV probes the container from the bytes themselves, so
the filename the client sent is never trusted. Every failure becomes an
:class:`AudioDecodeError` with a message fit to show the client, because a broken
upload is the client's problem (HTTP 400), not a server error.
"""

from __future__ import annotations

import io

import av
import numpy as np

__all__ = ["AudioDecodeError", "decode_audio"]


class AudioDecodeError(ValueError):
    """The uploaded bytes are not audio this server can decode; the message is client-facing."""


def _new_resampler(target_rate: int) -> av.AudioResampler:
    return av.AudioResampler(format="flt", layout="mono", rate=target_rate)


def _collect(frames: list[av.AudioFrame], out: list[np.ndarray]) -> None:
    for f in frames:
        if f.samples:
            out.append(f.to_ndarray().reshape(-1))


def decode_audio(data: bytes, target_rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream of ``data`` to float32 mono at ``target_rate``.

    Raises :class:`AudioDecodeError` if the bytes are empty, not a recognizable
    container, have no audio stream, fail to decode, or hold no samples.
    """
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
                _collect(resampler.resample(frame), parts)
            _collect(resampler.resample(None), parts)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise AudioDecodeError(
                "The audio file could not be decoded: it is corrupt or truncated."
            ) from exc
    finally:
        container.close()

    if not parts:
        raise AudioDecodeError("The audio file contains no audio samples.")
    return np.concatenate(parts).astype(np.float32, copy=False)
