"""Liveness (/health) and readiness (/ready: 503 until the preloaded models are loaded)."""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.di import NamedDependency

from engines.registry import ModelRegistry

from ...errors import APIError


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    models: list[str]


@get("/health", summary="Liveness", tags=["operations"])
async def health() -> Health:
    return Health(status="ok")


@get("/ready", summary="Readiness", tags=["operations"])
async def ready(registry: NamedDependency[ModelRegistry]) -> Readiness:
    if registry.load_error is not None:
        raise APIError(
            f"Model preload failed: {registry.load_error}",
            status_code=503,
            code="engine_unavailable",
        )
    if not registry.ready:
        raise APIError("Models are still loading.", status_code=503, code="not_ready")
    return Readiness(
        status="ready", models=sorted({c.target for c in registry.cards() if c.loaded})
    )
