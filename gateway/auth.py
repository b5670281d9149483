"""API keys, decided on the route the router resolves, and the owner every key stands for.

The check used to look at the raw path prefix, while the router strips and folds
slashes first: ``//v1/models`` matched no prefix and was still served. So the check now
asks the application's own router which route a request reaches (the same cached call,
on the same normalised path) and lets through without a key only a resolved route
outside ``/v1`` (health, readiness, metrics, docs). Everything else needs a key: every
``/v1`` route, and any path that resolves to nothing, so a 404 or 405 says nothing to a
caller without a key (OpenAI answers those with 401 too).

Keys may be given as ``sha256:<hex>`` so that configuration files hold no secret. Each
presented key is hashed and compared with every configured digest in constant time.

A realtime client secret (``ek_...``, minted by ``POST /v1/realtime/client_secrets``)
stands for the key that minted it: the request gets that key's owner, so every policy
(limits, model allow-list, ownership) is the minting key's, found the one way every door
finds it. It opens realtime sessions only (the WebSocket and WebRTC calls): on any other
route, or once expired, it is refused as an unknown key. The minted session configuration
rides along in ``scope["state"]["client_secret"]`` for the realtime door.

The owner of a request is a short hash of its key (never the key), kept in
``scope["state"]["owner"]``; stores file what a request makes under it, so another key
cannot read it. Without keys configured everything belongs to one anonymous owner.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Iterable, Mapping

import msgspec
from litestar.exceptions import MethodNotAllowedException, NotFoundException
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.utils import normalize_path

from adapters.errors import EngineError
from adapters.realtime.secrets import PREFIX as SECRET_PREFIX
from adapters.realtime.secrets import ClientSecret, ClientSecretStore

from .errors import AuthenticationFailed, ErrorResponse, error_detail

PROTECTED_PREFIX = "/v1"
ANONYMOUS = "anonymous"
OWNER_STATE = "owner"
SECRET_STATE = "client_secret"
#: The routes a client secret opens (the session doors); hangup is the minting server's.
SECRET_ROUTES = frozenset({"/v1/realtime", "/v1/realtime/calls"})
HASH_PREFIX = "sha256:"
# Browsers cannot set headers on a WebSocket; OpenAI's realtime API takes the key as a
# subprotocol named so.
WS_KEY_PROTOCOL = "openai-insecure-api-key."
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


class KeyRing:
    """The accepted keys, held only as SHA-256 digests."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.digests = [_digest_of(key) for key in keys if key]

    def __bool__(self) -> bool:
        return bool(self.digests)

    def owner(self, presented: str) -> str | None:
        """The owner id of ``presented`` when it is an accepted key, else None.

        Every digest is compared (no early exit), so the time taken does not say how
        many keys there are before the matching one."""
        candidate = hashlib.sha256(presented.encode()).digest()
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(candidate, digest)
        return owner_id(candidate) if matched else None


def _digest_of(key: str) -> bytes:
    if key.lower().startswith(HASH_PREFIX):
        hexdigest = key[len(HASH_PREFIX) :].strip()
        if not _HEX_DIGEST.fullmatch(hexdigest):
            raise ValueError(
                "server.api_keys: a 'sha256:' key must be followed by 64 hex digits "
                "(e.g. the output of: printf %s 'sk-...' | sha256sum)"
            )
        return bytes.fromhex(hexdigest)
    return hashlib.sha256(key.encode()).digest()


def owner_id(key_digest: bytes) -> str:
    """Stable across restarts and across plain/hashed spellings of the same key; it is
    not the configured digest either, so logs and stores never show what the config holds."""
    return "key_" + hashlib.sha256(b"step-audio-gateway owner\0" + key_digest).hexdigest()[:16]


def owner_of(scope: Mapping[str, Any]) -> str:
    """The owner the key check filed this request under (a Litestar ``Request`` has the
    scope as ``request.scope``)."""
    return (scope.get("state") or {}).get(OWNER_STATE, ANONYMOUS)


def client_secret_of(scope: Mapping[str, Any]) -> ClientSecret | None:
    """The client secret this request came with, if it came with one."""
    return (scope.get("state") or {}).get(SECRET_STATE)


def _presented_key(scope: Scope) -> str | None:
    headers = dict(scope["headers"])
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    key = headers.get(b"api-key")
    if key:
        return key.decode("latin-1").strip()
    if scope["type"] == "websocket":
        offered = headers.get(b"sec-websocket-protocol", b"").decode("latin-1")
        for protocol in offered.split(","):
            protocol = protocol.strip()
            if protocol.startswith(WS_KEY_PROTOCOL):
                return protocol[len(WS_KEY_PROTOCOL) :]
    return None


def resolved_template(scope: Scope) -> str | None:
    """The path template of the route the application's router sends ``scope`` to, or
    None when it sends it nowhere (a 404). A 405 still names its path."""
    app = scope.get("litestar_app")
    path = scope["path"]
    if root_path := scope.get("root_path", ""):
        path = path.split(root_path, maxsplit=1)[-1]
    path = normalize_path(path)
    method = scope.get("method") if scope["type"] == "http" else None
    try:
        return app.asgi_router.handle_routing(path=path, method=method)[4]
    except MethodNotAllowedException:
        return path
    except NotFoundException:
        return None
    except Exception:  # a path the router cannot even parse: treat as unknown
        return None


def is_public(template: str | None) -> bool:
    if template is None:
        return False
    return not (template == PROTECTED_PREFIX or template.startswith(PROTECTED_PREFIX + "/"))


def api_key_middleware_factory(
    keys: Iterable[str], secrets: ClientSecretStore | None = None
):
    ring = KeyRing(keys)

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] not in ("http", "websocket"):
                await app(scope, receive, send)
                return
            state = scope.setdefault("state", {})
            state.pop(SECRET_STATE, None)
            presented = _presented_key(scope)
            if presented is not None and presented.startswith(SECRET_PREFIX):
                await _with_secret(app, secrets, presented, scope, receive, send)
                return
            if not ring:
                state[OWNER_STATE] = ANONYMOUS
                await app(scope, receive, send)
                return
            owner = ring.owner(presented) if presented is not None else None
            if owner is not None:
                state[OWNER_STATE] = owner
                await app(scope, receive, send)
                return
            state.pop(OWNER_STATE, None)
            template = resolved_template(scope)
            if is_public(template) or (
                # CORS preflights carry no credentials; only for paths that exist.
                scope.get("method") == "OPTIONS" and template is not None
            ):
                await app(scope, receive, send)
                return
            await _refuse(scope, send, presented is not None)

        return middleware

    return factory


async def _with_secret(
    app: ASGIApp, secrets: ClientSecretStore | None, presented: str,
    scope: Scope, receive: Receive, send: Send,
) -> None:
    """A client secret: the minting key's owner on a session door, refused elsewhere
    (checked before the store is asked, so an ``ek_`` cannot probe it from other routes)."""
    if resolved_template(scope) not in SECRET_ROUTES or secrets is None:
        await _refuse(scope, send, True)
        return
    try:
        record = await secrets.get(presented)
    except EngineError as exc:  # the state backend is down: try again later, not "wrong key"
        await _refuse(scope, send, True, exc)
        return
    if record is None:  # unknown or expired
        await _refuse(scope, send, True)
        return
    scope["state"][OWNER_STATE] = record.owner
    scope["state"][SECRET_STATE] = record
    await app(scope, receive, send)


async def _refuse(
    scope: Scope, send: Send, presented: bool, error: EngineError | None = None
) -> None:
    if scope["type"] == "websocket":
        code, reason = (1008, "invalid api key") if error is None else (1013, "try again later")
        await send({"type": "websocket.close", "code": code, "reason": reason})
        return
    error = error or AuthenticationFailed(
        "Incorrect API key provided." if presented else "You didn't provide an API key."
    )
    body = msgspec.json.encode(ErrorResponse(error=error_detail(error)))
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="step-audio-gateway"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
