"""Two real vLLM servers (CPU build, SmolLM2-135M) for the vLLM test tier.

Collected only in the "vllm" test tier (``python3 dev.py test-vllm``, or named on the
command line): tests/conftest.py leaves this folder out of the other tiers.

The servers run from ``.venv-vllm`` (``scripts/vllm_cpu.py``), as subprocesses in their
own process groups, on free loopback ports; the tests talk to them over HTTP from
``.venv`` exactly as the gateway does. On a 2-core machine each server's compute thread
is pinned to its own core (``VLLM_CPU_OMP_THREADS_BIND`` 0 and 1), so both start in
parallel and serve side by side without sharing a core.

Knobs (environment):

* ``GATEWAY_VLLM_COMPILE=1``: keep vLLM's torch.compile (about 90 s per start here
  instead of about 30 s with ``--enforce-eager``; about 25% faster decoding).
* ``GATEWAY_VLLM_START=sequential``: start the servers one after the other.
* ``GATEWAY_VLLM_LOGS=DIR``: keep the servers' logs there (default: pytest's tmp dir).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "vllm_cpu.py"
MODEL = "step-audio-chat"
SETUP_TIMEOUT = 1800.0  # a cold install is 1.5-2 minutes; a slow mirror can take longer
START_TIMEOUT = 600.0

#: Figures measured during the run, printed in pytest's closing summary.
REPORT: list[str] = []


def report(line: str) -> None:
    REPORT.append(line)


def pytest_terminal_summary(terminalreporter) -> None:
    if REPORT:
        terminalreporter.section("real vLLM tier: measurements")
        for line in REPORT:
            terminalreporter.write_line(line)


def _is_resource_tracker(pid: int) -> bool:
    try:
        return b"multiprocessing.resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Replica:
    """One ``vllm serve`` started through ``scripts/vllm_cpu.py serve``."""

    name: str
    cpus: str
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_after: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, eager: bool) -> None:
        command = [
            sys.executable,
            str(SCRIPT),
            "serve",
            "--port",
            str(self.port),
            "--cpus",
            self.cpus,
            "--exit-with-parent",
            *(["--eager"] if eager else []),
        ]
        log = self.log_path.open("wb")
        self.started_at = time.monotonic()
        # A session of its own: the wrapper, vLLM's API server, its engine core and worker
        # share one process group, which stop() and kill() signal as a whole.
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        if self.ready_after is not None:
            return
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM {self.name} exited with {self.proc.returncode} before it was ready "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2, trust_env=False).status_code == 200:
                    self.ready_after = time.monotonic() - self.started_at
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(
            f"vLLM {self.name} not ready after {START_TIMEOUT:g} s (log {self.log_path}):\n"
            f"{self.log_tail()}"
        )

    def _group_pids(self) -> list[int]:
        """The live processes of this server's process group (Linux /proc)."""
        if self.proc is None:
            return []
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # pgrp is the 3rd field after the parenthesised command name.
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:
                pids.append(int(stat.parent.name))
        return pids

    def _shared_memory(self) -> set[Path]:
        """The /dev/shm files the server maps (vLLM's message queues, semaphores)."""
        files = set()
        for pid in self._group_pids():
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            for line in maps.splitlines():
                path = line.split(maxsplit=5)[-1]
                if path.startswith("/dev/shm/"):
                    files.add(Path(path.removesuffix(" (deleted)")))
        return files

    def _signal_group(self, signum: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def _kill_group(self) -> None:
        """SIGKILL whatever is left of the group, and leave no shared memory behind.

        vLLM's processes hold /dev/shm segments (hundreds of MB of RAM) that a killed
        process cannot unlink. Python's resource tracker, which is in the group too,
        removes the ones registered with it once every process using it is gone, so it
        is spared the SIGKILL (as it would be in a real crash) and given time to do
        that; the segments still mapped at the kill are then removed here as well.
        """
        shm = self._shared_memory()
        trackers = [pid for pid in self._group_pids() if _is_resource_tracker(pid)]
        for pid in self._group_pids():
            if pid not in trackers:
                _kill(pid)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 15
        while self._group_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._signal_group(signal.SIGKILL)  # a tracker that did not finish in time
        for path in shm:
            path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the whole server at once: API server, engine core and worker."""
        self._kill_group()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group()  # whatever outlived the wrapper (the engine core may)

    def metric(self, name: str) -> float:
        """Sum of one Prometheus metric from this server's ``/metrics``."""
        text = httpx.get(self.url + "/metrics", timeout=5, trust_env=False).text
        total, found = 0.0, False
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        if not found:
            raise KeyError(f"{name} not in {self.url}/metrics")
        return total


@dataclass
class Cluster:
    replicas: list[Replica]
    model: str = MODEL

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]


@pytest.fixture(scope="session")
def vllm_cluster(tmp_path_factory) -> Cluster:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, str(SCRIPT), "setup"], cwd=ROOT, check=True, timeout=SETUP_TIMEOUT
    )
    report(f"setup (scripts/vllm_cpu.py setup): {time.monotonic() - started:.1f} s")

    logs = Path(os.environ.get("GATEWAY_VLLM_LOGS") or tmp_path_factory.mktemp("vllm-logs"))
    logs.mkdir(parents=True, exist_ok=True)
    eager = os.environ.get("GATEWAY_VLLM_COMPILE") != "1"
    sequential = os.environ.get("GATEWAY_VLLM_START") == "sequential"
    cpu_count = os.cpu_count() or 1
    replicas = [
        Replica(
            name,
            cpus=str(i % cpu_count) if cpu_count > 1 else "nobind",
            log_path=logs / f"vllm-{name}.log",
        )
        for i, name in enumerate(("a", "b"))
    ]
    started = time.monotonic()
    try:
        for replica in replicas:
            replica.start(eager)
            if sequential:
                replica.wait_ready(time.monotonic() + START_TIMEOUT)
        for replica in replicas:
            replica.wait_ready(time.monotonic() + START_TIMEOUT)
        mode = "eager" if eager else "torch.compile"
        how = "sequentially" if sequential else "in parallel"
        report(
            f"start of 2 vLLM servers ({mode}, {how}, pinned to cores "
            f"{', '.join(r.cpus for r in replicas)}): all ready after "
            f"{time.monotonic() - started:.1f} s; "
            + ", ".join(f"{r.name} {r.ready_after:.1f} s" for r in replicas)
        )
        report(f"vLLM logs: {logs}")
        yield Cluster(replicas)
    finally:
        for replica in replicas:
            replica.stop()
