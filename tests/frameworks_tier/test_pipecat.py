"""Pipecat's OpenAI services (pipecat-ai[openai], pinned in requirements/frameworks.txt) in
pipelines fed frames in memory: no transport, no server but the gateway. Each service keeps
its own defaults (models, voice, formats), pointed at the gateway by base_url."""

from __future__ import annotations

import asyncio
from typing import Callable

import numpy as np
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    LLMContextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import WorkerRunner
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.openai.stt import OpenAIRealtimeSTTService, OpenAISTTService
from pipecat.services.openai.tts import OpenAITTSService

from tests.frameworks_tier.helpers import API_KEY, TEXTS, recording_at, wer

SPOKEN = "The weather is lovely in Paris today, and the trains run on time."


class Recorder(FrameProcessor):
    """The pipeline's last processor: keeps every frame that reaches it downstream and says
    when one it waits for has come."""

    def __init__(self, until: Callable[[Frame], bool]) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.until = until
        self.done = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
            if self.until(frame):
                self.done.set()
        await self.push_frame(frame, direction)


async def run_pipeline(
    processors: list[FrameProcessor],
    frames: list[Frame],
    *,
    until: Callable[[Frame], bool] | None = None,
    done: asyncio.Event | None = None,
    sample_rate: int = 16_000,
    timeout: float = 90,
) -> list[Frame]:
    """Run ``processors`` as a pipeline, queue ``frames``, wait until a frame ``until``
    accepts reaches the end (or ``done`` is set, or the pipeline ends by itself), then end
    it gracefully (an EndFrame, so queued work finishes). The frames that reached the end,
    in order; the errors the pipeline reported fail the test."""
    recorder = Recorder(until or (lambda frame: False))
    worker = PipelineWorker(
        Pipeline([*processors, recorder]),
        params=PipelineParams(audio_in_sample_rate=sample_rate, audio_out_sample_rate=24_000),
        cancel_on_idle_timeout=False,
    )
    started, failed = asyncio.Event(), asyncio.Event()
    errors: list[str] = []

    @worker.event_handler("on_pipeline_started")
    async def on_started(worker, frame):
        started.set()

    @worker.event_handler("on_pipeline_error")
    async def on_error(worker, frame):
        errors.append(frame.error)
        failed.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await first_of([started, failed], running, timeout=30)
        for frame in frames:
            await worker.queue_frame(frame)
        waited = done or (recorder.done if until else None)
        if waited is not None:
            await first_of([waited, failed], running, timeout=timeout)
        if not running.done():
            await worker.queue_frame(EndFrame())
            await asyncio.wait_for(asyncio.shield(running), timeout=60)
    finally:
        if not running.done():
            await runner.cancel()
            await asyncio.wait_for(running, timeout=30)
    assert not errors, errors
    return recorder.frames


async def first_of(events: list[asyncio.Event], task: asyncio.Task, *, timeout: float) -> None:
    """Wait until one of ``events`` is set or ``task`` ends."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait({*waiters, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def audio_frames(samples: np.ndarray, rate: int, ms: int = 20) -> list[InputAudioRawFrame]:
    step = rate * ms // 1000
    return [
        InputAudioRawFrame(audio=samples[i:i + step].tobytes(), sample_rate=rate, num_channels=1)
        for i in range(0, len(samples), step)
    ]


async def test_stt_service_transcribes_a_spoken_segment(gateway):
    """``OpenAISTTService`` (gpt-transcribe): the audio between the VAD's start and stop
    frames is sent as one WAV; the TranscriptionFrame has the recording's words."""
    service = OpenAISTTService(api_key=API_KEY, base_url=gateway.base_url)
    samples = recording_at("en_happy_prompt", 16_000)
    frames = [VADUserStartedSpeakingFrame(), *audio_frames(samples, 16_000),
              VADUserStoppedSpeakingFrame()]
    out = await run_pipeline([service], frames, until=lambda f: isinstance(f, TranscriptionFrame))
    texts = [f.text for f in out if isinstance(f, TranscriptionFrame)]
    assert len(texts) == 1 and wer(TEXTS["en_happy_prompt"], texts[0]) <= 0.2, texts


async def test_tts_service_audio_is_heard_back(gateway, hear):
    """``OpenAITTSService`` (gpt-4o-mini-tts, voice alloy, pcm at 24 kHz): the audio frames
    it pushes are speech Whisper hears as the text."""
    service = OpenAITTSService(api_key=API_KEY, base_url=gateway.base_url)
    out = await run_pipeline([service], [TTSSpeakFrame(SPOKEN)])
    audio = [f for f in out if isinstance(f, TTSAudioRawFrame)]
    assert audio and {f.sample_rate for f in audio} == {24_000}
    samples = np.frombuffer(b"".join(f.audio for f in audio), np.int16)
    assert len(samples) > 24_000 * 2
    assert wer(SPOKEN, hear(samples, 24_000)) <= 0.2


async def test_llm_service_calls_a_function_and_answers_after_its_result(gateway):
    """``OpenAILLMService`` (gpt-4.1) with a registered function: Pipecat calls it with the
    parsed arguments, its result goes into the context through the assistant aggregator,
    and the LLM runs again on it and answers in text."""
    service = OpenAILLMService(api_key=API_KEY, base_url=gateway.base_url)
    calls: list[dict] = []

    async def get_weather(params: FunctionCallParams) -> None:
        calls.append(dict(params.arguments))
        await params.result_callback({"conditions": "sunny", "temperature": "22 degrees"})

    service.register_function("get_weather", get_weather)
    weather = FunctionSchema(
        name="get_weather", description="Get the current weather in a city.",
        properties={"city": {"type": "string"}}, required=["city"],
    )
    context = LLMContext(
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=ToolsSchema(standard_tools=[weather]),
    )
    aggregators = LLMContextAggregatorPair(context)
    answered = asyncio.Event()

    @aggregators.assistant().event_handler("on_assistant_turn_stopped")
    async def on_turn_stopped(aggregator, message):
        if message.content.strip():
            answered.set()

    await run_pipeline([service, aggregators.assistant()], [LLMContextFrame(context)],
                       done=answered)
    assert calls == [{"city": "Paris"}]
    messages = context.get_messages()
    roles = [m["role"] for m in messages]
    assert roles == ["user", "assistant", "tool", "assistant"], messages
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert "sunny" in messages[2]["content"]
    assert messages[2]["tool_call_id"] == messages[1]["tool_calls"][0]["id"]
    assert messages[3]["content"].strip()


async def test_realtime_stt_service_transcribes_a_streamed_recording(gateway):
    """``OpenAIRealtimeSTTService`` with its defaults: a transcription session on
    ``/v1/realtime?intent=transcription`` (model gpt-realtime-whisper, no server VAD: the
    pipeline's VAD stop frame commits the buffer); the TranscriptionFrame has the
    recording's words."""
    service = OpenAIRealtimeSTTService(api_key=API_KEY, base_url=gateway.ws_url + "/realtime")
    samples = recording_at("zero_shot_en_prompt", 16_000)
    frames = [VADUserStartedSpeakingFrame(), *audio_frames(samples, 16_000),
              VADUserStoppedSpeakingFrame()]
    out = await run_pipeline([service], frames, until=lambda f: isinstance(f, TranscriptionFrame))
    texts = [f.text for f in out if isinstance(f, TranscriptionFrame)]
    assert texts and wer(TEXTS["zero_shot_en_prompt"], texts[0]) <= 0.25, texts
