"""``tool_choice`` as both doors (chat completions, realtime) read it: which tools the
engine is offered and how it must use them, with the same refusals on both.

Each door turns its own wire shape into a mode (``"none"``, ``"auto"``, ``"required"``,
``"function"``), the named tool of ``"function"``, and the names ``allowed_tools``
restricts the call to; :func:`choose_tools` checks them against the request's tools.
"""

from __future__ import annotations

from typing import Protocol, Sequence, TypeVar

from engines.chat import ToolChoice

from ..errors import InvalidRequest


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


def choose_tools(
    mode: str,
    tools: Sequence[T],
    *,
    name: str | None = None,
    allowed: Sequence[str] | None = None,
) -> tuple[ToolChoice, list[T]]:
    """The engine's tool choice and the tools it is offered, out of ``tools``.

    ``allowed`` (OpenAI's ``allowed_tools``) offers only the tools it names, so the model
    cannot call the others; a name that is not among ``tools`` is refused, as a named
    choice's is. ``"required"`` with nothing to call is refused rather than answered in
    text. Raises :class:`InvalidRequest` (400, ``param="tool_choice"``).
    """
    known = {tool.name for tool in tools}
    if mode == "function":
        assert name is not None
        if name not in known:
            raise InvalidRequest(
                f"tool_choice names '{name}', which is not among the tools.", param="tool_choice"
            )
        return ToolChoice.function(name), list(tools)
    offered = list(tools)
    if allowed is not None:
        missing = [n for n in allowed if n not in known]
        if missing:
            raise InvalidRequest(
                f"tool_choice.allowed_tools names '{missing[0]}', which is not among the tools.",
                param="tool_choice",
            )
        offered = [tool for tool in tools if tool.name in set(allowed)]
    if mode == "required" and not offered:
        raise InvalidRequest("tool_choice 'required' needs at least one tool.", param="tool_choice")
    if mode == "none" or not offered:
        return ToolChoice.NONE, offered
    return (ToolChoice.REQUIRED if mode == "required" else ToolChoice.AUTO), offered
