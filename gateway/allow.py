"""``Allow`` on OPTIONS answers lists every method of the path.

Litestar builds a path's automatic OPTIONS handler when the path's first handler is
registered and never updates it, so a path served by two handlers (GET and POST
/v1/audio/voices) answered ``Allow: GET, OPTIONS``. Its 405 answers are right: they read
the routing trie. This asks the same router, method by method, which ones it serves.
"""

from __future__ import annotations

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from litestar.utils import normalize_path

METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(scope: Scope) -> list[str]:
    router = scope["litestar_app"].asgi_router
    path = scope["path"]
    if root_path := scope.get("root_path", ""):
        path = path.split(root_path, maxsplit=1)[-1]
    path = normalize_path(path)
    allowed = []
    for method in METHODS:
        try:
            router.handle_routing(path=path, method=method)
        except Exception:
            continue
        allowed.append(method)
    return allowed


def options_allow_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "OPTIONS":
            await app(scope, receive, send)
            return

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 300:
                allowed = allowed_methods(scope)
                if allowed:
                    headers = [
                        (k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"
                    ]
                    headers.append((b"allow", ", ".join(allowed).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_allow)

    return middleware
