"""GET /v1/models and /v1/models/{id} (ids may contain a slash, raw or percent-encoded);
GET /v1/audio/models, the speech and transcription models alone."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath

from engines.base import Capability
from engines.registry import ModelRegistry

from ...errors import error_responses
from .protocol import AudioModelList, Model, ModelList, NamedModel


@get("/v1/models", summary="List models", tags=["models"], responses=error_responses(401, 404))
async def list_models(registry: NamedDependency[ModelRegistry]) -> ModelList:
    return ModelList(
        data=[Model(id=c.id, created=c.created, owned_by=c.owned_by) for c in registry.cards()]
    )


@get(
    "/v1/models/{model_id:path}",
    summary="Retrieve a model",
    tags=["models"],
    responses=error_responses(401, 404),
)
async def retrieve_model(
    model_id: FromPath[str], registry: NamedDependency[ModelRegistry]
) -> Model:
    card = registry.card(model_id.lstrip("/"))
    return Model(id=card.id, created=card.created, owned_by=card.owned_by)


AUDIO = frozenset({Capability.SPEECH, Capability.TRANSCRIPTION})


@get(
    "/v1/audio/models",
    summary="List speech and transcription models",
    tags=["models"],
    responses=error_responses(401),
)
async def list_audio_models(registry: NamedDependency[ModelRegistry]) -> AudioModelList:
    cards = [c for c in registry.cards() if AUDIO & c.capabilities]
    return AudioModelList(
        data=[Model(id=c.id, created=c.created, owned_by=c.owned_by) for c in cards],
        models=[NamedModel(id=c.id, name=c.id) for c in cards],
    )
