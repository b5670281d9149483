"""The OpenAI Agents SDK (openai-agents with its voice extra, pinned in
requirements/frameworks.txt): ``RealtimeAgent`` over the realtime WebSocket, ``Agent`` with
``Runner.run`` / ``Runner.run_streamed``, and ``VoicePipeline``, each with the SDK's own
defaults (models, voices, turn detection) and pointed at the gateway the documented way:
``set_default_openai_client`` and ``set_tracing_disabled`` (no traces leave the machine), a
``url`` for the realtime model, ``OpenAIVoiceModelProvider`` for the voice pipeline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIProvider,
    RunConfig,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.items import ToolCallItem, ToolCallOutputItem
from agents.realtime import RealtimeAgent, RealtimeRunner
from agents.voice import (
    AudioInput,
    OpenAIVoiceModelProvider,
    StreamedAudioInput,
    VoicePipeline,
    VoicePipelineConfig,
    VoiceWorkflowBase,
    VoiceWorkflowHelper,
)
from openai import AsyncOpenAI

from tests.frameworks_tier.helpers import API_KEY, TEXTS, assert_heard, recording_at, wer

QUESTION = "What is the weather in Paris?"
# A 135M model rambles: its answers are bounded, by far more than one sentence needs (a
# streamed Responses answer cut at the limit ends "incomplete", which the SDK raises).
# Greedy: asked for one short sentence, the small model sampled past 200 tokens now and
# then, and the SDK's streamed run raises on the response.incomplete that follows.
SHORT = ModelSettings(max_tokens=200, temperature=0)


@pytest.fixture
def client(gateway) -> AsyncOpenAI:
    """The gateway as the SDK's default client (``set_default_openai_client``), tracing off."""
    client = AsyncOpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    set_tracing_disabled(True)
    set_default_openai_client(client, use_for_tracing=False)
    return client


def weather_tool(calls: list[str]):
    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return f"It is sunny and 22 degrees in {city}."

    return get_weather


def weather_agent(calls: list[str], **kwargs) -> Agent:
    return Agent(
        name="Assistant", instructions="Answer in one short sentence.",
        tools=[weather_tool(calls)], model_settings=SHORT, **kwargs,
    )


def assert_tool_ran(items, calls: list[str]) -> None:
    """The run called the tool once with parsed arguments, and fed its output back."""
    assert calls == ["Paris"]
    called = [i for i in items if isinstance(i, ToolCallItem)]
    outputs = [i for i in items if isinstance(i, ToolCallOutputItem)]
    assert len(called) == 1 and json.loads(called[0].raw_item.arguments) == {"city": "Paris"}
    assert len(outputs) == 1 and "sunny" in str(outputs[0].output)


# --- RealtimeAgent over /v1/realtime ---


async def test_realtime_agent_calls_a_tool_and_speaks_the_answer(gateway, hear):
    """A ``RealtimeAgent`` with a function tool, the SDK's default model (gpt-realtime-2.1)
    and settings (voice ash, semantic_vad) on ``/v1/realtime``: a text message makes the
    model call the tool, the SDK runs it and sends its output, and the spoken answer that
    follows is audio Whisper hears as the answer's transcript."""
    calls: list[str] = []
    agent = RealtimeAgent(
        name="Assistant", instructions="You are a helpful assistant.", tools=[weather_tool(calls)]
    )
    runner = RealtimeRunner(agent, config={"model_settings": {"max_output_tokens": 60}})
    session = await runner.run(model_config={
        "url": gateway.ws_url + "/realtime?model=gpt-realtime-2.1", "api_key": API_KEY,
    })
    audio = bytearray()
    history, errors, tool_output, responses = [], [], None, 0
    async with session:
        await session.send_message(QUESTION)

        async def follow() -> None:
            nonlocal history, tool_output, responses
            async for event in session:
                if event.type == "error":
                    errors.append(event.error)
                elif event.type == "tool_end":
                    tool_output = event.output
                elif event.type == "audio" and responses >= 1:
                    audio.extend(event.audio.data)
                elif event.type == "history_updated":
                    history = event.history
                elif event.type == "agent_end":
                    # Two responses: the tool call, then (after its output) the answer.
                    responses += 1
                    if responses >= 2 and tool_output is not None:
                        return

        await asyncio.wait_for(follow(), timeout=120)
    assert not errors, errors
    assert calls == ["Paris"] and "sunny" in tool_output
    call = next(i for i in history if i.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.output and "sunny" in call.output
    answer = [i for i in history if i.type == "message" and i.role == "assistant"][-1]
    transcript = "".join(part.transcript or "" for part in answer.content)
    assert transcript.strip()
    samples = np.frombuffer(bytes(audio), np.int16)  # pcm16 at 24 kHz, the session's format
    assert_heard(transcript, hear(samples, 24_000))


# --- Agent + Runner ---


async def test_runner_over_chat_completions_calls_a_tool(client):
    """``Runner.run`` with the SDK's default model (gpt-5.6-luna) through its chat
    completions model (``OpenAIProvider(use_responses=False)``): the tool is called with
    parsed arguments, its output goes back, the final output is text."""
    calls: list[str] = []
    result = await Runner.run(
        weather_agent(calls), QUESTION,
        run_config=RunConfig(model_provider=OpenAIProvider(use_responses=False)),
    )
    assert_tool_ran(result.new_items, calls)
    assert isinstance(result.final_output, str) and result.final_output.strip()


async def test_runner_run_over_responses_calls_a_tool(client):
    """``Runner.run`` as the SDK does by default: the Responses API (``POST /v1/responses``)
    with the default model."""
    calls: list[str] = []
    result = await Runner.run(weather_agent(calls), QUESTION)
    assert_tool_ran(result.new_items, calls)
    assert isinstance(result.final_output, str) and result.final_output.strip()


async def test_runner_run_streamed_over_responses_calls_a_tool(client):
    """``Runner.run_streamed`` on the Responses API (streamed ``POST /v1/responses``): the
    tool-call and tool-output items stream as run items, then the answer's text deltas."""
    calls: list[str] = []
    result = Runner.run_streamed(weather_agent(calls), QUESTION)
    items, deltas = [], []
    async for event in result.stream_events():
        if event.type == "run_item_stream_event":
            items.append(event.item)
        elif event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            deltas.append(event.data.delta)
    assert_tool_ran(items, calls)
    assert result.is_complete and deltas and "".join(deltas) == result.final_output


# --- VoicePipeline ---


class RecordingWorkflow(VoiceWorkflowBase):
    """One agent per turn (as ``SingleAgentVoiceWorkflow``), keeping what the pipeline heard
    and the text the agent said, which the pipeline speaks."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.heard: list[str] = []
        self.said: list[str] = []
        self.voiced: list[str] = []  # what the pipeline asked the voice to say (voice_pipeline)

    async def run(self, transcription: str) -> AsyncIterator[str]:
        self.heard.append(transcription)
        result = Runner.run_streamed(self.agent, transcription)
        text = ""
        async for chunk in VoiceWorkflowHelper.stream_text_from(result):
            text += chunk
            yield chunk
        self.said.append(text)


def voice_agent(client: AsyncOpenAI) -> Agent:
    """The agent behind the voice pipelines, on chat completions (``OpenAIChatCompletionsModel``)
    so that these tests need no Responses API."""
    return Agent(
        name="Assistant", instructions="Answer in one short sentence.",
        model=OpenAIChatCompletionsModel(model="gpt-4.1", openai_client=client),
        model_settings=ModelSettings(max_tokens=40),
    )


class VoicedTexts(OpenAIVoiceModelProvider):
    """The SDK's own provider; the texts its pipeline asks the voice to say are kept, since
    its splitter voices what it takes for sentences (an answer cut off by ``max_tokens``
    inside a markdown list had its list left unsaid)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.voiced: list[str] = []

    def get_tts_model(self, model_name: str | None):
        model, voiced = super().get_tts_model(model_name), self.voiced
        run = model.run

        def recording_run(text, settings):
            voiced.append(text)
            return run(text, settings)

        model.run = recording_run
        return model


def voice_pipeline(client: AsyncOpenAI, workflow: VoiceWorkflowBase) -> VoicePipeline:
    """The SDK's default voice models (gpt-transcribe, gpt-4o-mini-tts) from the gateway."""
    provider = VoicedTexts(openai_client=client)
    workflow.voiced = provider.voiced
    return VoicePipeline(workflow=workflow, config=VoicePipelineConfig(model_provider=provider))


async def spoken(result) -> tuple[np.ndarray, list[str]]:
    """The pipeline's audio (int16 at 24 kHz) and its lifecycle events, to the session's end;
    an error event fails the test."""
    chunks, lifecycle = [], []
    async for event in result.stream():
        if event.type == "voice_stream_event_audio" and event.data is not None:
            chunks.append(np.asarray(event.data))
        elif event.type == "voice_stream_event_lifecycle":
            lifecycle.append(event.event)
        elif event.type == "voice_stream_event_error":
            raise AssertionError(f"voice pipeline error: {event.error!r}")
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if audio.dtype != np.int16:
        audio = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    return audio, lifecycle


async def test_voice_pipeline_hears_a_recording_and_speaks_its_answer(client, hear):
    """``VoicePipeline`` on one ``AudioInput`` (a real recording): the transcription has its
    words (/v1/audio/transcriptions), and the spoken answer (/v1/audio/speech, pcm) is
    audio Whisper hears as the agent's text."""
    workflow = RecordingWorkflow(voice_agent(client))
    samples = recording_at("zero_shot_en_prompt", 24_000)
    result = await voice_pipeline(client, workflow).run(AudioInput(buffer=samples))
    audio, lifecycle = await asyncio.wait_for(spoken(result), timeout=120)
    assert lifecycle[0] == "turn_started" and "session_ended" in lifecycle
    assert len(workflow.heard) == 1 and wer(TEXTS["zero_shot_en_prompt"], workflow.heard[0]) <= 0.25
    assert workflow.said and workflow.said[0].strip()
    voiced = " ".join(workflow.voiced)
    assert voiced.strip() and workflow.said[0].startswith(workflow.voiced[0].strip()[:10])
    assert_heard(voiced, hear(audio, 24_000))


async def test_voice_pipeline_streamed_input_hears_a_recording_and_speaks(client, hear):
    """``VoicePipeline`` on a ``StreamedAudioInput`` fed a real recording in 100 ms chunks,
    then silence, then the end of input: the SDK opens a transcription session
    (``/v1/realtime?intent=transcription``, gpt-transcribe, semantic_vad), each completed
    transcript starts a turn, and the turns' spoken answers are heard back."""
    workflow = RecordingWorkflow(voice_agent(client))
    streamed = StreamedAudioInput()
    result = await voice_pipeline(client, workflow).run(streamed)
    samples = recording_at("zero_shot_en_prompt", 24_000)
    audio_in = np.concatenate([samples, np.zeros(24_000, np.int16)])

    async def feed() -> None:
        for i in range(0, len(audio_in), 2400):
            await streamed.add_audio(audio_in[i:i + 2400])
            await asyncio.sleep(0.02)
        await streamed.add_audio(None)  # the end of input: the SDK commits what is left

    feeder = asyncio.create_task(feed())
    try:
        audio, lifecycle = await asyncio.wait_for(spoken(result), timeout=150)
    finally:
        feeder.cancel()
    assert "turn_started" in lifecycle and lifecycle[-1] == "session_ended", lifecycle
    heard = " ".join(workflow.heard)  # server VAD may cut the recording into turns
    assert wer(TEXTS["zero_shot_en_prompt"], heard) <= 0.25, workflow.heard
    said = " ".join(workflow.said)
    assert said.strip() and len(workflow.said) == len(workflow.heard)
    assert_heard(" ".join(workflow.voiced), hear(audio, 24_000))
