"""A turn's words heard phrase by phrase, while the user is still speaking.

Each pause in the turn (the turn detector's ``Paused``, after ``pause_ms`` of silence)
closes a phrase, and the recogniser starts on that phrase alone, with the words before it
as its prompt and their language as its own. A user who goes on after a pause does not
make the recogniser start over: when the turn ends, only its last phrase is left to hear,
and that began at the last pause. Cutting at pauses, not at fixed lengths, never splits a
word; the recorded turns are heard with the same words (tests/test_realtime_hearing.py).

A user who speaks on without a pause would still leave the whole turn to hear at its end:
a phrase that has lasted ``PHRASE_SECONDS`` is closed at the next gap between two words
(the turn detector's ``Gap``, a clearly silent 32 ms window), so the pause that ends the
turn finds at most a phrase's worth left, or nothing when the gap was the pause's start.

Each phrase can be announced as soon as it is heard (``hear``'s ``announce``): the
transcription deltas a client reads while the user is still speaking. Phrases are heard
one after another, so they are announced in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from engines.base import Word

# Whisper base hears 2 s of speech in about 0.13 s on the 2-core host and 5 s in about
# 0.22 s (its encoder window is at least 8 s: engines/embedded/whisper_window.py), so
# phrases shorter than this would cost more in decodes than they save at the pause; and
# a phrase of a word or two is heard worse (no context, and Whisper may loop on a clip).
PHRASE_SECONDS = 2.0

# What of the words before a phrase is its prompt: Whisper reads at most half its 448-token
# context as prompt, and the last sentence or two carry what the next words need.
_PROMPT_CHARS = 200


@dataclass(frozen=True)
class Heard:
    """The words of the phrases heard so far, as the recogniser's pieces."""

    pieces: list[str] = field(default_factory=list)
    language: str | None = None
    words: list[Word] = field(default_factory=list)  # with their probabilities, if asked

    @property
    def text(self) -> str:
        return "".join(self.pieces).strip()


#: The recogniser: (audio at 16 kHz, prompt, language or None) -> what it heard.
Recognise = Callable[[np.ndarray, str | None, str | None], Awaitable[Heard]]
#: Told of each phrase once heard: (its words, whether it is the turn's first).
Announce = Callable[[Heard, bool], Awaitable[None]]


class TurnHearing:
    def __init__(self, recognise: Recognise, start: int) -> None:
        self._recognise = recognise
        self.heard_until = start  # session sample (16 kHz) where the next phrase begins
        self._last: asyncio.Task[Heard] | None = None
        self._tasks: list[asyncio.Task[Heard]] = []

    def hear(self, audio: np.ndarray, end: int, announce: Announce | None = None) -> None:
        """Hear the phrase ``audio`` (up to session sample ``end``) after those before it,
        and ``announce`` it once heard."""
        self._last = asyncio.create_task(self._phrase(self._last, audio, announce))
        self._tasks.append(self._last)
        self.heard_until = end

    @property
    def words(self) -> asyncio.Task[Heard] | None:
        """The task that ends with every phrase given so far heard, if any was given."""
        return self._last

    async def _phrase(
        self, before: asyncio.Task[Heard] | None, audio: np.ndarray, announce: Announce | None
    ) -> Heard:
        earlier = await asyncio.shield(before) if before is not None else Heard()
        prompt = earlier.text[-_PROMPT_CHARS:] or None
        heard = await self._recognise(audio, prompt, earlier.language)
        phrase = Heard(_spaced(earlier.pieces, heard.pieces), heard.language, heard.words)
        if announce is not None:
            await announce(phrase, not earlier.pieces)
        return Heard(earlier.pieces + phrase.pieces, earlier.language or heard.language,
                     earlier.words + heard.words)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks, self._last = [], None


def _spaced(before: list[str], pieces: list[str]) -> list[str]:
    """Whisper starts each segment of spaced scripts with a space; a phrase heard on its own
    may not, so it gets one after words that had one (never between CJK characters)."""
    if not before or not pieces or pieces[0][:1].isspace():
        return pieces
    spaced = any(p[:1].isspace() for p in before)
    return [(" " if spaced else "") + pieces[0], *pieces[1:]]
