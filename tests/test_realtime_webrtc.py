"""WebRTC calls (POST /v1/realtime/calls) from a Python caller (aiortc) whose microphone
plays a real recording: the question is transcribed, the spoken answer arrives as RTP
and the gateway's own Whisper hears in it what the answer's transcript says; every event
on the ``oai-events`` channel is a spec server event (no audio deltas: the audio is RTP);
hangup and a vanished caller free the session and the key's stream within a second.

Every packet goes to 127.0.0.1: the gateway offers and accepts loopback only (its
default [webrtc] settings) and the caller is held to loopback the same way."""

from __future__ import annotations

import asyncio
import io
import time
import wave

import httpx
import numpy as np
import pytest

pytest.importorskip("aiortc")

from adapters.audio.pcm import resample  # noqa: E402
from gateway.settings import KeyLimitSettings, load_settings  # noqa: E402
from tests.conftest import live_server  # noqa: E402
from tests.recordings import TEXTS, pcm24k  # noqa: E402
from tests.webrtc_client import RATE, Caller  # noqa: E402

pytestmark = pytest.mark.slow

KEYS = {"sk-one-stream": KeyLimitSettings(concurrent_streams=1)}
RECORDING = "zero_shot_en_prompt"
SESSION = {
    "type": "realtime",
    "instructions": "Answer in one short sentence.",
    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
}


@pytest.fixture(scope="module")
def gateway():
    settings = load_settings()
    settings.server.api_keys = [*KEYS, "sk-free"]
    settings.limits.per_key = KEYS
    settings.engines.preload = ["whisper-1", "tts-1", "gpt-4o-mini"]
    server = live_server(settings).start(timeout=300)
    yield server
    server.stop()


def recording_48k(name: str) -> np.ndarray:
    pcm = np.frombuffer(pcm24k(name), "<i2").astype(np.float32) / 32767
    return resample(pcm, 24_000, RATE)


def transcribe(url: str, samples_48k: np.ndarray) -> str:
    pcm16 = (np.clip(resample(samples_48k, RATE, 16_000), -1, 1) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16_000)
        out.writeframes(pcm16.tobytes())
    response = httpx.post(
        url + "/v1/audio/transcriptions", headers={"authorization": "Bearer sk-free"},
        files={"file": ("heard.wav", buffer.getvalue(), "audio/wav")},
        data={"model": "whisper-1"}, timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()["text"]


def words(text: str) -> set[str]:
    return {w.strip(".,!?;:'\"").lower() for w in text.split() if len(w.strip(".,!?;:'\"")) > 3}


def sessions_open(gateway) -> int:
    return gateway.server.config.app.state.get("realtime_sessions_open", 0)


async def freed_within(gateway, seconds: float) -> float:
    """Seconds until no session is open and the key's one stream is free again."""
    begun = time.monotonic()
    while time.monotonic() - begun < seconds:
        if sessions_open(gateway) == 0:
            return time.monotonic() - begun
        await asyncio.sleep(0.02)
    raise AssertionError(f"still {sessions_open(gateway)} session(s) open after {seconds} s")


async def test_a_call_hears_the_question_and_answers_aloud(gateway, spec):
    caller = Caller(gateway.url, "sk-free")
    try:
        answer = await caller.dial(SESSION)
        assert answer.status_code == 201, answer.text
        assert answer.headers["content-type"].startswith("application/sdp")
        assert answer.headers["location"].startswith("/v1/realtime/calls/rtc_")
        candidates = [line for line in answer.text.splitlines() if line.startswith("a=candidate:")]
        assert candidates and all(line.split()[4] == "127.0.0.1" for line in candidates)
        created = await caller.until("session.created")
        assert created["session"]["instructions"] == SESSION["instructions"]
        caller.microphone.say(recording_48k(RECORDING))
        caller.microphone.say(np.zeros(RATE * 2, dtype=np.float32))
        heard = await caller.until("conversation.item.input_audio_transcription.completed")
        assert words(TEXTS[RECORDING]) & words(heard["transcript"]), heard
        started = await caller.until("output_audio_buffer.started")
        playing_from = len(caller.heard)
        done = await caller.until("response.done")
        assert done["response"]["status"] == "completed", done
        stopped = await caller.until("output_audio_buffer.stopped", timeout=60)
        assert stopped["response_id"] == started["response_id"] == done["response"]["id"]
        spoken = done["response"]["output"][0]["content"][0]["transcript"]
        # (in a thread: the caller keeps sending its microphone meanwhile, as a browser does)
        said = await asyncio.to_thread(transcribe, gateway.url, caller.audio(playing_from))
        assert len(words(spoken) & words(said)) >= max(1, len(words(spoken)) // 2), (spoken, said)
        # The user's item with its audio is larger than a data channel message: an error
        # says so, and the call goes on.
        caller.send({"type": "conversation.item.retrieve", "item_id": heard["item_id"]})
        retrieved = await caller.until("conversation.item.retrieved", "error")
        assert retrieved["type"] == "conversation.item.retrieved" or (
            retrieved["error"]["code"] == "event_too_large"), retrieved
        caller.send({"type": "conversation.item.delete", "item_id": heard["item_id"]})
        await caller.until("conversation.item.deleted")
    finally:
        await caller.hang_up()
    types = {event["type"] for event in caller.seen}
    assert "response.output_audio.delta" not in types  # the audio went as RTP
    assert "response.output_audio_transcript.delta" in types
    for event in caller.seen:
        spec.validate(event, "RealtimeServerEvent")


async def test_hangup_frees_the_session_and_the_keys_stream_within_a_second(gateway):
    caller = Caller(gateway.url, "sk-one-stream")
    try:
        assert (await caller.dial()).status_code == 201
        await caller.until("session.created")
        second = Caller(gateway.url, "sk-one-stream")
        refused = await second.dial()  # the key's one stream is the call's
        await second.pc.close()
        assert refused.status_code == 429, refused.text
        hung_up = httpx.post(
            f"{gateway.url}/v1/realtime/calls/{caller.call_id}/hangup",
            headers={"authorization": "Bearer sk-one-stream"}, timeout=10,
        )
        assert hung_up.status_code == 200
        assert await freed_within(gateway, 1.0) < 1.0
    finally:
        await caller.hang_up()
    again = Caller(gateway.url, "sk-one-stream")
    try:
        assert (await again.dial()).status_code == 201
    finally:
        await again.hang_up()
    await freed_within(gateway, 1.0)


async def test_another_keys_hangup_finds_no_call(gateway):
    caller = Caller(gateway.url, "sk-free")
    try:
        assert (await caller.dial()).status_code == 201
        other = httpx.post(
            f"{gateway.url}/v1/realtime/calls/{caller.call_id}/hangup",
            headers={"authorization": "Bearer sk-one-stream"}, timeout=10,
        )
        assert other.status_code == 404
    finally:
        await caller.hang_up()
    await freed_within(gateway, 1.0)


def compute_busy(gateway) -> int:
    return gateway.server.config.app.state["registry"]._compute.busy


async def test_a_caller_that_closes_or_vanishes_is_hung_up_within_a_second(gateway):
    """The caller leaves while a long answer is being made (the compute slot is held):
    within a second of it leaving, its session is closed and the compute slot free."""
    for leave in ("hang_up", "vanish"):
        caller = Caller(gateway.url, "sk-one-stream")
        assert (await caller.dial()).status_code == 201
        await caller.until("session.created")
        caller.send({"type": "session.update", "session": {
            "type": "realtime", "max_output_tokens": 400,
            "audio": {"input": {"turn_detection": None}}}})
        caller.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Write a long story about a dragon."}]}})
        caller.send({"type": "response.create"})
        await caller.until("response.output_audio_transcript.delta")
        begun = time.monotonic()
        while not compute_busy(gateway):  # the answer's words or speech being made
            assert time.monotonic() - begun < 10, "the answer never held the compute slot"
            await asyncio.sleep(0.005)
        assert sessions_open(gateway) == 1
        await getattr(caller, leave)()
        left = time.monotonic()
        while sessions_open(gateway) or compute_busy(gateway):
            assert time.monotonic() - left < 1.0, (
                leave, sessions_open(gateway), compute_busy(gateway))
            await asyncio.sleep(0.01)
        print(f"{leave}: freed {time.monotonic() - left:.2f} s after the caller left")
        await caller.pc.close()


async def test_a_websocket_joins_the_calls_session(gateway, spec):
    """A server beside the browser (?call_id=): the same session, both ways."""
    import json

    import websockets

    caller = Caller(gateway.url, "sk-free")
    try:
        assert (await caller.dial()).status_code == 201
        created = await caller.until("session.created")
        url = f"{gateway.url.replace('http', 'ws')}/v1/realtime?call_id={caller.call_id}"
        refused = websockets.connect(url, additional_headers={"authorization": "Bearer sk-one-stream"})
        with pytest.raises(websockets.ConnectionClosed):  # another key's call: none
            async with refused as socket:
                json.loads(await asyncio.wait_for(socket.recv(), 10))
                await asyncio.wait_for(socket.recv(), 10)
        joined = websockets.connect(url, additional_headers={"authorization": "Bearer sk-free"})
        async with joined as socket:
            first = json.loads(await asyncio.wait_for(socket.recv(), 10))
            assert first["type"] == "session.created"
            assert first["session"]["id"] == created["session"]["id"]
            await socket.send(json.dumps({"type": "response.create", "response": {
                "output_modalities": ["text"], "instructions": "Say hello.",
                "max_output_tokens": 16}}))
            while (event := json.loads(await asyncio.wait_for(socket.recv(), 120)))["type"] != "response.done":
                spec.validate(event, "RealtimeServerEvent")
        on_call = await caller.until("response.done")
        assert on_call["response"]["id"] == event["response"]["id"]
    finally:
        await caller.hang_up()
    await freed_within(gateway, 1.0)
