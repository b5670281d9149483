"""What a chat turn is made of, shared by the engines and the adapters (prompt renderers,
tool routers, parsers): messages, the tool calls in them, and the tools offered.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made; ``arguments`` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    """One turn. ``role`` is ``system``, ``user``, ``assistant`` or ``tool``.

    ``content`` may be None on an assistant turn that only calls tools. A ``tool`` turn
    carries the result of the call named by ``tool_call_id``. ``audio_tokens`` is set on the
    current user turn for engines that read speech as discrete tokens
    (:attr:`ChatEngine.accepts_audio_tokens`); ``content`` then holds its transcript, if known.
    """

    role: str
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    audio_tokens: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is the JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})
