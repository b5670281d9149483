"""The state backends, in-memory and Redis (a real redis-server the suite starts), held to
the same contract: atomic admission, whole-or-nothing and partial charges, refunds, audio
ids and stored responses with a TTL and an owner, transcripts and cloned voices' metadata."""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters.chat.transcripts import Transcript
from adapters.state import Limits, MemoryBackend, StateUnavailable
from adapters.state.base import AUDIO_IN, AUDIO_OUT, REQUESTS, STREAMS
from adapters.state.redis_backend import RedisBackend
from tests.redis_server import RedisServer, avoid_minute_edge


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def make_backend(request, redis_server):
    """A factory: for Redis each call is another client (another replica) on one server,
    under a prefix of this test's own."""
    avoid_minute_edge(5)
    made = []
    prefix = f"t{time.monotonic_ns()}"
    memory = MemoryBackend()

    def make():
        backend = (
            memory if request.param == "memory" else RedisBackend(redis_server.url, prefix=prefix)
        )
        made.append(backend)
        return backend

    make.made = made
    return make


def run(coro, make=None):
    """Run a scenario on its own loop, closing the clients it made on that loop."""

    async def scenario():
        try:
            return await coro
        finally:
            for backend in getattr(make, "made", []):
                await backend.close()

    return asyncio.run(scenario())


def test_admission_never_exceeds_the_limit_under_200_concurrent_requests(make_backend):
    async def scenario():
        replicas = [make_backend(), make_backend()]
        limits = Limits(requests=57)
        results = await asyncio.gather(
            *(replicas[i % 2].admit("key_a", limits) for i in range(200))
        )
        return [r for r in results if r.refused is None], results

    admitted, results = run(scenario(), make_backend)
    assert len(admitted) == 57
    assert {r.refused for r in results if r.refused} == {REQUESTS}
    assert max(r.used[REQUESTS] for r in results) == 57


def test_concurrent_streams_are_freed_on_release_and_refunds_give_the_request_back(make_backend):
    async def scenario():
        backend = make_backend()
        limits = Limits(requests=3, streams=1)
        first = await backend.admit("key_s", limits)
        second = await backend.admit("key_s", limits)  # the one stream is open
        await backend.release("key_s", first, refund=True)  # refused before any work
        admitted = []
        for _ in range(4):
            admission = await backend.admit("key_s", limits)
            admitted.append(admission)
            if admission.refused is None:
                await backend.release("key_s", admission, refund=False)
        return first, second, admitted

    first, second, admitted = run(scenario(), make_backend)
    assert first.refused is None
    assert second.refused == STREAMS
    # The refunded request left all three of the minute's requests to the next four.
    assert [a.refused for a in admitted] == [None, None, None, REQUESTS]
    assert [a.used[REQUESTS] for a in admitted] == [1, 2, 3, 3]


def test_charges_are_whole_or_nothing_or_partial(make_backend):
    async def scenario():
        backend = make_backend()
        admission = await backend.admit("key_c", Limits(audio_in_ms=3000, audio_out_ms=2000))
        w = admission.window
        too_big = await backend.charge("key_c", w, AUDIO_IN, 5000, 3000, partial=False)
        fits = await backend.charge("key_c", w, AUDIO_IN, 2000, 3000, partial=False)
        out_1 = await backend.charge("key_c", w, AUDIO_OUT, 1500, 2000, partial=True)
        out_2 = await backend.charge("key_c", w, AUDIO_OUT, 1500, 2000, partial=True)
        after = await backend.admit("key_c", Limits(audio_out_ms=2000))
        return too_big, fits, out_1, out_2, after

    too_big, fits, out_1, out_2, after = run(scenario(), make_backend)
    assert (too_big.ok, too_big.used) == (False, 0)  # nothing charged for refused work
    assert (fits.ok, fits.used) == (True, 2000)
    assert (out_1.ok, out_1.used) == (True, 1500)
    assert (out_2.ok, out_2.used) == (False, 2000)  # charged up to the limit, then cut
    assert after.refused == AUDIO_OUT


def test_audio_ids_are_shared_expire_and_belong_to_their_owner(make_backend):
    async def scenario():
        one, other = make_backend(), make_backend()
        await one.audio_store.put("audio_1", "hello", 60, owner="key_a")
        await one.audio_store.put("audio_2", "soon gone", 1, owner="key_a")
        seen = await other.audio_store.get("audio_1", owner="key_a")
        stranger = await other.audio_store.get("audio_1", owner="key_b")
        await asyncio.sleep(2.1)
        expired = await other.audio_store.get("audio_2", owner="key_a")
        return seen, stranger, expired

    seen, stranger, expired = run(scenario(), make_backend)
    assert seen is not None and seen.transcript == "hello" and seen.owner == "key_a"
    assert stranger is None
    assert expired is None


def test_stored_responses_are_shared_expire_and_belong_to_their_owner(make_backend):
    async def scenario():
        one, other = make_backend(), make_backend()
        await one.responses.put("resp_1", b'{"kept": 1}', 60, owner="key_a")
        await one.responses.put("resp_2", b'{"kept": 2}', 1, owner="key_a")
        seen = await other.responses.get("resp_1", owner="key_a")
        stranger = await other.responses.get("resp_1", owner="key_b")
        stranger_deleted = await other.responses.delete("resp_1", owner="key_b")
        await asyncio.sleep(2.1)
        expired = await other.responses.get("resp_2", owner="key_a")
        deleted = await other.responses.delete("resp_1", owner="key_a")
        gone = await one.responses.get("resp_1", owner="key_a")
        return seen, stranger, stranger_deleted, expired, deleted, gone

    seen, stranger, stranger_deleted, expired, deleted, gone = run(scenario(), make_backend)
    assert seen is not None and seen.record == b'{"kept": 1}' and seen.owner == "key_a"
    assert stranger is None and stranger_deleted is False
    assert expired is None
    assert deleted is True and gone is None


def test_transcripts_and_cloned_voices_are_shared(make_backend):
    async def scenario():
        one, other = make_backend(), make_backend()
        await one.transcripts.put("m:abc", Transcript(text="hi there", seconds=1.5))
        await one.voices.put("clone-1", "key_a", "narrator")
        got = await other.transcripts.get("m:abc")
        voices = await other.voices.all()
        await other.voices.delete("clone-1")
        return got, voices, await one.voices.all()

    got, voices, after = run(scenario(), make_backend)
    assert got == Transcript(text="hi there", seconds=1.5)
    assert voices == {"clone-1": ("key_a", "narrator")}
    assert after == {}


def test_an_unreachable_redis_raises_state_unavailable_quickly():
    from tests.conftest import free_port

    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.3)

    async def scenario():
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            await backend.admit("key_x", Limits(requests=1))
        with pytest.raises(StateUnavailable):
            await backend.audio_store.get("audio_1", owner="key_x")
        assert await backend.transcripts.get("m:x") is None  # a cache miss, not an error
        await backend.close()
        return time.monotonic() - started

    assert run(scenario()) < 5


def test_cloned_voices_recorded_on_one_replica_are_known_to_another(make_backend):
    from adapters.voice_owners import VoiceOwners

    async def scenario():
        one, other = VoiceOwners(make_backend().voices), VoiceOwners(make_backend().voices)
        engine_id = await one.record("key_a", "narrator")
        before = other.engine_voice("key_a", "narrator")
        await other.refresh()
        return engine_id, before, other

    engine_id, before, other = run(scenario(), make_backend)
    assert before == "narrator"  # not yet refreshed: a plain (unknown) voice name
    assert other.engine_voice("key_a", "narrator") == engine_id
    assert other.public_name("key_a", engine_id) == "narrator"
    assert other.public_name("key_b", engine_id) is None  # another key's clone stays hidden
    assert other.engine_voice("key_b", "narrator") == "narrator"
