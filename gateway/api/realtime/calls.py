"""WebRTC calls: ``POST /v1/realtime/calls`` (an SDP offer in, the answer out) and
``POST /v1/realtime/calls/{call_id}/hangup``. OpenAI's browser transport, what
``@openai/agents-realtime`` uses by default in a browser (with an ``ek_`` client secret).

A call is one more door into the same :class:`~.serving.RealtimeSession` as the
WebSocket (router.py), under the same per-key policy, session cap and budgets:

* the ``oai-events`` data channel carries the WebSocket's client and server events,
  through the same bounded :class:`~.router.Outbox`;
* the caller's microphone (Opus over RTP) is what ``input_audio_buffer.append`` is on the
  WebSocket: heard through the same turn detector, so server VAD and barge-in work alike;
* the session's spoken audio goes out as RTP instead of ``response.output_audio.delta``
  events (OpenAI sends no audio deltas over WebRTC). Since the gateway plays it, it says
  when a response's audio starts and stops playing (``output_audio_buffer.started`` /
  ``stopped``), and on barge-in or the client's ``output_audio_buffer.clear`` drops what
  has not been played (``output_audio_buffer.cleared``) and truncates the item to what
  was heard, as a WebSocket client does with ``conversation.item.truncate``.

Client events and microphone audio go through one queue to the session, in arrival order,
as the WebSocket's single read loop feeds it. A WebSocket opened with ``?call_id=``
(router.py) joins the call: it gets the same server events and its client events join the
queue (a server's tool handling beside a browser).

The call ends on hangup, when the peer closes (DTLS close, connection failed), when its
address refuses what the gateway sends (ICMP port unreachable: its socket closed, a killed
browser) and it has sent nothing for 0.1 s, when its microphone has sent no RTP for
``webrtc.peer_timeout_seconds`` (a vanished browser or network: a browser's microphone
track sends a packet every 20 ms, silence too), or
when it never connects within ``connect_timeout_seconds``; its session is then closed and
the key's stream given back. Calls live in the process that answered them: hangup and
``?call_id=`` must reach that replica (a load balancer's affinity on the call id).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import secrets
import time
from typing import Any

import anyio
import msgspec
import numpy as np
import structlog
from litestar import Request, Response, post
from litestar.datastructures import UploadFile
from litestar.params import FromPath

from adapters.audio.pcm import StreamResampler
from adapters.realtime.audio import decode_wire, wire_rate
from engines.base import Capability, EngineError

from ... import metrics
from ...auth import owner_of
from ...errors import InvalidRequest, NotFound, error_responses
from ...policy import Policy, policy_of
from . import events as ev
from . import protocol as p
from .client_secrets import DEFAULT_MODEL, minted_config
from .router import _OPEN, Outbox, SessionLimitReached
from .serving import RealtimeSession, SessionClosed

log = structlog.get_logger(__name__)

CALLS = "realtime_calls"  # app state: call id -> Call, in this process
CHANNEL = "oai-events"
_INBOX_LIMIT = 3000  # queued client events and 20 ms audio frames: a minute of audio
_REFUSED_SILENCE = 0.1  # seconds without a packet after a refusal: the peer is gone
_CHANNEL_BUFFER = 1 << 20  # bytes the data channel may hold unsent before writes wait


class _Kind(msgspec.Struct):
    type: str = ""


_kind = msgspec.json.Decoder(_Kind)


def _is_clear(frame: str | bytes) -> bool:
    """Whether a client event is ``output_audio_buffer.clear`` (the call's to act on too)."""
    try:
        return _kind.decode(frame).type == "output_audio_buffer.clear"
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False


class ChannelSink:
    """The data channel as the Outbox's socket: a write waits while the channel holds
    more than it can send (the Outbox's send timeout then drops a peer that stalls).

    A data channel message has a size limit the peer sets (browsers: 256 KiB) where a
    WebSocket frame has none: an event above it (an item retrieved with its audio) is
    answered with an ``error`` saying so, and the call goes on."""

    def __init__(self, channel, max_bytes: int) -> None:
        self.channel = channel
        self.max_bytes = max_bytes

    async def send_text(self, text: str) -> None:
        while self.channel.bufferedAmount > _CHANNEL_BUFFER:
            await asyncio.sleep(0.01)
        if self.channel.readyState != "open":
            raise SessionClosed("the data channel closed")
        if len(text.encode()) > self.max_bytes:
            text = _too_large(text, self.max_bytes)
        self.channel.send(text)


def _too_large(text: str, limit: int) -> str:
    kind = _kind.decode(text).type
    error = ev.Error(error=ev.ErrorDetail(
        type="invalid_request_error", code="event_too_large", param=None,
        message=f"The {kind} event is larger than the data channel's {limit} byte messages; "
        "retrieve it over a WebSocket joined to the call (?call_id=).",
    ))
    return msgspec.json.encode(error).decode()


class Call:
    """One WebRTC call: its peer connection, its session, and the listeners of its events."""

    def __init__(self, request: Request, policy: Policy, model: str, transcription: bool) -> None:
        from .webrtc import IcePolicy, OutputTrack, peer_connection

        state = request.app.state
        self.app_state = state
        self.settings = state["settings"]
        self.id = "rtc_" + secrets.token_hex(12)
        self.owner = owner_of(request.scope)
        self.policy = policy
        self.ice = IcePolicy.of(self.settings.webrtc)
        self.pc = peer_connection(self.settings.webrtc)
        self.track = OutputTrack(self._started, self._stopped)
        self.outboxes: list[Outbox] = [Outbox(self.settings.realtime)]
        self.inbox: asyncio.Queue[str | bytes | np.ndarray] = asyncio.Queue(_INBOX_LIMIT)
        self.session = RealtimeSession(
            state["registry"], self.settings, model, self.send, policy,
            transcription=transcription,
        )
        self.tasks: list[asyncio.Task] = []
        self.closed = asyncio.Event()
        self.last_packet: float | None = None
        self.refused_at: float | None = None  # when the peer's address last refused a packet
        self._resamplers: dict[str, StreamResampler] = {}

    # ------------------------------------------------------------------ set-up

    async def answer(self, offer: str, minted: p.SessionConfig | None) -> str:
        from aiortc import RTCSessionDescription

        from .webrtc import hold_ice, watch_refusals

        pc = self.pc
        pc.on("datachannel", self._on_channel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        await pc.setRemoteDescription(
            RTCSessionDescription(sdp=self.ice.filter_sdp(offer), type="offer")
        )
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            raise InvalidRequest("The offer has no audio.", param="sdp")
        pc.addTrack(self.track)
        hold_ice(pc, self.ice)
        await pc.setLocalDescription(await pc.createAnswer())
        watch_refusals(pc, self._refused)
        if minted is not None:
            try:
                await self.session.configure(minted)
            except EngineError as exc:
                await self.session.error(exc)
        await self.session.start()  # waits in the outbox until the channel opens
        self.tasks.append(asyncio.create_task(self._serve()))
        self.tasks.append(asyncio.create_task(self._watch()))
        return self.ice.announce(pc.localDescription.sdp)

    def _on_channel(self, channel) -> None:
        if channel.label != CHANNEL:
            return
        channel.on("message", self._received)
        # (aiortc keeps the peer's a=max-message-size on the SCTP transport.)
        sink = ChannelSink(channel, self.pc.sctp._remote_max_message_size or 65_536)
        outbox = self.outboxes[0]

        def write() -> None:
            self.tasks.append(asyncio.create_task(self._write(outbox, sink)))

        if channel.readyState == "open":
            write()
        else:
            channel.on("open", write)

    def _on_track(self, track) -> None:
        from .webrtc import read_microphone, watch_rtp

        if track.kind == "audio":
            for transceiver in self.pc.getTransceivers():
                if transceiver.receiver.track is track:
                    watch_rtp(transceiver.receiver, self._packet)
            self.tasks.append(asyncio.create_task(
                read_microphone(track, self._heard, self._packet)
            ))

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            asyncio.ensure_future(self.close("peer_closed"))

    # ------------------------------------------------------------------ the session's door

    def _received(self, message: str | bytes) -> None:
        self._enqueue(message)

    async def _heard(self, samples: np.ndarray) -> None:
        self._enqueue(samples)

    def _packet(self) -> None:
        self.last_packet = time.monotonic()

    def _refused(self) -> None:
        self.refused_at = time.monotonic()

    def _enqueue(self, item: Any) -> None:
        try:
            self.inbox.put_nowait(item)
        except asyncio.QueueFull:  # the session is this far behind: its peer waits on it
            log.warning("call_inbox_full", call=self.id)

    def join(self, frame: str | bytes) -> None:
        """A client event from a WebSocket joined to the call (router.py)."""
        self._enqueue(frame)

    async def _serve(self) -> None:
        """One reader, as on the WebSocket: client events and audio in arrival order."""
        try:
            while True:
                item = await self.inbox.get()
                if isinstance(item, np.ndarray):
                    await self.session.hear_call_audio(item)
                    continue
                if _is_clear(item):
                    await self._clear()
                await self.session.handle(item)  # a bad frame gets its error event there
        except SessionClosed:
            pass
        except Exception:  # noqa: BLE001 - a broken call still frees what it holds
            log.exception("call_failed", call=self.id)
        asyncio.ensure_future(self.close("session_ended"))

    async def send(self, event: ev.ServerEvent) -> None:
        """The session's events: audio to the track, the rest to every listener."""
        if isinstance(event, ev.OutputAudioDelta):
            self._play(event)
            return
        await self._broadcast(event)
        if isinstance(event, ev.SpeechStarted):
            detection = self.session.config.turn_detection
            if detection is not None and detection.interrupt_response is not False:
                await self._clear()
        elif isinstance(event, ev.ResponseDone):
            self.track.finish(event.response["id"])

    async def _broadcast(self, event: ev.ServerEvent) -> None:
        for outbox in list(self.outboxes):
            try:
                await outbox.put(event)
            except SessionClosed:
                if outbox is self.outboxes[0]:
                    raise  # the caller stopped reading: the call ends
                self.outboxes.remove(outbox)

    def _play(self, event: ev.OutputAudioDelta) -> None:
        from .webrtc import RATE

        fmt = self.session.config.output_format
        if self.session.response is not None:
            fmt = self.session.response.output_format
        resampler = self._resamplers.setdefault(fmt, StreamResampler(wire_rate(fmt), RATE))
        samples = resampler.push(decode_wire(fmt, base64.b64decode(event.delta)))
        self.track.push(event.response_id, event.item_id, samples)

    def _started(self, response_id: str) -> None:
        self._later(ev.OutputAudioBufferStarted(response_id=response_id))

    def _stopped(self, response_id: str) -> None:
        self._later(ev.OutputAudioBufferStopped(response_id=response_id))

    def _later(self, event: ev.ServerEvent) -> None:
        """An event from the track's clock, sent from the loop rather than inside it."""
        task = asyncio.ensure_future(self._broadcast(event))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _clear(self) -> None:
        """Drop the audio not yet played, say so, and keep in the item what was heard."""
        from .webrtc import RATE

        cleared = self.track.clear()
        if cleared is None:
            return
        response_id, item_id, played = cleared
        await self._broadcast(ev.OutputAudioBufferCleared(response_id=response_id))
        if item_id and item_id in self.session.items:
            truncate = p.ItemTruncate(
                item_id=item_id, content_index=0, audio_end_ms=played * 1000 // RATE
            )
            with contextlib.suppress(EngineError):
                await self.session._truncate(truncate)

    # ------------------------------------------------------------------ its end

    async def _write(self, outbox: Outbox, sink: ChannelSink) -> None:
        with contextlib.suppress(SessionClosed):
            await outbox.write_to(sink)
        if outbox.stalled.is_set():
            await self.close("peer_stopped_reading")

    async def _watch(self) -> None:
        """Hang up a peer that never connects or has vanished (see the module notes)."""
        webrtc = self.settings.webrtc
        begun = woke = time.monotonic()
        step = min(0.05, webrtc.peer_timeout_seconds / 4)
        while not self.closed.is_set():
            await asyncio.sleep(step)
            now, slept = time.monotonic(), time.monotonic() - woke
            woke = now
            if self.last_packet is None:
                if now - begun > webrtc.connect_timeout_seconds:
                    asyncio.ensure_future(self.close("peer_never_connected"))
                    return
            elif slept > 3 * step and now - self.last_packet < 4 * webrtc.peer_timeout_seconds:
                # The loop itself was held up (a busy machine): packets that came meanwhile
                # wait in the socket, unread. Judge the peer once they have been.
                continue
            elif (self.refused_at is not None and self.refused_at > self.last_packet
                  and now - self.last_packet > _REFUSED_SILENCE):
                # Its socket is closed (refused) and it has sent nothing since.
                asyncio.ensure_future(self.close("peer_gone"))
                return
            elif now - self.last_packet > webrtc.peer_timeout_seconds:
                asyncio.ensure_future(self.close("peer_vanished"))
                return

    async def close(self, reason: str) -> None:
        """End the call once: its session's work stopped, its peer closed, its stream and
        session slot given back."""
        if self.closed.is_set():
            return
        self.closed.set()
        log.info("call_closed", call=self.id, reason=reason)
        with anyio.CancelScope(shield=True):
            self.app_state[CALLS].pop(self.id, None)
            current = asyncio.current_task()
            for task in self.tasks:
                if task is not current:
                    task.cancel()
            try:
                await self.session.close()
                self.track.stop()
                await self.pc.close()
            finally:
                self.app_state[_OPEN] -= 1
                metrics.REALTIME_SESSIONS.dec()
                await self.policy.release(refund=False)


# ---------------------------------------------------------------------- the routes


async def _offer(request: Request) -> tuple[str, p.SessionConfig | None]:
    """The SDP offer and the session config sent beside it (the multipart form)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/sdp":
        return (await request.body()).decode("utf-8", "replace"), None
    if kind != "multipart/form-data":
        raise InvalidRequest(
            "Send the SDP offer as application/sdp, or as the multipart field 'sdp'.",
            code="unsupported_content_type",
        )
    form = await request.form()
    sdp, session = form.get("sdp"), form.get("session")
    if sdp is None:
        raise InvalidRequest("The form has no 'sdp' field.", param="sdp")
    if isinstance(sdp, UploadFile):
        sdp = (await sdp.read()).decode("utf-8", "replace")
    if isinstance(session, UploadFile):
        session = await session.read()
    if not session:
        return sdp, None
    try:
        config = msgspec.json.decode(session, type=p.SessionConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidRequest(f"The session is not a session config: {exc}", param="session")
    config.check_input(request.app.state["settings"].limits)
    return sdp, config


class WebRTCUnavailable(EngineError):
    status_code = 501
    type = "server_error"
    code = "webrtc_unavailable"


def _merged(minted: p.SessionConfig | None, sent: p.SessionConfig | None):
    """The call's start: the client secret's config, with what the request sent over it."""
    if minted is None or sent is None:
        return sent or minted
    merged = msgspec.structs.asdict(minted)
    merged.update({k: v for k, v in msgspec.structs.asdict(sent).items() if v is not None})
    return p.SessionConfig(**merged)


@post(
    "/v1/realtime/calls",
    status_code=201,
    summary="Create a realtime call over WebRTC",
    tags=["realtime"],
    responses=error_responses(400, 401, 404, 429, 503),
)
async def create_call(request: Request) -> Response:
    """An SDP offer in; the SDP answer out, with the call's id in ``Location``."""
    if importlib.util.find_spec("aiortc") is None:
        raise WebRTCUnavailable(
            "WebRTC calls need the gateway's webrtc extra (pip install '.[webrtc]')."
        )
    sdp, sent = await _offer(request)
    if "m=audio" not in sdp:
        raise InvalidRequest("The SDP offer has no audio.", param="sdp")
    config = _merged(minted_config(request.scope), sent)
    transcription = config is not None and config.type == "transcription"
    model = None if transcription else ((config.model if config else None) or DEFAULT_MODEL)
    state = request.app.state
    if model is not None:
        state["registry"].check(model, Capability.CHAT)
    policy = _taken_over(request)
    if model is not None:
        policy.check_model(model)
    limit = state["settings"].realtime.max_sessions
    if state.get(_OPEN, 0) >= limit:
        raise SessionLimitReached(
            f"This gateway serves at most {limit} realtime sessions at once; try again later."
        )
    state[_OPEN] = state.get(_OPEN, 0) + 1
    metrics.REALTIME_SESSIONS.inc()
    call = Call(request, policy, model, transcription)
    state.setdefault(CALLS, {})[call.id] = call
    try:
        answer = await call.answer(sdp, config)
    except BaseException:
        await call.close("refused")
        raise
    return Response(
        answer, status_code=201, media_type="application/sdp",
        headers={"location": f"/v1/realtime/calls/{call.id}"},
    )


def _taken_over(request: Request) -> Policy:
    """The request's policy, whose stream the call now holds: the call outlives the
    request, so the rate-limit middleware must not give the stream back when it ends."""
    policy = policy_of(request.scope)
    held = Policy(policy.owner, policy.key, policy.backend, policy.admission,
                  fail_open=policy.fail_open)
    policy.admission = None
    return held


def call_of(state, call_id: str, owner: str) -> Call:
    """The open call ``call_id`` of ``owner``; another key's is as unknown as none."""
    call = state.get(CALLS, {}).get(call_id)
    if call is None or call.owner != owner:
        raise NotFound(f"No call with id '{call_id}'.", param="call_id", code="call_not_found")
    return call


@post(
    "/v1/realtime/calls/{call_id:str}/hangup",
    status_code=200,
    summary="Hang up a realtime call",
    tags=["realtime"],
    responses=error_responses(401, 404),
)
async def hangup_call(request: Request, call_id: FromPath[str]) -> None:
    """End the call: its session closes and everything it held is freed."""
    await call_of(request.app.state, call_id, owner_of(request.scope)).close("hangup")


async def join_call(socket, call_id: str) -> None:
    """A WebSocket joined to call ``call_id`` (``/v1/realtime?call_id=``): it gets the
    call's server events from now on (a ``session.created`` first, with the session as it
    is) and its client events join the call's queue. It holds no stream of its own: the
    call does. It closes when the call ends; the call goes on when it closes."""
    from .router import _refuse

    try:
        call = call_of(socket.app.state, call_id, owner_of(socket.scope))
    except NotFound as exc:
        await _refuse(socket, exc, 1008, "call_not_found")
        return
    outbox = Outbox(call.settings.realtime)
    await outbox.put(ev.SessionCreated(session=call.session.session_wire()))
    call.outboxes.append(outbox)
    writing = asyncio.create_task(outbox.write_to(socket))
    ended = asyncio.create_task(call.closed.wait())
    try:
        while True:
            receiving = asyncio.ensure_future(socket.receive())
            done, _ = await asyncio.wait(
                {receiving, writing, ended}, return_when=asyncio.FIRST_COMPLETED
            )
            if receiving not in done:
                receiving.cancel()
                break
            message = receiving.result()
            if message["type"] == "websocket.disconnect":
                break
            call.join(message.get("text") or message.get("bytes") or b"")
    finally:
        with contextlib.suppress(ValueError):
            call.outboxes.remove(outbox)
        for task in (writing, ended):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(socket.close(), 1.0)
