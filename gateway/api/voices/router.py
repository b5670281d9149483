"""GET /v1/audio/voices: every voice a speech model can use, OpenAI names included;
POST: clone one.

A clone belongs to the key that made it (adapters.voice_owners): it is registered under
an id made from its owner and name, listed only to its owner, under its own name."""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency

from adapters.voice_owners import VoiceOwners, is_clone_id
from engines.base import Capability, EngineUnavailable, SpeechEngine
from engines.registry import ModelRegistry

from ...auth import owner_of
from ...errors import InvalidRequest, PayloadTooLarge, error_responses
from ...multipart import fold_form, upload
from ...openapi_docs import documented_operation
from ...settings import Settings


class Voice(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    object: Literal["voice"] = "voice"
    model: str
    languages: list[str]
    gender: str | None = None
    description: str = ""
    maps_to: list[str] = []


class NamedVoice(msgspec.Struct, kw_only=True):
    id: str
    name: str


class VoiceList(msgspec.Struct, kw_only=True):
    """``data`` lists every voice of every speech model; ``voices`` is the shape Open
    WebUI reads (``voices: [{id, name}]``) for its voice picker, each id once."""

    object: Literal["list"] = "list"
    data: list[Voice]
    voices: list[NamedVoice]


@get("/v1/audio/voices", summary="List voices", tags=["audio"], responses=error_responses(401, 503))
async def list_voices(
    request: Request,
    registry: NamedDependency[ModelRegistry],
    voice_owners: NamedDependency[VoiceOwners],
) -> VoiceList:
    owner = owner_of(request.scope)
    await voice_owners.refresh()
    data: list[Voice] = []
    for card in registry.cards():
        if Capability.SPEECH not in card.capabilities or card.id != card.target:
            continue
        try:
            voices = await _voices_of(registry, card.id)
        except EngineUnavailable:
            continue  # a model that cannot load here (say, its extra is not installed)
        for voice in voices:
            name = voice_owners.public_name(owner, voice.id)
            if name is not None:  # another key's clone is not shown
                voice.id = name
                data.append(voice)
    names = dict.fromkeys(v.id for v in data)  # each id once, in the order listed
    return VoiceList(data=data, voices=[NamedVoice(id=n, name=n) for n in names])


async def _voices_of(registry: ModelRegistry, model: str) -> list[Voice]:
    async with registry.speech(model) as engine:
        native = {v.id: v for v in engine.voices()}
        table = engine.voice_aliases()
    data = []
    for name, choices in table.items():
        available = [c for c in choices if c in native]
        if available:
            languages = sorted({lang for c in available for lang in native[c].languages})
            data.append(Voice(id=name, model=model, languages=languages, maps_to=available))
    data.extend(
        Voice(
            id=v.id,
            model=model,
            languages=list(v.languages),
            gender=v.gender,
            description=v.description,
        )
        for v in native.values()
    )
    return data


class CreateVoiceForm(msgspec.Struct, kw_only=True):
    """``name`` and ``audio_sample`` as OpenAI's custom voices; ``transcript`` (the exact
    words of the sample) is this gateway's extension, which cloning models need."""

    name: str
    transcript: str
    model: str = "tts-1"
    consent: str | None = None


@post(
    "/v1/audio/voices",
    status_code=201,
    summary="Create a voice from a recording and its transcript",
    tags=["audio"],
    responses=error_responses(400, 401, 404, 413),
    operation_class=documented_operation(form=CreateVoiceForm, file_field="audio_sample"),
)
async def create_voice(
    request: Request,
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
    voice_owners: NamedDependency[VoiceOwners],
) -> Voice:
    if request.content_type[0] != "multipart/form-data":
        raise InvalidRequest("Expected multipart/form-data.", code="invalid_content_type")
    items = list((await request.form()).multi_items())
    sample = upload(items, "audio_sample")
    if sample is None:
        raise InvalidRequest(
            "Missing required parameter: 'audio_sample'.",
            param="audio_sample",
            code="missing_required_parameter",
        )
    data = await sample.read()
    if len(data) > settings.server.max_upload_bytes:
        raise PayloadTooLarge("The audio sample is too large.", param="audio_sample")
    try:
        form = msgspec.convert(fold_form(items), CreateVoiceForm, strict=False)
    except msgspec.ValidationError as exc:
        from ...errors import error_from_msgspec

        raise error_from_msgspec(exc) from None
    owner = owner_of(request.scope)
    async with registry.speech(form.model) as engine:
        _check_name(form.name, engine)
        engine_id = voice_owners.clone_id(owner, form.name)
        info = await engine.register_voice(engine_id, data, form.transcript)
        await voice_owners.record(owner, form.name)
    return Voice(
        id=form.name,
        model=registry.canonical(form.model),
        languages=list(info.languages),
        gender=info.gender,
        description=info.description,
    )


def _check_name(name: str, engine: SpeechEngine) -> None:
    """A clone's name may not shadow a shared voice (a built-in speaker or an OpenAI name)
    for its owner, nor look like an engine clone id."""
    shared = {v.id.lower() for v in engine.voices() if not is_clone_id(v.id)}
    shared |= {alias.lower() for alias in engine.context.voices}
    if not name.strip() or is_clone_id(name):
        raise InvalidRequest(f"Invalid voice name {name!r}.", param="name")
    if name.lower() in shared:
        raise InvalidRequest(f"Voice {name!r} is a built-in voice.", param="name")
