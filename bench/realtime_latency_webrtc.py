"""Voice-to-voice latency of a WebRTC call beside the WebSocket's, on the same recordings.

For each recording and transport, one fresh session hears the recording in real time
(20 ms pieces, then silence) and the wait is measured from the end of the recording's
speech (when its last piece left the client) to the first audible answer: the first
``response.output_audio.delta`` on the WebSocket, the first non-silent RTP frame on the
call (which includes Opus encoding, the jitter buffer and decoding). Both transports go
to the same running gateway, alternately, so load and models are the same for both.

    python bench/realtime_latency_webrtc.py --url http://127.0.0.1:8000 --key sk-local

The WebRTC caller is the tests' (tests/webrtc_client.py: aiortc, held to loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.audio.pcm import resample  # noqa: E402
from tests.recordings import pcm24k  # noqa: E402
from tests.webrtc_client import RATE, Caller  # noqa: E402

ENGLISH = ["zero_shot_en_prompt", "en_happy_prompt"]
SESSION = {"type": "realtime", "instructions": "Answer in one short sentence."}


async def over_websocket(url: str, key: str, name: str) -> float:
    pcm = pcm24k(name) + bytes(24_000 * 2 * 3)
    speech_bytes = len(pcm24k(name))
    ws_url = url.replace("http", "ws") + "/v1/realtime?model=gpt-realtime"
    headers = {"authorization": f"Bearer {key}"}
    async with websockets.connect(ws_url, additional_headers=headers, max_size=None) as socket:
        await socket.send(json.dumps({"type": "session.update", "session": SESSION}))
        ended: list[float] = []

        async def speak() -> None:
            began, piece = time.monotonic(), 960  # 20 ms of 24 kHz 16-bit audio
            for i, start in enumerate(range(0, len(pcm), piece)):
                await asyncio.sleep(max(0.0, began + i * 0.02 - time.monotonic()))
                chunk = pcm[start : start + piece]
                await socket.send(json.dumps({"type": "input_audio_buffer.append",
                                              "audio": base64.b64encode(chunk).decode()}))
                if start + piece >= speech_bytes and not ended:
                    ended.append(time.monotonic())

        speaking = asyncio.create_task(speak())
        try:
            while True:
                event = json.loads(await asyncio.wait_for(socket.recv(), 120))
                if event["type"] == "response.output_audio.delta" and ended:
                    return time.monotonic() - ended[0]
        finally:
            speaking.cancel()


async def over_webrtc(url: str, key: str, name: str) -> float:
    caller = Caller(url, key)
    try:
        await caller.dial(SESSION)
        await caller.until("session.updated", "session.created")
        speech = resample(np.frombuffer(pcm24k(name), "<i2").astype(np.float32) / 32767,
                          24_000, RATE)
        caller.microphone.say(speech)
        caller.microphone.say(np.zeros(RATE * 3, dtype=np.float32))
        while caller.microphone.pending.size > RATE * 3:
            await asyncio.sleep(0.005)
        ended = time.monotonic()  # the speech's last frame has gone out
        caller.first_audio_at = None
        await caller.until("output_audio_buffer.started")
        while caller.first_audio_at is None:
            await asyncio.sleep(0.005)
        return caller.first_audio_at - ended
    finally:
        await caller.hang_up()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", default="sk-local")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"websocket": [], "webrtc": []}
    for _ in range(args.rounds):
        for name in ENGLISH:
            results["websocket"].append(await over_websocket(args.url, args.key, name))
            results["webrtc"].append(await over_webrtc(args.url, args.key, name))
    for transport, waits in results.items():
        print(f"{transport:10s} n={len(waits)} median {statistics.median(waits):.3f} s"
              f"  min {min(waits):.3f}  max {max(waits):.3f}")


if __name__ == "__main__":
    asyncio.run(main())
