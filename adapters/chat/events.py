"""The events of one generation, the one vocabulary of the project: the parsers of model
output (adapters.tools.extract for JSON, adapters.step_audio.tools for Step-Audio's
markup) emit the tool-call events, the engines yield them all, and the gateway renders
them (gateway.turn). See engines.chat for their order.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, Union


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


_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def new_tool_call_id() -> str:
    """A fresh id in OpenAI's shape (``call_`` and 24 letters and digits)."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


class ToolCallParser(Protocol):
    """What both parsers of model output are: adapters.tools.extract's
    :class:`JsonToolCallParser` (the JSON a grammar-constrained model writes) and
    adapters.step_audio.tools' :class:`MarkupToolCallParser` (Step-Audio's markup). Feed the
    output as it is generated, then close once at the end; each returns the events it
    settles, in order (text outside any call, for a parser that sees any, as
    :class:`TextDelta`); ``calls`` holds every call ended so far."""

    calls: list[ToolCallEnd]

    def feed(self, text: str) -> list[TextDelta | ToolCallStart | ToolCallArgsDelta | ToolCallEnd]:
        ...

    def close(self) -> list[TextDelta | ToolCallStart | ToolCallArgsDelta | ToolCallEnd]:
        ...

