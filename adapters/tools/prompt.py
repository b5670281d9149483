"""Tool turns as plain chat text, for models whose chat template has no tool roles.

ChatML-style templates know ``system``, ``user`` and ``assistant`` only. An assistant turn
that called tools is written as ``Calling get_weather({"city": "Berlin"}).`` (after any
text it had), and a tool result becomes a user turn ``get_weather returned: {...}``; the
tool's name is looked up from the ``tool_call_id``. With this wording the small embedded
model answers from the result ("The weather in Berlin is sunny.") instead of repeating
the call, which it does when the call is shown as bare JSON.
"""

from __future__ import annotations

import json
from typing import Sequence

from adapters.chat.messages import ChatMessage, ToolSpec


def tools_system_prompt(tools: Sequence[ToolSpec]) -> str:
    """Instructions listing ``tools``, for the system turn when a call is to be written."""
    lines = ["You can call these tools:"]
    for tool in tools:
        lines.append(
            json.dumps(
                {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
                ensure_ascii=False,
            )
        )
    lines.append(
        'To call a tool, reply with JSON: {"name": <tool name>, "arguments": <arguments object>}.'
    )
    return "\n".join(lines)


def render_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """``messages`` as ``{"role", "content"}`` dicts with roles system, user and assistant."""
    names: dict[str, str] = {}
    rendered: list[dict[str, str]] = []
    for message in messages:
        role, content = message.role, message.content or ""
        if role == "assistant" and message.tool_calls:
            parts = [content] if content else []
            for call in message.tool_calls:
                names[call.id] = call.name
                parts.append(f"Calling {call.name}({_compact(call.arguments)}).")
            content = "\n".join(parts)
        elif role == "tool":
            name = names.get(message.tool_call_id or "") or message.name or "The tool"
            role, content = "user", f"{name} returned: {content}"
        elif role not in ("system", "user", "assistant"):
            role = "user"
        rendered.append({"role": role, "content": content})
    return rendered


def _compact(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        return arguments
