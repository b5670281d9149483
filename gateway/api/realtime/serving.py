"""One realtime session: the GA event protocol over the same engines as chat.

The session knows nothing of WebSockets or Litestar: it takes decoded text frames
(:meth:`RealtimeSession.handle`) and hands server events (dicts) to an async ``send``
callback, which the router backs with a bounded queue. Heard audio goes through the
turn detector (Silero) into the input buffer; a committed buffer becomes a user item
that the recogniser transcribes in the background; a response turns the conversation
into a :class:`~engines.chat.ChatRequest`, streams the chat engine's text, tool calls
and (for audio output) sentence-by-sentence speech, and can be cancelled at any point:
by ``response.cancel`` or by the user speaking over it (barge-in).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from contextlib import aclosing
from typing import Any, Awaitable, Callable

import msgspec
import numpy as np
import structlog

from adapters.audio.pcm import resample
from adapters.realtime.audio import InputConverter, bytes_per_second, encode_wire, wire_rate
from adapters.realtime.vad import (
    RATE,
    Paused,
    Resumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    VadSettings,
)
from adapters.text.tokens import count_audio_tokens
from adapters.voice_owners import is_clone_id
from engines.base import (
    Capability,
    EngineError,
    TranscriptionOptions,
)
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
from engines.registry import ModelRegistry

from ... import metrics
from ...errors import InvalidRequest, error_from_engine, error_from_msgspec
from ...settings import Settings
from . import protocol as p
from .conversation import (
    Config,
    Item,
    Response,
    check_rate,
    event_id_of,
    format_wire,
    item_from_wire,
    new_id,
    tool_choice_of,
    tool_choice_wire,
    tool_wire,
    transcription_wire,
)
from .speech import RealtimeSpeech, heard_transcript

log = structlog.get_logger(__name__)

Send = Callable[[dict], Awaitable[None]]

_DELTA_BYTES_PCM = 9_600  # 200 ms of 24 kHz PCM per audio delta: fine-grained barge-in


_id = new_id


class SessionClosed(Exception):
    """The client stopped reading (its send buffer stayed full) or went away."""


# ---------------------------------------------------------------------- the session


class RealtimeSession:
    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        model: str,
        send: Send,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.limits = settings.realtime
        self._send = send
        self.id = _id("sess")
        self.config = Config(model=model)
        self.items: dict[str, Item] = {}
        self.response: Response | None = None
        self.expires_at = int(time.time()) + 3600
        self._reset_input()
        self._speech_stopped_at: float | None = None

    # ------------------------------------------------------------------ plumbing

    async def send(self, type_: str, **fields: Any) -> None:
        await self._send({"event_id": _id("event"), "type": type_, **fields})

    async def error(self, exc: EngineError, event_id: str | None = None) -> None:
        exc = error_from_engine(exc)
        await self.send(
            "error",
            error={
                "type": exc.type,
                "code": exc.code,
                "message": exc.message,
                "param": exc.param,
                "event_id": event_id,
            },
        )

    def session_wire(self) -> dict:
        c = self.config
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": c.model,
            "output_modalities": c.output_modalities,
            "instructions": c.instructions,
            "tools": [tool_wire(t) for t in c.tools],
            "tool_choice": tool_choice_wire(c.tool_choice),
            "max_output_tokens": c.max_output_tokens,
            "tracing": None,
            "expires_at": self.expires_at,
            "audio": {
                "input": {
                    "format": format_wire(c.input_format),
                    # the spec types these as objects: "off" is their absence, not null
                    **(
                        {}
                        if c.transcription is None
                        else {"transcription": transcription_wire(c.transcription)}
                    ),
                    "turn_detection": c.turn_detection_wire(),
                },
                "output": {"format": format_wire(c.output_format), "voice": c.voice, "speed": c.speed},
            },
        }

    async def start(self) -> None:
        await self.send("session.created", session=self.session_wire())

    async def close(self) -> None:
        """The socket is gone: stop every task so no engine stays held for it."""
        tasks = [i.transcription for i in self.items.values() if i.transcription]
        if self._speculation is not None:
            tasks.append(self._speculation)
        if self.response is not None and self.response.task is not None:
            tasks.append(self.response.task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:  # noqa: BLE001 - closing anyway
                pass

    # ------------------------------------------------------------------ dispatch

    async def handle(self, frame: str | bytes) -> None:
        """One client event. Bad events get an ``error`` naming them; nothing ends the session."""
        size = len(frame.encode() if isinstance(frame, str) else frame)
        if size > self.limits.max_event_bytes:
            await self.error(
                InvalidRequest(
                    f"The event is {size} bytes; the limit is {self.limits.max_event_bytes}.",
                    code="event_too_large",
                )
            )
            return
        try:
            event = p.decoder.decode(frame)
        except msgspec.ValidationError as exc:
            await self.error(error_from_msgspec(exc), event_id_of(frame))
            return
        except msgspec.DecodeError:
            await self.error(
                InvalidRequest("The event is not valid JSON.", code="invalid_json"), None
            )
            return
        try:
            await self._dispatch(event)
        except EngineError as exc:
            await self.error(exc, event.event_id)

    async def _dispatch(self, event: Any) -> None:
        if isinstance(event, p.SessionUpdate):
            await self._update(event.session)
        elif isinstance(event, p.AudioAppend):
            await self._append(event.audio)
        elif isinstance(event, p.AudioCommit):
            if self.config.turn_detection is not None and self.detector.speaking:
                self.detector.speaking = False
            await self._commit(manual=True)
        elif isinstance(event, p.AudioClear):
            self._reset_input()
            await self.send("input_audio_buffer.cleared")
        elif isinstance(event, p.OutputAudioClear):
            await self.cancel_response("client_cancelled")
        elif isinstance(event, p.ItemCreate):
            await self._create_item(event)
        elif isinstance(event, p.ItemRetrieve):
            item = self._item(event.item_id)
            wire = item.wire()
            if item.audio is not None or item.out_audio:
                for part in wire["content"]:
                    if part["type"] in ("input_audio", "output_audio"):
                        part["audio"] = base64.b64encode(self._item_audio(item)).decode()
            await self.send("conversation.item.retrieved", item=wire)
        elif isinstance(event, p.ItemDelete):
            item = self._item(event.item_id)
            if self.response and any(i.id == item.id for i in self.response.output):
                raise InvalidRequest("The item belongs to the response in progress.", param="item_id")
            del self.items[item.id]
            await self.send("conversation.item.deleted", item_id=item.id)
        elif isinstance(event, p.ItemTruncate):
            await self._truncate(event)
        elif isinstance(event, p.ResponseCreate):
            await self.create_response(event.response)
        elif isinstance(event, p.ResponseCancel):
            if self.response is None or (
                event.response_id is not None and event.response_id != self.response.id
            ):
                raise InvalidRequest(
                    "There is no active response to cancel.", code="response_cancel_not_active"
                )
            await self.cancel_response("client_cancelled")

    def _item(self, item_id: str) -> Item:
        try:
            return self.items[item_id]
        except KeyError:
            raise InvalidRequest(
                f"Item with item_id '{item_id}' not found.", param="item_id", code="item_not_found"
            ) from None

    def _item_audio(self, item: Item) -> bytes:
        if item.audio is not None:
            fmt = self.config.input_format
            return encode_wire(fmt, resample(item.audio, RATE, wire_rate(fmt)))
        return bytes(item.out_audio)

    # ------------------------------------------------------------------ session.update

    async def _update(self, new: p.SessionConfig) -> None:
        c = self.config
        if new.model is not None:
            self.registry.check(new.model, Capability.CHAT)
        audio = new.audio or p.AudioConfig()
        if audio.input is not None:
            fmt = audio.input.format
            if fmt is not None:
                check_rate(fmt, "session.audio.input.format.rate")
            if isinstance(audio.input.transcription, p.Transcription):
                model = audio.input.transcription.model or self.settings.chat.input_audio_model
                self.registry.check(model, Capability.TRANSCRIPTION)
        if audio.output is not None:
            if audio.output.format is not None:
                check_rate(audio.output.format, "session.audio.output.format.rate")
            if audio.output.voice is not None:
                await self._check_voice(audio.output.voice, "session.audio.output.voice")
        if new.tool_choice is not None:
            tool_choice_of(new.tool_choice, new.tools if new.tools is not None else c.tools)
        # everything checked: apply
        if new.model is not None:
            c.model = new.model
        if new.instructions is not None:
            c.instructions = new.instructions
        if new.output_modalities:
            c.output_modalities = list(new.output_modalities)
        if new.tools is not None:
            c.tools = list(new.tools)
        if new.tool_choice is not None:
            c.tool_choice = new.tool_choice
        if new.max_output_tokens is not None:
            c.max_output_tokens = new.max_output_tokens
        if audio.input is not None:
            if audio.input.format is not None and audio.input.format.type != c.input_format:
                c.input_format = audio.input.format.type
                self._reset_input()
            if audio.input.transcription is not msgspec.UNSET:
                c.transcription = audio.input.transcription
            if audio.input.turn_detection is not msgspec.UNSET:
                c.turn_detection = audio.input.turn_detection
                self._reset_input()
        if audio.output is not None:
            if audio.output.format is not None:
                c.output_format = audio.output.format.type
            if audio.output.voice is not None:
                c.voice = audio.output.voice
            if audio.output.speed is not None:
                c.speed = audio.output.speed
        await self.send("session.updated", session=self.session_wire())

    async def _check_voice(self, voice: str, param: str) -> None:
        async with self.registry.speech(self.settings.chat.speech_model) as engine:
            # A cloned voice's engine id is never a name a session may use (see
            # adapters.voice_owners): it would reach another key's clone.
            known = {v.id for v in engine.voices() if not is_clone_id(v.id)}
            known |= set(engine.context.voices)
        if voice not in known:
            raise InvalidRequest(
                f"Voice '{voice}' is not available. Available voices: {', '.join(sorted(known))}.",
                param=param,
            )

    # ------------------------------------------------------------------ input audio

    def _reset_input(self) -> None:
        self.converter = InputConverter(self.config.input_format)
        self.buffer: list[np.ndarray] = []
        self.buffered = 0  # samples in buffer
        self.buffer_start = getattr(self, "heard", 0)  # session sample index of buffer[0]
        self.heard = getattr(self, "heard", 0)  # 16 kHz samples heard this session
        self.detector = TurnDetector(
            self.config.vad() if self.config.turn_detection else VadSettings(), self.heard
        )
        self._pending_item = _id("item")
        if getattr(self, "_speculation", None) is not None:
            self._speculation.cancel()
        self._speculation: asyncio.Task | None = None

    async def _append(self, data_b64: str) -> None:
        try:
            data = base64.b64decode(data_b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("The audio is not valid base64.", param="audio") from None
        samples = self.converter.push(data)
        limit = int(self.limits.max_buffer_seconds * RATE)
        if self.buffered + len(samples) > limit:
            raise InvalidRequest(
                f"The input audio buffer holds at most {self.limits.max_buffer_seconds:g} s; "
                "commit or clear it.",
                param="audio",
                code="input_audio_buffer_full",
            )
        self.buffer.append(samples)
        self.buffered += len(samples)
        self.heard += len(samples)
        if self.config.turn_detection is None:
            return
        for turn in self.detector.push(samples):
            if isinstance(turn, SpeechStarted):
                await self.send(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=turn.audio_start_ms,
                    item_id=self._pending_item,
                )
                self._trim_to(turn.audio_start_ms * RATE // 1000)
                if self.response is not None and self.config.turn_detection.interrupt_response is not False:
                    metrics.REALTIME_BARGE_INS.inc()
                    await self.cancel_response("turn_detected")
            elif isinstance(turn, Paused):
                # Step-Audio's scheme: start hearing the turn at the first pause; kept only
                # if the silence lasts (speech_stopped), dropped if the user goes on.
                self._drop_speculation()
                if self.buffer:
                    heard = np.concatenate(self.buffer)
                    self._speculation = asyncio.create_task(self._recognise(heard))
            elif isinstance(turn, Resumed):
                self._drop_speculation()
            elif isinstance(turn, SpeechStopped):
                self._speech_stopped_at = time.perf_counter()
                await self.send(
                    "input_audio_buffer.speech_stopped",
                    audio_end_ms=turn.audio_end_ms,
                    item_id=self._pending_item,
                )
                heard, self._speculation = self._speculation, None
                item = await self._commit(manual=False, heard=heard)
                if item is None and heard is not None:
                    heard.cancel()
                if item is not None and self.config.turn_detection.create_response is not False:
                    await self.create_response(None)
        if not self.detector.speaking:  # silence: keep only what a prefix may need
            keep = int(self.config.vad().prefix_padding_ms * RATE / 1000) + 2 * 512
            self._trim_to(self.heard - keep)

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation.cancel()
            self._speculation = None

    def _trim_to(self, session_sample: int) -> None:
        drop = session_sample - self.buffer_start
        if drop <= 0 or not self.buffer:
            return
        audio = np.concatenate(self.buffer)[drop:]
        self.buffer = [audio] if len(audio) else []
        self.buffered = len(audio)
        self.buffer_start = session_sample

    async def _commit(self, *, manual: bool, heard: asyncio.Task | None = None) -> Item | None:
        if self.buffered < RATE // 10:
            if manual:
                raise InvalidRequest(
                    "Error committing input audio buffer: buffer too small. Expected at least "
                    f"100ms of audio, but buffer only has {self.buffered * 1000 // RATE}ms of audio.",
                    code="input_audio_buffer_commit_empty",
                )
            return None
        self._check_items_budget()
        audio = np.concatenate(self.buffer)
        item = Item(id=self._pending_item, type="message", role="user", audio=audio)
        item.content.append({"type": "input_audio", "transcript": None})
        self.buffer, self.buffered = [], 0
        self.buffer_start = self.heard
        self._pending_item = _id("item")
        previous = self._last_id()
        self.items[item.id] = item
        await self.send("input_audio_buffer.committed", previous_item_id=previous, item_id=item.id)
        await self.send("conversation.item.added", previous_item_id=previous, item=item.wire())
        await self.send("conversation.item.done", previous_item_id=previous, item=item.wire())
        item.transcription = asyncio.create_task(self._transcribe(item, heard))
        return item

    def _last_id(self) -> str | None:
        return next(reversed(self.items), None) if self.items else None

    def _check_items_budget(self) -> None:
        if len(self.items) >= self.limits.max_items:
            raise InvalidRequest(
                f"The conversation holds at most {self.limits.max_items} items; delete some.",
                code="conversation_too_long",
            )

    def _transcription_model(self) -> str:
        cfg = self.config.transcription
        return (cfg.model if cfg else None) or self.settings.chat.input_audio_model

    async def _recognise(self, audio: np.ndarray) -> list[str]:
        """The recogniser's segments for ``audio`` (16 kHz)."""
        cfg = self.config.transcription
        async with self.registry.transcription(self._transcription_model()) as engine:
            if engine.sample_rate != RATE:
                audio = resample(audio, RATE, engine.sample_rate)
            options = TranscriptionOptions(
                language=cfg.language if cfg else None, prompt=cfg.prompt if cfg else None
            )
            stream = await engine.transcribe(audio, options)
            return [segment.text async for segment in stream.segments]

    async def _transcribe(self, item: Item, heard: asyncio.Task | None = None) -> None:
        """Transcribe a committed user item (or take the speculative transcription that
        started at the pause), announcing it when the session asked for transcripts."""
        announce = self.config.transcription is not None
        try:
            pieces = None
            if heard is not None:
                try:
                    pieces = await heard
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():
                        raise
            if pieces is None:
                pieces = await self._recognise(item.audio)
            transcript = "".join(pieces).strip()
            if announce:
                for i, piece in enumerate(p for p in pieces if p.strip()):
                    await self.send(
                        "conversation.item.input_audio_transcription.delta",
                        item_id=item.id,
                        content_index=0,
                        delta=piece.lstrip() if i == 0 else piece,
                    )
            item.content[0]["transcript"] = transcript
            seconds = len(item.audio) / RATE
            metrics.count_audio("realtime", "in", self.config.model, seconds)
            if announce:
                await self.send(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item.id,
                    content_index=0,
                    transcript=transcript,
                    usage={"type": "duration", "seconds": round(seconds, 3)},
                )
        except EngineError as exc:
            item.content[0]["transcript"] = ""
            error = error_from_engine(exc)
            await self.send(
                "conversation.item.input_audio_transcription.failed",
                item_id=item.id,
                content_index=0,
                error={"type": error.type, "code": error.code, "message": error.message,
                       "param": error.param},
            )

    # ------------------------------------------------------------------ items

    async def _create_item(self, event: p.ItemCreate) -> None:
        self._check_items_budget()
        item = item_from_wire(event.item)
        if item.id in self.items:
            raise InvalidRequest(f"Item '{item.id}' already exists.", param="item.id")
        for part in event.item.content or []:
            if part.type == "input_audio" and part.audio is not None:
                try:
                    raw = base64.b64decode(part.audio, validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidRequest("The audio is not valid base64.", param="item.content.audio") from None
                item.audio = InputConverter(self.config.input_format).push(raw)
        previous = self._last_id()
        if event.previous_item_id is not None and event.previous_item_id != "root":
            self._item(event.previous_item_id)
        # insert after previous_item_id (default: at the end)
        if event.previous_item_id in (None,) or event.previous_item_id == previous:
            self.items[item.id] = item
        else:
            order = list(self.items.items())
            at = 0 if event.previous_item_id == "root" else next(
                i + 1 for i, (k, _) in enumerate(order) if k == event.previous_item_id
            )
            order.insert(at, (item.id, item))
            self.items = dict(order)
            previous = event.previous_item_id if event.previous_item_id != "root" else None
        await self.send("conversation.item.added", previous_item_id=previous, item=item.wire())
        await self.send("conversation.item.done", previous_item_id=previous, item=item.wire())
        if item.audio is not None and item.role == "user" and not item.text():
            item.transcription = asyncio.create_task(self._transcribe(item))

    async def _truncate(self, event: p.ItemTruncate) -> None:
        item = self._item(event.item_id)
        if item.role != "assistant":
            raise InvalidRequest("Only assistant messages can be truncated.", param="item_id")
        if event.content_index >= len(item.content) or item.content[event.content_index]["type"] != "output_audio":
            raise InvalidRequest("That content part holds no audio.", param="content_index")
        if self.response and any(i.id == item.id for i in self.response.output):
            await self.cancel_response("client_cancelled")
        fmt = self.response_format_of(item)
        total_ms = len(item.out_audio) * 1000 // bytes_per_second(fmt)
        if event.audio_end_ms > total_ms:
            raise InvalidRequest(
                f"audio_end_ms {event.audio_end_ms} is longer than the item's audio ({total_ms} ms).",
                param="audio_end_ms",
            )
        cut = event.audio_end_ms * bytes_per_second(fmt) // 1000
        cut -= cut % (2 if fmt == "audio/pcm" else 1)
        del item.out_audio[cut:]
        item.content[event.content_index]["transcript"] = heard_transcript(item.marks, cut)
        await self.send(
            "conversation.item.truncated",
            item_id=item.id,
            content_index=event.content_index,
            audio_end_ms=event.audio_end_ms,
        )

    def response_format_of(self, item: Item) -> str:
        return item.format

    # ------------------------------------------------------------------ responses

    async def create_response(self, wire: p.ResponseConfig | None) -> None:
        if self.response is not None:
            raise InvalidRequest(
                f"Conversation already has an active response in progress: {self.response.id}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        c = self.config
        w = wire or p.ResponseConfig()
        out = w.audio.output if w.audio and w.audio.output else None
        if out is not None and out.voice is not None:
            await self._check_voice(out.voice, "response.audio.output.voice")
        if out is not None and out.format is not None:
            check_rate(out.format, "response.audio.output.format.rate")
        tools = list(w.tools) if w.tools is not None else c.tools
        choice = w.tool_choice if w.tool_choice is not None else c.tool_choice
        tool_choice_of(choice, tools)
        extra = [item_from_wire(i) for i in w.input] if w.input is not None else None
        response = Response(
            id=_id("resp"),
            modalities=list(w.output_modalities or c.output_modalities),
            voice=(out.voice if out and out.voice else c.voice),
            output_format=(out.format.type if out and out.format else c.output_format),
            instructions=w.instructions if w.instructions is not None else c.instructions,
            tools=tools,
            tool_choice=choice,
            max_output_tokens=w.max_output_tokens if w.max_output_tokens is not None else c.max_output_tokens,
            conversation=w.conversation != "none",
            extra_input=extra,
            metadata=w.metadata,
            speech_stopped_at=self._speech_stopped_at,
        )
        self._speech_stopped_at = None
        self.response = response
        await self.send("response.created", response=response.wire())
        await self.send(
            "rate_limits.updated",
            rate_limits=[self._queue_room()],
        )
        response.task = asyncio.create_task(self._respond(response))

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

    def _input(self, response: Response) -> list[Item]:
        """The items a response reads: the conversation (unless "none"), then its own input."""
        source = list(self.items.values()) if response.conversation else []
        source += response.extra_input or []
        return [item for item in source if item not in response.output]

    def _messages(self, response: Response, spoken: tuple[Item, str] | None = None) -> list[ChatMessage]:
        """``spoken``: a user item and the audio tokens that stand for it in the prompt."""
        messages = [ChatMessage("system", response.instructions)] if response.instructions else []
        for item in self._input(response):
            if spoken is not None and item is spoken[0]:
                messages.append(ChatMessage("user", None, audio_tokens=spoken[1]))
            elif item.type == "message":
                role = "system" if item.role == "system" else item.role
                text = item.text()
                if text:
                    messages.append(ChatMessage(role, text))
            elif item.type == "function_call":
                call = ToolCall(id=item.call_id, name=item.name, arguments=item.arguments or "{}")
                last = messages[-1] if messages else None
                if last is not None and last.role == "assistant" and last.tool_calls and not last.content:
                    last.tool_calls.append(call)
                else:
                    messages.append(ChatMessage("assistant", None, tool_calls=[call]))
            else:
                messages.append(ChatMessage("tool", item.output or "", tool_call_id=item.call_id))
        return messages

    async def _respond(self, response: Response) -> None:
        speaks = "audio" in response.modalities
        speech: RealtimeSpeech | None = None
        message: Item | None = None
        calls: dict[int, Item] = {}
        finish: Finish | None = None
        sent = 0  # audio bytes of the message sent

        async def add_output(item: Item) -> int:
            index = len(response.output)
            response.output.append(item)
            if response.conversation:
                previous = self._last_id()
                self.items[item.id] = item
            await self.send("response.output_item.added", response_id=response.id,
                            output_index=index, item=item.wire())
            if response.conversation:
                await self.send("conversation.item.added", previous_item_id=previous, item=item.wire())
            return index

        async def open_message() -> Item:
            nonlocal message
            message = Item(id=_id("item"), type="message", role="assistant", status="in_progress")
            message.format = response.output_format
            await add_output(message)
            part = {"type": "output_audio", "transcript": ""} if speaks else {"type": "output_text", "text": ""}
            message.content.append(dict(part))
            await self.send("response.content_part.added", **self._where(response, message),
                            part={"type": "audio", "transcript": ""} if speaks else {"type": "text", "text": ""})
            return message

        async def send_audio(data: bytes) -> None:
            nonlocal sent
            step = _DELTA_BYTES_PCM if response.output_format == "audio/pcm" else 1_600
            for start in range(0, len(data), step):
                piece = data[start : start + step]
                await self.send("response.output_audio.delta", **self._where(response, message),
                                delta=base64.b64encode(piece).decode("ascii"))
                message.out_audio += piece
                sent += len(piece)
                now = time.perf_counter()
                if response.first_audio_at is None:
                    response.first_audio_at = now
                    if response.speech_stopped_at is not None:
                        metrics.REALTIME_VOICE_TO_VOICE.labels(model=self.config.model).observe(
                            now - response.speech_stopped_at
                        )
                response.last_audio_at = now

        async def close_call(item: Item) -> None:
            item.status = "completed"
            await self.send("response.function_call_arguments.done", response_id=response.id,
                            item_id=item.id, output_index=response.output.index(item),
                            call_id=item.call_id, name=item.name, arguments=item.arguments)

        try:
            pending = [i.transcription for i in self.items.values() if i.transcription]
            for task in pending:
                await asyncio.shield(task) if not task.done() else None
            request = await self._request(response)
            async with self.registry.chat(self.config.model) as engine:
                if engine.accepts_audio_tokens:
                    request = await self._with_audio_tokens(request, response)
                if speaks:
                    speech = RealtimeSpeech(self.registry, self.settings.chat.speech_model,
                                            response.voice, response.output_format)
                    speech.start()
                events = engine.generate(request)
                async with aclosing(events):
                    async for event in events:
                        if isinstance(event, Finish):
                            finish = event
                        elif isinstance(event, TextDelta):
                            if message is None:
                                await open_message()
                            part = message.content[0]
                            if speaks:
                                part["transcript"] += event.text
                                speech.feed(event.text)
                                await self.send("response.output_audio_transcript.delta",
                                                **self._where(response, message), delta=event.text)
                            else:
                                part["text"] += event.text
                                await self.send("response.output_text.delta",
                                                **self._where(response, message), delta=event.text)
                        elif isinstance(event, ToolCallStart):
                            for open_call in calls.values():
                                if open_call.status == "in_progress":
                                    await close_call(open_call)
                            item = Item(id=_id("item"), type="function_call", status="in_progress",
                                        call_id=event.id, name=event.name, arguments="")
                            calls[event.index] = item
                            await add_output(item)
                        elif isinstance(event, ToolCallArgsDelta):
                            item = calls[event.index]
                            item.arguments += event.fragment
                            await self.send("response.function_call_arguments.delta",
                                            response_id=response.id, item_id=item.id,
                                            output_index=response.output.index(item),
                                            call_id=item.call_id, delta=event.fragment)
                        if speech is not None and message is not None:
                            for data in speech.ready():
                                await send_audio(data)
            if speech is not None:
                speech.close()
                async for data in speech.drain():
                    await send_audio(data)
            response.status = "completed"
            if finish is not None and finish.reason == "length":
                response.status = "incomplete"
                response.details = {"type": "incomplete", "reason": "max_output_tokens"}
        except asyncio.CancelledError:
            if response.cancel_reason is None:  # the session itself is closing
                raise
            response.status = "cancelled"
            response.details = {"type": "cancelled", "reason": response.cancel_reason}
        except EngineError as exc:
            response.status = "failed"
            error = error_from_engine(exc)
            response.details = {"type": "failed", "error": {"type": error.type, "code": error.code or "engine_error"}}
            await self.error(error)
        except SessionClosed:
            self.response = None
            return
        except Exception as exc:  # noqa: BLE001 - a failed turn must not end the session
            log.exception("realtime response failed", response_id=response.id)
            response.status = "failed"
            response.details = {"type": "failed", "error": {"type": "server_error", "code": "internal_error"}}
            await self.send("error", error={"type": "server_error", "code": "internal_error",
                                            "message": f"The response failed: {type(exc).__name__}.",
                                            "param": None, "event_id": None})
        finally:
            response.finishing = True
            if speech is not None:
                await speech.aclose()
        await self._finish(response, message, calls, finish, speech, speaks, close_call)

    async def _finish(self, response, message, calls, finish, speech, speaks, close_call) -> None:
        done = "completed" if response.status == "completed" else "incomplete"
        if message is not None:
            part = message.content[0]
            if speaks:
                if response.status != "completed" and speech is not None:
                    part["transcript"] = heard_transcript(speech.marks, len(message.out_audio))
                message.marks = list(speech.marks) if speech is not None else []
                where = self._where(response, message)
                await self.send("response.output_audio.done", **where)
                await self.send("response.output_audio_transcript.done", **where, transcript=part["transcript"])
                wire_part = {"type": "audio", "transcript": part["transcript"]}
            else:
                where = self._where(response, message)
                await self.send("response.output_text.done", **where, text=part["text"])
                wire_part = {"type": "text", "text": part["text"]}
            await self.send("response.content_part.done", **where, part=wire_part)
        for item in calls.values():
            if item.status == "in_progress" and response.status == "completed":
                await close_call(item)
        for item in response.output:
            item.status = done if item.status == "in_progress" else item.status
            await self.send("response.output_item.done", response_id=response.id,
                            output_index=response.output.index(item), item=item.wire())
            if response.conversation and item.id in self.items:
                await self.send("conversation.item.done", item=item.wire())
        audio_in = sum(len(i.audio) / RATE for i in self.items.values() if i.audio is not None)
        audio_out = len(message.out_audio) / bytes_per_second(response.output_format) if message else 0.0
        a_in, a_out = count_audio_tokens(audio_in), count_audio_tokens(audio_out)
        text_in = finish.prompt_tokens if finish else 0
        text_out = finish.completion_tokens if finish else 0
        response.usage = {
            "total_tokens": text_in + a_in + text_out + a_out,
            "input_tokens": text_in + a_in,
            "output_tokens": text_out + a_out,
            "input_token_details": {"text_tokens": text_in, "audio_tokens": a_in, "cached_tokens": 0},
            "output_token_details": {"text_tokens": text_out, "audio_tokens": a_out},
        }
        metrics.count_audio("realtime", "out", self.config.model, audio_out)
        self.response = None
        await self.send("response.done", response=response.wire())

    def _where(self, response: Response, item: Item) -> dict:
        return {"response_id": response.id, "item_id": item.id,
                "output_index": response.output.index(item), "content_index": 0}

    async def _request(self, response: Response) -> ChatRequest:
        tools = [
            ToolSpec(name=t.name, description=t.description or "",
                     parameters=t.parameters or {"type": "object", "properties": {}})
            for t in response.tools
        ]
        limit = response.max_output_tokens
        return ChatRequest(
            messages=self._messages(response),
            tools=tools,
            tool_choice=tool_choice_of(response.tool_choice, response.tools),
            max_tokens=None if limit == "inf" else int(limit),
            temperature=0.8,
        )

    async def _with_audio_tokens(self, request: ChatRequest, response: Response) -> ChatRequest:
        """Step-Audio reads the current spoken turn as audio tokens, not as its transcript.

        The current turn is the last user item the response reads, and its tokens take
        that item's place: not the last user message of the prompt, which is another
        item's when this one has no transcript, or the response's own input (conversation
        "none", or ``input`` after a spoken conversation).
        """
        turn = next((i for i in reversed(self._input(response)) if i.role == "user"), None)
        if turn is None or turn.audio is None:
            return request
        async with self.registry.audio_tokens(self.settings.chat.input_audio_tokenizer) as tok:
            tokens = await tok.tokenize(turn.audio, RATE)
        messages = self._messages(response, spoken=(turn, tokens.text))
        return ChatRequest(**{**request.__dict__, "messages": messages})
