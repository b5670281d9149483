"""Round-trip and failure tests for adapters.audio: encoders, decoder, tempo, resampling."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from adapters.audio.decode import AudioDecodeError, decode_audio
from adapters.audio.encode import (
    CONTENT_TYPES,
    OUTPUT_FORMATS,
    StreamingEncoder,
    chat_audio_format,
    encode_all,
)
from adapters.audio.pcm import StreamResampler, float_to_s16le, resample, s16le_to_float
from adapters.audio.tempo import TempoFilter, atempo_chain

SR = 24000


def sine(seconds: float, rate: int = SR, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


# --------------------------------------------------------------------------- encoders


def _check_magic(fmt: str, data: bytes, n_samples: int) -> None:
    if fmt == "mp3":
        assert data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    elif fmt == "opus":
        assert data[:4] == b"OggS"
        assert b"OpusHead" in data[:100]
    elif fmt == "aac":
        assert data[:2] in (b"\xff\xf1", b"\xff\xf9")
    elif fmt == "flac":
        assert data[:4] == b"fLaC"
    elif fmt == "wav":
        assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    elif fmt == "pcm":
        assert len(data) % 2 == 0
        assert len(data) == 2 * n_samples
    else:  # pragma: no cover
        raise AssertionError(fmt)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_streaming_round_trip(fmt: str) -> None:
    x = sine(2.0)
    enc = StreamingEncoder(fmt, SR)
    chunks = [enc.encode(piece) for piece in np.array_split(x, 3)]
    chunks.append(enc.finish())
    assert chunks[0], "the first encode() must already yield bytes (streaming)"
    data = b"".join(chunks)
    _check_magic(fmt, data, len(x))
    if fmt == "pcm":
        y = s16le_to_float(data)
        assert len(y) == len(x)
        assert np.max(np.abs(y - x)) < 1e-4
    else:
        y = decode_audio(data, 16000)
        assert y.dtype == np.float32
        assert abs(len(y) / 16000 - 2.0) <= 0.15
        assert 0.3 < np.max(np.abs(y)) < 0.7


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_other_input_rate_and_encode_all(fmt: str) -> None:
    # Piper voices speak at 22050 Hz: every format must still accept that.
    x = sine(1.0, rate=22050)
    data = encode_all(x, 22050, fmt)
    if fmt == "pcm":
        assert len(data) == 2 * len(x)
    else:
        y = decode_audio(data, 16000)
        assert abs(len(y) / 16000 - 1.0) <= 0.15


def test_format_tables() -> None:
    assert set(CONTENT_TYPES) == set(OUTPUT_FORMATS)
    assert CONTENT_TYPES["mp3"] == "audio/mpeg"
    assert chat_audio_format("pcm16") == "pcm"
    for fmt in ("wav", "mp3", "flac", "opus", "aac"):
        assert chat_audio_format(fmt) == fmt
    with pytest.raises(ValueError):
        chat_audio_format("ogg")
    with pytest.raises(ValueError):
        StreamingEncoder("ogg")


# --------------------------------------------------------------------------- decoder


def _mux(container_fmt: str, codec: str, x: np.ndarray, rate: int) -> bytes:
    """Write a file the encoders don't produce (m4a, webm) to test the decoder with."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container_fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "container_fmt,codec,rate",
    [("mp4", "aac", 44100), ("webm", "libopus", 48000), ("ogg", "libopus", 48000)],
)
def test_decode_other_containers(container_fmt: str, codec: str, rate: int) -> None:
    data = _mux(container_fmt, codec, sine(1.5, rate=rate), rate)
    y = decode_audio(data, 16000)
    assert abs(len(y) / 16000 - 1.5) <= 0.15
    assert abs(dominant_freq(y, 16000) - 440) < 5


@pytest.mark.timeout(30)
def test_decode_stereo_downmix_and_rate() -> None:
    x = sine(1.0, rate=44100)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=44100, layout="stereo")
        interleaved = np.stack([x, x]).T.reshape(1, -1).copy()
        frame = av.AudioFrame.from_ndarray(interleaved, format="flt", layout="stereo")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    y = decode_audio(buf.getvalue(), 16000)
    assert y.ndim == 1
    assert abs(len(y) - 16000) <= 50


@pytest.mark.timeout(30)
def test_decode_empty() -> None:
    with pytest.raises(AudioDecodeError, match="empty"):
        decode_audio(b"")


@pytest.mark.timeout(30)
def test_decode_random_bytes() -> None:
    rng = np.random.default_rng(1234)
    for size in (16, 1000, 50_000):
        with pytest.raises(AudioDecodeError):
            decode_audio(rng.bytes(size))


@pytest.mark.timeout(30)
def test_decode_text_file() -> None:
    text = b"This is not audio. It is a plain text file.\n" * 40
    with pytest.raises(AudioDecodeError):
        decode_audio(text)


@pytest.mark.timeout(30)
def test_decode_wav_truncated_to_header() -> None:
    wav = encode_all(sine(0.5), SR, "wav")
    header_end = wav.index(b"data") + 8
    with pytest.raises(AudioDecodeError):
        decode_audio(wav[:header_end])


@pytest.mark.timeout(30)
def test_decode_truncated_mp3_does_not_hang() -> None:
    mp3 = encode_all(sine(1.0), SR, "mp3")
    # Cut mid-file: either the decodable prefix comes back or a clean error, never a hang.
    try:
        y = decode_audio(mp3[: len(mp3) // 2 + 7])
    except AudioDecodeError:
        return
    assert 0 < len(y) / 16000 < 1.0


def test_decode_error_is_value_error() -> None:
    assert issubclass(AudioDecodeError, ValueError)


# --------------------------------------------------------------------------- tempo


def _run_tempo(rate: float, x: np.ndarray, pieces: int = 1) -> np.ndarray:
    f = TempoFilter(rate, SR)
    out = [f.push(p) for p in np.array_split(x, pieces)]
    out.append(f.flush())
    return np.concatenate(out)


@pytest.mark.timeout(30)
def test_tempo_double_speed_keeps_pitch() -> None:
    y = _run_tempo(2.0, sine(2.0))
    assert abs(len(y) / SR - 1.0) <= 0.05
    assert abs(dominant_freq(y, SR) - 440) <= 5


@pytest.mark.timeout(30)
def test_tempo_quarter_speed() -> None:
    y = _run_tempo(0.25, sine(2.0))
    assert abs(len(y) / SR - 8.0) <= 0.4
    assert abs(dominant_freq(y, SR) - 440) <= 5


@pytest.mark.timeout(30)
def test_tempo_four_x() -> None:
    y = _run_tempo(4.0, sine(2.0))
    assert abs(len(y) / SR - 0.5) <= 0.05


@pytest.mark.timeout(30)
def test_tempo_pieces_match_single_push() -> None:
    x = sine(2.0)
    whole = _run_tempo(2.0, x, pieces=1)
    pieces = _run_tempo(2.0, x, pieces=10)
    assert abs(len(pieces) - len(whole)) <= 0.01 * len(whole)


@pytest.mark.timeout(30)
def test_tempo_streams_before_flush() -> None:
    # A big push must not be held back until the next push (latency for the first sentence).
    f = TempoFilter(2.0, SR)
    first = f.push(sine(2.0))
    assert len(first) > 0.8 * SR


def test_tempo_identity_and_range() -> None:
    x = sine(0.5)
    f = TempoFilter(1.0, SR)
    assert np.array_equal(f.push(x), x)
    assert len(f.flush()) == 0
    for bad in (0.2, 4.5, 0.0, -1.0):
        with pytest.raises(ValueError):
            TempoFilter(bad, SR)
    assert atempo_chain(4.0) == [2.0, 2.0]
    assert atempo_chain(0.25) == [0.5, 0.5]
    assert atempo_chain(1.5) == [1.5]


# --------------------------------------------------------------------------- pcm


def test_resample_22050_to_24000() -> None:
    y = resample(sine(1.0, rate=22050), 22050, 24000)
    assert y.dtype == np.float32
    assert abs(len(y) - 24000) <= 50
    assert abs(dominant_freq(y, 24000) - 440) <= 5


def test_resample_identity() -> None:
    x = sine(0.1)
    assert np.array_equal(resample(x, SR, SR), x)


def test_stream_resampler_matches_one_shot() -> None:
    x = sine(1.0, rate=22050)
    r = StreamResampler(22050, 24000)
    parts = [r.push(p) for p in np.array_split(x, 7)] + [r.flush()]
    streamed = np.concatenate(parts)
    assert abs(len(streamed) - 24000) <= 50
    one_shot = resample(x, 22050, 24000)
    n = min(len(streamed), len(one_shot))
    assert np.max(np.abs(streamed[:n] - one_shot[:n])) < 1e-3


def test_s16le_round_trip_and_clipping() -> None:
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0], dtype=np.float32)
    data = float_to_s16le(x)
    assert len(data) == 2 * len(x)
    y = s16le_to_float(data)
    assert np.allclose(y, np.clip(x, -1, 1), atol=1e-4)
    assert len(s16le_to_float(data + b"\x01")) == len(x)  # torn trailing byte dropped


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_encoder_close_abandons_stream(fmt: str) -> None:
    enc = StreamingEncoder(fmt, SR)
    enc.encode(sine(0.3))
    enc.close()
    with pytest.raises(RuntimeError):
        enc.encode(sine(0.1))
    assert enc.finish() == b""
