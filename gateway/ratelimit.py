"""Per-key limits: requests and tokens per minute, audio seconds per minute heard and
spoken, concurrent streams, and which models a key may use.

A speech GPU spends audio seconds, not requests, so audio is what a key is metered in
most closely. Each ``/v1`` request of a limited key is admitted (or refused with 429)
by the state backend in one atomic step, so replicas sharing Redis never over-admit.
The admitted request carries a :class:`Quota` in a context variable, which the stream
producers inherit; they charge it as audio is heard and spoken:

* audio heard (a transcription upload, a chat's input audio) is known before the work,
  so it is charged whole or refused with 429 before anything runs, charging nothing;
* audio spoken is charged as each piece is produced; the piece that runs the key out
  stops the stream (an error event on SSE, a cut transfer on a binary body);
* tokens are charged when a chat turn finishes, and refuse the key's next requests.

A request refused before any work (any status >= 400 on its response head) gives its
request back. Responses carry OpenAI's ``x-ratelimit-*`` headers for requests and tokens,
plus the same three for ``audio-seconds-in`` and ``audio-seconds-out``.

When the backend cannot be reached, ``state.on_redis_error`` decides: "closed" answers
limited requests 503, "open" serves them without limits; either is counted in metrics.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Mapping

import anyio
import msgspec
import structlog
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import Counter, Gauge

from adapters.state import Admission, Limits, StateBackend, StateUnavailable
from adapters.state.base import AUDIO_IN, AUDIO_OUT, REQUESTS, STREAMS, TOKENS

from .auth import _digest_of, is_public, owner_id, owner_of, resolved_template
from .errors import APIError, ErrorResponse, NotFound, error_detail
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
class KeyPolicy:
    limits: Limits
    models: frozenset[str]


def _policy(settings: KeyLimitSettings) -> KeyPolicy:
    def ms(seconds: float) -> int | None:
        return int(round(seconds * 1000)) if seconds > 0 else None

    return KeyPolicy(
        Limits(
            requests=settings.rpm or None,
            tokens=settings.tpm or None,
            audio_in_ms=ms(settings.audio_seconds_in_per_minute),
            audio_out_ms=ms(settings.audio_seconds_out_per_minute),
            streams=settings.concurrent_streams or None,
        ),
        frozenset(settings.models),
    )


class Policies:
    """Per-key policies, found by the request's owner id (what a key hashes to), so a key
    listed plain or as ``sha256:`` is the same key."""

    def __init__(self, per_key: Mapping[str, KeyLimitSettings]) -> None:
        self._by_owner = {
            owner_id(_digest_of(key)): _policy(value)
            for key, value in per_key.items()
            if key != ANY_KEY
        }
        self._default = _policy(per_key[ANY_KEY]) if ANY_KEY in per_key else None

    def __bool__(self) -> bool:
        return bool(self._by_owner) or self._default is not None

    def of(self, owner: str) -> KeyPolicy | None:
        return self._by_owner.get(owner, self._default)


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


class Quota:
    """One admitted request's share of its key's limits."""

    def __init__(
        self,
        backend: StateBackend,
        owner: str,
        policy: KeyPolicy,
        admission: Admission,
        fail_open: bool,
    ) -> None:
        self.backend = backend
        self.owner = owner
        self.policy = policy
        self.admission = admission
        self.fail_open = fail_open

    def check_model(self, model: str) -> None:
        """OpenAI's answer for a model a key may not use: the same 404 as for one that
        does not exist, so a key learns nothing about models it cannot use."""
        if self.policy.models and model not in self.policy.models:
            raise NotFound(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )

    async def _charge(self, field: str, amount: int, *, partial: bool) -> bool:
        limit = self.policy.limits.of(field)
        if amount <= 0 or limit is None:
            return True  # nothing to count against: no call to the backend at all
        try:
            charge = await self.backend.charge(
                self.owner, self.admission.window, field, amount, limit, partial=partial
            )
        except StateUnavailable as exc:
            return _outage(self.backend, self.fail_open, exc)
        if not charge.ok:
            used = {**self.admission.used, field: charge.used}
            raise exceeded(field, self.policy.limits, used, self.admission.reset_ms, amount)
        return True

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


def _outage(backend: StateBackend, fail_open: bool, exc: Exception) -> bool:
    policy = "open" if fail_open else "closed"
    STATE_UP.labels(backend=backend.name).set(0)
    STATE_ERRORS.labels(backend=backend.name, policy=policy).inc()
    log.warning("state_backend_unavailable", backend=backend.name, policy=policy, error=str(exc))
    if fail_open:
        return True
    raise StateUnavailableError(
        "Rate limits cannot be checked right now; please retry.", headers={"retry-after": "1"}
    )


_current: ContextVar[Quota | None] = ContextVar("quota", default=None)


def current() -> Quota | None:
    return _current.get()


def check_model(model: str) -> None:
    if (quota := _current.get()) is not None:
        quota.check_model(model)


async def charge_audio_in(seconds: float) -> None:
    if (quota := _current.get()) is not None:
        await quota.charge_audio_in(seconds)


async def charge_audio_out(seconds: float) -> None:
    if (quota := _current.get()) is not None:
        await quota.charge_audio_out(seconds)


async def charge_tokens(tokens: int) -> None:
    if (quota := _current.get()) is not None:
        await quota.charge_tokens(tokens)


def _limited(scope: Scope) -> bool:
    """Every HTTP request but CORS preflights and the public routes (health, readiness,
    metrics, docs), found as the key check finds them: by the route the router resolves,
    so no spelling of a path (``//v1/models``, ``/%76%31/models``) slips past."""
    if scope["type"] != "http" or scope.get("method") == "OPTIONS":
        return False
    return not is_public(resolved_template(scope))


async def _send_error(send: Send, error: APIError) -> None:
    body = msgspec.json.encode(ErrorResponse(error=error_detail(error)))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in error.headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def ratelimit_middleware_factory(
    per_key: Mapping[str, KeyLimitSettings], backend: StateBackend, state: StateSettings
):
    policies = Policies(per_key)
    fail_open = state.on_redis_error == "open"
    STATE_UP.labels(backend=backend.name).set(1)

    def factory(app: ASGIApp) -> ASGIApp:
        if not policies:
            return app

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            policy = policies.of(owner_of(scope)) if _limited(scope) else None
            if policy is None:
                await app(scope, receive, send)
                return
            owner = owner_of(scope)
            try:
                admission = await backend.admit(owner, policy.limits)
                STATE_UP.labels(backend=backend.name).set(1)
            except StateUnavailable as exc:
                try:
                    _outage(backend, fail_open, exc)
                except APIError as error:
                    await _send_error(send, error)
                    return
                await app(scope, receive, send)
                return
            if admission.refused is not None:
                await _send_error(
                    send,
                    exceeded(admission.refused, policy.limits, admission.used, admission.reset_ms),
                )
                return
            headers = [
                (k.encode(), v.encode())
                for k, v in rate_headers(policy.limits, admission.used, admission.reset_ms)
            ]
            status: dict[str, Any] = {}

            async def send_with_headers(message: Any) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                    present = {name for name, _ in message.get("headers", [])}
                    extra = [h for h in headers if h[0] not in present]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                await send(message)

            token = _current.set(Quota(backend, owner, policy, admission, fail_open))
            try:
                await app(scope, receive, send_with_headers)
            finally:
                _current.reset(token)
                refund = status.get("code", 500) >= 400
                try:
                    with anyio.CancelScope(shield=True):  # a client that left still frees its slot
                        await backend.release(owner, admission, refund=refund)
                except StateUnavailable as exc:
                    STATE_UP.labels(backend=backend.name).set(0)
                    STATE_ERRORS.labels(backend=backend.name, policy="release").inc()
                    log.warning("state_backend_unavailable", error=str(exc))

        return middleware

    return factory
