"""Conversation items: ``conversation.item.create`` / ``retrieve`` / ``delete`` /
``truncate``, within the session's budgets of items, text and audio held."""

from __future__ import annotations

import base64
import binascii

import numpy as np

from adapters.audio.pcm import resample
from adapters.realtime.audio import InputConverter, bytes_per_second, encode_wire, wire_rate
from adapters.realtime.vad import RATE

from ...errors import InvalidRequest
from . import events as ev
from . import protocol as p
from .conversation import Item, item_from_wire
from .speech import heard_transcript


class ConversationItems:
    """A part of :class:`~.serving.RealtimeSession` (see the module notes)."""

    async def _retrieve_item(self, event: p.ItemRetrieve) -> None:
        item = self._item(event.item_id)
        wire = item.wire()
        if item.audio is not None or item.out_audio:
            for part in wire["content"]:
                if part["type"] in ("input_audio", "output_audio"):
                    part["audio"] = base64.b64encode(self._item_audio(item)).decode()
        await self.send(ev.ItemRetrieved(item=wire))

    async def _delete_item(self, event: p.ItemDelete) -> None:
        item = self._item(event.item_id)
        if self.response and any(i.id == item.id for i in self.response.output):
            raise InvalidRequest("The item belongs to the response in progress.", param="item_id")
        del self.items[item.id]
        await self.send(ev.ItemDeleted(item_id=item.id))

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
            return encode_wire(fmt, resample(item.samples(), RATE, wire_rate(fmt)))
        return bytes(item.out_audio)

    async def _create_item(self, event: p.ItemCreate) -> None:
        self._check_items_budget()
        item = item_from_wire(event.item)
        if item.id in self.items:
            raise InvalidRequest(f"Item '{item.id}' already exists.", param="item.id")
        self._check_text_held(item)
        audio = [(i, part.audio) for i, part in enumerate(event.item.content or [])
                 if part.type == "input_audio" and part.audio is not None]
        transcribe = bool(audio) and item.role == "user" and not item.text()
        if transcribe:  # before decoding anything: the cheap refusal first
            self._check_transcription_room()
        for i, data in audio:
            item.keep_audio(self._item_audio_of(data, f"item.content[{i}].audio"))
        if item.audio is not None:  # heard audio: charged whole, or refused charging nothing
            await self.policy.charge_audio_in(len(item.audio) / RATE)
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
        await self.send(ev.ItemAdded(previous_item_id=previous, item=item.wire()))
        await self.send(ev.ItemDone(previous_item_id=previous, item=item.wire()))
        if transcribe:
            self._start_transcription(item)

    def _item_audio_of(self, data_b64: str, param: str) -> np.ndarray:
        """An item's base64 audio as 16 kHz samples, within the session's audio budget."""
        try:
            raw = base64.b64decode(data_b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("The audio is not valid base64.", param=param) from None
        self._check_audio_held(len(raw), param)
        return InputConverter(self.config.input_format).push(raw)

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
        await self.send(ev.ItemTruncated(
            item_id=item.id, content_index=event.content_index, audio_end_ms=event.audio_end_ms
        ))

    def response_format_of(self, item: Item) -> str:
        return item.format

    def _last_id(self) -> str | None:
        return next(reversed(self.items), None) if self.items else None

    def _check_items_budget(self) -> None:
        if len(self.items) >= self.limits.max_items:
            raise InvalidRequest(
                f"The conversation holds at most {self.limits.max_items} items; delete some.",
                code="conversation_too_long",
            )

    def _check_text_held(self, item: Item) -> None:
        """The text clients put in a conversation is, all together, at most what chat
        takes in one message (limits.max_text_chars): 500 items of an 8 MB event each
        would otherwise be gigabytes, and all of it becomes the next prompt."""
        limit = self.settings.limits.max_text_chars
        held = sum(i.chars for i in self.items.values())
        if held + item.chars > limit:
            raise InvalidRequest(
                f"The conversation holds {held} characters of client text; with this item's "
                f"{item.chars} it would pass its limit of {limit}. Delete conversation items.",
                param="item",
                code="session_text_limit",
            )
