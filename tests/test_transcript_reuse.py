"""Earlier spoken turns are transcribed once, however often the conversation is sent.

A chat client sends the whole conversation with every request, so a turn spoken at the
start comes back as history each time. The gateway keeps each audio's transcript by its
content (adapters.chat.transcripts) and reuses it. Everything here is real: Piper speaks the
question, Whisper transcribes it, SmolLM2 answers; the one addition is a counter wrapped
around the Whisper engine's transcribe, to see how often it ran.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from engines.base import Capability
from engines.registry import registry_from_settings
from gateway.settings import load_settings
from tests.conftest import live_server

pytestmark = pytest.mark.timeout(300)


def spoken(wav: bytes) -> dict:
    data = base64.b64encode(wav).decode()
    return {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]}


async def test_an_earlier_spoken_turn_is_transcribed_once_across_three_requests():
    settings = load_settings()
    settings.engines.preload = []
    registry = registry_from_settings(settings)
    calls: list[int] = []
    async with registry.use(settings.chat.input_audio_model, Capability.TRANSCRIPTION) as whisper:
        transcribe = whisper.transcribe

        async def counting(audio, options):
            calls.append(len(audio))
            return await transcribe(audio, options)

        whisper.transcribe = counting
    live = await live_server(settings, registry).astart("/health")
    try:
        async with httpx.AsyncClient(base_url=live.url, timeout=240) as client:
            speech = await client.post(
                "/v1/audio/speech",
                json={"model": "tts-1", "voice": "alloy", "input": "What is the capital of France?", "response_format": "wav"},
            )
            assert speech.status_code == 200
            other = await client.post(
                "/v1/audio/speech",
                json={"model": "tts-1", "voice": "alloy", "input": "And of Italy?", "response_format": "wav"},
            )
            conversation = [spoken(speech.content)]
            answers = []
            for follow_up in ["Say it again.", "Thanks."]:
                response = await client.post(
                    "/v1/chat/completions",
                    json={"model": "gpt-4o-mini", "max_tokens": 8, "temperature": 0, "messages": conversation},
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())
                conversation += [
                    {"role": "assistant", "content": response.json()["choices"][0]["message"]["content"]},
                    {"role": "user", "content": follow_up},
                ]
            response = await client.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "max_tokens": 8, "temperature": 0, "messages": [*conversation, spoken(other.content)]},
            )
            assert response.status_code == 200, response.text
            answers.append(response.json())
        # The first question was heard once, in the first request; the new one once.
        assert len(calls) == 2
        # Usage still counts the earlier turn's audio in every request.
        audio_tokens = [a["usage"]["prompt_tokens_details"]["audio_tokens"] for a in answers]
        assert audio_tokens[0] == audio_tokens[1] > 0 and audio_tokens[2] > audio_tokens[1]
        assert answers[0]["usage"]["prompt_tokens"] <= answers[1]["usage"]["prompt_tokens"]
    finally:
        live.stop()
        await registry.close()
