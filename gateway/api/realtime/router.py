"""``GET /v1/realtime?model=...`` upgraded to a WebSocket: the OpenAI Realtime GA contract.

Keys are checked before the upgrade by the app's key middleware (``Authorization``, or
the ``openai-insecure-api-key.<key>`` subprotocol browsers send); the ``realtime``
subprotocol a browser offers is answered. At most ``realtime.max_sessions`` sessions are
open at once (below ``server.max_connections``, so idle sessions can never take the
connection slots HTTP requests need); one more is answered with an ``error`` event and
closed with 1013 (try again later).

The socket is read by one task and written by another through an :class:`Outbox`
bounded in events and in bytes: a client that stops reading fills it, and after
``send_timeout_seconds`` the session is closed and every engine it held is freed.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import structlog
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from engines.base import Capability, EngineError

from ... import metrics
from ...errors import error_from_engine
from ...settings import RealtimeSettings
from .serving import RealtimeSession, SessionClosed

log = structlog.get_logger(__name__)

DEFAULT_MODEL = "gpt-realtime"
_OPEN = "realtime_sessions_open"  # app state: sessions open in this process
_TRY_AGAIN_LATER = 1013
_encoder = msgspec.json.Encoder()


class Outbox:
    """Encoded server events on their way to the socket. ``put`` waits while the queue
    holds ``send_queue_events`` events or ``send_queue_bytes`` bytes (one event bigger
    than that still goes alone); a wait over ``send_timeout_seconds`` means the client
    stopped reading, and every later ``put`` fails at once."""

    def __init__(self, limits: RealtimeSettings) -> None:
        self.limits = limits
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=limits.send_queue_events)
        self.bytes = 0  # queued or being written, not yet taken by the client's socket
        self.room = asyncio.Event()
        self.stalled = asyncio.Event()

    async def put(self, event: dict) -> None:
        if self.stalled.is_set():
            raise SessionClosed("the client stopped reading")
        text = _encoder.encode(event).decode()
        try:
            await asyncio.wait_for(self._put(text), self.limits.send_timeout_seconds)
        except asyncio.TimeoutError:
            self.stalled.set()
            raise SessionClosed("the client stopped reading") from None

    async def _put(self, text: str) -> None:
        while self.bytes and self.bytes + len(text) > self.limits.send_queue_bytes:
            self.room.clear()
            await self.room.wait()
        await self.queue.put(text)
        self.bytes += len(text)

    async def write_to(self, socket: WebSocket) -> None:
        while (text := await self.queue.get()) is not None:
            await socket.send_text(text)
            self.bytes -= len(text)
            self.room.set()
            del text  # an idle writer holds no event


async def _refuse(socket: WebSocket, error: EngineError, code: int, reason: str) -> None:
    event = {
        "type": "error",
        "event_id": "event_refused",
        "error": {"type": error.type, "code": error.code, "message": error.message,
                  "param": error.param, "event_id": None},
    }
    await socket.send_text(_encoder.encode(event).decode())
    await socket.close(code=code, reason=reason)


class SessionLimitReached(EngineError):
    status_code = 503
    type = "server_error"
    code = "session_limit_reached"


def _admit(socket: WebSocket) -> EngineError | None:
    """Why this session may not open (too many open, or an unknown model), or None."""
    settings = socket.app.state["settings"]
    limit = settings.realtime.max_sessions
    if socket.app.state.get(_OPEN, 0) >= limit:
        return SessionLimitReached(
            f"This gateway serves at most {limit} realtime sessions at once; try again later."
        )
    try:
        socket.app.state["registry"].check(_model(socket), Capability.CHAT)
    except EngineError as exc:
        error = error_from_engine(exc)
        error.param = "model"
        return error
    return None


def _model(socket: WebSocket) -> str:
    return socket.query_params.get("model") or DEFAULT_MODEL


@websocket("/v1/realtime", include_in_schema=False)
async def realtime(socket: WebSocket) -> None:
    offered = socket.scope.get("subprotocols") or []
    await socket.accept(subprotocols="realtime" if "realtime" in offered else None)
    refusal = _admit(socket)
    if refusal is not None:
        busy = isinstance(refusal, SessionLimitReached)
        await _refuse(socket, refusal, _TRY_AGAIN_LATER if busy else 1008,
                      "too many sessions" if busy else "unknown model")
        return
    state = socket.app.state
    state[_OPEN] = state.get(_OPEN, 0) + 1
    metrics.REALTIME_SESSIONS.inc()
    try:
        await _serve(socket)
    finally:
        state[_OPEN] -= 1
        metrics.REALTIME_SESSIONS.dec()


async def _serve(socket: WebSocket) -> None:
    settings = socket.app.state["settings"]
    outbox = Outbox(settings.realtime)
    session = RealtimeSession(socket.app.state["registry"], settings, _model(socket), outbox.put)
    writing = asyncio.create_task(outbox.write_to(socket))
    stalling = asyncio.create_task(outbox.stalled.wait())
    try:
        await session.start()
        while True:
            receiving = asyncio.ensure_future(socket.receive())
            done, _ = await asyncio.wait(
                {receiving, writing, stalling}, return_when=asyncio.FIRST_COMPLETED
            )
            if receiving not in done:  # the socket broke, or the client stopped reading
                receiving.cancel()
                break
            message = receiving.result()
            if message["type"] == "websocket.disconnect":
                break
            frame = message.get("text")
            if frame is None:
                frame = message.get("bytes") or b""
            await session.handle(frame)
    except (WebSocketDisconnect, SessionClosed):
        pass
    finally:
        await session.close()
        writing.cancel()
        stalling.cancel()
        with contextlib.suppress(BaseException):
            await writing
        with contextlib.suppress(BaseException):
            # Bounded: a close frame waits behind what a client that stopped reading
            # left unread (the server then aborts the connection: gateway/server.py).
            await asyncio.wait_for(socket.close(), 1.0)
