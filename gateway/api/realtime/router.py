"""``GET /v1/realtime?model=...`` upgraded to a WebSocket: the OpenAI Realtime GA contract.

Keys are checked before the upgrade by the app's key middleware (``Authorization``, or
the ``openai-insecure-api-key.<key>`` subprotocol browsers send); the ``realtime``
subprotocol a browser offers is answered. The key's per-key policy (gateway.policy) is
applied at the handshake: a model it may not use is refused as an unknown one, and the
open session holds one of its concurrent streams. The socket is read by one task and written by
another through a bounded queue: a client that stops reading fills it, and after
``send_timeout_seconds`` the session is closed and every engine it held is freed.
"""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import msgspec
import structlog
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from engines.base import Capability, EngineError

from ... import metrics
from ...auth import owner_of
from ...errors import error_from_engine
from ...policy import Policy
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
    # The key's policy, as HTTP builds one per request: a model it may not use reads as
    # unknown, and an open session holds one of its concurrent streams until it closes.
    policy = socket.app.state["policies"].of(owner_of(socket.scope))
    try:
        registry.check(model, Capability.CHAT)
        policy.check_model(model)
        await policy.admit(stream=True)
    except EngineError as exc:
        await _refuse(socket, exc)
        return
    try:
        await _serve(socket, registry, settings, model, policy)
    finally:
        with anyio.CancelScope(shield=True):  # a session that broke still frees its stream
            await policy.release(refund=False)


async def _refuse(socket: WebSocket, exc: EngineError) -> None:
    """The handshake's refusal: an ``error`` event the SDKs raise, then the close (1008
    for what the key may not do, 1013 "try again later" for a limit or an outage)."""
    error = error_from_engine(exc)
    await socket.send_text(
        _encoder.encode(
            {
                "type": "error",
                "event_id": "event_handshake",
                "error": {"type": error.type, "code": error.code, "message": error.message,
                          "param": error.param, "event_id": None},
            }
        ).decode()
    )
    retry = error.status_code == 429 or error.status_code >= 500
    await socket.close(code=1013 if retry else 1008, reason=(error.code or "refused")[:120])


async def _serve(socket: WebSocket, registry, settings, model: str, policy: Policy) -> None:
    limits = settings.realtime
    outbox: asyncio.Queue[dict | None] = asyncio.Queue(maxsize=limits.send_queue_events)

    stalled = asyncio.Event()

    async def send(event: dict) -> None:
        if stalled.is_set():
            raise SessionClosed("the client stopped reading")
        try:
            await asyncio.wait_for(outbox.put(event), limits.send_timeout_seconds)
        except asyncio.TimeoutError:
            stalled.set()
            raise SessionClosed("the client stopped reading") from None

    async def writer() -> None:
        while (event := await outbox.get()) is not None:
            await socket.send_text(_encoder.encode(event).decode())

    session = RealtimeSession(registry, settings, model, send, policy)
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
