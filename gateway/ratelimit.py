"""Per-key limits on the HTTP door: each ``/v1`` request of a limited key is admitted (or
refused with 429) before it reaches its handler, and carries its
:class:`~gateway.policy.Policy` in ``scope["state"]`` for the handler to pass on to the
work it starts (see gateway.policy for what the policy meters and how).

A request refused before any work (any status >= 400 on its response head) gives its
request back. Responses carry OpenAI's ``x-ratelimit-*`` headers for requests and tokens,
plus the same three for ``audio-seconds-in`` and ``audio-seconds-out``.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from .auth import is_public, owner_of, resolved_template
from .errors import APIError, ErrorResponse, error_detail
from .policy import POLICY_STATE, Policies

#: Requests that end work the key holds a stream for (a WebRTC call's hangup): counted as
#: requests but holding no stream, or a key at its concurrent-stream limit could never end
#: the call that holds it.
ENDS_WORK = frozenset({"/v1/realtime/calls/{call_id}/hangup"})


def _limited(scope: Scope) -> bool:
    """Every HTTP request but CORS preflights and the public routes (health, readiness,
    metrics, docs), found as the key check finds them: by the route the router resolves,
    so no spelling of a path (``//v1/models``, ``/%76%31/models``) slips past. WebSocket
    sessions are admitted by their own door (gateway.api.realtime), which holds the
    stream for the session's life."""
    if scope["type"] != "http" or scope.get("method") == "OPTIONS":
        return False
    return not is_public(resolved_template(scope))


async def send_error(send: Send, error: APIError) -> None:
    body = msgspec.json.encode(ErrorResponse(error=error_detail(error)))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in error.headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def ratelimit_middleware_factory(policies: Policies):
    def factory(app: ASGIApp) -> ASGIApp:
        if not policies:
            return app

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if not _limited(scope):
                await app(scope, receive, send)
                return
            policy = policies.of(owner_of(scope))
            if not policy.limited:
                await app(scope, receive, send)
                return
            try:
                await policy.admit(stream=resolved_template(scope) not in ENDS_WORK)
            except APIError as error:
                await send_error(send, error)
                return
            headers = [(k.encode(), v.encode()) for k, v in policy.headers()]
            status: dict[str, Any] = {}

            async def send_with_headers(message: Any) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                    present = {name for name, _ in message.get("headers", [])}
                    extra = [h for h in headers if h[0] not in present]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                await send(message)

            scope.setdefault("state", {})[POLICY_STATE] = policy
            try:
                await app(scope, receive, send_with_headers)
            finally:
                with anyio.CancelScope(shield=True):  # a client that left still frees its slot
                    await policy.release(refund=status.get("code", 500) >= 400)

        return middleware

    return factory
