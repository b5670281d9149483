"""Spoken replies kept by id, so a later turn can refer to one by ``{"audio": {"id": ...}}``.

The store is an interface: the in-memory one suits a single gateway process; several
replicas behind a load balancer need a shared implementation (Redis, a database) with
the same three methods.
"""

from __future__ import annotations

import abc
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredAudio:
    id: str
    transcript: str
    expires_at: int


class AudioStore(abc.ABC):
    @abc.abstractmethod
    async def put(self, audio_id: str, transcript: str, ttl_seconds: int) -> StoredAudio: ...

    @abc.abstractmethod
    async def get(self, audio_id: str) -> StoredAudio | None:
        """The stored reply, or None when unknown or expired."""


class MemoryAudioStore(AudioStore):
    """Bounded and expiring: the oldest entries go first once ``max_entries`` is reached."""

    def __init__(self, max_entries: int = 10_000, clock=time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, StoredAudio] = OrderedDict()

    async def put(self, audio_id: str, transcript: str, ttl_seconds: int) -> StoredAudio:
        item = StoredAudio(audio_id, transcript, int(self._clock()) + ttl_seconds)
        self._items[audio_id] = item
        self._items.move_to_end(audio_id)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return item

    async def get(self, audio_id: str) -> StoredAudio | None:
        item = self._items.get(audio_id)
        if item is None:
            return None
        if item.expires_at <= self._clock():
            del self._items[audio_id]
            return None
        return item
