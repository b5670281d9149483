"""Tool calling in the Step-Audio prompt format, and an incremental parser for tool calls.

Step-Audio-Chat (130B) documents only the input side (issue #31): the tool list goes in a
turn whose role is ``tool_json_schemas``. Everything else here is the Step-Audio 2
convention from StepFun's vLLM fork, the best available guess for the
130B model, to be validated against it:

* schemas: ``<|BOT|>tool_json_schemas\\n{json.dumps(tools, ensure_ascii=False)}<|EOT|>``
  where ``tools`` is the full OpenAI array ``[{"type": "function", "function": {...}}]``;
* a call in model output, and in history: ``<tool_call>function\\n{name}\\n{json}</tool_call>``,
  after any leading text, several in a row allowed. History writes the arguments' JSON
  text as it is, once: the fork's ``json.dumps`` of an already-JSON string double-encodes
  it, which the reference says a gateway should not copy;
* a result: ``<|BOT|>function_output\\n{name}\\n{content}<|EOT|>`` (the vLLM template), or
  ``<|BOT|>input\\n{content}<|EOT|>`` (StepFun's own Step-Audio2 example): a
  :class:`ToolResultFormat` picks one.

:class:`MarkupToolCallParser` reads the model's output as it streams. It reports the text
outside the markup (never a character of the markup, even a ``<tool_call>`` split across
fragments: a possible partial tag at the end of a fragment is held back until the next one
settles it), each call's name as soon as its line is complete, the arguments as they
arrive, and the end of each call, as the project's one set of events (``TextDelta``,
``ToolCallStart``, ``ToolCallArgsDelta``, ``ToolCallEnd`` from :mod:`engines.chat`). Its results do not depend on how the output is split.
Calls are dropped, as by the fork's parser, when their name is not among the request's
tools or the header has no name line; dropped calls produce no events at all and are
listed in :attr:`MarkupToolCallParser.dropped`. Invalid JSON arguments cannot be known until the
call ends, so :class:`ToolCallEnd` carries an ``error`` instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Collection, Sequence, Union

from adapters.chat.events import (
    TextDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    new_tool_call_id,
)
from adapters.chat.messages import ToolCall, ToolSpec

from ..text.holdback import partial_marker_length
from .special_tokens import turn

TOOL_SCHEMAS_ROLE = "tool_json_schemas"
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
CALL_TYPE = "function"


# --------------------------------------------------------------------------- prompt side


def tool_schemas(tools: Sequence[ToolSpec]) -> list[dict]:
    """The OpenAI ``tools`` array for ``tools``.

    ``description`` is left out when empty: an OpenAI client that sent none gets none
    written back (``ToolSpec`` cannot tell "absent" from ``""``).
    """
    schemas = []
    for tool in tools:
        function: dict = {"name": tool.name}
        if tool.description:
            function["description"] = tool.description
        function["parameters"] = tool.parameters
        schemas.append({"type": "function", "function": function})
    return schemas


def tool_schemas_json(tools: Sequence[ToolSpec]) -> str:
    """``json.dumps(tools, ensure_ascii=False)`` with default separators, as upstream."""
    return json.dumps(tool_schemas(tools), ensure_ascii=False)


def tool_schemas_turn(tools: Sequence[ToolSpec]) -> str:
    """``<|BOT|>tool_json_schemas\\n[...]<|EOT|>``; goes right after the system turn."""
    return turn(TOOL_SCHEMAS_ROLE, tool_schemas_json(tools))


def render_tool_call(call: ToolCall) -> str:
    """``<tool_call>function\\n{name}\\n{arguments}</tool_call>``, arguments written once.

    Empty arguments are written as ``{}`` so the call reads back as valid JSON.
    """
    arguments = call.arguments.strip() or "{}"
    return f"{CALL_OPEN}{CALL_TYPE}\n{call.name}\n{arguments}{CALL_CLOSE}"


def render_tool_calls(calls: Sequence[ToolCall]) -> str:
    """Several calls back to back, with no separator (the fork's history rendering)."""
    return "".join(render_tool_call(call) for call in calls)


@dataclass(frozen=True)
class ToolResultFormat:
    """How a ``tool`` message is written: the turn's role, and whether the called
    function's name comes first on its own line."""

    role: str = "function_output"
    name_line: bool = True


#: ``<|BOT|>function_output\n{name}\n{content}<|EOT|>``: the vLLM Step-Audio 2 template.
FUNCTION_OUTPUT = ToolResultFormat()
#: ``<|BOT|>input\n{content}<|EOT|>``: StepFun's Step-Audio2 ``examples-vllm.py``.
INPUT = ToolResultFormat(role="input", name_line=False)

#: The name written when a result's call cannot be found (the vLLM template's default).
DEFAULT_RESULT_NAME = "tool"


def tool_result_turn(
    content: str, name: str = DEFAULT_RESULT_NAME, fmt: ToolResultFormat = FUNCTION_OUTPUT
) -> str:
    """One tool result as a turn in the chosen format."""
    body = f"{name}\n{content}" if fmt.name_line else content
    return turn(fmt.role, body)


# --------------------------------------------------------------------------- parser events


@dataclass(frozen=True)
class DroppedCall:
    """Tool-call markup that produced no events, and why."""

    markup: str
    reason: str


#: Text outside the markup, and the project's tool-call events (engines.chat).
ParserEvent = Union[TextDelta, ToolCallStart, ToolCallArgsDelta, ToolCallEnd]

_TEXT, _HEADER, _ARGS, _SKIP = "text", "header", "args", "skip"


def _arguments_error(arguments: str) -> str | None:
    try:
        value = json.loads(arguments)
    except ValueError as exc:
        return f"arguments are not valid JSON: {exc}"
    if not isinstance(value, dict):
        return "arguments are not a JSON object"
    return None


class MarkupToolCallParser:
    """Feed streamed output with :meth:`feed`, then call :meth:`close` once at the end.

    ``tool_names``: the request's tools; a call to any other name is dropped. None
    accepts every name (for stripping markup, or when the caller checks names itself).
    """

    def __init__(self, tool_names: Collection[str] | None = None) -> None:
        self.tool_names = None if tool_names is None else frozenset(tool_names)
        self.calls: list[ToolCallEnd] = []
        self.dropped: list[DroppedCall] = []
        self._state = _TEXT
        self._buffer = ""  # received, not yet reported
        self._name = ""
        self._arguments: list[str] = []  # reported pieces of the current call
        self._skipped: list[str] = []  # markup of the call being dropped
        self._skip_reason = ""
        self._closed = False
        self._steps = {
            _TEXT: self._text,
            _HEADER: self._header,
            _ARGS: self._args,
            _SKIP: self._skip,
        }

    # ------------------------------------------------------------------ public

    @property
    def idle(self) -> bool:
        """Outside any call with nothing held back: a piece without ``<`` is then text
        exactly as it is (both tags begin with ``<``), which callers may pass on as such."""
        return self._state is _TEXT and not self._buffer

    def feed(self, fragment: str) -> list[ParserEvent]:
        """Take the next piece of output; returns the events it settles, in order."""
        if self._closed:
            raise RuntimeError("feed() after close()")
        self._buffer += fragment
        return self._drain(final=False)

    def close(self) -> list[ParserEvent]:
        """The output is complete: release held-back text and end an unclosed call."""
        if self._closed:
            return []
        events = self._drain(final=True)
        self._closed = True
        return events

    # ------------------------------------------------------------------ states

    def _drain(self, final: bool) -> list[ParserEvent]:
        events: list[ParserEvent] = []
        # Each step handles what the buffer settles in the current state and says whether
        # the state changed (so there may be more to do).
        while self._steps[self._state](events, final):
            pass
        return events

    def _text(self, events: list[ParserEvent], final: bool) -> bool:
        buffer = self._buffer
        opened, closed = buffer.find(CALL_OPEN), buffer.find(CALL_CLOSE)
        if opened == -1 and closed == -1:
            keep = 0 if final else partial_marker_length(buffer, (CALL_OPEN, CALL_CLOSE))
            self._emit_text(events, buffer[: len(buffer) - keep])
            self._buffer = buffer[len(buffer) - keep :]
            return False
        if closed != -1 and (opened == -1 or closed < opened):
            # A stray </tool_call> with no call open: markup all the same, never text.
            self._emit_text(events, buffer[:closed])
            self._buffer = buffer[closed + len(CALL_CLOSE) :]
            return True
        self._emit_text(events, buffer[:opened])
        self._buffer = buffer[opened + len(CALL_OPEN) :]
        self._state = _HEADER
        return True

    def _header(self, events: list[ParserEvent], final: bool) -> bool:
        # The fork splits the call with split("\n", 2): type line, name line, arguments.
        buffer = self._buffer
        first = buffer.find("\n")
        second = buffer.find("\n", first + 1) if first != -1 else -1
        closed = buffer.find(CALL_CLOSE)
        if second != -1 and (closed == -1 or second < closed):
            name = buffer[first + 1 : second].strip()
            header = CALL_OPEN + buffer[: second + 1]
            self._buffer = buffer[second + 1 :]
            if not name:
                self._start_skip(header, "the call has an empty name line")
            elif self.tool_names is not None and name not in self.tool_names:
                self._start_skip(header, f"{name!r} is not one of the request's tools")
            else:
                self._name, self._arguments = name, []
                events.append(ToolCallStart(len(self.calls), new_tool_call_id(), name))
                self._state = _ARGS
            return True
        if closed != -1:
            markup = CALL_OPEN + buffer[: closed + len(CALL_CLOSE)]
            self.dropped.append(DroppedCall(markup, "the call has no name line"))
            self._buffer = buffer[closed + len(CALL_CLOSE) :]
            self._state = _TEXT
            return True
        if final:
            self.dropped.append(DroppedCall(CALL_OPEN + buffer, "the output ended in the call"))
            self._buffer = ""
        return False

    def _args(self, events: list[ParserEvent], final: bool) -> bool:
        if not self._arguments:
            self._buffer = self._buffer.lstrip()
        buffer = self._buffer
        closed = buffer.find(CALL_CLOSE)
        if closed != -1:
            self._emit_arguments(events, buffer[:closed].rstrip())
            self._buffer = buffer[closed + len(CALL_CLOSE) :]
            self._end_call(events, closed=True)
            return True
        if final:
            self._emit_arguments(events, buffer.rstrip())
            self._buffer = ""
            self._end_call(events, closed=False)
            return False
        # Hold back a possible partial </tool_call>, and trailing whitespace, which is
        # only part of the arguments if more arguments follow it.
        ready = buffer[: len(buffer) - partial_marker_length(buffer, (CALL_CLOSE,))].rstrip()
        self._emit_arguments(events, ready)
        self._buffer = buffer[len(ready) :]
        return False

    def _skip(self, events: list[ParserEvent], final: bool) -> bool:
        buffer = self._buffer
        closed = buffer.find(CALL_CLOSE)
        if closed != -1:
            self._skipped.append(buffer[: closed + len(CALL_CLOSE)])
            self._buffer = buffer[closed + len(CALL_CLOSE) :]
            self.dropped.append(DroppedCall("".join(self._skipped), self._skip_reason))
            self._state = _TEXT
            return True
        keep = 0 if final else partial_marker_length(buffer, (CALL_CLOSE,))
        self._skipped.append(buffer[: len(buffer) - keep])
        self._buffer = buffer[len(buffer) - keep :]
        if final:
            self.dropped.append(DroppedCall("".join(self._skipped), self._skip_reason))
        return False

    # ------------------------------------------------------------------ helpers

    def _start_skip(self, header: str, reason: str) -> None:
        self._skipped, self._skip_reason = [header], reason
        self._state = _SKIP

    def _emit_text(self, events: list[ParserEvent], text: str) -> None:
        if text:
            events.append(TextDelta(text))

    def _emit_arguments(self, events: list[ParserEvent], fragment: str) -> None:
        if fragment:
            self._arguments.append(fragment)
            events.append(ToolCallArgsDelta(len(self.calls), fragment))

    def _end_call(self, events: list[ParserEvent], closed: bool) -> None:
        arguments = "".join(self._arguments)
        end = ToolCallEnd(
            len(self.calls), self._name, arguments, closed, _arguments_error(arguments)
        )
        self.calls.append(end)
        events.append(end)
        self._state = _TEXT


# --------------------------------------------------------------------------- one-shot helpers


def parse_tool_calls(
    text: str, tool_names: Collection[str] | None = None
) -> tuple[str, list[ToolCallEnd]]:
    """A whole completion as (text outside the markup, calls whose ``error`` is None)."""
    parser = MarkupToolCallParser(tool_names)
    events = parser.feed(text) + parser.close()
    content = "".join(event.text for event in events if isinstance(event, TextDelta))
    return content, [call for call in parser.calls if call.error is None]


def strip_tool_markup(text: str) -> str:
    """``text`` without any tool-call markup, for TTS: what the parser reports as text.

    Whole calls, a call cut off at the end and stray ``</tool_call>`` tags all go. For
    streamed output, speak the parser's text events instead.
    """
    return parse_tool_calls(text)[0]
