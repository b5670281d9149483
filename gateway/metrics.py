"""Prometheus metrics, including the ones a streaming speech gateway is judged by.

Litestar's Prometheus plugin times whole requests. For a streamed reply the whole request
lasts as long as the audio does, so that figure says nothing about how soon a listener
hears something. This module adds, on the same ``/metrics`` page:

* ``time_to_first_byte_seconds`` for every route, from the middleware (no handler code);
* ``time_to_first_token_seconds`` and ``time_to_first_audio_seconds`` per endpoint and
  model, measured from the request's arrival where the services produce their streams
  (:func:`first_token`, :func:`first_audio`, :func:`observe_speech`);
* ``audio_seconds_total`` of audio heard and spoken, for capacity planning;
* per model, at scrape time: loaded or not, requests holding it, inference calls running
  and queued on its worker (where a 429 comes from), and how long it took to load.

The request's arrival is carried in a context variable, which the streaming tasks that
serve the body inherit.

With several worker processes (``server.workers``, :mod:`gateway.processes`) the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory of the run before the
workers import this module, so every counter and histogram lives in files there and
``/metrics``, whichever worker answers it, adds them up across workers. Gauges say how
they combine: open realtime sessions and requests in progress add up (live workers
only), the state backend is up only while every worker reaches it. The model gauges,
read from a worker's own registry, are published by each worker about once a second
(and by the worker answering the scrape, right then): loaded and load time are the most
of any worker, requests holding a model and inference calls running and queued add up
over workers. Two per-worker series carry a ``pid`` label: ``worker_ready`` and
``worker_responses`` (responses the worker has sent), which show how evenly the kernel
spreads connections. The process and Python collectors (``process_*``, ``python_*``) are
per process and are left out then.
"""

from __future__ import annotations

import os
import time
from contextvars import ContextVar
from typing import Any, AsyncIterator

from litestar import Controller, Request, Response, get
from litestar.plugins.prometheus import PrometheusConfig
from litestar.plugins.prometheus.middleware import PrometheusMiddleware
from litestar.types import Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engines.registry import ModelRegistry

PREFIX = "step_audio_gateway"

#: prometheus_client chose its value store on import by the same variable.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

#: Seconds, from "instant" to "a listener gives up".
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)

FIRST_BYTE = Histogram(
    f"{PREFIX}_time_to_first_byte_seconds",
    "Time from a request's arrival to the first byte of its response body",
    ["method", "path", "status_code"],
    buckets=LATENCY_BUCKETS,
)
FIRST_TOKEN = Histogram(
    f"{PREFIX}_time_to_first_token_seconds",
    "Time from a chat request's arrival to its first generated text or tool call",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
FIRST_AUDIO = Histogram(
    f"{PREFIX}_time_to_first_audio_seconds",
    "Time from a request's arrival to its first piece of encoded audio",
    ["endpoint", "model"],
    buckets=LATENCY_BUCKETS,
)
AUDIO_SECONDS = Counter(
    f"{PREFIX}_audio_seconds",
    "Seconds of audio heard (direction=in) and spoken (direction=out)",
    ["endpoint", "direction", "model"],
)

# Realtime (WebSocket) sessions: what a voice agent's user feels.
REALTIME_VOICE_TO_VOICE = Histogram(
    f"{PREFIX}_realtime_voice_to_voice_seconds",
    "Realtime: time from the detected end of the user's speech to the first audio delta sent",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
REALTIME_TURN_STAGES = Histogram(
    f"{PREFIX}_realtime_turn_stage_seconds",
    "Realtime: where the wait between the detected end of the user's speech and the first "
    "audio delta goes, by stage: heard (the turn's transcription after speech_stopped), "
    "first_token (the model's first token after that), first_sentence (the first piece to "
    "voice complete after that: the first sentence, or its opening clause once that has "
    "enough words), synthesis (its first audio encoded after that), sent (the delta on its "
    "way after that)",
    ["model", "stage"],
    buckets=LATENCY_BUCKETS,
)
REALTIME_SESSIONS = Gauge(
    f"{PREFIX}_realtime_sessions_open",
    "Realtime WebSocket sessions currently open",
    multiprocess_mode="livesum",
)
REALTIME_BARGE_INS = Counter(
    f"{PREFIX}_realtime_barge_ins", "Responses cancelled because the user spoke over them"
)

_arrival: ContextVar[float | None] = ContextVar("request_arrival", default=None)


def since_arrival() -> float | None:
    """Seconds since the current request arrived (None outside a request)."""
    started = _arrival.get()
    return None if started is None else time.perf_counter() - started


#: Metric children by (metric, label values): ``labels()`` takes a lock and converts every
#: value on each call, which a first-token observation per request paid every time.
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = metric.labels(*values)
        if len(_children) < 4096:  # label values are model and endpoint names: few
            _children[key] = child
    return child


def _observe(histogram: Histogram, *values: str) -> None:
    elapsed = since_arrival()
    if elapsed is not None:
        _child(histogram, *values).observe(elapsed)


def count_audio(endpoint: str, direction: str, model: str, seconds: float) -> None:
    if seconds > 0:
        _child(AUDIO_SECONDS, endpoint, direction, model).inc(seconds)


def first_token(model: str) -> None:
    _observe(FIRST_TOKEN, model)


def first_audio(endpoint: str, model: str) -> None:
    _observe(FIRST_AUDIO, endpoint, model)


async def observe_speech(model: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass encoded audio through, timing the first non-empty piece."""
    seen = False
    async for chunk in chunks:
        if not seen and chunk:
            seen = True
            first_audio("speech", model)
        yield chunk


class StreamingPrometheusMiddleware(PrometheusMiddleware):
    """Litestar's Prometheus middleware, plus the request's arrival time and its first byte.

    The same metrics, labels and values as Litestar's ``__call__``, in one send wrapper
    instead of two, without a ``Request`` and URL built per request, and with each label
    set's metric children looked up once (``labels()`` takes a lock and converts every
    value each call): together a measurable share of a short request's CPU. A config
    with extra labels, exemplars or ungrouped paths takes Litestar's own path.
    """

    def __init__(self, app: Any, config: PrometheusConfig) -> None:
        super().__init__(app, config)
        self._lean = (
            config.group_path
            and not config.labels
            and config.exemplars is None
            and not config.excluded_http_methods
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, dict[str, Any]]] = {}
        self._first_byte: dict[tuple[str, str, int], Any] = {}

    def _metrics_for(
        self, method: str, path: str, status: int
    ) -> tuple[Any, Any, Any, dict[str, Any]]:
        """(in progress, count, duration, labels) for one label set; the error counter's
        child is made only for an error, as Litestar does (no zero series per route)."""
        key = (method, path, status)
        children = self._children.get(key)
        if children is None:
            labels = {
                "method": method,
                "path": path,
                "status_code": status,
                "app_name": self._config.app_name,
            }
            values = [*labels.values()]
            children = (
                self.requests_in_progress(labels).labels(*values),
                self.request_count(labels).labels(*values),
                self.request_time(labels).labels(*values),
                labels,
            )
            if len(self._children) < 4096:  # paths are templates; statuses few
                self._children[key] = children
        return children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        token = _arrival.set(started)
        if not self._lean:
            try:
                await super().__call__(scope, receive, self._timed(scope, started, send))
            finally:
                _arrival.reset(token)
            return
        method = scope["method"] if scope["type"] == "http" else scope["type"]
        path = scope["path_template"]
        span = [200, 0.0, False]  # status, seconds to the last body message, first byte seen

        async def timed_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                span[1] = time.perf_counter() - started
                if not span[2] and (message.get("body") or not message.get("more_body", False)):
                    span[2] = True
                    self._observe_first_byte(method, path, span[0], span[1])
            elif kind == "http.response.start":
                span[0] = message["status"]
            await send(message)

        self._metrics_for(method, path, 200)[0].inc()
        try:
            await self.app(scope, receive, timed_send)
        finally:
            _arrival.reset(token)
            self._metrics_for(method, path, 200)[0].dec()
            status = span[0]
            _, count, duration, labels = self._metrics_for(method, path, status)
            if status >= 500:
                self.requests_error_count(labels).labels(*labels.values()).inc()
            count.inc()
            duration.observe(span[1])

    def _observe_first_byte(self, method: str, path: str, status: int, seconds: float) -> None:
        key = (method, path, status)
        child = self._first_byte.get(key)
        if child is None:
            child = FIRST_BYTE.labels(method=method, path=path, status_code=str(status))
            if len(self._first_byte) < 4096:
                self._first_byte[key] = child
        child.observe(seconds)

    def _timed(self, scope: Scope, started: float, send: Send) -> Send:
        first: dict[str, Any] = {}

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                first["status"] = message["status"]
            elif message["type"] == "http.response.body" and "at" not in first:
                if message.get("body") or not message.get("more_body", False):
                    first["at"] = time.perf_counter()
                    FIRST_BYTE.labels(
                        method=scope.get("method", ""),
                        path=scope.get("path_template", scope.get("path", "")),
                        status_code=str(first.get("status", 0)),
                    ).observe(first["at"] - started)
            await send(message)

        return timed_send


#: The model gauges: name, help, and how workers' figures combine (multiprocess mode).
MODEL_GAUGES = {
    "loaded": ("model_loaded", "1 when the model is loaded", "livemax"),
    "in_use": (
        "model_requests_in_use",
        "Holders of the model: requests, or a routing model that keeps it loaded",
        "livesum",
    ),
    "running": (
        "model_inference_running",
        "Inference calls computing on the model's worker",
        "livesum",
    ),
    "waiting": (
        "model_inference_waiting",
        "Inference calls queued on the model's worker (a full queue answers 429)",
        "livesum",
    ),
    "load_seconds": ("model_load_seconds", "How long the model's last load took", "livemax"),
}


def _model_figures(registry: ModelRegistry):
    """(gauge key, model id, value) for every model, read from the registry now."""
    for state in registry.states():
        yield "loaded", state.id, float(state.loaded)
        yield "in_use", state.id, state.in_use
        yield "running", state.id, state.running
        yield "waiting", state.id, state.waiting
        if state.load_seconds is not None:
            yield "load_seconds", state.id, state.load_seconds


class ModelStateCollector(Collector):
    """Reads the model registry when scraped, so the figures are never stale."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def collect(self):
        families = {
            key: GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=["model"])
            for key, (name, help_text, _) in MODEL_GAUGES.items()
        }
        for key, model, value in _model_figures(self.registry):
            families[key].add_metric([model], value)
        yield from families.values()


class _WorkerGauges:
    """Multiprocess mode: the gauges one worker writes its live figures to. Made only then
    (a single process reads its registry at scrape time instead), and not registered: the
    scrape reads every worker's files."""

    def __init__(self) -> None:
        self.models = {
            key: Gauge(
                f"{PREFIX}_{name}", help_text, ["model"], multiprocess_mode=mode, registry=None
            )
            for key, (name, help_text, mode) in MODEL_GAUGES.items()
        }
        self.ready = Gauge(
            f"{PREFIX}_worker_ready",
            "1 once this worker process has loaded its preloaded models (label pid)",
            multiprocess_mode="liveall",
            registry=None,
        )
        self.responses = Gauge(
            f"{PREFIX}_worker_responses",
            "Responses this worker process has sent since it started (label pid)",
            multiprocess_mode="liveall",
            registry=None,
        )


_worker_gauges: _WorkerGauges | None = None


class ModelStatePublisher(Collector):
    """Multiprocess mode: each collection writes this worker's live figures to the shared
    gauges and yields nothing itself (the scrape reads the gauges from every worker)."""

    def __init__(self, registry: ModelRegistry) -> None:
        global _worker_gauges
        self.registry = registry
        if _worker_gauges is None:
            _worker_gauges = _WorkerGauges()
        self.gauges = _worker_gauges

    def collect(self):
        for key, model, value in _model_figures(self.registry):
            self.gauges.models[key].labels(model=model).set(value)
        self.gauges.ready.set(float(self.registry.ready))
        self.gauges.responses.set(_responses_sent())
        return iter(())


def _responses_sent() -> float:
    """This process's count of responses: the first-byte histogram sees every one."""
    return sum(
        sample.value
        for metric in FIRST_BYTE.collect()
        for sample in metric.samples
        if sample.name.endswith("_count")
    )


def app_metrics(registry: ModelRegistry) -> CollectorRegistry:
    """The metrics that belong to one app (its models), apart from the process-wide ones."""
    collectors = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS:
        collectors.register(ModelStatePublisher(registry))
    else:
        collectors.register(ModelStateCollector(registry))
    return collectors


def publish(collectors: CollectorRegistry) -> None:
    """Multiprocess mode: write this worker's live figures where every worker's scrape
    reads them (a worker calls it about once a second)."""
    for _ in collectors.collect():
        pass


def _exposed() -> CollectorRegistry:
    if not MULTIPROCESS:
        return REGISTRY
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return merged


EXPOSED = _exposed()


class MetricsController(Controller):
    """Prometheus text exposition: the process-wide metrics, then this app's models."""

    path = "/metrics"
    include_in_schema = False

    @get()
    async def metrics(self, request: Request) -> Response:
        own = generate_latest(request.app.state["metrics"])  # first: publishes, in multiprocess
        body = generate_latest(EXPOSED) + own
        return Response(body, headers={"content-type": CONTENT_TYPE_LATEST})


def prometheus_config() -> PrometheusConfig:
    return PrometheusConfig(
        app_name=PREFIX,
        prefix=PREFIX,
        group_path=True,
        exclude=["/metrics"],
        middleware_class=StreamingPrometheusMiddleware,
    )
