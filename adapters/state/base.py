"""What gateway replicas must share, behind one interface.

One gateway process can keep everything in memory. Several replicas behind a load
balancer cannot: a spoken reply's audio id made on one must resolve on the next, and a
key's per-minute budget must be one budget, not one per replica. So the gateway asks a
:class:`StateBackend` for its limit counters, its audio store, its transcript cache,
its cloned voices' metadata, its stored Responses API responses and its realtime
client secrets; the in-memory backend serves one process, the Redis one
any number of them.

Limits are counted in fixed one-minute windows per owner (the API key's id). KeyAdmission is
one atomic step (check every counter, then count the request and the stream), so
concurrent requests, on one replica or many, can never be admitted past a limit. Audio
seconds are kept as integer milliseconds so that counters add exactly.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from adapters.chat.audio_store import AudioStore
from adapters.chat.transcripts import TranscriptCache
from adapters.errors import EngineError
from adapters.realtime.secrets import ClientSecretStore
from adapters.responses.store import ResponseStore

WINDOW_SECONDS = 60

#: The counters of one window, by field name (audio in milliseconds).
REQUESTS, TOKENS, AUDIO_IN, AUDIO_OUT = "requests", "tokens", "audio_in_ms", "audio_out_ms"
STREAMS = "streams"
FIELDS = (REQUESTS, TOKENS, AUDIO_IN, AUDIO_OUT)


@dataclass(frozen=True)
class Limits:
    """A key's limits; None means no limit. Per minute except ``streams``."""

    requests: int | None = None
    tokens: int | None = None
    audio_in_ms: int | None = None
    audio_out_ms: int | None = None
    streams: int | None = None

    def of(self, field: str) -> int | None:
        return getattr(self, field)


@dataclass(frozen=True)
class KeyAdmission:
    """The outcome of one admission: ``refused`` names the exhausted counter (None when
    admitted); ``used`` holds the window's counters after it; ``reset_ms`` is how long
    until the window turns; ``window`` identifies it for later charges and refunds."""

    refused: str | None
    used: dict[str, int]
    reset_ms: int
    window: int


@dataclass(frozen=True)
class Charge:
    ok: bool
    used: int


class StateUnavailable(EngineError):
    """The shared state could not be reached (Redis down, timed out). An EngineError so
    that, raised from a store mid-request, it answers 503 in the error envelope."""

    status_code = 503
    code = "state_unavailable"


class StateBackend(abc.ABC):
    name: str

    audio_store: AudioStore
    transcripts: TranscriptCache
    voices: "VoiceRecords"
    responses: ResponseStore
    client_secrets: ClientSecretStore

    @abc.abstractmethod
    async def admit(self, owner: str, limits: Limits, *, stream: bool = True) -> KeyAdmission:
        """Count one request and (with ``stream``) one open stream for ``owner`` unless a
        counter of the current window is already at its limit (or the streams at theirs).
        A realtime response is a request within a session that already holds its stream."""

    @abc.abstractmethod
    async def release(self, owner: str, admission: KeyAdmission, *, refund: bool) -> None:
        """The request's stream closed; ``refund`` also uncounts the request (it was
        refused before any work)."""

    @abc.abstractmethod
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
        """Add ``amount`` to a counter of ``window`` (None: the current one). When it would
        pass ``limit``:
        ``partial`` adds up to the limit and answers not ok (a stream that ran out),
        otherwise adds nothing and answers not ok (work refused before it started)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`StateUnavailable` when the backend cannot be reached."""

    async def close(self) -> None:
        return None


class VoiceRecords(abc.ABC):
    """Cloned voices' metadata: engine id -> (owner, public name)."""

    @abc.abstractmethod
    async def put(self, engine_id: str, owner: str, name: str) -> None: ...

    @abc.abstractmethod
    async def delete(self, engine_id: str) -> None: ...

    @abc.abstractmethod
    async def all(self) -> dict[str, tuple[str, str]]: ...
