"""docs/configuration.md, generated from the settings structs and config/default.toml.

Keys, types and defaults come from the msgspec structs in gateway/settings.py (what is
actually accepted: they forbid unknown keys) and from the defaults file, descriptions from the
comments above each key in config/default.toml or, failing that, above the field in
settings.py. A hand-written reference would drift; this one is regenerated
(``step-audio-gateway config-reference > docs/configuration.md``) and a test compares it.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from pathlib import Path

import msgspec

from . import settings as settings_module
from .settings import DEFAULT_CONFIG, Settings, load_settings

COMMENT = re.compile(r"^\s*#\s?(.*)$")
KEY = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(?::|=)")
HEADER = re.compile(r"^\s*\[([^\]]+)\]\s*$")


def _comments(lines: list[str], key_pattern: re.Pattern[str]) -> dict[str | None, str]:
    """Comment blocks attached to the key (or TOML table header) right below them; a blank
    line or a separator line ends a block."""
    found: dict[str | None, str] = {}
    pending: list[str] = []
    floating: list[str] = []  # a block ended by blank lines: a table header may still take it
    for line in lines:
        comment = COMMENT.match(line)
        if comment and not comment.group(1).startswith("---"):
            pending.append(comment.group(1))
            continue
        if not line.strip():
            floating, pending = pending or floating, []
            continue
        header, key = HEADER.match(line), key_pattern.match(line)
        if header and (pending or floating):
            found[f"[{header.group(1)}]"] = " ".join(pending or floating)
        elif key and pending and key.group(1) not in found:
            found[key.group(1)] = " ".join(pending)
        pending, floating = [], []
    return found


def _toml_comments(path: Path) -> dict[str, str]:
    """``section.key`` (and ``[section]``) -> its comment in the defaults file."""
    result: dict[str, str] = {}
    section = ""
    block: list[str] = []

    def flush() -> None:
        for key, text in _comments(block, KEY).items():
            if key.startswith("["):
                result[key] = text
                result.setdefault(f"[{key[1:-1].split('.')[0]}]", text)  # [models."x"] -> [models]
            else:
                result[f"{section}.{key}" if section else key] = text

    lines = path.read_text().splitlines()
    while lines and (not lines[0].strip() or COMMENT.match(lines[0])):
        lines.pop(0)  # the file's own preamble describes no table
    for line in lines:
        header = HEADER.match(line)
        if header:
            block.append(line)  # the header takes the comment above it
            flush()
            block = []
            section = header.group(1).split(".")[0]
            continue
        block.append(line)
    flush()
    return result


def _struct_comments(cls: type) -> dict[str, str]:
    lines = inspect.getsource(cls).splitlines()[1:]
    return {key: text for key, text in _comments(lines, KEY).items() if key}


def _doc(cls: type) -> str | None:
    """The class's own docstring (not msgspec.Struct's, which every struct inherits)."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc).replace("\n", " ") if doc else None


def _type_name(annotation: object) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = re.sub(r"\b(typing|gateway\.settings)\.", "", text)
    return text.replace("NoneType", "None").replace("Any", "any")


def _value(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def _struct_of(annotation: object) -> type | None:
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    return None


def _fields(prefix: str, cls: type, values: object, notes: dict[str, str], env: bool) -> list[str]:
    own = _struct_comments(cls)
    hints = typing.get_type_hints(cls, vars(settings_module))
    out = []
    for field in msgspec.structs.fields(cls):
        name = f"{prefix}.{field.name}"
        hint = hints[field.name]
        args = typing.get_args(hint)
        member = _struct_of(args[1]) if typing.get_origin(hint) is dict and len(args) == 2 else None
        if member is not None:  # a table of tables, e.g. [limits.per_key."<key>"]
            out += _table_of_tables(name, member, getattr(values, field.name), notes)
            continue
        default = "required" if field.required else f"default `{_value(getattr(values, field.name))}`"
        facts = [f"type `{_type_name(hint)}`", default]
        if env:
            facts.append(f"environment `GATEWAY__{prefix.upper()}__{field.name.upper()}`")
        out.append(f"### `{name}`\n\n{', '.join(facts)}.")
        text = notes.get(name) or own.get(field.name)
        if text:
            out.append(text)
    return out


def _table_of_tables(name: str, member: type, entries: dict, notes: dict[str, str]) -> list[str]:
    out = [f"### `{name}.<name>`", _doc(member) or "One entry of this table:"]
    if entries:
        listed = ", ".join(f"`{key}`" for key in entries)
        out.append(f"In config/default.toml: {listed}.")
    out += _fields(f"{name}.<name>", member, _defaults(member), notes, False)
    return out


def _defaults(cls: type) -> object:
    """An object holding the struct's own defaults (required fields read as none)."""
    values = {}
    for field in msgspec.structs.fields(cls):
        if field.default is not msgspec.NODEFAULT:
            values[field.name] = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            values[field.name] = field.default_factory()
        else:
            values[field.name] = None
    return type("Defaults", (), values)


def render(config: Path = DEFAULT_CONFIG) -> str:
    settings = load_settings(config, environ={})
    notes = _toml_comments(config)
    out = [
        "# Configuration reference",
        "Generated from the settings structs (`gateway/settings.py`) and the comments of "
        "`config/default.toml` by `step-audio-gateway config-reference > docs/configuration.md`; "
        "`tests/test_docs.py` fails when this file is stale. Defaults are config/default.toml's.",
        "Settings are read from a TOML file (`--config` or `GATEWAY_CONFIG`; `extends = \"other.toml\"` "
        "reads another first). Any key can be overridden by an environment variable "
        "`GATEWAY__<SECTION>__<KEY>`, read as a TOML value. Unknown keys are an error.",
    ]
    hints = typing.get_type_hints(Settings, vars(settings_module))
    for field in msgspec.structs.fields(Settings):
        section = _struct_of(hints[field.name])
        out.append(f"## [{field.name}]")
        header_note = notes.get(f"[{field.name}]")
        doc = _doc(section) if section else None
        if doc:
            out.append(doc)
        if header_note:
            out.append(header_note)
        value = getattr(settings, field.name)
        if section is not None:
            out += _fields(field.name, section, value, notes, True)
            continue
        args = typing.get_args(hints[field.name])
        member = _struct_of(args[1]) if len(args) == 2 else None
        if member is not None:
            out += _table_of_tables(field.name, member, value, notes)[1:]
        else:
            out.append(f"type `{_type_name(hints[field.name])}`. In config/default.toml:")
            out.append("\n".join(f"- `{key}`: `{_value(item)}`" for key, item in value.items()))
    return "\n\n".join(out) + "\n"
