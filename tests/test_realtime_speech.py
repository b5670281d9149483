"""A realtime response is voiced by the chat path's synthesis loop, so what that loop does
for chat holds on realtime too: the session's ``audio.output.speed`` is applied, and a
speech engine that reads leading control tags gets the reply's tags on every sentence."""

from __future__ import annotations

import asyncio
import base64
import json
import numpy as np
import pytest
from openai import AsyncOpenAI

from engines.base import AudioChunk
from gateway.api.realtime.speech import realtime_speech
from gateway.policy import UNLIMITED
from tests.faults import EnginesRegistry

pytestmark = pytest.mark.slow


async def spoken(conn, speed: float) -> tuple[float, str]:
    """Seconds of audio and the transcript of one spoken answer at ``speed``."""
    await conn.session.update(
        session={"type": "realtime", "audio": {"output": {"speed": speed}}}
    )
    await conn.response.create(response={"max_output_tokens": 60})
    audio, transcript = b"", ""
    while True:
        event = json.loads(await asyncio.wait_for(conn.recv_bytes(), 240))
        assert event["type"] != "error", event
        if event["type"] == "response.output_audio.delta":
            audio += base64.b64decode(event["delta"])
        elif event["type"] == "response.output_audio_transcript.done":
            transcript = event["transcript"]
        elif event["type"] == "response.done":
            return len(audio) / 48_000, transcript


async def test_the_sessions_output_speed_is_applied(server):
    client = AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Tell me about the sea and ships."}],
            }
        )
        normal_seconds, normal_text = await spoken(conn, 1.0)
        fast_seconds, fast_text = await spoken(conn, 1.5)
    assert normal_text and fast_text
    # Seconds per character of what was said: 1.5 times faster is two thirds of it.
    ratio = (fast_seconds / len(fast_text)) / (normal_seconds / len(normal_text))
    assert ratio < 0.85, (normal_seconds, normal_text, fast_seconds, fast_text)


class _TagReadingVoice:
    """A stand-in for Step-Audio-TTS-3B (its weights cannot be had here): it reads
    leading control tags, and records what it was asked to say."""

    reads_leading_tags = True
    speed_range = (1.0, 1.0)

    def __init__(self) -> None:
        self.heard: list[str] = []

    async def synthesize(self, request):
        self.heard.append(request.text)
        yield AudioChunk(samples=np.zeros(4_800, np.float32), sample_rate=24_000)


async def test_realtime_speech_carries_the_replys_leading_tags_to_every_sentence():
    voice = _TagReadingVoice()
    reply = realtime_speech(EnginesRegistry(speech=voice), "step-audio-tts", "Tingting",
                            "audio/pcm", 1.0, UNLIMITED)
    reply.start()
    for piece in ("(高兴1)今天天", "气好。我们出去玩。", "好不好？"):
        reply.feed(piece)
    reply.close()
    audio = b"".join([data async for data in reply.drain()])
    await reply.aclose()
    assert len(audio) == 3 * 4_800 * 2  # 24 kHz PCM, as it came
    assert voice.heard == ["(高兴1)今天天气好。", "(高兴1)我们出去玩。", "(高兴1)好不好？"]
    assert [text for _, text in reply.marks] == ["(高兴1)今天天气好。", "我们出去玩。", "好不好？"]


class _StubbornVoice(_TagReadingVoice):
    """A voice whose synthesis finishes its sentence before it honours a cancellation, as a
    call on an inference thread does (engines.workers)."""

    reads_leading_tags = False

    async def synthesize(self, request):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # the thread's call ends first
            raise
        yield AudioChunk(samples=np.zeros(4_800, np.float32), sample_rate=24_000)


async def test_closing_a_reply_keeps_its_callers_cancellation():
    """A barge-in that cancels a response while it closes its reply must still cancel it:
    the reply's close once swallowed that cancellation along with its own task's."""
    reply = realtime_speech(EnginesRegistry(speech=_StubbornVoice()), "tts-1", "alloy",
                            "audio/pcm", 1.0, UNLIMITED)
    reply.start()
    reply.feed("Hello there. And then")
    await asyncio.sleep(0.05)  # the first sentence's synthesis under way
    closing = asyncio.create_task(reply.aclose())
    await asyncio.sleep(0.05)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing


class _Writer:
    """A chat model (a stand-in: the point is the text it writes) that writes two lines
    and is stopped by max_output_tokens."""

    accepts_audio_tokens = False
    computes_locally = False

    async def generate(self, request):
        from engines.chat import Finish, TextDelta

        for piece in ("One line.\n", "Another line.\n"):
            yield TextDelta(piece)
        yield Finish("length", 5, 5)


async def test_an_answer_stopped_at_max_output_tokens_keeps_its_transcript_as_written():
    """It was voiced whole, so its transcript is its text; only an answer cut short (a
    barge-in, a cancel) keeps just the words of the audio that was sent."""
    import msgspec

    from gateway.api.realtime.serving import RealtimeSession
    from gateway.settings import load_settings

    events: list[dict] = []

    async def send(event):
        events.append(msgspec.to_builtins(event))

    engines = EnginesRegistry(chat=_Writer(), speech=_TagReadingVoice())
    session = RealtimeSession(engines, load_settings(), "gpt-realtime", send)
    await session.handle(json.dumps({"type": "response.create"}))
    await session.response.task
    [done] = [e for e in events if e["type"] == "response.done"]
    deltas = "".join(e["delta"] for e in events
                     if e["type"] == "response.output_audio_transcript.delta")
    assert done["response"]["status"] == "incomplete"
    assert deltas == "One line.\nAnother line.\n"
    assert done["response"]["output"][0]["content"][0]["transcript"] == deltas
