"""Wire structs of /v1/models (OpenAI ``Model`` and ``ListModelsResponse``)."""

from __future__ import annotations

from typing import Literal

import msgspec


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]


class NamedModel(msgspec.Struct, kw_only=True):
    id: str
    name: str


class AudioModelList(msgspec.Struct, kw_only=True):
    """The speech and transcription models. ``data`` is OpenAI's list shape; ``models``
    is the shape Open WebUI reads (``GET {base}/audio/models``, ``models: [{id, name}]``)
    to fill its TTS model picker."""

    object: Literal["list"] = "list"
    data: list[Model]
    models: list[NamedModel]
