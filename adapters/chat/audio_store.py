"""Spoken replies kept by id, so a later turn can refer to one by ``{"audio": {"id": ...}}``.

The store is an interface: the in-memory one suits a single gateway process; several
replicas behind a load balancer need a shared implementation (Redis, a database) with
the same methods.

Every reply belongs to the owner (API key identity) whose request made it. Another
owner asking for it gets None, exactly as for an id that never existed, so an id seen
elsewhere (a log, a shared transcript) neither reads another key's reply nor tells
whether it exists.
"""

from __future__ import annotations

import abc
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredAudio:
    id: str
    transcript: str
    expires_at: int
    owner: str


class AudioStore(abc.ABC):
    @abc.abstractmethod
    async def put(
        self, audio_id: str, transcript: str, ttl_seconds: int, *, owner: str
    ) -> StoredAudio: ...

    @abc.abstractmethod
    async def get(self, audio_id: str, *, owner: str) -> StoredAudio | None:
        """The stored reply, or None when unknown, expired or another owner's."""


class MemoryAudioStore(AudioStore):
    """Bounded and expiring: the oldest entries go first once ``max_entries`` is reached."""

    def __init__(self, max_entries: int = 10_000, clock=time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, StoredAudio] = OrderedDict()

    async def put(
        self, audio_id: str, transcript: str, ttl_seconds: int, *, owner: str
    ) -> StoredAudio:
        item = StoredAudio(audio_id, transcript, int(self._clock()) + ttl_seconds, owner)
        self._items[audio_id] = item
        self._items.move_to_end(audio_id)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return item

    async def get(self, audio_id: str, *, owner: str) -> StoredAudio | None:
        item = self._items.get(audio_id)
        if item is None:
            return None
        if item.expires_at <= self._clock():
            del self._items[audio_id]
            return None
        if not hmac.compare_digest(item.owner, owner):
            return None
        return item
