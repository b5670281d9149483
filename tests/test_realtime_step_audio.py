"""/v1/realtime on the Step-Audio deployment (config/step-audio.toml): the realtime model
names reach Step-Audio-Chat, and a conversation's items become its prompt.

Step-Audio-Chat (130B on vLLM) cannot run here, so the replica is the fake vLLM server of
tests/engines/test_vllm_pool.py (real HTTP, vLLM's streaming format); the turn is text in
and text out, since the Step-Audio tokenizer and TTS-3B need their GPU weights. What is
real: the settings, the registry, the prompt builder, the session and the SDK's client.
"""

from __future__ import annotations

import msgspec
from openai import AsyncOpenAI

from adapters.step_audio.prompt import build_prompt
from engines.chat import ChatMessage
from tests.conftest import live_server
from tests.engines.test_vllm_pool import FakeVLLM, step_audio_settings
from tests.faults import EnginesRegistry
from tests.test_realtime import Session


async def test_realtime_names_reach_step_audio_chat_with_the_conversation_as_prompt(tmp_path, spec):
    replica = await FakeVLLM().start()
    replica.tokens = ["Hello", " from", " Step", "-Audio."]
    settings = step_audio_settings([replica.url], tmp_path)
    live = await live_server(settings).astart("/health")
    try:
        client = AsyncOpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            s = Session(conn, spec)
            await conn.session.update(session={
                "type": "realtime", "instructions": "Be brief.", "output_modalities": ["text"],
                "audio": {"input": {"turn_detection": None}},
            })
            await s.until("session.updated")
            await conn.conversation.item.create(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}
            )
            await conn.response.create()
            done = await s.until("response.done")
        assert done["response"]["status"] == "completed"
        assert done["response"]["output"][0]["content"][0]["text"] == "Hello from Step-Audio."
        sent = replica.requests[-1]
        assert sent["model"] == "step-audio-chat"
        assert sent["prompt"] == build_prompt(
            [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi there")]
        )
    finally:
        live.stop()
        await replica.stop()


# --------------------------------------------------------------- the spoken turn's tokens


class _Tokenizer:
    """Stands for the Step-Audio tokenizer."""

    async def tokenize(self, audio, sample_rate):
        from engines.base import AudioTokens

        return AudioTokens([], [], "<audio_1><audio_2>", len(audio) / sample_rate)


class _Recogniser:
    """Hears every audio item as ``heard`` ("": the transcription found no words)."""

    sample_rate = 16_000

    def __init__(self, heard: str) -> None:
        self.heard = heard

    async def transcribe(self, audio, options):
        from types import SimpleNamespace

        async def segments():
            if self.heard:
                yield SimpleNamespace(text=self.heard)

        info = SimpleNamespace(language="en", duration=len(audio) / 16_000)
        return SimpleNamespace(info=info, segments=segments())


class _StepAudioChat:
    """A chat engine that reads audio tokens, keeping the prompts it is given."""

    accepts_audio_tokens = True

    def __init__(self) -> None:
        self.prompts: list[list[ChatMessage]] = []

    async def generate(self, request):
        from engines.chat import Finish, TextDelta

        self.prompts.append(request.messages)
        yield TextDelta("Ok.")
        yield Finish("stop", 1, 1)


async def _prompt_of(heard: str, items: list[dict], response: dict) -> list[tuple]:
    """The prompt Step-Audio-Chat gets for ``response`` after ``items`` (each audio item a
    second of silence at 24 kHz), as (role, text, audio tokens) triples."""
    import base64
    import json

    from gateway.api.realtime.serving import RealtimeSession
    from gateway.settings import load_settings

    registry = EnginesRegistry(chat=_StepAudioChat(), audio_tokens=_Tokenizer(),
                               transcription=_Recogniser(heard))

    async def send(event):
        wire = msgspec.to_builtins(event)
        assert wire["type"] != "error", wire

    session = RealtimeSession(registry, load_settings(), "step-audio-chat", send)
    await session.handle(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["text"], "instructions": "",
        "audio": {"input": {"turn_detection": None}}}}))
    audio = base64.b64encode(b"\0\0" * 24_000).decode()
    for item in items:
        if item == "audio":
            item = {"type": "message", "role": "user",
                    "content": [{"type": "input_audio", "audio": audio}]}
        await session.handle(json.dumps({"type": "conversation.item.create", "item": item}))
    await session.handle(json.dumps({"type": "response.create", "response": response}))
    await session.response.task
    [prompt] = registry.engines["chat"].prompts
    return [(m.role, m.content, m.audio_tokens) for m in prompt]


def _said(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def test_the_spoken_turn_is_read_as_audio_tokens_in_its_own_place():
    spoken = ("user", None, "<audio_1><audio_2>")
    # the spoken turn is the last: its tokens stand in for its transcript
    assert await _prompt_of("Hi", [_said("Hello"), "audio"], {}) == [
        ("user", "Hello", None), spoken]
    # a spoken turn with no transcript still takes its own place, not the message before
    assert await _prompt_of("", [_said("Hello"), "audio"], {}) == [
        ("user", "Hello", None), spoken]
    # conversation "none": the response reads its own input only, the spoken turn not at all
    assert await _prompt_of("Hi", ["audio"], {"conversation": "none",
                                             "input": [_said("Summarise this.")]}) == [
        ("user", "Summarise this.", None)]
    # input after a spoken conversation: the typed turn is the current one
    assert await _prompt_of("Hi", ["audio"], {"input": [_said("Now in French.")]}) == [
        ("user", "Hi", None), ("user", "Now in French.", None)]
