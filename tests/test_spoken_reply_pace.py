"""A spoken reply's audio leaves as soon as it is encoded, not at the model's next token.

The chat stream used to pick synthesised audio up only between the model's tokens, so a
finished sentence's audio waited for the next token; on a busy engine that is as long as
the engine takes. Where the chat model and the speech engine have compute slots of their
own, text keeps streaming while a sentence is voiced: the model here is the real one,
paused after the token that completes the first piece the reply voices (its first sentence,
or that sentence's opening clause: tests/faults.py: StallingLlama; a real model cannot be
made to pause on cue), and that piece's audio must reach the client during that pause.
Where they share the one slot (the default on a small CPU), the next token is asked for
only once the piece is voiced, so its audio comes first.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from adapters.text.sentences import FIRST_CLAUSE_WORDS, SentenceBuffer
from engines.base import Capability
from engines.catalog import CATALOG, EngineKind
from engines.registry import ModelRegistry, ModelSpec
from gateway.settings import load_settings
from tests.conftest import start_server
from tests.faults import StallingLlama


@pytest.fixture(scope="module")
def stalling():
    settings = load_settings()
    catalog = {**CATALOG, "stalling-llama": EngineKind("tests.faults:StallingLlama", frozenset({Capability.CHAT}))}
    specs = [
        ModelSpec(id=model_id, kind="stalling-llama" if model.engine == "llama-cpp" else model.engine,
                  owned_by=model.owned_by, aliases=tuple(model.aliases), options=model.options)
        for model_id, model in settings.models.items()
    ]
    # Two compute slots: the model does not wait for the voice (see the module doc).
    registry = ModelRegistry(specs, cache_dir=settings.engines.cache_path, catalog=catalog, voices=settings.voices,
                             parallel_inference=2)
    settings.engines.preload = ["gpt-4o-mini", "tts-1"]
    live = start_server(settings, registry)
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client
    live.stop()


def _spoken_deltas(client, question: str) -> tuple[list[str], int, float]:
    """The transcript deltas of a streamed spoken answer, how many came before its first
    audio, and when that audio arrived (``time.monotonic``)."""
    deltas: list[str] = []
    before_audio = first_audio = None
    with client.stream("POST", "/v1/chat/completions", json={
        "model": "gpt-4o-mini", "temperature": 0, "max_tokens": 60, "stream": True,
        "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"},
        "messages": [{"role": "user", "content": question}],
    }) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            payload = json.loads(line[len("data: "):])
            if not payload.get("choices"):
                continue
            audio = payload["choices"][0]["delta"].get("audio") or {}
            if audio.get("transcript"):
                deltas.append(audio["transcript"])
            if before_audio is None and audio.get("data") and base64.b64decode(audio["data"]):
                before_audio, first_audio = len(deltas), time.monotonic()
    assert before_audio is not None
    return deltas, before_audio, first_audio


def _first_piece_complete(text: str) -> bool:
    """Whether the text holds the reply's first piece, split as SpokenReply splits it."""
    return bool(SentenceBuffer(first_clause_words=FIRST_CLAUSE_WORDS).push(text))


def test_first_sentence_is_heard_while_the_model_is_still_thinking(stalling):
    StallingLlama.pauses.clear()
    deltas, before_audio, first_audio = _spoken_deltas(stalling, "Tell me a short story about a dragon.")
    assert len(StallingLlama.pauses) == 1, StallingLlama.pauses  # this request's answer
    text, began, ended = StallingLlama.pauses[0]
    # Heard during the pause: after the sentence was complete, before the next token.
    assert began < first_audio < ended, (first_audio - began, "".join(deltas[:before_audio]), text)
    assert len(deltas) > before_audio  # and the answer went on after it


def test_on_one_compute_slot_a_finished_sentence_is_heard_before_the_next_token(http):
    """The default config: llama.cpp and Piper take turns on one slot."""
    deltas, before_audio, _ = _spoken_deltas(http, "Tell me a short story about a dragon.")
    complete = [_first_piece_complete("".join(deltas[:n])) for n in range(len(deltas) + 1)]
    # The first audio came right after the delta that completed the first piece: not
    # one token later (the model's next token waited for the voice), not before it.
    assert complete.index(True) == before_audio, (before_audio, deltas[:before_audio + 2])
    assert len(deltas) > before_audio  # and the answer went on after it
