"""The compute slots: a freed slot goes to the request that has computed least so far."""

from __future__ import annotations

import asyncio

import pytest

from engines.compute import LeastServedFirst, ServiceAccount


def account(seconds: float) -> ServiceAccount:
    served = ServiceAccount()
    served.seconds = seconds
    return served


async def _queue(slots: LeastServedFirst, order: list[str], waiters: dict) -> list[asyncio.Task]:
    """Start one task per ``waiters`` entry (name -> account), in that order, each
    waiting for a slot, noting its name in ``order`` once it has one and giving it back."""

    async def take(name: str, served: ServiceAccount | None) -> None:
        await slots.acquire(served)
        order.append(name)
        slots.release()

    tasks = []
    for name, served in waiters.items():
        tasks.append(asyncio.create_task(take(name, served)))
        await asyncio.sleep(0)  # queued in this order
    assert slots.waiting == len(waiters)
    return tasks


async def test_a_free_slot_is_taken_at_once():
    slots = LeastServedFirst(2)
    await slots.acquire()
    await slots.acquire(account(3.0))
    assert slots.busy == 2 and slots.waiting == 0
    assert slots.would_wait()


async def test_waiters_go_least_served_first_and_equals_in_arrival_order():
    slots = LeastServedFirst(1)
    await slots.acquire()
    order: list[str] = []
    tasks = await _queue(
        slots,
        order,
        {
            "long reply": account(5.0),
            "second turn": account(1.0),
            "no request": None,  # a call outside any request counts as a new one
            "other second turn": account(1.0),
            "new question": account(0.0),
        },
    )
    slots.release()
    await asyncio.gather(*tasks)
    assert order == ["no request", "new question", "second turn", "other second turn", "long reply"]


async def test_service_is_read_when_the_slot_is_handed_out_not_when_the_wait_began():
    slots = LeastServedFirst(1)
    await slots.acquire()
    order: list[str] = []
    reply = account(0.0)
    tasks = await _queue(slots, order, {"reply": reply, "question": account(0.5)})
    reply.seconds = 2.0  # another of the reply's calls computed meanwhile
    slots.release()
    await asyncio.gather(*tasks)
    assert order == ["question", "reply"]


async def test_a_stream_asking_again_as_it_releases_keeps_the_slot_while_it_is_least_served():
    """The next token of a new answer, asked for in the same step as the last one was
    given back, goes before a long reply's sentence that was already waiting."""
    slots = LeastServedFirst(1)
    order: list[str] = []
    question = account(0.0)
    await slots.acquire(question)
    (reply,) = await _queue(slots, order, {"reply sentence": account(5.0)})
    for token in range(3):
        slots.release()
        await slots.acquire(question)
        order.append(f"token {token}")
    slots.release()
    await reply
    assert order == ["token 0", "token 1", "token 2", "reply sentence"]


async def test_a_waiter_cancelled_before_its_turn_takes_no_slot():
    slots = LeastServedFirst(1)
    await slots.acquire()
    order: list[str] = []
    gone, stays = await _queue(slots, order, {"gone": None, "stays": account(1.0)})
    gone.cancel()
    slots.release()
    await stays
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert order == ["stays"] and slots.busy == 0 and slots.waiting == 0


async def test_a_waiter_cancelled_once_granted_passes_the_slot_on():
    slots = LeastServedFirst(1)
    await slots.acquire()
    order: list[str] = []
    granted, nxt = await _queue(slots, order, {"granted": None, "next": account(1.0)})
    slots.release()
    await asyncio.sleep(0)  # the slot is handed to "granted", which has not run yet
    assert slots.busy == 1 and slots.waiting == 1
    granted.cancel()
    await nxt
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert order == ["next"] and slots.busy == 0


async def test_serving_adds_the_seconds_held_to_the_account():
    slots = LeastServedFirst(1)
    served = account(1.0)
    async with slots.serve(served):
        assert slots.busy == 1
        await asyncio.sleep(0.05)
    assert served.seconds >= 1.05
    assert slots.busy == 0
    async with slots.serve(None):  # nothing to charge, and nothing fails
        pass


async def test_releasing_more_than_was_taken_is_an_error():
    with pytest.raises(RuntimeError):
        LeastServedFirst(1).release()
