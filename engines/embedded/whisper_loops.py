"""A short clip's decode is held to what its length can say, and a loop is cut.

Whisper can fall into repeating its last sentence until its 448-token context is full. On
a short clip that costs many times what the words do: a realtime phrase of 2.05 s of
Chinese (speed_prompt, prompted with the words before it) was decoded as its sentence six
times over in 4.9 s, three temperatures each running to the end of the context. Speech
is at most some 9 tokens a second in the test recordings (fast Mandarin, timestamps
counted), so a clip gets ``_BASE_TOKENS`` plus ``_TOKENS_PER_SECOND`` of its length, over
twice that rate; the same phrase is then decoded in 0.4 s.

A segment Whisper did not close with a timestamp was cut at its length limit (or ended
with the clip); if it ends repeating a stretch of itself, it was looping, and what it wrote
after the first copy of that stretch is dropped. (The one thing lost: a user who really said
"Hello? Hello?" at the very end of a clip is heard saying it once.)

Clips over ``_LONGEST_CAPPED`` seconds keep faster-whisper's own limit: a 30 s window of
fast speech needs most of the context, and a prompt may take half of it.
"""

from __future__ import annotations

_BASE_TOKENS = 30
_TOKENS_PER_SECOND = 20
_LONGEST_CAPPED = 9.0  # seconds: 30 + 20 x 9 = 210, within 448 minus a full prompt's 228
_SHORTEST_REPEAT = 6  # characters: a loop repeats a phrase; "no, no, no" is what was said


def token_budget(seconds: float) -> int | None:
    """New tokens a decode of a ``seconds`` clip may write, or None for no budget of ours."""
    if seconds > _LONGEST_CAPPED:
        return None
    return int(_BASE_TOKENS + _TOKENS_PER_SECOND * seconds)


def without_loop(text: str) -> str:
    """``text`` up to the end of the first copy of the stretch it ends repeating, or
    ``text`` itself when its end does not repeat. The copy after the first may be cut short
    by the budget, but half of it at least is a repeat, not a coincidence."""
    best = len(text)
    for period in range(_SHORTEST_REPEAT, len(text) - _SHORTEST_REPEAT + 1):
        start = _periodic_from(text, period)
        if len(text) - start >= period + max(_SHORTEST_REPEAT, period // 2):
            best = min(best, start + period)
    return text[:best].rstrip()


def _periodic_from(text: str, period: int) -> int:
    """The first index from which ``text`` repeats itself every ``period`` characters."""
    start = len(text) - period
    while start > 0 and text[start - 1] == text[start - 1 + period]:
        start -= 1
    return start
