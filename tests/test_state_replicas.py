"""Two gateway processes (``step-audio-gateway serve``) sharing one real redis-server, as
replicas behind a load balancer: a key's limit is one limit, exact under 200 concurrent
requests split across both; a spoken reply's audio id made on one resolves on the other, and
a /v1/responses response made on one is continued on the other;
and a Redis outage fails closed or open as configured, visibly in /ready and /metrics."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest

from tests.redis_server import GatewayProcess, RedisServer, avoid_minute_edge

LIMITED = """
[server]
api_keys = ["sk-shared", "sk-pair", "sk-other"]
[engines]
preload = {preload}
[state]
backend = "{backend}"
redis_url = "{url}"
redis_prefix = "{prefix}"
[limits.per_key."sk-shared"]
rpm = 57
[limits.per_key."sk-pair"]
rpm = 2
"""


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


def replicas(redis_server, backend="redis", preload="[]", prefix="replicas", count=2):
    config = LIMITED.format(preload=preload, backend=backend, url=redis_server.url, prefix=prefix)
    started = [GatewayProcess(config) for _ in range(count)]  # start together, wait together
    try:
        return [gateway.wait_ready() for gateway in started]
    except Exception:
        for gateway in started:
            gateway.stop()
        raise


@pytest.fixture(scope="module")
def pair(redis_server):
    gateways = replicas(redis_server)
    yield gateways
    for gateway in gateways:
        gateway.stop()


async def burst(urls: list[str], key: str, count: int) -> list[int]:
    headers = {"authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
        responses = await asyncio.gather(
            *(client.get(urls[i % len(urls)] + "/v1/models") for i in range(count))
        )
    return [r.status_code for r in responses]


def test_a_keys_limit_holds_exactly_under_200_concurrent_requests_across_two_gateways(pair):
    avoid_minute_edge(20)
    statuses = asyncio.run(burst([g.url for g in pair], "sk-shared", 200))
    assert statuses.count(200) == 57  # admitted == allowed: none over, none lost
    assert statuses.count(429) == 143


def test_a_keys_limit_is_shared_and_other_keys_are_apart(pair):
    avoid_minute_edge()
    one, two = pair
    pair_key = {"authorization": "Bearer sk-pair"}
    first = httpx.get(one.url + "/v1/models", headers=pair_key)
    second = httpx.get(two.url + "/v1/models", headers=pair_key)
    third = httpx.get(one.url + "/v1/models", headers=pair_key)
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert second.headers["x-ratelimit-remaining-requests"] == "0"  # counted both
    assert (
        httpx.get(two.url + "/v1/models", headers={"authorization": "Bearer sk-other"}).status_code
        == 200
    )


def test_in_memory_state_is_per_process(redis_server):
    """The control: without Redis each replica admits the whole limit again, so the test
    above fails when the shared backend is taken away."""
    avoid_minute_edge(20)
    gateways = replicas(redis_server, backend="memory")
    try:
        statuses = asyncio.run(burst([g.url for g in gateways], "sk-shared", 200))
    finally:
        for gateway in gateways:
            gateway.stop()
    assert statuses.count(200) == 2 * 57


def spoken_turn(url: str, messages: list[dict]) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        headers={"authorization": "Bearer sk-other"},
        json={
            "model": "gpt-4o-mini",
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "wav"},
            "messages": messages,
            "max_tokens": 6,
            "temperature": 0,
        },
        timeout=300,
    )


def test_an_audio_id_made_on_one_gateway_resolves_on_the_other(redis_server):
    gateways = replicas(redis_server, preload='["gpt-4o-mini", "tts-1"]', prefix="audio")
    one, two = gateways
    try:
        first = spoken_turn(one.url, [{"role": "user", "content": "Say hi."}])
        assert first.status_code == 200, first.text
        audio = first.json()["choices"][0]["message"]["audio"]
        follow = [
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "audio": {"id": audio["id"]}},
            {"role": "user", "content": "Again."},
        ]
        on_other = spoken_turn(two.url, follow)
        unknown = spoken_turn(
            two.url,
            [
                *follow[:1],
                {
                    "role": "assistant",
                    "audio": {"id": "audio_" + hashlib.sha256(b"x").hexdigest()[:24]},
                },
                follow[2],
            ],
        )
    finally:
        for gateway in gateways:
            gateway.stop()
    assert on_other.status_code == 200, on_other.text
    assert unknown.status_code == 400  # what the other replica said before Redis
    assert "audio" in unknown.json()["error"]["param"]


def test_a_response_made_on_one_gateway_is_continued_on_the_other(redis_server):
    """previous_response_id across replicas; another key's id reads as an unknown one."""
    gateways = replicas(redis_server, preload='["gpt-4o-mini"]', prefix="responses")
    one, two = gateways
    owner, stranger = (
        {"authorization": "Bearer sk-other"},
        {"authorization": "Bearer sk-shared"},
    )
    ask = {"model": "gpt-4o-mini", "max_output_tokens": 16, "temperature": 0}
    try:
        first = httpx.post(
            one.url + "/v1/responses",
            headers=owner,
            json={**ask, "input": "My name is Ada."},
            timeout=300,
        )
        assert first.status_code == 200, first.text
        made = first.json()
        follow = httpx.post(
            two.url + "/v1/responses",
            headers=owner,
            json={**ask, "input": "What is my name?", "previous_response_id": made["id"]},
            timeout=300,
        )
        read = httpx.get(f"{two.url}/v1/responses/{made['id']}", headers=owner)
        theirs = httpx.get(f"{two.url}/v1/responses/{made['id']}", headers=stranger)
        unknown = httpx.get(f"{two.url}/v1/responses/resp_{'0' * 32}", headers=stranger)
    finally:
        for gateway in gateways:
            gateway.stop()
    assert follow.status_code == 200, follow.text
    continued = follow.json()
    assert continued["previous_response_id"] == made["id"]
    # The other replica put the first turn and its answer before the new question.
    seen_before = made["usage"]["input_tokens"] + made["usage"]["output_tokens"]
    assert continued["usage"]["input_tokens"] > seen_before
    assert read.status_code == 200 and read.json() == made
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.text.replace(made["id"], "ID") == unknown.text.replace(f"resp_{'0' * 32}", "ID")


@pytest.mark.parametrize("policy", ["closed", "open"])
def test_a_redis_outage_fails_closed_or_open_and_shows_in_ready_and_metrics(policy):
    redis = RedisServer()
    config = LIMITED.format(preload="[]", backend="redis", url=redis.url, prefix="outage")
    gateway = GatewayProcess(config, env={"GATEWAY__STATE__ON_REDIS_ERROR": policy}).wait_ready()
    try:
        key = {"authorization": "Bearer sk-pair"}
        before = httpx.get(gateway.url + "/v1/models", headers=key)
        redis.stop()
        during = httpx.get(gateway.url + "/v1/models", headers=key, timeout=10)
        ready = httpx.get(gateway.url + "/ready", timeout=10)
        metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
        unlimited = httpx.get(
            gateway.url + "/v1/models", headers={"authorization": "Bearer sk-other"}
        )
    finally:
        gateway.stop()
        redis.stop()
    assert before.status_code == 200
    assert unlimited.status_code == 200  # a key without limits never waits on Redis
    assert 'step_audio_gateway_state_backend_up{backend="redis"} 0.0' in metrics
    assert (
        f'step_audio_gateway_state_backend_errors_total{{backend="redis",policy="{policy}"}}'
        in metrics
    )
    if policy == "closed":
        assert during.status_code == 503
        assert during.json()["error"]["code"] == "state_unavailable"
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "state_unavailable"
    else:
        assert during.status_code == 200 and "x-ratelimit-limit-requests" not in during.headers
        assert ready.status_code == 200
        assert ready.json()["state"] == "redis unavailable: serving without limits"
