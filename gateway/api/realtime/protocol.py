"""Realtime client events (the GA names of the official SDKs' ``types/realtime``).

Decoding each event into these structs is the validation: a wrong type, an unknown event
or a missing field becomes an ``error`` server event naming the field, and the session
goes on. Unknown fields are ignored, as OpenAI ignores them, so newer SDKs keep working.
Server events are plain dicts built in :mod:`.events`.

Numeric fields carry the ranges OpenAI's spec gives them (``msgspec.Meta``), so an
out-of-range value is refused at decoding with an error naming its field. What the spec
leaves open (VAD durations) is bounded here by what a turn can sensibly last.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta

from adapters.limits import BudgetExceeded, cap_schemas

AudioFormatType = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]

# A minute of padding or of silence is far past any turn; larger values only pile audio up.
_Milliseconds = Annotated[int, Meta(ge=0, le=60_000)]
# The spec: "between 1 and 4096 tokens ... or inf".
MaxOutputTokens = Union[Annotated[int, Meta(ge=1, le=4096)], Literal["inf"]]


class AudioFormat(msgspec.Struct, kw_only=True):
    type: AudioFormatType = "audio/pcm"
    rate: Annotated[int, Meta(gt=0)] | None = None


class Transcription(msgspec.Struct, kw_only=True):
    model: str | None = None
    language: str | None = None
    # gpt-transcribe's list of the languages to expect: Whisper takes one, so one alone is
    # its language and several leave it to detect (the Agents SDK and LiveKit send this).
    languages: Annotated[list[str], Meta(min_length=1)] | None = None
    prompt: str | None = None


class TurnDetection(msgspec.Struct, kw_only=True):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    prefix_padding_ms: _Milliseconds | None = None
    silence_duration_ms: _Milliseconds | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    idle_timeout_ms: Annotated[int, Meta(ge=5_000, le=30_000)] | None = None


class AudioInput(msgspec.Struct, kw_only=True):
    format: AudioFormat | None = None
    transcription: Transcription | None | msgspec.UnsetType = msgspec.UNSET
    turn_detection: TurnDetection | None | msgspec.UnsetType = msgspec.UNSET
    noise_reduction: Any = None


class AudioOutput(msgspec.Struct, kw_only=True):
    format: AudioFormat | None = None
    voice: str | None = None
    speed: Annotated[float, Meta(ge=0.25, le=1.5)] | None = None


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


# What ``include`` may ask for (the spec's enum, in both kinds of session).
Includable = Literal["item.input_audio_transcription.logprobs"]


class SessionConfig(msgspec.Struct, kw_only=True):
    """A realtime session's configuration, or a transcription session's (the spec's
    ``RealtimeTranscriptionSessionCreateRequestGA``: ``type``, ``audio.input``, ``include``;
    the other fields are not read in one). ``type`` left out means the session's own."""

    type: Literal["realtime", "transcription"] | None = None
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: MaxOutputTokens | None = None
    tracing: Any = None
    include: list[Includable] | None = None
    truncation: Any = None
    prompt: Any = None

    def check_input(self, limits, at: str = "session") -> None:
        _check_text(self.instructions, f"{at}.instructions", limits)
        transcription = self.audio.input.transcription if self.audio and self.audio.input else None
        if isinstance(transcription, Transcription):
            _check_text(transcription.prompt, f"{at}.audio.input.transcription.prompt", limits)
        _check_tools(self.tools, f"{at}.tools", limits)


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

    def check_input(self, limits, at: str = "item") -> None:
        for i, part in enumerate(self.content or ()):
            _check_text(part.text, f"{at}.content[{i}].text", limits)
            _check_text(part.transcript, f"{at}.content[{i}].transcript", limits)
        _check_text(self.arguments, f"{at}.arguments", limits)
        _check_text(self.output, f"{at}.output", limits)


class ResponseConfig(msgspec.Struct, kw_only=True):
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: MaxOutputTokens | None = None
    conversation: Literal["auto", "none"] | str | None = None
    input: list[Item] | None = None
    metadata: dict[str, str] | None = None

    def check_input(self, limits, at: str = "response") -> None:
        _check_text(self.instructions, f"{at}.instructions", limits)
        for i, item in enumerate(self.input or ()):
            item.check_input(limits, f"{at}.input[{i}]")
        _check_tools(self.tools, f"{at}.tools", limits)


def _check_text(text: str | None, param: str, limits) -> None:
    """The text-length budget HTTP chat applies to each message (see chat's protocol)."""
    if text is not None and len(text) > limits.max_text_chars:
        raise BudgetExceeded(
            f"Invalid '{param}': string too long. Expected a string with maximum length "
            f"{limits.max_text_chars}, but got a string with length {len(text)} instead.",
            param,
            "string_above_max_length",
        )


def _check_tools(tools: list[FunctionTool] | None, at: str, limits) -> None:
    """Chat's schema budget for the tools' parameters (they become one grammar), capped in
    place as chat caps them; each refusal names the tool's field."""
    if not tools:
        return
    for i, tool in enumerate(tools):
        _check_text(tool.description, f"{at}[{i}].description", limits)
    listed = [(t, f"{at}[{i}].parameters") for i, t in enumerate(tools) if t.parameters is not None]
    capped = cap_schemas([(t.parameters, where) for t, where in listed], limits.schema_budget(), at)
    for (tool, _), parameters in zip(listed, capped):
        tool.parameters = parameters


class _Event(msgspec.Struct, kw_only=True, tag_field="type"):
    event_id: str | None = None


class SessionUpdate(_Event, tag="session.update"):
    session: SessionConfig

    def check_input(self, limits) -> None:
        self.session.check_input(limits)


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

    def check_input(self, limits) -> None:
        self.item.check_input(limits)


class ItemRetrieve(_Event, tag="conversation.item.retrieve"):
    item_id: str


class ItemDelete(_Event, tag="conversation.item.delete"):
    item_id: str


class ItemTruncate(_Event, tag="conversation.item.truncate"):
    item_id: str
    content_index: Annotated[int, Meta(ge=0)]
    audio_end_ms: Annotated[int, Meta(ge=0)]


class ResponseCreate(_Event, tag="response.create"):
    response: ResponseConfig | None = None

    def check_input(self, limits) -> None:
        if self.response is not None:
            self.response.check_input(limits)


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
