"""Blocking model calls, run off the event loop with a bounded wait.

Inference libraries (onnxruntime, CTranslate2) block. Each engine gets a :class:`Worker`
that runs those calls on threads, at most ``concurrency`` at a time, and refuses a new
request with :class:`EngineOverloaded` once ``max_queue`` calls are already waiting, so a
burst of requests turns into quick 429s instead of an unbounded backlog; a request it has
admitted is never refused for its later calls.

Iterators are advanced one item per worker call: two streaming requests on one engine
interleave sentence by sentence instead of the second waiting for the whole first.

All workers of a process also share one ``compute`` limiter. Inference libraries size
their thread pools to the whole machine and spin while waiting; two of them computing at
once on a 2-core host (the chat LLM and the TTS voicing its reply) slowed each token by
two orders of magnitude. Taking turns at the granularity of a token or a sentence keeps
both streams moving at full speed.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from typing import AsyncIterator, Callable, Iterator, TypeVar

import anyio

from .base import EngineOverloaded

T = TypeVar("T")

_EXHAUSTED = object()


class Admission:
    """What one request has been let into, shared by every task the request starts.

    The queue limit decides whether a request gets in, once per worker: a stream makes a
    worker call per sentence or token, and one already playing must wait its turn for the
    next, never be cut off by a 429 because newcomers filled the queue in between. Once
    its response has started (:func:`commit_admission`), nothing the request asks of any
    worker is refused, so a spoken reply's speech engine cannot fail a chat stream that is
    already under way either.
    """

    __slots__ = ("workers", "committed")

    def __init__(self) -> None:
        self.workers: set[Worker] = set()
        self.committed = False


_admission: contextvars.ContextVar[Admission | None] = contextvars.ContextVar(
    "admission", default=None
)


def open_admission() -> contextvars.Token:
    """Give the current request (task) a fresh admission record; reset with the token."""
    return _admission.set(Admission())


def close_admission(token: contextvars.Token) -> None:
    _admission.reset(token)


def commit_admission() -> None:
    """The current request's response has started: refuse it nothing from now on."""
    admission = _admission.get()
    if admission is not None:
        admission.committed = True


async def _uninterrupted(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn`` on a thread and, even if the caller is cancelled, return only once the
    thread is done.

    A thread cannot be stopped. Were the caller to move on (release the engine's lock,
    close a generator the thread is inside), the next request would touch model state the
    abandoned thread is still using: "generator already executing" at best, a segfault in
    llama.cpp at worst. So a cancellation is held until the call ends, then re-raised.
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    future = loop.run_in_executor(None, functools.partial(context.run, fn, *args))
    cancelled = False
    with anyio.CancelScope(shield=True):
        while True:
            try:
                result = await asyncio.shield(future)
                break
            except asyncio.CancelledError:
                if future.cancelled():
                    raise
                cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


class Worker:
    def __init__(
        self,
        name: str,
        concurrency: int = 1,
        max_queue: int = 16,
        compute: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.name = name
        self.max_queue = max_queue
        self._limiter = anyio.CapacityLimiter(max(1, concurrency))
        self._compute = compute
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> int:
        return int(self._limiter.borrowed_tokens)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        admission = _admission.get()
        if admission is None or not (admission.committed or self in admission.workers):
            saturated = self._limiter.borrowed_tokens >= self._limiter.total_tokens
            if saturated and self._waiting >= self.max_queue:
                raise EngineOverloaded(
                    f"model {self.name!r} has {self._waiting} requests waiting; retry shortly"
                )
            if admission is not None:
                admission.workers.add(self)
        try:
            self._limiter.acquire_nowait()  # only a call that must wait counts as waiting
        except anyio.WouldBlock:
            self._waiting += 1
            try:
                await self._limiter.acquire()
            finally:
                self._waiting -= 1
        try:
            if self._compute is None:
                return await _uninterrupted(fn, *args)
            async with self._compute:
                return await _uninterrupted(fn, *args)
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
