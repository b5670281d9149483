"""A turn heard phrase by phrase while the user speaks (gateway/api/realtime/hearing.py),
on the real recogniser (Whisper base) and real recordings: when the turn ends, only its
last phrase is left to hear, nothing is heard twice, and the words are those the whole
recording gives."""

from __future__ import annotations

import base64
import json
import re

import msgspec
import numpy as np
import pytest

from adapters.audio.pcm import resample
from engines.registry import registry_from_settings
from gateway.api.realtime.hearing import TurnHearing
from gateway.api.realtime.serving import RealtimeSession
from gateway.settings import load_settings
from tests.recordings import pcm24k
from tests.test_transcription import wer

RATE = 16_000


@pytest.fixture(scope="module")
async def registry():
    registry = registry_from_settings(load_settings())
    yield registry
    await registry.close()


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate, punctuation and spaces left out (for Chinese)."""
    ref, hyp = (re.sub(r"[\W_]+", "", s) for s in (reference, hypothesis))
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


async def hear_turn(registry, name: str, monkeypatch, pcm: bytes | None = None) -> dict:
    """One server-VAD turn of the recording ``name`` (or of ``pcm``, 24 kHz) and then
    silence, through a session; what the recogniser was given, and when."""
    events: list[dict] = []
    calls: list[float] = []  # seconds of audio per recogniser call, in order
    given: list[float] = []  # seconds of audio handed to the recogniser, as handed
    given_at_stop: list[float] = []
    handed_at: list[int] = []  # session samples received when each phrase was handed
    hear = TurnHearing.hear
    sessions: list[RealtimeSession] = []

    def handed(self, audio, end, announce=None):
        given.append(len(audio) / RATE)
        handed_at.append(sessions[0].heard)
        hear(self, audio, end, announce)

    monkeypatch.setattr(TurnHearing, "hear", handed)

    async def send(event) -> None:
        event = msgspec.to_builtins(event)
        events.append(event)
        if event["type"] == "input_audio_buffer.speech_stopped":
            given_at_stop.append(sum(given))

    session = RealtimeSession(registry, load_settings(), "gpt-realtime", send)
    sessions.append(session)
    recognise = session._recognise

    async def spy(audio, prompt=None, language=None):
        calls.append(len(audio) / RATE)
        return await recognise(audio, prompt, language)

    session._recognise = spy
    await session.handle(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["text"],
        "audio": {"input": {"transcription": {"model": "whisper-1"},
                            "turn_detection": {"type": "server_vad", "create_response": False,
                                               "silence_duration_ms": 800}}},
    }}))
    audio = (pcm if pcm is not None else pcm24k(name)) + bytes(48_000)
    for start in range(0, len(audio), 4_800):
        piece = base64.b64encode(audio[start : start + 4_800]).decode()
        await session.handle(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
    item = next(iter(session.items.values()))
    await item.transcription
    assert len(session.items) == 1, "the recording was heard as one turn"
    await session.close()
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    return {"transcript": item.content[0]["transcript"], "calls": calls,
            "given_at_stop": given_at_stop[0],
            "speech": (stopped["audio_end_ms"] - started["audio_start_ms"]) / 1000,
            "last_handed_after_speech": handed_at[-1] / RATE - stopped["audio_end_ms"] / 1000}


async def whole(registry, name: str) -> str:
    pcm = np.frombuffer(pcm24k(name), np.int16).astype(np.float32) / 32768
    async with registry.transcription("whisper-1") as engine:
        from engines.base import TranscriptionOptions

        stream = await engine.transcribe(resample(pcm, 24_000, RATE), TranscriptionOptions())
        return "".join([s.text async for s in stream.segments]).strip()


async def test_only_the_last_phrase_is_left_to_hear_when_the_turn_ends(registry, monkeypatch):
    """en_happy_prompt: three sentences, 7 s, the speaker pausing after each (0.8 s of
    silence ends the turn here, so the pauses do not).
    The pause hands its phrase to the recogniser; at speech_stopped all the speech has
    been given, and the last decode is of the last phrase alone, not of the whole turn
    again."""
    turn = await hear_turn(registry, "en_happy_prompt", monkeypatch)
    calls = turn["calls"]
    assert len(calls) >= 2, calls
    assert turn["speech"] - turn["given_at_stop"] < 0.3, turn
    assert calls[-1] < 0.6 * turn["speech"], calls
    assert sum(calls) < turn["speech"] + 0.3 * len(calls) + 1.5, calls  # nothing heard twice


@pytest.mark.parametrize("name", ["en_happy_prompt", "zero_shot_en_prompt"])
async def test_a_turn_heard_by_phrases_has_the_words_of_the_whole(registry, name, monkeypatch):
    turn = await hear_turn(registry, name, monkeypatch)
    expected = await whole(registry, name)
    assert wer(expected, turn["transcript"]) <= 0.1, (expected, turn["transcript"])


async def test_a_chinese_turn_heard_by_phrases_has_the_characters_of_the_whole(
    registry, monkeypatch
):
    """fear_zh_female_prompt pauses after 我总觉得有人 and goes on."""
    turn = await hear_turn(registry, "fear_zh_female_prompt", monkeypatch)
    expected = await whole(registry, "fear_zh_female_prompt")
    assert cer(expected, turn["transcript"]) <= 0.15, (expected, turn["transcript"])
    assert " " not in turn["transcript"].strip(), turn["transcript"]


@pytest.mark.parametrize("name", ["zero_shot_en_prompt", "paralingustic_prompt"])
async def test_the_last_words_are_heard_from_the_gap_where_the_speech_ends(
    registry, name, monkeypatch
):
    """The silence after the turn's last words opens with a gap: their phrase, two
    seconds or more in these recordings, goes to the recogniser then, not at the pause
    (224 ms later), and the reply begun at the pause waits for it. Audio arrives in 100 ms
    pieces here, so the gap's window is seen at most 132 ms after the speech and the
    pause 224 ms after it at the earliest."""
    turn = await hear_turn(registry, name, monkeypatch)
    assert turn["last_handed_after_speech"] < 0.2, turn


async def test_a_long_phrase_is_heard_in_pieces_while_the_user_goes_on(registry, monkeypatch):
    """denoise_prompt's first sentence: five seconds of speech with no pause in it, but
    clear gaps between some words. The recogniser hears it in phrases cut at such a gap
    while it is spoken, so the pause finds a second or so left to hear, not the whole
    sentence (heard whole, it was one decode of 5.9 s at the pause); and the words are
    those of the sentence heard whole."""
    sentence = pcm24k("denoise_prompt")[: int(5.9 * 24_000) * 2]  # up to its first pause
    turn = await hear_turn(registry, "denoise_prompt", monkeypatch, sentence)
    assert turn["speech"] > 5, turn
    assert len(turn["calls"]) >= 2, turn["calls"]
    assert turn["calls"][-1] < 0.3 * turn["speech"], turn["calls"]
    expected = "Such legislation was clarified and extended from time to time thereafter."
    assert wer(expected, turn["transcript"]) <= 0.1, turn["transcript"]
