"""Wire structs of POST /v1/chat/completions: the request, the response and stream chunks.

The request side is lenient where SDKs are known to echo extra data back (assistant
messages with ``annotations``, full ``audio`` objects, ``refusal: null``) and ignores
unknown top-level fields, as OpenAI does for newer parameters. The response side always
emits the keys the spec marks required, even when null.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType

from adapters.limits import BudgetExceeded, cap_schema, cap_schemas

# ------------------------------------------------------------------ content parts


class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class InputAudio(msgspec.Struct):
    data: str
    format: str = "wav"


class InputAudioPart(msgspec.Struct, tag_field="type", tag="input_audio"):
    input_audio: InputAudio


class ImageUrlPart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: Any


class FilePart(msgspec.Struct, tag_field="type", tag="file"):
    file: Any


class RefusalPart(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


UserPart = Union[TextPart, InputAudioPart, ImageUrlPart, FilePart]
AssistantPart = Union[TextPart, RefusalPart]

# ------------------------------------------------------------------ messages


class SystemMessage(msgspec.Struct, kw_only=True, tag_field="role", tag="system"):
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(msgspec.Struct, kw_only=True, tag_field="role", tag="developer"):
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(msgspec.Struct, kw_only=True, tag_field="role", tag="user"):
    content: str | list[UserPart]
    name: str | None = None


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str


class ToolCallWire(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantAudioRef(msgspec.Struct, kw_only=True):
    """``{"id": ...}``; SDKs may echo the whole audio object, whose transcript we keep as a
    fallback for when the stored reply has expired."""

    id: str
    transcript: str | None = None


class AssistantMessage(msgspec.Struct, kw_only=True, tag_field="role", tag="assistant"):
    content: str | list[AssistantPart] | None = None
    refusal: str | None = None
    name: str | None = None
    audio: AssistantAudioRef | None = None
    tool_calls: list[ToolCallWire] | None = None
    function_call: Any = None
    annotations: Any = None


class ToolMessage(msgspec.Struct, kw_only=True, tag_field="role", tag="tool"):
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(msgspec.Struct, kw_only=True, tag_field="role", tag="function"):
    content: str | None
    name: str


Message = Union[
    SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage, FunctionMessage
]

# ------------------------------------------------------------------ tools and formats


class FunctionDefinition(msgspec.Struct, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(msgspec.Struct, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct, kw_only=True, tag_field="type", tag="function"):
    function: NamedFunction


class AllowedTools(msgspec.Struct, kw_only=True):
    mode: Literal["auto", "required"]
    # Each names a function of the request's tools, in the shape of a named tool_choice.
    tools: list[NamedToolChoice]


class AllowedToolsChoice(msgspec.Struct, kw_only=True, tag_field="type", tag="allowed_tools"):
    allowed_tools: AllowedTools


ToolChoiceWire = Union[Literal["none", "auto", "required"], NamedToolChoice, AllowedToolsChoice]


class JsonSchemaSpec(msgspec.Struct, kw_only=True):
    name: str
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(msgspec.Struct, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(msgspec.Struct, tag_field="type", tag="json_object"):
    pass


class JsonSchemaFormat(msgspec.Struct, kw_only=True, tag_field="type", tag="json_schema"):
    json_schema: JsonSchemaSpec


class VoiceRef(msgspec.Struct):
    id: str


ChatAudioFormat = Literal["wav", "aac", "mp3", "flac", "opus", "pcm16"]


class AudioOutput(msgspec.Struct, kw_only=True):
    voice: str | VoiceRef
    format: ChatAudioFormat

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class CreateChatCompletionRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoiceWire | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    # Floats as in the transcription form's Meta(ge=0.0, le=1.0): typing caches Annotated
    # types by equality (0 == 0.0), so int bounds here made the exported schema say 1 or 1.0
    # depending on which module was imported first.
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: int | None = None
    response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Annotated[int, Meta(ge=-100, le=100)]] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    # Decoded only to be refused (REFUSED_FIELDS): dropped as unknown fields, a request for
    # web search, moderation or the deprecated functions would get an answer without them.
    web_search_options: Any = None
    moderation: Any = None
    functions: Any = None
    function_call: Any = None

    def check_input(self, limits) -> None:
        """Budgets checked before any compute: each text field's length, and the schemas
        that become grammars (capped in place: see adapters/limits.py)."""
        for i, message in enumerate(self.messages):
            _check_text(getattr(message, "content", None), f"messages[{i}].content", limits)
        fmt = self.response_format
        has_schema = isinstance(fmt, JsonSchemaFormat) and fmt.json_schema.schema is not None
        if not self.tools and not has_schema:
            return  # most requests: no schema to cap
        budget = limits.schema_budget()
        tools = [
            (tool.function, f"tools[{i}].function.parameters")
            for i, tool in enumerate(self.tools or [])
            if tool.function.parameters is not None
        ]
        capped = cap_schemas([(f.parameters, param) for f, param in tools], budget, "tools")
        for (function, _), parameters in zip(tools, capped):
            function.parameters = parameters
        if has_schema:
            fmt.json_schema.schema = cap_schema(
                fmt.json_schema.schema, budget, "response_format.json_schema.schema"
            )


def _check_text(content: Any, param: str, limits) -> None:
    if isinstance(content, str):
        texts = [(content, param)]
    elif isinstance(content, list):
        texts = [
            (part.text, f"{param}[{j}].text")
            for j, part in enumerate(content)
            if isinstance(part, TextPart)
        ]
    else:
        return
    for text, where in texts:
        if len(text) > limits.max_text_chars:
            raise BudgetExceeded(
                f"Invalid '{where}': string too long. Expected a string with maximum length "
                f"{limits.max_text_chars}, but got a string with length {len(text)} instead.",
                where,
                "string_above_max_length",
            )


# Spec fields this gateway cannot honour and will not pretend to: each is a 400 naming it.
# Every other spec field is honoured or ignored as docs/compatibility.md says.
REFUSED_FIELDS = {
    "web_search_options": "this gateway has no web search",
    "moderation": "this gateway runs no moderation",
    "functions": "the deprecated functions API is not served; use tools",
    "function_call": "the deprecated functions API is not served; use tool_choice",
}


# ------------------------------------------------------------------ responses


class TopLogprobWire(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobWire(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobWire]


class ChoiceLogprobs(msgspec.Struct, kw_only=True):
    content: list[TokenLogprobWire] | None
    refusal: None = None


class ChatAudio(msgspec.Struct, kw_only=True):
    id: str
    data: str
    expires_at: int
    transcript: str


class ResponseMessage(msgspec.Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallWire] | UnsetType = UNSET
    audio: ChatAudio | UnsetType = UNSET
    annotations: list[Any] = []


class Choice(msgspec.Struct, kw_only=True):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str


class PromptTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0
    audio_tokens: int = 0


class CompletionTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0
    audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    service_tier: str = "default"
    system_fingerprint: str


# ------------------------------------------------------------------ stream chunks


class FunctionDelta(msgspec.Struct, kw_only=True):
    name: str | UnsetType = UNSET
    arguments: str


class ToolCallDelta(msgspec.Struct, kw_only=True):
    index: int
    id: str | UnsetType = UNSET
    type: Literal["function"] | UnsetType = UNSET
    function: FunctionDelta


class AudioDelta(msgspec.Struct, kw_only=True):
    id: str | UnsetType = UNSET
    data: str | UnsetType = UNSET
    transcript: str | UnsetType = UNSET
    expires_at: int | UnsetType = UNSET


class Delta(msgspec.Struct, kw_only=True):
    role: Literal["assistant"] | UnsetType = UNSET
    content: str | None | UnsetType = UNSET
    refusal: None | UnsetType = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET
    audio: AudioDelta | UnsetType = UNSET


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None | UnsetType = UNSET
    service_tier: str = "default"
    system_fingerprint: str
