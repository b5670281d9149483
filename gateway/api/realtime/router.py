"""``GET /v1/realtime?model=...`` upgraded to a WebSocket: the OpenAI Realtime GA contract.

``?call_id=`` joins the session of a WebRTC call instead (calls.py).

``?intent=transcription`` opens a transcription session instead (as OpenAI does): its
``model``, if the query names one, is a transcription model (LiveKit names it there; the
Agents SDK and Pipecat name it in ``session.update``), and the key's policy is the same.

Keys are checked before the upgrade by the app's key middleware (``Authorization``, or
the ``openai-insecure-api-key.<key>`` subprotocol browsers send); the ``realtime``
subprotocol a browser offers is answered. The key's policy (gateway.policy) is applied at
the handshake as HTTP applies it per request: a model it may not use is refused as an
unknown one, and the open session holds one of its concurrent streams until it closes.
At most ``realtime.max_sessions`` sessions are
open at once (below ``server.max_connections``, so idle sessions can never take the
connection slots HTTP requests need); one more is answered with an ``error`` event and
closed with 1013 (try again later).

The socket is read by one task and written by another through an :class:`Outbox`, the
project's one pump (gateway.pump): the session never waits on its client. A client whose
unread events pass ``send_queue_bytes``, or whose socket takes no event for
``send_timeout_seconds``, has stopped reading: the session is closed and every engine it
held is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

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
from ...pump import Pump
from ...settings import RealtimeSettings
from . import events as ev
from .client_secrets import minted_config, start_minted
from .serving import RealtimeSession, SessionClosed

log = structlog.get_logger(__name__)

DEFAULT_MODEL = "gpt-realtime"
_OPEN = "realtime_sessions_open"  # app state: sessions open in this process
_TRY_AGAIN_LATER = 1013
_encoder = msgspec.json.Encoder()


class Outbox:
    """Encoded server events on their way to the socket (see the module notes)."""

    def __init__(self, limits: RealtimeSettings) -> None:
        self.limits = limits
        self.pump: Pump[str] = Pump(limits.send_queue_bytes)
        self.stalled = asyncio.Event()

    async def put(self, event: ev.ServerEvent) -> None:
        if self.stalled.is_set():
            raise SessionClosed("the client stopped reading")
        text = _encoder.encode(event).decode()
        room = self.pump.put(text, len(text))
        if not room or len(self.pump.items) > self.limits.send_queue_events:
            self._stall()

    def _stall(self) -> None:
        self.stalled.set()
        self.pump.take()  # what it will never read is let go at once
        self.pump.wake()
        raise SessionClosed("the client stopped reading")

    async def write_to(self, socket: WebSocket) -> None:
        while not self.stalled.is_set():
            if self.pump.items:
                await self._send(socket, self.pump.take())
            else:
                await self.pump.wait()

    async def _send(self, socket: WebSocket, texts: deque[str]) -> None:
        """Send, each within ``send_timeout_seconds``: a send that makes no progress that
        long means the client stopped reading. (Returns holding no event.)"""
        while texts:
            try:
                async with asyncio.timeout(self.limits.send_timeout_seconds):
                    await socket.send_text(texts.popleft())
            except TimeoutError:
                self.stalled.set()
                return


async def _refuse(socket: WebSocket, error: EngineError, code: int, reason: str) -> None:
    event = ev.Error(error=ev.ErrorDetail(
        type=error.type, code=error.code, message=error.message, param=error.param
    ))
    await socket.send_text(_encoder.encode(event).decode())
    await socket.close(code=code, reason=reason)


class SessionLimitReached(EngineError):
    status_code = 503
    type = "server_error"
    code = "session_limit_reached"


async def _admit(socket: WebSocket, policy: Policy) -> EngineError | None:
    """Why this session may not open (a model unknown or not the key's, the key's
    limits), or None: then the session holds one of its key's concurrent streams. A
    transcription session opened with no model is checked on the model it names later
    (or the default, when it first uses it): transcription_session.py."""
    try:
        model = _model(socket)
        if model is not None:
            capability = Capability.TRANSCRIPTION if _transcribes(socket) else Capability.CHAT
            socket.app.state["registry"].check(model, capability)
            policy.check_model(model)
        await policy.admit(stream=True)
    except EngineError as exc:
        error = error_from_engine(exc)
        if error.status_code == 404:
            error.param = "model"
        return error
    return None


def _transcribes(socket: WebSocket) -> bool:
    minted = minted_config(socket.scope)
    if minted is not None and minted.type is not None:
        return minted.type == "transcription"
    return socket.query_params.get("intent") == "transcription"


def _model(socket: WebSocket) -> str | None:
    """The model the session runs: for a transcription session, the one the query names
    (None: the default transcription model); otherwise the chat model: the query's, the
    client secret's, or gpt-realtime's by default."""
    named = socket.query_params.get("model") or None
    if _transcribes(socket):
        return named
    minted = minted_config(socket.scope)
    return named or (minted.model if minted is not None else None) or DEFAULT_MODEL


@websocket("/v1/realtime", include_in_schema=False)
async def realtime(socket: WebSocket) -> None:
    offered = socket.scope.get("subprotocols") or []
    await socket.accept(subprotocols="realtime" if "realtime" in offered else None)
    state = socket.app.state
    limit = state["settings"].realtime.max_sessions
    if state.get(_OPEN, 0) >= limit:
        busy = SessionLimitReached(
            f"This gateway serves at most {limit} realtime sessions at once; try again later."
        )
        await _refuse(socket, busy, _TRY_AGAIN_LATER, "session_limit_reached")
        return
    state[_OPEN] = state.get(_OPEN, 0) + 1  # taken before any await: the cap holds
    try:
        await _open(socket)
    finally:
        state[_OPEN] -= 1


async def _open(socket: WebSocket) -> None:
    call_id = socket.query_params.get("call_id")
    if call_id:  # a server beside a browser's WebRTC call: the call's session (calls.py)
        from .calls import join_call

        await join_call(socket, call_id)
        return
    policy = socket.app.state["policies"].of(owner_of(socket.scope))
    refusal = await _admit(socket, policy)
    if refusal is not None:
        # 1008 for what the key may not do; 1013 "try again later" for a limit or outage.
        retry = refusal.status_code == 429 or refusal.status_code >= 500
        await _refuse(socket, refusal, _TRY_AGAIN_LATER if retry else 1008,
                      (refusal.code or "refused")[:120])
        return
    metrics.REALTIME_SESSIONS.inc()
    try:
        await _serve(socket, policy)
    finally:
        metrics.REALTIME_SESSIONS.dec()
        with anyio.CancelScope(shield=True):  # a session that broke still frees its stream
            await policy.release(refund=False)


async def _serve(socket: WebSocket, policy: Policy) -> None:
    settings = socket.app.state["settings"]
    outbox = Outbox(settings.realtime)
    session = RealtimeSession(
        socket.app.state["registry"], settings, _model(socket), outbox.put, policy,
        transcription=_transcribes(socket),
    )
    writing = asyncio.create_task(outbox.write_to(socket))
    stalling = asyncio.create_task(outbox.stalled.wait())
    try:
        await start_minted(session, socket.scope)
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
