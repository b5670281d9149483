"""Expected tool-call events for parser tests: a start's id is random, so expectations
match any call id (``call_`` and more) in its place."""

from __future__ import annotations

from engines.chat import ToolCallStart


class AnyCallId(str):
    """Equal to every string that looks like a tool-call id."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.startswith("call_") and len(other) > 5

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__


ANY_CALL_ID = AnyCallId("call_<any>")


def started(index: int, name: str) -> ToolCallStart:
    return ToolCallStart(index, ANY_CALL_ID, name)
