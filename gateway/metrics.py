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
"""

from __future__ import annotations

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
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engines.registry import ModelRegistry

PREFIX = "step_audio_gateway"

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
REALTIME_SESSIONS = Gauge(
    f"{PREFIX}_realtime_sessions_open", "Realtime WebSocket sessions currently open"
)
REALTIME_BARGE_INS = Counter(
    f"{PREFIX}_realtime_barge_ins", "Responses cancelled because the user spoke over them"
)

_arrival: ContextVar[float | None] = ContextVar("request_arrival", default=None)


def since_arrival() -> float | None:
    """Seconds since the current request arrived (None outside a request)."""
    started = _arrival.get()
    return None if started is None else time.perf_counter() - started


def _observe(histogram: Histogram, **labels: str) -> None:
    elapsed = since_arrival()
    if elapsed is not None:
        histogram.labels(**labels).observe(elapsed)


def count_audio(endpoint: str, direction: str, model: str, seconds: float) -> None:
    if seconds > 0:
        AUDIO_SECONDS.labels(endpoint=endpoint, direction=direction, model=model).inc(seconds)


def first_token(model: str) -> None:
    _observe(FIRST_TOKEN, model=model)


def first_audio(endpoint: str, model: str) -> None:
    _observe(FIRST_AUDIO, endpoint=endpoint, model=model)


async def observe_speech(model: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass encoded audio through, timing the first non-empty piece."""
    seen = False
    async for chunk in chunks:
        if not seen and chunk:
            seen = True
            first_audio("speech", model)
        yield chunk


class StreamingPrometheusMiddleware(PrometheusMiddleware):
    """Litestar's Prometheus middleware, plus the request's arrival time and its first byte."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        token = _arrival.set(started)
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

        try:
            await super().__call__(scope, receive, timed_send)
        finally:
            _arrival.reset(token)


class ModelStateCollector(Collector):
    """Reads the model registry when scraped, so the figures are never stale."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def collect(self):
        families = {
            "loaded": GaugeMetricFamily(
                f"{PREFIX}_model_loaded", "1 when the model is loaded", labels=["model"]
            ),
            "in_use": GaugeMetricFamily(
                f"{PREFIX}_model_requests_in_use",
                "Holders of the model: requests, or a routing model that keeps it loaded",
                labels=["model"],
            ),
            "running": GaugeMetricFamily(
                f"{PREFIX}_model_inference_running",
                "Inference calls computing on the model's worker",
                labels=["model"],
            ),
            "waiting": GaugeMetricFamily(
                f"{PREFIX}_model_inference_waiting",
                "Inference calls queued on the model's worker (a full queue answers 429)",
                labels=["model"],
            ),
            "load_seconds": GaugeMetricFamily(
                f"{PREFIX}_model_load_seconds",
                "How long the model's last load took",
                labels=["model"],
            ),
        }
        for state in self.registry.states():
            families["loaded"].add_metric([state.id], float(state.loaded))
            families["in_use"].add_metric([state.id], state.in_use)
            families["running"].add_metric([state.id], state.running)
            families["waiting"].add_metric([state.id], state.waiting)
            if state.load_seconds is not None:
                families["load_seconds"].add_metric([state.id], state.load_seconds)
        yield from families.values()


def app_metrics(registry: ModelRegistry) -> CollectorRegistry:
    """The metrics that belong to one app (its models), apart from the process-wide ones."""
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(ModelStateCollector(registry))
    return collectors


class MetricsController(Controller):
    """Prometheus text exposition: the process-wide metrics, then this app's models."""

    path = "/metrics"
    include_in_schema = False

    @get()
    async def metrics(self, request: Request) -> Response:
        body = generate_latest(REGISTRY) + generate_latest(request.app.state["metrics"])
        return Response(body, headers={"content-type": CONTENT_TYPE_LATEST})


def prometheus_config() -> PrometheusConfig:
    return PrometheusConfig(
        app_name=PREFIX,
        prefix=PREFIX,
        group_path=True,
        exclude=["/metrics"],
        middleware_class=StreamingPrometheusMiddleware,
    )
