"""Every bad input answers with the OpenAI error envelope and the status the SDKs expect."""

from __future__ import annotations

import io
import re

import numpy as np
import openai
import pytest

from adapters.audio.encode import encode_all

SPEECH = {"model": "tts-1", "voice": "alloy", "input": "Hello."}


def assert_envelope(response, status: int, param=..., code=...):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-request-id"]
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    expected_type = {429: "requests"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
    assert error["type"] == expected_type
    if param is not ...:
        assert error["param"] == param
    if code is not ...:
        assert error["code"] == code
    return error


# ------------------------------------------------------------------ HTTP-level


def test_unknown_url_is_404(http):
    assert_envelope(http.get("/v1/nope"), 404, code="unknown_url")


def test_wrong_method_is_405_and_names_the_allowed_ones(http):
    response = http.get("/v1/audio/speech")
    assert_envelope(response, 405)
    assert response.headers["allow"].split(", ")[0] == "POST"
    assert "GET" in http.request("TRACE", "/v1/models").headers["allow"]


@pytest.mark.parametrize("body", [b"{not json", b'{"model":', b'{"model":"tts-1","voice":"alloy","input":"hi"} trailing'])
def test_malformed_json_is_400_saying_so(http, body):
    response = http.post("/v1/audio/speech", content=body, headers={"content-type": "application/json"})
    error = assert_envelope(response, 400, code="invalid_json")
    assert "not valid JSON" in error["message"] or "JSON body" in error["message"]
    assert "Input data" not in error["message"]


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/audio/speech", {**SPEECH, "speed": "2"}, "speed"),
        ("/v1/audio/speech", {**SPEECH, "input": 5}, "input"),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}, "max_tokens"),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": "0.5"}, "temperature"),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": "true"}, "stream"),
    ],
)
def test_json_bodies_are_typed_strictly(http, path, body, param):
    """JSON has numbers and booleans: a string in their place is the client's mistake
    (multipart fields, always strings, are still converted: see test_multipart_fields_still_convert)."""
    error = assert_envelope(http.post(path, json=body), 400, param=param, code="invalid_value")
    assert "got a string" in error["message"] or "got an integer" in error["message"]


def test_multipart_fields_still_convert(http):
    wav = encode_all(np.zeros(1600, np.float32), 16000, "wav")
    response = transcribe(http, wav, temperature="0.2", response_format="verbose_json")
    assert response.status_code == 200, response.text


_PYTHON_WORDS = re.compile(r"\b(str|int|float|bool|NoneType|dict|list|msgspec|Struct)\b|`")


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/audio/speech", {**SPEECH, "input": 5}),
        ("/v1/audio/speech", {**SPEECH, "voice": 7}),
        ("/v1/audio/speech", {**SPEECH, "speed": 9}),
        ("/v1/audio/speech", {**SPEECH, "input": "x" * 4097}),
        ("/v1/audio/speech", {**SPEECH, "response_format": "ogg"}),
        ("/v1/audio/speech", {"voice": "alloy", "input": "hi"}),
        ("/v1/audio/speech", [1, 2]),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": "hi"}),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "bot", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user"}]}),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [], "stop": ["a"] * 5}),
    ],
)
def test_error_messages_are_plain_words(http, path, body):
    error = assert_envelope(http.post(path, json=body), 400)
    assert not _PYTHON_WORDS.search(error["message"]), error["message"]


@pytest.mark.parametrize("text", ["\u200b\u200b", "\u200b \ufeff\u2060", "\x00\x01", " \u200d\n"])
def test_input_with_nothing_to_say_is_400_like_whitespace(http, text):
    """Zero-width and control characters are not speech: such input is refused as
    whitespace-only input is, instead of answering 200 with empty audio."""
    assert_envelope(http.post("/v1/audio/speech", json={**SPEECH, "input": text}), 400, param="input")


def test_json_array_body_is_400(http):
    assert_envelope(http.post("/v1/audio/speech", json=[1, 2]), 400)


def test_multipart_sent_to_a_json_endpoint_is_400(http):
    assert_envelope(http.post("/v1/audio/speech", files={"file": ("a.txt", b"x")}, data=SPEECH), 400)


def test_json_sent_to_a_multipart_endpoint_is_400(http):
    error = assert_envelope(http.post("/v1/audio/transcriptions", json={"model": "whisper-1"}), 400, code="invalid_content_type")
    assert "multipart/form-data" in error["message"]


def test_request_over_the_body_limit_is_413(http):
    big = b"x" * (41 * 1024 * 1024)
    response = http.post("/v1/audio/transcriptions", files={"file": ("big.wav", big)}, data={"model": "whisper-1"})
    assert_envelope(response, 413)


def test_upload_over_25_mb_is_413_and_not_retried(base_url):
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="k", max_retries=2)
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("big.wav", io.BytesIO(b"\0" * (26 * 1024 * 1024))))
    assert caught.value.status_code == 413
    assert caught.value.body["param"] == "file"


# ------------------------------------------------------------------ speech validation


@pytest.mark.parametrize(
    "patch,param",
    [
        ({"input": "x" * 4097}, "input"),
        ({"input": ""}, "input"),
        ({"speed": 5}, "speed"),
        ({"speed": 0.1}, "speed"),
        ({"response_format": "ogg"}, "response_format"),
        ({"stream_format": "websocket"}, "stream_format"),
        ({"voice": 7}, "voice"),
        ({"model": None}, "model"),
    ],
)
def test_invalid_speech_fields_are_400_naming_the_param(http, patch, param):
    assert_envelope(http.post("/v1/audio/speech", json={**SPEECH, **patch}), 400, param=param)


@pytest.mark.parametrize("missing", ["model", "input", "voice"])
def test_missing_speech_fields_are_400(http, missing):
    body = {k: v for k, v in SPEECH.items() if k != missing}
    assert_envelope(http.post("/v1/audio/speech", json=body), 400, param=missing, code="missing_required_parameter")


def test_whitespace_only_input_is_400(http):
    assert_envelope(http.post("/v1/audio/speech", json={**SPEECH, "input": "   "}), 400, param="input")


def test_unknown_model_is_404_model_not_found(openai_client):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.audio.speech.create(model="tts-9", voice="alloy", input="hi")
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert caught.value.request_id


def test_transcription_model_cannot_speak(openai_client):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.audio.speech.create(model="whisper-1", voice="alloy", input="hi")
    assert caught.value.param == "model"


def test_unknown_voice_is_400(openai_client):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.audio.speech.create(model="tts-1", voice="voice_unknown", input="hi")
    assert caught.value.param == "voice"
    assert "alloy" in caught.value.message


def test_unknown_voice_object_is_400(http):
    assert_envelope(http.post("/v1/audio/speech", json={**SPEECH, "voice": {"id": "voice_1234"}}), 400, param="voice")


def test_english_only_voice_refuses_japanese(http):
    assert_envelope(http.post("/v1/audio/speech", json={**SPEECH, "voice": "joe", "input": "こんにちは"}), 400, param="voice")


# ------------------------------------------------------------------ transcription validation


def transcribe(http, data: bytes, **fields):
    return http.post("/v1/audio/transcriptions", files={"file": ("a.wav", data, "audio/wav")}, data={"model": "whisper-1", **fields})


def test_missing_file_is_400(http):
    assert_envelope(http.post("/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"other": ("x", b"1")}), 400, param="file")


def test_missing_model_is_400(http):
    response = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")})
    assert_envelope(response, 400, param="model", code="missing_required_parameter")


@pytest.mark.parametrize(
    "data",
    [b"", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"this is not audio at all" * 40, bytes(range(256)) * 64],
    ids=["empty", "truncated-wav", "text", "noise-bytes"],
)
def test_empty_or_corrupt_audio_is_400(http, data):
    error = assert_envelope(transcribe(http, data), 400, param="file")
    assert "Supported formats" in error["message"]


def test_unsupported_upload_via_sdk(openai_client):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.audio.transcriptions.create(model="whisper-1", file=("notes.txt", io.BytesIO(b"hello world")))
    assert caught.value.param == "file"


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"temperature": "2"}, "temperature"),
        ({"temperature": "warm"}, "temperature"),
        ({"response_format": "docx"}, "response_format"),
        ({"timestamp_granularities[]": "sentence"}, "timestamp_granularities"),
        ({"include[]": "everything"}, "include"),
        ({"stream": "maybe"}, "stream"),
    ],
)
def test_invalid_transcription_fields_are_400(http, fields, param):
    wav = encode_all(np.zeros(1600, np.float32), 16000, "wav")
    assert_envelope(transcribe(http, wav, **fields), 400, param=param)


def test_unknown_language_is_400(http):
    wav = encode_all(np.zeros(16000, np.float32), 16000, "wav")
    assert_envelope(transcribe(http, wav, language="xx"), 400, param="language")


def test_english_only_model_refuses_other_languages_and_translation(http):
    wav = encode_all(np.zeros(16000, np.float32), 16000, "wav")
    files = {"file": ("a.wav", wav, "audio/wav")}
    assert_envelope(http.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-tiny.en", "language": "ja"}), 400, param="language")
    assert_envelope(http.post("/v1/audio/translations", files=files, data={"model": "whisper-tiny.en"}), 400, param="model")


def test_speech_model_cannot_transcribe(http):
    wav = encode_all(np.zeros(16000, np.float32), 16000, "wav")
    assert_envelope(http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"model": "tts-1"}), 400, param="model")


def test_streamed_request_with_bad_audio_fails_before_the_stream_starts(http):
    response = transcribe(http, b"garbage" * 100, stream="true")
    assert_envelope(response, 400, param="file")


def test_errors_are_not_retried_by_the_sdk(base_url):
    """A 400 must not look retryable: the SDK sends it exactly once."""
    import httpx

    attempts = []
    client = openai.OpenAI(
        base_url=base_url + "/v1", api_key="k", max_retries=2,
        http_client=httpx.Client(event_hooks={"request": [lambda r: attempts.append(r)]}),
    )
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 5000)
    assert len(attempts) == 1


# ------------------------------------------------------------------ voice cloning


def test_voice_cloning_needs_a_model_that_can_clone(http):
    wav = encode_all(np.zeros(16000, np.float32), 16000, "wav")
    files = {"audio_sample": ("me.wav", wav, "audio/wav")}
    assert_envelope(http.post("/v1/audio/voices", files=files, data={"name": "me", "transcript": "hi", "model": "tts-1"}), 400, param="model")
    assert_envelope(http.post("/v1/audio/voices", data={"name": "me", "transcript": "hi"}, files={"x": ("a", b"1")}), 400, param="audio_sample")
    assert_envelope(http.post("/v1/audio/voices", files=files, data={"name": "me"}), 400, param="transcript")
    assert_envelope(http.post("/v1/audio/voices", json={"name": "me"}), 400, code="invalid_content_type")
