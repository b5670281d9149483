"""``GET /v1/realtime?model=...`` upgraded to a WebSocket: the OpenAI Realtime GA contract.

Keys are checked before the upgrade by the app's key middleware (``Authorization``, or
the ``openai-insecure-api-key.<key>`` subprotocol browsers send); the ``realtime``
subprotocol a browser offers is answered. The socket is read by one task and written by
another through a bounded queue: a client that stops reading fills it, and after
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
from .serving import RealtimeSession, SessionClosed

log = structlog.get_logger(__name__)

DEFAULT_MODEL = "gpt-realtime"
_encoder = msgspec.json.Encoder()


@websocket("/v1/realtime", include_in_schema=False)
async def realtime(socket: WebSocket) -> None:
    registry = socket.app.state["registry"]
    settings = socket.app.state["settings"]
    offered = socket.scope.get("subprotocols") or []
    await socket.accept(subprotocols="realtime" if "realtime" in offered else None)
    model = socket.query_params.get("model") or DEFAULT_MODEL
    try:
        registry.check(model, Capability.CHAT)
    except EngineError as exc:
        error = error_from_engine(exc)
        await socket.send_text(
            _encoder.encode(
                {
                    "type": "error",
                    "event_id": "event_model",
                    "error": {"type": error.type, "code": error.code, "message": error.message,
                              "param": "model", "event_id": None},
                }
            ).decode()
        )
        await socket.close(code=1008, reason="unknown model")
        return

    limits = settings.realtime
    outbox: asyncio.Queue[dict | None] = asyncio.Queue(maxsize=limits.send_queue_events)

    stalled = asyncio.Event()

    async def send(event: dict) -> None:
        if stalled.is_set():
            raise SessionClosed("the client stopped reading")
        # Not wait_for: on Python 3.11 it swallows a cancellation that arrives once the put
        # is done but before wait_for resumes, and a response cancelled there (barge-in,
        # response.cancel, the socket closing) ran on to its end, holding the engines.
        try:
            async with asyncio.timeout(limits.send_timeout_seconds):
                await outbox.put(event)
        except TimeoutError:
            stalled.set()
            raise SessionClosed("the client stopped reading") from None

    async def writer() -> None:
        while (event := await outbox.get()) is not None:
            await socket.send_text(_encoder.encode(event).decode())

    session = RealtimeSession(registry, settings, model, send)
    metrics.REALTIME_SESSIONS.inc()
    writing = asyncio.create_task(writer())
    stalling = asyncio.create_task(stalled.wait())
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
        metrics.REALTIME_SESSIONS.dec()
        await session.close()
        writing.cancel()
        stalling.cancel()
        with contextlib.suppress(BaseException):
            await writing
        with contextlib.suppress(BaseException):
            await socket.close()
