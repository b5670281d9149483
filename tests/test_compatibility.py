"""docs/compatibility.md covers every request field of the official spec, and says the truth.

The field lists come from the vendored OpenAI spec, so a spec update that adds a field fails
here until the table says what the gateway does with it. The "ignored" and "refused" rows of
the chat table are sent to a live gateway (200 and a 400 naming the field); the honoured
penalties and logit_bias are shown to change the answer.
"""

from __future__ import annotations

import io
import re

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

DOC = ROOT / "docs" / "compatibility.md"
STATUSES = {"supported", "ignored", "refused"}
REQUIRED = {
    "CreateChatCompletionRequest", "CreateSpeechRequest", "CreateTranscriptionRequest",
    "CreateTranslationRequest", "CreateVoiceRequest", "RealtimeSessionCreateRequestGA",
}
CHAT = "CreateChatCompletionRequest"
MESSAGES = [{"role": "user", "content": "Say one word."}]
# A value for each chat field the table calls ignored or refused, as a client would send it.
CHAT_SAMPLES = {
    "user": "user-1234",
    "safety_identifier": "hashed-user-1234",
    "metadata": {"team": "docs"},
    "store": True,
    "service_tier": "flex",
    "prompt_cache_key": "docs-tests",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"ttl": "24h"},
    "reasoning_effort": "low",
    "verbosity": "low",
    "prediction": {"type": "content", "content": "Hello."},
    "web_search_options": {},
    "moderation": {"mode": "default"},
    "functions": [{"name": "f", "parameters": {"type": "object", "properties": {}}}],
    "function_call": "auto",
    "n": 2,
}


def tables() -> dict[str, dict[str, str]]:
    """Schema name -> {field: status}, from each section whose heading names a schema."""
    result = {}
    for section in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        heading = section.split("\n", 1)[0]
        schema = re.search(r"\(`(\w+)`\)", heading)
        if schema:
            rows = re.findall(r"^\| `([\w.]+)` \| (\w+) \|", section, re.M)
            result[schema.group(1)] = dict(rows)
    return result


def spec_fields(spec, name: str) -> set[str]:
    schemas = spec.document["components"]["schemas"]

    def walk(schema: dict) -> set[str]:
        if "$ref" in schema:
            return walk(schemas[schema["$ref"].rsplit("/", 1)[1]])
        fields = set(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            fields |= walk(part)
        return fields

    return walk(schemas[name])


def test_every_spec_field_has_a_row_and_every_row_a_spec_field(spec):
    documented = tables()
    assert REQUIRED <= set(documented), f"no table for {sorted(REQUIRED - set(documented))}"
    for schema, rows in documented.items():
        fields = spec_fields(spec, schema)
        assert fields, f"{schema} has no fields in the spec"
        assert not fields - set(rows), f"{schema}: spec fields missing from docs/compatibility.md"
        assert not set(rows) - fields, f"{schema}: rows for fields the spec does not have"
        assert set(rows.values()) <= STATUSES, f"{schema}: statuses must be one of {STATUSES}"


def test_honoured_and_refused_fields_are_decoded_not_dropped():
    """A supported or refused chat field missing from the request struct would be dropped
    silently as an unknown field, whatever the table says."""
    from gateway.api.chat.protocol import REFUSED_FIELDS, CreateChatCompletionRequest

    rows = tables()[CHAT]
    decoded = set(CreateChatCompletionRequest.__struct_fields__)
    needed = {field for field, status in rows.items() if status != "ignored"}
    assert not needed - decoded, f"not decoded: {sorted(needed - decoded)}"
    assert set(REFUSED_FIELDS) == {f for f, status in rows.items() if status == "refused"} - {"n"}


def test_every_ignored_or_refused_chat_field_has_a_sample():
    rows = tables()[CHAT]
    assert {f for f, status in rows.items() if status != "supported"} == set(CHAT_SAMPLES)


def _chat_rows(status: str) -> list[str]:
    return sorted(f for f, s in tables()[CHAT].items() if s == status)


@pytest.mark.parametrize("field", _chat_rows("ignored"))
def test_ignored_chat_field_is_answered(http, field):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 2, "temperature": 0}
    plain = http.post("/v1/chat/completions", json=body)
    answered = http.post("/v1/chat/completions", json={**body, field: CHAT_SAMPLES[field]})
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"] == plain.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("field", _chat_rows("refused"))
def test_refused_chat_field_is_a_400_naming_it(http, field):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 2, field: CHAT_SAMPLES[field]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error" and error["message"]


def test_ignored_speech_and_transcription_fields_are_answered(http, speech_wav):
    rows = tables()
    assert rows["CreateSpeechRequest"]["instructions"] == "ignored"
    speech = http.post("/v1/audio/speech", json={
        "model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "wav",
        "instructions": "Speak like a pirate.",
    })
    assert speech.status_code == 200 and speech.content[:4] == b"RIFF"
    ignored = [f for f, s in rows["CreateTranscriptionRequest"].items() if s == "ignored"]
    form = {"model": "whisper-tiny.en"}
    for field in ignored:  # as the SDKs send them: lists as field[], objects as strings
        form[field if field == "chunking_strategy" else f"{field}[]"] = "auto" if field == "chunking_strategy" else "weather"
    heard = http.post("/v1/audio/transcriptions", data=form,
                      files={"file": ("speech.wav", io.BytesIO(speech_wav), "audio/wav")})
    assert heard.status_code == 200, heard.text
    # The paragraph was heard (whisper-tiny once wrote "weather" as "whether", and Piper's
    # synthesis is sampled, so no single word is certain).
    text = heard.json()["text"].lower()
    assert sum(w in text for w in ("weather", "speech", "gateway", "computer", "network")) >= 3, text


# ---------------------------------------------------------------- honoured sampling fields


def _answer(http, **fields) -> str:
    response = http.post("/v1/chat/completions", json={
        "model": "gpt-4o-mini", "temperature": 0, "seed": 1,
        "messages": [{"role": "user", "content": "Write the word yes ten times."}], **fields,
    })
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_penalties_change_a_repetitive_answer(http):
    """Greedy decoding of the same prompt: only the penalty differs, so a different answer
    means the engine applied it."""
    plain = _answer(http, max_tokens=24)
    for field in ("frequency_penalty", "presence_penalty"):
        assert _answer(http, max_tokens=24, **{field: 2.0}) != plain, field
        assert _answer(http, max_tokens=24, **{field: 0.0}) == plain, field


def test_logit_bias_forces_and_bans_tokens(http):
    plain = _answer(http, max_tokens=3)
    forced = [_answer(http, max_tokens=3, logit_bias={token: 100}) for token in ("1000", "2000")]
    for text in forced:  # one token, chosen every time
        assert text and text == text[: len(text) // 3] * 3, forced
    assert forced[0] != forced[1] and plain not in forced


@pytest.mark.parametrize("bias,detail", [({"99999999": 5}, "vocabulary"), ({"yes": 5}, "token ids")])
def test_bad_logit_bias_is_a_400(http, bias, detail):
    response = http.post("/v1/chat/completions", json={
        "model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 1, "logit_bias": bias})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "logit_bias" and detail in error["message"]


def test_deleting_a_model_is_not_served(http):
    """The table says DELETE /v1/models/{model} answers 405 with Allow."""
    response = http.delete("/v1/models/gpt-4o-mini")
    assert response.status_code == 405 and "GET" in response.headers["allow"], response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
