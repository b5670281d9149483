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
from typing import AsyncIterator, ClassVar

from adapters.chat.events import (  # noqa: F401 - the engine interface's vocabulary
    ChatEvent,
    Finish,
    TextDelta,
    TokenLogprob,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallEvent,
    ToolCallStart,
    TopLogprob,
    new_tool_call_id,
)
from adapters.chat.messages import ChatMessage, ToolCall, ToolSpec  # noqa: F401

from .base import Engine, InvalidInput

# --------------------------------------------------------------------------- request


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

    async def prefill(self, request: ChatRequest) -> None:
        """Compute ``request``'s prompt ahead, if the engine is idle, so that a later
        request whose prompt starts the same way (the conversation's next turn) begins
        sooner. Best effort: it may do nothing. By default nothing is done: an engine that
        keeps every token it computed (vLLM's prefix cache) needs no head start."""


