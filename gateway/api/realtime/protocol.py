"""Realtime client events (the GA names of the official SDKs' ``types/realtime``).

Decoding each event into these structs is the validation: a wrong type, an unknown event
or a missing field becomes an ``error`` server event naming the field, and the session
goes on. Unknown fields are ignored, as OpenAI ignores them, so newer SDKs keep working.
Server events are plain dicts built in :mod:`.events`.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

AudioFormatType = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]


class AudioFormat(msgspec.Struct, kw_only=True):
    type: AudioFormatType = "audio/pcm"
    rate: int | None = None


class Transcription(msgspec.Struct, kw_only=True):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class TurnDetection(msgspec.Struct, kw_only=True):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = msgspec.field(default=None)
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    idle_timeout_ms: int | None = None


class AudioInput(msgspec.Struct, kw_only=True):
    format: AudioFormat | None = None
    transcription: Transcription | None | msgspec.UnsetType = msgspec.UNSET
    turn_detection: TurnDetection | None | msgspec.UnsetType = msgspec.UNSET
    noise_reduction: Any = None


class AudioOutput(msgspec.Struct, kw_only=True):
    format: AudioFormat | None = None
    voice: str | None = None
    speed: float | None = None


class AudioConfig(msgspec.Struct, kw_only=True):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class FunctionTool(msgspec.Struct, kw_only=True):
    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class NamedFunction(msgspec.Struct, kw_only=True):
    type: Literal["function"]
    name: str


ToolChoice = Union[Literal["auto", "none", "required"], NamedFunction]


class SessionConfig(msgspec.Struct, kw_only=True):
    type: Literal["realtime"] = "realtime"
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    tracing: Any = None
    include: list[str] | None = None
    truncation: Any = None
    prompt: Any = None


class ContentPart(msgspec.Struct, kw_only=True):
    type: Literal["input_text", "input_audio", "output_text", "output_audio", "text", "audio"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None


class Item(msgspec.Struct, kw_only=True):
    type: Literal["message", "function_call", "function_call_output"]
    id: str | None = None
    object: str | None = None
    status: str | None = None
    role: Literal["user", "assistant", "system"] | None = None
    content: list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None


class ResponseConfig(msgspec.Struct, kw_only=True):
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    conversation: Literal["auto", "none"] | str | None = None
    input: list[Item] | None = None
    metadata: dict[str, str] | None = None


class _Event(msgspec.Struct, kw_only=True, tag_field="type"):
    event_id: str | None = None


class SessionUpdate(_Event, tag="session.update"):
    session: SessionConfig


class AudioAppend(_Event, tag="input_audio_buffer.append"):
    audio: str


class AudioCommit(_Event, tag="input_audio_buffer.commit"):
    pass


class AudioClear(_Event, tag="input_audio_buffer.clear"):
    pass


class OutputAudioClear(_Event, tag="output_audio_buffer.clear"):
    pass


class ItemCreate(_Event, tag="conversation.item.create"):
    item: Item
    previous_item_id: str | None = None


class ItemRetrieve(_Event, tag="conversation.item.retrieve"):
    item_id: str


class ItemDelete(_Event, tag="conversation.item.delete"):
    item_id: str


class ItemTruncate(_Event, tag="conversation.item.truncate"):
    item_id: str
    content_index: int
    audio_end_ms: int


class ResponseCreate(_Event, tag="response.create"):
    response: ResponseConfig | None = None


class ResponseCancel(_Event, tag="response.cancel"):
    response_id: str | None = None


ClientEvent = Union[
    SessionUpdate,
    AudioAppend,
    AudioCommit,
    AudioClear,
    OutputAudioClear,
    ItemCreate,
    ItemRetrieve,
    ItemDelete,
    ItemTruncate,
    ResponseCreate,
    ResponseCancel,
]

decoder = msgspec.json.Decoder(ClientEvent)
