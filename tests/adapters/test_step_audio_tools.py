"""Tool calling in the Step-Audio format (adapters.step_audio.tools).

Golden facts from shared/reference/step-audio-pipeline.md, §4.1 "Step-Audio(-Chat), the
130B model", §4.2 "Step-Audio 2: explicit format" and "What a gateway must implement"
item 6 "Tool calling".
"""

from __future__ import annotations

import json
import random
import re

import pytest

from adapters.step_audio.tools import (
    FUNCTION_OUTPUT,
    INPUT,
    MarkupToolCallParser,
    ToolResultFormat,
    parse_tool_calls,
    render_tool_call,
    render_tool_calls,
    strip_tool_markup,
    tool_result_turn,
    tool_schemas,
    tool_schemas_json,
    tool_schemas_turn,
)
from engines.chat import TextDelta, ToolCall, ToolCallArgsDelta, ToolCallEnd, ToolSpec
from tests.tool_events import started

WEATHER = ToolSpec(
    name="get_weather",
    description="查询城市天气",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
)
TIME = ToolSpec(name="get_time")

# A realistic completion: leading text, two calls (the second with a newline before its
# close tag, and a "<" inside its arguments), text in between and after.
COMPLETION = (
    "好的，我来查一下北京和上海的天气 (a < b)。\n"
    '<tool_call>function\nget_weather\n{"city": "北京", "unit": "celsius"}</tool_call>\n'
    '<tool_call>function\nget_weather\n{"city": "上海 <市>", "unit": "celsius"}\n</tool_call>'
    "稍等。"
)
EXPECTED = [
    TextDelta("好的，我来查一下北京和上海的天气 (a < b)。\n"),
    started(0, "get_weather"),
    ToolCallArgsDelta(0, '{"city": "北京", "unit": "celsius"}'),
    ToolCallEnd(0, "get_weather", '{"city": "北京", "unit": "celsius"}'),
    TextDelta("\n"),
    started(1, "get_weather"),
    ToolCallArgsDelta(1, '{"city": "上海 <市>", "unit": "celsius"}'),
    ToolCallEnd(1, "get_weather", '{"city": "上海 <市>", "unit": "celsius"}'),
    TextDelta("稍等。"),
]


def run(fragments, tool_names=("get_weather", "get_time")):
    parser = MarkupToolCallParser(tool_names)
    events = []
    for fragment in fragments:
        events += parser.feed(fragment)
    events += parser.close()
    return events, parser


def merged(events):
    """Adjacent text pieces, and adjacent argument pieces of one call, joined."""
    out = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, TextDelta) and isinstance(last, TextDelta):
            out[-1] = TextDelta(last.text + event.text)
        elif (
            isinstance(event, ToolCallArgsDelta)
            and isinstance(last, ToolCallArgsDelta)
            and last.index == event.index
        ):
            out[-1] = ToolCallArgsDelta(event.index, last.fragment + event.fragment)
        else:
            out.append(event)
    return out


# --------------------------------------------------------------------------- prompt side


def test_tool_schemas_turn_is_the_openai_array_dumped_without_ascii_escapes():
    # §4.2 "With tools: ... <|BOT|>tool_json_schemas\n{json.dumps(tools,
    # ensure_ascii=False)}<|EOT|>. tools is the full OpenAI array
    # ([{"type":"function","function":{…}}])"; §4.1 issue #31: the role is
    # `tool_json_schemas`.
    assert tool_schemas_turn([WEATHER, TIME]) == (
        "<|BOT|>tool_json_schemas\n"
        '[{"type": "function", "function": {"name": "get_weather", "description": "查询城市天气", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}, '
        '"unit": {"type": "string"}}, "required": ["city"]}}}, '
        '{"type": "function", "function": {"name": "get_time", '
        '"parameters": {"type": "object", "properties": {}}}}]'
        "<|EOT|>"
    )
    assert tool_schemas_json([WEATHER]) == json.dumps(tool_schemas([WEATHER]), ensure_ascii=False)


def test_tool_call_markup_writes_arguments_once():
    # §4.2 "Assistant tool calls in history: <tool_call>function\n{name}\n + json.dumps(
    # arguments) + </tool_call> ... this double-encodes it. A gateway should emit the raw
    # JSON object text."
    call = ToolCall("call_1", "get_weather", '{"city": "北京"}')
    assert (
        render_tool_call(call) == '<tool_call>function\nget_weather\n{"city": "北京"}</tool_call>'
    )
    assert '\\"' not in render_tool_call(call)
    assert render_tool_call(ToolCall("c", "get_time", "")) == (
        "<tool_call>function\nget_time\n{}</tool_call>"
    )
    # "Several calls may follow in a row": no separator.
    two = render_tool_calls([call, ToolCall("c2", "get_time", "{}")])
    assert two == render_tool_call(call) + "<tool_call>function\nget_time\n{}</tool_call>"


def test_tool_results_in_both_conventions():
    # §4.2 "vLLM template, role tool: <|BOT|>function_output\n{function_name}\n{content}
    # <|EOT|> ... the default is `tool`"; "examples-vllm.py ... renders as
    # <|BOT|>input\n{content}<|EOT|>".
    assert tool_result_turn('{"temp": 21}', "get_weather") == (
        '<|BOT|>function_output\nget_weather\n{"temp": 21}<|EOT|>'
    )
    assert tool_result_turn("晴", fmt=FUNCTION_OUTPUT) == "<|BOT|>function_output\ntool\n晴<|EOT|>"
    assert tool_result_turn("晴", "get_weather", INPUT) == "<|BOT|>input\n晴<|EOT|>"
    custom = ToolResultFormat(role="observation", name_line=True)
    assert tool_result_turn("晴", "get_weather", custom) == (
        "<|BOT|>observation\nget_weather\n晴<|EOT|>"
    )


# --------------------------------------------------------------------------- parser


def test_realistic_completion_in_one_piece():
    # §4.2 "Tool calls in model output: <tool_call>function\n{name}\n{arguments-json}
    # </tool_call>, placed after any leading text ... Several calls may follow in a row."
    events, parser = run([COMPLETION])
    assert merged(events) == EXPECTED
    assert [call.name for call in parser.calls] == ["get_weather", "get_weather"]
    assert parser.dropped == []


def test_every_split_into_two_fragments_gives_the_same_events():
    for cut in range(len(COMPLETION) + 1):
        events, _ = run([COMPLETION[:cut], COMPLETION[cut:]])
        assert merged(events) == EXPECTED, f"split at {cut}: {COMPLETION[:cut]!r}"


def test_single_characters_give_the_same_events():
    events, _ = run(list(COMPLETION))
    assert merged(events) == EXPECTED


def test_random_multi_splits_give_the_same_events():
    rng = random.Random(31)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(COMPLETION)), rng.randrange(1, 12)))
        pieces = [COMPLETION[a:b] for a, b in zip([0, *cuts], [*cuts, len(COMPLETION)])]
        events, _ = run(pieces)
        assert merged(events) == EXPECTED, pieces


def test_text_is_released_as_soon_as_it_cannot_be_markup():
    # "Never send tool-call markup to TTS" (item 6): text is reported piece by piece and
    # never taken back, so each piece must already be markup-free; and only a possible
    # tag start ("<", "<tool_c", "</tool") may be held back, so speech is not delayed.
    text_spans = [(0, COMPLETION.index("<tool_call>"))]
    for close in re.finditer("</tool_call>", COMPLETION):
        following = COMPLETION.find("<tool_call>", close.end())
        text_spans.append((close.end(), len(COMPLETION) if following == -1 else following))
    assert [COMPLETION[a:b] for a, b in text_spans] == [
        e.text for e in EXPECTED if isinstance(e, TextDelta)
    ]
    for cut in range(len(COMPLETION) + 1):
        parser = MarkupToolCallParser({"get_weather"})
        so_far = "".join(e.text for e in parser.feed(COMPLETION[:cut]) if isinstance(e, TextDelta))
        certain = "".join(COMPLETION[a : min(b, cut)] for a, b in text_spans if a < cut)
        assert certain.startswith(so_far), cut
        held = certain[len(so_far) :]
        assert held == "" or "<tool_call>".startswith(held) or "</tool_call>".startswith(held), (
            cut,
            held,
        )


def test_name_comes_before_arguments_and_arguments_stream():
    # §4.2 "Streaming: the name is emitted first, then argument diffs."
    parser = MarkupToolCallParser()
    assert parser.feed("<tool_call>function\nget_wea") == []
    assert parser.feed("ther\n") == [started(0, "get_weather")]
    assert parser.feed('{"city": ') == [ToolCallArgsDelta(0, '{"city":')]
    assert parser.feed('"Paris"}  </tool') == [ToolCallArgsDelta(0, ' "Paris"}')]
    assert parser.feed("_call>") == [ToolCallEnd(0, "get_weather", '{"city": "Paris"}')]
    assert parser.close() == []


def test_calls_to_unknown_tools_are_dropped_without_events():
    # §4.2 "A name that is not among request.tools is dropped."
    text = (
        "<tool_call>function\nrm_rf\n{}</tool_call>"
        '<tool_call>function\nget_time\n{"tz": "UTC"}</tool_call>'
    )
    for pieces in ([text], list(text)):
        events, parser = run(pieces)
        assert merged(events) == [
            started(0, "get_time"),
            ToolCallArgsDelta(0, '{"tz": "UTC"}'),
            ToolCallEnd(0, "get_time", '{"tz": "UTC"}'),
        ]
        assert [d.markup for d in parser.dropped] == ["<tool_call>function\nrm_rf\n{}</tool_call>"]
        assert "rm_rf" in parser.dropped[0].reason


def test_invalid_json_is_reported_at_the_end_of_the_call():
    # §4.2 "arguments must parse as JSON; otherwise the call is dropped." Streaming cannot
    # take back what it reported, so the end event carries the error.
    text = "<tool_call>function\nget_time\n{tz: UTC}</tool_call><tool_call>function\nget_time\n[1]</tool_call>"
    events, parser = run([text])
    ends = [e for e in events if isinstance(e, ToolCallEnd)]
    assert ends[0].error.startswith("arguments are not valid JSON")
    assert ends[1].error == "arguments are not a JSON object"
    content, calls = parse_tool_calls(text, {"get_time"})
    assert (content, calls) == ("", [])


def test_header_without_name_line_is_dropped():
    # §4.2 "The parser ... splits the inner text with split("\n", 2) into function_type,
    # name and arguments": fewer than three parts is no call.
    events, parser = run(["a<tool_call>function\nget_time</tool_call>b"])
    assert merged(events) == [TextDelta("ab")]
    assert parser.dropped[0].reason == "the call has no name line"
    events, parser = run(["<tool_call>function\n\n{}</tool_call>"])
    assert events == [] and "empty name" in parser.dropped[0].reason


def test_output_ending_inside_a_call():
    # Cut off by max_tokens: complete JSON is still usable, a truncated one is not.
    events, _ = run(['<tool_call>function\nget_time\n{"tz": "UTC"}\n'])
    assert events[-1] == ToolCallEnd(0, "get_time", '{"tz": "UTC"}', closed=False)
    events, _ = run(['<tool_call>function\nget_time\n{"tz": "U'])
    assert events[-1].closed is False and events[-1].error.startswith("arguments are not valid")
    events, parser = run(["hi <tool_call>function\nget_ti"])
    assert events == [TextDelta("hi ")]
    assert parser.dropped[0].reason == "the output ended in the call"


def test_partial_tags_that_never_complete_are_text():
    events, _ = run(["a <tool_", "call"])
    assert merged(events) == [TextDelta("a <tool_call")]
    events, _ = run(["x <", "y"])
    assert merged(events) == [TextDelta("x <y")]
    parser = MarkupToolCallParser()
    assert parser.feed("see <tool_c") == [TextDelta("see ")]
    assert parser.close() == [TextDelta("<tool_c")]


def test_stray_close_tags_are_markup_too():
    assert merged(run(["done.</tool_call> bye"])[0]) == [TextDelta("done. bye")]


def test_round_trip_through_the_history_rendering():
    call = ToolCall("c1", "get_weather", '{"city": "北京", "unit": "celsius"}')
    content, calls = parse_tool_calls("好的" + render_tool_call(call), {"get_weather"})
    assert content == "好的"
    assert [(c.name, c.arguments) for c in calls] == [(call.name, call.arguments)]


def test_strip_tool_markup_for_tts():
    # "Never send tool-call markup to TTS."
    assert strip_tool_markup(COMPLETION) == "好的，我来查一下北京和上海的天气 (a < b)。\n\n稍等。"
    assert strip_tool_markup("plain text") == "plain text"
    assert strip_tool_markup("x<tool_call>function\nf\n{") == "x"
    assert strip_tool_markup("unknown tools go too <tool_call>function\nzzz\n{}</tool_call>") == (
        "unknown tools go too "
    )


def test_feed_after_close_is_an_error():
    parser = MarkupToolCallParser()
    parser.close()
    assert parser.close() == []
    with pytest.raises(RuntimeError):
        parser.feed("x")
