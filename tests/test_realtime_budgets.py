"""/v1/realtime applies the input budgets of the HTTP routes, and hostile sessions stay cheap.

Each test is a case a probe found on a live gateway (valid key, loopback): a session that
could grow the gateway's memory, close itself with a 500-like failure, take every
connection slot or keep the recogniser busy for everyone. The gateway runs in this
process (a thread), so where memory was the problem the test watches this process's RSS.
Every refusal is an ``error`` event naming the field, and the session goes on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import re
import socket
import time
import tracemalloc

import httpx
import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI

from adapters.tools.schema import call_schema
from engines.chat import ToolSpec
from tests.conftest import live_server
from tests.recordings import pcm24k
from tests.test_realtime import Session

pytestmark = pytest.mark.slow

MAX_TEXT_CHARS = 1_000  # limits.max_text_chars of this module's gateway
MAX_SESSIONS = 3


def rss_mb(trim: bool = True) -> float:
    """This process's resident memory (the gateway runs in it), in MB; with ``trim``,
    after glibc has handed back the free memory it keeps (so the figure is what is held,
    not what the allocator caches from transient decodes)."""
    if trim:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class PythonHeap:
    """What the objects allocated since entering still hold, and the most they held, in
    MB, as tracemalloc counts them (Python objects and NumPy arrays: the session's audio,
    events, outbox and the transport's unsent bytes). Unlike RSS, this is not moved by
    what the allocator keeps cached nor by what the test process's other gateways do."""

    def __enter__(self) -> PythonHeap:
        tracemalloc.start()
        return self

    def __exit__(self, *exc) -> None:
        tracemalloc.stop()

    def held_mb(self) -> float:
        return tracemalloc.get_traced_memory()[0] / 2**20

    def peak_mb(self) -> float:
        return tracemalloc.get_traced_memory()[1] / 2**20


@pytest.fixture(scope="module")
async def gateway():
    from gateway.settings import load_settings

    settings = load_settings()
    settings.engines.preload = ["tts-1", "whisper-1", "gpt-4o-mini"]
    settings.limits.max_text_chars = MAX_TEXT_CHARS
    settings.realtime.max_sessions = MAX_SESSIONS
    settings.server.max_connections = MAX_SESSIONS + 3
    settings.realtime.send_timeout_seconds = 2.0
    live = await live_server(settings).astart()
    yield live
    live.stop()


@pytest.fixture
def client(gateway) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)


async def manual_session(conn, spec) -> Session:
    s = Session(conn, spec)
    await s.until("session.created")
    await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                       "audio": {"input": {"turn_detection": None}}})
    await s.until("session.updated")
    return s


async def error_of(s: Session, event_id: str) -> dict:
    """The error event answering ``event_id`` (any other event before it is skipped)."""
    while True:
        event = await s.next(60)
        if event["type"] == "error" and event["error"]["event_id"] == event_id:
            return event["error"]
        assert event["type"] != "error", event


async def still_serves(conn, s: Session) -> None:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
    )
    added = await s.until("conversation.item.added")
    assert added["item"]["content"][0]["text"] == "Hi"


def nested_schema(levels: int, leaf: dict) -> dict:
    schema = leaf
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def tool(parameters: dict) -> dict:
    return {"type": "function", "name": "lookup", "description": "Look a thing up",
            "parameters": parameters}


# ---------------------------------------------------------------------- 1. tool schemas


async def test_tool_schemas_get_chats_budget_before_any_grammar_is_built(client, spec):
    """A 400-byte schema asking for a billion-character string used to be accepted and then
    grow the gateway by ~0.6 GB/s while its grammar was built; a deep one ended the turn in
    a RecursionError. Both are refused up front as chat refuses them (schema_too_large)."""
    huge = {"type": "object", "properties": {"q": {"type": "string", "minLength": 1_000_000_000}},
            "required": ["q"]}
    many = {"type": "object", "properties": {"q": {"type": "array", "minItems": 1_000_000_000}}}
    deep = nested_schema(20, {"type": "string"})  # 40 JSON levels: over the schema's 32
    before = rss_mb()
    async with client.realtime.connect(model="gpt-realtime") as conn:
        s = await manual_session(conn, spec)
        started = time.perf_counter()
        await conn.send({"type": "session.update", "event_id": "huge",
                         "session": {"type": "realtime", "tools": [tool(huge)]}})
        error = await error_of(s, "huge")
        refused_in = time.perf_counter() - started
        assert (error["type"], error["code"]) == ("invalid_request_error", "schema_too_large")
        assert error["param"] == "session.tools[0].parameters"
        await conn.send({"type": "session.update", "event_id": "deep",
                         "session": {"type": "realtime", "tools": [tool(deep)]}})
        error = await error_of(s, "deep")
        assert error["code"] == "schema_too_large"
        assert error["param"] == "session.tools[0].parameters"
        await still_serves(conn, s)
        await conn.send({"type": "response.create", "event_id": "many",
                         "response": {"tools": [tool(many)], "tool_choice": "required"}})
        error = await error_of(s, "many")
        assert error["code"] == "schema_too_large"
        assert error["param"] == "response.tools[0].parameters"
        await asyncio.sleep(1)  # were a grammar being built, memory would be climbing now
        assert rss_mb() - before < 100, f"RSS grew {rss_mb() - before:.0f} MB"
        assert refused_in < 1.0
        assert s.of("response.created") == []
        await still_serves(conn, s)


def test_tool_schema_helpers_never_recurse_out_of_stack():
    """adapters/tools/schema.py copied parameters recursively: a schema deeper than
    Python's recursion limit raised RecursionError (a 500 where a budget was missing)."""
    deep = nested_schema(3_000, {"$ref": "#/$defs/leaf"})
    deep["$defs"] = {"leaf": {"type": "string"}}
    schema = call_schema([ToolSpec(name="t", description="", parameters=deep)])
    node = schema["properties"]["arguments"]
    for _ in range(3_000):
        node = node["properties"]["a"]
    assert node == {"$ref": "#/$defs/tool0_leaf"}
    assert schema["$defs"] == {"tool0_leaf": {"type": "string"}}


# ---------------------------------------------------------------------- 2. nesting


async def test_a_deeply_nested_event_is_an_error_and_the_session_goes_on(client, spec):
    """973 nested arrays used to end the session (close 1000, an ASGI exception logged);
    HTTP answers the same with 400 invalid_json past limits.max_json_depth."""
    async with client.realtime.connect(model="gpt-realtime") as conn:
        s = await manual_session(conn, spec)
        deep = "[" * 973 + "]" * 973
        await conn._connection.send('{"type": "session.update", "x": ' + deep + "}")
        error = await s.until("error")
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["code"] == "invalid_json"
        assert "64" in error["error"]["message"]
        await still_serves(conn, s)


# ---------------------------------------------------------------------- 3. text


async def test_text_fields_get_chats_length_budget(client, spec):
    """limits.max_text_chars, which chat applies to each message, bounds every text a
    session keeps: instructions, item texts, tool call arguments and outputs."""
    long = "x" * (MAX_TEXT_CHARS + 1)
    user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": long}]}
    cases = {
        "session.instructions": {"type": "session.update",
                                 "session": {"type": "realtime", "instructions": long}},
        "item.content[0].text": {"type": "conversation.item.create", "item": user},
        "item.output": {"type": "conversation.item.create",
                        "item": {"type": "function_call_output", "call_id": "c1", "output": long}},
        "item.arguments": {"type": "conversation.item.create",
                           "item": {"type": "function_call", "name": "f", "arguments": long}},
        "response.instructions": {"type": "response.create", "response": {"instructions": long}},
        "response.input[0].content[0].text": {"type": "response.create",
                                              "response": {"input": [user]}},
    }
    async with client.realtime.connect(model="gpt-realtime") as conn:
        s = await manual_session(conn, spec)
        for param, event in cases.items():
            await conn.send({**event, "event_id": param})
            error = await error_of(s, param)
            assert (error["code"], error["param"]) == ("string_above_max_length", param)
        assert s.of("conversation.item.added") == [] and s.of("response.created") == []
        # All together too: a conversation holds at most max_text_chars of client text
        # (500 items of an 8 MB event each would be gigabytes, and the next prompt).
        half = {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "y" * (MAX_TEXT_CHARS // 2 + 1)}]}
        await conn.conversation.item.create(item=half)
        await s.until("conversation.item.done")
        await conn.send({"type": "conversation.item.create", "event_id": "second", "item": half})
        error = await error_of(s, "second")
        assert (error["code"], error["param"]) == ("session_text_limit", "item")
        added = s.of("conversation.item.added")
        await conn.conversation.item.delete(item_id=added[0]["item"]["id"])
        await s.until("conversation.item.deleted")
        await still_serves(conn, s)


# ---------------------------------------------------------------------- 4. audio held


def silence_item(seconds: float, event_id: str) -> dict:
    """A user item with ``seconds`` of 24 kHz PCM and a text part (so nothing transcribes)."""
    audio = base64.b64encode(b"\0" * int(seconds * 48_000)).decode()
    return {"type": "conversation.item.create", "event_id": event_id, "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "note"},
                    {"type": "input_audio", "audio": audio}]}}


async def test_audio_held_in_items_is_budgeted(client, spec):
    """Items' audio had no budget: 40 items of 8 MiB added ~880 MB to one session. Now
    the input buffer and the items together hold at most realtime.max_audio_seconds_held
    (600 s), as 16-bit samples."""
    with PythonHeap() as heap:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            s = await manual_session(conn, spec)
            for i in range(4):  # 4 x 130 s = 520 s: kept
                await conn.send(silence_item(130, f"kept{i}"))
                await s.until("conversation.item.done")
            for i in range(6):
                await conn.send(silence_item(130, f"over{i}"))
                error = await error_of(s, f"over{i}")
                assert error["code"] == "session_audio_limit"
                assert error["param"] == "item.content[1].audio"
            await conn.send({"type": "input_audio_buffer.append", "event_id": "append",
                             "audio": base64.b64encode(b"\0" * 48_000 * 90).decode()})
            error = await error_of(s, "append")
            assert (error["code"], error["param"]) == ("session_audio_limit", "audio")
            grown = heap.held_mb()
            print(f"audio held: +{grown:.0f} MB of objects (peak {heap.peak_mb():.0f} MB)")
            kept = s.of("conversation.item.done")
            await conn.send({"type": "conversation.item.delete", "item_id": kept[0]["item"]["id"]})
            await s.until("conversation.item.deleted")
            await conn.send(silence_item(130, "room_again"))  # deleting an item frees its share
            await s.until("conversation.item.done")
    # 520 s as int16 at 16 kHz is 17 MB; without the budget, 40 items held 880 MB.
    assert grown < 40, f"the session holds {grown:.0f} MB"


# ---------------------------------------------------------------------- 5. a deaf client


class DeafClient:
    """A WebSocket client on a plain socket that sends and never reads a byte (a client
    library would go on reading into its own buffers), with a small receive window."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer k\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:  # the 101 only; session.created stays unread
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, event: dict) -> None:
        self.sock.sendall(self.frame(event))

    def send_frame(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    @staticmethod
    def frame(event: dict) -> bytes:
        """The event as a masked text frame, as a browser would send it."""
        payload = json.dumps(event).encode()
        mask = os.urandom(4)
        n = len(payload)
        length = bytes([0x80 | n]) if n < 126 else (
            bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536
            else bytes([0x80 | 127]) + n.to_bytes(8, "big"))
        masked = (np.frombuffer(payload, np.uint8)
                  ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        return b"\x81" + length + mask + masked

    def close(self) -> None:
        self.sock.close()


async def sessions_open(http: httpx.AsyncClient) -> float:
    text = (await http.get("/metrics")).text
    found = re.search(r"^step_audio_gateway_realtime_sessions_open (\S+)", text, re.M)
    return float(found.group(1))


async def test_a_client_that_stops_reading_big_events_is_dropped_and_its_memory_returned(gateway):
    """Asking 40 times for a 130 s item (8 MB an answer) and never reading used to keep
    the session open (the outbox counted events, up to 512) holding every answer (+330 MB),
    and after the client closed most of it stayed (the transport kept what was unread).
    The outbox is bounded in bytes too (realtime.send_queue_bytes, 16 MiB): the session is
    dropped after send_timeout_seconds and what it held is freed."""
    item = silence_item(130, "big")["item"]
    item["id"] = "item_big"
    create = DeafClient.frame({"type": "conversation.item.create", "item": item})
    retrieve = DeafClient.frame({"type": "conversation.item.retrieve", "item_id": "item_big"})
    del item  # what the test sends is built before the gateway's share is counted
    with PythonHeap() as heap:
        deaf = await asyncio.to_thread(DeafClient, gateway.port)
        started = time.perf_counter()
        try:
            await asyncio.to_thread(deaf.send_frame, create)
            for _ in range(40):
                await asyncio.to_thread(deaf.send_frame, retrieve)
            async with httpx.AsyncClient(base_url=gateway.url) as http:
                for _ in range(60):  # never reading, only watching the gateway's metrics
                    await asyncio.sleep(0.5)
                    if await sessions_open(http) == 0:
                        break
                else:
                    raise AssertionError(f"not dropped; {heap.held_mb():.0f} MB held")
            dropped_in = time.perf_counter() - started
        finally:
            deaf.close()
        await asyncio.sleep(0.5)
        held, left = heap.peak_mb(), heap.held_mb()
    print(f"deaf client: dropped in {dropped_in:.1f} s, {held:.0f} MB held at most, "
          f"{left:.1f} MB left after close")
    assert dropped_in < 15, dropped_in
    # One answer is 8 MB: 40 of them held were 330 MB; the outbox's 16 MiB and the
    # item's audio are what a bounded session holds.
    assert held < 100, f"the session held {held:.0f} MB"
    # Measured before any garbage collection: the memory is returned at the close.
    assert left < 2, f"the closed session left {left:.0f} MB"


# ---------------------------------------------------------------------- 6. sessions


async def test_sessions_are_capped_below_the_connection_limit(gateway, client, spec):
    """1,000 idle sessions took every connection slot (server.max_connections), and every
    HTTP request of every key got 503. realtime.max_sessions, kept below it, refuses one
    more session at the handshake (an error event, close 1013): HTTP keeps its slots."""
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(MAX_SESSIONS):
            conn = await stack.enter_async_context(client.realtime.connect(model="gpt-realtime"))
            assert (await conn.recv()).type == "session.created"
        url = gateway.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
        async with websockets.connect(url) as ws:
            event = json.loads(await ws.recv())
            spec.validate(event, "RealtimeServerEvent")
            assert (event["type"], event["error"]["type"], event["error"]["code"]) == (
                "error", "server_error", "session_limit_reached")
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1013
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            statuses = [(await http.get("/v1/models")).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
    async with client.realtime.connect(model="gpt-realtime") as conn:  # room again
        assert (await conn.recv()).type == "session.created"


def test_max_sessions_must_stay_below_max_connections():
    from gateway.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="max_sessions"):
        load_settings(environ={"GATEWAY__SERVER__MAX_CONNECTIONS": "50",
                               "GATEWAY__REALTIME__MAX_SESSIONS": "50"})
    defaults = load_settings(environ={})
    assert defaults.realtime.max_sessions < defaults.server.max_connections


# ---------------------------------------------------------------------- 7. recogniser work


async def test_a_session_cannot_queue_unbounded_transcription_work(gateway, client, spec):
    """300 s of speech committed in 1.5 s queued 59 turns and kept Whisper busy 23 s,
    slowing every other key. A session may have realtime.max_pending_transcriptions (2)
    items awaiting transcription; more commits are refused until one is done, so another
    client's speech request is fast again within seconds."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        async def speech_seconds() -> float:
            started = time.perf_counter()
            r = await http.post("/v1/audio/speech", json={
                "model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "pcm"})
            assert r.status_code == 200
            return time.perf_counter() - started

        idle = min([await speech_seconds() for _ in range(3)])
        # A real recording (7.4 s) and silence: the same words every run. Piper's speech
        # differs from run to run and, tiled, was cut inside a word where its copies
        # joined; on one such clip Whisper looped for 20 s (a CI run).
        recording = pcm24k("en_happy_prompt")
        ten_seconds = recording + bytes(480_000 - len(recording))
        async with client.realtime.connect(model="gpt-realtime") as conn:
            s = await manual_session(conn, spec)
            await conn.session.update(session={"type": "realtime", "audio": {"input": {
                "transcription": {"model": "whisper-1"}}}})
            await s.until("session.updated")
            flood_started = time.perf_counter()
            for i in range(12):  # 120 s of speech, as fast as the socket takes it
                await conn.send({"type": "input_audio_buffer.clear"})
                await conn.send({"type": "input_audio_buffer.append",
                                 "audio": base64.b64encode(ten_seconds).decode()})
                await conn.send({"type": "input_audio_buffer.commit", "event_id": f"c{i}"})
            refused = 0
            while refused + len(s.of("input_audio_buffer.committed")) < 12:
                event = await s.next(60)
                if event["type"] == "error":
                    assert event["error"]["code"] == "too_many_pending_transcriptions", event
                    refused += 1
            committed = len(s.of("input_audio_buffer.committed"))
            during = await speech_seconds()
            while len(s.of("conversation.item.input_audio_transcription.completed")) < committed:
                await s.next(60)
            busy = time.perf_counter() - flood_started
            after = min([await speech_seconds() for _ in range(3)])
    print(f"speech: idle {idle:.3f} s, during the flood {during:.3f} s, after {after:.3f} s; "
          f"{committed} of 12 commits taken, recogniser busy {busy:.1f} s")
    assert refused >= 8 and committed <= 4, (refused, committed)
    assert busy < 20, f"the recogniser worked {busy:.1f} s for this session"
    assert after < max(0.5, 5 * idle), (idle, after)


# ---------------------------------------------------------------------- 8. numeric ranges


async def test_numeric_fields_are_range_checked_as_the_spec_says(client, spec):
    """truncate accepted audio_end_ms -1000 (and cut the item's last second) and
    content_index -1; turn detection took threshold -5, silence -100 ms and a prefix of
    -1e6 ms. Each is refused with the field named, as OpenAI's spec ranges say."""
    td = "session.audio.input.turn_detection"
    cases = {
        "audio_end_ms": {"type": "conversation.item.truncate", "item_id": "x",
                         "content_index": 0, "audio_end_ms": -1000},
        "content_index": {"type": "conversation.item.truncate", "item_id": "x",
                          "content_index": -1, "audio_end_ms": 0},
        f"{td}.threshold": {"type": "session.update", "session": {"type": "realtime", "audio": {
            "input": {"turn_detection": {"type": "server_vad", "threshold": -5}}}}},
        f"{td}.silence_duration_ms": {"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "silence_duration_ms": -100}}}}},
        f"{td}.prefix_padding_ms": {"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "prefix_padding_ms": -1000000}}}}},
        f"{td}.idle_timeout_ms": {"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "idle_timeout_ms": 10}}}}},
        "session.max_output_tokens": {"type": "session.update", "session": {
            "type": "realtime", "max_output_tokens": 0}},
        "response.max_output_tokens": {"type": "response.create",
                                       "response": {"max_output_tokens": 5000}},
        "session.audio.output.speed": {"type": "session.update", "session": {
            "type": "realtime", "audio": {"output": {"speed": 3}}}},
        "session.audio.input.format.rate": {"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": -1}}}}},
    }
    async with client.realtime.connect(model="gpt-realtime") as conn:
        s = await manual_session(conn, spec)
        for param, event in cases.items():
            await conn.send({**event, "event_id": param})
            error = await error_of(s, param)
            assert (error["type"], error["param"]) == ("invalid_request_error", param), error
        assert s.of("session.updated")[-1]["session"]["audio"]["input"]["turn_detection"] is None
        await still_serves(conn, s)


def test_int16_items_keep_the_audio():
    from gateway.api.realtime.conversation import Item

    samples = np.sin(np.linspace(0, 200, 16_000, dtype=np.float32)) * 0.8
    item = Item(id="i", type="message", role="user")
    item.keep_audio(samples)
    assert item.audio.dtype == np.int16 and item.audio.nbytes == 32_000
    assert np.max(np.abs(item.samples() - samples)) < 1e-4
