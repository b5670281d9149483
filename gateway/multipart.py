"""Multipart forms as the OpenAI SDKs send them, folded into plain values.

The SDKs send arrays as repeated bracket keys (``timestamp_granularities[]=word``),
objects as bracket paths (``chunking_strategy[type]=server_vad``) and booleans and numbers
as strings. Hand-written clients drop the brackets or send a JSON string instead. All of
these fold into one dict that msgspec can convert (with ``strict=False`` for the strings).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import msgspec
from litestar.datastructures import UploadFile

from adapters.limits import json_depth

from .errors import InvalidRequest

MAX_PATH = 8  # brackets in one key: chunking_strategy[type] needs one
MAX_JSON_DEPTH = 16  # a field sent as a JSON string

_BRACKETS = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


class FormError(InvalidRequest):
    """A form field that cannot be read: a 400 naming it, wherever a form is folded."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message, param=param, code="invalid_form_field")


# The form fields OpenAI defines as objects: only these (and list fields) may be sent as a
# JSON string. Any other value is text, even one that parses as JSON (a prompt "[1]").
OBJECT_FIELDS = frozenset({"chunking_strategy"})


def fold_form(
    items: Iterable[tuple[str, Any]],
    list_fields: Iterable[str] = (),
    object_fields: Iterable[str] = OBJECT_FIELDS,
) -> dict[str, Any]:
    lists, objects = set(list_fields), set(object_fields)
    folded: dict[str, Any] = {}
    for key, value in items:
        if isinstance(value, UploadFile):
            continue
        match = _BRACKETS.match(key)
        if not match:
            folded[key] = value
            continue
        name, path = match.group(1), re.findall(r"\[([^\[\]]*)\]", match.group(2))
        if len(path) > MAX_PATH:
            raise FormError(
                f"The form field '{key[:80]}' nests more than {MAX_PATH} brackets deep.", name
            )
        if not path:
            if name in lists or name in folded and isinstance(folded[name], list):
                folded.setdefault(name, [])
                _append(folded, name, value, bare=True)
            elif name in objects:
                folded[name] = _maybe_json(value)
            else:
                folded[name] = value
            continue
        if path == [""]:
            folded.setdefault(name, [])
            _append(folded, name, value, bare=False)
            continue
        node = folded.setdefault(name, {})
        if not isinstance(node, dict):
            node = folded[name] = {}
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise _conflict(name, key)
        if isinstance(node.get(path[-1]), dict):
            raise _conflict(name, key)
        node[path[-1]] = value
    for name in lists:
        if name in folded and not isinstance(folded[name], list):
            folded[name] = [folded[name]]
    return folded


def _append(folded: dict[str, Any], name: str, value: Any, *, bare: bool) -> None:
    """One ``name[]`` value is one item, commas and all. A ``bare`` key (no brackets) is a
    hand-written client's whole list: a JSON array or "a,b"."""
    if not isinstance(folded[name], list):
        folded[name] = [folded[name]]
    if bare and isinstance(value, str):
        decoded = _maybe_json(value) if value.startswith("[") else value
        if isinstance(decoded, list):
            folded[name].extend(decoded)
            return
        if "," in value:
            folded[name].extend(v.strip() for v in value.split(",") if v.strip())
            return
    folded[name].append(value)


def _conflict(name: str, key: str) -> FormError:
    return FormError(
        f"The form field '{key[:80]}' conflicts with another '{name}' field: a value cannot "
        "also hold fields.",
        name,
    )


def _maybe_json(value: Any) -> Any:
    """A value sent as a JSON string, decoded; anything else (a prompt that starts with a
    bracket, JSON nested too deeply to be a real parameter) stays the string it was."""
    if isinstance(value, str) and value[:1] in "{[":
        raw = value.encode("utf-8", "surrogatepass")
        if json_depth(raw, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            return value
        try:
            return msgspec.json.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return value
    return value


def upload(items: Iterable[tuple[str, Any]], name: str = "file") -> UploadFile | None:
    for key, value in items:
        if key == name and isinstance(value, UploadFile):
            return value
    return None
