"""Engine workers: a full queue refuses new requests, never one already admitted or streaming."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engines.base import EngineOverloaded
from engines.compute import LeastServedFirst
from engines.workers import Worker, close_admission, commit_admission, open_admission


async def _fill(worker: Worker, release: threading.Event) -> list[asyncio.Task]:
    """One call computing (until ``release``) and one waiting: a queue of 1 is full."""
    tasks = [asyncio.create_task(worker.run(release.wait, 30)) for _ in range(2)]
    while not (worker.busy == 1 and worker.waiting == 1):
        await asyncio.sleep(0.01)
    return tasks


async def _as_request(body) -> object:
    """Run ``body`` as the gateway runs a request: in its own task, with its own admission."""

    async def request():
        token = open_admission()
        try:
            return await body()
        finally:
            close_admission(token)

    return await asyncio.create_task(request())


async def test_a_full_queue_refuses_a_new_request_but_not_the_next_call_of_an_admitted_one():
    worker = Worker("w", concurrency=1, max_queue=1)
    blocker = threading.Event()
    step = asyncio.Event()

    async def streaming_request():
        await worker.run(lambda: "first")  # admitted while the queue was empty
        await step.wait()  # meanwhile others fill the queue
        return await worker.run(lambda: "second")

    streaming = asyncio.create_task(_as_request(streaming_request))
    await asyncio.sleep(0.05)
    fillers = await _fill(worker, blocker)

    async def newcomer():
        return await worker.run(lambda: "late")

    with pytest.raises(EngineOverloaded):
        await _as_request(newcomer)
    step.set()
    await asyncio.sleep(0.05)
    assert not streaming.done()  # waiting its turn, not refused
    blocker.set()
    assert await streaming == "second"
    await asyncio.gather(*fillers)


async def test_after_its_response_starts_a_request_is_refused_by_no_worker():
    speech, chat = Worker("speech", max_queue=1), Worker("chat", max_queue=1)
    blocker = threading.Event()
    fillers = await _fill(speech, blocker)

    async def spoken_chat():
        await chat.run(lambda: "token")
        commit_admission()  # the 200 and the first chunk are out
        return await speech.run(lambda: "audio")  # first call to this full worker

    reply = asyncio.create_task(_as_request(spoken_chat))
    await asyncio.sleep(0.05)
    assert not reply.done()
    blocker.set()
    assert await reply == "audio"
    await asyncio.gather(*fillers)


async def test_without_an_admission_record_every_call_is_checked():
    worker = Worker("w", max_queue=1)
    blocker = threading.Event()
    fillers = await _fill(worker, blocker)
    with pytest.raises(EngineOverloaded):
        await worker.run(lambda: None)
    blocker.set()
    await asyncio.gather(*fillers)


async def test_a_stream_gets_its_first_item_after_one_turn_of_a_busy_engine_not_two():
    """A spoken chat reply's first sentence waited for two of the LLM's tokens: creating
    the sentence iterator took a compute turn of its own, and the LLM, which always has
    its next token queued, took the turn in between. Iterator and first item now share
    one turn, so the sentence waits only for the token being computed. (Workers with
    sleeping calls stand in for the engines: the limiter's order is what is tested.)"""
    compute = LeastServedFirst(1)
    llm, speech = Worker("llm", compute=compute), Worker("speech", compute=compute)
    tokens = 0
    stop = False

    async def generate():
        nonlocal tokens
        while not stop:
            await llm.run(time.sleep, 0.02)
            tokens += 1

    # Two generators: whenever a turn ends, another token is already asking for the next.
    generators = [asyncio.create_task(generate()) for _ in range(2)]
    while tokens < 2:
        await asyncio.sleep(0.005)

    def sentences():
        yield "first sentence"

    before = tokens
    stream = speech.iterate(sentences)
    assert await stream.__anext__() == "first sentence"
    waited = tokens - before
    await stream.aclose()
    stop = True
    await asyncio.gather(*generators)
    assert waited <= 1, waited  # the token being computed when the stream asked


async def test_a_new_requests_calls_go_before_those_of_a_request_that_has_computed_longer():
    """A chat question sent while a long spoken reply streams: its tokens go before the
    reply's next sentence, which was waiting first, because the reply's earlier calls
    are on its request's account. (Workers with blocking calls stand in for the engines.)"""
    compute = LeastServedFirst(1)
    llm, speech, other = (Worker(name, compute=compute) for name in ("llm", "speech", "other"))
    blocker, computed, next_sentence = threading.Event(), asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def long_reply():
        await llm.run(time.sleep, 0.3)  # what it has computed so far
        computed.set()
        await next_sentence.wait()
        await speech.run(order.append, "reply sentence")

    async def question():
        for token in range(3):
            await llm.run(order.append, f"token {token}")

    reply = asyncio.create_task(_as_request(long_reply))
    await computed.wait()
    holding = asyncio.create_task(other.run(blocker.wait, 30))  # compute is busy
    while not compute.busy:
        await asyncio.sleep(0.01)
    next_sentence.set()
    while compute.waiting < 1:
        await asyncio.sleep(0.01)
    asked = asyncio.create_task(_as_request(question))
    while compute.waiting < 2:
        await asyncio.sleep(0.01)
    blocker.set()
    await asyncio.gather(holding, asked, reply)
    assert order == ["token 0", "token 1", "token 2", "reply sentence"]
