"""The same chat journeys through the official openai Node SDK (tests/node/checks.mjs).

The script runs against the live gateway with the SDK's own stream helpers, which throw
on a missing role or finish_reason or a malformed tool-call snapshot.
"""

from __future__ import annotations

import base64
import json
import subprocess

import jsonschema
import numpy as np
import pytest

from tests.conftest import NODE_DIR
from tests.test_chat import WEATHER_SCHEMA
from tests.test_transcription import wer


@pytest.fixture(scope="module")
def observations(node_sdk, base_url, openai_client, tmp_path_factory) -> dict:
    wav = openai_client.audio.speech.create(model="tts-1", voice="alloy", input="What is the capital of France?", response_format="wav").content
    path = tmp_path_factory.mktemp("node") / "question.wav"
    path.write_bytes(wav)
    result = subprocess.run(
        [node_sdk, str(NODE_DIR / "checks.mjs"), base_url + "/v1", str(path)],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_node_streams_a_text_answer(observations):
    text = observations["text"]
    assert text["deltas"] >= 2 and text["joined"] == text["content"] and text["content"].strip()
    assert text["role"] == "assistant" and text["finish"] == "stop"


def test_node_streams_a_tool_call_that_parses_and_matches_the_schema(observations):
    tool = observations["tool"]
    assert tool["id"].startswith("call_") and tool["id"].count("call_") == 1
    assert tool["name"] == "get_weather" and tool["finish"] == "tool_calls" and tool["fragments"] >= 2
    jsonschema.validate(json.loads(tool["arguments"]), WEATHER_SCHEMA)


def test_node_sends_the_tool_result_and_gets_an_answer(observations):
    assert observations["after_tool"]["content"] and observations["after_tool"]["finish"] in ("stop", "length")


def test_node_gets_audio_that_decodes(observations):
    audio = observations["audio"]
    assert audio["riff"] == "RIFF" and audio["bytes"] > 24000 and audio["transcript"]
    assert audio["id"].startswith("audio_") and audio["audio_tokens"] > 0


def test_node_streams_audio_whose_transcript_is_the_text(observations, openai_client):
    streamed = observations["streamed_audio"]
    pcm = base64.b64decode(streamed["pcm_b64"])
    assert streamed["pcm_bytes"] == len(pcm) and len(pcm) % 2 == 0 and len(pcm) > 24000
    assert streamed["transcript"].strip() and streamed["final_transcript"] == streamed["transcript"]
    assert streamed["final_id"].count("audio_") == 1 and streamed["finish"] in ("stop", "length")
    from adapters.audio.encode import encode_all

    wav = encode_all(np.frombuffer(pcm, np.int16).astype(np.float32) / 32768, 24000, "wav")
    heard = openai_client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), language="en").text
    assert wer(streamed["transcript"], heard) <= 0.35, (streamed["transcript"], heard)


def test_node_asks_with_input_audio(observations):
    assert observations["input_audio"]["content"] and observations["input_audio"]["audio_tokens"] > 0


def test_node_continues_by_audio_id(observations):
    assert observations["by_audio_id"]["content"]
