"""Twenty realtime turns in a row, each a real recording heard through server VAD and
answered in audio, through the official SDK's realtime client on the embedded engines:
every turn is answered, and none takes over three times the median from the end of the
user's speech (``speech_stopped``) to the first audio of the answer.

The outliers this guards against were turns that waited for work the gateway should no
longer have been doing (a response left running by a session that had closed, queued
transcriptions); the absolute figures are a benchmark's (bench/), not this test's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time

import pytest
from openai import AsyncOpenAI

from tests.recordings import NAMES, pcm24k

pytestmark = pytest.mark.slow

TURNS = 20
CHUNK = 4_800  # 100 ms of 24 kHz 16-bit PCM
SILENCE = b"\0" * 48_000  # 1 s: more than the silence that ends a turn


async def speak(conn, pcm: bytes, pace: float) -> None:
    """Stream ``pcm`` in 100 ms pieces, ``pace`` times faster than real time, then
    silence, as a microphone would."""
    audio = pcm + SILENCE
    for start in range(0, len(audio), CHUNK):
        piece = audio[start : start + CHUNK]
        await conn.input_audio_buffer.append(audio=base64.b64encode(piece).decode())
        await asyncio.sleep(0.1 / pace)


async def turn(conn, pcm: bytes) -> float:
    """Seconds from the last ``speech_stopped`` to the first audio of the answer that
    follows it; waits for that answer's end. A pause inside the recording may end a turn
    early, and the speech after it then barges in: only the answer to the whole of it
    counts."""
    speaking = asyncio.create_task(speak(conn, pcm, pace=2.0))
    stopped = first_audio = None
    try:
        while True:
            event = json.loads(await asyncio.wait_for(conn.recv_bytes(), 120))
            kind = event["type"]
            assert kind != "error", event
            if kind == "input_audio_buffer.speech_stopped":
                stopped, first_audio = time.monotonic(), None
            elif kind == "response.output_audio.delta" and first_audio is None:
                first_audio = time.monotonic()
            elif kind == "response.done" and speaking.done():
                assert event["response"]["status"] in ("completed", "incomplete"), event
                break
    finally:
        await speaking
    assert stopped is not None and first_audio is not None
    return first_audio - stopped


async def test_twenty_turns_of_real_speech_have_no_outlier(server):
    client = AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    recordings = [pcm24k(name) for name in NAMES]
    waits = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "max_output_tokens": 40,
                "audio": {"input": {"turn_detection": {"type": "server_vad",
                                                       "silence_duration_ms": 700}}},
            }
        )
        for i in range(TURNS):
            waits.append(await turn(conn, recordings[i % len(recordings)]))
    print("speech_stopped -> first audio, s:", [round(w, 2) for w in waits])
    median = statistics.median(waits)
    slowest = max(waits)
    assert slowest <= 3 * median, [round(w, 2) for w in waits]
