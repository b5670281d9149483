"""/v1/responses on the Step-Audio deployment (config/step-audio.toml): the names OpenAI
clients use reach Step-Audio-Chat, and the Responses input becomes its prompt.

Step-Audio-Chat (130B on vLLM) cannot run here, so the replica is the fake vLLM server of
tests/engines/test_vllm_pool.py (real HTTP, vLLM's streaming format). What is real: the
settings, the registry, the prompt builder, the Responses door and the SDK's client.
"""

from __future__ import annotations

from openai import AsyncOpenAI

from adapters.step_audio.prompt import build_prompt
from engines.chat import ChatMessage
from tests.conftest import live_server
from tests.engines.test_vllm_pool import FakeVLLM, step_audio_settings

REPLY = ["Hello", " from", " Step", "-Audio."]


async def test_a_response_is_answered_by_step_audio_chat(tmp_path):
    replica = await FakeVLLM().start()
    replica.tokens = REPLY
    live = await live_server(step_audio_settings([replica.url], tmp_path)).astart("/health")
    try:
        client = AsyncOpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
        first = await client.responses.create(
            model="gpt-4.1", instructions="Be brief.", input="Hi there"
        )
        assert first.status == "completed"
        assert first.output_text == "Hello from Step-Audio."
        sent = replica.requests[-1]
        assert sent["model"] == "step-audio-chat"
        assert sent["prompt"] == build_prompt(
            [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi there")]
        )
        # Continued by id, streamed: the stored turn comes before the new one.
        events = [e async for e in await client.responses.create(
            model="gpt-5-mini", previous_response_id=first.id, input="And again?", stream=True
        )]
        assert events[-1].type == "response.completed"
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas == "Hello from Step-Audio."
        assert replica.requests[-1]["prompt"] == build_prompt([
            ChatMessage("user", "Hi there"),
            ChatMessage("assistant", "Hello from Step-Audio."),
            ChatMessage("user", "And again?"),
        ])
    finally:
        live.stop()
        await replica.stop()
