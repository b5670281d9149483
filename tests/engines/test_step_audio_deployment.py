"""One setting brings up the Step-Audio pipeline: tokenizer, TTS-3B and the vLLM chat LM.

The model folders are tiny random-weight replicas in the real layout (the real weights
cannot be downloaded here) and vLLM is the fake replica of test_vllm_pool.py; everything
else is the real gateway configured by config/step-audio.toml plus ``model_dir``, driven
with the official openai SDK. The TTS computes its speaker's prompt codes with the real
tokenizer engine, borrowed from the registry.
"""

from __future__ import annotations

import json

import cosyvoice.flow.flow  # noqa: E402,F401 - the tier's environment must have these
import funasr  # noqa: E402,F401
import httpx
import pytest
import torch  # noqa: E402,F401
from openai import AsyncOpenAI  # noqa: E402

from gateway.settings import load_settings  # noqa: E402
from tests.audio_utils import stream_info  # noqa: E402
from tests.conftest import live_server  # noqa: E402
from tests.engines.test_step_audio_tokenizer import build_replica as build_tokenizer  # noqa: E402
from tests.engines.test_step_audio_tts import wav_bytes, write_cosyvoice, write_lm  # noqa: E402
from tests.engines.test_vllm_pool import FakeVLLM  # noqa: E402


def build_model_dir(root):
    tokenizer = root / "Step-Audio-Tokenizer"
    tokenizer.mkdir(parents=True)
    build_tokenizer(tokenizer, root / ".build")
    tts = root / "Step-Audio-TTS-3B"
    tts.mkdir()
    write_lm(tts)
    write_cosyvoice(tts / "CosyVoice-300M-25Hz", seed=1)
    write_cosyvoice(tts / "CosyVoice-300M-25Hz-Music", seed=2)
    speakers = root / "speakers"
    speakers.mkdir()
    (speakers / "speakers_info.json").write_text(json.dumps({"Tingting": "Hello there."}))
    (speakers / "Tingting_prompt.wav").write_bytes(wav_bytes(1.0, 44_100))
    return root


@pytest.fixture
async def gateway(tmp_path):
    root = build_model_dir(tmp_path / "models")
    vllm = await FakeVLLM().start()
    vllm.tokens = ["Hello", " there.", " Nice", " to meet you."]
    settings = load_settings(
        "config/step-audio.toml",
        environ={
            "GATEWAY__STEP_AUDIO__MODEL_DIR": str(root),
            "GATEWAY__STEP_AUDIO__VLLM_URLS": json.dumps([vllm.url]),
            "GATEWAY__STEP_AUDIO__TOKENIZER_OPTIONS": '{device = "cpu", cpu_threads = 1}',
            "GATEWAY__STEP_AUDIO__TTS_OPTIONS": '{device = "cpu", max_new_tokens = 24}',
            "GATEWAY__ENGINES__PRELOAD": '["tts-1", "gpt-4o"]',
            "GATEWAY__ENGINES__CACHE_DIR": str(tmp_path / "cache"),
        },
    )
    live = await live_server(settings).astart()
    url = live.url
    yield url, vllm
    live.stop()
    await vllm.stop()


async def test_one_setting_serves_speech_and_spoken_chat_from_step_audio(gateway):
    url, vllm = gateway
    ready = httpx.get(url + "/ready").json()
    assert {"step-audio-tts-3b", "step-audio-tokenizer", "step-audio-chat"} <= set(ready["models"])
    client = AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)

    speech = await client.audio.speech.create(
        model="tts-1", voice="alloy", input="Hello there. How are you?", response_format="wav"
    )
    assert stream_info(speech.content) == ("pcm_s16le", 24000, 1)  # 22.05 kHz resampled
    assert len(speech.content) > 1000

    reply = await client.chat.completions.create(
        model="gpt-4o-audio-preview",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "Hi!"}],
    )
    audio = reply.choices[0].message.audio
    assert audio.transcript == "Hello there. Nice to meet you."
    import base64

    assert base64.b64decode(audio.data)[:4] == b"RIFF"
    assert vllm.requests[-1]["prompt"].endswith("<|BOT|>human\nHi!<|EOT|><|BOT|>assistant\n")


async def test_spoken_question_reaches_step_audio_chat_as_audio_tokens(gateway):
    """The current user turn's audio is tokenised (not transcribed) into <audio_N> tokens:
    2 linguistic then 3 semantic codes, as the human turn of the prompt."""
    import base64
    import re

    url, vllm = gateway
    client = AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    question = wav_bytes(2.0, 16_000)
    reply = await client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Listen:"},
                    {
                        "type": "input_audio",
                        "input_audio": {
                            "data": base64.b64encode(question).decode(),
                            "format": "wav",
                        },
                    },
                ],
            }
        ],
    )
    assert reply.choices[0].message.content == "Hello there. Nice to meet you."
    assert reply.usage.prompt_tokens_details.audio_tokens > 0
    prompt = vllm.requests[-1]["prompt"]
    assert prompt.startswith("<|BOT|>human\nListen:<|EOT|><|BOT|>human\n<audio_")
    values = [int(n) for n in re.findall(r"<audio_(\d+)>", prompt)]
    assert len(values) % 5 == 0 and 70 <= len(values) <= 90  # ~41.67 tokens/s for 2 s
    for start in range(0, len(values), 5):
        assert all(v < 1024 for v in values[start : start + 2])
        assert all(1024 <= v < 5120 for v in values[start + 2 : start + 5])


async def test_a_voice_cloned_over_the_api_speaks(gateway):
    url, _ = gateway
    sample = wav_bytes(1.5, 22_050, freq=180.0)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        created = await client.post(
            "/v1/audio/voices",
            files={"audio_sample": ("ann.wav", sample, "audio/wav")},
            data={"name": "ann", "transcript": "This is my voice.", "model": "tts-1"},
        )
        assert created.status_code == 201, created.text
        assert created.json()["id"] == "ann" and created.json()["model"] == "step-audio-tts-3b"
        voices = (await client.get("/v1/audio/voices")).json()["data"]
        assert "ann" in {v["id"] for v in voices}
        speech = await client.post(
            "/v1/audio/speech",
            json={
                "model": "tts-1",
                "voice": "ann",
                "input": "Hello again.",
                "response_format": "pcm",
            },
        )
        assert speech.status_code == 200 and len(speech.content) > 100
        assert len(speech.content) % 2 == 0
