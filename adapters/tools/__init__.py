"""Tool calling for models without native tool support: pure functions, no I/O.

* :mod:`.schema`: JSON schemas (and so grammars) for well-formed calls to given tools.
* :mod:`.router`: the deterministic "call a tool or answer?" policy for ``tool_choice="auto"``.
* :mod:`.extract`: tool calls pulled out of JSON text while it is being generated.
* :mod:`.prompt`: tool turns and tool lists written as plain chat text.
"""

from .extract import JsonToolCallParser
from .prompt import render_messages, tools_system_prompt
from .intent import DEFAULT_THRESHOLD, score_tools, tools_asked_for, tool_vocabulary, words
from .schema import JSON_OBJECT_SCHEMA, call_schema, calls_schema, sequence_schema

__all__ = [
    "DEFAULT_THRESHOLD",
    "JSON_OBJECT_SCHEMA",
    "JsonToolCallParser",
    "call_schema",
    "calls_schema",
    "render_messages",
    "tools_asked_for",
    "score_tools",
    "sequence_schema",
    "tool_vocabulary",
    "tools_system_prompt",
    "words",
]
