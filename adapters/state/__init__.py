"""Shared state for gateway replicas: see :mod:`adapters.state.base`."""

from .base import KeyAdmission, Charge, Limits, StateBackend, StateUnavailable, VoiceRecords
from .memory import MemoryBackend


def create_backend(
    kind: str, *, redis_url: str = "", prefix: str = "sag", timeout_seconds: float = 0.5
) -> StateBackend:
    if kind == "memory":
        return MemoryBackend()
    if kind == "redis":
        from .redis_backend import RedisBackend  # only deployments with Redis import the client

        return RedisBackend(redis_url, prefix=prefix, timeout_seconds=timeout_seconds)
    raise ValueError(f"state.backend must be 'memory' or 'redis', not {kind!r}")


__all__ = [
    "KeyAdmission",
    "Charge",
    "Limits",
    "MemoryBackend",
    "StateBackend",
    "StateUnavailable",
    "VoiceRecords",
    "create_backend",
]
