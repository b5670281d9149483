"""Both parsers of model output serve one protocol (adapters.chat.events.ToolCallParser):
the same call, written as JSON (the embedded model's grammar) or as Step-Audio's markup
and fed a character at a time, gives the same tool-call events and the same ``calls``."""

from __future__ import annotations

import pytest

from adapters.chat.events import ToolCallArgsDelta, ToolCallEnd, ToolCallParser, ToolCallStart
from adapters.step_audio.tools import MarkupToolCallParser
from adapters.tools.extract import JsonToolCallParser

ARGUMENTS = '{"city": "Berlin", "days": [1, 2]}'
WRITTEN = {
    "json": (JsonToolCallParser, '{"name": "get_weather", "arguments": ' + ARGUMENTS + "}"),
    "markup": (
        lambda: MarkupToolCallParser(["get_weather"]),
        "<tool_call>function\nget_weather\n" + ARGUMENTS + "</tool_call>",
    ),
}


def run(parser: ToolCallParser, text: str) -> list:
    events = []
    for char in text:
        events += parser.feed(char)
    return events + parser.close()


@pytest.mark.parametrize("kind", sorted(WRITTEN))
def test_the_same_call_gives_the_same_events_from_either_parser(kind):
    make, text = WRITTEN[kind]
    parser = make()
    events = [e for e in run(parser, text) if not (isinstance(e, ToolCallArgsDelta) and not e.fragment)]
    start, *deltas, end = events
    assert isinstance(start, ToolCallStart) and (start.index, start.name) == (0, "get_weather")
    assert all(isinstance(d, ToolCallArgsDelta) and d.index == 0 for d in deltas)
    assert "".join(d.fragment for d in deltas) == ARGUMENTS
    assert isinstance(end, ToolCallEnd) and end.error is None
    assert parser.calls == [end]
    assert parser.close() == []  # closing again settles nothing more
