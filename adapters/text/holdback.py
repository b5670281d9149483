"""How much of the end of streamed text must wait because a marker may be starting there.

A stop string or a tag like ``<tool_call>`` can arrive split across tokens. Text is sent
as soon as it cannot be the beginning of one; only the longest end of it that is a
proper prefix of some marker is held back until the next piece decides.
"""

from __future__ import annotations

from typing import Sequence


def partial_marker_length(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of one of ``markers``.

    Such an end starts with the marker's first character, so only the places in the last
    ``len(marker) - 1`` characters holding that character are tried (usually none): this
    runs on every streamed piece, and slicing every candidate length cost far more.
    """
    longest = 0
    end = len(text)
    for marker in markers:
        window = min(len(marker) - 1, end)
        if window <= longest:
            continue
        head = marker[0]
        at = text.find(head, end - window)
        while at != -1 and end - at > longest:
            if marker.startswith(text[at:]):
                longest = end - at
                break
            at = text.find(head, at + 1)
    return longest
