"""Bearer API keys for the /v1 routes (health, readiness and metrics stay open).

Keys are compared in constant time. Both ``Authorization: Bearer`` and the Azure-style
``api-key`` header are accepted, as openai-node can send either.
"""

from __future__ import annotations

import hmac
from typing import Iterable

import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from .errors import AuthenticationFailed, ErrorResponse

PROTECTED_PREFIX = "/v1"


def _presented_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    key = headers.get(b"api-key")
    return key.decode("latin-1").strip() if key else None


def api_key_middleware_factory(keys: Iterable[str]):
    accepted = [k.encode() for k in keys if k]

    def factory(app: ASGIApp) -> ASGIApp:
        if not accepted:
            return app

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
                await app(scope, receive, send)
                return
            if scope.get("method") == "OPTIONS":  # CORS preflight carries no credentials
                await app(scope, receive, send)
                return
            presented = _presented_key(dict(scope["headers"]))
            if presented is not None and any(
                hmac.compare_digest(presented.encode(), key) for key in accepted
            ):
                await app(scope, receive, send)
                return
            error = AuthenticationFailed(
                "Incorrect API key provided." if presented else "You didn't provide an API key."
            )
            body = msgspec.json.encode(ErrorResponse(error=error.detail()))
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        return middleware

    return factory
