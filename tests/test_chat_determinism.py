"""At temperature 0 the same chat request gets the same answer, whatever came before it.

A gateway of its own is started for this file, so that the first question really is the
first thing its chat model evaluates. Between the repeats come requests of every other
kind, each leaving the llama.cpp context in a different state (another prompt, a grammar,
logprobs, a stream cut short, a spoken reply whose speech engine competes for the cores).
"""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.settings import load_settings
from tests.conftest import live_server

MODEL = "gpt-4o-mini"
QUESTION = {
    "model": MODEL,
    "temperature": 0,
    "max_tokens": 30,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _other(content: str, **extra) -> dict:
    return {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": content}], **extra}


OTHER_REQUESTS = {
    "text": _other("Tell me a joke about cats."),
    "tools": _other("What is the weather in Berlin?", tools=[WEATHER_TOOL], tool_choice="required"),
    "json": _other("Describe a dog.", response_format={"type": "json_object"}),
    "logprobs": _other("Say hello.", logprobs=True, top_logprobs=3),
    "spoken reply": _other(
        "Name a color.",
        model="gpt-4o-audio-preview",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
    ),
}


@pytest.fixture(scope="module")
def fresh_gateway():
    settings = load_settings()
    settings.engines.preload = [MODEL, "tts-1"]
    live = live_server(settings).start()
    yield live
    live.stop()


def _answer(client: httpx.Client) -> str:
    response = client.post("/v1/chat/completions", json=QUESTION)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def _cancelled_stream(client: httpx.Client) -> None:
    """Read the first two events of a long streamed answer, then hang up."""
    body = _other("Write a long story about a dragon.", stream=True, max_tokens=200)
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = 0
        for line in response.iter_lines():
            if line.startswith("data: {"):
                json.loads(line[6:])
                events += 1
                if events == 2:
                    break


def test_same_question_same_answer_whatever_came_before(fresh_gateway):
    with httpx.Client(base_url=fresh_gateway.url, timeout=120) as client:
        first = _answer(client)  # nothing evaluated before it
        answers = {"first after start": first, "asked again at once": _answer(client)}
        for kind, body in OTHER_REQUESTS.items():
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, (kind, response.text)
            answers[f"after {kind}"] = _answer(client)
        _cancelled_stream(client)
        answers["after a cancelled stream"] = _answer(client)
        answers["last, twice in a row"] = _answer(client)
    assert first.strip()
    differing = {kind: text for kind, text in answers.items() if text != first}
    assert not differing, f"first answer {first!r}; differing: {differing}"
