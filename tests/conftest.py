"""Shared fixtures: a real gateway on a loopback port, SDK clients, the OpenAI spec.

The server is the real application with the real embedded engines, started once per
session in a background thread; tests talk to it over HTTP exactly as users do.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.logging import configure_logging
from gateway.server import server_config
from gateway.settings import load_settings

# Servers run in background threads, outside pytest's per-test capture: keep them quiet.
configure_logging("warning", "console")

# Test tiers, each run in the environment that holds its libraries (``python3 dev.py test``
# runs them in turn): "main" in .venv, "step-audio" (torch replicas) in .venv-sa, "vllm"
# (real vLLM servers) from .venv with .venv-vllm beside it, "frameworks" (the agent
# frameworks against a gateway subprocess) in .venv-frameworks. A tier's files are collected
# when it is the current tier or when named on the command line, never skipped at import.
TIER = os.environ.get("GATEWAY_TEST_TIER", "main")
TIER_PATHS = {
    "step-audio": [
        "engines/test_step_audio_tokenizer.py",
        "engines/test_step_audio_tts.py",
        "engines/test_step_audio_deployment.py",
    ],
    "vllm": ["vllm_tier"],
    # The agent frameworks against a live gateway, in .venv-frameworks (which cannot import
    # this file: tests/frameworks_tier/conftest.py stands alone; dev.py runs it with
    # --confcutdir so that this conftest is never loaded there).
    "frameworks": ["frameworks_tier"],
}
collect_ignore = [path for tier, paths in TIER_PATHS.items() if tier != TIER for path in paths]

# The tier guard: a run that skipped a whole file or passed no test fails (its hooks, shared
# with tests/frameworks_tier/conftest.py).
from tests.tier_guard import pytest_collectreport, pytest_sessionfinish  # noqa: E402, F401

ROOT = Path(__file__).resolve().parent.parent
OPENAI_SPEC = ROOT / "tests" / "openai_spec" / "openapi.yaml"  # vendored, MIT

PARAGRAPH = (
    "The weather today is bright and calm. Our team is building a speech gateway that "
    "works on an ordinary computer. It turns written words into clear speech, and it turns "
    "speech back into text. Every part of it runs without a network connection."
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """The app behind what ``serve`` runs (gateway.server: its protocol, with the
    deadlines and the disconnect watch, its loop, and the settings' server limits), in a
    thread. uvicorn makes that loop from a factory, so the tests' own loops are untouched."""

    def __init__(self, app, port: int, settings=None) -> None:
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        if settings is None:  # the app's own, unless it is wrapped
            state = getattr(app, "state", None)
            settings = state["settings"] if state is not None else load_settings()
        config = server_config(
            app, settings, host="127.0.0.1", port=port, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def _ready(self, response: httpx.Response) -> bool:
        if response.status_code == 503 and "preload failed" in response.text:
            raise RuntimeError(f"gateway at {self.url} could not load its models: {response.text}")
        return response.status_code == 200

    def start(self, ready_path: str = "/ready", timeout: float = 120.0) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._ready(httpx.get(self.url + ready_path, timeout=2)):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gateway did not become ready at {self.url}")

    async def astart(self, ready_path: str = "/ready", timeout: float = 120.0) -> "LiveServer":
        """``start`` for async tests: the event loop keeps running while the gateway comes
        up, so servers on that loop (fake vLLM replicas) can answer its start-up calls."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
            while time.monotonic() < deadline:
                try:
                    if self._ready(await client.get(self.url + ready_path)):
                        return self
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"gateway did not become ready at {self.url}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def live_server(settings=None, registry=None, **kwargs) -> LiveServer:
    """The real app on a free loopback port, not yet started."""
    settings = settings or load_settings()
    app = create_app(settings, registry, configure_logs=False, **kwargs)
    return LiveServer(app, free_port(), settings)


def start_server(settings=None, registry=None, **kwargs) -> LiveServer:
    return live_server(settings, registry, **kwargs).start()


@pytest.fixture(scope="session")
def server() -> LiveServer:
    settings = load_settings()
    settings.engines.preload = ["tts-1", "whisper-1", "whisper-tiny.en", "gpt-4o-mini"]
    live = start_server(settings)
    yield live
    live.stop()


@pytest.fixture(scope="session")
def base_url(server: LiveServer) -> str:
    return server.url


@pytest.fixture(scope="session")
def http(server: LiveServer) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def openai_client(server: LiveServer):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def speech_wav(openai_client) -> bytes:
    """The English paragraph spoken by the default voice, as WAV bytes."""
    return openai_client.audio.speech.create(
        model="tts-1", voice="alloy", input=PARAGRAPH, response_format="wav"
    ).content


@pytest.fixture(scope="session")
def spec():
    from tests.spec import OpenAISpec

    return OpenAISpec.load(OPENAI_SPEC)


NODE_DIR = ROOT / "tests" / "node"


@pytest.fixture(scope="session")
def node_sdk() -> str:
    """The ``node`` binary, with the official openai Node SDK installed beside the scripts."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed for the Node SDK tests (.ci/run installs them)"
    if not (NODE_DIR / "node_modules" / "openai").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    return node
