"""Slots handed out least-served first: the request that has computed least goes next.

Served in arrival order, a chat question sent while a long spoken reply streams would
wait behind that reply's sentences and tokens at every step. Here each waiter names the
:class:`ServiceAccount` of its request (the compute seconds all of the request's calls
have used so far), and a freed slot goes to the waiter whose account is lowest, ties in
arrival order; a waiter with no account counts as a request that has used nothing.
Service is the wall time a call held a slot, what it kept everyone else from: a call
slowed down by other processes on the host counts in full.

A freed slot is handed out on the event loop's next pass, not at once. A stream calls
again the moment a call returns (its next token), within the same step of its task; had
the slot already gone to the only other waiter, two streams would alternate call by
call whatever their service, and a short answer would still take twice its time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator


class ServiceAccount:
    """Compute seconds one request has used so far, shared by all of its tasks."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0


class _Waiter:
    __slots__ = ("account", "arrival", "granted")

    def __init__(self, account: ServiceAccount | None, arrival: int) -> None:
        self.account = account
        self.arrival = arrival
        self.granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def rank(self) -> tuple[float, int]:
        # Read when the slot is handed out: the request's other calls may have computed
        # since this one began to wait.
        served = self.account.seconds if self.account is not None else 0.0
        return served, self.arrival


class LeastServedFirst:
    """At most ``slots`` holders at once; waiters get freed slots least-served first.

    A semaphore, not a lock: the task that releases a slot need not be the one that took
    it (an engine's turn may be taken by the task that answers a request and given back
    by the task that streams it).
    """

    def __init__(self, slots: int = 1) -> None:
        self.slots = max(1, slots)
        self._holders = 0
        self._waiters: list[_Waiter] = []
        self._arrivals = itertools.count()
        self._handout_due = False

    @property
    def busy(self) -> int:
        return self._holders

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def would_wait(self) -> bool:
        return self._holders >= self.slots or bool(self._waiters)

    async def acquire(self, account: ServiceAccount | None = None) -> None:
        if not self.would_wait():
            self._holders += 1
            return
        waiter = _Waiter(account, next(self._arrivals))
        self._waiters.append(waiter)
        self._schedule_handout()
        try:
            await waiter.granted
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.granted.done() and not waiter.granted.cancelled():
                self.release()  # granted as it was cancelled: the slot goes to the next
            raise

    def release(self) -> None:
        if self._holders <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._holders -= 1
        self._schedule_handout()

    @asynccontextmanager
    async def serve(self, account: ServiceAccount | None = None) -> AsyncIterator[None]:
        """Hold a slot for the block, and add the seconds it was held to ``account``."""
        await self.acquire(account)
        started = time.perf_counter()
        try:
            yield
        finally:
            if account is not None:
                account.seconds += time.perf_counter() - started
            self.release()

    def _schedule_handout(self) -> None:
        if self._handout_due or not self._waiters or self._holders >= self.slots:
            return
        self._handout_due = True
        self._waiters[0].granted.get_loop().call_soon(self._hand_out)

    def _hand_out(self) -> None:
        self._handout_due = False
        while self._waiters and self._holders < self.slots:
            waiter = min(self._waiters, key=_Waiter.rank)
            self._waiters.remove(waiter)
            if waiter.granted.done():  # cancelled, not yet out of the list
                continue
            self._holders += 1
            waiter.granted.set_result(None)
