"""A realtime response: what it is asked to do (the session's configuration, overridden by
``response.create``), the turn it runs, rendered as realtime server events, and its end.

The turn is :func:`gateway.turn.run_turn`, the same run a chat completion is: the same
engine events, the same sentence synthesis (audio leaves the moment it is encoded), the
same cancellation (closing the turn frees the chat model and stops the voice) and the
same per-key charges. What is realtime's own is here: conversation items for the output,
audio deltas cut fine enough for barge-in, and, for a reply cut short, a transcript of
only what was heard.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import TYPE_CHECKING

import structlog

from adapters.realtime.audio import bytes_per_second
from adapters.realtime.vad import RATE
from adapters.text.tokens import count_audio_tokens
from engines.base import EngineError
from engines.chat import (
    ChatMessage,
    ChatRequest,
    Finish,
    TextDelta,
    ToolCall,
    ToolCallArgsDelta,
    ToolCallStart,
    ToolSpec,
)
from engines.workers import open_admission

from ... import metrics
from ...errors import InvalidRequest, error_from_engine
from ...policy import RateLimitExceeded
from ...turn import AudioBytes
from ..chat.voice import SpokenReply
from . import events as ev
from . import protocol as p
from .conversation import Item, Response, check_rate, item_from_wire, new_id, tool_choice_of
from .feed import TurnFeed
from .speech import heard_transcript, realtime_speech

if TYPE_CHECKING:
    from .serving import RealtimeSession

log = structlog.get_logger(__name__)

_DELTA_BYTES_PCM = 9_600  # 200 ms of 24 kHz PCM per audio delta: fine-grained barge-in
_DELTA_BYTES_G711 = 1_600  # 200 ms of 8 kHz G.711


class ResponseRun:
    """One response's run, as the task the session cancels to stop it."""

    def __init__(
        self, session: "RealtimeSession", response: Response, pending: Item | None = None
    ) -> None:
        self.session = session
        self.response = response
        self.pending = pending  # a user item not yet committed (a speculative reply's)
        self.speaks = "audio" in response.modalities
        self.reply: SpokenReply | None = None
        self.message: Item | None = None
        self.calls: dict[int, Item] = {}
        self.finish: Finish | None = None

    # ------------------------------------------------------------------ the run

    async def run(self) -> None:
        response = self.response
        # The response's own admission to the engine queues, as an HTTP request has one
        # (engines.workers): refused while queues are full, never once it has begun.
        open_admission()
        try:
            await self._turn()
            response.status = "completed"
            if self.finish is not None and self.finish.reason == "length":
                response.status = "incomplete"
                response.details = {"type": "incomplete", "reason": "max_output_tokens"}
        except asyncio.CancelledError:
            if response.cancel_reason is None:  # the session itself is closing
                raise
            response.status = "cancelled"
            response.details = {"type": "cancelled", "reason": response.cancel_reason}
        except EngineError as exc:  # an engine fault, or the key out of budget
            await self._failed(error_from_engine(exc), exc.code or "engine_error")
        except Exception:  # noqa: BLE001 - a failed turn must not end the session
            log.exception("realtime response failed", response_id=response.id)
            await self._failed(None, "internal_error")
        finally:
            response.finishing = True
        await self._finish()

    async def _turn(self) -> None:
        session = self.session
        for task in [i.transcription for i in self._source() if i.transcription]:
            if not task.done():  # the words heard so far are the turn's input
                await asyncio.shield(task)
        self.response.heard_at = time.perf_counter()
        request = await self._request()
        feed = await session.adopt_speculation(request, self.voicing())
        if feed is None:
            await session.prefilled()
            feed = self.feed(request, session.policy)
        else:  # begun at the pause: the words were heard, and maybe more, before now
            self.response.heard_at = feed.heard_at
        self.reply = feed.reply
        try:
            async for event in feed.events():
                await self._render(event, feed)
        finally:
            await feed.stop()

    def voicing(self) -> tuple | None:
        """What voices this response's reply (None: it is not spoken)."""
        r = self.response
        return (r.voice, r.output_format, r.speed) if self.speaks else None

    def feed(self, request: ChatRequest, policy) -> TurnFeed:
        """Start this response's turn (see :mod:`.feed`)."""
        session, r = self.session, self.response
        reply = None
        if self.speaks:
            reply = realtime_speech(session.registry, session.settings.chat.speech_model,
                                    r.voice, r.output_format, r.speed, policy)
        return TurnFeed(session.registry, session.config.model, request, reply, policy)

    async def _render(self, event: object, feed: TurnFeed) -> None:
        if isinstance(event, TextDelta):
            if self.response.first_token_at is None:
                self.response.first_token_at = feed.first_token_at or time.perf_counter()
            await self._text(event.text)
        elif isinstance(event, AudioBytes):
            await self._audio(event.data)
        elif isinstance(event, ToolCallStart):
            await self._call_started(event)
        elif isinstance(event, ToolCallArgsDelta):
            await self._call_arguments(event)
        elif isinstance(event, Finish):
            self.finish = event

    async def _failed(self, error: EngineError | None, code: str) -> None:
        response = self.response
        response.status = "failed"
        kind = error.type if error is not None else "server_error"
        response.details = {"type": "failed", "error": {"type": kind, "code": code}}
        if error is not None:
            await self.session.error(error)
        else:
            await self.session.send(ev.Error(error=ev.ErrorDetail(
                type="server_error", code="internal_error", message="The response failed.",
                param=None,
            )))

    # ------------------------------------------------------------------ output items

    async def _add_output(self, item: Item) -> None:
        session, response = self.session, self.response
        index = len(response.output)
        response.output.append(item)
        previous = session._last_id()
        if response.conversation:
            session.items[item.id] = item
        await session.send(ev.OutputItemAdded(response_id=response.id, output_index=index,
                                              item=item.wire()))
        if response.conversation:
            await session.send(ev.ItemAdded(previous_item_id=previous, item=item.wire()))

    async def _open_message(self) -> Item:
        message = Item(id=new_id("item"), type="message", role="assistant", status="in_progress")
        message.format = self.response.output_format
        self.message = message
        await self._add_output(message)
        kind, field = ("audio", "transcript") if self.speaks else ("text", "text")
        message.content.append({"type": f"output_{kind}", field: ""})
        part = {"type": kind, field: ""}
        await self.session.send(ev.ContentPartAdded(**self._where(), part=part))
        return message

    def _where(self, item: Item | None = None) -> dict:
        item = item or self.message
        return {"response_id": self.response.id, "item_id": item.id,
                "output_index": self.response.output.index(item), "content_index": 0}

    async def _text(self, text: str) -> None:
        message = self.message or await self._open_message()
        part = message.content[0]
        if self.speaks:
            part["transcript"] += text
            await self.session.send(ev.OutputAudioTranscriptDelta(**self._where(), delta=text))
        else:
            part["text"] += text
            await self.session.send(ev.OutputTextDelta(**self._where(), delta=text))

    async def _audio(self, data: bytes) -> None:
        message = self.message or await self._open_message()
        response = self.response
        step = _DELTA_BYTES_PCM if response.output_format == "audio/pcm" else _DELTA_BYTES_G711
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            await self.session.send(ev.OutputAudioDelta(
                **self._where(), delta=base64.b64encode(piece).decode("ascii")
            ))
            message.out_audio += piece
            self._timed_audio()

    def _timed_audio(self) -> None:
        response, now = self.response, time.perf_counter()
        if response.first_audio_at is None:
            response.first_audio_at = now
            ended = response.speech_ended_at or response.speech_stopped_at
            if ended is not None:
                model = self.session.config.model
                metrics.REALTIME_VOICE_TO_VOICE.labels(model=model).observe(now - ended)
                self._observe_stages(ended, now)
        response.last_audio_at = now

    def _observe_stages(self, ended_at: float, sent_at: float) -> None:
        """Where the wait from the end of the user's words to this first audio went (see
        metrics.REALTIME_TURN_STAGES), each stage from the end of the one before. Work
        done before the turn was decided (a reply begun at the pause) waited for nothing:
        its stages count zero, and the stages still add up to the whole wait."""
        r, reply = self.response, self.reply
        points = [("decision", r.speech_stopped_at), ("heard", r.heard_at),
                  ("first_token", r.first_token_at),
                  ("first_sentence", reply.first_sentence_at if reply else None),
                  ("synthesis", reply.first_audio_at if reply else None), ("sent", sent_at)]
        if any(at is None for _, at in points):
            return
        model, previous, stages = self.session.config.model, ended_at, {}
        for stage, at in points:
            stages[stage] = max(0.0, at - previous)
            metrics.REALTIME_TURN_STAGES.labels(model=model, stage=stage).observe(stages[stage])
            previous = max(previous, at)
        # One line per turn: which stage a slow turn waited on, and for what piece.
        log.info("realtime turn answered", response_id=r.id, seconds=round(sent_at - ended_at, 3),
                 **{stage: round(value, 3) for stage, value in stages.items()},
                 first_piece=reply.first_piece)

    async def _call_started(self, event: ToolCallStart) -> None:
        for call in self.calls.values():
            if call.status == "in_progress":
                await self._close_call(call)
        item = Item(id=new_id("item"), type="function_call", status="in_progress",
                    call_id=event.id, name=event.name, arguments="")
        self.calls[event.index] = item
        await self._add_output(item)

    async def _call_arguments(self, event: ToolCallArgsDelta) -> None:
        item = self.calls[event.index]
        item.arguments += event.fragment
        await self.session.send(ev.FunctionCallArgumentsDelta(
            **self._in_call(item), delta=event.fragment
        ))

    async def _close_call(self, item: Item) -> None:
        item.status = "completed"
        await self.session.send(ev.FunctionCallArgumentsDone(
            **self._in_call(item), name=item.name, arguments=item.arguments
        ))

    def _in_call(self, item: Item) -> dict:
        return {"response_id": self.response.id, "item_id": item.id,
                "output_index": self.response.output.index(item), "call_id": item.call_id}

    # ------------------------------------------------------------------ the end

    async def _finish(self) -> None:
        session, response = self.session, self.response
        if self.message is not None:
            await self._close_message()
        for item in self.calls.values():
            if item.status == "in_progress" and response.status == "completed":
                await self._close_call(item)
        done = "completed" if response.status == "completed" else "incomplete"
        for item in response.output:
            item.status = done if item.status == "in_progress" else item.status
            await session.send(ev.OutputItemDone(
                response_id=response.id, output_index=response.output.index(item),
                item=item.wire(),
            ))
            if response.conversation and item.id in session.items:
                await session.send(ev.ItemDone(item=item.wire()))
        response.usage = self._usage()
        session.response = None
        await session.send(ev.ResponseDone(response=response.wire()))

    async def _close_message(self) -> None:
        message, response, reply = self.message, self.response, self.reply
        part = message.content[0]
        if self.speaks:
            if response.status in ("cancelled", "failed") and reply is not None:
                # Cut short: the transcript is what the sent audio said, not the plan. (An
                # answer stopped at max_output_tokens was voiced whole: its text stands.)
                part["transcript"] = heard_transcript(reply.marks, len(message.out_audio))
            message.marks = list(reply.marks) if reply is not None else []
            await self.session.send(ev.OutputAudioDone(**self._where()))
            await self.session.send(ev.OutputAudioTranscriptDone(
                **self._where(), transcript=part["transcript"]
            ))
            wire = {"type": "audio", "transcript": part["transcript"]}
        else:
            await self.session.send(ev.OutputTextDone(**self._where(), text=part["text"]))
            wire = {"type": "text", "text": part["text"]}
        await self.session.send(ev.ContentPartDone(**self._where(), part=wire))

    def _usage(self) -> dict:
        message, finish = self.message, self.finish
        audio_in = sum(len(i.audio) / RATE for i in self._source() if i.audio is not None)
        fmt = self.response.output_format
        audio_out = len(message.out_audio) / bytes_per_second(fmt) if message else 0.0
        a_in, a_out = count_audio_tokens(audio_in), count_audio_tokens(audio_out)
        text_in = finish.prompt_tokens if finish else 0
        text_out = finish.completion_tokens if finish else 0
        return {
            "total_tokens": text_in + a_in + text_out + a_out,
            "input_tokens": text_in + a_in,
            "output_tokens": text_out + a_out,
            "input_token_details": {"text_tokens": text_in, "audio_tokens": a_in,
                                    "cached_tokens": 0},
            "output_token_details": {"text_tokens": text_out, "audio_tokens": a_out},
        }

    # ------------------------------------------------------------------ the request

    def _source(self) -> list[Item]:
        """The items this response reads: the conversation (unless ``conversation:
        "none"``), then its own ``input``."""
        response = self.response
        items = list(self.session.items.values()) if response.conversation else []
        pending = self.pending
        if pending is not None and response.conversation and pending.id not in self.session.items:
            items.append(pending)  # (once committed, the item itself is there)
        return [i for i in items + (response.extra_input or []) if i not in response.output]

    async def _request(self) -> ChatRequest:
        response = self.response
        tools = [
            ToolSpec(name=t.name, description=t.description or "",
                     parameters=t.parameters or {"type": "object", "properties": {}})
            for t in response.tools
        ]
        limit = response.max_output_tokens
        messages, spoken = self._messages()
        if spoken is not None:
            messages = await self._with_audio_tokens(messages, *spoken)
        return ChatRequest(
            messages=_without_empty(messages),
            tools=tools,
            tool_choice=tool_choice_of(response.tool_choice, response.tools),
            max_tokens=None if limit == "inf" else int(limit),
            temperature=0.8,
        )

    def _messages(self) -> tuple[list[ChatMessage], tuple[int, Item] | None]:
        """The chat messages, and (its message's index, the item) of the last spoken user
        turn among them: an engine that reads speech hears that one as audio."""
        response = self.response
        messages = [ChatMessage("system", response.instructions)] if response.instructions else []
        spoken: tuple[int, Item] | None = None
        for item in self._source():
            if item.type == "message":
                role = "system" if item.role == "system" else item.role
                text = item.text()
                if item.role == "user" and item.audio is not None:
                    spoken = (len(messages), item)
                    messages.append(ChatMessage(role, text))
                elif text:
                    messages.append(ChatMessage(role, text))
            elif item.type == "function_call":
                _add_call(messages, ToolCall(id=item.call_id, name=item.name,
                                             arguments=item.arguments or "{}"))
            else:
                messages.append(ChatMessage("tool", item.output or "", tool_call_id=item.call_id))
        if spoken is not None and spoken[0] != _last_user(messages):
            spoken = None  # a spoken turn answered since is history: its transcript will do
        return messages, spoken

    async def _with_audio_tokens(
        self, messages: list[ChatMessage], index: int, item: Item
    ) -> list[ChatMessage]:
        """Step-Audio reads the current spoken turn as audio tokens, not as its transcript:
        that item's own message is replaced, whichever items the response reads."""
        session = self.session
        async with session.registry.chat(session.config.model) as engine:
            if not engine.accepts_audio_tokens:
                return messages
        tokenizer = session.settings.chat.input_audio_tokenizer
        async with session.registry.audio_tokens(tokenizer) as tok:
            tokens = await tok.tokenize(item.samples(), RATE)
        messages = list(messages)
        messages[index] = ChatMessage("user", None, audio_tokens=tokens.text)
        return messages


def _add_call(messages: list[ChatMessage], call: ToolCall) -> None:
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant" and last.tool_calls and not last.content:
        last.tool_calls.append(call)
    else:
        messages.append(ChatMessage("assistant", None, tool_calls=[call]))


def _last_user(messages: list[ChatMessage]) -> int | None:
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)


def _without_empty(messages: list[ChatMessage]) -> list[ChatMessage]:
    """A spoken turn heard as nothing (no transcript, no tokens) says nothing."""
    return [m for m in messages if m.content or m.tool_calls or m.audio_tokens or m.role == "tool"]


class Responses:
    """The session's side of responses (a part of :class:`~.serving.RealtimeSession`):
    ``response.create`` checked and started as a :class:`ResponseRun` task, and
    ``response.cancel`` (or a barge-in) ending it."""

    async def create_response(self, event: p.ResponseCreate | None = None) -> None:
        wire = event.response if event is not None else None
        if self.response is not None:
            raise InvalidRequest(
                f"Conversation already has an active response in progress: {self.response.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        w = wire or p.ResponseConfig()
        out = w.audio.output if w.audio and w.audio.output else None
        if out is not None and out.voice is not None:
            await self._check_voice(out.voice, "response.audio.output.voice")
        if out is not None and out.format is not None:
            check_rate(out.format, "response.audio.output.format.rate")
        tools = list(w.tools) if w.tools is not None else self.config.tools
        choice = w.tool_choice if w.tool_choice is not None else self.config.tool_choice
        tool_choice_of(choice, tools)
        response = self.response_of(w)
        try:
            await self.policy.admit_turn()  # a response is one request of the key
        except RateLimitExceeded as exc:
            self.refused(exc)
            raise
        response.speech_stopped_at = self._speech_stopped_at
        response.speech_ended_at = self._speech_ended_at
        self._speech_stopped_at = self._speech_ended_at = None
        self.response = response
        await self.send(ev.ResponseCreated(response=response.wire()))
        await self.send(ev.RateLimitsUpdated(rate_limits=[self._queue_room()]))
        response.task = asyncio.create_task(ResponseRun(self, response).run())

    def response_of(self, w: p.ResponseConfig) -> Response:
        """The response ``w`` asks for: its fields, or the session's where it has none."""
        c = self.config
        out = w.audio.output if w.audio and w.audio.output else None
        return Response(
            id=new_id("resp"),
            modalities=list(w.output_modalities or c.output_modalities),
            voice=(out.voice if out and out.voice else c.voice),
            speed=(out.speed if out and out.speed is not None else c.speed),
            output_format=(out.format.type if out and out.format else c.output_format),
            instructions=w.instructions if w.instructions is not None else c.instructions,
            tools=list(w.tools) if w.tools is not None else c.tools,
            tool_choice=w.tool_choice if w.tool_choice is not None else c.tool_choice,
            max_output_tokens=(
                w.max_output_tokens if w.max_output_tokens is not None else c.max_output_tokens
            ),
            conversation=w.conversation != "none",
            extra_input=[item_from_wire(i) for i in w.input] if w.input is not None else None,
            metadata=w.metadata,
        )

    def _queue_room(self) -> dict:
        """There are no rate limits here; what runs out is room in the chat engine's
        queue (a full one refuses with engine_overloaded), so that is what is reported."""
        limit = self.settings.engines.max_queue
        model = self.registry.canonical(self.config.model)
        waiting = next((st.waiting for st in self.registry.states() if st.id == model), 0)
        return {"name": "requests", "limit": limit, "remaining": max(0, limit - waiting),
                "reset_seconds": 0.0}

    async def cancel_response(self, reason: str) -> None:
        response = self.response
        if response is None or response.task is None:
            return
        if not response.finishing:  # its closing events are already on their way
            response.cancel_reason = reason
            response.task.cancel()
        try:
            await response.task
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # we ourselves are being cancelled
                raise
        if self.response is response:
            self.response = None

    async def _cancel(self, event: p.ResponseCancel) -> None:
        if self.response is None or (
            event.response_id is not None and event.response_id != self.response.id
        ):
            raise InvalidRequest(
                "There is no active response to cancel.", code="response_cancel_not_active"
            )
        await self.cancel_response("client_cancelled")

    async def _clear_output(self, event: p.OutputAudioClear) -> None:
        await self.cancel_response("client_cancelled")

