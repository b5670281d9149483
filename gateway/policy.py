"""What a key may do and has spent, as one object every door passes along.

A :class:`Policy` is built per HTTP request (by the rate-limit middleware, which admits
the request first), per realtime session (at the WebSocket handshake: a session holds one
of its key's concurrent streams while it is open) and renewed per realtime response
(:meth:`Policy.admit_turn` counts the response as a request). Whoever does the work gets
it as an argument and asks it:

* :meth:`~Policy.check_model`: may this key use the model (404 as for an unknown one);
* :meth:`~Policy.charge_audio_in`: heard audio, known before the work: charged whole, or
  refused with 429 charging nothing;
* :meth:`~Policy.charge_audio_out`: spoken audio, charged piece by piece as it is made;
  the piece that runs the key out raises 429, which ends the stream (an error event);
* :meth:`~Policy.charge_tokens`: a finished turn's tokens; the key's next requests are
  refused once they pass the limit.

Charges go to the current one-minute window, not the one the request was admitted in:
a realtime session lives for many minutes. A key without limits gets an unlimited
policy, which answers every question at once without asking the state backend.

When the backend cannot be reached, ``state.on_redis_error`` decides: "closed" refuses
with 503, "open" lets the work through without limits; either is counted in metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import structlog
from prometheus_client import Counter, Gauge

from adapters.state import KeyAdmission, Limits, StateBackend, StateUnavailable
from adapters.state.base import AUDIO_IN, AUDIO_OUT, REQUESTS, STREAMS, TOKENS

from .auth import ANONYMOUS, _digest_of, owner_id, owner_of
from .errors import APIError, NotFound
from .metrics import PREFIX
from .settings import KeyLimitSettings, StateSettings

log = structlog.get_logger(__name__)

STATE_UP = Gauge(
    f"{PREFIX}_state_backend_up",
    "1 while the shared state backend (limits, audio ids) answers, 0 during an outage",
    ["backend"],
    multiprocess_mode="livemin",  # with several workers: 0 while any of them cannot reach it
)
STATE_ERRORS = Counter(
    f"{PREFIX}_state_backend_errors",
    "Calls to the shared state backend that failed, by what the gateway did (open/closed)",
    ["backend", "policy"],
)
REFUSALS = Counter(
    f"{PREFIX}_ratelimit_refusals",
    "Requests and streams refused or cut by a per-key limit, by the limit",
    ["limit"],
)

ANY_KEY = "*"
#: Where the HTTP layer puts a request's policy (``scope["state"]``).
POLICY_STATE = "policy"

#: Header names per counter; OpenAI sends ``requests`` and ``tokens``.
_HEADER_NAMES = {
    REQUESTS: "requests",
    TOKENS: "tokens",
    AUDIO_IN: "audio-seconds-in",
    AUDIO_OUT: "audio-seconds-out",
}
_WORDING = {
    REQUESTS: ("requests", "requests per min (RPM)"),
    TOKENS: ("tokens", "tokens per min (TPM)"),
    AUDIO_IN: ("audio_seconds", "audio seconds heard per min"),
    AUDIO_OUT: ("audio_seconds", "audio seconds spoken per min"),
    STREAMS: ("requests", "concurrent streams"),
}


@dataclass(frozen=True)
class KeyLimits:
    """A key's configured limits and the models it may use (empty: any)."""

    limits: Limits
    models: frozenset[str]


def _key_limits(settings: KeyLimitSettings) -> KeyLimits:
    def ms(seconds: float) -> int | None:
        return int(round(seconds * 1000)) if seconds > 0 else None

    return KeyLimits(
        Limits(
            requests=settings.rpm or None,
            tokens=settings.tpm or None,
            audio_in_ms=ms(settings.audio_seconds_in_per_minute),
            audio_out_ms=ms(settings.audio_seconds_out_per_minute),
            streams=settings.concurrent_streams or None,
        ),
        frozenset(settings.models),
    )


def _duration(ms: int) -> str:
    """OpenAI's spelling of a reset: ``24ms``, ``1.5s``, ``6m0s``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:g}s"
    return f"{int(seconds // 60)}m{seconds % 60:g}s"


def _amount(field: str, value: int) -> str:
    return f"{value / 1000:g}" if field in (AUDIO_IN, AUDIO_OUT) else str(value)


def rate_headers(limits: Limits, used: Mapping[str, int], reset_ms: int) -> list[tuple[str, str]]:
    headers = []
    for field, name in _HEADER_NAMES.items():
        limit = limits.of(field)
        if limit is None:
            continue
        headers += [
            (f"x-ratelimit-limit-{name}", _amount(field, limit)),
            (f"x-ratelimit-remaining-{name}", _amount(field, max(0, limit - used.get(field, 0)))),
            (f"x-ratelimit-reset-{name}", _duration(reset_ms)),
        ]
    return headers


class RateLimitExceeded(APIError):
    status_code = 429
    code = "rate_limit_exceeded"


def exceeded(
    field: str, limits: Limits, used: Mapping[str, int], reset_ms: int, requested: int = 1
) -> RateLimitExceeded:
    kind, words = _WORDING[field]
    limit = limits.streams if field == STREAMS else limits.of(field)
    retry = 1 if field == STREAMS else max(1, math.ceil(reset_ms / 1000))
    message = (
        f"Rate limit reached for {words}: Limit {_amount(field, limit or 0)}, "
        f"Used {_amount(field, used.get(field, 0))}, Requested {_amount(field, requested)}. "
        f"Please try again in {retry}s."
    )
    error = RateLimitExceeded(message)
    error.type = kind
    error.headers = {"retry-after": str(retry), **dict(rate_headers(limits, used, reset_ms))}
    REFUSALS.labels(limit=field).inc()
    return error


class StateUnavailableError(APIError):
    status_code = 503
    type = "server_error"
    code = "state_unavailable"


def _outage(backend: StateBackend, fail_open: bool, exc: Exception) -> None:
    """Count an unreachable backend; raise 503 unless the gateway fails open."""
    mode = "open" if fail_open else "closed"
    STATE_UP.labels(backend=backend.name).set(0)
    STATE_ERRORS.labels(backend=backend.name, policy=mode).inc()
    log.warning("state_backend_unavailable", backend=backend.name, policy=mode, error=str(exc))
    if not fail_open:
        raise StateUnavailableError(
            "Rate limits cannot be checked right now; please retry.", headers={"retry-after": "1"}
        )


class Policy:
    """One request's, session's or response's share of its key's limits (see the module
    notes). ``admission`` is None for a key without limits, or when the backend was down
    and the gateway fails open."""

    def __init__(
        self,
        owner: str,
        key: KeyLimits | None = None,
        backend: StateBackend | None = None,
        admission: KeyAdmission | None = None,
        *,
        fail_open: bool = False,
    ) -> None:
        self.owner = owner
        self.key = key
        self.backend = backend
        self.admission = admission
        self.fail_open = fail_open

    @property
    def limited(self) -> bool:
        return self.key is not None and self.backend is not None

    def headers(self) -> list[tuple[str, str]]:
        """The ``x-ratelimit-*`` headers as admitted."""
        if not self.limited or self.admission is None:
            return []
        a = self.admission
        return rate_headers(self.key.limits, a.used, a.reset_ms)

    def check_model(self, model: str) -> None:
        """OpenAI's answer for a model a key may not use: the same 404 as for one that
        does not exist, so a key learns nothing about models it cannot use."""
        if self.key is not None and self.key.models and model not in self.key.models:
            raise NotFound(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )

    async def admit(self, *, stream: bool) -> None:
        """Count a request (and, with ``stream``, an open stream held until
        :meth:`release`), or raise 429 naming the counter that is full."""
        if not self.limited:
            return
        try:
            admission = await self.backend.admit(self.owner, self.key.limits, stream=stream)
            STATE_UP.labels(backend=self.backend.name).set(1)
        except StateUnavailable as exc:
            _outage(self.backend, self.fail_open, exc)
            return
        if admission.refused is not None:
            raise exceeded(admission.refused, self.key.limits, admission.used, admission.reset_ms)
        if stream:
            self.admission = admission
        elif self.admission is None:
            self.admission = admission

    async def admit_turn(self) -> None:
        """A realtime response: one more request of the key, its stream already held."""
        await self.admit(stream=False)

    async def release(self, *, refund: bool) -> None:
        """The stream is closed; ``refund`` also uncounts the request (refused before any
        work). A client that left still frees its slot: callers shield this."""
        if not self.limited or self.admission is None:
            return
        admission, self.admission = self.admission, None
        try:
            await self.backend.release(self.owner, admission, refund=refund)
        except StateUnavailable as exc:
            STATE_UP.labels(backend=self.backend.name).set(0)
            STATE_ERRORS.labels(backend=self.backend.name, policy="release").inc()
            log.warning("state_backend_unavailable", error=str(exc))

    async def _charge(self, field: str, amount: int, *, partial: bool) -> None:
        limit = self.key.limits.of(field) if self.limited else None
        if amount <= 0 or limit is None:
            return  # nothing to count against: no call to the backend at all
        try:
            charge = await self.backend.charge(
                self.owner, None, field, amount, limit, partial=partial
            )
        except StateUnavailable as exc:
            _outage(self.backend, self.fail_open, exc)
            return
        if not charge.ok:
            admission = self.admission
            used = {**(admission.used if admission else {}), field: charge.used}
            reset_ms = admission.reset_ms if admission else 60_000
            raise exceeded(field, self.key.limits, used, reset_ms, amount)

    async def charge_audio_in(self, seconds: float) -> None:
        """Whole or not at all: raises 429 (charging nothing) when it does not fit."""
        await self._charge(AUDIO_IN, int(round(seconds * 1000)), partial=False)

    async def charge_audio_out(self, seconds: float) -> None:
        """Raises 429 once the key has spoken its minute's audio (this piece included)."""
        await self._charge(AUDIO_OUT, int(round(seconds * 1000)), partial=True)

    async def charge_tokens(self, tokens: int) -> None:
        try:
            await self._charge(TOKENS, tokens, partial=True)
        except RateLimitExceeded:
            pass  # the answer is already made; the key's next requests are refused


#: What work done outside any key's request (tests, internal calls) is held to.
UNLIMITED = Policy(ANONYMOUS)


class Policies:
    """The configured per-key limits, found by the request's owner id (what a key hashes
    to), so a key listed plain or as ``sha256:`` is the same key; and the one way every
    door builds a :class:`Policy` for an owner."""

    def __init__(
        self,
        per_key: Mapping[str, KeyLimitSettings],
        backend: StateBackend,
        state: StateSettings,
    ) -> None:
        self._by_owner = {
            owner_id(_digest_of(key)): _key_limits(value)
            for key, value in per_key.items()
            if key != ANY_KEY
        }
        self._default = _key_limits(per_key[ANY_KEY]) if ANY_KEY in per_key else None
        self.backend = backend
        self.fail_open = state.on_redis_error == "open"
        STATE_UP.labels(backend=backend.name).set(1)

    def __bool__(self) -> bool:
        return bool(self._by_owner) or self._default is not None

    def of(self, owner: str) -> Policy:
        """``owner``'s policy, not yet admitted."""
        key = self._by_owner.get(owner, self._default)
        if key is None:
            return Policy(owner)
        return Policy(owner, key, self.backend, fail_open=self.fail_open)


def policy_of(scope) -> Policy:
    """The policy the HTTP layer built for this request (a key without limits: an
    unlimited one for its owner)."""
    state = scope.get("state") or {}
    policy = state.get(POLICY_STATE)
    return policy if policy is not None else Policy(owner_of(scope))


class HeldCharges:
    """A key's :class:`Policy` whose charges wait until :meth:`release`: work begun before
    the client asked for it (a realtime reply built at the user's pause, in case the turn
    ends there) is charged only if it is sent, and then as if it had begun then. Anything
    else is the policy's own."""

    _HELD = ("charge_audio_in", "charge_audio_out", "charge_tokens")

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._held: list[tuple[str, float]] = []
        self._released = False

    def __getattr__(self, name: str):
        if name in self._HELD:
            return lambda amount: self._charge(name, amount)
        return getattr(self._policy, name)

    async def _charge(self, name: str, amount: float) -> None:
        if self._released:
            await getattr(self._policy, name)(amount)
        else:
            self._held.append((name, amount))

    async def release(self) -> None:
        """Charge what was held (a charge over the key's limit raises, as it would have)
        and charge from now on as it happens."""
        self._released = True
        held, self._held = self._held, []
        for name, amount in held:
            await getattr(self._policy, name)(amount)
