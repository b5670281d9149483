"""Encoding cost per output format: PyAV in-process (what the gateway uses) against the
ffmpeg binary that pydub drives (from the imageio-ffmpeg wheel, when installed).

Prints, for 5 s of 24 kHz mono speech-like audio: PyAV's time to encode it in 5 pieces (as
sentences arrive), the time until its first piece is out, and the ffmpeg subprocess time
for the same audio in one go (pydub's only mode: it cannot emit bytes before the input is
complete), with their ratio.

    python bench/codecs.py [--repeats 5]
    pip install imageio-ffmpeg   # optional, for the subprocess column
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.audio.encode import OUTPUT_FORMATS, StreamingEncoder  # noqa: E402
from adapters.audio.pcm import float_to_s16le  # noqa: E402

RATE = 24_000
FFMPEG_ARGS = {
    "mp3": ["-f", "mp3", "-c:a", "libmp3lame", "-b:a", "64k"],
    "opus": ["-f", "ogg", "-c:a", "libopus", "-b:a", "32k"],
    "aac": ["-f", "adts", "-c:a", "aac", "-b:a", "64k"],
    "flac": ["-f", "flac"],
    "wav": ["-f", "wav"],
    "pcm": ["-f", "s16le"],
}


def speech_like(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    noise = np.random.default_rng(0).normal(0, 0.02, t.size)
    return (0.2 * voice * envelope + noise).astype(np.float32)


def pyav(audio: np.ndarray, fmt: str) -> tuple[float, float]:
    started = time.perf_counter()
    encoder = StreamingEncoder(fmt, RATE)
    first = None
    for piece in np.array_split(audio, 5):
        out = encoder.encode(piece)
        if out and first is None:
            first = time.perf_counter() - started
    encoder.finish()
    return first or 0.0, time.perf_counter() - started


def ffmpeg_binary(audio: np.ndarray, fmt: str, binary: str) -> float:
    raw = float_to_s16le(audio)
    started = time.perf_counter()
    subprocess.run(
        [binary, "-loglevel", "error", "-f", "s16le", "-ar", str(RATE), "-ac", "1", "-i", "pipe:0",
         *FFMPEG_ARGS[fmt], "pipe:1"],
        input=raw, capture_output=True, check=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    try:
        import imageio_ffmpeg

        binary = imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        binary = None
    audio = speech_like(5.0)
    print(f"5 s of 24 kHz mono audio, median of {args.repeats}")
    print(f"{'format':6} {'PyAV first piece ms':>19} {'PyAV all ms':>11} {'ffmpeg binary ms':>16} {'binary/PyAV':>11}")
    for fmt in OUTPUT_FORMATS:
        runs = [pyav(audio, fmt) for _ in range(args.repeats)]
        first = statistics.median(r[0] for r in runs) * 1000
        total = statistics.median(r[1] for r in runs) * 1000
        if binary:
            sub = statistics.median(ffmpeg_binary(audio, fmt, binary) for _ in range(args.repeats)) * 1000
            print(f"{fmt:6} {first:19.1f} {total:11.1f} {sub:16.1f} {sub / total:11.1f}")
        else:
            print(f"{fmt:6} {first:19.1f} {total:11.1f} {'-':>16} {'-':>11}")


if __name__ == "__main__":
    main()
