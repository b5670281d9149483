"""Prometheus metrics, including the ones a streaming speech gateway is judged by.

Litestar's Prometheus plugin times whole requests. For a streamed reply the whole request
lasts as long as the audio does, so that figure says nothing about how soon a listener
hears something. This module adds, on the same ``/metrics`` page:

* ``time_to_first_byte_seconds`` for every route, from the middleware (no handler code);
* ``time_to_first_token_seconds`` and ``time_to_first_audio_seconds`` per endpoint and
  model, measured from the request's arrival where the services produce their streams
  (:func:`first_token`, :func:`first_audio`, :func:`observe_speech`);
* ``audio_seconds_total`` of audio heard and spoken, for capacity planning.

The request's arrival is carried in a context variable, which the streaming tasks that
serve the body inherit.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any, AsyncIterator

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.plugins.prometheus.middleware import PrometheusMiddleware
from litestar.types import Message, Receive, Scope, Send
from prometheus_client import Counter, Histogram

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


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False


def prometheus_config() -> PrometheusConfig:
    return PrometheusConfig(
        app_name=PREFIX,
        prefix=PREFIX,
        group_path=True,
        exclude=["/metrics"],
        middleware_class=StreamingPrometheusMiddleware,
    )
