"""The HTTP server: uvicorn on uvloop with httptools, plus the header and body deadlines
uvicorn does not have.

The stack was chosen by measurement (bench/server_stack.py, bench/overhead.py; issue 11):
serving a trivial app, uvicorn with these deadlines costs about 0.26 ms of CPU per request
and 20 µs per streamed chunk on h11 and asyncio, 0.12 ms and 9 µs on httptools (llhttp)
and uvloop (libuv). Granian (Rust, asgi, uvloop) cost more, 0.26 ms and 30 µs, and is not
used: its server owns the sockets, so only a header timeout could be kept, not the body
deadlines, the 408 envelope or the flow-control exemptions. h11 and asyncio stay the
fallback where httptools or uvloop is not installed (uvloop has no Windows build).

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever
for a request's headers or body, so a few hundred clients that trickle or stall them
hold their sockets open indefinitely. :class:`DeadlineHttpToolsProtocol` (and
:class:`DeadlineH11Protocol`, the same logic on h11) adds, per connection:

* a header deadline: the whole request head must arrive within ``header_timeout`` of
  its first byte (of the connection's opening, for a fresh connection);
* a body deadline: no gap between body bytes longer than ``body_idle_timeout``, and
  after that long a running average of at least ``body_min_rate`` bytes per second.

Both are protocol-level because only the protocol sees bytes arrive; an ASGI receive
wrapper would only see a stalled body once the app asks for it, and never a stalled
head. Neither runs while the app produces or streams its response, so long SSE replies
(and upgraded WebSockets) are untouched, nor while the app has stopped reading (uvicorn's
flow control pauses the socket) or a client waits for its ``100 Continue``: the client is
not the one stalling then. When that ends, the client has a whole body deadline from the
first check that finds it over (else a ``100 Continue`` sent just before a check would
leave it no time to start its body). An expired request that has sent something and got
no response yet is answered ``408`` with the error envelope, then the connection is closed.

Upgraded WebSockets run on :class:`GatewayWebSocketProtocol`, uvicorn's own with one
change: when the app has finished with a connection whose client is not reading (its
write buffer is over the high-water mark), the connection is aborted, not closed. A
close waits for the buffer to drain, so a client that keeps the socket open and never
reads would otherwise keep the megabytes queued for it (a realtime session's answers)
for as long as it likes.

The deadlines travel on the uvicorn ``Config`` (``gateway_deadlines``), not in a class
made per configuration, so the protocol classes stay importable by name and a config
pickled into worker processes keeps them.
"""

from __future__ import annotations

import asyncio
import importlib.util
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .settings import Settings
from .streaming import DISCONNECT_WATCH, DisconnectWatch

log = structlog.get_logger(__name__)

HAS_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None

_HEADERS = 1  # phases of the connection's current request; None: nothing to time
_BODY = 2


@dataclass(frozen=True)
class Deadlines:
    header_timeout: float = 10.0
    body_idle_timeout: float = 10.0
    body_min_rate: float = 1024.0  # bytes per second; 0 turns the rate check off


def _timeout_response(message: str) -> bytes:
    body = msgspec.json.encode(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "request_timeout",
            }
        }
    )
    head = (
        b"HTTP/1.1 408 Request Timeout\r\n"
        b"content-type: application/json\r\n"
        b"connection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


class DeadlineMixin:
    """The deadline logic, over either uvicorn HTTP protocol: both keep ``cycle`` (with
    ``more_body``, ``response_started``/``_complete``, ``disconnected``,
    ``waiting_for_100_continue``, ``message_event``), ``flow``, ``transport`` and ``loop``,
    and call ``on_response_complete`` when a response ends."""

    # Supplied by the uvicorn protocol this is mixed into.
    config: uvicorn.Config
    cycle: Any
    flow: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadlines: Deadlines = getattr(self.config, "gateway_deadlines", None) or Deadlines()
        self._phase: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timed_cycle: Any = None
        self._started = 0.0  # when the current phase began
        self._last = 0.0  # last body bytes
        self._bytes = 0  # body bytes in this phase
        self._received_any = False
        self._excused = False  # the body deadline last expired in an exemption
        self._watch: DisconnectWatch | None = None  # the current request's

    # ------------------------------------------------------------------ protocol events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._phase = _HEADERS
        self._received_any = False
        self._started = self.loop.time()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._phase = None
        super().connection_lost(exc)  # type: ignore[misc]
        if self._watch is not None:
            self._watch.fire()  # the request learns its client left (see DisconnectWatch)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase is None:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                # The first bytes of the next request on this connection. Its timer is
                # armed below only if they do not already hold the whole head (the
                # usual case: one packet), which saves a timer per request.
                self._phase = _HEADERS
                self._started = self.loop.time()
                self._received_any = True
        elif phase == _HEADERS:
            self._received_any = True
        else:
            self._bytes += len(data)
            self._last = self.loop.time()
        super().data_received(data)  # type: ignore[misc]
        self._follow_cycle()
        if self._phase == _BODY or (self._phase == _HEADERS and self._timer is None):
            self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._follow_cycle()  # h11 may have started a pipelined request just now

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._cancel()
        self._phase = None
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    # ------------------------------------------------------------------ phases

    def _follow_cycle(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle is not self._timed_cycle:
            self._timed_cycle = cycle  # a new request's head is complete
            # Its task is created but has not run yet: the scope can still take this.
            self._watch = cycle.scope[DISCONNECT_WATCH] = DisconnectWatch(self.flow.resume_reading)
            if cycle.more_body and not cycle.response_complete:
                self._phase = _BODY
                self._started = self._last = self.loop.time()
                self._bytes = 0
                self._excused = False
            else:
                self._phase = None
                self._cancel()
        elif self._phase == _BODY and (
            not cycle.more_body or cycle.response_complete or cycle.disconnected
        ):
            self._phase = None
            self._cancel()

    def _arm(self) -> None:
        self._cancel()
        limits = self.deadlines
        if self._phase == _HEADERS:
            deadline = self._started + limits.header_timeout
        elif self._phase == _BODY:
            deadline = self._last + limits.body_idle_timeout
            if limits.body_min_rate > 0:
                deadline = min(
                    deadline,
                    self._started + limits.body_idle_timeout + self._bytes / limits.body_min_rate,
                )
        else:
            return
        self._timer = self.loop.call_at(deadline, self._expire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        phase = self._phase
        if phase is None or self.transport.is_closing():
            return
        cycle = self._timed_cycle if phase == _BODY else None
        if cycle is not None and (
            self.flow.read_paused
            or cycle.waiting_for_100_continue
            or (self._excused and not self._bytes)
        ):
            # The app is not reading (or has not yet asked for the body a client holds
            # back for its 100 Continue): the client is not to blame. Count afresh. Once
            # that ends with nothing sent since, count afresh once more: it may have ended
            # an instant ago (the 100 Continue just sent), and the client gets a whole
            # deadline from then.
            self._excused = self.flow.read_paused or cycle.waiting_for_100_continue
            self._started = self._last = self.loop.time()
            self._bytes = 0
            self._arm()
            return
        what = "request headers" if phase == _HEADERS else "request body"
        log.warning(
            "request_timeout",
            phase="headers" if phase == _HEADERS else "body",
            client="%s:%d" % self.client if self.client else None,
            body_bytes=self._bytes if phase == _BODY else None,
        )
        answer = (phase == _HEADERS and self._received_any) or (
            cycle is not None and not cycle.response_started
        )
        if answer:
            self.transport.write(_timeout_response(f"Timed out waiting for the {what}."))
        if cycle is not None:
            cycle.keep_alive = False
            cycle.disconnected = True  # the app's receive() now answers http.disconnect
            cycle.message_event.set()
        self._phase = None
        self.transport.close()


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol; a finished connection whose client stopped reading
    is aborted, freeing what was queued for it (see the module notes)."""

    async def run_asgi(self) -> None:
        await super().run_asgi()
        if not self.writable.is_set():  # paused: the client has not read what was sent
            self.transport.abort()


class DeadlineH11Protocol(DeadlineMixin, H11Protocol):
    """The fallback where httptools is not installed."""


if HAS_HTTPTOOLS:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class DeadlineHttpToolsProtocol(DeadlineMixin, HttpToolsProtocol):
        """What ``serve`` runs: the deadlines over uvicorn's httptools (llhttp) parser."""


def protocol_class(parser: str = "auto") -> type[asyncio.Protocol]:
    """The deadline protocol over ``parser`` ("httptools", "h11" or "auto": httptools
    when installed)."""
    if parser == "h11" or (parser == "auto" and not HAS_HTTPTOOLS):
        return DeadlineH11Protocol
    return DeadlineHttpToolsProtocol


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration ``serve`` runs with (tests start servers through it too)."""
    server = settings.server
    options: dict[str, Any] = dict(
        host=server.host,
        port=server.port,
        http=protocol_class(),
        ws=GatewayWebSocketProtocol,
        loop="uvloop" if HAS_UVLOOP else "asyncio",
        timeout_keep_alive=server.keep_alive_timeout_seconds,
        limit_concurrency=server.max_connections or None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    options.update(overrides)
    config = uvicorn.Config(app, **options)
    config.gateway_deadlines = Deadlines(  # type: ignore[attr-defined]
        header_timeout=server.header_timeout_seconds,
        body_idle_timeout=server.body_idle_timeout_seconds,
        body_min_rate=server.body_min_bytes_per_second,
    )
    return config
