"""Speculative replies (gateway/api/realtime/speculation.py): the reply is begun at the
user's pause and taken over by the response when the turn ends there; a user who goes on
after the pause gets an answer to everything they said, and the reply begun at the pause
is dropped, charging the key nothing. Real recordings, embedded engines, official SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import pytest
from openai import AsyncOpenAI

from engines.base import Capability
from gateway.policy import HeldCharges
from tests.recordings import pcm24k

CHUNK = 4_800  # 100 ms of 24 kHz 16-bit PCM


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * 48_000) // 2 * 2)


def speculations(text: str) -> dict[str, float]:
    found = re.findall(r'realtime_speculative_replies_total\{outcome="(\w+)"\} (\S+)', text)
    return {outcome: float(value) for outcome, value in found}


async def turn_events(conn, pcm: bytes) -> list[dict]:
    """Stream ``pcm`` in real time, then silence; the events up to the answer's end."""

    async def speak() -> None:
        audio = pcm + silence(1.5)
        for start in range(0, len(audio), CHUNK):
            await conn.input_audio_buffer.append(
                audio=base64.b64encode(audio[start : start + CHUNK]).decode())
            await asyncio.sleep(0.1)

    speaking = asyncio.create_task(speak())
    events = []
    try:
        while True:
            event = json.loads(await asyncio.wait_for(conn.recv_bytes(), 120))
            events.append(event)
            assert event["type"] != "error", event
            if event["type"] == "response.done":
                return events
    finally:
        speaking.cancel()


async def one_turn(
    server, http, pcm: bytes, silence_ms: int = 500
) -> tuple[list[dict], dict[str, float]]:
    client = AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    before = speculations(http.get("/metrics").text)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={
            "type": "realtime", "max_output_tokens": 30,
            "audio": {"input": {
                "transcription": {"model": "whisper-1"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": silence_ms},
            }},
        })
        events = await turn_events(conn, pcm)
    after = speculations(http.get("/metrics").text)
    change = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("adopted", "dropped")}
    return events, change


async def test_a_turn_that_ends_at_its_pause_is_answered_by_the_reply_begun_there(server, http):
    events, change = await one_turn(server, http, pcm24k("zero_shot_en_prompt"))
    assert change["adopted"] == 1, change
    done = events[-1]["response"]
    assert done["status"] in ("completed", "incomplete"), done
    assert any(e["type"] == "response.output_audio.delta" for e in events)
    # Nothing of the answer reached the client before the turn was decided.
    kinds = [e["type"] for e in events]
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("response.created")


async def test_a_user_who_goes_on_after_a_pause_is_answered_on_all_they_said(server, http):
    """The speaker pauses for 0.4 s after "His political stance was conservative,": long
    enough to begin a reply, shorter than the 0.7 s of silence that ends a turn here. One
    turn, whose item holds both halves; the reply begun at that pause is dropped."""
    pcm = pcm24k("zero_shot_en_prompt")
    events, change = await one_turn(server, http, pcm, silence_ms=700)
    assert change["dropped"] >= 1 and change["adopted"] == 1, change
    stopped = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    assert len(stopped) == 1, stopped
    heard = next(e["transcript"] for e in events
                 if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert "conservative" in heard.lower() and "thatcher" in heard.lower(), heard


def chat_engine(server):
    """The chat engine the server's realtime sessions use (preloaded)."""
    registry = server.app.state["registry"]
    return registry._slots[registry.check("gpt-realtime", Capability.CHAT)].engine


async def test_the_conversation_so_far_is_computed_while_the_user_speaks(server, http):
    """When the user starts a turn, the conversation so far, the answer they just heard
    included, is handed to the chat engine to compute (speculation.py). The reply begun
    at the turn's first pause then has only the words of that phrase, and the turn
    markers, left to evaluate. Without the head start it would also evaluate the answer
    (at least 20 tokens: the model samples it one token at a time, and such tokens are
    never reused). The engine is the real one; the test only records what it is asked."""
    engine = chat_engine(server)
    prefilled: list[list] = []
    left: list[int] = []
    prefill, run = engine.prefill, engine._run

    async def recorded_prefill(request):
        prefilled.append(request.messages)
        await prefill(request)

    def recorded_run(context, job):
        left.append(len(job.prompt_tokens) - context.shared_prefix(job.prompt_tokens))
        return run(context, job)

    def tokens(text: str) -> int:
        return len(engine._model().tokenize(text.encode(), add_bos=False, special=False))

    engine.prefill, engine._run = recorded_prefill, recorded_run
    client = AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    try:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(session={
                "type": "realtime", "max_output_tokens": 40,
                "audio": {"input": {
                    "transcription": {"model": "whisper-1"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
                }},
            })
            first = await turn_events(conn, pcm24k("en_happy_prompt"))
            answer = next(e["transcript"] for e in first
                          if e["type"] == "response.output_audio_transcript.done")
            generations_before = len(left)
            second = await turn_events(conn, pcm24k("zero_shot_en_prompt"))
    finally:
        del engine.prefill, engine._run
    assert tokens(answer) >= 20, answer
    assert any(m and m[-1].role == "assistant" and m[-1].content == answer for m in prefilled)
    phrase = "His political stance was conservative."  # its first pause's words
    first_reply = left[generations_before]
    assert first_reply <= tokens(phrase) + 12, (left, generations_before)
    assert second[-1]["response"]["status"] in ("completed", "incomplete")


class Ledger:
    """Stands in for a key's policy: records charges, refuses past ``limit`` audio seconds."""

    def __init__(self, limit: float = 10.0) -> None:
        self.charged: list[tuple[str, float]] = []
        self.limit = limit
        self.owner = "key-a"

    async def charge_audio_out(self, seconds: float) -> None:
        if sum(s for k, s in self.charged if k == "out") + seconds > self.limit:
            raise RuntimeError("over the key's audio limit")
        self.charged.append(("out", seconds))

    async def charge_tokens(self, tokens: int) -> None:
        self.charged.append(("tokens", tokens))


async def test_held_charges_are_made_only_once_released_and_then_as_they_come():
    ledger = Ledger(limit=3.0)
    held = HeldCharges(ledger)
    await held.charge_audio_out(1.0)
    await held.charge_tokens(12)
    assert ledger.charged == [] and held.owner == "key-a"
    await held.release()
    assert ledger.charged == [("out", 1.0), ("tokens", 12)]
    await held.charge_audio_out(1.5)
    assert ledger.charged[-1] == ("out", 1.5)
    with pytest.raises(RuntimeError):
        await held.charge_audio_out(1.0)


async def test_a_held_charge_over_the_limit_is_refused_when_released():
    held = HeldCharges(Ledger(limit=1.0))
    await held.charge_audio_out(2.0)  # held: the reply may never be sent
    with pytest.raises(RuntimeError):
        await held.release()


class _HeldRecogniser:
    """A recogniser that hears nothing until released: a transcription still running."""

    sample_rate = 16_000

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def transcribe(self, audio, options):
        from engines.base import TranscriptionInfo, TranscriptionStream

        await self.release.wait()

        async def segments():
            return
            yield

        return TranscriptionStream(info=TranscriptionInfo(language="en", duration=1.0),
                                   segments=segments())


class _OneLine:
    accepts_audio_tokens = False
    computes_locally = False

    async def generate(self, request):
        from engines.chat import Finish, TextDelta

        yield TextDelta("Out of band.")
        yield Finish("stop", 3, 3)


async def test_an_out_of_band_response_does_not_wait_for_the_conversations_transcriptions():
    """conversation "none" reads only its own input: a spoken item of the conversation
    still being transcribed does not hold it (it used to wait for every transcription)."""
    import msgspec

    from gateway.api.realtime.serving import RealtimeSession
    from gateway.settings import load_settings
    from tests.faults import EnginesRegistry

    events: list[dict] = []

    async def send(event):
        events.append(msgspec.to_builtins(event))

    recogniser = _HeldRecogniser()
    engines = EnginesRegistry(chat=_OneLine(), transcription=recogniser)
    session = RealtimeSession(engines, load_settings(), "gpt-realtime", send)
    audio = base64.b64encode(bytes(48_000)).decode()
    await session.handle(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_audio", "audio": audio}]}}))
    await session.handle(json.dumps({"type": "response.create", "response": {
        "conversation": "none", "output_modalities": ["text"],
        "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "Hello?"}]}]}}))
    try:
        await asyncio.wait_for(session.response.task, 10)
    finally:
        recogniser.release.set()
    done = next(e for e in events if e["type"] == "response.done")
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["text"] == "Out of band."
    await session.close()


class _Hears:
    """A recogniser that hears the same words in anything (stands in for Whisper here:
    what is tested is when replies are begun, not what is heard)."""

    sample_rate = 16_000

    async def transcribe(self, audio, options):
        from engines.base import Segment, TranscriptionInfo, TranscriptionStream

        async def segments():
            yield Segment(id=0, seek=0, start=0.0, end=1.0, text=" Hello there.", tokens=[],
                          temperature=0.0, avg_logprob=0.0, compression_ratio=1.0,
                          no_speech_prob=0.0)

        return TranscriptionStream(info=TranscriptionInfo(language="en", duration=1.0),
                                   segments=segments())


async def test_no_reply_is_begun_ahead_for_a_key_that_was_refused_a_response():
    """A key over its limits must not get work done at its pauses that its response would
    be refused: once refused, the session begins no speculative reply until the key may
    ask again (the refusal's retry-after)."""
    import msgspec

    from gateway import metrics
    from gateway.api.realtime.serving import RealtimeSession
    from gateway.policy import ANONYMOUS, Policy, RateLimitExceeded
    from gateway.settings import load_settings
    from tests.faults import EnginesRegistry

    class OneResponse(Policy):
        """A key allowed one response this minute."""

        turns = 0

        async def admit_turn(self) -> None:
            self.turns += 1
            if self.turns > 1:
                error = RateLimitExceeded("Rate limit reached for requests.")
                error.headers = {"retry-after": "60"}
                raise error

    events: list[dict] = []

    async def send(event):
        events.append(msgspec.to_builtins(event))

    def begun() -> float:
        return sum(metrics.REALTIME_SPECULATIONS.labels(outcome=o)._value.get()
                   for o in ("adopted", "dropped"))

    engines = EnginesRegistry(chat=_OneLine(), transcription=_Hears())
    session = RealtimeSession(engines, load_settings(), "gpt-realtime", send,
                              policy=OneResponse(ANONYMOUS))
    await session.handle(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["text"], "audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 700}}}}}))
    audio = pcm24k("zero_shot_en_prompt") + silence(1.5)  # one turn, a pause inside
    counts = []
    for _ in range(3):
        before = begun()
        for start in range(0, len(audio), 4_800):
            piece = base64.b64encode(audio[start : start + 4_800]).decode()
            await session.handle(json.dumps({"type": "input_audio_buffer.append",
                                             "audio": piece}))
            await asyncio.sleep(0)
        if session.response is not None:
            await session.response.task
        counts.append(begun() - before)
    await session.close()
    refusals = [e for e in events if e["type"] == "error"]
    assert [e["error"]["code"] for e in refusals] == ["rate_limit_exceeded"] * 2, refusals
    assert counts[0] >= 1 and counts[1] >= 1 and counts[2] == 0, counts
