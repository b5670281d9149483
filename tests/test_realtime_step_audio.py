"""/v1/realtime on the Step-Audio deployment (config/step-audio.toml): the realtime model
names reach Step-Audio-Chat, and a conversation's items become its prompt.

Step-Audio-Chat (130B on vLLM) cannot run here, so the replica is the fake vLLM server of
tests/engines/test_vllm_pool.py (real HTTP, vLLM's streaming format); the turn is text in
and text out, since the Step-Audio tokenizer and TTS-3B need their GPU weights. What is
real: the settings, the registry, the prompt builder, the session and the SDK's client.
"""

from __future__ import annotations

from openai import AsyncOpenAI

from adapters.step_audio.prompt import build_prompt
from engines.chat import ChatMessage
from tests.conftest import live_server
from tests.engines.test_vllm_pool import FakeVLLM, step_audio_settings
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
