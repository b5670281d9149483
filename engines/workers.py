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

Every wait, for an engine's turn and for the compute limiter, is served least-served
first (:mod:`engines.compute`): each request's compute seconds add up on its admission
record, so a new request's calls go before those of one that has been computing for a
while, and a chat question sent while a long spoken reply streams is not answered at
the reply's pace.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from typing import AsyncIterator, Callable, Iterator, TypeVar

import anyio

from .base import EngineOverloaded
from .compute import LeastServedFirst, ServiceAccount

T = TypeVar("T")

_EXHAUSTED = object()


class QueueAdmission:
    """What one request has been let into, shared by every task the request starts.

    A queue limit decides whether a request gets in, once per :class:`Gate`: a stream makes
    a worker call per sentence or token, and one already playing must wait its turn for the
    next, never be cut off by a 429 because newcomers filled the queue in between. Once
    its response has started (:func:`commit_admission`), nothing the request asks of any
    gate is refused, so a spoken reply's speech engine cannot fail a chat stream that is
    already under way either.

    ``service`` adds up the compute seconds of all the request's calls: where several
    calls wait, the one whose request has used the least goes first.
    """

    __slots__ = ("gates", "committed", "service")

    def __init__(self) -> None:
        self.gates: set[Gate] = set()
        self.committed = False
        self.service = ServiceAccount()


_admission: contextvars.ContextVar[QueueAdmission | None] = contextvars.ContextVar(
    "admission", default=None
)


def open_admission() -> contextvars.Token:
    """Give the current request (task) a fresh admission record; reset with the token."""
    return _admission.set(QueueAdmission())


def close_admission(token: contextvars.Token) -> None:
    _admission.reset(token)


def _service() -> ServiceAccount | None:
    """The current request's compute account; None outside any request (counts as new)."""
    admission = _admission.get()
    return admission.service if admission is not None else None


def commit_admission() -> None:
    """The current request's response has started: refuse it nothing from now on."""
    admission = _admission.get()
    if admission is not None:
        admission.committed = True


async def _uninterrupted(
    fn: Callable[..., T], *args: object, interrupt: Callable[[], None] | None = None
) -> T:
    """Run ``fn`` on a thread and, even if the caller is cancelled, return only once the
    thread is done.

    A thread cannot be stopped. Were the caller to move on (release the engine's lock,
    close a generator the thread is inside), the next request would touch model state the
    abandoned thread is still using: "generator already executing" at best, a segfault in
    llama.cpp at worst. So a cancellation is held until the call ends, then re-raised.
    A runtime that can abandon its work asks for it with ``interrupt``, called once at the
    cancellation (ONNX Runtime's terminate flag): the call then ends within a layer or so
    rather than when its work is done.
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
                if interrupt is not None and not cancelled:
                    interrupt()
                cancelled = True
            except Exception:
                if not cancelled:
                    raise
                break  # the interrupted work's own error: the caller was cancelled
    if cancelled:
        raise asyncio.CancelledError
    return result


class Gate:
    """At most ``slots`` holders at once and at most ``max_queue`` waiting for a turn.

    The one place that admits or refuses (:class:`EngineOverloaded`, a 429): worker calls
    go through one, and so do engines whose turns span many calls (the llama engine's
    generations, one per context). Turns go least-served first (:mod:`engines.compute`),
    and may be taken by the task that answers a request and given back by the task that
    streams it.
    """

    def __init__(self, name: str, slots: int = 1, max_queue: int = 16) -> None:
        self.name = name
        self.max_queue = max_queue
        self._slots = LeastServedFirst(slots)

    @property
    def slots(self) -> int:
        return self._slots.slots

    @property
    def busy(self) -> int:
        return self._slots.busy

    @property
    def waiting(self) -> int:
        return self._slots.waiting

    @property
    def idle(self) -> bool:
        """Whether a turn would be granted at once."""
        return not self._slots.would_wait()

    async def acquire(self) -> None:
        admission = _admission.get()
        if admission is None or not (admission.committed or self in admission.gates):
            if self._slots.would_wait() and self._slots.waiting >= self.max_queue:
                raise EngineOverloaded(
                    f"model {self.name!r} has {self._slots.waiting} requests waiting;"
                    " retry shortly"
                )
            if admission is not None:
                admission.gates.add(self)
        await self._slots.acquire(_service())

    def release(self) -> None:
        self._slots.release()


class Worker:
    def __init__(
        self,
        name: str,
        concurrency: int = 1,
        max_queue: int = 16,
        compute: LeastServedFirst | None = None,
    ) -> None:
        self.name = name
        self.max_queue = max_queue
        self._gate = Gate(name, concurrency, max_queue)
        self._compute = compute

    @property
    def waiting(self) -> int:
        return self._gate.waiting

    @property
    def busy(self) -> int:
        return self._gate.busy

    async def run(
        self, fn: Callable[..., T], *args: object, interrupt: Callable[[], None] | None = None
    ) -> T:
        """``fn(*args)`` on a thread, in turn (``interrupt``: see :func:`_uninterrupted`)."""
        await self._gate.acquire()
        try:
            if self._compute is None:
                return await _uninterrupted(fn, *args, interrupt=interrupt)
            async with self._compute.serve(_service()):
                return await _uninterrupted(fn, *args, interrupt=interrupt)
        finally:
            self._gate.release()

    async def iterate(
        self,
        make_iterator: Callable[[], Iterator[T]],
        interrupt: Callable[[], None] | None = None,
    ) -> AsyncIterator[T]:
        """Create and drain a blocking iterator, one ``next`` per worker call.

        The iterator is created in the same call that computes its first item: one turn
        of the shared ``compute`` limiter, not two. Between two turns another engine
        takes one (the chat LLM voicing its reply computes a token), so a separate call
        to create the iterator delayed a spoken reply's first sentence by a token.
        """
        made: list[Iterator[T]] = []

        def start() -> object:
            made.append(make_iterator())
            return next(made[0], _EXHAUSTED)

        try:
            item = await self.run(start, interrupt=interrupt)
            while item is not _EXHAUSTED:
                yield item  # type: ignore[misc]
                item = await self.run(next, made[0], _EXHAUSTED, interrupt=interrupt)
        finally:
            # A cancelled call returns only once its thread is done (_uninterrupted), so
            # the iterator is never closed while a thread is still inside it.
            close = getattr(made[0], "close", None) if made else None
            if close is not None:
                close()
