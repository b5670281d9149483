"""The state a realtime session keeps, and its wire shapes: conversation items (with the
audio the wire form leaves out), the session configuration, responses.

Plain data and pure functions; the event flow lives in :mod:`.serving`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from adapters.realtime.vad import SEMANTIC_EAGERNESS, VadSettings
from engines.chat import ToolChoice, new_tool_call_id

from ...errors import InvalidRequest
from ..tool_choice import choose_tools
from . import protocol as p

_S16_SCALE = 32767.0  # adapters.audio.pcm's scale


def float_to_s16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * _S16_SCALE).round().astype(np.int16)


DEFAULT_INSTRUCTIONS = "You are a helpful, friendly voice assistant. Keep answers short."


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


# ---------------------------------------------------------------------- conversation


@dataclass
class Item:
    """A conversation item, with what the wire form leaves out (audio, sentence marks)."""

    id: str
    type: str
    role: str | None = None
    status: str = "completed"
    content: list[dict] = field(default_factory=list)
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    audio: np.ndarray | None = None  # user speech, 16 kHz int16: see keep_audio
    out_audio: bytearray = field(default_factory=bytearray)  # assistant speech, wire bytes
    marks: list[tuple[int, str]] = field(default_factory=list)
    transcription: asyncio.Task | None = None
    format: str = "audio/pcm"  # the wire format of out_audio
    chars: int = 0  # the text a client sent in it (see RealtimeSession._check_text_held)

    def keep_audio(self, samples: np.ndarray) -> None:
        """Hold user speech (16 kHz float32) as int16: half the memory of float32 for a
        session's minutes of audio, and no loss the 16-bit wire had not already made."""
        self.audio = float_to_s16(samples)

    def samples(self) -> np.ndarray:
        """The held speech as float32 again, for the recogniser and the wire."""
        assert self.audio is not None
        return self.audio.astype(np.float32) / _S16_SCALE

    def wire(self) -> dict:
        item: dict[str, Any] = {"id": self.id, "object": "realtime.item", "type": self.type}
        item["status"] = self.status
        if self.type == "message":
            item["role"] = self.role
            item["content"] = [_part_wire(c) for c in self.content]
        elif self.type == "function_call":
            item.update(call_id=self.call_id, name=self.name, arguments=self.arguments or "")
        else:
            item.update(call_id=self.call_id, output=self.output or "")
        return item

    def text(self) -> str:
        """What this message said, for the chat engine: text and transcripts in order."""
        parts = [c.get("text") or c.get("transcript") or "" for c in self.content]
        return "\n".join(x for x in parts if x)


def _part_wire(part: dict) -> dict:
    """A content part as sent: what it holds. Heard audio always says its ``transcript``
    ("" until transcribed): clients read the key on every user audio part (the JS Agents
    SDK refuses a user message without it, and so never shows the user's words)."""
    wire = {k: v for k, v in part.items() if v is not None}
    if wire["type"] == "input_audio":
        wire.setdefault("transcript", "")
    return wire


def item_from_wire(wire: p.Item) -> Item:
    item = Item(id=wire.id or new_id("item"), type=wire.type, role=wire.role)
    if wire.type == "message":
        if wire.role is None:
            raise InvalidRequest("A message item needs a role.", param="item.role")
        allowed = {
            "user": {"input_text", "input_audio"},
            "system": {"input_text"},
            "assistant": {"output_text", "output_audio", "text", "audio"},
        }[wire.role]
        for i, part in enumerate(wire.content or []):
            if part.type not in allowed:
                raise InvalidRequest(
                    f"A {wire.role} message cannot hold '{part.type}' content.",
                    param=f"item.content[{i}].type",
                )
            kind = {"text": "output_text", "audio": "output_audio"}.get(part.type, part.type)
            item.content.append({"type": kind, "text": part.text, "transcript": part.transcript})
    elif wire.type == "function_call":
        if not wire.name:
            raise InvalidRequest("A function_call item needs a name.", param="item.name")
        item.call_id = wire.call_id or new_tool_call_id()
        item.name, item.arguments = wire.name, wire.arguments or "{}"
    else:
        if wire.call_id is None:
            raise InvalidRequest("A function_call_output item needs a call_id.", param="item.call_id")
        item.call_id, item.output = wire.call_id, wire.output or ""
    item.chars = sum(len(c["text"] or "") + len(c["transcript"] or "") for c in item.content)
    item.chars += len(item.arguments or "") + len(item.output or "")
    return item


# ---------------------------------------------------------------------- configuration


@dataclass
class Config:
    model: str
    # "realtime" (a conversation) or "transcription" (only heard: transcription_session.py)
    type: str = "realtime"
    instructions: str = DEFAULT_INSTRUCTIONS
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    input_format: str = "audio/pcm"
    output_format: str = "audio/pcm"
    voice: str = "alloy"
    speed: float = 1.0
    transcription: p.Transcription | None = None
    turn_detection: p.TurnDetection | None = field(
        default_factory=lambda: p.TurnDetection(type="server_vad")
    )
    tools: list[p.FunctionTool] = field(default_factory=list)
    tool_choice: Any = "auto"
    max_output_tokens: int | str = "inf"
    include: list[str] = field(default_factory=list)

    @property
    def logprobs(self) -> bool:
        return "item.input_audio_transcription.logprobs" in self.include

    def vad(self) -> VadSettings:
        td = self.turn_detection
        assert td is not None
        silence, complete_at = td.silence_duration_ms, None
        if td.type == "semantic_vad":
            eagerness = SEMANTIC_EAGERNESS[td.eagerness or "auto"]
            silence, complete_at = eagerness.silence_ms, eagerness.complete_at
        return VadSettings(
            threshold=0.5 if td.threshold is None else td.threshold,
            prefix_padding_ms=300 if td.prefix_padding_ms is None else td.prefix_padding_ms,
            silence_duration_ms=500 if silence is None else silence,
            complete_at=complete_at,
        )

    def turn_detection_wire(self) -> dict | None:
        td = self.turn_detection
        if td is None:
            return None
        common = {
            "create_response": td.create_response is not False,
            "interrupt_response": td.interrupt_response is not False,
        }
        if td.type == "semantic_vad":
            return {"type": "semantic_vad", "eagerness": td.eagerness or "auto", **common}
        vad = self.vad()
        return {
            "type": "server_vad",
            "threshold": vad.threshold,
            "prefix_padding_ms": vad.prefix_padding_ms,
            "silence_duration_ms": vad.silence_duration_ms,
            "idle_timeout_ms": None,
            **common,
        }


def format_wire(fmt: str) -> dict:
    return {"type": fmt, "rate": 24_000} if fmt == "audio/pcm" else {"type": fmt}


def transcription_wire(t: p.Transcription) -> dict:
    return {k: v for k, v in msgspec.structs.asdict(t).items() if v is not None}


def tool_wire(tool: p.FunctionTool) -> dict:
    out: dict[str, Any] = {"type": "function", "name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    return out


def tool_choice_wire(choice: Any) -> Any:
    if isinstance(choice, p.NamedFunction):
        return {"type": "function", "name": choice.name}
    return choice


# ---------------------------------------------------------------------- responses


@dataclass
class Response:
    id: str
    modalities: list[str]
    voice: str
    output_format: str
    instructions: str
    tools: list[p.FunctionTool]
    speed: float
    tool_choice: Any
    max_output_tokens: int | str
    conversation: bool = True
    extra_input: list[Item] | None = None
    metadata: dict | None = None
    output: list[Item] = field(default_factory=list)
    status: str = "in_progress"
    details: dict | None = None
    usage: dict | None = None
    task: asyncio.Task | None = None
    cancel_reason: str | None = None
    finishing: bool = False  # past the point where a cancel changes anything
    created_at: float = field(default_factory=time.perf_counter)
    speech_ended_at: float | None = None  # when the last of the user's words arrived
    speech_stopped_at: float | None = None  # when the turn detector said the turn ended
    heard_at: float | None = None  # the words of its input transcribed
    first_token_at: float | None = None
    first_audio_at: float | None = None
    last_audio_at: float | None = None

    def wire(self) -> dict:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "realtime.response",
            "status": self.status,
            "status_details": self.details,
            "output": [item.wire() for item in self.output],
            "conversation_id": "conv_default" if self.conversation else None,
            "output_modalities": self.modalities,
            "max_output_tokens": self.max_output_tokens,
            "audio": {"output": {"format": format_wire(self.output_format), "voice": self.voice}},
            "usage": self.usage,
            "metadata": self.metadata,
        }
        return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------- helpers


def event_id_of(frame: str | bytes) -> str | None:
    """The client's ``event_id`` from an event that failed validation, if it has one."""
    try:
        raw = msgspec.json.decode(frame)
    except msgspec.DecodeError:
        return None
    value = raw.get("event_id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def check_rate(fmt: p.AudioFormat, param: str) -> None:
    if fmt.type == "audio/pcm" and fmt.rate not in (None, 24_000):
        raise InvalidRequest(
            f"Invalid rate {fmt.rate}: 'audio/pcm' is 24000 Hz.", param=param, code="invalid_value"
        )


def tool_choice_of(choice: Any, tools: list[p.FunctionTool]) -> ToolChoice:
    """The engine's tool choice, refused (400) as chat refuses it (:mod:`..tool_choice`)."""
    if isinstance(choice, p.NamedFunction):
        return choose_tools("function", tools, name=choice.name)[0]
    return choose_tools(choice, tools)[0]
