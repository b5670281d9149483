"""Transcripts of spoken chat turns, kept by the audio's content.

A client that speaks to a chat model sends the whole conversation again with every request,
earlier spoken turns included, and those turns reach the model as their transcripts
(upstream's text-based context). Transcribing the same audio again on every request costs a
Whisper pass per earlier turn per request, so a transcript is kept under the SHA-256 of the
audio's bytes and the model that heard it, and reused.

The cache is an interface: the in-memory one suits a single gateway process; several
replicas behind a load balancer can share a backend (Redis, a database) with the same two
methods. Entries are not per API key: a key made of the audio's hash can only be asked for
by someone who holds the same audio, who could transcribe it anyway.
"""

from __future__ import annotations

import abc
import hashlib
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Transcript:
    text: str
    #: The audio's duration, which usage reports whether or not it was transcribed again.
    seconds: float


def transcript_key(model: str, audio: bytes) -> str:
    """The cache key of ``audio`` (the uploaded file's bytes) heard by ``model``."""
    digest = hashlib.sha256(audio).hexdigest()
    return f"{model}:{digest}"


class TranscriptCache(abc.ABC):
    @abc.abstractmethod
    async def get(self, key: str) -> Transcript | None: ...

    @abc.abstractmethod
    async def put(self, key: str, transcript: Transcript) -> None: ...


class MemoryTranscriptCache(TranscriptCache):
    """Least recently used entries go first once ``max_entries`` is reached."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, Transcript] = OrderedDict()

    async def get(self, key: str) -> Transcript | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    async def put(self, key: str, transcript: Transcript) -> None:
        self._items[key] = transcript
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
