"""POST /v1/chat/completions through the official openai Python SDK, as a user would.

The embedded chat model is SmolLM2-135M: tests assert the contract (shapes, streams,
tools that parse and match their schema, audio that decodes and says the transcript),
not the wisdom of a 135M model.
"""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import jsonschema
import openai
import pytest

from tests.audio_utils import decode
from tests.test_transcription import wer

MODEL = "gpt-4o-mini"
AUDIO_MODEL = "gpt-4o-audio-preview"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city", "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "set_timer", "description": "Set a timer for a number of minutes",
        "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]}}},
]
ASK = [{"role": "user", "content": "What is the capital of France?"}]


def test_non_streamed_text_answer_validates_against_the_spec(openai_client, spec):
    raw = openai_client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK, max_tokens=40, temperature=0)
    assert raw.headers["content-type"].startswith("application/json")
    response = raw.parse()
    assert response.object == "chat.completion" and response._request_id
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    spec.validate(json.loads(raw.http_response.text), "CreateChatCompletionResponse")


def test_streamed_text_answer(openai_client, spec):
    stream = openai_client.chat.completions.create(model=MODEL, messages=ASK, stream=True, max_tokens=40, temperature=0)
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks)
    for chunk in chunks:
        spec.validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")


def test_stream_helper_accumulates_one_role_and_the_full_content(openai_client):
    with openai_client.chat.completions.stream(model=MODEL, messages=ASK, max_tokens=400, temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.role == "assistant" and message.content == "".join(deltas)


def test_usage_chunk_when_asked(openai_client):
    chunks = list(openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a dragon."}], temperature=0,
        stream=True, max_tokens=10, stream_options={"include_usage": True}))
    *body, last = chunks
    assert last.choices == [] and last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in body)
    assert last.usage.completion_tokens == 10 and body[-1].choices[0].finish_reason == "length"


def test_raw_stream_wire_format(http):
    with http.stream("POST", "/v1/chat/completions", json={"model": MODEL, "messages": ASK, "stream": True, "max_tokens": 5}) as response:
        assert response.headers["content-type"].startswith("text/event-stream"), response.read()
        body = response.read().decode()
    assert body.endswith("data: [DONE]\n\n")
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)


def _assemble_tool_calls(chunks):
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": "", "fragments": 0})
            if call.id:
                assert entry["id"] is None, "tool call id sent twice"
                entry["id"] = call.id
            if call.function and call.function.name:
                assert entry["name"] is None, "tool name sent twice"
                entry["name"] = call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
                entry["fragments"] += 1
    return calls


def test_streamed_tool_call_parses_and_matches_its_schema(openai_client):
    chunks = list(openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What's the weather like in Paris today?"}],
        tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True))
    calls = _assemble_tool_calls(chunks)
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"].startswith("call_") and call["name"] == "get_weather"
    assert call["fragments"] >= 2  # arguments stream in pieces, not in one lump at the end
    jsonschema.validate(json.loads(call["arguments"]), WEATHER_SCHEMA)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_tool_choice_routes_and_stream_helper_keeps_ids_whole(openai_client):
    with openai_client.chat.completions.stream(
        model=MODEL, messages=[{"role": "user", "content": "Please set a timer for 10 minutes"}], tools=TOOLS) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "set_timer" and call.id.count("call_") == 1
    assert isinstance(json.loads(call.function.arguments)["minutes"], int)
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_result_round_trip_gives_a_final_answer(openai_client):
    messages = [{"role": "user", "content": "What's the weather in Berlin?"}]
    first = openai_client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="required")
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    call = message.tool_calls[0]
    assert isinstance(call.function.arguments, str) and json.loads(call.function.arguments)
    messages.append(message)  # the SDK object as-is, as agent code does
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "unit": "celsius"})})
    final = openai_client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=60, temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


def test_parallel_tool_calls_false_gives_one_call(openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo and a 5 minute timer"}],
        tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert len(response.choices[0].message.tool_calls) == 1


def allowed(mode: str, *names: str) -> dict:
    tools = [{"type": "function", "function": {"name": name}} for name in names]
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": tools}}


@pytest.mark.parametrize("stream", [False, True])
def test_allowed_tools_restrict_the_calls_to_their_subset(openai_client, stream):
    """Asked about the weather with get_weather among the tools but only set_timer
    allowed, the model may call set_timer and nothing else (the router alone would
    pick get_weather)."""
    ask = dict(
        model=MODEL, messages=[{"role": "user", "content": "What's the weather like in Paris today?"}],
        tools=TOOLS, tool_choice=allowed("required", "set_timer"))
    if stream:
        with openai_client.chat.completions.stream(**ask) as events:
            response = events.get_final_completion()
    else:
        response = openai_client.chat.completions.create(**ask)
    calls = response.choices[0].message.tool_calls
    assert calls and {c.function.name for c in calls} == {"set_timer"}
    assert isinstance(json.loads(calls[0].function.arguments)["minutes"], int)
    routed = openai_client.chat.completions.create(**{**ask, "tool_choice": allowed("auto", "get_weather", "set_timer")})
    assert {c.function.name for c in routed.choices[0].message.tool_calls} == {"get_weather"}


def test_json_schema_response_format(openai_client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}
    response = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], max_tokens=200, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)


def test_stop_and_logprobs(openai_client):
    response = openai_client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=30, temperature=0, logprobs=True, top_logprobs=2)
    content = response.choices[0].message.content
    tokens = response.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == content
    assert all(t.logprob <= 0 and len(t.top_logprobs) <= 2 for t in tokens)
    cut = content.split()[2]
    stopped = openai_client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=30, temperature=0, stop=[cut])
    assert cut not in stopped.choices[0].message.content


# ------------------------------------------------------------------ voice


def test_non_streamed_answer_with_audio(openai_client, spec):
    raw = openai_client.chat.completions.with_raw_response.create(
        model=AUDIO_MODEL, modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "Say something nice about cats."}], max_tokens=40, temperature=0)
    response = raw.parse()
    audio = response.choices[0].message.audio
    assert response.choices[0].message.content is None
    wav = base64.b64decode(audio.data)
    assert wav[:4] == b"RIFF" and len(decode(wav)) > 16000 * 0.5
    assert audio.transcript and audio.id.startswith("audio_") and audio.expires_at > time.time()
    assert response.usage.completion_tokens_details.audio_tokens > 0
    spec.validate(json.loads(raw.http_response.text), "CreateChatCompletionResponse")


def test_streamed_answer_with_audio_says_its_transcript(openai_client):
    chunks = list(openai_client.chat.completions.create(
        model=AUDIO_MODEL, modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": "Tell me one fact about dogs."}], stream=True, max_tokens=40, temperature=0,
        stream_options={"include_usage": True}))
    audio_deltas = [c.choices[0].delta.audio for c in chunks if c.choices and c.choices[0].delta.audio]
    as_dicts = [a if isinstance(a, dict) else a.model_dump(exclude_none=True) for a in audio_deltas]
    assert sum("id" in a for a in as_dicts) == 1 and sum("expires_at" in a for a in as_dicts) == 1
    assert "expires_at" in as_dicts[-1]
    pcm = b"".join(base64.b64decode(a["data"]) for a in as_dicts if "data" in a)
    transcript = "".join(a.get("transcript", "") for a in as_dicts)
    assert len(pcm) % 2 == 0 and len(pcm) > 24000  # over half a second of 24 kHz s16le
    assert transcript.strip()
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage.completion_tokens_details.audio_tokens > 0
    # The audio says the transcript: transcribe it back.
    import numpy as np

    from adapters.audio.encode import encode_all

    wav = encode_all(np.frombuffer(pcm, np.int16).astype(np.float32) / 32768, 24000, "wav")
    heard = openai_client.audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(wav)), language="en").text
    assert wer(transcript, heard) <= 0.35, (transcript, heard)


def test_stream_helper_with_audio_keeps_id_and_expiry_whole(openai_client):
    with openai_client.chat.completions.stream(
        model=AUDIO_MODEL, modalities=["text", "audio"], audio={"voice": "nova", "format": "pcm16"},
        messages=[{"role": "user", "content": "Hi!"}], max_tokens=400, temperature=0) as stream:
        final = stream.get_final_completion()
    audio = final.choices[0].message.audio
    assert audio.id.count("audio_") == 1
    assert time.time() < audio.expires_at < time.time() + 2 * 86400
    assert final.choices[0].finish_reason in ("stop", "length")


def test_question_as_input_audio_is_answered_as_the_words_heard(openai_client):
    """A spoken question gets the answer its words get when typed.

    Piper samples noise, so each synthesis of the question differs a little and Whisper
    base now and then mishears a word of it; the reference is therefore what the
    gateway's own transcription model hears in this very recording, not the text the
    recording was made from.
    """
    question = "What is the capital of France?"
    wav = openai_client.audio.speech.create(model="tts-1", voice="alloy", input=question, response_format="wav").content
    heard = openai_client.audio.transcriptions.create(model="whisper-1", file=("q.wav", io.BytesIO(wav))).text
    assert heard.strip()
    by_voice = openai_client.chat.completions.create(model=MODEL, temperature=0, max_tokens=30, messages=[{
        "role": "user", "content": [{"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}]}])
    by_text = openai_client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=30, messages=[{"role": "user", "content": heard.strip()}])
    assert by_voice.choices[0].message.content == by_text.choices[0].message.content
    assert by_voice.usage.prompt_tokens_details.audio_tokens > 0


def test_conversation_continues_by_audio_id(openai_client):
    first = openai_client.chat.completions.create(
        model=AUDIO_MODEL, modalities=["text", "audio"], audio={"voice": "alloy", "format": "mp3"},
        messages=[{"role": "user", "content": "Name a color."}], max_tokens=20, temperature=0)
    reply = first.choices[0].message
    follow_up = {"role": "user", "content": "Why that one?"}
    by_id = openai_client.chat.completions.create(model=MODEL, max_tokens=20, messages=[
        {"role": "user", "content": "Name a color."}, {"role": "assistant", "audio": {"id": reply.audio.id}}, follow_up])
    assert by_id.choices[0].message.content
    echoed = openai_client.chat.completions.create(model=MODEL, max_tokens=20, messages=[
        {"role": "user", "content": "Name a color."}, reply, follow_up])  # the whole SDK object echoed back
    assert echoed.choices[0].message.content
    # The id resolves to the transcript: the prompt is as long as with the text itself.
    as_text = openai_client.chat.completions.create(model=MODEL, max_tokens=1, messages=[
        {"role": "user", "content": "Name a color."}, {"role": "assistant", "content": reply.audio.transcript}, follow_up])
    again = openai_client.chat.completions.create(model=MODEL, max_tokens=1, messages=[
        {"role": "user", "content": "Name a color."}, {"role": "assistant", "audio": {"id": reply.audio.id}}, follow_up])
    assert again.usage.prompt_tokens == as_text.usage.prompt_tokens


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "patch,param",
    [
        ({"messages": []}, "messages"),
        ({"n": 2}, "n"),
        ({"stream": True, "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "audio.format"),
        ({"modalities": ["text", "audio"]}, "audio"),
        ({"modalities": ["text", "audio"], "audio": {"voice": "nobody", "format": "wav"}}, "audio.voice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": allowed("auto", "get_weather", "nope")}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": allowed("required")}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "allowed_tools": {
            "mode": "auto", "tools": [{"type": "function", "name": "get_weather"}]}}},
         "tool_choice.allowed_tools.tools[0].function"),
        ({"temperature": 3}, "temperature"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "!!!", "format": "wav"}}]}]}, "messages[0].content[0].input_audio.data"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "aGVsbG8=", "format": "wav"}}]}]}, "messages[0].content[0].input_audio.data"),
        ({"messages": [{"role": "assistant", "audio": {"id": "audio_missing"}}, {"role": "user", "content": "hi"}]}, "messages[0].audio.id"),
    ],
)
def test_bad_chat_requests_are_400_naming_the_param(http, patch, param):
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **patch})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_missing_messages_and_unknown_model(openai_client):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(model=MODEL, messages=None)  # type: ignore[arg-type]
    assert caught.value.param == "messages"
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="gpt-99", messages=ASK)
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model="tts-1", messages=ASK)


def test_client_disconnect_mid_stream_leaves_the_engine_usable(base_url, openai_client):
    """Closing a stream early stops generation cleanly; the next request is served."""
    with httpx.stream("POST", base_url + "/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": ASK, "stream": True, "max_tokens": 200}) as response:
        for line in response.iter_lines():
            if '"content"' in line:
                break  # hang up after the first token
    follow = openai_client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5)
    assert follow.choices[0].message.content


def test_failure_mid_stream_raises_api_error_in_the_sdk(tmp_path):
    from engines.base import Capability
    from engines.catalog import CATALOG, EngineKind
    from engines.registry import ModelRegistry, ModelSpec
    from gateway.settings import load_settings
    from tests.conftest import start_server

    registry = ModelRegistry(
        [ModelSpec("crashy-chat", "crash")], cache_dir=tmp_path,
        catalog={**CATALOG, "crash": EngineKind("tests.faults:ChatFailingMidStream", frozenset({Capability.CHAT}))},
    )
    settings = load_settings()
    settings.engines.preload = []
    live = start_server(settings, registry)
    try:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
        received = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in client.chat.completions.create(model="crashy-chat", messages=ASK, stream=True):
                received.append(chunk)
        assert "".join(c.choices[0].delta.content or "" for c in received) == "Hello there"
        assert caught.value.type == "server_error"
    finally:
        live.stop()


def test_a_streamed_request_the_engine_refuses_gets_429_not_a_200_with_an_error(tmp_path):
    """The first chunk (the role) waits for the engine to take the request, so a refusal
    still answers with its status, which the SDK retries after retry-after."""
    from engines.base import Capability
    from engines.catalog import CATALOG, EngineKind
    from engines.registry import ModelRegistry, ModelSpec
    from gateway.settings import load_settings
    from tests.conftest import start_server

    registry = ModelRegistry(
        [ModelSpec("busy-chat", "busy")], cache_dir=tmp_path,
        catalog={**CATALOG, "busy": EngineKind("tests.faults:ChatOverloaded", frozenset({Capability.CHAT}))},
    )
    settings = load_settings()
    settings.engines.preload = []
    live = start_server(settings, registry)
    try:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.RateLimitError) as caught:
            for _ in client.chat.completions.create(model="busy-chat", messages=ASK, stream=True):
                pass
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.code == "rate_limit_exceeded"
    finally:
        live.stop()
