"""The gateway keeps its connections to a vLLM replica open between requests.

vLLM cannot run here, so the replica is the fake of tests/engines/test_vllm_pool.py (real
HTTP/1.1 on loopback, vLLM's streaming format, keep-alive), which counts the TCP
connections it accepts. Reading a stream only up to ``data: [DONE]`` and not to the end of
its chunked body makes the HTTP client close the connection, so every chat request would
pay a new connection and leave a socket in TIME_WAIT (issue 11 measured 212 left by 200
requests); what a user sees is latency and, under load, exhausted ports.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.settings import ModelSettings, load_settings
from tests.conftest import live_server
from tests.engines.test_vllm_pool import TOKENS, FakeVLLM

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture
async def gateway():
    replica = await FakeVLLM().start()
    settings = load_settings()
    settings.models["sa-chat"] = ModelSettings(
        engine="step-audio-chat",
        options={"vllm_urls": [replica.url], "health_interval": 60.0},
    )
    settings.engines.preload = ["sa-chat"]
    live = await live_server(settings).astart()
    async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
        yield client, replica
    live.stop()
    await replica.stop()


def _body(stream: bool) -> dict:
    return {"model": "sa-chat", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]}


async def _chat(client: httpx.AsyncClient, stream: bool) -> str:
    response = await client.post("/v1/chat/completions", json=_body(stream))
    assert response.status_code == 200, response.text
    if not stream:
        return response.json()["choices"][0]["message"]["content"]
    assert response.text.rstrip().endswith("data: [DONE]")
    return "".join(
        choice["delta"].get("content") or ""
        for line in response.text.splitlines()
        if line.startswith("data: {")
        for choice in httpx.Response(200, content=line[6:]).json()["choices"]
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_sequential_requests_use_one_upstream_connection(gateway, stream):
    client, replica = gateway
    opened = replica.connections  # the start-up health and tokenizer checks
    for _ in range(20):
        assert await _chat(client, stream) == "".join(TOKENS)
    assert replica.completed == 20
    assert replica.connections - opened <= 1, f"{replica.connections - opened} connections for 20 requests"


async def test_concurrent_requests_open_no_more_connections_than_are_in_flight(gateway):
    client, replica = gateway
    replica.delay = 0.01  # keep the streams overlapping
    opened = replica.connections
    for _ in range(4):
        texts = await asyncio.gather(*(_chat(client, stream=i % 2 == 0) for i in range(8)))
        assert texts == ["".join(TOKENS)] * 8
    assert replica.completed == 32
    assert replica.connections - opened <= 8, f"{replica.connections - opened} connections for 32 requests, 8 at a time"
