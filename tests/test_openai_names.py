"""Today's OpenAI model and voice names reach the gateway's models unchanged, and the
catalog shapes Open WebUI reads (``/v1/audio/voices`` as ``voices: [{id, name}]``,
``/v1/audio/models``) fill its pickers."""

from __future__ import annotations

import openai
import pytest

from adapters import openai_names
from adapters.voices import OPENAI_VOICES
from engines.base import Capability
from engines.registry import registry_from_settings
from gateway.settings import StepAudioSettings, load_settings

SERVED_AS = [
    (openai_names.CHAT, Capability.CHAT),
    (openai_names.AUDIO_CHAT, Capability.CHAT),
    (openai_names.REALTIME, Capability.CHAT),
    (openai_names.SPEECH, Capability.SPEECH),
    (openai_names.TRANSCRIPTION, Capability.TRANSCRIPTION),
    (openai_names.DIARIZATION, Capability.TRANSCRIPTION),
]


@pytest.mark.parametrize(("names", "capability"), SERVED_AS)
def test_every_openai_name_is_served_by_the_default_configuration(names, capability):
    registry = registry_from_settings(load_settings())
    for name in names:
        registry.check(name, capability)  # raises ModelNotFound / WrongModelKind


def test_the_step_audio_deployment_claims_the_same_names():
    step_audio = StepAudioSettings()
    assert set(step_audio.chat_aliases) == set(openai_names.ALL_CHAT)
    assert set(step_audio.speech_aliases) == set(openai_names.SPEECH)


def test_a_framework_default_model_is_listed_and_retrievable(openai_client):
    for name in ("gpt-4.1", "gpt-5.6-luna", "gpt-realtime-2.1", "gpt-4o-mini-tts", "gpt-transcribe"):
        assert openai_client.models.retrieve(name).id == name


def test_an_unconfigured_name_is_404_naming_the_configured_ones(openai_client):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.audio.speech.create(model="gpt-9-tts", voice="alloy", input="hi")
    assert caught.value.code == "model_not_found"
    message = caught.value.body["message"]
    assert "gpt-9-tts" in message
    assert "tts-1" in message and "whisper-1" in message and "gpt-realtime-2.1" in message


def test_voices_list_carries_open_webuis_shape_with_every_openai_voice(http):
    body = http.get("/v1/audio/voices").json()
    voices = body["voices"]
    ids = [v["id"] for v in voices]
    assert len(ids) == len(set(ids)), "each voice once"
    assert set(OPENAI_VOICES) <= set(ids)
    assert all(v["name"] for v in voices)
    assert {v["id"] for v in body["data"]} == set(ids)  # the same voices in both shapes


def test_audio_models_lists_speech_and_transcription_models_only(http):
    response = http.get("/v1/audio/models")
    assert response.status_code == 200
    body = response.json()
    ids = {m["id"] for m in body["data"]}
    assert {*openai_names.SPEECH, *openai_names.TRANSCRIPTION} <= ids
    assert not ids & set(openai_names.ALL_CHAT)
    assert [m["id"] for m in body["models"]] == [m["id"] for m in body["data"]]
    assert all(m["object"] == "model" and m["owned_by"] for m in body["data"])
