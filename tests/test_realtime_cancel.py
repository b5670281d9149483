"""Cancelling realtime responses: the user barging in, ``response.cancel``, and the client
going away must all stop the response at once and free the engines it holds.

A cancellation used to be lost when it reached the response while one of its events was
being queued for the socket (``asyncio.wait_for`` on Python 3.11 returns the put's result
and drops the cancellation): the response then ran to its end (``response.done``
"incomplete" 9-30 s after the barge-in), and a closed session kept the chat model and the
voice busy, so the next request waited for the compute slot. Where the cancellation lands
is a matter of timing, so every case is tried more than once.

Responses are cancelled at their first audio delta: sentences are voiced in bursts of
deltas, which is when a cancellation is most likely to find the response queueing one.
The last test makes that near certain: a chat engine that costs nothing leaves the
response nothing to do but queue deltas (it failed 3 of 3 runs before the fix).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import httpx
import pytest
from openai import AsyncOpenAI

from tests.test_realtime import (  # noqa: F401 - recordings is a fixture
    INTERRUPT,
    SILENCE,
    STORY,
    WEATHER_TOOL,
    Session,
    recordings,
    stream,
)

pytestmark = pytest.mark.slow

LONG_STORY = "Tell me a long story about a lighthouse keeper and the sea."
STORYTELLER = "You are a storyteller. Always answer with a long story of at least ten sentences."
TRIALS = 2
PROMPT = {"role": "user", "content": [{"type": "input_text", "text": LONG_STORY}]}
# With the session's turn detection the barge-in is heard; it then gets no answer of its
# own, so each trial's only response is the one it cancels. The instructions keep that
# response going past its first audio: asked for "a long story", the small model now and
# then wrote two sentences, which were voiced before the cancellation arrived.
HEARING_ONLY = {"type": "realtime", "instructions": STORYTELLER,
                "audio": {"input": {"turn_detection": {
                    "type": "server_vad", "create_response": False}}}}


@pytest.fixture
async def client(server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)


async def ask_with_text(conn, s: Session, response: dict) -> None:
    await conn.session.update(session=HEARING_ONLY)
    await s.until("session.updated")
    await conn.conversation.item.create(item={"type": "message", **PROMPT})
    await conn.response.create(response=response)


async def created_by_response_create(conn, s, recordings) -> None:
    await ask_with_text(conn, s, {})


async def created_with_max_output_tokens(conn, s, recordings) -> None:
    await ask_with_text(conn, s, {"max_output_tokens": 400})


async def created_with_tools(conn, s, recordings) -> None:
    await ask_with_text(conn, s, {"tools": [WEATHER_TOOL], "tool_choice": "auto"})


async def created_out_of_band(conn, s, recordings) -> None:
    """conversation "none": the response reads only its own input."""
    await conn.session.update(session=HEARING_ONLY)
    await s.until("session.updated")
    await conn.response.create(
        response={"conversation": "none", "input": [{"type": "message", **PROMPT}]}
    )


async def created_by_voice(conn, s, recordings) -> None:
    """Server VAD hears a spoken question and answers it by itself."""
    await conn.session.update(session={"type": "realtime", "instructions": STORYTELLER})
    await s.until("session.updated")
    await stream(conn, recordings[STORY] + SILENCE, pause=0)
    await s.until("response.created")
    # the barge-in is heard but not answered: the one response is the one cancelled
    await conn.session.update(session=HEARING_ONLY)


STARTS = [created_by_response_create, created_with_max_output_tokens, created_with_tools,
          created_out_of_band, created_by_voice]


async def at_first_audio(s: Session, act) -> dict:
    """Wait for the first audio delta and ``act`` the moment it arrives, checking it
    against the spec only after: the act then reaches the server while it is still
    sending that burst of audio."""
    while True:
        raw = await asyncio.wait_for(s.conn.recv_bytes(), 60)
        event = json.loads(raw)
        if event["type"] == "response.output_audio.delta":
            await act()
        s.spec.validate(event, "RealtimeServerEvent")
        assert s.conn.parse_event(raw).type == event["type"]
        s.events.append(event)
        assert event["type"] != "error", event
        if event["type"] == "response.output_audio.delta":
            return event


async def until_response_done(s: Session, response_id: str) -> dict:
    while True:
        done = await s.until("response.done", timeout=60)
        if done["response"]["id"] == response_id:
            return done


@pytest.mark.parametrize("start", STARTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("how", ["barge_in", "response_cancel"])
async def test_a_response_is_cancelled_at_once(client, spec, recordings, start, how):
    for _ in range(TRIALS):
        async with client.realtime.connect(model="gpt-realtime") as conn:
            s = Session(conn, spec)
            await start(conn, s, recordings)
            talking = []

            async def act():
                if how == "barge_in":
                    talking.append(asyncio.create_task(stream(conn, recordings[INTERRUPT], pause=0)))
                else:
                    await conn.response.cancel()

            first = await at_first_audio(s, act)
            if how == "barge_in":
                await s.until("input_audio_buffer.speech_started")
            asked = time.perf_counter()
            # bounded: a lost cancellation let the response run on for minutes
            done = await asyncio.wait_for(until_response_done(s, first["response_id"]), 10)
            took = time.perf_counter() - asked
            assert done["response"]["status"] == "cancelled", done["response"]
            reason = "turn_detected" if how == "barge_in" else "client_cancelled"
            assert done["response"]["status_details"]["reason"] == reason
            assert took < 1.5, f"response.done came {took:.1f} s after the {how}"
            for task in talking:
                await task


# ----------------------------------------------------------------------- closed sockets


async def chat_seconds(http: httpx.AsyncClient, n: int) -> float:
    """One short chat completion. Its system turn differs every time, so no request finds
    its prompt in the model's cache and each is timed doing the same work."""
    body = {"model": "gpt-4o-mini", "max_tokens": 8, "temperature": 0, "messages": [
        {"role": "system", "content": f"Request {n}. You are terse."},
        {"role": "user", "content": "Say hi."}]}
    started = time.perf_counter()
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def reset(conn) -> None:
    """Drop the connection as a crashed client or a lost network does: a TCP RST, no
    close frame."""
    transport = conn._connection.transport
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_closed_socket_frees_the_compute_slot(client, spec, server, how):
    """The client leaves while the reply is being spoken: a chat request sent right after
    gets the chat model and the compute slot at once."""
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        await chat_seconds(http, 0)  # warm
        for trial in range(1, 7, 2):  # three closes
            alone = await chat_seconds(http, trial)
            conn = await client.realtime.connect(model="gpt-realtime").enter()
            s = Session(conn, spec)
            await conn.session.update(session={"type": "realtime", "max_output_tokens": 400})
            await s.until("session.updated")
            await conn.conversation.item.create(item={"type": "message", **PROMPT})
            await conn.response.create()

            async def leave():
                if how == "close":
                    await conn.close()
                else:
                    reset(conn)

            await at_first_audio(s, leave)
            after = await chat_seconds(http, trial + 1)
            assert after < alone + 0.5, f"alone {alone:.2f} s, right after the {how} {after:.2f} s"


# ----------------------------------------------------------------- a response that only sends


class _Endless:
    """A chat engine that never stops and costs nothing: the response it drives spends its
    time queueing deltas for the socket, where a cancellation used to be lost."""

    accepts_audio_tokens = False
    worker = type("Idle", (), {"busy": 0, "waiting": 0})()

    async def generate(self, request):
        from engines.chat import TextDelta

        while True:
            await asyncio.sleep(0)
            yield TextDelta("la ")

    async def stop(self) -> None:
        pass


async def test_a_cancel_is_never_lost_while_the_response_is_sending(spec):
    from engines.registry import registry_from_settings
    from gateway.settings import load_settings
    from tests.conftest import live_server

    settings = load_settings()
    settings.engines.preload = []
    registry = registry_from_settings(settings)
    registry._slots[registry.canonical("gpt-4o-mini")].engine = _Endless()
    live = await live_server(settings, registry).astart("/health")
    try:
        client = AsyncOpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
        async with client.realtime.connect(model="gpt-4o-mini") as conn:
            s = Session(conn, spec)
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                               "audio": {"input": {"turn_detection": None}}})
            await s.until("session.updated")
            for _ in range(5):
                await conn.response.create(response={"conversation": "none",
                                                     "input": [{"type": "message", **PROMPT}]})
                await s.until("response.output_text.delta")
                await conn.response.cancel()
                done = await asyncio.wait_for(s.until("response.done"), 5)
                assert done["response"]["status"] == "cancelled"
    finally:
        live.stop()
