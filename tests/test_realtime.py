"""/v1/realtime through the official Python SDK's realtime client, against a live gateway.

Recordings are the gateway's own speech (Piper), streamed in 100 ms chunks as a
microphone would send them (faster than real time where timing is not the point). Every
server event is validated against the official spec's ``RealtimeServerEvent`` schema and
parsed by the SDK.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import wave

import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI

from adapters.audio.pcm import resample, s16le_to_float
from adapters.realtime.audio import encode_wire
from tests.conftest import live_server
from tests.test_transcription import wer

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
WEATHER = "What is the weather like in Paris today?"
INTERRUPT = "Stop talking. I have another question for you."
# Asks for an answer long enough to still be playing when the user barges in.
STORY = "Write a long story about a dragon."
SILENCE = b"\0" * 48_000  # one second of 24 kHz PCM
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def recordings(openai_client) -> dict[str, bytes]:
    """24 kHz 16-bit PCM, what ``audio/pcm`` sessions send."""
    return {
        text: openai_client.audio.speech.create(
            model="tts-1", voice="alloy", input=text, response_format="pcm"
        ).content
        for text in (QUESTION, WEATHER, INTERRUPT, STORY)
    }


@pytest.fixture
async def client(server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)


class Session:
    """A realtime connection whose every server event is checked against the spec."""

    def __init__(self, conn, spec) -> None:
        self.conn = conn
        self.spec = spec
        self.events: list[dict] = []

    async def next(self, timeout: float = 240) -> dict:
        raw = await asyncio.wait_for(self.conn.recv_bytes(), timeout)
        event = json.loads(raw)
        self.spec.validate(event, "RealtimeServerEvent")
        parsed = self.conn.parse_event(raw)
        assert parsed.type == event["type"]
        self.events.append(event)
        return event

    async def until(self, type_: str, timeout: float = 180) -> dict:
        while True:
            event = await self.next(timeout)
            if event["type"] == "error" and type_ != "error":
                raise AssertionError(f"error event while waiting for {type_}: {event}")
            if event["type"] == type_:
                return event

    def of(self, type_: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type_]


async def stream(conn, pcm: bytes, chunk: int = 4_800, pause: float = 0.01) -> None:
    """Append audio in 100 ms pieces (``chunk`` bytes of 24 kHz PCM)."""
    for start in range(0, len(pcm), chunk):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[start : start + chunk]).decode())
        await asyncio.sleep(pause)


def audio_of(events: list[dict], response_id: str | None = None) -> bytes:
    return b"".join(
        base64.b64decode(e["delta"])
        for e in events
        if e["type"] == "response.output_audio.delta"
        and (response_id is None or e["response_id"] == response_id)
    )


def finished(done: dict) -> bool:
    """Completed, or cut at the session's max_output_tokens (SmolLM2-135M may ramble)."""
    response = done["response"]
    return response["status"] == "completed" or (
        response["status"] == "incomplete"
        and response["status_details"]["reason"] == "max_output_tokens"
    )


def transcribe(http, pcm: bytes) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24_000)
        w.writeframes(pcm)
    response = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("reply.wav", buf.getvalue(), "audio/wav")},
        data={"model": "whisper-1", "response_format": "json"},
    )
    assert response.status_code == 200, response.text
    return response.json()["text"]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


async def test_server_vad_turn_transcribes_and_answers_in_audio(client, spec, recordings, http):
    async with client.realtime.connect(model="gpt-realtime") as conn:
        s = Session(conn, spec)
        created = await s.until("session.created")
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        await conn.session.update(
            session={"type": "realtime", "max_output_tokens": 120,
                     "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
        )
        await s.until("session.updated")
        feeding = asyncio.create_task(stream(conn, recordings[QUESTION] + SILENCE * 2))
        started = await s.until("input_audio_buffer.speech_started")
        stopped = await s.until("input_audio_buffer.speech_stopped")
        pcm_ms = len(recordings[QUESTION]) * 1000 // 48_000
        assert started["audio_start_ms"] < 500
        assert pcm_ms - 800 < stopped["audio_end_ms"] <= pcm_ms + 600
        committed = await s.until("input_audio_buffer.committed")
        assert committed["item_id"] == stopped["item_id"] == started["item_id"]
        done = await s.until("response.done")
        await feeding
        completed = s.of("conversation.item.input_audio_transcription.completed")
        assert completed and completed[0]["item_id"] == committed["item_id"]
        assert wer(QUESTION, completed[0]["transcript"]) <= 0.34, completed[0]["transcript"]
        assert s.of("response.created") and finished(done)
        room = s.of("rate_limits.updated")[0]["rate_limits"][0]
        assert room["name"] == "requests" and 0 <= room["remaining"] <= room["limit"] == 16
        message = done["response"]["output"][0]
        assert message["type"] == "message" and message["role"] == "assistant"
        transcript = message["content"][0]["transcript"]
        assert transcript.strip()
        assert transcript == "".join(e["delta"] for e in s.of("response.output_audio_transcript.delta"))
        pcm = audio_of(s.events, done["response"]["id"])
        assert len(pcm) > 48_000 * 0.5  # at least half a second of speech
        # It is speech of about that length (SmolLM2-135M's answers are not always English,
        # so the words themselves are not compared): Whisper hears words in it.
        seconds = len(pcm) / 48_000
        assert 0.02 < seconds / len(transcript) < 0.25, (seconds, transcript)
        assert words(transcribe(http, pcm)), transcript
        usage = done["response"]["usage"]
        assert usage["output_token_details"]["audio_tokens"] > 0 and usage["input_tokens"] > 0
        order = [e["type"] for e in s.events]
        for earlier, later in [
            ("response.created", "response.output_item.added"),
            ("response.output_item.added", "response.content_part.added"),
            ("response.content_part.added", "response.output_audio.delta"),
            ("response.output_audio.delta", "response.output_audio.done"),
            ("response.output_audio_transcript.done", "response.content_part.done"),
            ("response.content_part.done", "response.output_item.done"),
            ("response.output_item.done", "response.done"),
        ]:
            assert order.index(earlier) < order.index(later), (earlier, later)


async def test_tool_call_and_its_output_are_answered(client, spec, recordings):
    async with client.realtime.connect(model="gpt-realtime-mini") as conn:
        s = Session(conn, spec)
        await conn.session.update(
            session={"type": "realtime", "tools": [WEATHER_TOOL], "tool_choice": "auto",
                     "max_output_tokens": 120}
        )
        updated = await s.until("session.updated")
        assert updated["session"]["tools"][0]["name"] == "get_weather"
        feeding = asyncio.create_task(stream(conn, recordings[WEATHER] + SILENCE * 2))
        done = await s.until("response.done")
        await feeding
        call = done["response"]["output"][0]
        assert call["type"] == "function_call" and call["name"] == "get_weather", done
        assert json.loads(call["arguments"])["city"]
        deltas = "".join(e["delta"] for e in s.of("response.function_call_arguments.delta"))
        assert deltas == call["arguments"] == s.of("response.function_call_arguments.done")[0]["arguments"]
        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": call["call_id"],
                  "output": json.dumps({"city": "Paris", "forecast": "sunny", "celsius": 24})}
        )
        added = await s.until("conversation.item.added")
        assert added["item"]["type"] == "function_call_output"
        await conn.response.create(response={"tool_choice": "none"})
        answer = await s.until("response.done")
        message = answer["response"]["output"][0]
        assert finished(answer) and message["type"] == "message"
        assert message["content"][0]["transcript"].strip()
        assert audio_of(s.events, answer["response"]["id"])


async def test_barge_in_cancels_and_truncation_keeps_only_what_was_heard(client, spec, recordings):
    async with client.realtime.connect(model="gpt-realtime") as conn:
        s = Session(conn, spec)
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "You are a storyteller. Always answer with a long story of at "
                "least ten sentences.",
            }
        )
        await s.until("session.updated")
        await stream(conn, recordings[STORY] + SILENCE)
        first = await s.until("response.output_audio.delta")
        response_id, item_id = first["response_id"], first["item_id"]
        # The user speaks while the answer is still being made. Their audio is sent at once,
        # not in real time: at real-time pace a quick machine had finished the whole story
        # before the speech was detected, and the response was "completed", not cancelled.
        barging = asyncio.create_task(stream(conn, recordings[INTERRUPT] + SILENCE * 2))
        await s.until("input_audio_buffer.speech_started")
        done = await s.until("response.done")
        while done["response"]["id"] != response_id:
            done = await s.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        # The barge-in turn (still being spoken) gets a short answer: this is not about length.
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 60,
                                           "instructions": "Keep answers short."})
        sent = audio_of(s.events, response_id)
        assert sent
        # The client heard less than it was sent; it tells the server where it stopped.
        heard_ms = min(len(sent) * 1000 // 48_000, 1000)
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=heard_ms)
        truncated = await s.until("conversation.item.truncated")
        assert truncated["audio_end_ms"] == heard_ms
        await conn.conversation.item.retrieve(item_id=item_id)
        item = (await s.until("conversation.item.retrieved"))["item"]
        kept = base64.b64decode(item["content"][0]["audio"])
        assert kept == sent[: heard_ms * 48]
        full = done["response"]["output"][0]["content"][0]["transcript"]
        short = item["content"][0]["transcript"]
        # The transcript keeps the words of the kept audio only: a prefix of what was said.
        assert len(short) < len(full) and full.split()[: len(short.split())] == short.split()
        await barging
        # The barge-in itself is the next user turn and gets its own answer.
        nxt = await s.until("response.done")
        assert nxt["response"]["id"] != response_id and finished(nxt)


def test_truncated_transcript_holds_the_words_of_the_heard_audio():
    from gateway.api.realtime.speech import heard_transcript

    marks = [(100, "One two three."), (300, " Four five six seven.")]
    assert heard_transcript(marks, 0) == ""
    assert heard_transcript(marks, 100) == "One two three."
    assert heard_transcript(marks, 200) == "One two three. Four five"  # half of the second
    assert heard_transcript(marks, 10_000) == "One two three. Four five six seven."


async def test_manual_commit_with_text_output(client, spec, recordings):
    async with client.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        s = Session(conn, spec)
        await conn.session.update(
            session={"type": "realtime", "output_modalities": ["text"], "max_output_tokens": 120,
                     "audio": {"input": {"turn_detection": None}}}
        )
        updated = await s.until("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await stream(conn, recordings[QUESTION] + SILENCE, pause=0)
        await conn.input_audio_buffer.commit()
        committed = await s.until("input_audio_buffer.committed")
        await conn.response.create()
        done = await s.until("response.done")
        assert not s.of("input_audio_buffer.speech_started")
        message = done["response"]["output"][0]
        text = message["content"][0]["text"]
        assert message["content"][0]["type"] == "output_text" and text.strip()
        assert text == "".join(e["delta"] for e in s.of("response.output_text.delta"))
        assert not s.of("response.output_audio.delta")
        await conn.conversation.item.retrieve(item_id=committed["item_id"])
        user = (await s.until("conversation.item.retrieved"))["item"]
        assert wer(QUESTION, user["content"][0]["transcript"]) <= 0.34
        # committing an empty buffer is an error, and clear answers cleared
        await conn.input_audio_buffer.commit(event_id="evt_empty")
        error = await s.until("error")
        assert error["error"]["event_id"] == "evt_empty"
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        await conn.input_audio_buffer.clear()
        await s.until("input_audio_buffer.cleared")


async def test_g711_in_and_out(client, spec, recordings):
    ulaw = encode_wire("audio/pcmu", resample(s16le_to_float(recordings[QUESTION]), 24_000, 8_000))
    async with client.realtime.connect(model="gpt-realtime") as conn:
        s = Session(conn, spec)
        await conn.session.update(
            session={"type": "realtime", "max_output_tokens": 120,
                     "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None,
                                         "transcription": {"model": "whisper-1"}},
                               "output": {"format": {"type": "audio/pcma"}}}}
        )
        await s.until("session.updated")
        await stream(conn, ulaw + b"\xff" * 8_000, chunk=800, pause=0)
        await conn.input_audio_buffer.commit()
        completed = await s.until("conversation.item.input_audio_transcription.completed")
        assert wer(QUESTION, completed["transcript"]) <= 0.34, completed["transcript"]
        await conn.response.create()
        done = await s.until("response.done")
        assert done["response"]["audio"]["output"]["format"]["type"] == "audio/pcma"
        alaw = audio_of(s.events, done["response"]["id"])
        assert len(alaw) > 4_000  # 8000 bytes a second
        import av

        codec = av.CodecContext.create("pcm_alaw", "r")
        codec.sample_rate, codec.layout = 8_000, "mono"
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in codec.decode(av.Packet(alaw))])
        assert np.abs(decoded.astype(np.float32)).mean() > 100  # speech, not silence


async def test_malformed_events_get_errors_and_the_session_continues(client, spec):
    async with client.realtime.connect(model="gpt-realtime") as conn:
        s = Session(conn, spec)
        await s.until("session.created")
        await conn.send({"type": "input_audio_buffer.append", "event_id": "evt_b64", "audio": "%%%"})
        await conn.send({"type": "conversation.item.truncate", "event_id": "evt_type",
                         "item_id": "x", "content_index": 0, "audio_end_ms": "soon"})
        await conn.send({"type": "no.such.event", "event_id": "evt_unknown"})
        await conn.send({"type": "conversation.item.retrieve", "event_id": "evt_missing", "item_id": "item_nope"})
        await conn.send({"type": "session.update", "event_id": "evt_voice",
                         "session": {"type": "realtime", "audio": {"output": {"voice": "nobody"}}}})
        await conn._connection.send("{not json")  # raw frame: not even JSON
        errors = [await s.until("error") for _ in range(6)]
        by_id = {e["error"]["event_id"]: e["error"] for e in errors}
        assert by_id["evt_b64"]["param"] == "audio"
        assert by_id["evt_type"]["param"] == "audio_end_ms"
        assert "no.such.event" in by_id["evt_unknown"]["message"]
        assert by_id["evt_missing"]["code"] == "item_not_found"
        assert by_id["evt_voice"]["param"] == "session.audio.output.voice"
        assert None in by_id  # the frame that was not JSON has no id to echo
        assert all(e["type"] == "invalid_request_error" for e in by_id.values())
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}
        )
        added = await s.until("conversation.item.added")
        assert added["item"]["content"][0]["text"] == "Hello!"


async def test_tool_choice_required_with_nothing_to_call_is_an_error_event(client, spec):
    """As chat answers 400: whether the choice comes with no tools or the tools are taken
    from under a kept choice, and for a response's own override. The session keeps its
    configuration and no response starts."""
    async def refused(*events: dict) -> None:
        for i, event in enumerate(events):
            await conn.send({**event, "event_id": f"evt_{i}"})
        errors = [(await s.until("error"))["error"] for _ in events]
        assert [e["event_id"] for e in errors] == [f"evt_{i}" for i in range(len(events))]
        assert all(e["param"] == "tool_choice" and e["type"] == "invalid_request_error" for e in errors)

    def update(**session) -> dict:
        return {"type": "session.update", "session": {"type": "realtime", **session}}

    async with client.realtime.connect(model="gpt-realtime") as conn:
        s = Session(conn, spec)
        await s.until("session.created")
        await refused(update(tool_choice="required"), update(tool_choice={"type": "function", "name": "get_weather"}))
        await conn.session.update(session={"type": "realtime", "tools": [WEATHER_TOOL], "tool_choice": "required"})
        assert (await s.until("session.updated"))["session"]["tool_choice"] == "required"
        await refused(update(tools=[]), {"type": "response.create", "response": {"tools": []}})
        await conn.session.update(session={"type": "realtime"})
        kept = (await s.until("session.updated"))["session"]
        assert kept["tool_choice"] == "required" and [t["name"] for t in kept["tools"]] == ["get_weather"]
        assert not s.of("response.created")


async def test_input_budgets_refuse_without_ending_the_session(spec):
    from gateway.settings import load_settings

    settings = load_settings()
    settings.engines.preload = []
    settings.realtime.max_event_bytes = 20_000
    settings.realtime.max_buffer_seconds = 0.5
    settings.realtime.max_items = 2
    live = await live_server(settings).astart()
    try:
        client = AsyncOpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            s = Session(conn, spec)
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            await s.until("session.updated")
            await conn.input_audio_buffer.append(audio=base64.b64encode(b"\0" * 16_000).decode(), event_id="e1")
            assert (await s.until("error"))["error"]["code"] == "event_too_large"
            for i in range(4):  # 4 x 1/6 s > 0.5 s
                await conn.input_audio_buffer.append(audio=base64.b64encode(b"\0" * 8_000).decode(), event_id=f"a{i}")
            full = await s.until("error")
            assert full["error"]["code"] == "input_audio_buffer_full" and full["error"]["event_id"] == "a3"
            for i in range(3):
                await conn.conversation.item.create(
                    item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                    event_id=f"i{i}",
                )
            too_many = await s.until("error")
            assert too_many["error"]["code"] == "conversation_too_long" and too_many["error"]["event_id"] == "i2"
            await conn.input_audio_buffer.clear()
            await s.until("input_audio_buffer.cleared")
    finally:
        live.stop()


async def test_keys_by_header_or_browser_subprotocol(spec):
    from gateway.settings import load_settings

    settings = load_settings()
    settings.engines.preload = []
    settings.server.api_keys = ["sk-realtime"]
    live = await live_server(settings).astart(ready_path="/health")
    ws_url = live.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    try:
        bad = AsyncOpenAI(base_url=live.url + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with bad.realtime.connect(model="gpt-realtime") as conn:
                await conn.recv()
        assert refused.value.response.status_code == 403
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(ws_url, subprotocols=["realtime"]):
                pass
        good = AsyncOpenAI(base_url=live.url + "/v1", api_key="sk-realtime", max_retries=0)
        async with good.realtime.connect(model="gpt-realtime") as conn:
            assert (await conn.recv()).type == "session.created"
        async with websockets.connect(
            ws_url, subprotocols=["realtime", "openai-insecure-api-key.sk-realtime"]
        ) as browser:
            assert browser.subprotocol == "realtime"
            event = json.loads(await browser.recv())
            spec.validate(event, "RealtimeServerEvent")
            assert event["type"] == "session.created"
    finally:
        live.stop()


async def test_unknown_model_is_an_error_event(client, spec):
    async with client.realtime.connect(model="no-such-model") as conn:
        s = Session(conn, spec)
        error = await s.until("error")
        assert error["error"]["code"] == "model_not_found" and error["error"]["param"] == "model"


async def test_metrics_count_sessions_latency_and_barge_ins(http):
    """Runs after the journeys above (same gateway): their figures are on /metrics."""
    text = http.get("/metrics").text
    latency = re.search(r'step_audio_gateway_realtime_voice_to_voice_seconds_count\{model="[^"]+"\} (\S+)', text)
    assert latency and float(latency.group(1)) >= 1
    assert re.search(r"step_audio_gateway_realtime_barge_ins_total (\S+)", text).group(1) != "0.0"
    assert "step_audio_gateway_realtime_sessions_open 0.0" in text
    # The wait's stages, each from the end of the one before, add up to the whole wait.
    def total(metric: str, labels: str = "") -> float:
        pattern = rf'step_audio_gateway_{metric}\{{model="[^"]+"{labels}\}} (\S+)'
        return sum(float(v) for v in re.findall(pattern, text))

    stages = ["decision", "heard", "first_token", "first_sentence", "synthesis", "sent"]
    counts = {s: total("realtime_turn_stage_seconds_count", f',stage="{s}"') for s in stages}
    assert all(n >= 1 for n in counts.values()), counts
    whole = total("realtime_voice_to_voice_seconds_sum")
    parts = sum(total("realtime_turn_stage_seconds_sum", f',stage="{s}"') for s in stages)
    assert abs(parts - whole) <= 0.01 * whole, (parts, whole)


def readme_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of the README's realtime section."""
    from tests.conftest import ROOT

    text = (ROOT / "README.md").read_text()
    section = text.split("## Realtime", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)
    assert blocks, f"no {language} example in the README's realtime section"
    return blocks


def test_readme_python_example_runs(server):
    import subprocess
    import sys

    # (the transcription session's example: tests/test_realtime_transcription_sessions.py)
    for code in [b for b in readme_blocks("python") if '"intent": "transcription"' not in b]:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
            env={**__import__("os").environ, "GATEWAY_URL": server.url + "/v1"},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        heard = re.search(r"heard: (.*)", result.stdout).group(1)
        assert wer(QUESTION, heard) <= 0.34, result.stdout
        assert re.search(r"answer: \S", result.stdout) and re.search(r"[1-9][0-9.]* s of audio", result.stdout)


async def test_a_client_that_stops_reading_is_dropped_and_frees_the_engines(spec, recordings):
    """The client asks for a long spoken answer and never reads: its small receive window
    fills, the server's bounded queue fills behind it, and after send_timeout_seconds the
    session is closed, so the chat and speech engines are not held by nobody listening."""
    import socket

    import httpx

    from gateway.settings import load_settings

    settings = load_settings()
    settings.engines.preload = ["tts-1", "whisper-1", "gpt-4o-mini"]
    settings.realtime.send_queue_events = 4
    settings.realtime.send_timeout_seconds = 1.0
    live = await live_server(settings).astart()
    held_pattern = r'^step_audio_gateway_model_requests_in_use\{model="([^"]+)"\} (\S+)'
    async with httpx.AsyncClient(base_url=live.url) as http:  # routers hold their members
        idle = dict(re.findall(held_pattern, (await http.get("/metrics")).text, re.M))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", live.port))
    try:
        async with websockets.connect(
            live.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime",
            sock=sock, max_queue=1, max_size=None,
        ) as ws:
            await ws.send(json.dumps({"type": "session.update", "session": {
                "type": "realtime", "audio": {"input": {"turn_detection": None}},
                "instructions": "You are a storyteller. Always answer with a long story of at least ten sentences."}}))
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story."}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            async with httpx.AsyncClient(base_url=live.url) as http:
                for _ in range(240):  # never reading, only watching the gateway's metrics
                    await asyncio.sleep(0.5)
                    text = (await http.get("/metrics")).text
                    open_sessions = re.search(r"^step_audio_gateway_realtime_sessions_open (\S+)", text, re.M)
                    held = dict(re.findall(held_pattern, text, re.M))
                    if float(open_sessions.group(1)) == 0 and held == idle:
                        break
                else:
                    raise AssertionError(f"the session still holds engines: {held}")
    finally:
        live.stop()
