"""Wire structs of the Responses API: the request, the Response object and stream events.

Input items are one struct (:class:`InputItem`) rather than a tagged union: a message item
may leave out its ``type``, which a tagged union cannot decode. The translation into a
chat request (translate.py) checks each kind's required fields. Unknown top-level fields
are ignored, as OpenAI does for newer parameters; the response side always emits the
keys the spec marks required, even when null.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType

# ------------------------------------------------------------------ content parts


class InputTextPart(msgspec.Struct, tag_field="type", tag="input_text"):
    text: str


class LogProbAlternative(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None


class OutputLogProb(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[LogProbAlternative]


class OutputTextPart(msgspec.Struct, kw_only=True, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = []
    # None only as a client may echo an earlier output back; ours always send a list.
    logprobs: list[OutputLogProb] | None = []


class OutputRefusal(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


class InputAudioData(msgspec.Struct, kw_only=True):
    data: str
    format: str = "wav"


class InputAudioContent(msgspec.Struct, tag_field="type", tag="input_audio"):
    input_audio: InputAudioData


class InputImagePart(msgspec.Struct, kw_only=True, tag_field="type", tag="input_image"):
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFilePart(msgspec.Struct, kw_only=True, tag_field="type", tag="input_file"):
    file_id: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None


ContentPart = Union[
    InputTextPart, OutputTextPart, OutputRefusal, InputAudioContent, InputImagePart, InputFilePart
]

# ------------------------------------------------------------------ input items


class InputItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Any input item: a message (``role``, ``content``), a ``function_call`` (``call_id``,
    ``name``, ``arguments``), a ``function_call_output`` (``call_id``, ``output``) or an
    ``item_reference`` (``id``). Also how the items of a stored conversation are kept."""

    type: str | None = None  # None: a message
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ContentPart] | None = None
    status: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None


# ------------------------------------------------------------------ tools and formats


class FunctionToolParam(msgspec.Struct, kw_only=True):
    """A tool of the request. Only ``type: "function"`` is served; any other type is
    decoded so that it can be refused by name (built-in tools)."""

    type: str
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")] | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFunctionTool(msgspec.Struct, kw_only=True, tag_field="type", tag="function"):
    """A function tool as the Response object echoes it."""

    name: str
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


class FunctionToolChoice(msgspec.Struct, kw_only=True, tag_field="type", tag="function"):
    name: str


class ToolChoiceAllowed(msgspec.Struct, kw_only=True, tag_field="type", tag="allowed_tools"):
    mode: Literal["auto", "required"]
    # Each names a tool in the shape of a tool_choice: {"type": "function", "name": ...}.
    tools: list[dict[str, Any]]


ToolChoiceWire = Union[Literal["none", "auto", "required"], FunctionToolChoice, ToolChoiceAllowed]


class TextFormatText(msgspec.Struct, tag_field="type", tag="text"):
    pass


class TextFormatJsonObject(msgspec.Struct, tag_field="type", tag="json_object"):
    pass


class TextFormatJsonSchema(msgspec.Struct, kw_only=True, tag_field="type", tag="json_schema"):
    name: str
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


FormatWire = Union[TextFormatText, TextFormatJsonObject, TextFormatJsonSchema]


class TextParam(msgspec.Struct, kw_only=True):
    format: FormatWire | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    """``text`` as the Response object echoes it."""

    format: FormatWire
    verbosity: str = "medium"


# ------------------------------------------------------------------ the request


class CreateResponseRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    stream: bool | None = False
    tools: list[FunctionToolParam] | None = None
    tool_choice: ToolChoiceWire | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, Meta(ge=16)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    text: TextParam | None = None
    include: list[str] | None = None
    metadata: dict[str, str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Decoded only to be refused (REFUSED_FIELDS): dropped as unknown fields, a request for
    # them would get an answer that silently lacks what they ask for.
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    moderation: Any = None
    context_management: Any = None


# Fields this gateway cannot honour: each is a 400 naming it when set (``background`` and
# ``truncation`` only for the values that ask for something; see translate.refuse).
REFUSED_FIELDS = {
    "conversation": "conversation objects are not served; chain responses with "
    "previous_response_id",
    "prompt": "stored prompt templates are not served; send input and instructions",
    "moderation": "this gateway runs no moderation",
    "context_management": "this gateway does not compact conversations",
}

# ------------------------------------------------------------------ the Response object


class MessageItem(msgspec.Struct, kw_only=True, tag_field="type", tag="message"):
    id: str
    status: str
    role: Literal["assistant"] = "assistant"
    content: list[OutputTextPart]


class FunctionCallItem(msgspec.Struct, kw_only=True, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


OutputItem = Union[MessageItem, FunctionCallItem]


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class IncompleteDetails(msgspec.Struct, kw_only=True):
    reason: str


class ResponseObject(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: str
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: None = None  # no reasoning models: nothing to configure
    store: bool
    temperature: float
    text: TextConfig
    tool_choice: ToolChoiceWire
    tools: list[ResponseFunctionTool]
    top_p: float
    top_logprobs: int
    truncation: str = "disabled"
    usage: ResponseUsage | UnsetType = UNSET  # once finished
    metadata: dict[str, str]
    background: bool = False
    service_tier: str = "default"


class DeletedResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


class InputItemList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[InputItem]
    first_id: str | None
    last_id: str | None
    has_more: bool


class StoredRecord(msgspec.Struct, kw_only=True):
    """What the state backend keeps per response: the Response object and every input
    item of its conversation (earlier turns' included), oldest first."""

    response: ResponseObject
    input: list[InputItem]


# ------------------------------------------------------------------ stream events


class _Lifecycle(msgspec.Struct, kw_only=True):
    response: ResponseObject
    sequence_number: int


class ResponseCreated(_Lifecycle, tag_field="type", tag="response.created"):
    pass


class ResponseInProgress(_Lifecycle, tag_field="type", tag="response.in_progress"):
    pass


class ResponseCompleted(_Lifecycle, tag_field="type", tag="response.completed"):
    pass


class ResponseIncomplete(_Lifecycle, tag_field="type", tag="response.incomplete"):
    pass


class ResponseFailed(_Lifecycle, tag_field="type", tag="response.failed"):
    pass


class OutputItemAdded(
    msgspec.Struct, kw_only=True, tag_field="type", tag="response.output_item.added"
):
    output_index: int
    item: OutputItem
    sequence_number: int


class OutputItemDone(
    msgspec.Struct, kw_only=True, tag_field="type", tag="response.output_item.done"
):
    output_index: int
    item: OutputItem
    sequence_number: int


class ContentPartAdded(
    msgspec.Struct, kw_only=True, tag_field="type", tag="response.content_part.added"
):
    item_id: str
    output_index: int
    content_index: int
    part: OutputTextPart
    sequence_number: int


class ContentPartDone(
    msgspec.Struct, kw_only=True, tag_field="type", tag="response.content_part.done"
):
    item_id: str
    output_index: int
    content_index: int
    part: OutputTextPart
    sequence_number: int


class OutputTextDelta(
    msgspec.Struct, kw_only=True, tag_field="type", tag="response.output_text.delta"
):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[OutputLogProb]
    sequence_number: int


class OutputTextDone(
    msgspec.Struct, kw_only=True, tag_field="type", tag="response.output_text.done"
):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[OutputLogProb]
    sequence_number: int


class FunctionCallArgumentsDelta(
    msgspec.Struct, kw_only=True, tag_field="type", tag="response.function_call_arguments.delta"
):
    item_id: str
    output_index: int
    delta: str
    sequence_number: int


class FunctionCallArgumentsDone(
    msgspec.Struct, kw_only=True, tag_field="type", tag="response.function_call_arguments.done"
):
    item_id: str
    name: str
    output_index: int
    arguments: str
    sequence_number: int


class ErrorEvent(msgspec.Struct, kw_only=True, tag_field="type", tag="error"):
    code: str | None
    message: str
    param: str | None
    sequence_number: int


STREAM_EVENTS = (
    ResponseCreated,
    ResponseInProgress,
    OutputItemAdded,
    ContentPartAdded,
    OutputTextDelta,
    OutputTextDone,
    ContentPartDone,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    OutputItemDone,
    ResponseCompleted,
    ResponseIncomplete,
    ResponseFailed,
    ErrorEvent,
)
