"""Realtime client secrets (``ek_...``, POST /v1/realtime/client_secrets): minted by a real
key, they open realtime sessions only (the WebSocket here; WebRTC calls in
tests/test_realtime_webrtc.py), only until they expire, with the minted session config as
the start, under the minting key's policy; stored in the state backend, so a secret minted
on one gateway opens a session on another on the same Redis. Real engines and Redis."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets
from openai import AsyncOpenAI

from gateway.settings import KeyLimitSettings, load_settings
from tests.conftest import live_server
from tests.redis_server import RedisServer, avoid_minute_edge
from tests.test_realtime_policy import append, pcm, until

pytestmark = pytest.mark.slow

KEYS = {
    "sk-realtime-only": KeyLimitSettings(models=["gpt-realtime"]),
    "sk-in": KeyLimitSettings(audio_seconds_in_per_minute=3),
}
TEXT_SESSION = {
    "type": "realtime",
    "instructions": "You are a terse assistant for the test.",
    "output_modalities": ["text"],
    "audio": {"input": {"turn_detection": None}},
}


def gateway_settings(**state):
    settings = load_settings()
    settings.server.api_keys = [*KEYS, "sk-free"]
    settings.limits.per_key = KEYS
    settings.engines.preload = []
    for name, value in state.items():
        setattr(settings.state, name, value)
    return settings


@pytest.fixture(scope="module")
def gateway():
    server = live_server(gateway_settings()).start()
    yield server
    server.stop()


def mint(url: str, key: str, session: dict | None = TEXT_SESSION, **body) -> httpx.Response:
    if session is not None:
        body["session"] = session
    return httpx.post(
        url + "/v1/realtime/client_secrets", json=body,
        headers={"authorization": f"Bearer {key}"}, timeout=60,
    )


def secret(url: str, key: str = "sk-free", **body) -> str:
    minted = mint(url, key, **body)
    assert minted.status_code == 200, minted.text
    return minted.json()["value"]


def sdk(url: str, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


async def first_event(url: str, key: str, model: str = "gpt-realtime") -> dict:
    async with sdk(url, key).realtime.connect(model=model) as conn:
        return json.loads(await asyncio.wait_for(conn.recv_bytes(), 60))


def test_a_minted_secret_has_the_spec_shape_and_its_session(gateway, spec):
    before = int(time.time())
    minted = mint(gateway.url, "sk-free", expires_after={"anchor": "created_at", "seconds": 120})
    assert minted.status_code == 200, minted.text
    body = minted.json()
    spec.validate(body, "RealtimeCreateClientSecretResponse")
    assert body["value"].startswith("ek_")
    assert before + 120 <= body["expires_at"] <= int(time.time()) + 120
    assert body["session"]["instructions"] == TEXT_SESSION["instructions"]
    assert body["session"]["output_modalities"] == ["text"]


def test_a_session_the_key_could_not_open_is_not_minted(gateway):
    bad_voice = {"type": "realtime", "audio": {"output": {"voice": "no-such-voice"}}}
    assert mint(gateway.url, "sk-free", bad_voice).status_code == 400
    too_long = mint(gateway.url, "sk-free", expires_after={"seconds": 7201})
    assert too_long.status_code == 400
    other_model = {"type": "realtime", "model": "gpt-4o-mini"}
    refused = mint(gateway.url, "sk-realtime-only", other_model)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert mint(gateway.url, "sk-nobody").status_code == 401


async def test_the_secret_opens_a_session_with_its_config(gateway, spec):
    ek = secret(gateway.url)
    created = await first_event(gateway.url, ek)
    assert created["type"] == "session.created", created
    spec.validate(created, "RealtimeServerEventSessionCreated")
    assert created["session"]["instructions"] == TEXT_SESSION["instructions"]
    assert created["session"]["audio"]["input"]["turn_detection"] is None
    # As a browser sends it: the subprotocol, no header.
    protocols = ["realtime", f"openai-insecure-api-key.{ek}"]
    ws_url = gateway.url.replace("http", "ws") + "/v1/realtime?model=gpt-realtime"
    async with websockets.connect(ws_url, subprotocols=protocols) as socket:
        event = json.loads(await asyncio.wait_for(socket.recv(), 60))
    assert event["type"] == "session.created"


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/audio/speech"),
        ("POST", "/v1/realtime/client_secrets"),  # a secret cannot mint its successor
        ("POST", "/v1/realtime/calls/rtc_x/hangup"),
    ],
)
def test_a_secret_is_refused_on_every_http_route_but_the_session_doors(gateway, method, path):
    ek = secret(gateway.url)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "input": "hi", "voice": "alloy"}
    response = httpx.request(
        method, gateway.url + path, json=body, headers={"authorization": f"Bearer {ek}"},
        timeout=60,
    )
    assert response.status_code == 401, (path, response.text)
    assert response.json()["error"]["code"] == "invalid_api_key"


async def test_an_expired_or_unknown_secret_is_refused(gateway, monkeypatch):
    ek = secret(gateway.url, expires_after={"seconds": 10})
    store = gateway.server.config.app.state["state_backend"].client_secrets
    monkeypatch.setattr(store, "_clock", lambda: time.time() + 11)
    for key in (ek, "ek_" + "0" * 32):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await first_event(gateway.url, key)
        assert refused.value.response.status_code == 403


async def test_the_minting_keys_model_list_holds_for_its_secret(gateway):
    ek = secret(gateway.url, "sk-realtime-only")
    assert (await first_event(gateway.url, ek))["type"] == "session.created"
    refused = await first_event(gateway.url, ek, model="gpt-4o-mini")
    assert refused["type"] == "error" and refused["error"]["code"] == "model_not_found"


async def test_the_minting_keys_audio_seconds_hold_for_its_secret(gateway):
    avoid_minute_edge(30)
    ek = secret(gateway.url, "sk-in")
    async with sdk(gateway.url, ek).realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")
        await append(conn, pcm(2.0))
        await conn.input_audio_buffer.commit()
        committed = await until(conn, "input_audio_buffer.committed", "error")
    assert committed["type"] == "input_audio_buffer.committed", committed
    # The key itself has 1 s left of its minute: its secret spent the rest.
    async with sdk(gateway.url, "sk-in").realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")
        await conn.session.update(session=TEXT_SESSION)
        await until(conn, "session.updated")
        await append(conn, pcm(2.0))
        await conn.input_audio_buffer.commit()
        refused = await until(conn, "input_audio_buffer.committed", "error")
    assert refused["type"] == "error" and refused["error"]["code"] == "rate_limit_exceeded"


async def test_a_secret_minted_on_one_gateway_opens_a_session_on_another():
    redis = RedisServer()
    settings = dict(backend="redis", redis_url=redis.url, redis_prefix="ek")
    gateways = [live_server(gateway_settings(**settings)) for _ in range(2)]
    try:
        for gateway in gateways:
            gateway.start()
        ek = secret(gateways[0].url)
        created = await first_event(gateways[1].url, ek)
        assert created["type"] == "session.created", created
        assert created["session"]["instructions"] == TEXT_SESSION["instructions"]
        # Only a digest is kept: the secret itself is nowhere in Redis.
        import redis as redis_client

        stored = redis_client.Redis.from_url(redis.url)
        keys = stored.keys("ek:ek:*")
        assert len(keys) == 1 and ek.encode() not in keys[0] + stored.get(keys[0])
    finally:
        for gateway in gateways:
            gateway.stop()
        redis.stop()
