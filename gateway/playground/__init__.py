"""The playground at ``/``: a page that drives the public API from the browser.

Plain HTML, CSS and JavaScript shipped in the package (no build step, nothing fetched from a
CDN), so it works on an offline host. It uses only what any client may use: ``/v1`` over
fetch (with the key typed into the page, when the gateway has keys) and, to talk, a WebRTC
call (``POST /v1/realtime/calls``) opened with an ephemeral ``ek_`` secret, never a real key.

``POST /playground/session`` mints that secret for the page (the shape of
``POST /v1/realtime/client_secrets``'s answer). Who gets one ([playground] settings):

* only clients in ``playground.session_networks`` (loopback by default): the page on the
  gateway's own machine. Behind a reverse proxy on the same host every client looks
  local: do not route ``/playground/session`` through it (or set the networks to ``[]``);
* only same-origin requests: a request whose ``Origin`` is another site is refused, so a
  page elsewhere cannot make a visitor's browser fetch a secret from a local gateway;
* with ``server.api_keys`` set, only when ``playground.session_key`` names one of them:
  the secret is that key's (its limits, model list and ownership). Otherwise the endpoint
  answers 403 and the page mints a secret itself with the key typed into it
  (``POST /v1/realtime/client_secrets``), so the key typed there never goes to a call.
  Without keys the secret is the gateway's one anonymous owner's.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
from litestar import Request, Router, get, post
from litestar.exceptions import HTTPException
from litestar.response import File
from litestar.static_files import create_static_files_router

from adapters.realtime.secrets import ClientSecret, new_secret

from ..api.realtime import protocol as p
from ..api.realtime.client_secrets import ClientSecretResponse, checked_session
from ..auth import ANONYMOUS, _digest_of, owner_id

HERE = Path(__file__).parent / "static"
# Where each playground call starts: the page's own session.update says the rest.
SESSION = {"type": "realtime", "model": "gpt-realtime",
           "audio": {"input": {"transcription": {"model": "whisper-1"}}}}


@get("/", include_in_schema=False, sync_to_thread=False)
def index() -> File:
    return File(HERE / "index.html", content_disposition_type="inline", media_type="text/html")


class PlaygroundRefused(HTTPException):
    status_code = 403


def _refuse(message: str) -> None:
    raise PlaygroundRefused(detail=message)


@post("/playground/session", include_in_schema=False, status_code=200)
async def playground_session(request: Request) -> ClientSecretResponse:
    """An ``ek_`` secret for the playground page (see the module notes for who gets one)."""
    settings = request.app.state["settings"]
    playground = settings.playground
    client = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        address = None
    networks = [ipaddress.ip_network(n, strict=False) for n in playground.session_networks]
    if address is None or not any(address in network for network in networks):
        _refuse("The playground hands out secrets only to playground.session_networks.")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        _refuse("The playground hands out secrets only to its own page.")
    if settings.server.api_keys:
        if not playground.session_key:
            _refuse("This gateway has keys and no playground.session_key: enter a key.")
        owner = owner_id(_digest_of(playground.session_key))
    else:
        owner = ANONYMOUS
    config = msgspec.convert(SESSION, p.SessionConfig)
    session = await checked_session(request, config, request.app.state["policies"].of(owner))
    expires_at = int(time.time()) + playground.session_seconds
    value = new_secret()
    record = ClientSecret(owner, msgspec.json.encode(config), expires_at)
    await request.app.state["state_backend"].client_secrets.put(value, record)
    return ClientSecretResponse(value=value, expires_at=expires_at, session=session.session_wire())


def playground_router() -> Router:
    assets = create_static_files_router(
        path="/playground", directories=[HERE], include_in_schema=False, name="playground"
    )
    return Router(
        path="/", route_handlers=[index, assets, playground_session], include_in_schema=False
    )
