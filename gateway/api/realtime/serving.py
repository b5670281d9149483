"""One realtime session: the GA event protocol over the same engines as chat.

The session knows nothing of WebSockets or Litestar: it takes decoded text frames
(:meth:`RealtimeSession.handle`) and hands server events (dicts) to an async ``send``
callback, which the router backs with a bounded queue. Heard audio goes through the
turn detector (Silero) into the input buffer; a committed buffer becomes a user item
that the recogniser transcribes in the background; a response turns the conversation
into a :class:`~engines.chat.ChatRequest`, streams the chat engine's text, tool calls
and (for audio output) sentence-by-sentence speech, and can be cancelled at any point:
by ``response.cancel`` or by the user speaking over it (barge-in).

A transcription session (``?intent=transcription``) is this session with
``config.type == "transcription"``: it hears and transcribes, and never answers
(:mod:`.transcription_session`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import msgspec
import structlog

from adapters.limits import BudgetExceeded, json_depth
from engines.base import EngineError
from engines.registry import ModelRegistry

from ...errors import InvalidRequest, error_from_engine, error_from_msgspec
from ...policy import UNLIMITED, Policy
from ...settings import Settings
from . import events as ev
from . import protocol as p
from .conversation import Config, Item, Response, event_id_of, new_id
from .input_audio import InputAudio
from .items import ConversationItems
from .response import Responses
from .session_config import SessionConfigEvents
from .speculation import SpeculativeReplies
from .transcription_session import TranscriptionSession, transcription_config

log = structlog.get_logger(__name__)

Send = Callable[[ev.ServerEvent], Awaitable[None]]


_id = new_id


async def _discard(event: ev.ServerEvent) -> None:
    return None


class SessionClosed(Exception):
    """The client stopped reading (its send buffer stayed full) or went away."""


# ---------------------------------------------------------------------- the session


class RealtimeSession(
    SessionConfigEvents,
    InputAudio,
    SpeculativeReplies,
    ConversationItems,
    Responses,
    TranscriptionSession,
):
    """The session's state, and the dispatch of client events to the modules that
    handle each family (session_config, input_audio, items, response)."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        model: str | None,
        send: Send,
        policy: Policy = UNLIMITED,
        *,
        transcription: bool = False,
    ) -> None:
        """``model``: the chat model; for a ``transcription`` session, the transcription
        model the handshake named, or None for the default."""
        self.registry = registry
        self.settings = settings
        # The key's limits, admitted at the handshake (the session holds one of its
        # concurrent streams); each response is counted as a request of the key.
        self.policy = policy
        self.limits = settings.realtime
        self._send = send
        self.id = _id("sess")
        self.config = transcription_config(model) if transcription else Config(model=model)
        self.items: dict[str, Item] = {}
        self.response: Response | None = None
        self.expires_at = int(time.time()) + 3600
        self._transcribing: set[asyncio.Task] = set()  # items' transcriptions not yet done
        self._reset_input()
        self._speech_stopped_at: float | None = None
        self._speech_ended_at: float | None = None

    # ------------------------------------------------------------------ plumbing

    async def send(self, event: ev.ServerEvent) -> None:
        await self._send(event)

    async def error(self, exc: EngineError, event_id: str | None = None) -> None:
        exc = error_from_engine(exc)
        await self.send(ev.Error(error=ev.ErrorDetail(
            type=exc.type, code=exc.code, message=exc.message, param=exc.param,
            event_id=event_id,
        )))


    async def start(self) -> None:
        await self.send(ev.SessionCreated(session=self.session_wire()))

    async def configure(self, config: p.SessionConfig) -> None:
        """Apply ``config`` as a ``session.update`` would, checked the same way, but
        silently: the defaults a client secret was minted with, before ``session.created``."""
        send, self._send = self._send, _discard
        try:
            await self._update(p.SessionUpdate(session=config))
        finally:
            self._send = send

    async def close(self) -> None:
        """The socket is gone: stop every task so no engine stays held for it."""
        tasks = list(self._transcribing)
        self._hearing.cancel()
        await self._stop_speculative_reply()
        if self.response is not None and self.response.task is not None:
            tasks.append(self.response.task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:  # noqa: BLE001 - closing anyway
                pass
        self._forget()

    def _forget(self) -> None:
        """Let go of the audio and items now. The session's objects refer to each other
        (tasks, callbacks), so without this what they hold waits for the collector's
        next full pass, which a busy gateway may not make for minutes."""
        self.items.clear()
        self.buffer = []
        self.buffered = 0
        self.response = None

    # ------------------------------------------------------------------ dispatch

    async def handle(self, frame: str | bytes) -> None:
        """One client event. Bad events get an ``error`` naming them; nothing ends the session."""
        event = await self._decode(frame.encode() if isinstance(frame, str) else frame)
        if event is None:
            return
        try:
            await self._dispatch(event)
        except EngineError as exc:
            await self.error(exc, event.event_id)

    async def _decode(self, data: bytes) -> Any | None:
        """The event, or None once an ``error`` has said why not. The same order and budgets
        as an HTTP body (gateway/json_body.py): size and nesting on the raw bytes, then
        shape, then the struct's own ``check_input`` (text lengths, tool schemas)."""
        try:
            self._check_frame(data)
            event = p.decoder.decode(data)
        except msgspec.ValidationError as exc:
            await self.error(error_from_msgspec(exc), event_id_of(data))
            return None
        except (msgspec.DecodeError, RecursionError):
            await self.error(InvalidRequest("The event is not valid JSON.", code="invalid_json"))
            return None
        except InvalidRequest as exc:
            await self.error(exc)
            return None
        check = getattr(event, "check_input", None)
        try:
            if check is not None:
                check(self.settings.limits)
        except BudgetExceeded as exc:
            refusal = InvalidRequest(exc.message, param=exc.param, code=exc.code)
            await self.error(refusal, event.event_id)
            return None
        return event

    def _check_frame(self, data: bytes) -> None:
        if len(data) > self.limits.max_event_bytes:
            raise InvalidRequest(
                f"The event is {len(data)} bytes; the limit is {self.limits.max_event_bytes}.",
                code="event_too_large",
            )
        depth = self.settings.limits.max_json_depth
        # Checked before decoding: a deeply nested frame would recurse in the decoder.
        if json_depth(data, depth) > depth:
            raise InvalidRequest(
                f"The event nests arrays and objects more than {depth} levels deep.",
                code="invalid_json",
            )

    async def _dispatch(self, event: Any) -> None:
        """Each client event to the module of its family."""
        handlers = {
            p.SessionUpdate: self._update,
            p.AudioAppend: self._append,
            p.AudioCommit: self._commit_manually,
            p.AudioClear: self._clear_input,
            p.OutputAudioClear: self._clear_output,
            p.ItemCreate: self._create_item,
            p.ItemRetrieve: self._retrieve_item,
            p.ItemDelete: self._delete_item,
            p.ItemTruncate: self._truncate,
            p.ResponseCreate: self.create_response,
            p.ResponseCancel: self._cancel,
        }
        self._check_event_kind(event)
        await handlers[type(event)](event)


    # ------------------------------------------------------------------ input audio


    # ------------------------------------------------------------------ items
