"""GET /v1/audio/voices: every voice a speech model can use, OpenAI names included."""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import get
from litestar.di import NamedDependency

from engines.base import Capability, SpeechEngine
from engines.registry import ModelRegistry

from ...errors import error_responses


class Voice(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    object: Literal["voice"] = "voice"
    model: str
    languages: list[str]
    gender: str | None = None
    description: str = ""
    maps_to: list[str] = []


class VoiceList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Voice]


@get("/v1/audio/voices", summary="List voices", tags=["audio"], responses=error_responses(401, 503))
async def list_voices(registry: NamedDependency[ModelRegistry]) -> VoiceList:
    data: list[Voice] = []
    for card in registry.cards():
        if Capability.SPEECH not in card.capabilities or card.id != card.target:
            continue
        async with registry.use(card.id, Capability.SPEECH) as engine:
            assert isinstance(engine, SpeechEngine)
            native = {v.id: v for v in engine.voices()}
            table = engine.context.voices if hasattr(engine, "route") else {}
            for name, choices in table.items():
                available = [c for c in choices if c in native]
                if available:
                    languages = sorted({lang for c in available for lang in native[c].languages})
                    data.append(
                        Voice(id=name, model=card.id, languages=languages, maps_to=available)
                    )
            data.extend(
                Voice(
                    id=v.id,
                    model=card.id,
                    languages=list(v.languages),
                    gender=v.gender,
                    description=v.description,
                )
                for v in native.values()
            )
    return VoiceList(data=data)
