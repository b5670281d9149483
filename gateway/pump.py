"""One producer task, one consumer that wakes the moment there is something for it.

Every stream that must not make its source wait on its reader is this: an SSE body
(gateway.sse: a listener that stops reading must not hold the chat model's turn), a
spoken reply (gateway.api.chat.voice: the model's next token must not wait for audio to
be sent, nor audio for the next token), a realtime session's server events (its socket
writer). The producer task puts items; the consumer takes everything pending at once
(one wake-up per batch, not per item) and waits on one bare future in between, which is
all an item costs on the way.

``budget`` bounds the bytes put and not yet taken: past it :meth:`Pump.put` answers
False, and the producer stops (the reader is taken to have stopped reading, and its
source is freed at once).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable, Generic, TypeVar

import anyio

from .streaming import spawn

T = TypeVar("T")


class Pump(Generic[T]):
    __slots__ = ("items", "unread", "budget", "done", "failure", "_waiter", "_task")

    def __init__(self, budget: int | None = None) -> None:
        self.items: deque[T] = deque()
        self.unread = 0  # bytes put and not yet taken (as the producer sized them)
        self.budget = budget
        self.done = False  # the producer has ended (see failure)
        self.failure: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ producer side

    def start(self, produce: Callable[[], Awaitable[None]]) -> None:
        """Run ``produce`` (which calls :meth:`put`) as a task of the request; its
        exception is raised by the consumer, and its end ends the pump."""

        async def run() -> None:
            try:
                await produce()
            except Exception as exc:  # noqa: BLE001 - raised by the consumer instead
                self.failure = exc
            finally:
                self.done = True
                self.wake()

        self._task = spawn(run())

    def put(self, item: T, size: int = 0) -> bool:
        """Queue ``item``; False once more than ``budget`` bytes wait unread."""
        self.items.append(item)
        self.unread += size
        self.wake()
        return self.budget is None or self.unread <= self.budget

    def wake(self) -> None:
        """Wake the consumer (also for what it takes from elsewhere: a reply's audio)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ consumer side

    @property
    def waiting(self) -> bool:
        """The consumer is waiting (not busy sending what it took)."""
        return self._waiter is not None and not self._waiter.done()

    def take(self) -> deque[T]:
        """Everything pending, oldest first."""
        items, self.items = self.items, deque()
        self.unread = 0
        return items

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def wait(self) -> None:
        """Return once woken: an item, the producer's end, or :meth:`wake`."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def stop(self) -> None:
        """The consumer is done: the producer is cancelled, and waited for."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
