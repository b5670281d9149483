"""Stored Responses API responses, kept by id so a later request can continue one
(``previous_response_id``), read it back or delete it.

The store keeps an opaque record (the gateway's JSON of the response and the
conversation it answered): it knows owners and expiry, not the wire format.

Every record belongs to the owner (API key identity) whose request made it. Another
owner asking for it gets None, and deleting it deletes nothing, exactly as for an id that
never existed, so a response id seen elsewhere neither reads another key's conversation
nor tells whether it exists.
"""

from __future__ import annotations

import abc
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredResponse:
    id: str
    record: bytes
    owner: str


class ResponseStore(abc.ABC):
    @abc.abstractmethod
    async def put(
        self, response_id: str, record: bytes, ttl_seconds: int, *, owner: str
    ) -> None: ...

    @abc.abstractmethod
    async def get(self, response_id: str, *, owner: str) -> StoredResponse | None:
        """The record, or None when unknown, expired or another owner's."""

    @abc.abstractmethod
    async def delete(self, response_id: str, *, owner: str) -> bool:
        """True when ``owner``'s record was there and is now gone."""


class MemoryResponseStore(ResponseStore):
    """Bounded and expiring: the oldest entries go first once ``max_entries`` is reached."""

    def __init__(self, max_entries: int = 10_000, clock=time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, tuple[StoredResponse, float]] = OrderedDict()

    async def put(self, response_id: str, record: bytes, ttl_seconds: int, *, owner: str) -> None:
        expires_at = self._clock() + ttl_seconds
        self._items[response_id] = (StoredResponse(response_id, record, owner), expires_at)
        self._items.move_to_end(response_id)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    async def get(self, response_id: str, *, owner: str) -> StoredResponse | None:
        entry = self._items.get(response_id)
        if entry is None:
            return None
        item, expires_at = entry
        if expires_at <= self._clock():
            del self._items[response_id]
            return None
        if not hmac.compare_digest(item.owner, owner):
            return None
        return item

    async def delete(self, response_id: str, *, owner: str) -> bool:
        if await self.get(response_id, owner=owner) is None:
            return False
        del self._items[response_id]
        return True
