"""Completions from the vLLM replicas that serve Step-Audio-Chat, streamed or whole.

The 130B chat model runs in vLLM (tensor parallel, possibly several replicas) and the
gateway reaches it over HTTP through ``/v1/completions`` with a prompt the Step-Audio
adapter has already rendered: the fork's ``/v1/chat/completions`` rejects audio and
ignores tools. This module is only the transport and knows nothing of the prompt format.

Why it behaves as it does:

* **Least outstanding requests.** Answers differ in length by orders of magnitude, so
  plain round-robin can pile long generations onto one replica; counting the streams
  open on each balances the work actually in flight. Ties rotate, so an idle pool still
  spreads its load.
* **Failover only before the first piece.** Until then the caller has seen nothing and
  the request can be replayed on another replica. Afterwards a replay would repeat or
  change text already sent, so a failure raises :class:`EngineError` and the gateway
  ends the stream with an error event.
* **Abort on disconnect.** vLLM aborts a request when its HTTP connection closes. The
  upstream stream is opened inside the generator, so closing or cancelling the consumer
  closes the response and the GPUs stop generating for a client that has gone.
* **A lean client on the hot path.** Completions stream through :mod:`.http1` (asyncio
  protocol + llhttp, one keep-alive pool per replica), not httpx: through httpx this
  path was ~40% of the gateway's CPU per request (issue 11). Events are decoded straight
  from the body bytes into typed structs. The rare health and tokenizer checks stay on
  httpx.
* **Whole answers when nothing needs the pieces.** A caller that only wants the whole
  text (a non-streamed, unspoken chat reply) asks vLLM for it in one JSON response
  (``stream=False``): one body to decode instead of an SSE event per token. vLLM then
  sends nothing until the answer is complete, so ``read_timeout`` bounds the whole
  generation of such an answer, not only silences; it still aborts on disconnect.
* **Health.** A replica that fails a request is marked down and skipped by routing until
  its ``GET /health`` answers 200 again. A request still tries replicas marked down once
  every healthy one has failed, because a mark can be stale (the health loop may not be
  running, or the replica may just have come back).
* **The right tokenizer.** With ``tokenizer_check`` set, a replica is only used once its
  ``POST /tokenize`` reads the probe text as the expected ids; it is asked again each time
  it comes back from down (a restarted vLLM may serve another model). A replica that
  reads it otherwise is never routed to, whatever its health says: it would answer, but
  to a prompt it reads wrongly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

import anyio
import httpx
import msgspec
import structlog

from ..base import EngineError, EngineUnavailable, InvalidInput
from ..chat import ContextOverflow
from . import http1

log = structlog.get_logger(__name__)

#: Body fields the pool owns; ``extra`` may not override them.
_RESERVED = frozenset({"model", "prompt", "stream"})
#: An error body longer than this is cut: only the message is wanted.
_ERROR_BODY_LIMIT = 16_384
#: How long the end of a body may take to arrive after ``[DONE]`` (see ``_drain``).
_DRAIN_SECONDS = 1.0
#: A whole answer's body larger than this is refused: 2048 tokens of text, even escaped,
#: are far below it; a server that keeps sending is not buffered without end.
_WHOLE_BODY_LIMIT = 32 * 1024 * 1024


class _Choice(msgspec.Struct):
    text: str | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Chunk(msgspec.Struct):
    """The fields of a streamed ``/v1/completions`` event the pool reads; decoding into
    it skips the rest (ids, logprobs) without building dicts for them."""

    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None
    kind: str | None = msgspec.field(default=None, name="object")


class _Completion(msgspec.Struct):
    """The fields of a whole (``stream: false``) ``/v1/completions`` answer the pool reads."""

    choices: list[_Choice] = []
    usage: _Usage | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_decode_completion = msgspec.json.Decoder(_Completion).decode
_DONE = b"[DONE]"


class CompletionPiece(msgspec.Struct, frozen=True):
    """One streamed piece of a completion (a struct: one is made per token, and a
    frozen dataclass costs several times more to build).

    ``finish_reason`` (vLLM: ``"stop"``, ``"length"``, or ``"abort"``) is set only on the
    last piece, which also carries vLLM's token counts (``prompt_tokens`` and
    ``completion_tokens``). The pool asks for usage, so only a server that ignores
    ``stream_options`` leaves them None.
    """

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class ReplicaSnapshot:
    """One replica as the pool sees it. ``requests`` counts attempts sent to it,
    ``failures`` those that failed (refused, 5xx/429, broken stream)."""

    url: str
    healthy: bool
    outstanding: int
    requests: int
    failures: int
    last_error: str | None
    #: Why this replica is never used (its tokenizer reads the probe otherwise), or None.
    mismatch: str | None = None


@dataclass(frozen=True)
class PoolSnapshot:
    """A read-only copy of the pool's state, for readiness and metrics endpoints."""

    model: str
    replicas: tuple[ReplicaSnapshot, ...]

    @property
    def healthy(self) -> int:
        return sum(r.healthy for r in self.replicas)

    @property
    def outstanding(self) -> int:
        return sum(r.outstanding for r in self.replicas)

    @property
    def ready(self) -> bool:
        return self.healthy > 0

    @property
    def mismatches(self) -> list[str]:
        return [f"{r.url}: {r.mismatch}" for r in self.replicas if r.mismatch]


class _Replica:
    __slots__ = (
        "url",
        "index",
        "healthy",
        "outstanding",
        "requests",
        "failures",
        "last_error",
        "verified",
        "mismatch",
        "http",
    )

    def __init__(self, url: str, index: int, http: http1.Http1Pool) -> None:
        self.url = url
        self.index = index
        self.http = http  # the completions' connections (health checks use httpx)
        self.healthy = True  # optimistic until the first health check says otherwise
        self.outstanding = 0
        self.requests = 0
        self.failures = 0
        self.last_error: str | None = None
        self.verified = False  # its tokenizer answered the probe as expected
        self.mismatch: str | None = None

    def mark_down(self, reason: str) -> None:
        self.last_error = reason
        if self.healthy:
            self.healthy = False
            log.warning("vllm_replica_down", url=self.url, reason=reason)

    def mark_up(self) -> None:
        if not self.healthy:
            self.healthy = True
            log.info("vllm_replica_up", url=self.url)

    def snapshot(self) -> ReplicaSnapshot:
        return ReplicaSnapshot(
            self.url,
            self.healthy,
            self.outstanding,
            self.requests,
            self.failures,
            self.last_error,
            self.mismatch,
        )


class _Retry(Exception):
    """This replica failed before any piece was received: try another one."""


class _UpstreamError(Exception):
    """vLLM reported an error inside a 200 stream (``data: {"error": ...}``)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Broken(Exception):
    """The stream is not what vLLM sends: unreadable event, or it ended unfinished."""


def _base_url(url: str) -> str:
    """``http://host:8000``, also accepting the ``.../v1`` form OpenAI clients are given."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _message_of(data: Any) -> str:
    """vLLM's error text, from either of its envelopes: ``{"object": "error", "message",
    "code"}`` (0.7) or ``{"error": {"message", "code"}}`` (later), or FastAPI's ``detail``."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if isinstance(data.get(key), str):
                return data[key]
    return str(data)[:500]


def _status_of(data: dict) -> int | None:
    error = data.get("error")
    code = error.get("code") if isinstance(error, dict) else data.get("code")
    return code if isinstance(code, int) else None


async def _error_message(response: http1.Response) -> str:
    body = await response.read_at_most(_ERROR_BODY_LIMIT)
    try:
        return _message_of(msgspec.json.decode(body))
    except msgspec.DecodeError:
        return body.decode("utf-8", "replace").strip()[:500] or response.reason


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return response.text[:500]


def _retryable(status: int) -> bool:
    return status >= 500 or status == 429


def _rejection(status: int, message: str) -> EngineError:
    """A 4xx: the same request would fail on every replica, so it is not retried.

    401/403/404 mean the gateway is misconfigured (API key, served model name, URL), not
    that the caller's input is bad, so they are not reported as the caller's fault.
    """
    if status in (401, 403, 404):
        return EngineError(
            f"vLLM refused the gateway's request (HTTP {status}: {message}); check the "
            "chat model's URL, served model name and API key in the gateway settings."
        )
    if "context length" in message.lower():
        return ContextOverflow(message, param="messages")
    return InvalidInput(message, param="messages")


def _describe(exc: BaseException, read_timeout: float) -> str:
    """A short reason without addresses: it may reach the API caller. ``exc`` comes from
    httpx (health checks) or :mod:`.http1` (completions)."""
    if isinstance(exc, (httpx.ConnectTimeout, http1.ConnectTimeout)):
        return "timed out connecting"
    if isinstance(exc, (httpx.ConnectError, http1.ConnectError)):
        return "could not connect"
    if isinstance(exc, (httpx.ReadTimeout, http1.ReadTimeout)):
        return f"sent nothing for {read_timeout:g} s"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "closed the connection mid-response"
    if isinstance(exc, http1.RemoteProtocolError):
        return str(exc).removeprefix("the upstream ")
    if isinstance(exc, httpx.RequestError):
        return type(exc).__name__
    return str(exc)


async def _drain(response: http1.Response) -> None:
    """Read a finished stream to the end of its chunked body.

    A connection goes back to the pool only once its response was read to the end;
    closed earlier, it is closed too, and every request would pay a new TCP connection
    (and leave a socket in TIME_WAIT). vLLM ends the body right after ``[DONE]``, usually
    in the same packet, so this rarely waits; a server that keeps it open is not waited
    on for long: the connection is then dropped, which loses nothing.
    """
    if response.complete:
        return
    with anyio.move_on_after(_DRAIN_SECONDS):
        while await response.read():
            pass


def _event(payload: bytes) -> _Chunk:
    """One ``data:`` payload, decoded; the two kinds of error event raise."""
    try:
        chunk = _decode_chunk(payload)
    except msgspec.DecodeError:  # not JSON, or not shaped like a completion chunk
        try:
            data = msgspec.json.decode(payload)
        except msgspec.DecodeError as exc:
            raise _Broken(f"unreadable event {payload[:100]!r}") from exc
        if isinstance(data, dict) and ("error" in data or data.get("object") == "error"):
            raise _UpstreamError(_status_of(data), _message_of(data)) from None
        raise _Broken(f"unexpected event {payload[:100]!r}") from None
    if chunk.error is not None or chunk.kind == "error":
        data = msgspec.json.decode(payload)
        raise _UpstreamError(_status_of(data), _message_of(data))
    return chunk


async def _pieces(response: http1.Response) -> AsyncIterator[CompletionPiece]:
    """Parse vLLM's SSE stream into pieces, straight from the body bytes.

    vLLM sends the finishing choice (often with empty text) and then, when usage was
    asked for, a chunk with no choices and the token counts. The finishing piece is held
    back until the counts arrive, so callers get one last piece with both.
    Empty non-final pieces (a token that decodes to nothing yet) are dropped.
    """
    held: CompletionPiece | None = None
    rest = b""
    while True:
        data = await response.read()
        if data:
            lines = (rest + data if rest else data).split(b"\n")
            rest = lines.pop()
        elif rest:  # the body ended without a last newline
            lines, rest = [rest], b""
        else:
            break
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, ": ping" comments, other SSE fields
            payload = line[5:].strip()
            if payload == _DONE:
                if held is not None:
                    yield held
                await _drain(response)
                return
            chunk = _event(payload)
            usage = chunk.usage
            choices = chunk.choices
            if choices:
                choice = choices[0]
                piece = CompletionPiece(
                    choice.text or "",
                    choice.finish_reason,
                    usage.prompt_tokens if usage is not None else None,
                    usage.completion_tokens if usage is not None else None,
                )
                if held is not None:  # a second finishing choice: pass the first one on
                    yield held
                    held = None
                if piece.finish_reason is not None:
                    held = piece
                elif piece.text:
                    yield piece
            elif held is not None and usage is not None and usage.prompt_tokens is not None:
                yield msgspec.structs.replace(
                    held,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                )
                held = None
    if held is not None:
        yield held  # finished, but the server left out [DONE]
        return
    raise _Broken("the stream ended before the answer was finished")


async def _whole(response: http1.Response) -> AsyncIterator[CompletionPiece]:
    """A whole answer as the one, finishing piece a stream would end with."""
    parts: list[bytes] = []
    size = 0
    while data := await response.read():
        size += len(data)
        if size > _WHOLE_BODY_LIMIT:
            raise _Broken(f"an answer of more than {_WHOLE_BODY_LIMIT} bytes")
        parts.append(data)
    body = b"".join(parts)
    try:
        answer = _decode_completion(body)
    except msgspec.DecodeError as exc:
        raise _Broken(f"unreadable answer {body[:100]!r}") from exc
    if not answer.choices:
        raise _Broken(f"an answer without a choice {body[:100]!r}")
    choice, usage = answer.choices[0], answer.usage
    yield CompletionPiece(
        choice.text or "",
        choice.finish_reason or "stop",
        usage.prompt_tokens if usage is not None else None,
        usage.completion_tokens if usage is not None else None,
    )


def _client() -> httpx.AsyncClient:
    # trust_env=False: a proxy configured for downloads must not sit between the
    # gateway and its GPUs.
    return httpx.AsyncClient(trust_env=False)


class VLLMReplicaPool:
    """Streams ``/v1/completions`` from the least busy healthy vLLM replica.

    ``urls`` are the replicas' base URLs (``http://host:8000``; a trailing ``/v1`` is
    accepted), all serving ``model`` (vLLM's ``--served-model-name``). ``read_timeout``
    is the longest silence tolerated on a stream, queueing before the first token
    included. ``tokenizer_check`` (text, ids): use only replicas whose ``/tokenize``
    reads text as exactly ids (see the module doc). Call :meth:`start` to begin health
    checks and :meth:`aclose` when done, or use the pool as an async context manager.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        model: str,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        health_interval: float = 5.0,
        client: httpx.AsyncClient | None = None,
        tokenizer_check: tuple[str, Sequence[int]] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("VLLMReplicaPool needs at least one replica URL")
        self.model = model
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # Connections are not capped: each open stream holds one, and admission control
        # belongs to the gateway, not to a pool timeout.
        self._replicas = [
            _Replica(
                base,
                i,
                http1.Http1Pool(
                    base,
                    connect_timeout=connect_timeout,
                    read_timeout=read_timeout,
                    headers=self._headers,
                ),
            )
            for i, base in enumerate(_base_url(url) for url in urls)
        ]
        self._read_timeout = read_timeout
        self._health_timeout = httpx.Timeout(connect_timeout)
        self._health_interval = health_interval
        self._owns_client = client is None
        self._client = client or _client()  # health and tokenizer checks only
        self._next = 0  # rotation point for breaking ties
        self._tokenizer_check = (
            None
            if tokenizer_check is None
            else (tokenizer_check[0], [int(i) for i in tokenizer_check[1]])
        )
        self._health_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Check every replica once (bounded by the connect timeout), then keep checking
        every ``health_interval`` seconds in a background task."""
        if self._health_task is not None:
            return
        await self.check_health_once()
        self._health_task = asyncio.create_task(
            self.run_health_checks(immediately=False), name="vllm-health"
        )

    async def aclose(self) -> None:
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        for replica in self._replicas:
            await replica.http.aclose()
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> "VLLMReplicaPool":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ health

    async def check_health_once(self) -> PoolSnapshot:
        """Probe every replica's ``GET /health`` concurrently; 200 means healthy."""
        async with anyio.create_task_group() as tasks:
            for replica in self._replicas:
                tasks.start_soon(self._probe, replica)
        return self.snapshot()

    async def run_health_checks(self, *, immediately: bool = True) -> None:
        """Check every ``health_interval`` seconds until cancelled."""
        if not immediately:
            await anyio.sleep(self._health_interval)
        while True:
            try:
                await self.check_health_once()
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("vllm_health_check_failed")
            await anyio.sleep(self._health_interval)

    async def _probe(self, replica: _Replica) -> None:
        try:
            response = await self._client.get(
                replica.url + "/health", headers=self._headers, timeout=self._health_timeout
            )
        except httpx.RequestError as exc:
            replica.verified = False
            replica.mark_down(f"health check: {_describe(exc, self._read_timeout)}")
            return
        if response.status_code != 200:
            replica.verified = False
            replica.mark_down(f"health check: HTTP {response.status_code}")
            return
        if self._tokenizer_check is not None and not replica.verified:
            try:
                replica.mismatch = await self._tokenizer_mismatch(replica)
            except httpx.RequestError as exc:
                replica.mark_down(f"tokenizer check: {_describe(exc, self._read_timeout)}")
                return
            if replica.mismatch is not None:
                replica.mark_down(replica.mismatch)
                return
            replica.verified = True
        replica.mark_up()

    async def _tokenizer_mismatch(self, replica: _Replica) -> str | None:
        """None when the replica's tokenizer reads the probe as expected, else why not."""
        assert self._tokenizer_check is not None
        text, expected = self._tokenizer_check
        response = await self._tokenize(replica, text, add_special_tokens=False)
        if response.status_code != 200:
            return (
                f"its /tokenize answered HTTP {response.status_code} "
                f"({_message_of(_json_or_text(response))}), so the gateway cannot check "
                "that it reads audio tokens"
            )
        body = _json_or_text(response)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if tokens != expected:
            return (
                f"its tokenizer reads {text!r} as {tokens!r}, not {expected!r}: it is not "
                f"serving Step-Audio-Chat's tokenizer (wrong model for '{self.model}', or "
                "a tokenizer without the audio tokens)"
            )
        return None

    async def _tokenize(
        self, replica: _Replica, text: str, *, add_special_tokens: bool
    ) -> httpx.Response:
        return await self._client.post(
            replica.url + "/tokenize",
            json={"model": self.model, "prompt": text, "add_special_tokens": add_special_tokens},
            headers=self._headers,
            timeout=self._health_timeout,
        )

    async def count_tokens(self, text: str, *, add_special_tokens: bool = False) -> int:
        """How many tokens the served model reads ``text`` as: its own tokenizer counts
        (``POST /tokenize``), so special tokens written in the text count as one each.
        ``add_special_tokens`` adds what vLLM adds to a completion's prompt (BOS).
        Tried on the replicas a completion could go to; :class:`EngineUnavailable` when
        none answers."""
        tried: list[_Replica] = []
        reasons: list[str] = []
        while (replica := self._choose(tried)) is not None:
            tried.append(replica)
            try:
                response = await self._tokenize(
                    replica, text, add_special_tokens=add_special_tokens
                )
            except httpx.RequestError as exc:
                reasons.append(f"replica {replica.index + 1}: {_describe(exc, self._read_timeout)}")
                continue
            body = _json_or_text(response)
            count = body.get("count") if isinstance(body, dict) else None
            if response.status_code == 200 and isinstance(count, int):
                return count
            reasons.append(
                f"replica {replica.index + 1}: /tokenize answered HTTP {response.status_code}"
                f" ({_message_of(body)})"
            )
        raise EngineUnavailable(
            f"The chat model cannot count tokens: no vLLM replica tokenized the text"
            f" ({'; '.join(reasons) or 'none is usable'})."
        )

    # ------------------------------------------------------------------ state

    def snapshot(self) -> PoolSnapshot:
        return PoolSnapshot(self.model, tuple(r.snapshot() for r in self._replicas))

    def _usable(self, replica: _Replica) -> bool:
        """Not known to read prompts wrongly: checked, when a tokenizer check is set."""
        if self._tokenizer_check is None:
            return True
        return replica.mismatch is None and replica.verified

    def _choose(self, tried: list[_Replica]) -> _Replica | None:
        """Least outstanding among the healthy untried replicas, ties in rotation; the
        untried ones marked down only when no healthy one is left. Replicas whose
        tokenizer is unchecked or wrong are never chosen."""
        start = self._next
        self._next = (start + 1) % len(self._replicas)
        rotated = self._replicas[start:] + self._replicas[:start]
        untried = [r for r in rotated if r not in tried and self._usable(r)]
        if not untried:
            return None
        healthy = [r for r in untried if r.healthy]
        return min(healthy or untried, key=lambda r: r.outstanding)

    # ------------------------------------------------------------------ completions

    def _body(
        self,
        prompt: str | list[int],
        max_tokens: int | None,
        temperature: float,
        top_p: float,
        stop: Sequence[str],
        seed: int | None,
        extra: dict[str, Any] | None,
        stream: bool = True,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        body |= {
            # Always sent: /v1/completions defaults to 16 tokens. None (JSON null)
            # makes vLLM generate up to the end of the context window.
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stop": list(stop),
        }
        if seed is not None:
            body["seed"] = seed
        if extra:
            clash = _RESERVED & extra.keys()
            if clash:
                raise ValueError(f"extra may not set {sorted(clash)}")
            body.update(extra)
        return body

    async def stream_completion(
        self,
        prompt: str | list[int],
        *,
        max_tokens: int | None,
        temperature: float,
        top_p: float,
        stop: Sequence[str],
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
        stream: bool = True,
    ) -> AsyncIterator[CompletionPiece]:
        """Stream the completion of ``prompt`` (text, or token ids) piece by piece.

        ``stream=False`` asks vLLM for the whole answer at once, yielded as one finishing
        piece: for a caller that would only join the pieces (see the module doc).

        ``extra`` adds vLLM sampling fields (``stop_token_ids``, ``skip_special_tokens``,
        ``repetition_penalty``, ...). Raises :class:`InvalidInput` when vLLM rejects the
        request (4xx; :class:`ContextOverflow` for a prompt too long), before any piece;
        :class:`EngineUnavailable` when no replica could take it; :class:`EngineError`
        when the stream breaks after pieces were yielded.

        Nothing is sent until the first ``__anext__``. Consume it with ``async for``
        inside ``contextlib.aclosing(...)`` (or cancel the task) so that a caller who
        stops early closes the upstream response at once, which aborts the generation.
        """
        body = msgspec.json.encode(
            self._body(prompt, max_tokens, temperature, top_p, stop, seed, extra, stream)
        )
        read = _pieces if stream else _whole
        tried: list[_Replica] = []
        reasons: list[str] = []
        while (replica := self._choose(tried)) is not None:
            tried.append(replica)
            replica.outstanding += 1
            replica.requests += 1
            yielded = finished = False
            response: http1.Response | None = None
            try:
                response = await replica.http.request("POST", "/v1/completions", body)
                if response.status != 200:
                    message = await _error_message(response)
                    if _retryable(response.status):
                        raise _Retry(f"HTTP {response.status}: {message}")
                    raise _rejection(response.status, message)
                async for piece in read(response):
                    yielded = True
                    finished = piece.finish_reason is not None
                    yield piece
                replica.mark_up()
                return
            except _UpstreamError as exc:
                status = exc.status or 500
                if not yielded and not _retryable(status):
                    raise _rejection(status, exc.message) from None
                reason = f"error event ({status}): {exc.message}"
                replica_fault = _retryable(status)
                error: BaseException = exc
            except (_Retry, _Broken, http1.HTTPError) as exc:
                reason = _describe(exc, self._read_timeout)
                replica_fault = True
                error = exc
            finally:
                replica.outstanding -= 1
                if response is not None:
                    # Aborts the connection unless the body was read to its end: this is
                    # what makes vLLM stop generating for a consumer that has gone.
                    response.close()
            if finished:
                # The last piece is out; a fault while waiting for [DONE] loses nothing.
                log.info("vllm_stream_tail_lost", url=replica.url, reason=reason)
                return
            if replica_fault:
                replica.failures += 1
                replica.mark_down(reason)
            if yielded:
                log.warning("vllm_stream_broken", url=replica.url, reason=reason)
                raise EngineError(
                    f"The chat model's server failed in the middle of the answer ({reason}); "
                    "the answer is incomplete."
                ) from error
            log.info("vllm_failover", url=replica.url, reason=reason)
            reasons.append(f"replica {replica.index + 1}: {reason}")
        for r in self._replicas:
            if r not in tried:
                why = r.mismatch or f"its tokenizer is not checked yet ({r.last_error})"
                reasons.append(f"replica {r.index + 1}: {why}")
        raise EngineUnavailable(
            f"The chat model is unavailable: none of its {len(self._replicas)} vLLM "
            f"replica(s) could take the request ({'; '.join(reasons)}). Retry shortly."
        )
