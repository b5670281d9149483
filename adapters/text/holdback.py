"""How much of the end of streamed text must wait because a marker may be starting there.

A stop string or a tag like ``<tool_call>`` can arrive split across tokens. Text is sent
as soon as it cannot be the beginning of one; only the longest end of it that is a
proper prefix of some marker is held back until the next piece decides.
"""

from __future__ import annotations

from typing import Sequence


def partial_marker_length(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of one of ``markers``."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest
