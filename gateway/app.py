"""The Litestar application factory.

Cross-cutting concerns are plugged in here, once: request ids and access logs, API keys,
Prometheus metrics, CORS, error envelopes. Handlers receive the model registry and the
settings by dependency injection and stay thin.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.middleware._internal.cors import CORSMiddleware  # its public name is deprecated
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.types import Receive, Scope, Send

from adapters.state import create_backend
from adapters.voice_owners import VoiceOwners
from engines.registry import ModelRegistry, registry_from_settings

from . import __version__
from .allow import options_allow_middleware
from .api.chat.router import create_chat_completion
from .api.chat.serving import ChatService
from .api.health.router import health, ready
from .api.models.router import list_audio_models, list_models, retrieve_model
from .api.realtime.calls import create_call, hangup_call
from .api.realtime.client_secrets import create_client_secret
from .api.realtime.router import realtime
from .api.responses.router import (
    create_response,
    delete_response,
    list_input_items,
    retrieve_response,
)
from .api.responses.serving import ResponsesService
from .api.speech.router import create_speech
from .api.transcription.router import create_transcription, create_translation
from .api.voices.router import create_voice, list_voices
from .auth import api_key_middleware_factory
from .errors import handle_exception
from .json_body import GatewayRequest
from .logging import configure_logging, request_id_middleware
from .metrics import MetricsController, app_metrics, prometheus_config
from .playground import playground_router
from .policy import Policies
from .ratelimit import ratelimit_middleware_factory
from .settings import Settings, load_settings
from .streaming import disconnect_middleware

ROUTES = [
    health,
    ready,
    list_models,
    list_audio_models,
    retrieve_model,
    list_voices,
    create_voice,
    create_speech,
    create_transcription,
    create_translation,
    create_chat_completion,
    create_response,
    retrieve_response,
    delete_response,
    list_input_items,
    realtime,
    create_client_secret,
    create_call,
    hangup_call,
]


class GatewayApp(Litestar):
    """Litestar applies app middleware per route, so 404s and 405s would skip it. The
    request id and API-key checks wrap the whole ASGI handler instead, and so see every
    request, routed or not."""

    def __init__(self, *args, outer_middleware=(), **kwargs) -> None:
        self.outer_middleware = tuple(outer_middleware)
        super().__init__(*args, **kwargs)

    def _create_asgi_handler(self):
        handler = super()._create_asgi_handler()
        if isinstance(handler, CORSMiddleware):
            handler = _cors_only_with_origin(handler)
        for middleware in reversed(self.outer_middleware):
            handler = middleware(handler)
        return handler


def _cors_only_with_origin(cors: CORSMiddleware):
    """Litestar's CORS middleware, entered only by requests that carry ``Origin``.

    Without one it passes the request on unchanged, but only after building a ``Headers``
    of every request header, most of what CORS cost the (origin-less) API calls of SDKs
    and servers. ASGI header names are lower case, so one scan of them decides.
    """
    inner = cors.app

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, _ in scope["headers"]:
                if name == b"origin":
                    break
            else:
                await inner(scope, receive, send)
                return
        await cors(scope, receive, send)

    return handler


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="step-audio-gateway",
        version=__version__,
        description="OpenAI-compatible speech gateway for the Step-Audio models.",
        path="/docs",
        render_plugins=[SwaggerRenderPlugin()],
    )


def create_app(
    settings: Settings | None = None,
    registry: ModelRegistry | None = None,
    *,
    preload: bool = True,
    configure_logs: bool = True,
    settle_heap: bool = False,
) -> Litestar:
    """``settle_heap``: the app is its process's only tenant (``serve``), so the models
    it preloads may be frozen out of the garbage collector's full passes (engines.heap)."""
    settings = settings or load_settings()
    registry = registry or registry_from_settings(settings)
    registry.settle_heap = settle_heap
    # What replicas share (limits, audio ids, transcripts, clones): memory or Redis.
    state_backend = create_backend(
        settings.state.backend,
        redis_url=settings.state.redis_url,
        prefix=settings.state.redis_prefix,
        timeout_seconds=settings.state.redis_timeout_seconds,
    )
    # What each key may do and has spent: one policy object per request or session.
    policies = Policies(settings.limits.per_key, state_backend, settings.state)
    # Who cloned which voice (POST /v1/audio/voices), shared like the rest of the state.
    voice_owners = VoiceOwners(state_backend.voices)
    chat_service = ChatService(
        registry,
        settings.chat,
        state_backend.audio_store,
        voice_owners=voice_owners,
        transcripts=state_backend.transcripts,
    )
    # POST /v1/responses runs through the chat service; its stored responses are shared.
    responses_service = ResponsesService(
        chat_service, state_backend.responses, settings.chat.response_ttl_seconds
    )
    if configure_logs:
        configure_logging(settings.server.log_level, settings.server.log_format)
    metrics = prometheus_config()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            if preload:
                tasks.start_soon(registry.preload, settings.engines.preload)
            else:
                registry.ready = True
            tasks.start_soon(registry.reap_forever)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
        await registry.close()
        await state_backend.close()

    return GatewayApp(
        outer_middleware=(
            request_id_middleware,
            api_key_middleware_factory(settings.server.api_keys, state_backend.client_secrets),
            ratelimit_middleware_factory(policies),
            options_allow_middleware,
            disconnect_middleware,
        ),
        route_handlers=[*ROUTES, MetricsController, playground_router()],
        dependencies={
            "registry": Provide(lambda: registry, use_cache=True, sync_to_thread=False),
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
            "chat_service": Provide(lambda: chat_service, use_cache=True, sync_to_thread=False),
            "responses_service": Provide(
                lambda: responses_service, use_cache=True, sync_to_thread=False
            ),
            "voice_owners": Provide(lambda: voice_owners, use_cache=True, sync_to_thread=False),
        },
        middleware=[metrics.middleware],
        exception_handlers={Exception: handle_exception},
        request_class=GatewayRequest,  # JSON bodies decoded strictly, within budgets
        cors_config=CORSConfig(
            allow_origins=settings.server.cors_allow_origins,
            allow_headers=["*"],
            expose_headers=["x-request-id"],
        )
        if settings.server.cors_allow_origins
        else None,
        request_max_body_size=settings.server.max_request_bytes,
        openapi_config=openapi_config(),
        lifespan=[lifespan],
        state={
            "registry": registry,
            "settings": settings,
            "metrics": app_metrics(registry),
            "voice_owners": voice_owners,
            "state_backend": state_backend,
            "policies": policies,
        },
        debug=False,
    )
