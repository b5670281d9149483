"""``POST /v1/realtime/client_secrets``: an ephemeral key (``ek_...``) for a browser.

The app's server mints it with its real key and hands only the secret to the page. The
secret opens realtime sessions (the WebSocket and WebRTC calls) until it expires, as the
minting key (gateway.auth resolves it to that key's owner, so the key's policy and
ownership apply unchanged), with the session configuration it was minted with as the
session's starting point (:func:`minted_config`). The configuration is checked here
exactly as a ``session.update`` is (by a session that never opens), so a secret that
would be refused later is refused now. Secrets live in the state backend: any replica
accepts them.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Mapping

import msgspec
from litestar import Request, post
from litestar.params import JSONBody
from msgspec import Meta

from adapters.realtime.secrets import ClientSecret, new_secret
from engines.base import Capability, EngineError

from ...auth import client_secret_of, owner_of
from ...errors import error_responses
from ...policy import Policy, policy_of
from . import protocol as p
from .serving import RealtimeSession

DEFAULT_MODEL = "gpt-realtime"


class ExpiresAfter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    anchor: Literal["created_at"] = "created_at"
    seconds: Annotated[int, Meta(ge=10, le=7200)] = 600


class ClientSecretRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    expires_after: ExpiresAfter | None = None
    session: p.SessionConfig | None = None


class ClientSecretResponse(msgspec.Struct, kw_only=True):
    value: str
    expires_at: int
    session: dict[str, Any]


def minted_config(scope: Mapping[str, Any]) -> p.SessionConfig | None:
    """The session configuration of the client secret this request came with, if any."""
    secret = client_secret_of(scope)
    if secret is None:
        return None
    return msgspec.json.decode(secret.session, type=p.SessionConfig)


async def start_minted(session: RealtimeSession, scope: Mapping[str, Any]) -> None:
    """Give a session opened with a client secret the secret's configuration (the model
    the door chose, from its query, stays). A config that no longer passes (a cloned
    voice deleted since) is said in an ``error`` event; the session opens as it is."""
    minted = minted_config(scope)
    if minted is None:
        return
    minted.model = None
    try:
        await session.configure(minted)
    except EngineError as exc:
        await session.error(exc)


async def checked_session(
    request: Request, config: p.SessionConfig, policy: Policy
) -> RealtimeSession:
    """A session (never opened) holding ``config``, checked as a session.update is."""
    state = request.app.state
    transcription = config.type == "transcription"
    model = None if transcription else (config.model or DEFAULT_MODEL)
    if model is not None:
        state["registry"].check(model, Capability.CHAT)
        policy.check_model(model)
    session = RealtimeSession(
        state["registry"], state["settings"], model, _discard, policy,
        transcription=transcription,
    )
    await session.configure(config)
    return session


async def _discard(event: Any) -> None:
    return None


@post(
    "/v1/realtime/client_secrets",
    status_code=200,
    summary="Create a realtime client secret",
    tags=["realtime"],
    responses=error_responses(400, 401, 404, 429, 503),
)
async def create_client_secret(
    request: Request, data: JSONBody[ClientSecretRequest]
) -> ClientSecretResponse:
    """An ``ek_`` secret for a browser: realtime only, until it expires, as this key."""
    # (An ``ek_`` never gets here: gateway.auth refuses it on every route but the session
    # doors, so a leaked secret cannot outlive itself by minting another.)
    config = data.session or p.SessionConfig(type="realtime")
    config.check_input(request.app.state["settings"].limits)
    session = await checked_session(request, config, policy_of(request.scope))
    seconds = (data.expires_after or ExpiresAfter()).seconds
    expires_at = int(time.time()) + seconds
    value = new_secret()
    record = ClientSecret(owner_of(request.scope), msgspec.json.encode(config), expires_at)
    await request.app.state["state_backend"].client_secrets.put(value, record)
    return ClientSecretResponse(value=value, expires_at=expires_at, session=session.session_wire())
