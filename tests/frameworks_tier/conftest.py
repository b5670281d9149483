"""The frameworks tier: the agent frameworks themselves, pinned in requirements/frameworks.txt
and installed in .venv-frameworks, against a live gateway.

The gateway is what ``serve`` runs: a subprocess of the main ``.venv`` (``python -m gateway
serve`` on a free loopback port, the embedded engines, the default configuration plus one
API key, so every framework's auth header is checked), started once for the session. Its
log goes to a file whose tail is added to the report of every failed test.

This environment cannot import the gateway (nor tests/conftest.py, which dev.py keeps out
with ``--confcutdir``): the tests see the gateway only over HTTP and WebSocket, as users do.

For a run against another checkout of the gateway (a colleague's branch), set
GATEWAY_FRAMEWORKS_ROOT to its folder (the gateway is started there, with that folder first
on PYTHONPATH), GATEWAY_FRAMEWORKS_PYTHON to the interpreter holding its engines (default:
that folder's .venv/bin/python), and GATEWAY_FRAMEWORKS_CONFIG to a settings file to serve
with (e.g. this checkout's config/default.toml, for a branch begun before its model names).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.frameworks_tier.helpers import API_KEY, NODE_DIR, ROOT, wav_bytes

# The tier guard shared with tests/conftest.py: a run that skipped a whole file or passed
# no test fails.
from tests.tier_guard import pytest_collectreport, pytest_sessionfinish  # noqa: F401

LOG_TAIL_BYTES = 6000


@dataclass
class Gateway:
    url: str  # http://127.0.0.1:<port>
    log: Path
    process: subprocess.Popen

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/v1"

    def log_tail(self) -> str:
        try:
            data = self.log.read_bytes()
        except OSError:
            return "(no log)"
        return data[-LOG_TAIL_BYTES:].decode("utf-8", "replace")


_gateway: Gateway | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gateway_root() -> Path:
    return Path(os.environ.get("GATEWAY_FRAMEWORKS_ROOT") or ROOT).resolve()


def _gateway_python(root: Path) -> str:
    python = os.environ.get("GATEWAY_FRAMEWORKS_PYTHON") or str(root / ".venv" / "bin" / "python")
    assert Path(python).exists(), (
        f"{python} is missing: the gateway runs from the main .venv (python3 dev.py install), "
        "or name an interpreter with GATEWAY_FRAMEWORKS_PYTHON"
    )
    return python


@pytest.fixture(scope="session")
def gateway(tmp_path_factory) -> Gateway:
    """The gateway as ``serve`` runs it, from the main environment, with one API key."""
    global _gateway
    root = _gateway_root()
    port = _free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "GATEWAY__SERVER__API_KEYS": f'["{API_KEY}"]',
        "GATEWAY__SERVER__WORKERS": "1",
        "GATEWAY__SERVER__LOG_FORMAT": "console",
    }
    command = [_gateway_python(root), "-m", "gateway", "serve", "--host", "127.0.0.1",
               "--port", str(port)]
    if os.environ.get("GATEWAY_FRAMEWORKS_CONFIG"):  # a dev run's settings file
        command += ["--config", os.environ["GATEWAY_FRAMEWORKS_CONFIG"]]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT,
            preexec_fn=_stop_with_parent if sys.platform == "linux" else None,
        )
    _gateway = live = Gateway(f"http://127.0.0.1:{port}", log, process)
    try:
        _wait_ready(live)
        yield live
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _gateway = None


def _stop_with_parent() -> None:
    """In the gateway's process, before it runs: SIGTERM when the test process dies, so a
    killed run (dev.py's tier timeout) leaves no gateway behind (Linux's PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _wait_ready(live: Gateway, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live.process.poll() is not None:
            raise RuntimeError(
                f"the gateway exited ({live.process.returncode}) before it was ready:\n"
                + live.log_tail()
            )
        try:
            response = httpx.get(live.url + "/ready", timeout=2)
            if response.status_code == 200:
                return
            if response.status_code == 503 and "preload failed" in response.text:
                raise RuntimeError(f"the gateway could not load its models: {response.text}")
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the gateway was not ready in {timeout:.0f} s:\n" + live.log_tail())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the tail of the gateway's log."""
    report = yield
    if report.failed and _gateway is not None:
        report.sections.append(("gateway log (tail)", _gateway.log_tail()))
    return report


@pytest.fixture(scope="session")
def http(gateway: Gateway) -> httpx.Client:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def hear(http: httpx.Client):
    """Audio a framework produced, heard back by the gateway's own Whisper (whisper-1 on
    /v1/audio/transcriptions): ``hear(int16 samples, rate)`` is the text."""

    def transcribe(samples: np.ndarray, rate: int) -> str:
        samples = np.asarray(samples)
        assert samples.size > rate // 2, f"only {samples.size} samples at {rate} Hz"
        files = {"file": ("heard.wav", wav_bytes(samples, rate), "audio/wav")}
        response = http.post(
            "/audio/transcriptions", files=files, data={"model": "whisper-1", "language": "en"}
        )
        assert response.status_code == 200, response.text
        return response.json()["text"]

    return transcribe


# --- Node: @openai/agents in tests/node ---


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` binary, with tests/node's locked packages (the openai SDK and
    @openai/agents) installed as the main tier installs them: ``npm ci`` from the lock."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed (dev.py installs them on Debian)"
    if not (NODE_DIR / "node_modules" / "@openai" / "agents" / "package.json").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300,
            stdout=sys.stderr,
        )
    return node
