"""Pull tool calls out of JSON text while it is still being generated.

The model writes ``{"name": "get_weather", "arguments": {"city": "Berlin"}}`` (or an array
of such objects) a token at a time. :class:`JsonToolCallParser` scans the text as it
arrives and reports, for each call object, the tool name as soon as its string is
complete (:class:`~engines.chat.ToolCallStart`), then the raw text of the ``arguments``
value piece by piece, exactly as generated (:class:`~engines.chat.ToolCallArgsDelta`: the
pieces concatenate to the arguments' JSON text), then the end of the call
(:class:`~engines.chat.ToolCallEnd`, with an ``error`` when the object had no usable
name, in which case no start was reported). Nothing is re-serialized and nothing waits
for the end of the document.

It is a small character-level JSON scanner: it tracks strings, escapes and bracket depth,
and interprets only the keys of the call objects themselves. Keys other than ``name``
and ``arguments`` are skipped. Arguments that arrive before the name are held back until
the name is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from adapters.chat.events import (
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallEvent,
    ToolCallStart,
    new_tool_call_id,
)

NO_NAME = "the call has no name"


@dataclass
class _Call:
    index: int
    name: str | None = None
    started: bool = False
    arguments: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)


class JsonToolCallParser:
    def __init__(self) -> None:
        self._stack: list[str] = []
        self._in_string = False
        self._escape = False
        self._call_level: int | None = None  # stack depth at which call fields live
        self._expect: str | None = None  # at call level: key, colon, value, comma
        self._key: str | None = None  # the key whose value comes next
        self._collect: list[str] | None = None  # raw text of a key or name string
        self._collecting: str | None = None  # "key" or "name"
        self._args: str | None = None  # kind of arguments value being forwarded
        self._args_depth = 0
        self._call: _Call | None = None
        self._count = 0
        self._events: list[ToolCallEvent] = []
        self._piece: list[str] = []  # arguments text seen during this feed
        self.done = False  # the whole document (object or array) is closed
        self.calls: list[ToolCallEnd] = []

    # ------------------------------------------------------------------ public

    def feed(self, text: str) -> list[ToolCallEvent]:
        """Scan the next piece of generated text; returns what it revealed, in order."""
        for char in text:
            self._char(char)
        self._flush_piece()
        events, self._events = self._events, []
        return events

    def close(self) -> list[ToolCallEvent]:
        """The output is complete. JSON holds nothing back, so nothing is left to settle:
        whether the document ended (``done``) is the caller's to judge, since only it
        knows whether the model stopped or was cut off."""
        return []

    # ------------------------------------------------------------------ scanning

    def _char(self, c: str) -> None:
        if self.done:
            return
        if self._args is not None:
            if self._forward(c):
                return
        if self._in_string:
            if self._collect is not None:
                self._collect.append(c)
            if self._escape:
                self._escape = False
            elif c == "\\":
                self._escape = True
            elif c == '"':
                self._in_string = False
                self._string_closed()
            return
        if c in " \t\r\n":
            return
        depth = len(self._stack)
        at_call = self._call_level is not None and depth == self._call_level and self._call
        if at_call and self._expect == "value" and self._key == "arguments":
            self._start_arguments(c)
            return
        if c == '"':
            self._in_string = True
            if at_call and self._expect == "key":
                self._collecting, self._collect = "key", [c]
            elif at_call and self._expect == "value" and self._key == "name":
                self._collecting, self._collect = "name", [c]
            elif at_call and self._expect == "value":
                self._expect = "comma"
            return
        if c in "{[":
            self._open(c, depth, bool(at_call))
        elif c in "}]":
            self._close()
        elif at_call:
            if c == ":" and self._expect == "colon":
                self._expect = "value"
            elif c == ",":
                self._expect = "key"
            elif self._expect == "value":  # a number, true, false or null: skipped
                self._expect = "comma"

    def _open(self, c: str, depth: int, at_call: bool) -> None:
        if depth == 0:
            self._call_level = 1 if c == "{" else 2
        self._stack.append(c)
        if c == "{" and len(self._stack) == self._call_level:
            self._call = _Call(self._count)
            self._count += 1
            self._expect, self._key = "key", None
        elif at_call and self._expect == "value":
            self._expect = "comma"  # a nested value of a key we skip

    def _close(self) -> None:
        if not self._stack:
            return
        closing_call = len(self._stack) == self._call_level and self._call is not None
        self._stack.pop()
        if closing_call:
            self._finish_call()
        if not self._stack:
            self.done = True

    def _string_closed(self) -> None:
        kind, raw = self._collecting, "".join(self._collect or [])
        self._collecting, self._collect = None, None
        if kind == "key":
            self._key = _decode(raw)
            self._expect = "colon"
        elif kind == "name":
            self._expect = "comma"
            name = _decode(raw)
            call = self._call
            if call is not None and call.name is None and isinstance(name, str) and name:
                call.name = name
                call.started = True
                self._flush_piece()
                self._events.append(ToolCallStart(call.index, new_tool_call_id(), name))
                if call.held:
                    self._events.append(ToolCallArgsDelta(call.index, "".join(call.held)))
                    call.held.clear()

    # ------------------------------------------------------------------ arguments

    def _start_arguments(self, c: str) -> None:
        self._args_depth = len(self._stack)
        if c in "{[":
            self._args = "container"
            self._stack.append(c)
        elif c == '"':
            self._args = "string"
            self._in_string = True
        else:
            self._args = "primitive"
        self._emit(c)

    def _forward(self, c: str) -> bool:
        """Forward ``c`` as arguments text; False when ``c`` ends a bare primitive value
        and must be scanned as part of the call object instead."""
        kind = self._args
        if kind == "primitive":
            if c in ",}] \t\r\n":
                self._end_arguments()
                return False
            self._emit(c)
            return True
        self._emit(c)
        if self._in_string:
            if self._escape:
                self._escape = False
            elif c == "\\":
                self._escape = True
            elif c == '"':
                self._in_string = False
                if kind == "string":
                    self._end_arguments()
        elif c == '"':
            self._in_string = True
        elif c in "{[":
            self._stack.append(c)
        elif c in "}]":
            self._stack.pop()
            if len(self._stack) == self._args_depth:
                self._end_arguments()
        return True

    def _end_arguments(self) -> None:
        self._args = None
        self._key = None
        self._expect = "comma"

    def _emit(self, c: str) -> None:
        call = self._call
        assert call is not None
        call.arguments.append(c)
        if call.started:
            self._piece.append(c)
        else:
            call.held.append(c)

    def _flush_piece(self) -> None:
        if self._piece and self._call is not None:
            self._events.append(ToolCallArgsDelta(self._call.index, "".join(self._piece)))
        self._piece = []

    def _finish_call(self) -> None:
        call = self._call
        assert call is not None
        self._flush_piece()
        finished = ToolCallEnd(
            call.index,
            call.name or "",
            "".join(call.arguments),
            error=None if call.name else NO_NAME,
        )
        self.calls.append(finished)
        self._events.append(finished)
        self._call = None
        self._expect = self._key = None


def _decode(raw: str) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None
