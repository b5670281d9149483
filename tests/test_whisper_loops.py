"""A short clip Whisper loops on is held to what its length can say, and the loop is cut
(engines/embedded/whisper_loops.py), on the real recogniser and a real recording."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.audio.pcm import resample
from engines.base import TranscriptionOptions
from engines.embedded.whisper_loops import token_budget, without_loop
from engines.registry import registry_from_settings
from gateway.settings import load_settings
from tests.recordings import pcm24k

RATE = 16_000


@pytest.fixture(scope="module")
async def registry():
    registry = registry_from_settings(load_settings())
    yield registry
    await registry.close()


def speech16k(name: str) -> np.ndarray:
    pcm = np.frombuffer(pcm24k(name), np.int16).astype(np.float32) / 32768
    return resample(pcm, 24_000, RATE)


async def test_a_phrase_whisper_loops_on_is_heard_once(registry):
    """speed_prompt's second phrase (1.74-3.79 s), prompted with its first as a realtime
    turn's phrases are: Whisper wrote "我给你买了一双软软的鞋垫儿。" six times over, running
    each of three temperatures to the end of its context (4.9 s on two cores)."""
    clip = speech16k("speed_prompt")[27_904 : 27_904 + 32_768]
    options = TranscriptionOptions(language="zh", prompt="上次你说鞋子有点摩脚")
    async with registry.transcription("whisper-1") as engine:
        stream = await engine.transcribe(clip, options)
        segments = [segment async for segment in stream.segments]
    text = "".join(s.text for s in segments)
    assert text.count("鞋垫儿") == 1, text
    assert text.startswith("我给你买了一双") and text.endswith("鞋垫儿。"), text
    assert sum(len(s.tokens) for s in segments) <= token_budget(len(clip) / RATE)


@pytest.mark.parametrize("looped, heard", [
    ("我给你买了一双软软的鞋垫儿。我给你买了一双软软的鞋垫儿。我", "我给你买了一双软软的鞋垫儿。"),
    (" Thank you. Thank you. Thank you. Than", " Thank you."),
])
def test_a_loop_is_cut_after_its_first_copy(looped, heard):
    assert without_loop(looped) == heard


@pytest.mark.parametrize("said", [
    "上次你说鞋子有点摩脚。",
    "鞋垫儿的鞋垫儿",  # a repeat shorter than a copy and a half: the speaker's own
    " His political stance was conservative.",
    " no, no, no",  # repeats too short to be a loop
])
def test_words_that_do_not_loop_are_kept(said):
    assert without_loop(said) == said


def test_long_clips_keep_whispers_own_limit():
    """A 30 s window of fast speech needs most of the context: no budget of ours there, and
    a short clip's budget leaves room for a full prompt (448 tokens in all)."""
    assert token_budget(30.0) is None
    assert token_budget(2.0) >= 2 * 9 * 2.0  # twice the fastest speech recorded
    assert token_budget(9.0) + 224 + 4 <= 448
