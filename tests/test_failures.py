"""What clients see when an engine fails: envelopes before the first byte, error events after."""

from __future__ import annotations

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
    }
    registry = ModelRegistry(
        [ModelSpec("crashy", "mid-stream"), ModelSpec("broken", "no-load"), ModelSpec("slow", "slow")],
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
            assert response.json()["error"]["code"] == "engine_overloaded"
