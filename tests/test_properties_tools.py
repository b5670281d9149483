"""Properties of the streaming tool-call parsers, however the model's output is cut.

Both parsers read output a token at a time. Whatever the split, the calls reported must be
exactly the calls written (names, and arguments that parse to the same JSON), the text
around them exactly the text written, and no character of the markup may leak into it.
"""

from __future__ import annotations

import json

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from adapters.step_audio.tools import (
    CALL_CLOSE,
    CALL_OPEN,
    MarkupToolCallParser,
    render_tool_call,
)
from adapters.tools.extract import JsonToolCallParser
from engines.chat import TextDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart
from tests.cuts import cut

_json_scalar = (
    st.none() | st.booleans() | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
    | st.sampled_from(['"', "\\", "}", "]", "{", "[", ",", ":", "\n", "</tool_call", "<tool_call>"])
)
json_values = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)

arguments = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


def _dumps(value, style: int) -> str:
    return [
        lambda v: json.dumps(v),
        lambda v: json.dumps(v, ensure_ascii=False),
        lambda v: json.dumps(v, indent=2),
        lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False),
    ][style](value)


# ------------------------------------------------------------------ JSON tool calls (llama)


@st.composite
def json_documents(draw):
    calls = draw(st.lists(st.tuples(names, arguments), min_size=1, max_size=3))
    style = draw(st.integers(0, 3))
    objects = []
    for name, args in calls:
        fields = [("name", name), ("arguments", args)]
        if draw(st.booleans()):
            fields.reverse()  # arguments before the name: held back until the name is known
        if draw(st.booleans()):
            fields.insert(draw(st.integers(0, 2)), ("id", draw(json_values)))
        objects.append(dict(fields))
    single = len(objects) == 1 and draw(st.booleans())
    return calls, _dumps(objects[0] if single else objects, style)


@given(document=json_documents(), cuts=st.lists(st.integers(min_value=0), max_size=30))
@settings(max_examples=400)
def test_json_calls_stream_out_exactly_as_written(document, cuts):
    calls, text = document
    extractor = JsonToolCallParser()
    events = [event for chunk in cut(text, cuts) for event in extractor.feed(chunk)]
    assert extractor.done

    started = [e for e in events if isinstance(e, ToolCallStart)]
    finished = [e for e in events if isinstance(e, ToolCallEnd)]
    assert [(e.index, e.name) for e in started] == [(i, name) for i, (name, _) in enumerate(calls)]
    assert [e.index for e in finished] == list(range(len(calls)))
    for index, (name, args) in enumerate(calls):
        streamed = "".join(e.fragment for e in events if isinstance(e, ToolCallArgsDelta) and e.index == index)
        assert streamed == finished[index].arguments  # the deltas are the arguments' text
        assert json.loads(streamed) == args
        assert finished[index].name == name
    # Nothing of a call is reported before its name, nor after its end.
    for index in range(len(calls)):
        positions = [i for i, e in enumerate(events) if getattr(e, "index", None) == index]
        assert isinstance(events[positions[0]], ToolCallStart)
        assert isinstance(events[positions[-1]], ToolCallEnd)


@given(document=json_documents(), cuts=st.lists(st.integers(min_value=0), max_size=30))
@settings(max_examples=200)
def test_json_extraction_does_not_depend_on_the_split(document, cuts):
    _, text = document
    whole, streamed = JsonToolCallParser(), JsonToolCallParser()
    whole.feed(text)
    for chunk in cut(text, cuts):
        streamed.feed(chunk)
    assert streamed.calls == whole.calls


# ------------------------------------------------------------------ Step-Audio markup


_text_bits = st.sampled_from(["<", "</", "<tool", "_call", ">", "tool_call>", "\n", " ", "function"])
outside = st.lists(_text_bits | st.text(max_size=5), max_size=6).map("".join)
TOOLS = ["get_weather", "lookup", "天气"]


@st.composite
def step_audio_outputs(draw):
    """Text and calls interleaved, rendered as the model writes them."""
    segments = []
    for _ in range(draw(st.integers(0, 3))):
        segments.append(("text", draw(outside)))
        name = draw(st.sampled_from(TOOLS + ["delete_everything"]))
        segments.append(("call", name, draw(arguments), draw(st.integers(0, 3))))
    segments.append(("text", draw(outside)))
    return segments


class _Call:
    def __init__(self, name: str, arguments: str) -> None:
        self.id, self.name, self.arguments = "call_0", name, arguments


def _render(segments) -> str:
    return "".join(
        s[1] if s[0] == "text" else render_tool_call(_Call(s[1], _dumps(s[2], s[3])))
        for s in segments
    )


@given(segments=step_audio_outputs(), cuts=st.lists(st.integers(min_value=0), max_size=30))
@settings(max_examples=400)
def test_step_audio_calls_and_text_come_out_as_written(segments, cuts):
    output = _render(segments)
    calls = [s for s in segments if s[0] == "call"]
    # The markup tags occur only where calls were written (and no argument holds a tag).
    assume(output.count(CALL_OPEN) == len(calls) and output.count(CALL_CLOSE) == len(calls))
    parser = MarkupToolCallParser(TOOLS)
    events = [e for chunk in cut(output, cuts) for e in parser.feed(chunk)] + parser.close()

    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "".join(s[1] for s in segments if s[0] == "text")
    kept = [(name, args) for _, name, args, _ in calls if name in TOOLS]
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == kept
    assert all(c.closed and c.error is None for c in parser.calls)
    assert len(parser.dropped) == len(calls) - len(kept)
    for index, call in enumerate(parser.calls):
        mine = [e for e in events if getattr(e, "index", None) == index]
        assert isinstance(mine[0], ToolCallStart) and mine[0].name == call.name
        assert isinstance(mine[-1], ToolCallEnd)
        pieces = "".join(e.fragment for e in mine if isinstance(e, ToolCallArgsDelta))
        assert pieces == call.arguments


@given(text=st.lists(_text_bits | st.text(max_size=4) | st.just(CALL_OPEN) | st.just(CALL_CLOSE), max_size=12).map("".join),
       cuts=st.lists(st.integers(min_value=0), max_size=20))
@settings(max_examples=400)
@example(text="<</tool_call>tool_call>", cuts=[])
def test_any_output_parses_the_same_however_it_is_cut(text, cuts):
    """Even malformed markup (unclosed calls, stray tags, empty names): the events, merged,
    do not depend on the split, and no text event carries a tag. (Text on both sides of a
    stray tag may still spell one when joined: "<</tool_call>tool_call>" says "<" and
    "tool_call>", none of it markup.)"""
    def run(chunks):
        parser = MarkupToolCallParser(TOOLS)
        events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.close()
        texts = [e.text for e in events if isinstance(e, TextDelta)]
        for piece in texts:
            assert CALL_OPEN not in piece and CALL_CLOSE not in piece, piece
        return "".join(texts), parser.calls, parser.dropped

    assert run(cut(text, cuts)) == run([text])
