"""Realtime client secrets (``ek_...``): what a key's server mints for a browser.

A secret stands for the key that minted it (its owner id) and carries the session
configuration it was minted with, until it expires. Only a digest of the secret is
stored, never the secret: whoever reads the store (a Redis dump) learns nothing usable.
A secret found expired is treated as one that never existed.
"""

from __future__ import annotations

import abc
import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

PREFIX = "ek_"


def new_secret() -> str:
    return PREFIX + secrets.token_hex(16)


def digest_of(secret: str) -> str:
    return hashlib.sha256(b"step-audio-gateway ek\0" + secret.encode()).hexdigest()


@dataclass(frozen=True)
class ClientSecret:
    """``session``: the minted session configuration (the JSON of a session.update's
    ``session``), the default of every session opened with the secret."""

    owner: str
    session: bytes
    expires_at: int


class ClientSecretStore(abc.ABC):
    @abc.abstractmethod
    async def put(self, secret: str, record: ClientSecret) -> None: ...

    @abc.abstractmethod
    async def get(self, secret: str) -> ClientSecret | None:
        """The record, or None when unknown or expired."""


class MemoryClientSecretStore(ClientSecretStore):
    """Bounded: the oldest secrets go first once ``max_entries`` is reached."""

    def __init__(self, max_entries: int = 10_000, clock=time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, ClientSecret] = OrderedDict()

    async def put(self, secret: str, record: ClientSecret) -> None:
        self._items[digest_of(secret)] = record
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    async def get(self, secret: str) -> ClientSecret | None:
        key = digest_of(secret)
        record = self._items.get(key)
        if record is None:
            return None
        if record.expires_at <= self._clock():
            del self._items[key]
            return None
        return record
