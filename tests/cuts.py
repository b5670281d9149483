"""Cutting a text or byte stream where a property test says, as a network would."""

from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T", str, bytes)


def cut(data: T, cuts: Sequence[int]) -> list[T]:
    """``data`` in consecutive pieces split at ``cuts`` (taken modulo its length + 1, so
    any integers will do); the pieces join back to ``data``, empty ones included."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces
