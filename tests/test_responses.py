"""POST /v1/responses (the Responses API the OpenAI Agents SDK calls by default) through the
official openai Python SDK and raw HTTP, as a user would: text, function tools and their
outputs, conversations continued by previous_response_id, JSON output, streams whose
every event is checked against the vendored OpenAI spec, stored responses read back and
deleted per key, refusals, per-key limits, and a client that leaves.

The embedded chat model is SmolLM2-135M: tests assert the contract, not its wisdom.
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

from gateway.settings import KeyLimitSettings, load_settings
from tests.conftest import live_server
from tests.redis_server import avoid_minute_edge
from tests.test_slow_clients import last_busy_after, leave_after

MODEL = "gpt-4o-mini"
CHAT_ENGINE = "smollm2-135m"  # what gpt-4o-mini names here, as /metrics labels it
ASK = "What is the capital of France?"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
     "parameters": WEATHER, "strict": True},
    {"type": "function", "name": "set_timer", "description": "Set a timer for a number of minutes",
     "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]},
     "strict": False},
]
# Runs to max_output_tokens (SmolLM2 repeats the word at temperature 0): seconds of work.
LONG = {"model": MODEL, "input": "Repeat the word hello 500 times.", "max_output_tokens": 2000, "temperature": 0}
KEYS = {"sk-rpm": KeyLimitSettings(rpm=2), "sk-models": KeyLimitSettings(models=[MODEL])}


@pytest.fixture(scope="module")
def gateway():
    settings = load_settings()
    settings.server.api_keys = ["sk-a", "sk-b", "sk-rpm", "sk-models"]
    settings.limits.per_key = KEYS
    settings.engines.preload = [MODEL]
    settings.limits.max_text_chars = 4000
    live = live_server(settings).start()
    yield live
    live.stop()


def sdk(gateway, key: str = "sk-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=120)


def http(gateway, key: str = "sk-a") -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {key}"}, timeout=120)


@pytest.fixture(scope="module")
def client(gateway):
    return sdk(gateway)


@pytest.fixture(scope="module")
def raw(gateway):
    with http(gateway) as client:
        yield client


def event_schemas(spec) -> dict[str, str]:
    """Event type -> its schema in the spec, from the members of ResponseStreamEvent."""
    schemas = spec.document["components"]["schemas"]
    names = [m["$ref"].rsplit("/", 1)[1] for m in schemas["ResponseStreamEvent"]["anyOf"]]
    return {schemas[n]["properties"]["type"]["enum"][0]: n for n in names}


def streamed(raw: httpx.Client, spec, body: dict) -> list[dict]:
    """The events of a streamed request, each validated against its schema in the spec;
    their sequence numbers count up from 0."""
    schemas = event_schemas(spec)
    with raw.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line[6:]) for line in lines]
    for event in events:
        spec.validate(event, schemas[event["type"]])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


# ------------------------------------------------------------------ text


def test_text_answer_is_a_spec_response_and_can_be_read_back(client, raw, spec):
    made = client.responses.with_raw_response.create(model=MODEL, input=ASK, max_output_tokens=40, temperature=0)
    body = json.loads(made.http_response.text)
    spec.validate(body, "Response")
    response = made.parse()
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete") and response.output_text.strip()
    usage = response.usage
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens and usage.output_tokens > 0
    read = raw.get(f"/v1/responses/{response.id}")
    assert read.status_code == 200 and read.json() == body
    spec.validate(read.json(), "Response")


def test_instructions_and_input_messages_are_the_conversation(client):
    """Instructions and a system message change what the model sees: more input tokens."""
    plain = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=16, temperature=0, store=False)
    framed = client.responses.create(
        model=MODEL, instructions="You are a pirate. Answer like one.", max_output_tokens=16, temperature=0,
        input=[{"role": "developer", "content": "Keep it short."},
               {"role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}], store=False)
    assert framed.instructions == "You are a pirate. Answer like one."
    assert framed.usage.input_tokens > plain.usage.input_tokens


def test_streamed_text_events_follow_the_spec_and_add_up(raw, spec):
    events = streamed(raw, spec, {"model": MODEL, "input": ASK, "max_output_tokens": 40, "temperature": 0})
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(e["delta"] for e in of_type(events, "response.output_text.delta"))
    (done,) = of_type(events, "response.output_text.done")
    final = events[-1]["response"]
    assert deltas.strip() and done["text"] == deltas
    assert final["output"][0]["content"][0]["text"] == deltas
    assert len({e["response"]["id"] for e in events if "response" in e}) == 1
    assert final["usage"]["output_tokens"] > 0


def test_sdk_stream_helper_gets_the_final_response(client):
    with client.responses.stream(model=MODEL, input=ASK, max_output_tokens=60, temperature=0) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(texts) and texts


def test_max_output_tokens_cut_is_incomplete(client, raw, spec):
    cut = client.responses.create(**{**LONG, "max_output_tokens": 16})
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage.output_tokens == 16 and cut.output[0].status == "incomplete"
    events = streamed(raw, spec, {**LONG, "max_output_tokens": 16})
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_json_schema_output_parses(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    response = client.responses.create(
        model=MODEL, input="Invent a person.", max_output_tokens=200, temperature=0,
        text={"format": {"type": "json_schema", "name": "person", "schema": schema}})
    assert response.status == "completed", response.output_text
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text.format.type == "json_schema"


def test_logprobs_are_included_when_asked(client):
    response = client.responses.create(model=MODEL, input=ASK, max_output_tokens=20, temperature=0,
                                       include=["message.output_text.logprobs"], top_logprobs=2)
    part = response.output[0].content[0]
    assert "".join(t.token for t in part.logprobs) == part.text
    assert all(t.logprob <= 0 and len(t.top_logprobs) <= 2 for t in part.logprobs)


def test_a_spoken_question_is_answered_as_the_words_heard(client):
    """input_audio parts go the chat path's way (transcribed for a text engine); the
    reference is what the gateway's own transcription model hears in this recording."""
    wav = client.audio.speech.create(model="tts-1", voice="alloy", input=ASK, response_format="wav").content
    heard = client.audio.transcriptions.create(model="whisper-1", file=("q.wav", io.BytesIO(wav))).text.strip()
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}
    by_voice = client.responses.create(model=MODEL, temperature=0, max_output_tokens=30,
                                       input=[{"role": "user", "content": [audio]}])
    by_text = client.responses.create(model=MODEL, temperature=0, max_output_tokens=30, input=heard)
    assert heard and by_voice.output_text == by_text.output_text
    assert by_voice.usage.input_tokens > by_text.usage.input_tokens  # the audio is counted
    follow = client.responses.create(model=MODEL, previous_response_id=by_voice.id, input="Thanks.",
                                     max_output_tokens=16)
    assert follow.usage.input_tokens > by_voice.usage.input_tokens


# ------------------------------------------------------------------ function tools


def test_function_call_then_its_output_gives_an_answer(client, raw, spec):
    first = client.responses.with_raw_response.create(
        model=MODEL, input="What's the weather in Berlin?", tools=TOOLS, tool_choice="required")
    spec.validate(json.loads(first.http_response.text), "Response")
    first = first.parse()
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    assert first.tools[0].name == "get_weather" and first.tool_choice == "required"
    answer = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=TOOLS, max_output_tokens=60, temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"temperature": 21, "unit": "celsius"})}])
    assert answer.output_text.strip() and not [i for i in answer.output if i.type == "function_call"]
    assert answer.previous_response_id == first.id
    # Without stored state: the whole conversation sent back as items, as store=false users do.
    stateless = client.responses.create(
        model=MODEL, tools=TOOLS, max_output_tokens=60, temperature=0, store=False,
        input=[{"role": "user", "content": "What's the weather in Berlin?"},
               call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"temperature": 21, "unit": "celsius"})}])
    assert stateless.output_text == answer.output_text  # the same conversation, greedy


def test_auto_tool_choice_routes_to_the_right_tool(client):
    response = client.responses.create(model=MODEL, input="Please set a timer for 10 minutes", tools=TOOLS)
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "set_timer" and isinstance(json.loads(call.arguments)["minutes"], int)
    none = client.responses.create(model=MODEL, input="Please set a timer for 10 minutes", tools=TOOLS,
                                   tool_choice="none", max_output_tokens=20)
    assert [item.type for item in none.output] == ["message"]


def test_streamed_function_call_events_follow_the_spec(raw, spec):
    events = streamed(raw, spec, {"model": MODEL, "input": "What's the weather like in Paris today?",
                                  "tools": TOOLS, "tool_choice": {"type": "function", "name": "get_weather"}})
    (added,) = of_type(events, "response.output_item.added")
    assert added["item"]["type"] == "function_call" and added["item"]["arguments"] == ""
    deltas = of_type(events, "response.function_call_arguments.delta")
    (done,) = of_type(events, "response.function_call_arguments.done")
    assert len(deltas) >= 2 and "".join(d["delta"] for d in deltas) == done["arguments"]
    assert done["name"] == "get_weather" and done["item_id"] == added["item"]["id"]
    jsonschema.validate(json.loads(done["arguments"]), WEATHER)
    final = events[-1]
    assert final["type"] == "response.completed"
    assert final["response"]["output"][0]["arguments"] == done["arguments"]


# ------------------------------------------------------------------ stored conversations


def test_previous_response_id_continues_the_conversation(client, raw):
    first = client.responses.create(model=MODEL, input="My name is Ada. Say hi.", max_output_tokens=20, temperature=0)
    second = client.responses.create(model=MODEL, previous_response_id=first.id, input="What is my name?",
                                     max_output_tokens=20, temperature=0)
    # The model saw the first turn and its answer before the new question.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    items = raw.get(f"/v1/responses/{second.id}/input_items", params={"order": "asc"}).json()
    texts = [part["text"] for item in items["data"] for part in item.get("content", [])]
    assert texts == ["My name is Ada. Say hi.", first.output_text, "What is my name?"]
    assert items["first_id"] == items["data"][0]["id"] and not items["has_more"]
    newest = raw.get(f"/v1/responses/{second.id}/input_items", params={"limit": 1}).json()
    assert [i["id"] for i in newest["data"]] == [items["data"][-1]["id"]] and newest["has_more"]


def test_a_streamed_response_continues_one_and_is_continued(client):
    first = client.responses.create(model=MODEL, input="Count to three.", max_output_tokens=20, temperature=0)
    events = list(client.responses.create(model=MODEL, previous_response_id=first.id, input="Again.",
                                          max_output_tokens=20, temperature=0, stream=True))
    second = events[-1].response
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    third = client.responses.create(model=MODEL, previous_response_id=second.id, input="Thanks.", max_output_tokens=16)
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens


def test_store_false_keeps_nothing(client, raw):
    response = client.responses.create(model=MODEL, input=ASK, max_output_tokens=16, store=False)
    assert response.store is False
    assert raw.get(f"/v1/responses/{response.id}").status_code == 404
    follow = raw.post("/v1/responses", json={"model": MODEL, "input": "And?", "previous_response_id": response.id})
    assert follow.status_code == 400 and follow.json()["error"]["code"] == "previous_response_not_found"


def test_delete_answers_deleted_and_the_response_is_gone(client, raw):
    response = client.responses.create(model=MODEL, input=ASK, max_output_tokens=16, metadata={"team": "docs"})
    assert response.metadata == {"team": "docs"}
    deleted = raw.delete(f"/v1/responses/{response.id}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": response.id, "object": "response.deleted", "deleted": True}
    assert raw.get(f"/v1/responses/{response.id}").status_code == 404
    assert raw.delete(f"/v1/responses/{response.id}").status_code == 404


def _same_apart_from_id(one: httpx.Response, other: httpx.Response, one_id: str, other_id: str) -> None:
    assert one.status_code == other.status_code
    assert one.text.replace(one_id, "ID") == other.text.replace(other_id, "ID")


def test_another_keys_response_answers_as_an_unknown_one(gateway, client):
    mine = client.responses.create(model=MODEL, input=ASK, max_output_tokens=16)
    unknown = "resp_" + "0" * 32
    with http(gateway, "sk-b") as other:
        for method, path in (("GET", "/v1/responses/{}"), ("GET", "/v1/responses/{}/input_items"),
                             ("DELETE", "/v1/responses/{}")):
            theirs = other.request(method, path.format(mine.id))
            missing = other.request(method, path.format(unknown))
            assert theirs.status_code == 404, theirs.text
            _same_apart_from_id(theirs, missing, mine.id, unknown)
        ask = {"model": MODEL, "input": "And?", "max_output_tokens": 16}
        theirs = other.post("/v1/responses", json={**ask, "previous_response_id": mine.id})
        missing = other.post("/v1/responses", json={**ask, "previous_response_id": unknown})
        assert theirs.status_code == 400
        _same_apart_from_id(theirs, missing, mine.id, unknown)
    assert client.responses.retrieve(mine.id).id == mine.id  # the other key deleted nothing


# ------------------------------------------------------------------ refusals and limits


@pytest.mark.parametrize("patch,status,param", [
    ({"tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, 400, "tools[0].type"),
    ({"background": True}, 400, "background"),
    ({"conversation": "conv_123"}, 400, "conversation"),
    ({"prompt": {"id": "pmpt_123"}}, 400, "prompt"),
    ({"include": ["file_search_call.results"]}, 400, "include[0]"),
    ({"truncation": "auto"}, 400, "truncation"),
    ({"max_output_tokens": 8}, 400, "max_output_tokens"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     400, "input[0].content[0]"),
    ({"input": [{"type": "reasoning", "summary": []}]}, 400, "input[0].type"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, 400, "input[0].call_id"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, 400, "tool_choice"),
    # Budgets the chat door checks, named as the Responses request names the field.
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "array", "minItems": 9999}}}},
     400, "text.format.schema"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "array", "minItems": 9999}}]},
     400, "tools[0].parameters"),
    ({"input": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x" * 5000}]}, 400,
     "input[1].content"),
    ({"model": "gpt-99"}, 404, "model"),
    ({"model": "tts-1"}, 400, None),
])
def test_what_cannot_be_served_is_refused_naming_the_field(raw, patch, status, param):
    response = raw.post("/v1/responses", json={"model": MODEL, "input": ASK, "max_output_tokens": 16, **patch})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    if status == 404:
        assert error["code"] == "model_not_found"


def test_sdk_raises_the_refusals(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input=ASK, tools=[{"type": "web_search"}])
    assert caught.value.param == "tools[0].type"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-99", input=ASK)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")


def test_get_with_stream_is_refused(client, raw):
    response = client.responses.create(model=MODEL, input=ASK, max_output_tokens=16)
    refused = raw.get(f"/v1/responses/{response.id}", params={"stream": "true"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stream"


def test_per_key_limits_apply(gateway):
    with http(gateway, "sk-models") as limited:
        # The engine's own id is a model this key may not use: as if it did not exist.
        hidden = limited.post("/v1/responses", json={"model": CHAT_ENGINE, "input": ASK})
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"
        assert limited.post("/v1/responses", json={"model": MODEL, "input": ASK, "max_output_tokens": 16}).status_code == 200
    avoid_minute_edge()
    with http(gateway, "sk-rpm") as limited:
        statuses = [limited.post("/v1/responses", json={"model": MODEL, "input": ASK, "max_output_tokens": 16})
                    for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].json()["error"]["code"] == "rate_limit_exceeded"


# ------------------------------------------------------------------ clients that leave, failures


def test_a_client_that_leaves_mid_stream_stops_generation(gateway, raw):
    with raw.stream("POST", "/v1/responses", json={**LONG, "stream": True}) as response:
        for line in response.iter_lines():
            if "response.output_text.delta" in line:
                break  # hang up after the first token
    left = time.monotonic()
    last = last_busy_after(raw, CHAT_ENGINE, left, bound=1.5)
    assert last < 1.5, f"the chat model computed {last:.2f} s after its client left"
    leave_after(gateway.url, "/v1/responses", 1.0, json=LONG, headers={"authorization": "Bearer sk-a"})
    left = time.monotonic()
    assert last_busy_after(raw, CHAT_ENGINE, left, bound=1.5) < 1.5


def test_a_failure_mid_stream_ends_with_error_and_response_failed(tmp_path, spec):
    from engines.base import Capability
    from engines.catalog import CATALOG, EngineKind
    from engines.registry import ModelRegistry, ModelSpec

    registry = ModelRegistry(
        [ModelSpec("crashy-chat", "crash")], cache_dir=tmp_path,
        catalog={**CATALOG, "crash": EngineKind("tests.faults:ChatFailingMidStream", frozenset({Capability.CHAT}))},
    )
    settings = load_settings()
    settings.engines.preload = []
    live = live_server(settings, registry).start()
    try:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            events = streamed(client, spec, {"model": "crashy-chat", "input": ASK})
            kinds = [e["type"] for e in events]
            assert kinds[-2:] == ["error", "response.failed"], kinds
            assert "".join(e["delta"] for e in of_type(events, "response.output_text.delta")) == "Hello there"
            failed = events[-1]["response"]
            assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
            assert client.get(f"/v1/responses/{failed['id']}").status_code == 404  # nothing kept
    finally:
        live.stop()


# ------------------------------------------------------------------ docs/compatibility.md's table

# A value for each field the table calls ignored or refused, as a client would send it.
SAMPLES = {
    "stream_options": {"include_obfuscation": False},
    "max_tool_calls": 3,
    "reasoning": {"effort": "high", "summary": "auto"},
    "user": "user-1234",
    "safety_identifier": "hashed-user-1234",
    "service_tier": "flex",
    "prompt_cache_key": "docs-tests",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"ttl": "24h"},
    "background": True,
    "conversation": "conv_123",
    "prompt": {"id": "pmpt_123"},
    "moderation": {"mode": "default"},
    "context_management": [{"type": "compaction", "compact_threshold": 1000}],
}


def _rows(status: str) -> list[str]:
    from tests.test_compatibility import tables

    return sorted(f for f, s in tables()["CreateResponse"].items() if s == status)


def test_every_ignored_or_refused_field_has_a_sample_and_refused_ones_are_decoded():
    from gateway.api.responses.protocol import CreateResponseRequest

    assert set(_rows("ignored")) | set(_rows("refused")) == set(SAMPLES)
    decoded = set(CreateResponseRequest.__struct_fields__)
    assert not set(_rows("refused")) - decoded  # an undecoded field is dropped, not refused


@pytest.mark.parametrize("field", _rows("ignored"))
def test_ignored_field_is_answered_as_without_it(raw, field):
    body = {"model": MODEL, "input": "Say one word.", "max_output_tokens": 16, "temperature": 0, "store": False}
    plain = raw.post("/v1/responses", json=body)
    answered = raw.post("/v1/responses", json={**body, field: SAMPLES[field]})
    assert answered.status_code == 200, answered.text
    assert answered.json()["output"][0]["content"][0]["text"] == plain.json()["output"][0]["content"][0]["text"]


@pytest.mark.parametrize("field", _rows("refused"))
def test_refused_field_is_a_400_naming_it(raw, field):
    response = raw.post("/v1/responses", json={"model": MODEL, "input": ASK, field: SAMPLES[field]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error" and error["message"]
