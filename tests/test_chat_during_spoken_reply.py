"""Nothing waits behind a speaking answer: a chat request sent while a long spoken reply
streams is answered within twice its time alone.

The real gateway on the real embedded engines (SmolLM2 on llama.cpp, Piper), which share
one compute slot. The request used to wait for the reply's whole generation (one llama.cpp
context), and then its tokens took turns with the reply's tokens and sentences. Alone
times are measured right before, on the same machine and under the same load.

The chat model evaluates prompts on one thread here (``n_threads_batch = 1``): on two,
llama.cpp's spinning threads stalled a prompt for seconds whenever other processes took
the cores (engines/embedded/llama.py, Threads), in this test's alone runs and during the
reply alike, so that the comparison measured the host's load rather than the gateway.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from gateway.settings import load_settings
from tests.conftest import start_server

QUESTION = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Name five animals and say one thing about each."}],
    "max_tokens": 40,
    "temperature": 0,
    "seed": 1,
}
STORY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "user", "content": "Tell me a very long story about a dragon who learns to sing."}
    ],
    "max_tokens": 500,
    "temperature": 0,
    "seed": 1,
    "stream": True,
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "pcm16"},
}


@pytest.fixture(scope="module")
def gateway():
    settings = load_settings()
    llm = settings.models["smollm2-135m"]
    llm.options = {**llm.options, "n_threads_batch": 1}
    settings.engines.preload = ["gpt-4o-mini", "tts-1"]
    live = start_server(settings)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(gateway):
    with httpx.Client(base_url=gateway.url, timeout=120) as http:
        yield http


def _ask(http: httpx.Client) -> tuple[float, str]:
    started = time.perf_counter()
    response = http.post("/v1/chat/completions", json=QUESTION)
    assert response.status_code == 200, response.text
    return time.perf_counter() - started, response.json()["choices"][0]["message"]["content"]


class _SpokenReply(threading.Thread):
    """Streams STORY's spoken answer until told to stop (leaving closes the stream, which
    stops the reply); ``speaking`` is set at its first audio."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.speaking, self.stop = threading.Event(), threading.Event()
        self.ended = False  # the reply ended on its own

    def run(self) -> None:
        url = self.url + "/v1/chat/completions"
        with httpx.stream("POST", url, json=STORY, timeout=300) as response:
            for line in response.iter_lines():
                if self.stop.is_set():
                    return
                if line.startswith("data: {") and '"data":"' in line:
                    delta = json.loads(line[len("data: "):])["choices"][0]["delta"]
                    if (delta.get("audio") or {}).get("data"):
                        self.speaking.set()
        self.ended = True
        self.speaking.set()


@dataclass
class _Round:
    alone: list[float]  # seconds, each right before the reply
    during: float
    answers: set[str]  # every answer the request got, alone and during the reply
    reply_still_speaking: bool  # when the answer during it was complete

    @property
    def typical(self) -> float:
        return statistics.median(self.alone)

    def __str__(self) -> str:
        alone = ", ".join(f"{seconds:.3f}" for seconds in self.alone)
        return f"{self.during:.3f} s during the spoken reply, {self.typical:.3f} s alone ({alone})"


def _round(gateway, client: httpx.Client) -> _Round:
    alone = [_ask(client) for _ in range(3)]
    reply = _SpokenReply(gateway.url)
    reply.start()
    try:
        assert reply.speaking.wait(120) and not reply.ended, "the spoken reply never spoke"
        during = _ask(client)
        still_speaking = not reply.ended
    finally:
        reply.stop.set()
        reply.join(120)
    answers = {text for _, text in [*alone, during]}
    return _Round([seconds for seconds, _ in alone], during[0], answers, still_speaking)


def test_a_chat_request_sent_during_a_long_spoken_reply_is_answered_within_twice_its_time_alone(
    gateway, client
):
    """One retry: the machines that run the tests are shared, and another process taking
    the cores for a moment can slow one request by more than its margin (measured: 1.4x
    its time alone on an idle 2-core host, 1.0-1.7x under a load of 5 to 10). A gateway
    that queues the request behind the reply fails both rounds by far (19x idle, 14-21x
    loaded, when it gave a generation the whole llama.cpp context)."""
    _ask(client)  # warm: the first answer after start-up pays for cold caches
    rounds = [_round(gateway, client)]
    if rounds[0].during > 2 * rounds[0].typical:
        rounds.append(_round(gateway, client))
    print("\n" + "\n".join(f"answered in {r}" for r in rounds))
    last = rounds[-1]
    assert last.during <= 2 * last.typical, f"answered in {last}"
    assert last.reply_still_speaking  # so the answer did not wait for the reply
    assert len(last.answers) == 1  # the same during the reply: the generations stayed apart
