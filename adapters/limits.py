"""Input budgets: what a request may cost, decided from its size before any compute.

A 400-byte schema can ask for a billion-item grammar, a 1 MB FLAC can hold hours of
audio, a 35 MB message can occupy the tokenizer for minutes. Each such input has a
budget here, checked in milliseconds, and going over it is the client's mistake: a
:class:`BudgetExceeded` naming the request field, which the gateway answers with 400.

**Why the grammar is bounded.** llama.cpp's JSON-schema converter emits, per schema node,
a rule whose text is a few references to rule names; only repetition counts
(``minItems``/``maxItems``, ``minLength``/``maxLength``, ``{m,n}`` in patterns) multiply
a reference, and a rule name is the path of the node (property names and keywords joined
by dashes). :func:`grammar_cost` adds, for every node of the schema, (its repetition
count + a constant) x (its path length + a constant) plus its literal text. Every term
of the converter's output is counted there at least once, so the grammar is at most that
sum (tests/test_budgets.py checks the inequality on generated schemas), and the sum is
refused above ``max_grammar_bytes``. Counts are capped first: a minimum above
``max_schema_bound`` cannot be generated in one answer and is refused; a maximum above
it is dropped (an answer is cut by its token budget long before), so no count in the
grammar exceeds the bound. Numeric bounds (``minimum``, ``maximum``, ...) beyond 2^53 in
magnitude, infinities included, are dropped too: converters that spell integer ranges
out digit by digit then stay within a few rules per bound.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BudgetExceeded",
    "SchemaBudget",
    "cap_schema",
    "cap_schemas",
    "grammar_cost",
    "json_depth",
    "min_prompt_tokens",
    "visible_text",
]


class BudgetExceeded(ValueError):
    """An input is over one of its budgets; ``param`` names the request field."""

    def __init__(
        self, message: str, param: str | None = None, code: str = "input_too_large"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class SchemaBudget:
    """Limits for a JSON schema that will be compiled into a grammar."""

    max_bytes: int = 32_768  # the schema as compact JSON
    max_depth: int = 32  # nested objects and arrays (JSON levels: 2 per object property)
    max_bound: int = 256  # minItems, maxLength, {m,n}, ...
    max_grammar_bytes: int = 1_048_576  # the estimate of the compiled grammar


# ------------------------------------------------------------------ JSON nesting

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_CHUNK = 1 << 20


def json_depth(body: bytes, limit: int) -> int:
    """How deeply ``body``'s arrays and objects nest, counting no further than ``limit + 1``.

    Works on the raw bytes (strings removed, then brackets counted in C and numpy
    chunks), so a 40 MB body costs tens of milliseconds and no Python recursion; the
    result is only meaningful for valid JSON, which the decoder checks next.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return min(limit, body.count(b"[") + body.count(b"{"))
    import numpy as np

    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    deepest, level = 0, 0
    for start in range(0, len(brackets), _CHUNK):
        chunk = np.frombuffer(brackets, np.uint8, min(_CHUNK, len(brackets) - start), start)
        steps = np.where((chunk == 0x5B) | (chunk == 0x7B), 1, -1).astype(np.int32)
        levels = np.cumsum(steps, dtype=np.int64) + level
        deepest = max(deepest, int(levels.max()))
        level = int(levels[-1])
        if deepest > limit:
            return limit + 1
    return deepest


# ------------------------------------------------------------------ schemas

_COUNT_PAIRS = (
    ("minItems", "maxItems"),
    ("minLength", "maxLength"),
    ("minProperties", "maxProperties"),
    ("minContains", "maxContains"),
)
_QUANTIFIER = re.compile(r"(?<!\\)\{\s*(\d*)\s*(,?)\s*(\d*)\s*\}")
_NODE_COST = 48  # bytes a rule costs besides its repeated references
_ITEM_COUNTS = ("minItems", "maxItems", "minProperties", "maxProperties", "minContains", "maxContains")
_CHAR_COUNTS = ("minLength", "maxLength")


def cap_schema(schema: Any, budget: SchemaBudget, param: str) -> Any:
    """``schema`` checked against ``budget``, with counts above the bound dropped.

    Raises :class:`BudgetExceeded` (naming ``param``) when the schema is too big or too
    deep, asks for a minimum count above the bound, or would compile to a grammar over
    ``max_grammar_bytes``. Returns a new schema; the caller's is not changed.
    """
    return cap_schemas([(schema, param)], budget, param)[0]


def cap_schemas(schemas: list[tuple[Any, str]], budget: SchemaBudget, param: str) -> list:
    """:func:`cap_schema` for schemas compiled into one grammar (a request's tools): each
    is checked on its own (blaming its own field), then their sum (blaming ``param``)."""
    capped, total_size, total_cost = [], 0, 0
    for schema, own_param in schemas:
        one, size, cost = _measure(schema, budget, own_param)
        capped.append(one)
        total_size += size
        total_cost += cost
    _check_totals(total_size, total_cost, budget, param)
    return capped


def _measure(schema: Any, budget: SchemaBudget, param: str) -> tuple[Any, int, int]:
    try:
        size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
    except (ValueError, TypeError, RecursionError):
        raise BudgetExceeded(
            "The JSON schema is nested too deeply.", param, "schema_too_large"
        ) from None
    _check_totals(size, 0, budget, param)
    if _depth(schema, budget.max_depth) > budget.max_depth:
        raise BudgetExceeded(
            f"The JSON schema nests more than {budget.max_depth} levels deep.",
            param,
            "schema_too_large",
        )
    capped = _cap(schema, budget, param)
    cost = grammar_cost(capped)
    _check_totals(size, cost, budget, param)
    return capped, size, cost


def _check_totals(size: int, cost: int, budget: SchemaBudget, param: str) -> None:
    if size > budget.max_bytes:
        raise BudgetExceeded(
            f"The JSON schema is {size} bytes long; at most {budget.max_bytes} are accepted.",
            param,
            "schema_too_large",
        )
    if cost > budget.max_grammar_bytes:
        raise BudgetExceeded(
            "The JSON schema is too large to constrain the output: its grammar would take "
            f"about {cost} bytes; at most {budget.max_grammar_bytes} are accepted. Use fewer "
            "properties or smaller minimum and maximum counts.",
            param,
            "schema_too_large",
        )


def _depth(node: Any, limit: int) -> int:
    deepest = 0
    stack = [(node, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


_NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_LARGEST_BOUND = 2**53  # bounds beyond the exactly representable integers are dropped
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})  # values, not schemas
_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


def _cap(node: Any, budget: SchemaBudget, param: str) -> Any:
    if isinstance(node, list):
        return [_cap(item, budget, param) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict = {}
    for key, value in node.items():
        if key in _DATA_KEYWORDS:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _cap(sub, budget, param) for name, sub in value.items()}
        else:
            out[key] = _cap(value, budget, param)
    for low, high in _COUNT_PAIRS:
        minimum = _count(out, low, param)
        if minimum is not None and minimum > budget.max_bound:
            raise BudgetExceeded(
                f"{low} is {minimum}; at most {budget.max_bound} is supported, as longer "
                "output cannot be generated in one answer.",
                param,
                "schema_too_large",
            )
        maximum = _count(out, high, param)
        if maximum is not None and maximum > budget.max_bound:
            del out[high]
    for key in _NUMBER_BOUNDS:
        value = out.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise BudgetExceeded(f"{key} must be a number.", param, "invalid_value")
        if abs(value) > _LARGEST_BOUND:  # infinities too; its digits would be grammar
            del out[key]
    pattern = out.get("pattern")
    if isinstance(pattern, str):
        out["pattern"] = _cap_pattern(pattern, budget, param)
    return out


def _count(schema: dict, key: str, param: str) -> int | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise BudgetExceeded(f"{key} must be a non-negative whole number.", param, "invalid_value")
    if value > 2**53:  # also infinity: any bound this big is over every budget
        return 2**53
    if value != int(value):
        raise BudgetExceeded(f"{key} must be a non-negative whole number.", param, "invalid_value")
    schema[key] = int(value)
    return int(value)


def _cap_pattern(pattern: str, budget: SchemaBudget, param: str) -> str:
    def replace(match: re.Match) -> str:
        low, comma, high = match.group(1), match.group(2), match.group(3)
        if not low and not comma:
            return match.group(0)
        if low and int(low) > budget.max_bound:
            raise BudgetExceeded(
                f"The pattern repeats something {low} times; at most {budget.max_bound} "
                "is supported.",
                param,
                "schema_too_large",
            )
        if not comma:
            return match.group(0)
        if high and int(high) > budget.max_bound:
            return "{" + (low or "0") + ",}"
        return match.group(0)

    return _QUANTIFIER.sub(replace, pattern)


def grammar_cost(schema: Any, name: int = 40) -> int:
    """An upper estimate, in bytes, of the grammar llama.cpp compiles from ``schema``
    (see the module notes); ``schema`` should already be capped. ``name`` is the length
    of the root's rule name: the default leaves room for the prefix a tool call's
    arguments get (``alternative-3-arguments``) when wrapped by adapters/tools/schema.py."""
    total = 0
    stack: list[tuple[Any, int]] = [(schema, name)]  # (node, length of its rule name)
    while stack:
        node, name = stack.pop()
        if isinstance(node, list):
            stack.extend((item, name + 16) for item in node)
            continue
        if not isinstance(node, dict):
            total += 2 * len(json.dumps(node, ensure_ascii=False)) + 8
            continue
        items = sum(_number(node, key) for key in _ITEM_COUNTS)  # repeat a rule name
        chars = sum(_number(node, key) for key in _CHAR_COUNTS)  # repeat the char rule
        total += items * (name + 24) + 3 * (name + _NODE_COST) + chars * 16
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            repeats = sum(
                int(n) for match in _QUANTIFIER.finditer(pattern) for n in match.group(1, 3) if n
            )
            total += (repeats + 2) * (max(len(pattern), name + 8) + 16) + 4 * len(pattern)
        for key, value in node.items():
            key_bytes = len(json.dumps(key, ensure_ascii=False))
            total += 2 * key_bytes
            if key in _DATA_KEYWORDS:  # literals: const and enum are spelled out once
                total += 2 * len(json.dumps(value, ensure_ascii=False)) + 8
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                for prop, sub in value.items():  # rule "<name>-<prop>" and "<name>-<prop>-kv"
                    prop_name = name + 2 * len(json.dumps(prop, ensure_ascii=False)) + 4
                    total += 4 * prop_name + _NODE_COST
                    stack.append((sub, prop_name))
            else:
                stack.append((value, name + 24))  # "-item", "-tuple-3", "-additional-value"
    return total


def _number(node: dict, key: str) -> int:
    value = node.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 0
    return int(min(max(value, 0), 2**53))


# ------------------------------------------------------------------ text


def visible_text(text: str) -> str:
    """``text`` without control and format characters (NUL, zero-width spaces, BOMs, bidi
    marks), keeping tabs and line breaks: what a voice could actually say."""
    if text.isprintable():
        return text
    return "".join(
        ch
        for ch in text
        if ch in "\t\n\r" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
    )


def min_prompt_tokens(n_bytes: int, longest_token_bytes: int) -> int:
    """The fewest tokens ``n_bytes`` of text can become: no token spells more than
    ``longest_token_bytes`` bytes, so a prompt known to overflow the context is refused
    without tokenizing it."""
    return -(-n_bytes // max(1, longest_token_bytes))
