"""Speech: request struct → voice, language and speed → engine → encoded bytes or events.

Audio leaves sentence by sentence: each sentence is resampled, tempo-shifted and encoded
as soon as the engine yields it (its first 0.15 s on their own, so encoding the whole
sentence does not hold back its first byte), and the response streams those bytes (or
base64 SSE deltas) without waiting for the rest of the input.
"""

from __future__ import annotations

import asyncio
import base64
import functools
from typing import AsyncIterator

import anyio.to_thread

from adapters.audio.encode import CONTENT_TYPES
from adapters.audio.pipeline import SpeechAudioPipeline, lead_and_rest, split_speed
from adapters.text.language import detect_language
from adapters.text.tokens import count_audio_tokens, count_text_tokens
from engines.base import Capability, SpeechRequest
from engines.registry import ModelRegistry

from ... import metrics
from ...errors import InvalidRequest
from ...policy import UNLIMITED, Policy
from .protocol import (
    CreateSpeechRequest,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechUsage,
)


class SpeechStream:
    """Encoded audio, produced as it is iterated; ``seconds`` is final once drained."""

    def __init__(
        self,
        registry: ModelRegistry,
        request: CreateSpeechRequest,
        voice: str | None = None,
        policy: Policy = UNLIMITED,
    ) -> None:
        registry.check(request.model, Capability.SPEECH)
        policy.check_model(request.model)
        self.policy = policy
        if not request.input.strip():
            raise InvalidRequest("The input must contain text to speak.", param="input")
        self.registry = registry
        self.request = request
        self.voice = voice or request.voice_name  # the engine's name for it (a clone's id)
        self.media_type = CONTENT_TYPES[request.response_format]
        self.seconds = 0.0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return metrics.observe_speech(self.request.model, self._encoded())

    async def _encoded(self) -> AsyncIterator[bytes]:
        request = self.request
        async with self.registry.speech(request.model) as engine:
            native, residual = split_speed(request.speed, engine.speed_range)
            # Opening the encoder (about 1 ms for MP3: LAME builds its tables) happens on
            # a thread while the engine synthesises the first sentence, not before the
            # synthesis starts. An abandoned request's pipeline is dropped like any other.
            opening = asyncio.get_running_loop().run_in_executor(
                None,
                functools.partial(SpeechAudioPipeline, request.response_format, tempo=residual),
            )
            engine_request = SpeechRequest(
                text=request.input,
                voice=self.voice,
                language=detect_language(request.input),
                speed=native,
                instructions=request.instructions,
            )
            async for chunk in engine.synthesize(engine_request):
                pipeline = await opening
                for piece in lead_and_rest(chunk.samples, chunk.sample_rate):
                    data = await anyio.to_thread.run_sync(
                        pipeline.process, piece, chunk.sample_rate
                    )
                    # Charged as spoken: the piece that runs the key out ends the stream.
                    await self.policy.charge_audio_out(pipeline.seconds - self.seconds)
                    self.seconds = pipeline.seconds
                    if data:
                        yield data
            pipeline = await opening
            tail = await anyio.to_thread.run_sync(pipeline.finish)
            self.seconds = pipeline.seconds
            if tail:
                yield tail
            metrics.count_audio("speech", "out", request.model, self.seconds)


async def sse_events(stream: SpeechStream) -> AsyncIterator[object]:
    async for data in stream:
        yield SpeechAudioDelta(audio=base64.b64encode(data).decode("ascii"))
    input_tokens = count_text_tokens(stream.request.input)
    output_tokens = count_audio_tokens(stream.seconds)
    yield SpeechAudioDone(
        usage=SpeechUsage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )
    )
