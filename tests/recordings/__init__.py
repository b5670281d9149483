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


# What each speaker reads, as written in examples/text.txt of the same Step-Audio-EditX
# commit (see README.md): the reference for word (English) and character (Chinese) error rates.
TEXTS = {
    "en_happy_prompt": "You know, I just finished that big project and feel so relieved. "
    "Everything seems easier and more colorful, what a wonderful feeling!",
    "zero_shot_en_prompt": "His political stance was conservative, and he was particularly "
    "close to margaret thatcher.",
    "fear_zh_female_prompt": "我总觉得，有人在跟着我，我能听到奇怪的脚步声。",
    "speed_prompt": "上次你说鞋子有点磨脚，我给你买了一双软软的鞋垫。",
    "paralingustic_prompt": "我觉得这个计划大概是可行的，不过还需要再仔细考虑一下。",
}


def pcm24k(name: str) -> bytes:
    """The recording as 24 kHz 16-bit mono PCM (what ``audio/pcm`` sessions send)."""
    with wave.open(str(HERE / f"{name}.wav")) as file:
        assert file.getnchannels() == 1 and file.getsampwidth() == 2
        rate = file.getframerate()
        samples = np.frombuffer(file.readframes(file.getnframes()), "<i2")
    floats = resample(samples.astype(np.float32) / 32768.0, rate, 24_000)
    return (np.clip(floats, -1.0, 1.0) * 32767).astype("<i2").tobytes()
