"""What clients see when an engine fails: envelopes before the first byte, error events after."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from engines.base import Capability
from engines.catalog import CATALOG, EngineKind
from engines.registry import ModelRegistry, ModelSpec
from gateway.settings import load_settings
from tests.conftest import start_server

SPEECH = frozenset({Capability.SPEECH})


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    catalog = {
        **CATALOG,
        "mid-stream": EngineKind("tests.faults:FailingMidStream", SPEECH),
        "no-load": EngineKind("tests.faults:FailsToLoad", SPEECH),
        "slow": EngineKind("tests.faults:Slow", SPEECH),
        "paced": EngineKind("tests.faults:Paced", SPEECH),
    }
    registry = ModelRegistry(
        [ModelSpec("crashy", "mid-stream"), ModelSpec("broken", "no-load"), ModelSpec("slow", "slow"),
         ModelSpec("paced", "paced")],
        cache_dir=tmp_path_factory.mktemp("cache"),
        catalog=catalog,
        max_queue=1,
    )
    settings = load_settings()
    settings.engines.preload = []
    settings.server.sse_keepalive_seconds = 0.3
    live = start_server(settings, registry)
    yield live
    live.stop()


def test_failure_after_the_first_sse_event_ends_with_an_error_event(faulty):
    with httpx.stream("POST", faulty.url + "/v1/audio/speech", json={"model": "crashy", "voice": "alloy", "input": "hi", "stream_format": "sse"}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[0].startswith('data: {"type":"speech.audio.delta"')
    assert lines[-1].startswith('data: {"error":')
    assert '"type":"server_error"' in lines[-1]


def test_failure_mid_binary_stream_truncates_the_transfer(faulty):
    """A crashed model must not look like a complete (short) file."""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", faulty.url + "/v1/audio/speech", json={"model": "crashy", "voice": "alloy", "input": "hi", "response_format": "pcm"}) as response:
            for _ in response.iter_bytes():
                pass


def test_model_that_fails_to_load_answers_503_with_an_envelope(faulty):
    client = openai.OpenAI(base_url=faulty.url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.audio.speech.create(model="broken", voice="alloy", input="hi")
    assert caught.value.status_code == 503


def test_sse_sends_ping_comments_during_long_silences(faulty):
    with httpx.stream("POST", faulty.url + "/v1/audio/speech", json={"model": "slow", "voice": "alloy", "input": "1.0", "stream_format": "sse"}, timeout=30) as response:
        lines = [line for line in response.iter_lines() if line]
    first_delta = next(i for i, line in enumerate(lines) if "speech.audio.delta" in line)
    pings = [line for line in lines[first_delta:] if line == ": ping"]
    assert len(pings) >= 2  # a second of silence at 0.3 s keep-alive
    assert lines[-1].startswith('data: {"type":"speech.audio.done"')
    assert not lines[0].startswith(":")  # never a ping before the first event


def test_overloaded_engine_answers_429_with_retry_after(faulty):
    import concurrent.futures

    def call(delay: str):
        return httpx.post(faulty.url + "/v1/audio/speech", json={"model": "slow", "voice": "alloy", "input": delay, "response_format": "pcm"}, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = [f.result() for f in [pool.submit(call, "1.5") for _ in range(6)]]
    codes = sorted(r.status_code for r in statuses)
    assert codes.count(200) >= 2 and codes.count(429) >= 2, codes  # 1 running + 1 queued
    for response in statuses:
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "rate_limit_exceeded"
            assert response.json()["error"]["type"] == "requests"  # what OpenAI sends for a 429


def test_a_stream_already_playing_is_never_refused_for_a_full_queue(faulty):
    """The queue limit admits or refuses requests; it must not cut a stream mid-way.

    A plays two sentences with a pause between them (as encoding and sending take time);
    B takes the engine during the pause and C queues behind it, filling the queue (1).
    When A asks for its second sentence it must wait its turn, not get a 429 event.
    """
    import concurrent.futures

    def speak(text: str, delay: float, sse: bool = False):
        time.sleep(delay)
        body = {"model": "paced", "voice": "alloy", "input": text, "response_format": "pcm"}
        if sse:
            body["stream_format"] = "sse"
        return httpx.post(faulty.url + "/v1/audio/speech", json=body, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        a = pool.submit(speak, "0.8 1.2 2", 0.0, True)   # works 0-0.8, pauses, asks again at 2.0
        b = pool.submit(speak, "3.0 0 1", 0.2)           # queued at 0.2, works 0.8-3.8
        c = pool.submit(speak, "0.1 0 1", 1.2)           # queued behind B at 1.2: queue full
        played, second, third = a.result(), b.result(), c.result()
    events = [line for line in played.text.splitlines() if line.startswith("data: ")]
    assert played.status_code == 200
    assert not any('"error"' in line for line in events), events
    assert [json.loads(line[6:])["type"] for line in events] == ["speech.audio.delta"] * 2 + ["speech.audio.done"]
    assert second.status_code == 200 and third.status_code == 200


def test_admission_does_not_carry_over_to_the_next_request_on_a_connection(faulty):
    """Being admitted once belongs to that request, not to the keep-alive connection."""
    import concurrent.futures

    def speak(client, text: str, delay: float = 0.0):
        time.sleep(delay)
        return client.post("/v1/audio/speech", json={"model": "paced", "voice": "alloy", "input": text, "response_format": "pcm"})

    with httpx.Client(base_url=faulty.url, timeout=60) as keep_alive, httpx.Client(base_url=faulty.url, timeout=60) as other:
        assert speak(keep_alive, "0.05 0 1").status_code == 200  # admitted once, on this connection
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(speak, other, "2.0 0 1")
            queued = pool.submit(speak, httpx.Client(base_url=faulty.url, timeout=60), "0.05 0 1", 0.3)
            time.sleep(0.8)  # one computing, one waiting: the queue (1) is full
            refused = speak(keep_alive, "0.05 0 1")
            assert running.result().status_code == 200 and queued.result().status_code == 200
    assert refused.status_code == 429, refused.text
