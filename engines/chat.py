"""The chat engine interface: plain requests in, a stream of plain events out.

Like the speech engines, a chat engine knows nothing of HTTP or of the OpenAI wire format.
The gateway turns an OpenAI chat request into a :class:`ChatRequest` (mapping the
``developer`` role to ``system``, text content parts to one string, ``max_completion_tokens``
over ``max_tokens``) and turns the :data:`ChatEvent` stream back into chunks or one response.

The event stream of one generation is, in order, either

* any number of :class:`TextDelta`, then one :class:`Finish` (``"stop"`` or ``"length"``), or
* for each tool call (index 0, 1, ...) one :class:`ToolCallStart` followed by
  :class:`ToolCallArgsDelta` fragments whose concatenation is that call's JSON arguments
  and one :class:`ToolCallEnd`, then one :class:`Finish` (``"tool_calls"``, or
  ``"length"`` when cut short, where the last call may have no end).

These tool-call events are the one vocabulary of the project: the parsers of model
output (adapters.tools.extract for JSON, adapters.step_audio.tools for Step-Audio's
markup) emit them, the engines pass them on, and the chat and realtime services read them.

Errors that depend only on the request (bad schema, prompt longer than the context) are
raised before the first event, so a caller can still answer them with an HTTP status.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import AsyncIterator, ClassVar, NamedTuple, Union

from .base import Engine, InvalidInput

# --------------------------------------------------------------------------- request


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made; ``arguments`` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    """One turn. ``role`` is ``system``, ``user``, ``assistant`` or ``tool``.

    ``content`` may be None on an assistant turn that only calls tools. A ``tool`` turn
    carries the result of the call named by ``tool_call_id``. ``audio_tokens`` is set on the
    current user turn for engines that read speech as discrete tokens
    (:attr:`ChatEngine.accepts_audio_tokens`); ``content`` then holds its transcript, if known.
    """

    role: str
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    audio_tokens: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is the JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolChoice:
    """Whether and which tool the model must call.

    ``mode`` is one of

    * ``"none"``: never call a tool, answer in text;
    * ``"auto"``: the engine decides between text and a tool call;
    * ``"required"``: call at least one tool (the engine picks which);
    * ``"function"``: call the tool named ``name``, exactly once.

    Use the constants ``ToolChoice.NONE``, ``ToolChoice.AUTO``, ``ToolChoice.REQUIRED`` and
    ``ToolChoice.function("get_weather")``.
    """

    mode: str = "auto"
    name: str | None = None

    NONE: ClassVar["ToolChoice"]
    AUTO: ClassVar["ToolChoice"]
    REQUIRED: ClassVar["ToolChoice"]

    def __post_init__(self) -> None:
        if self.mode not in ("none", "auto", "required", "function"):
            raise ValueError(f"unknown tool_choice mode {self.mode!r}")
        if (self.mode == "function") != (self.name is not None):
            raise ValueError("tool_choice: a name is given exactly when mode is 'function'")

    @classmethod
    def function(cls, name: str) -> "ToolChoice":
        return cls("function", name)


ToolChoice.NONE = ToolChoice("none")
ToolChoice.AUTO = ToolChoice("auto")
ToolChoice.REQUIRED = ToolChoice("required")


@dataclass(frozen=True)
class ResponseFormat:
    """``type`` is ``"text"``, ``"json_object"`` (any JSON object) or ``"json_schema"``
    (JSON matching ``schema``). Use ``ResponseFormat.TEXT``, ``ResponseFormat.JSON_OBJECT``
    or ``ResponseFormat.json_schema({...})``."""

    type: str = "text"
    schema: dict | None = None

    TEXT: ClassVar["ResponseFormat"]
    JSON_OBJECT: ClassVar["ResponseFormat"]

    def __post_init__(self) -> None:
        if self.type not in ("text", "json_object", "json_schema"):
            raise ValueError(f"unknown response_format type {self.type!r}")
        if (self.type == "json_schema") != (self.schema is not None):
            raise ValueError("response_format: a schema is given exactly for 'json_schema'")

    @classmethod
    def json_schema(cls, schema: dict) -> "ResponseFormat":
        return cls("json_schema", schema)


ResponseFormat.TEXT = ResponseFormat("text")
ResponseFormat.JSON_OBJECT = ResponseFormat("json_object")


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion. Sampling fields follow OpenAI's meaning and defaults.

    ``max_tokens`` None means: until the model stops or the context window is full.
    ``top_logprobs`` (0-20) only counts when ``logprobs`` is set. ``defaulted`` names the
    sampling fields the caller left out (``"temperature"``, ``"top_p"``): their values
    here are OpenAI's defaults, and a model with defaults of its own (Step-Audio-Chat)
    uses those instead, while an explicit 1.0 is still sent as 1.0.

    ``incremental`` False says the caller only wants the whole answer (a non-streamed,
    unspoken reply): the events are the same, but an engine that calls a server may
    fetch the answer in one response instead of token by token.
    """

    messages: list[ChatMessage]
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = ToolChoice.AUTO
    parallel_tool_calls: bool = True
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    response_format: ResponseFormat = ResponseFormat.TEXT
    logprobs: bool = False
    top_logprobs: int = 0
    defaulted: frozenset[str] = frozenset()
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    incremental: bool = True


# --------------------------------------------------------------------------- events


class TopLogprob(NamedTuple):
    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, log probability, UTF-8 bytes and the likeliest
    alternatives (``top``, most likely first, at most ``top_logprobs`` of them)."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[TopLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class TextDelta:
    """The next piece of the answer, as soon as it exists. ``logprobs`` (when requested)
    covers the tokens that produced this piece."""

    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class ToolCallStart:
    """A call's name is known. ``index`` counts the answer's calls from 0."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArgsDelta:
    """The next piece of a call's arguments; the pieces concatenate to its JSON text."""

    index: int
    fragment: str


@dataclass(frozen=True)
class ToolCallEnd:
    """A call is over. ``error`` is None when ``arguments`` is usable, else why not (a
    parser cannot know before the end); ``closed`` is False when the output ended inside
    the call's markup."""

    index: int
    name: str
    arguments: str
    closed: bool = True
    error: str | None = None


@dataclass(frozen=True)
class Finish:
    """The last event. ``reason`` is ``"stop"``, ``"length"`` or ``"tool_calls"``."""

    reason: str
    prompt_tokens: int
    completion_tokens: int


ChatEvent = Union[TextDelta, ToolCallStart, ToolCallArgsDelta, ToolCallEnd, Finish]
ToolCallEvent = Union[ToolCallStart, ToolCallArgsDelta, ToolCallEnd]


# --------------------------------------------------------------------------- errors


class ContextOverflow(InvalidInput):
    """The prompt does not fit the model's context window."""

    code = "context_length_exceeded"


# --------------------------------------------------------------------------- engine


class ChatEngine(Engine):

    #: True when the engine reads the current user turn's speech as ``<audio_N>`` tokens
    #: (Step-Audio); otherwise the gateway hands it a transcript.
    accepts_audio_tokens: bool = False

    @abc.abstractmethod
    def generate(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        """Stream the answer to ``request`` as :data:`ChatEvent` items, ending with a
        :class:`Finish`. Raises :class:`~engines.base.InvalidInput` for unusable requests."""

    @abc.abstractmethod
    async def count_tokens(self, text: str) -> int:
        """Exactly how many tokens ``text`` is for this model (no special tokens added).
        Async: a model served elsewhere (Step-Audio-Chat in vLLM) has its tokenizer there."""


_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def new_tool_call_id() -> str:
    """A fresh id in OpenAI's shape (``call_`` and 24 letters and digits)."""
    import secrets

    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))
