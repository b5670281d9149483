"""Schemathesis against the published document (openapi/openapi.json), on a live gateway.

Over a thousand generated requests, valid and invalid, must each end in a documented
answer: never a 5xx, every error in the OpenAI envelope, every 200 valid against the schema
the document gives it. tests/schemathesis_hooks.py swaps real model and voice names (and a
real WAV upload) into about two cases in three, so those requests reach the engines, and
bounds what would make the run slow on 2 cores (speech input, completion tokens, n).

Schemathesis runs through its CLI (its pytest plugin does not work with pytest 9), as a
subprocess against a gateway started here, so the gateway's own count of requests and
statuses is the evidence, not the tool's summary alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import load_settings
from tests.conftest import ROOT, LiveServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# The CLI installed beside the interpreter running the tests (the test extra pins it).
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "unsupported_method",
        "error_envelope",  # tests/schemathesis_hooks.py
    ]
)


# Every operation that runs a model and can succeed here (no embedded engine clones voices).
ENGINE_PATHS = [
    "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/chat/completions",
]


class Tally:
    """What the gateway itself answered, counted in an ASGI wrapper around the app."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.ok: dict[str, int] = {}  # 200s per path
        self.server_errors: list[str] = []

    def reset(self) -> None:
        with self.lock:
            self.requests, self.statuses, self.ok, self.server_errors = 0, {}, {}, []

    def wrap(self, app):
        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)

            async def send_counted(message):
                if message["type"] == "http.response.start":
                    status = message["status"]
                    with self.lock:
                        self.requests += 1
                        self.statuses[status] = self.statuses.get(status, 0) + 1
                        if status == 200:
                            self.ok[scope["path"]] = self.ok.get(scope["path"], 0) + 1
                        if status >= 500:
                            self.server_errors.append(f"{scope['method']} {scope['path']} {status}")
                await send(message)

            await app(scope, receive, send_counted)

        return counted


@pytest.fixture(scope="module")
def fuzzed():
    settings = load_settings()
    settings.engines.preload = ["tts-1", "whisper-1", "whisper-tiny.en", "gpt-4o-mini"]
    tally = Tally()
    live = LiveServer(tally.wrap(create_app(settings, configure_logs=False)), free_port(), settings)
    live.start()
    yield live, tally
    live.stop()


def _schemathesis(url: str, cwd, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        "SCHEMATHESIS_WAV": str(cwd / "speech.wav"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        str(SCHEMATHESIS),
        "run", str(ROOT / "openapi" / "openapi.json"),
        "--url", url,
        "--workers", "1",
        "--checks", CHECKS,
        "--request-timeout", "120",
        "--generation-database", "none",
        "--suppress-health-check", "all",
        "--no-color",
        *args,
    ]
    # cwd: a scratch folder, so schemathesis's own cache never lands in the repository.
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_generated_requests_get_documented_answers(fuzzed, tmp_path):
    live, tally = fuzzed
    speech = httpx.post(live.url + "/v1/audio/speech", timeout=60, json={
        "model": "tts-1", "voice": "alloy", "input": "Hello there. How are you today?", "response_format": "wav"})
    assert speech.status_code == 200
    (tmp_path / "speech.wav").write_bytes(speech.content)
    tally.reset()  # from here on, only what schemathesis sent (not /ready polls at start)
    # Cheap operations take many cases; those that run a model take fewer, each bounded.
    runs = [
        ("--include-path-regex", "^/(health|ready|v1/models)", "--max-examples", "100"),
        ("--include-path-regex", "^/v1/(audio|chat)", "--max-examples", "40"),
    ]
    generated = 0
    for args in runs:
        result = _schemathesis(live.url, tmp_path, "--phases", "examples,coverage,fuzzing", *args)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-20000:]
        counted = re.search(r"(\d+) generated", output)
        assert counted, output[-3000:]
        generated += int(counted.group(1))
        print(f"\nschemathesis {' '.join(args)}: {counted.group(0)}")
    print(f"\nschemathesis: {generated} generated; the gateway answered {tally.requests}: "
          f"{sorted(tally.statuses.items())}")
    assert tally.server_errors == []
    assert generated >= 1000 and tally.requests >= 1000
    # The hooks' real names must get requests through to every engine, not only errors.
    print(f"200s per path: {tally.ok}")
    for path in ENGINE_PATHS:
        assert tally.ok.get(path, 0) >= 3, (path, tally.ok)
