"""A real redis-server on a free loopback port, and gateways as real processes.

The suite starts and stops its own Redis (``dev.py`` installs Debian's redis-server when
it is missing): tests of shared state run against the real server, its Lua scripts and its
clock, never a fake. Gateways that share it run as ``step-audio-gateway serve``
subprocesses, exactly as replicas behind a load balancer do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_BIN = Path(sys.executable).parent / "step-audio-gateway"


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: run `python3 dev.py setup` (installs it)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="sag-redis-")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class GatewayProcess:
    """``step-audio-gateway serve`` with a config file that extends the default one."""

    def __init__(self, config_text: str, *, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        handle, path = tempfile.mkstemp(prefix="sag-gateway-", suffix=".toml")
        with os.fdopen(handle, "w") as file:
            file.write(f'extends = "{ROOT / "config" / "default.toml"}"\n{config_text}')
        self.config = path
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [str(GATEWAY_BIN), "serve", "--config", path, "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GATEWAY__SERVER__LOG_LEVEL": "warning", **(env or {})},
            cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 180.0) -> "GatewayProcess":
        """This gateway once /ready answers 200; if it exits or never gets there, it is
        stopped (nothing left running for the caller to clean up) and RuntimeError says
        why with the end of its log."""
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"gateway exited: {self.output()}")
                try:
                    if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            raise RuntimeError(f"gateway did not become ready: {self.output()}")
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        """Terminate (kill after 20 s) and clean up; a second call does nothing."""
        if self.log.closed:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        os.unlink(self.config)
        self.log.close()


def avoid_minute_edge(need_seconds: float = 12.0) -> None:
    """Limits count in one-minute windows (by the clock of this host, which Redis shares
    here): a check that needs one window throughout waits for the next one when fewer than
    ``need_seconds`` are left in this one."""
    left = 60 - time.time() % 60
    if left < need_seconds:
        time.sleep(left + 0.05)
