"""Liveness (/health) and readiness (/ready: 503 until the preloaded models are loaded)."""

from __future__ import annotations

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency

from adapters.state import StateBackend, StateUnavailable
from engines.registry import ModelRegistry

from ... import policy
from ...errors import APIError
from ...processes import workers_not_ready


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    models: list[str]
    # The shared state backend (limits, audio ids): "memory", "redis", or
    # "redis unavailable: serving without limits" while Redis is down and failing open.
    state: str = "memory"


@get("/health", summary="Liveness", tags=["operations"])
async def health() -> Health:
    return Health(status="ok")


@get("/ready", summary="Readiness", tags=["operations"])
async def ready(registry: NamedDependency[ModelRegistry], request: Request) -> Readiness:
    if registry.load_error is not None:
        raise APIError(
            f"Model preload failed: {registry.load_error}",
            status_code=503,
            code="engine_unavailable",
        )
    if not registry.ready:
        raise APIError("Models are still loading.", status_code=503, code="not_ready")
    waiting = workers_not_ready()  # with several worker processes: every one of them
    if waiting:
        raise APIError(waiting, status_code=503, code="not_ready")
    state = await _state(request)
    return Readiness(
        status="ready",
        models=sorted({c.target for c in registry.cards() if c.loaded}),
        state=state,
    )


async def _state(request: Request) -> str:
    """A replica that cannot reach the shared state is not ready when it fails closed (a
    load balancer should send its traffic elsewhere); failing open, it says so."""
    backend: StateBackend = request.app.state["state_backend"]
    settings = request.app.state["settings"]
    try:
        await backend.ping()
    except StateUnavailable as exc:
        policy.STATE_UP.labels(backend=backend.name).set(0)
        if settings.state.on_redis_error != "open":
            raise APIError(
                f"The shared state backend is unavailable: {exc.message}",
                status_code=503,
                code="state_unavailable",
            ) from exc
        return f"{backend.name} unavailable: serving without limits"
    policy.STATE_UP.labels(backend=backend.name).set(1)
    return backend.name
