"""The one-process backend. Every method runs without awaiting, so on one event loop each
is atomic exactly as the Redis scripts are."""

from __future__ import annotations

import time
from collections import defaultdict

from adapters.chat.audio_store import MemoryAudioStore
from adapters.chat.transcripts import MemoryTranscriptCache
from adapters.realtime.secrets import MemoryClientSecretStore
from adapters.responses.store import MemoryResponseStore

from .base import (
    FIELDS,
    REQUESTS,
    STREAMS,
    WINDOW_SECONDS,
    Charge,
    KeyAdmission,
    Limits,
    StateBackend,
    VoiceRecords,
)


class MemoryVoiceRecords(VoiceRecords):
    def __init__(self) -> None:
        self._items: dict[str, tuple[str, str]] = {}

    async def put(self, engine_id: str, owner: str, name: str) -> None:
        self._items[engine_id] = (owner, name)

    async def delete(self, engine_id: str) -> None:
        self._items.pop(engine_id, None)

    async def all(self) -> dict[str, tuple[str, str]]:
        return dict(self._items)


class MemoryBackend(StateBackend):
    name = "memory"

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, int], dict[str, int]] = {}
        self._streams: dict[str, int] = defaultdict(int)
        self.audio_store = MemoryAudioStore(clock=clock)
        self.transcripts = MemoryTranscriptCache()
        self.voices = MemoryVoiceRecords()
        self.responses = MemoryResponseStore(clock=clock)
        self.client_secrets = MemoryClientSecretStore(clock=clock)

    def _window(self, owner: str, window: int) -> dict[str, int]:
        counters = self._windows.get((owner, window))
        if counters is None:
            # Windows older than the previous one can no longer be charged: drop them.
            for key in [k for k in self._windows if k[1] < window - 1]:
                del self._windows[key]
            counters = self._windows[(owner, window)] = dict.fromkeys(FIELDS, 0)
        return counters

    async def admit(self, owner: str, limits: Limits, *, stream: bool = True) -> KeyAdmission:
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        reset_ms = int((WINDOW_SECONDS - now % WINDOW_SECONDS) * 1000)
        counters = self._window(owner, window)
        refused = None
        for field in FIELDS:
            limit = limits.of(field)
            step = 1 if field == REQUESTS else 0
            if limit is not None and (counters[field] + step > limit or counters[field] >= limit):
                refused = field
                break
        if refused is None and stream and limits.streams is not None:
            if self._streams[owner] + 1 > limits.streams:
                refused = STREAMS
        if refused is None:
            counters[REQUESTS] += 1
            self._streams[owner] += int(stream)
        used = {**counters, STREAMS: self._streams[owner]}
        return KeyAdmission(refused, used, reset_ms, window)

    async def release(self, owner: str, admission: KeyAdmission, *, refund: bool) -> None:
        self._streams[owner] = max(0, self._streams[owner] - 1)
        if refund:
            counters = self._windows.get((owner, admission.window))
            if counters is not None and counters[REQUESTS] > 0:
                counters[REQUESTS] -= 1

    async def charge(
        self,
        owner: str,
        window: int | None,
        field: str,
        amount: int,
        limit: int | None,
        *,
        partial: bool,
    ) -> Charge:
        if window is None:
            window = int(self._clock() // WINDOW_SECONDS)
        counters = self._window(owner, window)
        if limit is None or counters[field] + amount <= limit:
            counters[field] += amount
            return Charge(True, counters[field])
        if partial:
            counters[field] = max(counters[field], limit)
        return Charge(False, counters[field])

    async def ping(self) -> None:
        return None
