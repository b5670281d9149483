"""/v1/models, /health, /ready, /metrics, x-request-id, and conformance with the OpenAI spec."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import start_server


def test_models_list_and_retrieve_round_trip(openai_client):
    models = list(openai_client.models.list())
    ids = {m.id for m in models}
    assert {"whisper-1", "tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"} <= ids
    for model in models:
        assert model.object == "model" and isinstance(model.created, int) and model.owned_by
        assert openai_client.models.retrieve(model.id).id == model.id  # the SDK percent-encodes "/"


def test_model_ids_with_a_slash_raw_and_encoded(http):
    for path in ("/v1/models/Systran/faster-whisper-base", "/v1/models/Systran%2Ffaster-whisper-base"):
        response = http.get(path)
        assert response.status_code == 200, path
        assert response.json()["id"] == "Systran/faster-whisper-base"


def test_unknown_model_is_404(openai_client):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.models.retrieve("gpt-99")
    assert caught.value.code == "model_not_found"


def test_health_ready_and_metrics(http):
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready")
    assert ready.status_code == 200 and "whisper-base" in ready.json()["models"]
    http.get("/v1/models")
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert "step_audio_gateway_requests_total" in metrics.text


def test_request_id_is_echoed_and_reaches_the_sdk(openai_client, http):
    page = openai_client.models.with_raw_response.list()
    assert page.headers["x-request-id"].startswith("req_")
    assert http.get("/health", headers={"x-request-id": "trace-123"}).headers["x-request-id"] == "trace-123"


def test_cors_preflight_allows_sdk_headers(http):
    response = http.options(
        "/v1/audio/speech",
        headers={"origin": "http://localhost:3000", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization,content-type,x-stainless-os"},
    )
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] in ("*", "http://localhost:3000")


def test_cors_headers_answer_a_browser_call_and_only_a_browser_call(http):
    """A page's fetch carries Origin and can read the answer only with the allow header,
    and the request id only when it is exposed; a call without Origin (an SDK, a server)
    gets no CORS headers (the CORS layer is skipped for it)."""
    browser = http.get("/v1/models", headers={"origin": "http://localhost:3000"})
    assert browser.status_code == 200
    assert browser.headers["access-control-allow-origin"] in ("*", "http://localhost:3000")
    assert "x-request-id" in browser.headers["access-control-expose-headers"]
    sdk = http.get("/v1/models")
    assert sdk.status_code == 200
    assert not [name for name in sdk.headers if name.startswith("access-control-")]


# ------------------------------------------------------------------ spec conformance


def test_models_validate_against_the_spec(http, spec):
    spec.validate(http.get("/v1/models").json(), "ListModelsResponse")
    spec.validate(http.get("/v1/models/whisper-1").json(), "Model")


def test_errors_validate_against_the_spec(http, spec):
    spec.validate(http.get("/v1/models/nope").json(), "ErrorResponse")
    spec.validate(http.post("/v1/audio/speech", json={}).json(), "ErrorResponse")


def test_transcriptions_validate_against_the_spec(http, spec, speech_wav):
    files = {"file": ("a.wav", speech_wav, "audio/wav")}
    plain = http.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1"}).json()
    spec.validate(plain, "CreateTranscriptionResponseJson")
    with_logprobs = http.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1", "include[]": "logprobs"}).json()
    spec.validate(with_logprobs, "CreateTranscriptionResponseJson")
    verbose = http.post(
        "/v1/audio/transcriptions", files=files,
        data={"model": "whisper-1", "response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]},
    ).json()
    spec.validate(verbose, "CreateTranscriptionResponseVerboseJson")
    translation = http.post("/v1/audio/translations", files=files, data={"model": "whisper-1"}).json()
    spec.validate(translation, "CreateTranslationResponseJson")
    verbose_translation = http.post("/v1/audio/translations", files=files, data={"model": "whisper-1", "response_format": "verbose_json"}).json()
    spec.validate(verbose_translation, "CreateTranslationResponseVerboseJson")


def test_stream_events_validate_against_the_spec(http, spec, speech_wav):
    files = {"file": ("a.wav", speech_wav, "audio/wav")}
    with http.stream("POST", "/v1/audio/transcriptions", files=files, data={"model": "whisper-1", "stream": "true", "include[]": "logprobs"}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    for event in events:
        spec.validate(event, "TranscriptTextDeltaEvent" if event["type"].endswith("delta") else "TranscriptTextDoneEvent")
    with http.stream("POST", "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hi there.", "stream_format": "sse"}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    for event in events:
        spec.validate(event, "SpeechAudioDeltaEvent" if event["type"].endswith("delta") else "SpeechAudioDoneEvent")
    assert events[-1]["type"] == "speech.audio.done"


# ------------------------------------------------------------------ API keys


def test_api_keys_guard_v1_but_not_health():
    from gateway.settings import load_settings

    settings = load_settings(environ={"GATEWAY__SERVER__API_KEYS": '["sk-one", "sk-two"]'})
    settings.engines.preload = []
    live = start_server(settings)
    try:
        assert httpx.get(live.url + "/health").status_code == 200
        bad = openai.OpenAI(base_url=live.url + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.models.list()
        assert caught.value.code == "invalid_api_key"
        missing = httpx.get(live.url + "/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(live.url + "/v1/nope").status_code == 401  # no probing without a key
        good = openai.OpenAI(base_url=live.url + "/v1", api_key="sk-two", max_retries=0)
        assert any(m.id == "whisper-1" for m in good.models.list())
        azure_style = httpx.get(live.url + "/v1/models", headers={"api-key": "sk-one"})
        assert azure_style.status_code == 200
    finally:
        live.stop()
