"""Streaming encoders for the OpenAI speech output formats.

A spoken answer is synthesized sentence by sentence, and the first sentence should
reach the client while the rest is still being generated. So encoding is
incremental: :meth:`StreamingEncoder.encode` returns whatever container bytes are
ready *now*, and :meth:`StreamingEncoder.finish` flushes the codec and the container.

Everything happens in memory through PyAV (FFmpeg's libraries ship inside its
wheel), writing into a non-seekable sink. Non-seekable matters twice: it is honest
about an HTTP body (a muxer cannot go back and patch a header that was already sent),
and it makes muxers such as WAV and FLAC write their streaming form up front.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from .pcm import float_to_s16le

__all__ = [
    "OUTPUT_FORMATS",
    "CONTENT_TYPES",
    "CHAT_AUDIO_FORMATS",
    "StreamingEncoder",
    "encode_all",
    "chat_audio_format",
]

OUTPUT_FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")

CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

# Chat completions name its audio formats slightly differently from /audio/speech.
_CHAT_TO_ENCODER: dict[str, str] = {
    "wav": "wav",
    "mp3": "mp3",
    "flac": "flac",
    "opus": "opus",
    "aac": "aac",
    "pcm16": "pcm",
}
CHAT_AUDIO_FORMATS: tuple[str, ...] = tuple(_CHAT_TO_ENCODER)


def chat_audio_format(fmt: str) -> str:
    """Map a chat-completions ``audio.format`` to a :class:`StreamingEncoder` format."""
    try:
        return _CHAT_TO_ENCODER[fmt]
    except KeyError:
        raise ValueError(
            f"unsupported audio format {fmt!r}; expected one of {', '.join(CHAT_AUDIO_FORMATS)}"
        ) from None


@dataclass(frozen=True)
class _Spec:
    container: str
    codec: str
    fixed_rate: int | None = None  # codec rate regardless of the input rate
    bit_rate: int | None = None  # None: lossless / PCM, the codec decides
    container_options: dict[str, str] = field(default_factory=dict)


# Bit rates are chosen for mono speech at 24 kHz: transparent for a voice while
# keeping a streamed answer small. Left unset, the encoders pick their own: about
# 32 kbps for MP3 at 24 kHz (audibly lossy) and about 90 kbps for Opus (wasteful).
_SPEECH_BITRATE = {"mp3": 64_000, "aac": 64_000, "opus": 32_000}

_SPECS: dict[str, _Spec] = {
    "mp3": _Spec("mp3", "libmp3lame", bit_rate=_SPEECH_BITRATE["mp3"]),
    # Ogg buffers a page for up to a second by default; 20 ms pages let every
    # encode() call hand its audio over instead of sitting on it.
    "opus": _Spec(
        "ogg",
        "libopus",
        fixed_rate=24000,
        bit_rate=_SPEECH_BITRATE["opus"],
        container_options={"page_duration": "20000"},
    ),
    "aac": _Spec("adts", "aac", bit_rate=_SPEECH_BITRATE["aac"]),
    "flac": _Spec("flac", "flac"),
    "wav": _Spec("wav", "pcm_s16le"),
}


class _Sink(io.RawIOBase):
    """Write-only, non-seekable byte accumulator that the muxer writes into.

    It is drained after every encoder call, so it only ever holds one call's output.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def write(self, b) -> int:  # type: ignore[override]
        self._buf += b
        return len(b)

    def drain(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


def _codec_rate(codec_name: str, wanted: int) -> int:
    """The input rate if the codec accepts it, else the closest rate it does accept."""
    rates = av.Codec(codec_name, "w").audio_rates
    if not rates or wanted in rates:
        return wanted
    higher = [r for r in rates if r >= wanted]
    return min(higher) if higher else max(rates)


class StreamingEncoder:
    """Encode float32 mono audio to ``fmt`` piece by piece.

    ``encode`` returns the bytes that are ready now (possibly ``b""`` for a tiny
    piece, since codecs work in frames); ``finish`` returns the rest and must be
    called exactly once at the end. Concatenating every return value gives a
    complete, playable stream.
    """

    def __init__(self, fmt: str, sample_rate: int = 24000) -> None:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(
                f"unsupported output format {fmt!r}; expected one of {', '.join(OUTPUT_FORMATS)}"
            )
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        self.fmt = fmt
        self.sample_rate = int(sample_rate)
        self.content_type = CONTENT_TYPES[fmt]
        self._finished = False
        if fmt == "pcm":
            # Raw PCM needs no container and no codec delay: bytes go out as they come.
            return

        spec = _SPECS[fmt]
        rate = spec.fixed_rate or _codec_rate(spec.codec, self.sample_rate)
        self._sink = _Sink()
        self._container = av.open(
            self._sink,
            mode="w",
            format=spec.container,
            # Push every muxed packet straight to the sink instead of filling
            # PyAV's 32 KiB I/O buffer first (seconds of latency at speech bit
            # rates). FFmpeg's "auto" default already does this for a non-seekable
            # output; stating it keeps streaming from resting on that default.
            container_options={"flush_packets": "1", **spec.container_options},
        )
        self._stream = self._container.add_stream(spec.codec, rate=rate, layout="mono")
        ctx = self._stream.codec_context
        if spec.bit_rate:
            ctx.bit_rate = spec.bit_rate
        self._rate = rate
        self._in_rate = self.sample_rate
        self._pts = 0
        # Convert float input to the codec's sample format and rate, cut to its frame
        # size, so the codec never has to guess. One resampler lives for the whole
        # stream, so sentence boundaries don't restart its filter.
        frame_size = ctx.frame_size or None
        self._resampler = av.AudioResampler(
            format=ctx.format.name, layout="mono", rate=rate, frame_size=frame_size
        )
        # Write the header now so the first encode() carries it (FLAC/WAV/Ogg/ID3).
        self._container.start_encoding()

    def _encode_frames(self, frames: list[av.AudioFrame | None]) -> None:
        for frame in frames:
            if frame is not None:
                frame.pts = self._pts
                frame.time_base = Fraction(1, self._rate)
                self._pts += frame.samples
            self._container.mux(self._stream.encode(frame))

    def encode(self, samples: np.ndarray) -> bytes:
        """Encode the next piece of float32 mono audio; return the bytes ready now."""
        if self._finished:
            raise RuntimeError("StreamingEncoder already finished")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.fmt == "pcm":
            return float_to_s16le(x)
        if x.size:
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(x.reshape(1, -1)), format="flt", layout="mono"
            )
            frame.sample_rate = self._in_rate
            self._encode_frames(self._resampler.resample(frame))
        return self._sink.drain()

    def finish(self) -> bytes:
        """Flush the resampler, the codec and the container; return the final bytes."""
        if self._finished:
            return b""
        self._finished = True
        if self.fmt == "pcm":
            return b""
        try:
            self._encode_frames(self._resampler.resample(None))
            self._encode_frames([None])  # drain the codec's delay buffer
        finally:
            self._container.close()  # writes the trailer
        return self._sink.drain()

    def close(self) -> None:
        """Abandon the stream (client went away): release the codec, discard any output."""
        if self.fmt == "pcm" or self._finished:
            self._finished = True
            return
        self._finished = True
        try:
            self._container.close()
        except av.FFmpegError:
            pass
        self._sink.drain()


def encode_all(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Encode a whole clip in one go (non-streaming responses, tests)."""
    enc = StreamingEncoder(fmt, sample_rate)
    return enc.encode(samples) + enc.finish()
