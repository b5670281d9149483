"""JSON schemas that constrain a model to produce well-formed tool calls.

A tool call is generated as ``{"name": <tool name>, "arguments": <arguments object>}``.
The schema is an ``anyOf`` with one branch per allowed tool, each pairing the tool's name
(``const``) with that tool's own parameters schema, so the arguments always match the
chosen name. Several calls at once are an array of such objects.

The schemas serve two purposes: a grammar for constrained decoding (llama.cpp's converter
emits required properties in declaration order, so ``name`` always comes before
``arguments``) and validation with ``jsonschema``.

Tool parameter schemas that use local references (``#/$defs/X``, as Pydantic writes them)
keep working: each tool's definitions are hoisted to the root ``$defs`` under a per-tool
prefix and its references are rewritten to match.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from adapters.chat.messages import ToolSpec

#: A schema accepting any JSON object, for ``response_format={"type": "json_object"}``.
JSON_OBJECT_SCHEMA: dict = {"type": "object"}

_EMPTY_PARAMETERS: dict = {"type": "object", "properties": {}}
_DEF_KEYS = ("$defs", "definitions")


def call_schema(tools: Sequence[ToolSpec], names: Iterable[str] | None = None) -> dict:
    """Schema of one call to any tool in ``names`` (default: all ``tools``)."""
    branches, defs = _branches(tools, names)
    schema: dict = branches[0] if len(branches) == 1 else {"anyOf": branches}
    return _with_defs(schema, defs)


def calls_schema(
    tools: Sequence[ToolSpec],
    names: Iterable[str] | None = None,
    *,
    max_calls: int | None = None,
) -> dict:
    """Schema of an array of one or more calls (parallel tool calls), each to any tool in
    ``names``; at most ``max_calls`` of them when given."""
    branches, defs = _branches(tools, names)
    items = branches[0] if len(branches) == 1 else {"anyOf": branches}
    schema: dict = {"type": "array", "items": items, "minItems": 1}
    if max_calls is not None:
        schema["maxItems"] = max_calls
    return _with_defs(schema, defs)


def sequence_schema(tools: Sequence[ToolSpec], names: Sequence[str]) -> dict:
    """Schema of an array of exactly ``len(names)`` calls: the i-th one calls ``names[i]``."""
    if not names:
        raise ValueError("sequence_schema needs at least one tool name")
    items, defs = [], {}
    for name in names:
        branches, tool_defs = _branches(tools, [name])
        items.extend(branches)
        defs.update(tool_defs)
    schema: dict = {
        "type": "array",
        "prefixItems": items,
        "items": False,
        "minItems": len(items),
        "maxItems": len(items),
    }
    return _with_defs(schema, defs)


# --------------------------------------------------------------------------- helpers


def _branches(tools: Sequence[ToolSpec], names: Iterable[str] | None) -> tuple[list[dict], dict]:
    by_name = {tool.name: (i, tool) for i, tool in enumerate(tools)}
    wanted = list(by_name) if names is None else list(dict.fromkeys(names))
    if not wanted:
        raise ValueError("no tools to call")
    branches: list[dict] = []
    defs: dict = {}
    for name in wanted:
        if name not in by_name:
            raise KeyError(name)
        position, tool = by_name[name]
        parameters, tool_defs = _hoist_defs(
            tool.parameters or _EMPTY_PARAMETERS, f"tool{position}_"
        )
        defs.update(tool_defs)
        branches.append(
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return branches, defs


def _with_defs(schema: dict, defs: dict) -> dict:
    if defs:
        schema = {**schema, "$defs": defs}
    return schema


def _hoist_defs(parameters: dict, prefix: str) -> tuple[dict, dict]:
    """Copy ``parameters`` with its local definitions moved out under ``prefix``."""
    if not isinstance(parameters, dict):
        return _copy(parameters, {}), {}
    local = {
        f"{key}/{def_name}": definition
        for key in _DEF_KEYS
        if isinstance(parameters.get(key), dict)
        for def_name, definition in parameters[key].items()
    }
    renamed = {
        f"#/{path}": f"#/$defs/{prefix}{path.split('/', 1)[1]}" for path in local
    }
    body = {key: value for key, value in parameters.items() if key not in _DEF_KEYS}
    hoisted = {
        f"{prefix}{path.split('/', 1)[1]}": _copy(definition, renamed)
        for path, definition in local.items()
    }
    return _copy(body, renamed), hoisted


def _copy(node: object, renamed: dict[str, str]) -> object:
    """A deep copy of the JSON value ``node`` with each ``$ref`` in ``renamed`` rewritten.

    Iterative, not recursive: a schema nested deeper than Python's recursion limit (a
    client's, before or without the budget of adapters/limits.py) must not raise
    RecursionError here."""
    holder: list = [None]
    stack: list[tuple[object, object, object]] = [(node, holder, 0)]
    while stack:
        value, parent, key = stack.pop()
        if isinstance(value, dict):
            copied: object = dict.fromkeys(value)
            stack.extend((child, copied, name) for name, child in value.items())
        elif isinstance(value, list):
            copied = [None] * len(value)
            stack.extend((child, copied, i) for i, child in enumerate(value))
        elif key == "$ref" and isinstance(value, str) and isinstance(parent, dict):
            copied = renamed.get(value, value)
        else:
            copied = value
        parent[key] = copied  # type: ignore[index]
    return holder[0]
