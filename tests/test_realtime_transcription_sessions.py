"""Realtime transcription sessions (``/v1/realtime?intent=transcription``) through the
official Python SDK's realtime client, as the Agents SDK's streamed VoicePipeline, LiveKit's
``STT(use_realtime=True)`` and Pipecat's ``OpenAIRealtimeSTTService`` open them.

Real recordings (tests/recordings) streamed at about real-time pace; every server event is
validated against the official spec's ``RealtimeServerEvent`` schema and parsed by the SDK
(tests.test_realtime.Session). The key's policy holds as for conversation sessions.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI

from gateway.settings import KeyLimitSettings, load_settings
from tests.conftest import ROOT, live_server
from tests.recordings import TEXTS, pcm24k
from tests.redis_server import avoid_minute_edge
from tests.test_realtime import Session
from tests.test_transcription import wer

COMPLETED = "conversation.item.input_audio_transcription.completed"

pytestmark = pytest.mark.slow

TRANSCRIBE = {"intent": "transcription"}
LOGPROBS = "item.input_audio_transcription.logprobs"


def sdk(url: str, key: str = "sk-local") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


async def stream(conn, pcm: bytes, pace: float = 1.0) -> None:
    """Append 24 kHz PCM in 100 ms pieces, at ``pace`` times real time (0: at once)."""
    for start in range(0, len(pcm), 4_800):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[start:start + 4_800]).decode())
        await asyncio.sleep(0.1 / pace if pace else 0)


def transcription_update(**input_audio) -> dict:
    return {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24_000}, **input_audio,
    }}}


async def test_a_turn_is_streamed_as_deltas_then_completed_with_the_whole_transcript(server, spec):
    """The Agents SDK's flow: no model in the URL, wait for session.created, session.update
    naming the model, audio, and at the end a last commit (empty: VAD already committed the
    turn, answered by the error the SDK expects) and a clear."""
    name = "en_happy_prompt"  # three sentences, 7.4 s, a pause after each
    async with sdk(server.url).realtime.connect(extra_query=TRANSCRIBE) as conn:
        s = Session(conn, spec)
        created = (await s.until("session.created"))["session"]
        assert created["type"] == "transcription"
        assert created["object"] == "realtime.transcription_session"
        assert created["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        await conn.session.update(session=transcription_update(
            transcription={"model": "gpt-4o-transcribe", "language": "en"},
            # 0.8 s: the speaker's pauses between sentences do not end the turn
            turn_detection={"type": "server_vad", "silence_duration_ms": 800},
        ))
        updated = (await s.until("session.updated"))["session"]
        assert updated["audio"]["input"]["transcription"] == {
            "model": "gpt-4o-transcribe", "language": "en"
        }
        await stream(conn, pcm24k(name) + bytes(48_000 * 2))
        completed = await s.until("conversation.item.input_audio_transcription.completed")
        await conn.input_audio_buffer.commit(event_id="final")
        final = await s.next()
        await conn.input_audio_buffer.clear()
        await s.until("input_audio_buffer.cleared")
        if final["type"] == "input_audio_buffer.committed":  # the silence after the turn
            last = await s.until("conversation.item.input_audio_transcription.completed")
            assert last["item_id"] == final["item_id"]
            assert not last["transcript"].strip(), last  # silence has no words
        else:  # or nothing: what the SDK expects when VAD committed everything
            assert final["type"] == "error" and final["error"]["event_id"] == "final"
            assert final["error"]["code"] == "input_audio_buffer_commit_empty"
    order = [e["type"] for e in s.events]
    deltas = s.of("conversation.item.input_audio_transcription.delta")
    # Heard phrase by phrase while the user speaks: the first words come before the turn ends.
    assert len(deltas) >= 2, deltas
    assert order.index("conversation.item.input_audio_transcription.delta") < order.index(
        "input_audio_buffer.speech_stopped"
    ), order
    item_id = s.of("input_audio_buffer.committed")[0]["item_id"]
    deltas = [e for e in s.events[: s.events.index(completed)] if e in deltas]  # the turn's
    assert s.of("input_audio_buffer.speech_started")[0]["item_id"] == item_id
    assert {d["item_id"] for d in deltas} == {completed["item_id"]} == {item_id}
    transcript = completed["transcript"]
    assert " ".join("".join(d["delta"] for d in deltas).split()) == " ".join(transcript.split())
    assert wer(TEXTS[name], transcript) <= 0.25, transcript
    assert completed["usage"]["type"] == "duration"
    assert 6.5 < completed["usage"]["seconds"] < 9.5, completed["usage"]
    assert all("logprobs" not in e for e in [*deltas, completed])  # not asked for
    assert not s.of("response.created")  # a transcription session never answers


async def test_the_agents_sdk_default_semantic_vad_over_a_plain_websocket(server, spec):
    """What openai-agents 0.24's streamed STT sends, byte for byte in shape: a plain
    WebSocket with the key in the Authorization header, ``{"type": "semantic_vad"}``.
    The end-of-turn model may end a turn at the recording's 0.4 s pause after a complete
    sentence ("His political stance was conservative,": P 0.91-0.97), as the SDK expects
    of semantic_vad: every committed turn is transcribed, and the turns read the recording."""
    name = "zero_shot_en_prompt"
    url = server.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    events: list[dict] = []

    def of(type_: str) -> list[dict]:
        return [e for e in events if e["type"] == type_]

    async def receive(ws) -> None:
        event = json.loads(await asyncio.wait_for(ws.recv(), 120))
        spec.validate(event, "RealtimeServerEvent")
        events.append(event)
        assert event["type"] != "error", event

    def every_turn_transcribed() -> bool:
        committed = {e["item_id"] for e in of("input_audio_buffer.committed")}
        return bool(committed) and committed == {e["item_id"] for e in of(COMPLETED)}

    async with websockets.connect(url, additional_headers={"Authorization": "Bearer sk"}) as ws:
        await receive(ws)
        assert events[-1]["type"] == "session.created"
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "transcription": {"model": "gpt-4o-transcribe"},
                                "turn_detection": {"type": "semantic_vad"}}},
        }}))
        while not of("session.updated"):
            await receive(ws)
        updated = of("session.updated")[0]["session"]
        audio = pcm24k(name) + bytes(48_000 * 3)
        for start in range(0, len(audio), 4_800):
            piece = base64.b64encode(audio[start:start + 4_800]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
            await asyncio.sleep(0.1)
        # Events are answered in order: once the clear is, every turn has been committed.
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        while not of("input_audio_buffer.cleared") or not every_turn_transcribed():
            await receive(ws)
    assert len(of("input_audio_buffer.speech_started")) == len(of(COMPLETED))
    assert updated["audio"]["input"]["turn_detection"] == {"type": "semantic_vad",
                                                           "eagerness": "auto"}
    committed = [e["item_id"] for e in of("input_audio_buffer.committed")]
    assert len(committed) <= 2, committed  # at most the one complete sentence's pause
    transcripts = {e["item_id"]: e["transcript"] for e in of(COMPLETED)}
    heard = " ".join(transcripts[item] for item in committed)
    assert wer(TEXTS[name], heard) <= 0.2, heard


async def test_manual_commit_with_logprobs_and_what_a_transcription_session_refuses(server, spec):
    """Pipecat's default: turn_detection null, the client commits. include asks for
    logprobs; response.create and a realtime session.update are refused with an error event
    and the session goes on."""
    name = "zero_shot_en_prompt"
    async with sdk(server.url).realtime.connect(extra_query=TRANSCRIBE) as conn:
        s = Session(conn, spec)
        await s.until("session.created")
        await conn.session.update(session={
            **transcription_update(transcription={"model": "whisper-1"}, turn_detection=None,
                                   noise_reduction={"type": "near_field"}),
            "include": [LOGPROBS],
        })
        updated = (await s.until("session.updated"))["session"]
        assert updated["audio"]["input"]["turn_detection"] is None
        assert updated["include"] == [LOGPROBS]
        await conn.response.create(event_id="answer-me")
        refused = (await s.until("error"))["error"]
        await conn.session.update(session={"type": "realtime", "instructions": "hi"},
                                  event_id="switch")
        switched = (await s.until("error"))["error"]
        await stream(conn, pcm24k(name) + bytes(24_000), pace=0)
        await conn.input_audio_buffer.commit()
        committed = await s.until("input_audio_buffer.committed")
        completed = await s.until("conversation.item.input_audio_transcription.completed")
    assert refused["event_id"] == "answer-me" and refused["type"] == "invalid_request_error"
    assert "transcription session" in refused["message"]
    assert switched["event_id"] == "switch" and switched["param"] == "session.type"
    assert not s.of("input_audio_buffer.speech_started")  # no turn detection
    assert not s.of("response.created")
    assert completed["item_id"] == committed["item_id"]
    assert wer(TEXTS[name], completed["transcript"]) <= 0.2, completed["transcript"]
    deltas = s.of("conversation.item.input_audio_transcription.delta")
    assert deltas and all(d["logprobs"] for d in deltas)
    logprobs = completed["logprobs"]
    assert len(logprobs) >= len(TEXTS[name].split()) - 2
    assert all(p["logprob"] <= 0 and bytes(p["bytes"]).decode() == p["token"] for p in logprobs)
    assert " ".join("".join(p["token"] for p in logprobs).split()) == completed["transcript"]
    assert sum(len(d["logprobs"]) for d in deltas) == len(logprobs)


async def test_a_conversation_session_cannot_become_a_transcription_session(server, spec):
    async with sdk(server.url).realtime.connect(model="gpt-realtime") as conn:
        s = Session(conn, spec)
        assert (await s.until("session.created"))["session"]["type"] == "realtime"
        await conn.session.update(session=transcription_update(), event_id="switch")
        error = (await s.until("error"))["error"]
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 50})
        kept = (await s.until("session.updated"))["session"]
    assert error["event_id"] == "switch" and error["param"] == "session.type"
    assert kept["type"] == "realtime" and kept["max_output_tokens"] == 50


# ---------------------------------------------------------------------- the key's policy

KEYS = {
    "sk-chat-only": KeyLimitSettings(models=["gpt-realtime"]),
    "sk-mini-stt": KeyLimitSettings(models=["gpt-4o-mini-transcribe"]),
    "sk-in": KeyLimitSettings(audio_seconds_in_per_minute=3),
    "sk-one-stream": KeyLimitSettings(concurrent_streams=1),
}


@pytest.fixture(scope="module")
def gateway():
    settings = load_settings()
    settings.engines.preload = []
    settings.server.api_keys = [*KEYS, "sk-free"]
    settings.limits.per_key = KEYS
    server = live_server(settings).start()
    yield server
    server.stop()


async def refused_at_handshake(url: str, key: str, **query) -> tuple[dict, int]:
    async with sdk(url, key).realtime.connect(extra_query={**TRANSCRIBE, **query}) as conn:
        event = json.loads(await asyncio.wait_for(conn.recv_bytes(), 60))
        try:
            await asyncio.wait_for(conn.recv_bytes(), 10)
        except websockets.ConnectionClosed as closed:
            return event, closed.rcvd.code
    raise AssertionError("the refused session stayed open")


def tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * 24_000)) / 24_000
    return (0.1 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


async def test_the_transcription_model_is_held_to_the_key_and_the_registry(gateway, spec):
    # LiveKit names the model in the URL: a model the key lacks is refused as unknown.
    event, code = await refused_at_handshake(gateway.url, "sk-chat-only",
                                             model="gpt-4o-transcribe")
    assert event["error"]["code"] == "model_not_found" and code == 1008
    unknown, unknown_code = await refused_at_handshake(gateway.url, "sk-free", model="nope")
    assert unknown["error"]["code"] == "model_not_found" and unknown_code == 1008
    chat, _ = await refused_at_handshake(gateway.url, "sk-free", model="gpt-realtime")
    assert chat["error"]["param"] == "model"  # a chat model does not transcribe
    async with sdk(gateway.url, "sk-mini-stt").realtime.connect(
        extra_query={**TRANSCRIBE, "model": "gpt-4o-mini-transcribe"}
    ) as conn:
        s = Session(conn, spec)
        created = (await s.until("session.created"))["session"]
        assert created["audio"]["input"]["transcription"]["model"] == "gpt-4o-mini-transcribe"
        # Named later (the Agents SDK, Pipecat): refused the same way, the session goes on.
        await conn.session.update(session=transcription_update(
            transcription={"model": "whisper-1"}), event_id="other")
        other = (await s.until("error"))["error"]
        assert other["code"] == "model_not_found" and other["event_id"] == "other"
    # Opened with no model, the default (whisper-1) is the key's model when it is used.
    async with sdk(gateway.url, "sk-chat-only").realtime.connect(extra_query=TRANSCRIBE) as conn:
        s = Session(conn, spec)
        await conn.session.update(session=transcription_update(turn_detection=None))
        await s.until("session.updated")
        await stream(conn, tone(0.5), pace=0)
        await conn.input_audio_buffer.commit(event_id="commit")
        default = (await s.until("error"))["error"]
    assert default["code"] == "model_not_found" and default["event_id"] == "commit"
    assert not s.of("input_audio_buffer.committed")


async def test_committed_audio_is_charged_and_the_session_holds_a_stream(gateway, spec):
    avoid_minute_edge(30)
    async with sdk(gateway.url, "sk-in").realtime.connect(extra_query=TRANSCRIBE) as conn:
        s = Session(conn, spec)
        await conn.session.update(session=transcription_update(turn_detection=None))
        await s.until("session.updated")
        await stream(conn, tone(2.0), pace=0)
        await conn.input_audio_buffer.commit()
        await s.until("input_audio_buffer.committed")
        await stream(conn, tone(2.0), pace=0)  # 2 s more do not fit in the last 1 s
        await conn.input_audio_buffer.commit(event_id="over")
        over = (await s.until("error"))["error"]
    assert over["code"] == "rate_limit_exceeded" and over["event_id"] == "over"
    assert "audio seconds heard" in over["message"]
    async with sdk(gateway.url, "sk-one-stream").realtime.connect(extra_query=TRANSCRIBE) as conn:
        await Session(conn, spec).until("session.created")
        second, code = await refused_at_handshake(gateway.url, "sk-one-stream")
    assert second["error"]["code"] == "rate_limit_exceeded" and code == 1013


# ---------------------------------------------------------------------- the README


def transcription_examples() -> list[str]:
    """The README's realtime examples that open a transcription session."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Realtime", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    found = [b for b in blocks if '"intent": "transcription"' in b]
    assert found, "no transcription example in the README's realtime section"
    return found


def test_readme_transcription_example_runs(server):
    for code in transcription_examples():
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
            env={**__import__("os").environ, "GATEWAY_URL": server.url + "/v1"},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        heard = re.search(r"heard: (.*)", result.stdout).group(1)
        assert wer("What is the capital of France?", heard) <= 0.34, result.stdout
        assert re.search(r"\.\.\. \S", result.stdout), result.stdout  # a delta came first
