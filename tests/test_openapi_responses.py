"""The published OpenAPI document describes the bodies the gateway really sends.

A client generator reads openapi/openapi.json: each endpoint's 200 must list the media
type the server answers with, and the schema under it must accept the real body (and, for
streams, every event). Real requests against the live server are checked here.
"""

from __future__ import annotations

import io
import json

import jsonschema
import pytest

from gateway.openapi_export import EXPORT_PATH

DOCUMENT = json.loads(EXPORT_PATH.read_text())


def documented(path: str, media_type: str) -> jsonschema.Draft202012Validator:
    responses = DOCUMENT["paths"][path]["post"]["responses"]
    content = responses["200"]["content"]
    assert media_type in content, f"{path} does not document {media_type}: {list(content)}"
    schema = content[media_type]["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def media_type(response) -> str:
    return response.headers["content-type"].split(";")[0].strip()


def check_events(path: str, response) -> list[dict]:
    """Validate every event of a stream as the document models it: an event object whose
    ``data`` string is JSON described by ``contentSchema`` (or the ``[DONE]`` sentinel).
    Returns the decoded payloads."""
    content = DOCUMENT["paths"][path]["post"]["responses"]["200"]["content"]
    assert media_type(response) in content
    event_schema = content[media_type(response)]["schema"]
    events = jsonschema.Draft202012Validator(event_schema)
    data_schema = event_schema["properties"]["data"]
    json_branch = next(b for b in data_schema.get("anyOf", [data_schema]) if "contentSchema" in b)
    payloads = jsonschema.Draft202012Validator(json_branch["contentSchema"])
    raw = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
    decoded = []
    for item in raw:
        events.validate({"data": item})
        if item == "[DONE]":
            assert "anyOf" in data_schema, f"{path} does not document its [DONE]"
            continue
        payloads.validate(json.loads(item))
        decoded.append(json.loads(item))
    return decoded


def test_chat_completion_and_its_chunks_match_the_document(http):
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 8}
    whole = http.post("/v1/chat/completions", json=ask)
    assert whole.status_code == 200
    documented("/v1/chat/completions", media_type(whole)).validate(whole.json())

    streamed = http.post("/v1/chat/completions", json={**ask, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert len(check_events("/v1/chat/completions", streamed)) >= 3


def test_responses_bodies_and_events_match_the_document(http):
    tools = [{"type": "function", "name": "get_weather", "strict": True,
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    ask = {"model": "gpt-4o-mini", "input": "What's the weather in Paris?", "max_output_tokens": 16}
    for extra in ({}, {"tools": tools, "tool_choice": "required"}):
        whole = http.post("/v1/responses", json={**ask, **extra})
        assert whole.status_code == 200, whole.text
        documented("/v1/responses", media_type(whole)).validate(whole.json())
        read = http.get(f"/v1/responses/{whole.json()['id']}")
        assert read.json() == whole.json()
        streamed = http.post("/v1/responses", json={**ask, **extra, "stream": True})
        kinds = [e["type"] for e in check_events("/v1/responses", streamed)]
        assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")


def test_spoken_chat_chunks_match_the_document(http):
    streamed = http.post("/v1/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 12, "stream": True,
        "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}})
    events = check_events("/v1/chat/completions", streamed)
    assert any(e["choices"] and "audio" in e["choices"][0]["delta"] for e in events)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_speech_format_is_a_documented_media_type(http, fmt):
    response = http.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": fmt})
    assert response.status_code == 200
    documented("/v1/audio/speech", media_type(response))


def test_speech_events_match_the_document(http):
    response = http.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hello there.", "stream_format": "sse"})
    events = check_events("/v1/audio/speech", response)
    assert [e["type"] for e in events][-1] == "speech.audio.done"


@pytest.mark.parametrize("fmt", ["json", "verbose_json", "text", "srt", "vtt"])
def test_transcription_formats_match_the_document(http, speech_wav, fmt):
    response = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", io.BytesIO(speech_wav), "audio/wav")},
                         data={"model": "whisper-1", "response_format": fmt, "timestamp_granularities[]": "word"})
    assert response.status_code == 200
    validator = documented("/v1/audio/transcriptions", media_type(response))
    validator.validate(response.json() if fmt.endswith("json") else response.text)
    translation = http.post("/v1/audio/translations", files={"file": ("a.wav", io.BytesIO(speech_wav), "audio/wav")},
                            data={"model": "whisper-1", "response_format": fmt})
    validator = documented("/v1/audio/translations", media_type(translation))
    validator.validate(translation.json() if fmt.endswith("json") else translation.text)


def test_transcription_events_match_the_document(http, speech_wav):
    response = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", io.BytesIO(speech_wav), "audio/wav")},
                         data={"model": "whisper-1", "stream": "true", "include[]": "logprobs"})
    events = check_events("/v1/audio/transcriptions", response)
    assert events[-1]["type"] == "transcript.text.done"


def test_a_body_of_the_wrong_shape_is_refused_by_the_document():
    """The schemas are strict enough to catch a wrong body, not merely present."""
    chat = documented("/v1/chat/completions", "application/json")
    with pytest.raises(jsonschema.ValidationError):
        chat.validate({"id": "x", "object": "chat.completion", "choices": "none"})
    speech = DOCUMENT["paths"]["/v1/audio/speech"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    payload = jsonschema.Draft202012Validator(speech["properties"]["data"]["contentSchema"])
    with pytest.raises(jsonschema.ValidationError):
        payload.validate({"type": "speech.audio.delta"})  # no audio
    payload.validate({"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
    assert "anyOf" not in speech["properties"]["data"]  # speech streams send no [DONE]
