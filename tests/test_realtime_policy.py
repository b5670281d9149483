"""One per-key policy on every door: a key's model allow-list, audio seconds heard and
spoken, requests and concurrent streams hold on /v1/realtime (through the official
Python SDK's realtime client) exactly as on HTTP, and share their counters with HTTP, on
one gateway and across two gateways on one Redis. Real engines, in-memory or real Redis
state; no fakes."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI

from gateway.settings import KeyLimitSettings, load_settings
from tests.conftest import PARAGRAPH, live_server
from tests.redis_server import GatewayProcess, RedisServer, avoid_minute_edge
from tests.test_ratelimits import assert_rate_limited, wav

pytestmark = pytest.mark.slow

KEYS = {
    "sk-voice-only": KeyLimitSettings(models=["tts-1", "whisper-1"]),
    "sk-realtime-only": KeyLimitSettings(models=["gpt-realtime"]),
    "sk-out-rt-first": KeyLimitSettings(audio_seconds_out_per_minute=2),
    "sk-out-http-first": KeyLimitSettings(audio_seconds_out_per_minute=2),
    "sk-in": KeyLimitSettings(audio_seconds_in_per_minute=3),
    "sk-streams": KeyLimitSettings(concurrent_streams=1),
}
STORY = "Tell me a long story about a lighthouse keeper and the sea."


@pytest.fixture(scope="module")
def gateway():
    settings = load_settings()
    settings.server.api_keys = [*KEYS, "sk-free"]
    settings.limits.per_key = KEYS
    server = live_server(settings).start()
    yield server
    server.stop()


def sdk(url: str, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def http(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=120)


def pcm(seconds: float) -> bytes:
    """A tone as 24 kHz 16-bit PCM, what an ``audio/pcm`` session sends."""
    t = np.arange(int(seconds * 24_000)) / 24_000
    return (0.1 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


async def next_event(conn, timeout: float = 120) -> dict:
    return json.loads(await asyncio.wait_for(conn.recv_bytes(), timeout))


async def until(conn, *types: str, timeout: float = 120) -> dict:
    while True:
        event = await next_event(conn, timeout)
        if event["type"] in types:
            return event


async def refused_at_handshake(conn) -> tuple[dict, int]:
    """The handshake's ``error`` event and the close code that follows it."""
    event = await next_event(conn)
    try:
        await next_event(conn, timeout=10)
    except websockets.ConnectionClosed as closed:
        return event, closed.rcvd.code
    raise AssertionError("the refused session stayed open")


async def manual_text_session(conn) -> None:
    await until(conn, "session.created")
    await conn.session.update(
        session={
            "type": "realtime",
            "output_modalities": ["text"],
            "audio": {"input": {"turn_detection": None}},
        }
    )
    await until(conn, "session.updated")


async def append(conn, audio: bytes) -> None:
    for start in range(0, len(audio), 48_000):
        piece = audio[start : start + 48_000]
        await conn.input_audio_buffer.append(audio=base64.b64encode(piece).decode())


# ---------------------------------------------------------------------- models


async def test_a_model_the_key_may_not_use_is_refused_at_the_handshake(gateway):
    async with sdk(gateway.url, "sk-voice-only").realtime.connect(model="gpt-realtime") as conn:
        event, code = await refused_at_handshake(conn)
    assert event["type"] == "error"
    assert event["error"]["code"] == "model_not_found"
    assert event["error"]["param"] == "model"
    assert code == 1008
    # Exactly what an unknown model gets: a key learns nothing of models it cannot use.
    async with sdk(gateway.url, "sk-free").realtime.connect(model="no-such-model") as conn:
        unknown, unknown_code = await refused_at_handshake(conn)
    assert unknown["error"]["code"] == "model_not_found" and unknown_code == code
    # HTTP says the same for the same key.
    with http(gateway.url, "sk-voice-only") as client:
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "gpt-realtime", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_found"


async def test_session_update_to_a_model_the_key_may_not_use_is_refused(gateway):
    async with sdk(gateway.url, "sk-realtime-only").realtime.connect(model="gpt-realtime") as conn:
        created = await until(conn, "session.created")
        await conn.session.update(session={"type": "realtime", "model": "gpt-4o-mini"})
        error = await until(conn, "error", "session.updated")
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
        updated = await until(conn, "session.updated")
    assert error["type"] == "error", error
    assert error["error"]["code"] == "model_not_found"
    assert updated["session"]["model"] == created["session"]["model"] == "gpt-realtime"


# ---------------------------------------------------------------------- audio out


async def spoken_response(conn) -> tuple[list[dict], bytes]:
    """A long spoken answer; every event until response.done, and the audio it carried."""
    await until(conn, "session.created")
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": STORY}]}
    )
    await conn.response.create()
    events = []
    while True:
        event = await next_event(conn, timeout=240)
        events.append(event)
        if event["type"] == "response.done":
            break
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    return events, audio


async def test_audio_spoken_on_realtime_counts_on_http_and_ends_the_response(gateway):
    avoid_minute_edge(40)
    async with sdk(gateway.url, "sk-out-rt-first").realtime.connect(model="gpt-realtime") as conn:
        events, audio = await spoken_response(conn)
    errors = [e for e in events if e["type"] == "error"]
    assert [e["error"]["code"] for e in errors] == ["rate_limit_exceeded"], errors
    assert events[-1]["response"]["status"] == "failed"
    assert 0 < len(audio) / 48_000 <= 2.0  # never more than the key's two seconds
    with http(gateway.url, "sk-out-rt-first") as client:
        speech = client.post(
            "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hello."}
        )
    assert_rate_limited(speech, "audio_seconds")


async def test_audio_spoken_on_http_counts_on_realtime(gateway):
    avoid_minute_edge(40)
    body = {"model": "tts-1", "voice": "alloy", "input": PARAGRAPH * 2, "response_format": "pcm"}
    key = "sk-out-http-first"
    async with sdk(gateway.url, key).realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")  # opened while the key had its minute
        with http(gateway.url, key) as client:
            with client.stream("POST", "/v1/audio/speech", json=body) as response:
                assert response.status_code == 200
                with pytest.raises(httpx.HTTPError):  # cut once the key has spoken its minute
                    response.read()
        await conn.response.create()
        error = await until(conn, "error", "response.created")
    assert error["type"] == "error", error
    assert error["error"]["code"] == "rate_limit_exceeded"
    assert error["error"]["type"] == "audio_seconds"
    # A new session of the key is refused at its handshake, as any HTTP request would be.
    async with sdk(gateway.url, key).realtime.connect(model="gpt-realtime") as conn:
        refused, code = await refused_at_handshake(conn)
    assert refused["error"]["code"] == "rate_limit_exceeded" and code == 1013


# ---------------------------------------------------------------------- audio in


async def test_committed_audio_is_charged_as_heard(gateway):
    avoid_minute_edge(30)
    async with sdk(gateway.url, "sk-in").realtime.connect(model="gpt-realtime") as conn:
        await manual_text_session(conn)
        await append(conn, pcm(2.0))
        await conn.input_audio_buffer.commit()
        committed = await until(conn, "input_audio_buffer.committed", "error")
        await append(conn, pcm(2.0))  # 2 s more do not fit in the last 1 s
        await conn.input_audio_buffer.commit()
        refused = await until(conn, "input_audio_buffer.committed", "error")
    assert committed["type"] == "input_audio_buffer.committed", committed
    assert refused["type"] == "error", refused
    assert refused["error"]["code"] == "rate_limit_exceeded"
    assert "audio seconds heard" in refused["error"]["message"]
    with http(gateway.url, "sk-in") as client:
        heard = client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav(1.5), "audio/wav")},
            data={"model": "whisper-1"},
        )
    assert_rate_limited(heard, "audio_seconds")  # 1.5 s does not fit in the last 1 s either


# ---------------------------------------------------------------------- streams


async def freed(url: str, key: str, timeout: float = 3.0) -> float:
    """Seconds until the key's next HTTP request is admitted again."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as c:
        while (await c.get("/v1/models")).status_code != 200:
            assert loop.time() - start < timeout, "the closed session still holds its stream"
            await asyncio.sleep(0.05)
    return loop.time() - start


async def test_an_open_session_is_one_of_the_keys_concurrent_streams(gateway):
    async with sdk(gateway.url, "sk-streams").realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")
        with http(gateway.url, "sk-streams") as client:
            during = client.get("/v1/models")
        async with sdk(gateway.url, "sk-streams").realtime.connect(model="gpt-realtime") as other:
            second, code = await refused_at_handshake(other)
    error = assert_rate_limited(during, "requests")
    assert "concurrent streams" in error["message"]
    assert second["error"]["code"] == "rate_limit_exceeded" and code == 1013
    assert await freed(gateway.url, "sk-streams") < 1.0


# ---------------------------------------------------------------------- replicas

SHARED = """
[server]
api_keys = ["sk-pair-streams", "sk-pair-in"]
[engines]
preload = []
[state]
backend = "redis"
redis_url = "{url}"
redis_prefix = "realtime-policy"
[limits.per_key."sk-pair-streams"]
concurrent_streams = 1
[limits.per_key."sk-pair-in"]
audio_seconds_in_per_minute = 3
"""


@pytest.fixture(scope="module")
def pair():
    redis_server = RedisServer()
    started = [GatewayProcess(SHARED.format(url=redis_server.url)) for _ in range(2)]
    try:
        yield [gateway.wait_ready() for gateway in started]
    finally:
        for gateway in started:
            gateway.stop()
        redis_server.stop()


async def test_two_gateways_on_one_redis_share_a_keys_realtime_counters(pair):
    one, two = pair
    avoid_minute_edge(30)
    async with sdk(one.url, "sk-pair-streams").realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")
        with http(two.url, "sk-pair-streams") as client:
            during = client.get("/v1/models")
    assert_rate_limited(during, "requests")
    assert await freed(two.url, "sk-pair-streams") < 1.0

    async with sdk(one.url, "sk-pair-in").realtime.connect(model="gpt-realtime") as conn:
        await manual_text_session(conn)
        await append(conn, pcm(2.0))
        await conn.input_audio_buffer.commit()
        first = await until(conn, "input_audio_buffer.committed", "error")
    async with sdk(two.url, "sk-pair-in").realtime.connect(model="gpt-realtime") as conn:
        await manual_text_session(conn)
        await append(conn, pcm(2.0))
        await conn.input_audio_buffer.commit()
        second = await until(conn, "input_audio_buffer.committed", "error")
    assert first["type"] == "input_audio_buffer.committed", first
    assert second["type"] == "error" and second["error"]["code"] == "rate_limit_exceeded", second
