"""The vLLM transport (``engines.step_audio.vllm``) against FAKE vLLM servers.

vLLM and the 130B Step-Audio-Chat model cannot run in this test tier, so every replica
here is a fake: :class:`FakeVLLM`, a small real HTTP/1.1 server on 127.0.0.1 (raw
``asyncio.start_server``, in the test's own event loop) that implements ``GET /health``
and a streaming ``POST /v1/completions`` in vLLM's SSE format. Its behaviour is set per
test: tokens with delays, 500/429/400 before the first byte, a connection dropped
mid-stream, an error event inside the stream, and it records every request body and the
moment a client disconnects. A refused connection is a port nothing listens on.

What a fake cannot show (real vLLM aborting generation on disconnect, its exact error
texts) is taken from vLLM's documented behaviour, not tested here.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from contextlib import aclosing, asynccontextmanager

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engines.base import EngineError, EngineUnavailable, InvalidInput
from engines.chat import ContextOverflow
from engines.step_audio.vllm import CompletionPiece, VLLMReplicaPool
from tests.cuts import cut

pytestmark = pytest.mark.timeout(30)

TOKENS = ["Hello", ",", " world", "!", " Bye", "."]


def closed_port_url() -> str:
    """A URL whose port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: object) -> bytes:
    return _chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


def _completion_chunk(request: dict, text: str, finish_reason: str | None) -> dict:
    """One chunk the way vLLM streams ``/v1/completions``."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": request["model"],
        "choices": [choice],
    }


def step_audio_settings(urls: list[str], model_dir, **environ: str):
    """The Step-Audio deployment's settings aimed at fake vLLM replicas: an empty model
    folder and nothing preloaded, so only the chat model (the part served over HTTP) is
    reached. ``environ`` adds GATEWAY__* overrides."""
    from gateway.settings import load_settings

    settings = load_settings(
        "config/step-audio.toml",
        environ={"GATEWAY__STEP_AUDIO__VLLM_URLS": json.dumps(urls), **environ},
    )
    settings.step_audio.model_dir = str(model_dir)
    settings.engines.preload = []
    return settings


class FakeVLLM:
    """A fake vLLM replica. ``mode`` picks its behaviour for ``/v1/completions``:

    * ``"ok"``: stream ``tokens`` (``delay`` seconds apart, at most ``max_tokens``), a
      finishing chunk, a usage chunk and ``[DONE]``; for ``"stream": false``, generate
      them at the same pace and answer with one JSON completion, as vLLM does;
    * ``"status"``: answer ``status`` with ``error_message`` in vLLM 0.7's error envelope,
      before any byte of a stream;
    * ``"drop"``: stream ``drop_after`` tokens, then close the connection mid-body
      (a whole answer: close after that long, without a response);
    * ``"error_event"``: a 200 stream whose first event is an in-band error (``status``).

    ``report_usage = False`` leaves the usage out (the chunk of a stream, the field of a
    whole answer), as a server that does not count tokens.

    ``POST /tokenize`` reads text as ``tokenizer`` says: ``"step-audio"`` (Step-Audio-Chat's:
    ``<audio_N>`` is 65536+N, ``<|BOT|>`` 4, ``<|EOT|>`` 3, any other character one id),
    ``"split"`` (a tokenizer without those tokens: every character is an id of its own)
    or ``"missing"`` (404, as a server without the endpoint).
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.tokens = list(TOKENS)
        self.delay = 0.0
        self.status = 500
        self.error_message = "engine is dead"
        self.drop_after = 2
        self.healthy = True
        self.tokenizer = "step-audio"
        self.report_usage = True
        self.tokenize_requests: list[dict] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.active = 0
        self.max_active = 0
        self.disconnects: list[float] = []
        self.completed = 0
        self.streamed: list[bool] = []  # per completion request: did it ask for a stream
        self.connections = 0  # TCP connections accepted: reuse keeps this flat
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()
        self.url = ""

    async def start(self) -> "FakeVLLM":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        # Keep-alive connections have handlers waiting for a next request: let them see
        # the abort and end before the test's event loop closes under them.
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections += 1
        handler = asyncio.current_task()
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        try:
            while True:  # keep-alive: one request after another on this connection
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode().split(" ", 2)
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    key, value = line.decode().split(":", 1)
                    headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method == "GET" and path == "/health":
                    await self._plain(writer, 200 if self.healthy else 503, b"")
                elif method == "POST" and path == "/v1/completions":
                    self.requests.append(json.loads(body))
                    self.headers.append(headers)
                    if not await self._complete(reader, writer, self.requests[-1]):
                        return
                elif method == "POST" and path == "/tokenize":
                    self.tokenize_requests.append(json.loads(body))
                    await self._tokenize(writer, self.tokenize_requests[-1])
                else:
                    await self._plain(writer, 404, b'{"detail":"Not Found"}')
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _plain(self, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        head = (
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()

    async def _tokenize(self, writer: asyncio.StreamWriter, request: dict) -> None:
        if self.tokenizer == "missing":
            await self._plain(writer, 404, b'{"detail":"Not Found"}')
            return
        text = request["prompt"]
        if self.tokenizer == "split":
            tokens = [1000 + ord(ch) for ch in text]
        else:
            tokens = []
            for match in re.finditer(r"<audio_(\d+)>|<\|BOT\|>|<\|EOT\|>|.", text, re.S):
                piece = match.group(0)
                if match.group(1) is not None:
                    tokens.append(65536 + int(match.group(1)))
                else:
                    special = {"<|BOT|>": 4, "<|EOT|>": 3}
                    tokens.append(special[piece] if piece in special else 1000 + ord(piece))
        if request.get("add_special_tokens", True):
            tokens.insert(0, 1)
        body = {"count": len(tokens), "max_model_len": 32768, "tokens": tokens}
        await self._plain(writer, 200, json.dumps(body).encode())

    def _error_body(self) -> dict:
        return {
            "object": "error",
            "message": self.error_message,
            "type": "BadRequestError" if self.status < 500 else "InternalServerError",
            "param": None,
            "code": self.status,
        }

    async def _complete(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict
    ) -> bool:
        """Answer one completion; False when the connection is finished with."""
        if self.mode == "status":
            await self._plain(writer, self.status, json.dumps(self._error_body()).encode())
            return True
        streamed = request.get("stream", False)
        self.streamed.append(streamed)
        if streamed:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            await writer.drain()
        if self.mode == "error_event" and not streamed:  # vLLM answers it with its status
            await self._plain(writer, self.status, json.dumps(self._error_body()).encode())
            return True
        if self.mode == "error_event":
            writer.write(_event(self._error_body()) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
            return True
        # The client sends nothing while it reads a response, so a read that returns is
        # the client going away (EOF, or a reset).
        gone = asyncio.ensure_future(reader.read(1))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            limit = request.get("max_tokens")
            tokens = self.tokens if limit is None else self.tokens[:limit]
            for i, token in enumerate(tokens):
                if i and self.delay:
                    await asyncio.wait({gone}, timeout=self.delay)
                if gone.done():
                    self.disconnects.append(time.monotonic())
                    return False
                if self.mode == "drop" and i == self.drop_after:
                    return False  # close mid-body, without the terminating chunk
                if streamed:
                    writer.write(_event(_completion_chunk(request, token, None)))
                    await writer.drain()
            finish = "length" if len(tokens) < len(self.tokens) else "stop"
            usage = {"prompt_tokens": 7, "completion_tokens": len(tokens)}
            if not streamed:
                answer = _completion_chunk(request, "".join(tokens), finish)
                if self.report_usage:
                    answer["usage"] = usage
                await self._plain(writer, 200, json.dumps(answer).encode())
                self.completed += 1
                return True
            writer.write(_event(_completion_chunk(request, "", finish)))
            if self.report_usage:
                writer.write(
                    _event({**_completion_chunk(request, "", None), "choices": [], "usage": usage})
                )
            writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
            self.completed += 1
            return True
        finally:
            self.active -= 1
            if not gone.done():
                gone.cancel()
                # Let the cancelled read let go of the reader before the next request on
                # this keep-alive connection reads from it.
                await asyncio.wait({gone})
            elif not gone.cancelled():
                gone.exception()  # retrieved: a reset is an expected way to leave


@pytest.fixture
async def fakes():
    """A factory of started fake replicas, all stopped after the test."""
    started: list[FakeVLLM] = []

    async def make(**settings) -> FakeVLLM:
        fake = await FakeVLLM().start()
        for key, value in settings.items():
            setattr(fake, key, value)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.stop()


@asynccontextmanager
async def pool_of(*urls: str, **options):
    options.setdefault("connect_timeout", 2.0)
    options.setdefault("read_timeout", 10.0)
    pool = VLLMReplicaPool(list(urls), model="step-audio-chat", **options)
    try:
        yield pool
    finally:
        await pool.aclose()


SAMPLING = dict(max_tokens=64, temperature=0.7, top_p=0.9, stop=["<|EOT|>", "<|BOT|>"])


async def collect(
    pool: VLLMReplicaPool, prompt: str = "<|BOT|>human\nhi<|EOT|><|BOT|>assistant\n", **kw
):
    """All pieces of one completion, with the time each arrived."""
    args = {**SAMPLING, **kw}
    pieces: list[tuple[float, CompletionPiece]] = []
    started = time.monotonic()
    async with aclosing(pool.stream_completion(prompt, **args)) as stream:
        async for piece in stream:
            pieces.append((time.monotonic() - started, piece))
    return pieces


def text_of(pieces) -> str:
    return "".join(piece.text for _, piece in pieces)


async def wait_until(predicate, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def cancel_and_see_the_upstream_closed(task: asyncio.Task, fake: FakeVLLM, pool) -> None:
    """Cancel a consumer of the pool: the replica sees its connection close within a
    second, and the pool counts nothing outstanding."""
    task.cancel()
    cancelled_at = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_until(lambda: fake.disconnects, timeout=1.0), "server saw no disconnect"
    assert fake.disconnects[0] - cancelled_at < 1.0
    assert pool.snapshot().outstanding == 0


# --------------------------------------------------------------------------- streaming


async def test_pieces_arrive_incrementally_and_end_with_usage(fakes):
    fake = await fakes(delay=0.2)
    async with pool_of(fake.url) as pool:
        pieces = await collect(pool)
    assert text_of(pieces) == "".join(TOKENS)
    first_at, last_at = pieces[0][0], pieces[-1][0]
    assert last_at >= 0.2 * (len(TOKENS) - 1) * 0.9
    assert first_at < 0.3 < last_at - 0.5, f"first piece at {first_at:.2f}s, last at {last_at:.2f}s"
    # Only the last piece finishes, and it carries the usage that followed it.
    assert [p.finish_reason for _, p in pieces[:-1]] == [None] * (len(pieces) - 1)
    last = pieces[-1][1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (
        "stop",
        7,
        len(TOKENS),
    )


async def test_request_body_forwards_sampling_and_stops(fakes):
    fake = await fakes()
    async with pool_of(fake.url + "/v1/", api_key="sk-test") as pool:
        pieces = await collect(
            pool,
            "PROMPT",
            max_tokens=3,
            seed=42,
            extra={"stop_token_ids": [3], "skip_special_tokens": False},
        )
    [body] = fake.requests
    assert body == {
        "model": "step-audio-chat",
        "prompt": "PROMPT",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["<|EOT|>", "<|BOT|>"],
        "seed": 42,
        "stop_token_ids": [3],
        "skip_special_tokens": False,
    }
    assert fake.headers[0]["authorization"] == "Bearer sk-test"
    assert text_of(pieces) == "Hello, world"
    assert pieces[-1][1].finish_reason == "length"


async def test_extra_may_not_override_owned_fields(fakes):
    fake = await fakes()
    async with pool_of(fake.url) as pool:
        with pytest.raises(ValueError, match="stream"):
            await collect(pool, extra={"stream": False})
    assert fake.requests == []


async def test_sequential_completions_reuse_one_upstream_connection(fakes):
    """A stream left unread after ``[DONE]`` makes httpcore close its connection, so each
    request would open a new one (and leave a socket in TIME_WAIT)."""
    fake = await fakes()
    async with pool_of(fake.url) as pool:
        for _ in range(10):
            assert text_of(await collect(pool)) == "".join(TOKENS)
    assert fake.completed == 10
    assert fake.connections == 1


async def test_an_idle_connection_the_replica_closed_is_not_reused(fakes):
    """vLLM (uvicorn) closes keep-alive connections idle for 5 s. The client must notice
    (the socket reads as closed) and open a new one instead of sending the next request
    on a dead connection, which would fail and mark a healthy replica down."""
    fake = await fakes()
    async with pool_of(fake.url) as pool:
        await collect(pool)
        for writer in list(fake._writers):
            writer.transport.close()
        assert await wait_until(lambda: not fake._writers)
        await asyncio.sleep(0.05)  # let the FIN reach the client's socket
        assert text_of(await collect(pool)) == "".join(TOKENS)
        [replica] = pool.snapshot().replicas
    assert (replica.failures, replica.healthy, fake.connections) == (0, True, 2)


# --------------------------------------------------------------------------- whole answers


async def test_a_whole_answer_is_asked_unstreamed_and_comes_as_one_finishing_piece(fakes):
    fake = await fakes()
    async with pool_of(fake.url) as pool:
        pieces = await collect(pool, "PROMPT", max_tokens=3, stream=False)
    [body] = fake.requests
    assert body["stream"] is False and "stream_options" not in body
    assert [p for _, p in pieces] == [CompletionPiece("Hello, world", "length", 7, 3)]


async def test_whole_answers_reuse_one_upstream_connection(fakes):
    fake = await fakes()
    async with pool_of(fake.url) as pool:
        for _ in range(10):
            assert text_of(await collect(pool, stream=False)) == "".join(TOKENS)
    assert (fake.completed, fake.streamed, fake.connections) == (10, [False] * 10, 1)


async def test_a_whole_answer_fails_over_before_it_arrives(fakes):
    dropping, good = await fakes(mode="drop", drop_after=1), await fakes()
    async with pool_of(dropping.url, good.url) as pool:
        pieces = await collect(pool, stream=False)
        [first, _] = pool.snapshot().replicas
    assert text_of(pieces) == "".join(TOKENS)
    assert (len(dropping.requests), len(good.requests), first.healthy) == (1, 1, False)


@pytest.mark.parametrize("body", [b"not json", b'{"choices": []}', b'{"choices": [{"text": 5}]}'])
async def test_an_unreadable_whole_answer_is_a_replica_fault_not_a_text(body):
    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = "http://127.0.0.1:%d" % server.sockets[0].getsockname()[1]
    try:
        async with pool_of(url) as pool:
            with pytest.raises(EngineUnavailable, match="unreadable answer|without a choice"):
                await collect(pool, stream=False)
    finally:
        server.close()


async def test_cancelling_a_whole_answer_closes_the_upstream_request(fakes):
    """vLLM aborts a non-streamed request too when its connection closes; the pool
    must close it while it waits for the answer."""
    fake = await fakes(delay=0.1, tokens=["t"] * 200)
    async with pool_of(fake.url) as pool:
        task = asyncio.create_task(collect(pool, stream=False))
        assert await wait_until(lambda: fake.active, timeout=2.0)
        await asyncio.sleep(0.2)
        await cancel_and_see_the_upstream_closed(task, fake, pool)


class _ClosingWhenReused(FakeVLLM):
    """Closes a kept-alive connection when its second request arrives, unanswered: what
    a request sent just as uvicorn closes an idle connection sees."""

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            for answered in range(2):
                request_line = await reader.readline()
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    key, value = line.decode().split(":", 1)
                    headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if answered or not request_line:
                    return
                self.requests.append(json.loads(body))
                await self._complete(reader, writer, self.requests[-1])
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


async def test_a_kept_alive_connection_closed_before_answering_is_retried_on_a_new_one():
    """Failing over (or failing) would mark a healthy replica down for a race it lost."""
    fake = await _ClosingWhenReused().start()
    try:
        async with pool_of(fake.url) as pool:
            for _ in range(3):
                assert text_of(await collect(pool)) == "".join(TOKENS)
            [replica] = pool.snapshot().replicas
    finally:
        await fake.stop()
    assert (replica.healthy, replica.failures, fake.completed) == (True, 0, 3)
    assert fake.connections == 3


def _sse_body(crlf: bool) -> bytes:
    """The body FakeVLLM streams for TOKENS, unchunked."""
    request = {"model": "m"}
    events = [_completion_chunk(request, t, None) for t in TOKENS]
    events.append(_completion_chunk(request, "", "stop"))
    events.append({**_completion_chunk(request, "", None), "choices": [],
                   "usage": {"prompt_tokens": 7, "completion_tokens": len(TOKENS)}})
    end = "\r\n" if crlf else "\n"
    lines = [f"data: {json.dumps(e)}{end}{end}" for e in events] + [f": ping{end}", f"data: [DONE]{end}{end}"]
    return "".join(lines).encode()


async def _serve_cut(http_cuts: list[int], wire_cuts: list[int], crlf: bool) -> list[CompletionPiece]:
    """One completion from a server that sends the SSE body in HTTP chunks cut at
    ``http_cuts`` and the bytes on the wire in writes cut at ``wire_cuts``."""
    chunks = [c for c in cut(_sse_body(crlf), http_cuts) if c]
    wire = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    wire += b"".join(_chunk(c) for c in chunks) + b"0\r\n\r\n"

    async def serve(reader, writer):
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        for piece in cut(wire, wire_cuts):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.001)  # separate reads on the client's side
        await reader.read()  # until the client hangs up
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = "http://127.0.0.1:%d" % server.sockets[0].getsockname()[1]
    try:
        async with pool_of(url) as pool:
            return [piece for _, piece in await collect(pool)]
    finally:
        server.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    http_cuts=st.lists(st.integers(0, 10_000), max_size=12),
    wire_cuts=st.lists(st.integers(0, 10_000), max_size=12),
    crlf=st.booleans(),
)
@example(http_cuts=[], wire_cuts=list(range(0, 2000, 1)), crlf=False)  # a byte at a time
def test_events_split_anywhere_by_the_network_give_the_same_pieces(http_cuts, wire_cuts, crlf):
    """vLLM sends one event per HTTP chunk, but a proxy in between may not, and TCP cuts
    the bytes where it likes: the pieces must not depend on either."""
    pieces = asyncio.run(_serve_cut(http_cuts, wire_cuts, crlf))
    assert "".join(p.text for p in pieces) == "".join(TOKENS)
    assert [p.finish_reason for p in pieces[:-1]] == [None] * (len(pieces) - 1)
    assert (pieces[-1].finish_reason, pieces[-1].prompt_tokens, pieces[-1].completion_tokens) == (
        "stop", 7, len(TOKENS))


async def test_the_read_timeout_bounds_silence_not_the_whole_answer(fakes):
    """A long answer streams for minutes; only a replica gone quiet is a failure."""
    fake = await fakes(delay=0.25, tokens=["t"] * 8)  # 1.75 s in all, 0.25 s gaps
    async with pool_of(fake.url, read_timeout=0.6) as pool:
        pieces = await collect(pool)
        [replica] = pool.snapshot().replicas
    assert text_of(pieces) == "t" * 8 and pieces[-1][0] > 1.5
    assert (replica.healthy, replica.failures) == (True, 0)


async def test_a_replica_gone_quiet_fails_after_the_read_timeout(fakes):
    fake = await fakes(delay=5.0, tokens=["a", "b"])
    async with pool_of(fake.url, read_timeout=0.5) as pool:
        started = time.monotonic()
        with pytest.raises(EngineError, match=r"sent nothing for 0\.5 s"):
            await collect(pool)
        elapsed = time.monotonic() - started
        [replica] = pool.snapshot().replicas
    assert 0.5 <= elapsed < 1.5, elapsed
    assert (replica.healthy, replica.failures) == (False, 1)
    assert await wait_until(lambda: fake.disconnects, timeout=1.0)  # and vLLM is told


async def test_a_consumer_that_stops_reading_holds_the_replica_back_not_memory(fakes):
    """Unread text is not piled up in the gateway: once a little is buffered the socket
    is no longer read, so the replica's writes wait (TCP flow control), and everything
    still arrives when the consumer reads again."""
    fake = await fakes(tokens=["x" * 300] * 30_000)  # ~10 MB of events
    async with pool_of(fake.url) as pool:
        async with aclosing(pool.stream_completion("p", **{**SAMPLING, "max_tokens": None})) as stream:
            received = len((await anext(stream)).text)
            await asyncio.sleep(1.0)
            assert fake.completed == 0  # still blocked in its writes
            async for piece in stream:
                received += len(piece.text)
    assert received == 300 * 30_000 and fake.completed == 1


async def test_proxy_settings_in_the_environment_are_ignored(fakes, monkeypatch):
    """A proxy set for downloads must not sit between the gateway and its GPUs: here it
    points at a closed port, so using it would fail every request and health check."""
    proxy = closed_port_url()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    fake = await fakes()
    async with pool_of(fake.url, tokenizer_check=PROBE) as pool:
        assert (await pool.check_health_once()).ready
        assert text_of(await collect(pool)) == "".join(TOKENS)
    assert len(fake.requests) == len(fake.tokenize_requests) == 1


# --------------------------------------------------------------------------- routing


async def test_concurrent_requests_spread_over_two_replicas(fakes):
    a, b = await fakes(delay=0.1), await fakes(delay=0.1)
    async with pool_of(a.url, b.url) as pool:
        results = await asyncio.gather(*(collect(pool) for _ in range(4)))
    assert all(text_of(r) == "".join(TOKENS) for r in results)
    assert (len(a.requests), len(b.requests)) == (2, 2)
    assert (a.max_active, b.max_active) == (2, 2)


async def test_least_outstanding_beats_round_robin(fakes):
    """While one long answer streams from A, every new request goes to B."""
    a, b = await fakes(delay=0.1, tokens=["x"] * 100), await fakes(tokens=["y"])
    async with pool_of(a.url, b.url) as pool:
        async with aclosing(pool.stream_completion("long", **SAMPLING)) as long_stream:
            await anext(long_stream)  # A now has one request outstanding
            assert [r.outstanding for r in pool.snapshot().replicas] == [1, 0]
            for _ in range(3):
                assert text_of(await collect(pool)) == "y"
        assert pool.snapshot().outstanding == 0
    assert (len(a.requests), len(b.requests)) == (1, 3)


async def test_ties_rotate(fakes):
    a, b = await fakes(), await fakes()
    async with pool_of(a.url, b.url) as pool:
        for _ in range(4):
            await collect(pool)
    assert (len(a.requests), len(b.requests)) == (2, 2)


# --------------------------------------------------------------------------- failover


async def test_failover_from_a_refused_connection(fakes):
    good = await fakes()
    async with pool_of(closed_port_url(), good.url) as pool:
        first = await collect(pool)  # tries the closed port first (ties start at replica 1)
        second = await collect(pool)
        down, up = pool.snapshot().replicas
    assert text_of(first) == text_of(second) == "".join(TOKENS)
    assert len(good.requests) == 2
    assert (down.healthy, down.requests, down.failures) == (False, 1, 1)
    assert down.last_error == "could not connect"
    assert (up.healthy, up.outstanding) == (True, 0)


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_failover_from_an_error_status_before_the_first_byte(fakes, status):
    bad = await fakes(mode="status", status=status)
    good = await fakes()
    async with pool_of(bad.url, good.url) as pool:
        pieces = await collect(pool)
        snapshot = pool.snapshot()
    assert text_of(pieces) == "".join(TOKENS)
    assert (len(bad.requests), len(good.requests)) == (1, 1)
    assert [r.healthy for r in snapshot.replicas] == [False, True]
    assert snapshot.replicas[0].last_error == f"HTTP {status}: engine is dead"


async def test_failover_from_an_error_event_before_the_first_piece(fakes):
    bad = await fakes(mode="error_event", status=500)
    good = await fakes()
    async with pool_of(bad.url, good.url) as pool:
        assert text_of(await collect(pool)) == "".join(TOKENS)
    assert (len(bad.requests), len(good.requests)) == (1, 1)


async def test_failure_mid_stream_raises_after_the_yielded_pieces(fakes):
    dropping = await fakes(mode="drop", drop_after=2, delay=0.05)
    spare = await fakes()
    async with pool_of(dropping.url, spare.url) as pool:
        received: list[str] = []
        with pytest.raises(EngineError) as caught:
            async with aclosing(pool.stream_completion("p", **SAMPLING)) as stream:
                async for piece in stream:
                    received.append(piece.text)
        snapshot = pool.snapshot()
    assert received == TOKENS[:2]
    assert type(caught.value) is EngineError
    assert "middle of the answer" in caught.value.message
    assert spare.requests == []  # no replay once text went out
    assert [r.healthy for r in snapshot.replicas] == [False, True]
    assert snapshot.outstanding == 0


async def test_every_replica_down_is_unavailable(fakes):
    failing = await fakes(mode="status", status=500)
    async with pool_of(closed_port_url(), failing.url) as pool:
        with pytest.raises(EngineUnavailable) as caught:
            await collect(pool)
        # Marked down now, but a request still tries them rather than fail blind.
        with pytest.raises(EngineUnavailable):
            await collect(pool)
        snapshot = pool.snapshot()
    message = caught.value.message
    assert "replica 1: could not connect" in message
    assert "replica 2: HTTP 500: engine is dead" in message
    assert "127.0.0.1" not in message  # addresses stay in the logs
    assert caught.value.status_code == 503
    assert snapshot.healthy == 0 and not snapshot.ready
    assert [r.requests for r in snapshot.replicas] == [2, 2]


# --------------------------------------------------------------------------- rejections


async def test_400_is_invalid_input_and_not_retried(fakes):
    picky = await fakes(mode="status", status=400, error_message="stop must be a list of strings")
    other = await fakes()
    async with pool_of(picky.url, other.url) as pool:
        with pytest.raises(InvalidInput) as caught:
            await collect(pool)
        snapshot = pool.snapshot()
    assert not isinstance(caught.value, ContextOverflow)
    assert caught.value.message == "stop must be a list of strings"
    assert caught.value.param == "messages"
    assert caught.value.status_code == 400
    assert other.requests == []
    assert all(r.healthy for r in snapshot.replicas)  # the request was bad, not the replica


async def test_prompt_too_long_is_context_overflow(fakes):
    message = (
        "This model's maximum context length is 32768 tokens. However, you requested "
        "40000 tokens (39936 in the messages, 64 in the completion). Please reduce the "
        "length of the messages or completion."
    )
    fake = await fakes(mode="status", status=400, error_message=message)
    async with pool_of(fake.url) as pool:
        with pytest.raises(ContextOverflow) as caught:
            await collect(pool)
    assert caught.value.message == message
    assert caught.value.code == "context_length_exceeded"


async def test_400_error_event_inside_the_stream_is_invalid_input(fakes):
    fake = await fakes(mode="error_event", status=400, error_message="bad prompt")
    async with pool_of(fake.url) as pool:
        with pytest.raises(InvalidInput, match="bad prompt"):
            await collect(pool)


async def test_404_is_a_configuration_error_not_the_callers(fakes):
    fake = await fakes(mode="status", status=404, error_message="The model `x` does not exist.")
    async with pool_of(fake.url) as pool:
        with pytest.raises(EngineError) as caught:
            await collect(pool)
    assert not isinstance(caught.value, InvalidInput)
    assert "served model name" in caught.value.message


# --------------------------------------------------------------------------- disconnects


async def test_closing_the_consumer_closes_the_upstream_stream(fakes):
    fake = await fakes(delay=0.1, tokens=["t"] * 200)  # 20 s if nobody stops it
    async with pool_of(fake.url) as pool:
        async with aclosing(pool.stream_completion("p", **SAMPLING)) as stream:
            await anext(stream)
            await anext(stream)
        closed_at = time.monotonic()
        assert await wait_until(lambda: fake.disconnects, timeout=1.0), "server saw no disconnect"
        assert fake.disconnects[0] - closed_at < 1.0
        assert pool.snapshot().outstanding == 0
        # The abandoned connection is gone, not handed to the next request mid-body.
        fake.delay, fake.tokens = 0.0, list(TOKENS)
        assert text_of(await collect(pool)) == "".join(TOKENS)
    assert (fake.completed, fake.connections) == (1, 2)


async def test_cancelling_the_consumer_closes_the_upstream_stream(fakes):
    fake = await fakes(delay=0.1, tokens=["t"] * 200)
    async with pool_of(fake.url) as pool:
        got_one = asyncio.Event()

        async def consume() -> None:
            async with aclosing(pool.stream_completion("p", **SAMPLING)) as stream:
                async for _ in stream:
                    got_one.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_one.wait(), 5)
        await cancel_and_see_the_upstream_closed(task, fake, pool)


# --------------------------------------------------------------------------- health


async def test_health_checks_mark_a_replica_down_and_back_up(fakes):
    a, b = await fakes(), await fakes()
    async with pool_of(a.url, b.url, closed_port_url()) as pool:
        snapshot = await pool.check_health_once()
        assert [r.healthy for r in snapshot.replicas] == [True, True, False]
        a.healthy = False
        snapshot = await pool.check_health_once()
        assert [r.healthy for r in snapshot.replicas] == [False, True, False]
        assert snapshot.replicas[0].last_error == "health check: HTTP 503"
        # Routing skips the replica marked down.
        for _ in range(3):
            await collect(pool)
        assert (len(a.requests), len(b.requests)) == (0, 3)
        a.healthy = True
        snapshot = await pool.check_health_once()
        assert [r.healthy for r in snapshot.replicas] == [True, True, False]


async def test_background_health_loop_follows_the_replica(fakes):
    fake = await fakes()
    async with pool_of(fake.url, health_interval=0.05) as pool:
        await pool.start()
        assert pool.snapshot().ready
        fake.healthy = False
        assert await wait_until(lambda: not pool.snapshot().ready, timeout=2.0)
        fake.healthy = True
        assert await wait_until(lambda: pool.snapshot().ready, timeout=2.0)
    assert pool._health_task is None


async def test_replicas_marked_down_are_still_tried_as_a_last_resort(fakes):
    """A stale mark (health loop not running yet) must not fail requests blind."""
    fake = await fakes()
    async with pool_of(fake.url) as pool:
        fake.healthy = False
        await pool.check_health_once()
        assert not pool.snapshot().ready
        assert text_of(await collect(pool)) == "".join(TOKENS)
        assert pool.snapshot().ready  # a served request proves the replica is back


PROBE = ("<audio_0><audio_5119><|BOT|><|EOT|>", [65536, 70655, 4, 3])


async def test_a_replica_whose_tokenizer_reads_the_probe_otherwise_is_never_used(fakes):
    """It is healthy and would answer, but to prompts it reads wrongly."""
    good, wrong = await fakes(), await fakes(tokenizer="split")
    async with pool_of(wrong.url, good.url, tokenizer_check=PROBE) as pool:
        snapshot = await pool.check_health_once()
        assert [r.healthy for r in snapshot.replicas] == [False, True]
        (mismatch,) = snapshot.mismatches
        assert mismatch.startswith(wrong.url) and "not [65536, 70655, 4, 3]" in mismatch
        for _ in range(4):
            await collect(pool)
        assert (len(wrong.requests), len(good.requests)) == (0, 4)
        await pool.check_health_once()  # still wrong, still never a last resort
        await good.stop()
        with pytest.raises(EngineUnavailable) as caught:
            await collect(pool)
        assert "its tokenizer reads" in caught.value.message
        assert wrong.requests == []


async def test_a_replica_is_checked_when_it_comes_up_and_again_after_a_restart(fakes):
    fake = await fakes(healthy=False)
    async with pool_of(fake.url, tokenizer_check=PROBE) as pool:
        await pool.check_health_once()
        assert fake.tokenize_requests == []  # down: not asked yet
        with pytest.raises(EngineUnavailable) as caught:
            await collect(pool)
        assert "not checked yet" in caught.value.message and fake.requests == []
        fake.healthy = True
        assert (await pool.check_health_once()).ready
        assert len(fake.tokenize_requests) == 1
        await pool.check_health_once()
        assert len(fake.tokenize_requests) == 1  # checked once while it stays up
        assert text_of(await collect(pool)) == "".join(TOKENS)
        # Restarted with another model behind the same URL.
        fake.healthy = False
        await pool.check_health_once()
        fake.healthy, fake.tokenizer = True, "split"
        snapshot = await pool.check_health_once()
        assert not snapshot.ready and snapshot.mismatches


async def test_tokens_are_counted_by_the_replicas_tokenizer_on_any_replica_that_can(fakes):
    """The count is the served tokenizer's (an audio token or a control token is one
    token however many characters it is written in), from the first replica that answers;
    ``add_special_tokens`` adds the BOS a completion's prompt gets."""
    missing, counting = await fakes(tokenizer="missing"), await fakes()
    text = "<|BOT|>human\n<audio_17><audio_4000>hi<|EOT|>"
    async with pool_of(missing.url, counting.url) as pool:
        assert await pool.count_tokens(text) == 1 + 6 + 2 + 2 + 1  # 12, where len // 4 is 11
        assert await pool.count_tokens(text, add_special_tokens=True) == 13
        assert [r["add_special_tokens"] for r in counting.tokenize_requests] == [False, True]
        counting.tokenizer = "missing"
        with pytest.raises(EngineUnavailable) as caught:
            await pool.count_tokens(text)
        assert "HTTP 404" in caught.value.message
