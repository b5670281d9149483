"""Voice-to-voice latency of /v1/realtime on the embedded engines, through the official SDK.

For each turn a recorded question is streamed in real time (100 ms pieces, 100 ms apart)
into a fresh session with server VAD, followed by silence; the figure is the time from
``input_audio_buffer.speech_stopped`` to the first ``response.output_audio.delta`` (what
the user waits for after they stop talking; the detector's silence_duration_ms is spent
before speech_stopped). Then barge-ins: while an answer plays, a second recording is
streamed; the figure is the time from ``speech_started`` to the last audio delta of the
cancelled answer (how long the assistant talks over the user).

``--after-closed``: each turn follows a session that asked for a long story and closed
its socket at the story's first audio: what a leftover response (one that outlives its
session) would cost the next user. A closed session once kept its reply generating on
the one compute slot, and turns after it waited 15-27 s for their first text token.

    python bench/realtime_latency.py [--turns 10] [--barge-ins 5] [--after-closed]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import time

from _server import start_server
from openai import AsyncOpenAI

QUESTION = "What is the capital of France?"
INTERRUPT = "Stop talking. I have another question for you."
CHUNK = 4_800  # 100 ms of 24 kHz 16-bit PCM


async def stream(conn, pcm: bytes, pace: float = 0.1) -> None:
    for start in range(0, len(pcm), CHUNK):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[start : start + CHUNK]).decode())
        await asyncio.sleep(pace)


async def turn(client: AsyncOpenAI, question: bytes, hearing: str | None) -> float:
    async with client.realtime.connect(model="gpt-realtime") as conn:
        if hearing:
            await conn.session.update(session={
                "type": "realtime", "audio": {"input": {"transcription": {"model": hearing}}},
            })
        feeding = asyncio.create_task(stream(conn, question + bytes(48_000)))
        stopped = None
        try:
            async for event in conn:
                if event.type == "input_audio_buffer.speech_stopped":
                    stopped = time.perf_counter()
                elif event.type == "response.output_audio.delta" and stopped is not None:
                    return time.perf_counter() - stopped
                elif event.type == "error":
                    raise RuntimeError(event.error.message)
        finally:
            feeding.cancel()
    raise RuntimeError("the session ended without audio")


async def barge_in(client: AsyncOpenAI, question: bytes, interrupt: bytes) -> dict | None:
    """Times from the barge-in (speech_started, as the client receives it) to the last
    audio delta of the interrupted answer and to its response.done (cancelled)."""
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={
            "type": "realtime",
            "instructions": "You are a storyteller. Always answer with a long story of at least ten sentences.",
        })
        await stream(conn, question + bytes(48_000), pace=0)
        response_id = started = last = None
        after = 0  # audio bytes of the interrupted answer received after the barge-in
        barging = None
        async for event in conn:
            if event.type == "response.output_audio.delta":
                if response_id is None:
                    response_id = event.response_id
                    barging = asyncio.create_task(stream(conn, interrupt + bytes(48_000)))
                if event.response_id == response_id:
                    last = time.perf_counter()
                    if started is not None:
                        after += len(base64.b64decode(event.delta))
            elif event.type == "input_audio_buffer.speech_started" and response_id is not None:
                started = started or time.perf_counter()
            elif event.type == "response.done" and event.response.id == response_id:
                barging.cancel()
                if event.response.status != "cancelled" or started is None:
                    return None  # the answer ended before the user spoke
                return {"last_delta": last - started, "done": time.perf_counter() - started,
                        "audio_after": after / 48_000}
    raise RuntimeError("the session ended early")


async def closed_mid_reply(client: AsyncOpenAI) -> None:
    """A session that asks for a long spoken story and goes away at its first audio."""
    conn = await client.realtime.connect(model="gpt-realtime").enter()
    await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "Tell me a long story about a lighthouse keeper and the sea."}]})
    await conn.response.create()
    async for event in conn:
        if event.type == "response.output_audio.delta":
            break
    await conn.close()


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--barge-ins", type=int, default=5)
    parser.add_argument("--transcription-model", default=None,
                        help="the session's input transcription model (default: chat.input_audio_model)")
    parser.add_argument("--after-closed", action="store_true",
                        help="start each turn right after a session closed while its reply played")
    args = parser.parse_args()
    hearing = args.transcription_model
    _, url = start_server(["tts-1", "whisper-1", "gpt-4o-mini"] + ([hearing] if hearing else []))
    client = AsyncOpenAI(base_url=url + "/v1", api_key="sk-local", max_retries=0)
    speech = client.audio.speech
    question = (await speech.create(model="tts-1", voice="alloy", input=QUESTION, response_format="pcm")).content
    interrupt = (await speech.create(model="tts-1", voice="alloy", input=INTERRUPT, response_format="pcm")).content
    await turn(client, question, hearing)  # warm-up
    latencies = []
    for _ in range(args.turns):
        if args.after_closed:
            await closed_mid_reply(client)
        latencies.append(await turn(client, question, hearing))
    print(f"voice-to-voice (speech_stopped -> first audio delta), {args.turns} turns"
          f"{' each right after a session closed mid-reply' if args.after_closed else ''}, "
          f"hearing with {hearing or 'the default input model'}:")
    print(f"  p50 {pct(latencies, 50):.3f} s   p90 {pct(latencies, 90):.3f} s   "
          f"min {min(latencies):.3f} s   max {max(latencies):.3f} s")
    if args.barge_ins:
        results = [await barge_in(client, question, interrupt) for _ in range(args.barge_ins)]
        cut = [r for r in results if r is not None]
        print(f"barge-in, {len(cut)}/{args.barge_ins} answers cancelled (times from speech_started "
              "as received; negative: the last delta came before it):")
        if cut:
            for key, label in (("last_delta", "to the last audio delta"), ("done", "to response.done")):
                values = [r[key] for r in cut]
                print(f"  {label}: p50 {pct(values, 50):.3f} s   max {max(values):.3f} s")
            print(f"  audio received after the barge-in: max {max(r['audio_after'] for r in cut):.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
