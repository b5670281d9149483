"""A lean HTTP/1.1 client for the one upstream protocol the vLLM pool speaks.

The pool streams ``POST /v1/completions`` from vLLM on every chat request. Through httpx
that path was ~40% of the gateway's CPU per request (issue 11: httpx's stream wrappers,
httpcore's pool scans, h11's pure-Python parser, anyio's task lookups on every read). Here
an asyncio protocol feeds the socket's bytes to ``httptools`` (llhttp in C: status,
headers, chunked decoding) and hands the body to the reader as it arrives, so a streamed
token costs one callback and one future. Only what that upstream needs is implemented:
one request at a time per connection, keep-alive, no redirects, cookies, proxies
(``trust_env`` has no meaning here: nothing is read from the environment) or HTTP/2.

Promises the pool relies on:

* **Reuse only after a full read.** A connection goes back to its pool the moment its
  response's last byte is parsed (the unread body stays with the :class:`Response`), and
  never while a body is still coming: :meth:`Response.close` on an unfinished response
  aborts the connection, which is also how vLLM learns that the client has gone.
* **Read timeout = longest silence.** A reader waiting for the status line or for body
  bytes fails with :class:`ReadTimeout` once nothing has arrived for ``read_timeout``
  seconds of its wait; time the reader spends elsewhere does not count.
* **Stale keep-alive connections are not used.** uvicorn (vLLM) closes a connection idle
  for 5 s; one idle longer than ``keepalive_expiry`` is closed here first, one the server
  closed is dropped when its EOF arrives, and a request whose reused connection closes
  before a single response byte is sent once more on a new connection.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import httptools

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "HTTPError",
    "Http1Pool",
    "ReadTimeout",
    "RemoteProtocolError",
    "Response",
]

#: Unread body bytes above which the socket stops being read until the reader catches up.
_HIGH_WATER = 256 * 1024


class HTTPError(Exception):
    """The exchange with the upstream failed (connection, timeout or protocol)."""


class ConnectError(HTTPError):
    """No connection could be opened (refused, unreachable, unknown host)."""


class ConnectTimeout(ConnectError):
    """Opening the connection took longer than the connect timeout."""


class ReadTimeout(HTTPError):
    """The upstream sent nothing for the whole read timeout."""


class RemoteProtocolError(HTTPError):
    """The upstream closed the connection mid-response, or sent something not HTTP."""


class _ClosedBeforeResponse(RemoteProtocolError):
    """Closed before any byte of the response: on a reused connection, a stale one."""


class Response:
    """One response, its body read with :meth:`read` as it arrives.

    Always :meth:`close` it (a ``finally``): a response read to its end has already given
    its connection back; one that has not is aborted.
    """

    __slots__ = (
        "status",
        "reason",
        "keep_alive",
        "_conn",
        "_loop",
        "_timeout",
        "_chunks",
        "_buffered",
        "_headers_done",
        "_done",
        "_error",
        "_started",
        "_waiter",
        "_wait_started",
        "_timer",
        "_close_delimited",
    )

    def __init__(self, conn: "_Connection", timeout: float) -> None:
        self.status = 0
        self.reason = ""
        self.keep_alive = True
        self._conn: _Connection | None = conn
        self._loop = conn.loop
        self._timeout = timeout
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._headers_done = False
        self._done = False
        self._error: HTTPError | None = None
        self._started = False  # any byte of it arrived
        self._waiter: asyncio.Future[None] | None = None
        self._wait_started = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._close_delimited = True  # until a content-length or chunked header says not

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it may not all have been read yet)."""
        return self._done

    async def read(self) -> bytes:
        """All body bytes that arrived since the last call, waiting for some if none
        did; ``b""`` once the body is over. Raises what broke the exchange once the bytes
        that came before the break were read."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            await self._wait()
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._buffered >= _HIGH_WATER and self._conn is not None:
            self._conn.resume()
        self._buffered = 0
        return data

    async def read_at_most(self, limit: int) -> bytes:
        """The body up to about ``limit`` bytes (an error text: only its start matters)."""
        body = b""
        while len(body) < limit and (data := await self.read()):
            body += data
        return body

    def close(self) -> None:
        """Give up on the rest of the response. Its connection is aborted unless the body
        was complete (then it already went back to the pool)."""
        self._cancel_timer()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
        if not self._done and self._error is None:
            self._error = RemoteProtocolError("the response was closed")

    # ------------------------------------------------------------------ waiting

    async def _wait_headers(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def _wait(self) -> None:
        loop = self._loop
        self._waiter = waiter = loop.create_future()
        self._wait_started = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._wait_started + self._timeout, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        """One timer per response, re-armed only when a wait outlives it: cheaper than a
        timer per wait when a stream has thousands of them."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        deadline = self._wait_started + self._timeout
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self._fail(ReadTimeout(f"nothing received for {self._timeout:g} s"))
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, error: HTTPError) -> None:
        if not self._done and self._error is None:
            self._error = error
            self._cancel_timer()
            self._wake()

    # ------------------------------------------------------------------ parser events

    def _headers(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self.keep_alive = keep_alive
        self._headers_done = True
        self._wake()

    def _body(self, data: bytes) -> bytes | None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        return None

    def _finished(self) -> None:
        self._done = True
        self._cancel_timer()
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parser callbacks go to the response in flight."""

    def __init__(self, pool: "Http1Pool") -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self.used = False  # has carried a request before
        self.eof = False  # the server closed its side

    # --------------------------------------------------------------- asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nothing asked: a server talking out of turn
            self.abort()
            return
        response._started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response._fail(RemoteProtocolError("the upstream switched protocols"))
            self.abort()
        except httptools.HttpParserError as exc:
            response._fail(RemoteProtocolError(f"malformed response ({exc})"))
            self.abort()
        if response._buffered >= _HIGH_WATER and self.response is response:
            self.pause()

    def eof_received(self) -> bool:
        self.eof = True
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        response, self.response = self.response, None
        if response is None or response._done or response._error is not None:
            return
        if response._headers_done and response._close_delimited and self.eof:
            response._finished()  # a body delimited by the end of the connection
        elif not response._started:
            response._fail(
                _ClosedBeforeResponse("the upstream closed the connection before responding")
            )
        else:
            response._fail(RemoteProtocolError("the upstream closed the connection mid-response"))

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    # --------------------------------------------------------------- llhttp side

    def on_message_begin(self) -> None:
        if self.response is None:  # bytes after the response it was asked for
            self.abort()

    def on_status(self, reason: bytes) -> None:
        if self.response is not None:
            self.response.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                self.response._close_delimited = False

    def on_headers_complete(self) -> None:
        response = self.response
        if response is not None:
            status = self.parser.get_status_code()
            if status < 200:  # 1xx: an interim answer, the real one follows
                return
            response._headers(status, self.parser.should_keep_alive())

    def on_body(self, data: bytes) -> None:
        if self.response is not None:
            self.response._body(data)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or not response._headers_done:
            return  # the end of a 1xx
        self.response = None
        response._conn = None
        response._finished()
        if response.keep_alive and not self.closed:
            self.pool._release(self)
        else:
            self.abort()


class Http1Pool:
    """Keep-alive connections to one server (``base_url``: scheme, host, port, and an
    optional path prefix), one request at a time on each; as many connections as
    requests in flight, at most ``max_idle`` of them kept between requests."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        headers: dict[str, str] | None = None,
        keepalive_expiry: float = 4.0,
        max_idle: int = 64,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        authority = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        if not default_port:
            authority += f":{self.port}"
        lines = [f"Host: {authority}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self._common = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_expiry = keepalive_expiry
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def connections(self) -> int:
        """Open connections, idle or busy."""
        return len(self._all)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        read_timeout: float | None = None,
    ) -> Response:
        """Send a request and wait for its status line and headers (bounded by the read
        timeout). The caller reads the body and must :meth:`Response.close` it."""
        head = (
            f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1")
            + self._common
            + b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (content_type.encode("latin-1"), len(body))
        )
        timeout = self.read_timeout if read_timeout is None else read_timeout
        for attempt in range(2):
            # A retry takes a new connection: the others kept alive may be as stale.
            conn = await (self._connect() if attempt else self._acquire())
            reused = conn.used
            conn.used = True
            response = Response(conn, timeout)
            conn.response = response
            if conn.closed:  # closed while it was being opened: no connection_lost to come
                response._fail(_ClosedBeforeResponse("the upstream closed the connection at once"))
            else:
                assert conn.transport is not None
                conn.transport.write(head + body)
            try:
                await response._wait_headers()
            except _ClosedBeforeResponse:
                response.close()
                if reused and attempt == 0:
                    continue  # the server had closed it while idle: a new one
                raise
            except BaseException:
                response.close()
                raise
            return response
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
        self._all.clear()

    # ------------------------------------------------------------------ pool

    async def _acquire(self) -> _Connection:
        idle = self._idle
        if idle:
            now = self.loop.time()
            while idle:
                conn = idle.pop()  # the most recently used: least likely to be stale
                if conn.closed:
                    continue
                if now - conn.idle_since >= self.keepalive_expiry:
                    conn.abort()
                    continue
                return conn
        return await self._connect()

    async def _connect(self) -> _Connection:
        conn = _Connection(self)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting took over {self.connect_timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, name not known, TLS failure
            raise ConnectError(str(exc) or type(exc).__name__) from exc
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if len(self._idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
