"""Embedded engines that crash mid-run, seen through the HTTP API.

A native library dying inside Piper, Whisper or llama.cpp cannot be caused on cue, so the
real engines are subclassed (tests/faults.py: Crashing*) to deliver N real items and then
raise what a crashed library raises. The contract: a failure before the first byte is an
error status with the OpenAI envelope; after it, an SSE stream ends with one error event
and a binary stream is cut short (never a complete-looking short file). Either way the
same engine serves the next request, /health stays 200, and many crashes leave the
process's memory where it was.
"""

from __future__ import annotations

import gc
import json

import httpx
import pytest

from engines.base import Capability
from engines.catalog import CATALOG, EngineKind
from engines.registry import ModelRegistry, ModelSpec
from gateway.settings import load_settings
from tests.conftest import start_server
from tests.faults import drop_captured_logs, rss_mib

pytestmark = pytest.mark.slow

TEXT = "Hello there. How are you today? I am fine."
QUESTION = "Name one colour."


@pytest.fixture(scope="module")
def crashing(tmp_path_factory):
    catalog = {
        **CATALOG,
        "crashing-piper": EngineKind("tests.faults:CrashingPiper", frozenset({Capability.SPEECH})),
        "crashing-whisper": EngineKind(
            "tests.faults:CrashingWhisper", frozenset({Capability.TRANSCRIPTION})
        ),
        "crashing-llama": EngineKind("tests.faults:CrashingLlama", frozenset({Capability.CHAT})),
    }
    settings = load_settings()
    registry = ModelRegistry(
        [
            ModelSpec("piper", "crashing-piper"),
            ModelSpec("whisper", "crashing-whisper", options={"weights": "whisper-tiny.en", "compute_type": "int8"}),
            ModelSpec("llama", "crashing-llama"),
        ],
        cache_dir=settings.engines.cache_path,
        catalog=catalog,
        voices=settings.voices,
    )
    settings.engines.preload = ["piper", "whisper", "llama"]
    live = start_server(settings, registry)
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client
    live.stop()


@pytest.fixture(scope="module")
def recording(crashing) -> bytes:
    response = crashing.post("/v1/audio/speech", json={"model": "piper", "voice": "joe", "input": TEXT, "response_format": "wav"})
    assert response.status_code == 200
    return response.content


# ------------------------------------------------------------------ one request each way


def speech(client, after: int, fmt: str):
    body = {"model": "piper", "voice": "joe", "input": f"crash{after} {TEXT}"}
    body.update({"stream_format": "sse"} if fmt == "sse" else {"response_format": fmt})
    return client.stream("POST", "/v1/audio/speech", json=body)


def transcription(client, recording: bytes, after: int, stream: bool):
    return client.stream(
        "POST", "/v1/audio/transcriptions",
        files={"file": ("a.wav", recording, "audio/wav")},
        data={"model": "whisper", "prompt": f"crash{after}", "stream": json.dumps(stream)},
    )


def chat(client, after: int, stream: bool):
    body = {
        "model": "llama", "stream": stream, "max_completion_tokens": 12, "seed": 1,
        "messages": [{"role": "user", "content": f"crash{after} {QUESTION}"}],
    }
    return client.stream("POST", "/v1/chat/completions", json=body)


def _request(kind: str, client, recording: bytes, after: int, mode: str):
    if kind == "speech":
        return speech(client, after, mode)
    if kind == "transcription":
        return transcription(client, recording, after, mode == "sse")
    return chat(client, after, mode == "sse")


def _assert_envelope(response: httpx.Response) -> None:
    response.read()
    assert response.status_code == 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"


def _assert_contract(request, after: int, mode: str) -> None:
    if after == 0 or mode == "json":
        with request as response:
            _assert_envelope(response)
        return
    if mode == "sse":
        with request as response:
            assert response.status_code == 200
            events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
        payloads = [json.loads(e) for e in events]  # every event parses; no [DONE] after a crash
        assert len(payloads) >= 2 and "error" not in payloads[0]
        assert set(payloads[-1]) == {"error"} and payloads[-1]["error"]["type"] == "server_error"
        return
    # A binary body: the crash must cut the transfer, not end it like a complete file.
    with pytest.raises(httpx.RemoteProtocolError):
        with request as response:
            assert response.status_code == 200
            for _ in response.iter_bytes():
                pass


CASES = [
    ("speech", 0, "sse"), ("speech", 0, "mp3"), ("speech", 1, "sse"), ("speech", 1, "mp3"),
    ("speech", 1, "wav"), ("speech", 2, "pcm"),
    ("transcription", 0, "json"), ("transcription", 0, "sse"), ("transcription", 1, "json"),
    ("transcription", 1, "sse"),
    ("chat", 0, "json"), ("chat", 0, "sse"), ("chat", 1, "json"), ("chat", 1, "sse"),
    ("chat", 3, "sse"),
]


@pytest.mark.parametrize(("kind", "after", "mode"), CASES)
def test_a_crash_is_a_clear_error_and_the_engine_serves_the_next_request(crashing, recording, kind, after, mode):
    _assert_contract(_request(kind, crashing, recording, after, mode), after, mode)
    assert crashing.get("/health").status_code == 200
    _assert_served(kind, crashing, recording)


def _assert_served(kind: str, client, recording: bytes) -> None:
    if kind == "speech":
        response = client.post("/v1/audio/speech", json={"model": "piper", "voice": "joe", "input": TEXT, "response_format": "wav"})
        assert response.status_code == 200 and response.content[:4] == b"RIFF"
    elif kind == "transcription":
        response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", recording, "audio/wav")}, data={"model": "whisper"})
        assert response.status_code == 200 and "fine" in response.json()["text"].lower()
    else:
        response = client.post("/v1/chat/completions", json={"model": "llama", "max_completion_tokens": 8, "messages": [{"role": "user", "content": QUESTION}]})
        assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]


def test_many_crashes_leave_memory_at_its_baseline(crashing, recording):
    """Warm every path once, then rounds of every crash: a leak per crashed request (a
    stream, an encoder, a worker slot never released) would grow with the rounds. pytest's
    captured log records are dropped after each round (see drop_captured_logs)."""

    def one_round():
        for kind, after, mode in CASES:
            _assert_contract(_request(kind, crashing, recording, after, mode), after, mode)
        drop_captured_logs()
        gc.collect()
        return rss_mib()

    one_round()
    readings = [one_round() for _ in range(6)]
    print(f"\nRSS after each round of {len(CASES)} crashed requests (MiB): {[round(r, 1) for r in readings]}")
    assert readings[-1] - readings[0] < 20, readings
    for kind in ("speech", "transcription", "chat"):
        _assert_served(kind, crashing, recording)
