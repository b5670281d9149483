"""The HTTP server: uvicorn, plus the header and body deadlines it does not have.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever
for a request's headers or body, so a few hundred clients that trickle or stall them
hold their sockets open indefinitely. :class:`DeadlineH11Protocol` adds, per connection:

* a header deadline: the whole request head must arrive within ``header_timeout`` of
  its first byte (of the connection's opening, for a fresh connection);
* a body deadline: no gap between body bytes longer than ``body_idle_timeout``, and
  after that long a running average of at least ``body_min_rate`` bytes per second.

Both are protocol-level because only the protocol sees bytes arrive; an ASGI receive
wrapper would only see a stalled body once the app asks for it, and never a stalled
head. Neither runs while the app produces or streams its response, so long SSE replies
(and upgraded WebSockets) are untouched, nor while the app has stopped reading (uvicorn's
flow control pauses the socket) or a client waits for its ``100 Continue``: the client is
not the one stalling then. An expired request that has sent something and got no
response yet is answered ``408`` with the error envelope, then the connection is closed.

The deadline protocol is an h11 subclass, so ``serve`` always uses h11 (httptools, if
installed, is not picked up).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import Settings

log = structlog.get_logger(__name__)


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


class DeadlineH11Protocol(H11Protocol):
    deadlines = Deadlines()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: str | None = None  # "headers", "body" or None (nothing to time)
        self._timer: asyncio.TimerHandle | None = None
        self._timed_cycle: Any = None
        self._started = 0.0  # when the current phase began
        self._last = 0.0  # last body bytes
        self._bytes = 0  # body bytes in this phase
        self._received_any = False

    # ------------------------------------------------------------------ protocol events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._phase = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase is None and (self.cycle is None or self.cycle.response_complete):
            self._start_headers()  # the first byte of the next request on this connection
        if self._phase == "headers":
            self._received_any = True
        elif self._phase == "body":
            self._bytes += len(data)
            self._last = self.loop.time()
        super().data_received(data)
        if self._phase == "body":
            self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        self._follow_cycle()

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._cancel()
        self._phase = None
        super().handle_websocket_upgrade(event)

    # ------------------------------------------------------------------ phases

    def _start_headers(self) -> None:
        self._phase = "headers"
        self._received_any = False
        self._started = self.loop.time()
        self._arm()

    def _follow_cycle(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle is not self._timed_cycle:
            self._timed_cycle = cycle  # a new request's head is complete
            if cycle.more_body and not cycle.response_complete:
                self._phase = "body"
                self._started = self._last = self.loop.time()
                self._bytes = 0
            else:
                self._phase = None
            self._arm()
        elif self._phase == "body" and (
            not cycle.more_body or cycle.response_complete or cycle.disconnected
        ):
            self._phase = None
            self._arm()

    def _arm(self) -> None:
        self._cancel()
        limits = self.deadlines
        if self._phase == "headers":
            deadline = self._started + limits.header_timeout
        elif self._phase == "body":
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
        cycle = self._timed_cycle if phase == "body" else None
        if cycle is not None and (self.flow.read_paused or cycle.waiting_for_100_continue):
            # The app is not reading (or has not yet asked for the body a client holds
            # back for its 100 Continue): the client is not to blame. Count afresh.
            self._started = self._last = self.loop.time()
            self._bytes = 0
            self._arm()
            return
        log.warning(
            "request_timeout",
            phase=phase,
            client="%s:%d" % self.client if self.client else None,
            body_bytes=self._bytes if phase == "body" else None,
        )
        answer = (phase == "headers" and self._received_any) or (
            cycle is not None and not cycle.response_started
        )
        if answer:
            what = "request headers" if phase == "headers" else "request body"
            self.transport.write(_timeout_response(f"Timed out waiting for the {what}."))
        if cycle is not None:
            cycle.keep_alive = False
            cycle.disconnected = True  # the app's receive() now answers http.disconnect
            cycle.message_event.set()
        self._phase = None
        self.transport.close()


def deadline_protocol(deadlines: Deadlines) -> type[DeadlineH11Protocol]:
    return type("GatewayH11Protocol", (DeadlineH11Protocol,), {"deadlines": deadlines})


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration ``serve`` runs with (tests start servers through it too)."""
    server = settings.server
    options: dict[str, Any] = dict(
        host=server.host,
        port=server.port,
        http=deadline_protocol(
            Deadlines(
                header_timeout=server.header_timeout_seconds,
                body_idle_timeout=server.body_idle_timeout_seconds,
                body_min_rate=server.body_min_bytes_per_second,
            )
        ),
        timeout_keep_alive=server.keep_alive_timeout_seconds,
        limit_concurrency=server.max_connections or None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)
