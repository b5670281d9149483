"""Blocking model calls, run off the event loop with a bounded wait.

Inference libraries (onnxruntime, CTranslate2) block. Each engine gets a :class:`Worker`
that runs those calls on threads, at most ``concurrency`` at a time, and refuses new work
with :class:`EngineOverloaded` once ``max_queue`` calls are already waiting, so a burst of
requests turns into quick 429s instead of an unbounded backlog.

Iterators are advanced one item per worker call: two streaming requests on one engine
interleave sentence by sentence instead of the second waiting for the whole first.
"""

from __future__ import annotations

from typing import AsyncIterator, Callable, Iterator, TypeVar

import anyio
import anyio.to_thread

from .base import EngineOverloaded

T = TypeVar("T")

_EXHAUSTED = object()


class Worker:
    def __init__(self, name: str, concurrency: int = 1, max_queue: int = 16) -> None:
        self.name = name
        self.max_queue = max_queue
        self._limiter = anyio.CapacityLimiter(max(1, concurrency))
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> int:
        return int(self._limiter.borrowed_tokens)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        saturated = self._limiter.borrowed_tokens >= self._limiter.total_tokens
        if saturated and self._waiting >= self.max_queue:
            raise EngineOverloaded(
                f"model {self.name!r} has {self._waiting} requests waiting; retry shortly"
            )
        self._waiting += 1
        try:
            await self._limiter.acquire()
        finally:
            self._waiting -= 1
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        finally:
            self._limiter.release()

    async def iterate(self, make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
        """Create and drain a blocking iterator, one ``next`` per worker call."""
        iterator = await self.run(make_iterator)
        try:
            while True:
                item = await self.run(next, iterator, _EXHAUSTED)
                if item is _EXHAUSTED:
                    return
                yield item  # type: ignore[misc]
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
