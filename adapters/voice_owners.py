"""Cloned voices belong to the key that cloned them.

An engine knows a clone only by the id the gateway gives it: ``clone-`` and a hash of
the owner and the public name. So two keys may each clone a "narrator" without one
overwriting the other, a key's own name for its clone is translated to that id on the
way in (and back on the way out, in listings), and no request can name a clone by its
engine id: any voice spelt like one is refused exactly as an unknown voice is, whether
such a clone exists or not, so nothing tells one key what another has cloned.

The records live in the state backend when one is given (``adapters.state``: Redis for
several replicas), so every replica sees which clone is whose; lookups stay synchronous
on a local copy that :meth:`VoiceOwners.refresh` brings up to date before a request uses
it. The clone's voice itself stays in the engine that registered it (an engine forgets
it on restart): replicas share it only if they share that engine (a gateway-gpu TTS).
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING

from .voices import VoiceNotFound

if TYPE_CHECKING:
    from .state import VoiceRecords

CLONE_PREFIX = "clone-"


def is_clone_id(voice: str) -> bool:
    return voice.lower().startswith(CLONE_PREFIX)


class VoiceOwners:
    def __init__(self, records: "VoiceRecords | None" = None) -> None:
        self._clones: dict[str, tuple[str, str]] = {}  # engine id -> (owner, public name)
        self._lock = threading.Lock()
        self._records = records

    async def refresh(self) -> None:
        """Bring the local copy up to date with the shared records (no-op without them)."""
        if self._records is not None:
            clones = await self._records.all()
            with self._lock:
                self._clones = dict(clones)

    async def record(self, owner: str, name: str) -> str:
        """:meth:`add`, written through to the shared records."""
        engine_id = self.add(owner, name)
        if self._records is not None:
            await self._records.put(engine_id, owner, name)
        return engine_id

    @staticmethod
    def clone_id(owner: str, name: str) -> str:
        digest = hashlib.sha256(f"{owner}\0{name}".encode()).hexdigest()[:20]
        return CLONE_PREFIX + digest

    def add(self, owner: str, name: str) -> str:
        """Record ``owner``'s clone called ``name``; the id to register it under."""
        engine_id = self.clone_id(owner, name)
        with self._lock:
            self._clones[engine_id] = (owner, name)
        return engine_id

    def remove(self, owner: str, name: str) -> None:
        with self._lock:
            self._clones.pop(self.clone_id(owner, name), None)

    def engine_voice(self, owner: str, voice: str) -> str:
        """The voice to ask the engine for when ``owner`` asks for ``voice``: their own
        clone's id, or ``voice`` unchanged. Raises :class:`VoiceNotFound` for a voice spelt
        as an engine clone id (anyone's, or no one's)."""
        if is_clone_id(voice):
            raise VoiceNotFound(f"Voice '{voice}' is not available.")
        engine_id = self.clone_id(owner, voice)
        with self._lock:
            return engine_id if engine_id in self._clones else voice

    def public_name(self, owner: str, engine_id: str) -> str | None:
        """How ``owner`` sees an engine voice: its own name for its own clones, the id for
        every voice that is no clone, None for another owner's clone (not to be shown)."""
        if not is_clone_id(engine_id):
            return engine_id
        with self._lock:
            entry = self._clones.get(engine_id)
        if entry is None or entry[0] != owner:
            return None
        return entry[1]
