"""Real recordings (see README.md here) as the PCM a realtime client streams."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from adapters.audio.pcm import resample

HERE = Path(__file__).resolve().parent
NAMES = [
    "en_happy_prompt",
    "zero_shot_en_prompt",
    "fear_zh_female_prompt",
    "speed_prompt",
    "paralingustic_prompt",
]


def pcm24k(name: str) -> bytes:
    """The recording as 24 kHz 16-bit mono PCM (what ``audio/pcm`` sessions send)."""
    with wave.open(str(HERE / f"{name}.wav")) as file:
        assert file.getnchannels() == 1 and file.getsampwidth() == 2
        rate = file.getframerate()
        samples = np.frombuffer(file.readframes(file.getnframes()), "<i2")
    floats = resample(samples.astype(np.float32) / 32768.0, rate, 24_000)
    return (np.clip(floats, -1.0, 1.0) * 32767).astype("<i2").tobytes()
