"""Voice-to-voice latency of /v1/realtime on the embedded engines, through the official SDK.

For each turn a recorded question is streamed in real time (100 ms pieces, 100 ms apart)
into a fresh session with server VAD, followed by silence; the figure is the time from
``input_audio_buffer.speech_stopped`` to the first ``response.output_audio.delta`` (what
the user waits for after they stop talking; the detector's silence_duration_ms is spent
before speech_stopped). Then barge-ins: while an answer plays, a second recording is
streamed; the figure is the time from ``speech_started`` to the last audio delta of the
cancelled answer (how long the assistant talks over the user).

    python bench/realtime_latency.py [--turns 10] [--barge-ins 5]
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


async def turn(client: AsyncOpenAI, question: bytes) -> float:
    async with client.realtime.connect(model="gpt-realtime") as conn:
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


async def barge_in(client: AsyncOpenAI, question: bytes, interrupt: bytes) -> tuple[float, str]:
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={
            "type": "realtime",
            "instructions": "You are a storyteller. Always answer with a long story of at least ten sentences.",
        })
        await stream(conn, question + bytes(48_000), pace=0)
        response_id = started = last = None
        barging = None
        async for event in conn:
            if event.type == "response.output_audio.delta":
                if response_id is None:
                    response_id = event.response_id
                    barging = asyncio.create_task(stream(conn, interrupt + bytes(48_000)))
                if event.response_id == response_id:
                    last = time.perf_counter()
            elif event.type == "input_audio_buffer.speech_started" and response_id is not None:
                started = started or time.perf_counter()
            elif event.type == "response.done" and event.response.id == response_id:
                barging.cancel()
                status = event.response.status
                return (max(0.0, last - started) if started and last else float("nan")), status
    raise RuntimeError("the session ended early")


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--barge-ins", type=int, default=5)
    args = parser.parse_args()
    _, url = start_server(["tts-1", "whisper-1", "gpt-4o-mini"])
    client = AsyncOpenAI(base_url=url + "/v1", api_key="sk-local", max_retries=0)
    speech = client.audio.speech
    question = (await speech.create(model="tts-1", voice="alloy", input=QUESTION, response_format="pcm")).content
    interrupt = (await speech.create(model="tts-1", voice="alloy", input=INTERRUPT, response_format="pcm")).content
    await turn(client, question)  # warm-up
    latencies = [await turn(client, question) for _ in range(args.turns)]
    print(f"voice-to-voice (speech_stopped -> first audio delta), {args.turns} turns:")
    print(f"  p50 {pct(latencies, 50):.3f} s   p90 {pct(latencies, 90):.3f} s   "
          f"min {min(latencies):.3f} s   max {max(latencies):.3f} s")
    if args.barge_ins:
        results = [await barge_in(client, question, interrupt) for _ in range(args.barge_ins)]
        tails = [t for t, status in results if status == "cancelled" and t == t]
        print(f"barge-in (speech_started -> last audio delta of the cancelled answer), "
              f"{len(tails)}/{args.barge_ins} cancelled:")
        if tails:
            print(f"  p50 {pct(tails, 50):.3f} s   max {max(tails):.3f} s")


if __name__ == "__main__":
    asyncio.run(main())
