"""Property: no JSON schema, however nested or large its bounds, compiles to a grammar
bigger than its budget or takes long to compile.

Every generated schema either is refused by adapters.limits in milliseconds, or, once
capped, compiles (through the tool-call wrapper the llama engine uses and llama.cpp's own
converter) to a grammar no bigger than the estimate :func:`grammar_cost` makes, and so no
bigger than ``max_grammar_bytes``. Schemas are generated with huge counts (up to 10^12),
deep nesting, many properties, long names and patterns with quantifiers.
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_cpp import llama_grammar

from adapters.limits import BudgetExceeded, SchemaBudget, cap_schema, grammar_cost
from adapters.tools.schema import call_schema, sequence_schema
from engines.chat import ToolSpec

BUDGET = SchemaBudget()
WRAPPER = 4096  # the tool-call wrapper's own rules (name const, braces, whitespace)

names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_-0123456789"), min_size=1, max_size=40)
counts = st.one_of(st.integers(0, 8), st.integers(0, 300), st.integers(0, 10**12))
quantified = st.builds(
    lambda atom, low, high: f"^{atom}{{{low},{high}}}$",
    st.sampled_from(["a", "[0-9]", "(ab|cd)", "\\d", "x+"]),
    st.integers(0, 300),
    st.integers(300, 10**9),
)


def _bounded(base: dict, low: str, high: str):
    return st.builds(
        lambda lo, hi, use: {**base, **({low: lo} if use & 1 else {}), **({high: hi} if use & 2 else {})},
        counts,
        counts,
        st.integers(0, 3),
    )


leaves = st.one_of(
    st.just({"type": "integer"}),
    st.just({"type": "number", "minimum": -1e300, "maximum": 1e300}),
    st.just({"type": "boolean"}),
    st.builds(lambda v: {"enum": v}, st.lists(names, min_size=1, max_size=5)),
    _bounded({"type": "string"}, "minLength", "maxLength"),
    st.builds(lambda p: {"type": "string", "pattern": p}, quantified),
)


def _extend(children):
    objects = st.builds(
        lambda props, required: {
            "type": "object",
            "properties": props,
            "required": [k for k in props if required],
        },
        st.dictionaries(names, children, max_size=12),
        st.booleans(),
    )
    arrays = st.builds(
        lambda items, lo, hi, use: {
            "type": "array",
            "items": items,
            **({"minItems": lo} if use & 1 else {}),
            **({"maxItems": hi} if use & 2 else {}),
        },
        children,
        counts,
        counts,
        st.integers(0, 3),
    )
    unions = st.builds(lambda alts: {"anyOf": alts}, st.lists(children, min_size=1, max_size=4))
    return st.one_of(objects, arrays, unions)


schemas = st.recursive(leaves, _extend, max_leaves=60)


def _nested(depth: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def _compile(schema: dict) -> tuple[int, float]:
    start = time.perf_counter()
    grammar = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    return len(grammar), time.perf_counter() - start


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=schemas, parallel=st.booleans())
def test_any_schema_is_refused_fast_or_compiles_within_its_estimate(schema, parallel):
    parameters = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    start = time.perf_counter()
    try:
        capped = cap_schema(parameters, BUDGET, "tools")
    except BudgetExceeded as refused:
        assert time.perf_counter() - start < 0.5
        assert refused.param == "tools" and "`" not in refused.message
        return
    assert time.perf_counter() - start < 0.5
    tools = [ToolSpec("first", "", capped), ToolSpec("second", "", {"type": "object"})]
    wrapped = sequence_schema(tools, ["first", "second"]) if parallel else call_schema(tools)
    size, seconds = _compile(wrapped)
    assert size <= grammar_cost(capped) + WRAPPER <= BUDGET.max_grammar_bytes + WRAPPER
    assert seconds < 2.0


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "integer"}, "minItems": 1_000_000_000},
        {"type": "string", "minLength": 1e9},
        {"type": "string", "pattern": "^a{1000000}$"},
        _nested(50),
        _nested(250),
        {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 256} for i in range(400)}},
    ],
    ids=["minItems-1e9", "minLength-1e9", "pattern-1e6", "nested-50", "nested-250", "400-props"],
)
def test_the_reported_bombs_are_refused_in_milliseconds(schema):
    start = time.perf_counter()
    with pytest.raises(BudgetExceeded):
        cap_schema(schema, BUDGET, "response_format")
    assert time.perf_counter() - start < 0.5


def test_a_huge_maximum_is_dropped_not_expanded():
    schema = {"type": "array", "items": {"type": "integer"}, "maxItems": 1_000_000_000}
    capped = cap_schema(schema, BUDGET, "tools")
    assert "maxItems" not in capped and schema["maxItems"] == 1_000_000_000
    size, seconds = _compile(capped)
    assert size < 2000 and seconds < 0.5


def test_numeric_bounds_past_2_53_are_dropped_and_non_numbers_refused():
    schema = {"type": "integer", "minimum": -1e300, "maximum": float("inf"), "exclusiveMaximum": 7}
    assert cap_schema(schema, BUDGET, "tools") == {"type": "integer", "exclusiveMaximum": 7}
    with pytest.raises(BudgetExceeded) as caught:
        cap_schema({"type": "integer", "minimum": "0"}, BUDGET, "tools")
    assert caught.value.code == "invalid_value"


def test_keywords_inside_properties_and_values_are_not_mistaken_for_bounds():
    schema = {
        "type": "object",
        "properties": {"minItems": {"type": "string"}, "maxLength": {"type": "integer"}},
        "default": {"minItems": 10**12},
    }
    assert cap_schema(schema, BUDGET, "tools") == schema
