"""Serving from several worker processes (``server.workers``), as one gateway.

One process is one event loop, so one core is the ceiling of what a gateway can parse,
route and stream. With ``workers = N`` the parent binds the socket once and uvicorn's
supervisor (``uvicorn.supervisors.Multiprocess``: restarts a worker that dies, SIGTERM
drains them all gracefully) starts N spawned processes that accept from it. Each worker
builds its own app from the settings the parent resolved, so ``--host``/``--port`` and
environment overrides hold in every worker.

What must not break for a client when the next request lands on another worker:

* the state clients depend on (audio ids, per-key limits, transcripts, voice owners) is
  shared only through the Redis backend, so more than one worker needs it; "auto" is
  one worker on the memory backend, and an explicit ``workers > 1`` is refused
  (:mod:`gateway.settings`);
* engines load per worker, which is fine for the embedded CPU ones but not for the
  Step-Audio tokenizer and TTS (GPU weights, cloned voices): one copy per gateway, so
  the same rule applies to them;
* ``/metrics`` adds up every worker (prometheus_client's multiprocess mode, in a fresh
  directory per run), and the model gauges, read from live state, are published by each
  worker (:mod:`gateway.metrics`);
* ``/ready`` answers 200 only once every worker has loaded its preloaded models: each
  worker drops a marker file when it has, and the supervisor removes a dead worker's.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from .server import server_config
from .settings import Settings, one_copy_models

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported
_PUBLISH_SECONDS = 1.0


def resolve_workers(settings: Settings) -> tuple[int, str | None]:
    """How many worker processes to run, and why "auto" chose one when it did."""
    requested = settings.server.workers
    if requested != "auto":
        return int(requested), None
    heavy = one_copy_models(settings)
    if heavy:
        return 1, (
            f"{', '.join(heavy)} keep one copy per gateway (GPU memory, cloned voices): scale"
            " with more gateways behind the load balancer"
        )
    if settings.state.backend != "redis":
        return 1, (
            'state.backend is "memory": worker processes would not share audio ids, limits'
            ' and transcripts (set [state] backend = "redis" to use every core)'
        )
    return usable_cores(), None


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may run on (its CPU affinity), capped by a cgroup CPU quota
    (``docker run --cpus``, a Kubernetes CPU limit), which affinity does not show: on a
    64-core host a container limited to 2 CPUs should not start 64 workers."""
    cores = len(os.sched_getaffinity(0))
    for quota_file, period_file in (
        ("cpu.max", None),
        ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"),
    ):
        try:
            fields = (cgroup / quota_file).read_text().split()
            if period_file is not None:
                fields.append((cgroup / period_file).read_text().strip())
            quota, period = fields[0], fields[1]
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1") and int(period) > 0:
            return max(1, min(cores, math.ceil(int(quota) / int(period))))
        break
    return cores


# --------------------------------------------------------------------------- the run dir


@dataclass(frozen=True)
class RunDir:
    """Files the worker processes of one run share: prometheus_client's metric files, and
    the markers of workers whose models are loaded."""

    root: Path
    workers: int

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def ready(self) -> Path:
        return self.root / "ready"

    @classmethod
    def create(cls, workers: int) -> "RunDir":
        run = cls(Path(tempfile.mkdtemp(prefix="step-audio-gateway-")), workers)
        run.metrics.mkdir()
        run.ready.mkdir()
        return run

    def forget(self, pid: int) -> None:
        """A worker is gone: its live gauges and readiness no longer count."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.metrics))
        (self.ready / str(pid)).unlink(missing_ok=True)

    @property
    def target(self) -> int:
        """Workers the supervisor keeps running now (SIGTTIN and SIGTTOU change it)."""
        try:
            return int((self.root / "target").read_text())
        except (OSError, ValueError):
            return self.workers

    def not_ready(self) -> str | None:
        """Why the gateway is not ready yet while some worker is still loading."""
        ready = 0
        for marker in self.ready.iterdir():
            try:
                os.kill(int(marker.name), 0)
            except (ValueError, ProcessLookupError):
                continue
            except PermissionError:
                pass
            ready += 1
        target = self.target
        if ready >= target:
            return None
        return f"Models are still loading: {ready} of {target} worker processes are ready."

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


_run: RunDir | None = None  # set in each worker process


def workers_not_ready() -> str | None:
    """For /ready: None in a single-process gateway, or when every worker is ready."""
    return None if _run is None else _run.not_ready()


# --------------------------------------------------------------------------- in a worker


class WorkerApp:
    """The app factory each worker calls. It is pickled to the spawned worker with the
    uvicorn config, so it carries the parent's resolved settings rather than an import
    string that would have to read the files and environment again."""

    def __init__(self, settings: Settings, run: RunDir) -> None:
        self.settings = settings
        self.run = run

    def __call__(self) -> Any:
        global _run
        _run = self.run
        from .app import create_app

        app = create_app(self.settings, settle_heap=True)
        # Marked ready in the same step as the registry, not at the heartbeat's next look:
        # a scrape could otherwise show this worker ready while /ready still counted it out.
        app.state["registry"].ready_callbacks.append((self.run.ready / str(os.getpid())).touch)
        threading.Thread(
            target=self._heartbeat, args=(app,), name="worker-heartbeat", daemon=True
        ).start()
        return app

    def _heartbeat(self, app: Any) -> None:
        """Publish this worker's live figures to the shared metrics, and mark it ready once
        its preloaded models are loaded."""
        from .metrics import publish

        registry, marked = app.state["registry"], False
        while True:
            try:
                publish(app.state["metrics"])
            except Exception:  # a figure missed: the next beat publishes it; readiness goes on
                structlog.get_logger(__name__).exception("worker_metrics_publish_failed")
            if not marked and registry.ready:
                (self.run.ready / str(os.getpid())).touch()
                marked = True
            time.sleep(_PUBLISH_SECONDS if marked else 0.1)


# --------------------------------------------------------------------------- the parent


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, plus: a worker that is gone (died and replaced, retired by
    SIGHUP or SIGTTOU) stops counting in live gauges and in readiness."""

    def __init__(self, config: uvicorn.Config, sockets: list, run: RunDir) -> None:
        super().__init__(config, sockets)
        self.run_dir = run
        self.known: set[int] = set()

    def _forget_gone(self) -> None:
        live = {p.pid for p in self.processes if p.pid is not None}
        for pid in self.known - live:
            self.run_dir.forget(pid)
        self.known = live
        if self.processes_num != self.run_dir.target:
            (self.run_dir.root / "target").write_text(str(self.processes_num))

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._forget_gone()

    def handle_signals(self) -> None:
        super().handle_signals()
        self._forget_gone()


def serve_workers(settings: Settings, workers: int) -> int:
    """Bind once, run ``workers`` processes until SIGINT/SIGTERM; the exit status."""
    run = RunDir.create(workers)
    os.environ[METRICS_ENV] = str(run.metrics)  # inherited by the workers, read at import
    try:
        # Pickled to each worker: the protocol classes are importable by name and the
        # connection deadlines travel on the config (gateway/server.py).
        config = server_config(WorkerApp(settings, run), settings, workers=workers, factory=True)
        sock = config.bind_socket()  # exits 3 (STARTUP_FAILURE) when the port is taken
        supervisor = _Supervisor(config, [sock], run)
        supervisor.run()
        failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
        return 3 if failed else 0
    finally:
        run.remove()
