"""LiveKit Agents' OpenAI plugin (livekit-plugins-openai, pinned in requirements/frameworks.txt)
used directly, without a LiveKit server: the plugin objects an AgentSession would hold,
each with its own defaults (models, voice, formats), pointed at the gateway by base_url."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import llm, stt, utils
from livekit.plugins import openai as lk_openai

from tests.frameworks_tier.helpers import API_KEY, TEXTS, recording, recording_at, wer

SPOKEN = "The weather is lovely in Paris today, and the trains run on time."


@pytest.fixture
async def http_context():
    """The plugins' shared aiohttp session outside a worker, as LiveKit documents for tests
    and scripts (``utils.http_context.open``)."""
    async with utils.http_context.open():
        yield


def frames_of(samples: np.ndarray, rate: int, ms: int = 20) -> list[rtc.AudioFrame]:
    step = rate * ms // 1000
    return [
        rtc.AudioFrame(samples[i:i + step].tobytes(), rate, 1, len(samples[i:i + step]))
        for i in range(0, len(samples), step)
    ]


async def test_stt_over_rest_transcribes_a_real_recording(gateway, http_context):
    """``STT()`` (gpt-4o-mini-transcribe over /v1/audio/transcriptions) on a recording."""
    samples, rate = recording("en_happy_prompt")
    plugin = lk_openai.STT(base_url=gateway.base_url, api_key=API_KEY)
    assert not plugin.capabilities.streaming
    event = await plugin.recognize(frames_of(samples, rate))
    assert event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    heard = event.alternatives[0]
    assert wer(TEXTS["en_happy_prompt"], heard.text) <= 0.2, heard.text
    assert heard.language == "en"


async def test_tts_audio_frames_are_heard_back(gateway, http_context, hear):
    """``TTS()`` (gpt-4o-mini-tts, voice ash, mp3 with stream_format sse): the frames it
    emits, decoded by the plugin, are speech Whisper hears as the text."""
    plugin = lk_openai.TTS(base_url=gateway.base_url, api_key=API_KEY)
    frames = [audio.frame async for audio in plugin.synthesize(SPOKEN)]
    assert frames and {f.sample_rate for f in frames} == {24_000}
    assert {f.num_channels for f in frames} == {1}
    samples = np.concatenate([np.frombuffer(f.data, np.int16) for f in frames])
    assert len(samples) > 24_000 * 2  # seconds of speech, not a click
    assert wer(SPOKEN, hear(samples, 24_000)) <= 0.2


async def test_llm_calls_a_function_tool_and_answers_from_its_output(gateway, http_context):
    """``LLM(model="gpt-4.1")`` streams a tool call with parsed arguments; the plugin's own
    executor runs the tool, and the answer to its output is text."""
    calls: list[str] = []

    @llm.function_tool
    async def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return f"It is sunny and 22 degrees in {city}."

    model = lk_openai.LLM(model="gpt-4.1", base_url=gateway.base_url, api_key=API_KEY)
    context = llm.ChatContext()
    context.add_message(role="user", content="What is the weather in Paris?")
    tool_calls: list[llm.FunctionToolCall] = []
    async with model.chat(chat_ctx=context, tools=[get_weather]) as stream:
        async for chunk in stream:
            if chunk.delta:
                tool_calls.extend(chunk.delta.tool_calls)
    assert [c.name for c in tool_calls] == ["get_weather"]
    assert json.loads(tool_calls[0].arguments) == {"city": "Paris"}

    result = await llm.execute_function_call(tool_calls[0], llm.ToolContext([get_weather]))
    assert calls == ["Paris"] and "sunny" in result.fnc_call_out.output
    context.insert([result.fnc_call, result.fnc_call_out])
    answer = ""
    async with model.chat(chat_ctx=context, tools=[get_weather]) as stream:
        async for chunk in stream:
            if chunk.delta:
                assert not chunk.delta.tool_calls  # a result came back: the answer is text
                answer += chunk.delta.content or ""
    assert answer.strip()
    assert calls == ["Paris"]


async def test_stt_over_realtime_transcribes_a_streamed_recording(gateway, http_context):
    """``STT(use_realtime=True)``: a transcription session opened on
    ``/v1/realtime?intent=transcription&model=gpt-4o-mini-transcribe``, the plugin's server
    VAD (350 ms of silence ends a segment), the recording streamed in 20 ms frames then
    silence; the final transcripts of its segments have its words."""
    plugin = lk_openai.STT(base_url=gateway.base_url, api_key=API_KEY, use_realtime=True)
    assert plugin.capabilities.streaming
    samples = recording_at("zero_shot_en_prompt", 24_000)
    audio = np.concatenate([samples, np.zeros(24_000 * 2, np.int16)])
    stream = plugin.stream()
    finals: list[str] = []
    speech = {"started": 0, "ended": 0}

    async def read() -> None:
        async for event in stream:
            if event.type == stt.SpeechEventType.START_OF_SPEECH:
                speech["started"] += 1
            elif event.type == stt.SpeechEventType.END_OF_SPEECH:
                speech["ended"] += 1
            elif event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                finals.append(event.alternatives[0].text)

    def settled() -> bool:  # every segment the server VAD ended has its final transcript
        return speech["ended"] >= 1 and speech["started"] == speech["ended"] <= len(finals)

    reader = asyncio.create_task(read())
    try:
        for frame in frames_of(audio, 24_000):
            if reader.done():  # the stream failed: its error is logged above
                break
            stream.push_frame(frame)
            await asyncio.sleep(0.002)
        for _ in range(600):
            if settled() or reader.done():
                break
            await asyncio.sleep(0.1)
    finally:
        reader.cancel()
        await stream.aclose()
        await plugin.aclose()
    assert settled(), (speech, finals)
    assert wer(TEXTS["zero_shot_en_prompt"], " ".join(finals)) <= 0.25, finals
