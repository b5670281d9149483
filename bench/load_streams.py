"""Many streams over two gateways sharing Redis (issue 12), on loopback only.

Starts a real redis-server, a fake vLLM replica (the one of tests/engines/test_vllm_pool.py,
real HTTP in vLLM's streaming format: vLLM and Step-Audio-Chat cannot run here) that paces
its tokens so each chat stream is held open about --hold seconds, and two
``step-audio-gateway serve`` processes on that Redis. Then:

1. --streams concurrent streams split across both gateways: chat (streamed, against the fake
   upstream) and, --speech of them at any moment, speech on the embedded Piper engine (SSE,
   one after another for the whole hold: what two cores allow). Every stream must end with
   ``[DONE]`` / ``speech.audio.done`` or an error event; anything else is a lost stream.
   Memory per idle stream: the gateways' RSS while the chat streams wait on their
   upstream, against their RSS before, divided by the streams open.
2. Limit accuracy: --burst concurrent requests of one key (rpm --rpm) split across both:
   admitted against allowed; and concurrent speech streams of a key allowed
   --audio-limit seconds of spoken audio per minute: seconds delivered against allowed.
3. The latency Redis adds: --latency-requests sequential requests of a limited key on a
   gateway whose state is in Redis, against one keeping it in memory (p50/p99).

    python bench/load_streams.py                       # 500 streams held 60 s
    python bench/load_streams.py --streams 100 --hold 10   # a quick look
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.engines.test_vllm_pool import FakeVLLM  # noqa: E402
from tests.redis_server import GatewayProcess, RedisServer  # noqa: E402

PARAGRAPH = (
    "The weather today is bright and calm. Our team is building a speech gateway that "
    "works on an ordinary computer. It turns written words into clear speech."
)

CONFIG = """
[server]
api_keys = ["sk-load", "sk-acc", "sk-audio"]
max_connections = 4000
[engines]
preload = {preload}
max_queue = 4096
[state]
backend = "{backend}"
redis_url = "{url}"
[limits.per_key."sk-load"]
rpm = 1000000
concurrent_streams = 100000
[limits.per_key."sk-acc"]
rpm = {rpm}
[limits.per_key."sk-audio"]
audio_seconds_out_per_minute = {audio_limit}
[models."sa-chat"]
engine = "step-audio-chat"
options = {{ vllm_urls = ["{upstream}"], health_interval = 60.0, read_timeout = 120.0 }}
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def chat_stream(client: httpx.AsyncClient, url: str, tokens: int) -> str:
    body = {
        "model": "sa-chat",
        "stream": True,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": "Talk for a while."}],
    }
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return f"status {response.status_code}"
            last = None
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    last = line[6:]
            if last == "[DONE]":
                return "done"
            if last and "error" in json.loads(last):
                return "error event: " + json.loads(last)["error"]["message"][:120]
            return "lost"
    except httpx.HTTPError as exc:
        return f"lost ({type(exc).__name__})"


async def speech_stream(
    client: httpx.AsyncClient, url: str, text: str = PARAGRAPH
) -> tuple[str, float]:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
    body["stream_format"] = "sse"
    seconds = 0.0
    try:
        async with client.stream("POST", url + "/v1/audio/speech", json=body) as response:
            if response.status_code != 200:
                return f"status {response.status_code}", 0.0
            last = None
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    last = json.loads(line[6:])
                    if last.get("type") == "speech.audio.delta":
                        seconds += len(base64.b64decode(last["audio"])) / 48_000
            if last and last.get("type") == "speech.audio.done":
                return "done", seconds
            if last and "error" in last:
                return "error event: " + last["error"]["message"][:60], seconds
            return "lost", seconds
    except httpx.HTTPError as exc:
        return f"lost ({type(exc).__name__})", seconds


def client(key: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        headers={"authorization": f"Bearer {key}"}, timeout=httpx.Timeout(300), limits=limits
    )


async def held_streams(gateways, streams: int, speech: int, hold: float) -> dict:
    urls = [g.url for g in gateways]
    chats = streams - speech
    outcomes: dict[str, int] = {}
    speech_done = 0
    before = [rss_mib(g.process.pid) for g in gateways]
    ends = time.monotonic() + hold

    async def speaker(http, url):
        nonlocal speech_done
        results = []
        while time.monotonic() < ends:
            outcome, _ = await speech_stream(http, url)
            results.append(outcome)
            speech_done += 1
        return results

    async with client("sk-load", streams + 10) as http:
        chat_tasks = [
            asyncio.create_task(chat_stream(http, urls[i % 2], int(hold))) for i in range(chats)
        ]
        speech_tasks = [asyncio.create_task(speaker(http, urls[i % 2])) for i in range(speech)]
        await asyncio.sleep(min(hold / 2, 30))
        during = [rss_mib(g.process.pid) for g in gateways]
        chat_results = await asyncio.gather(*chat_tasks)
        speech_results = [r for rs in await asyncio.gather(*speech_tasks) for r in rs]
    for outcome in [*chat_results, *speech_results]:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    per_stream_kib = (sum(during) - sum(before)) * 1024 / max(chats, 1)
    return {
        "chat streams": chats,
        "speech streams (sequential, %d at a time)" % speech: len(speech_results),
        "outcomes": outcomes,
        "lost": sum(v for k, v in outcomes.items() if not k.startswith(("done", "error event"))),
        "rss before (MiB, per gateway)": [round(v, 1) for v in before],
        "rss with streams open (MiB)": [round(v, 1) for v in during],
        "memory per idle stream (KiB)": round(per_stream_kib, 1),
    }


async def accuracy(gateways, burst: int, rpm: int, audio_limit: float, audio_streams: int) -> dict:
    urls = [g.url for g in gateways]
    async with client("sk-acc", burst) as http:
        responses = await asyncio.gather(
            *(http.get(urls[i % 2] + "/v1/models") for i in range(burst)),
            return_exceptions=True,
        )
    admitted = sum(1 for r in responses if isinstance(r, httpx.Response) and r.status_code == 200)
    refused = sum(1 for r in responses if isinstance(r, httpx.Response) and r.status_code == 429)
    async with client("sk-audio", audio_streams) as http:
        spoken = await asyncio.gather(
            *(speech_stream(http, urls[i % 2], PARAGRAPH * 3) for i in range(audio_streams))
        )
    delivered = sum(seconds for _, seconds in spoken)
    return {
        "requests admitted / allowed": f"{admitted} / {rpm} (refused {refused} of {burst})",
        "audio seconds delivered / allowed": f"{delivered:.2f} / {audio_limit:g} over "
        f"{audio_streams} concurrent streams, each cut by "
        f"{sorted({o for o, _ in spoken})}",
    }


async def latency(redis_gateway, memory_gateway, count: int) -> dict:
    figures = {}
    async with client("sk-load", 2) as http:
        for gateway in (redis_gateway, memory_gateway):
            for _ in range(20):
                await http.get(gateway.url + "/v1/models")
        times: dict[str, list[float]] = {"redis": [], "memory": []}
        for _ in range(count):
            for name, gateway in (("redis", redis_gateway), ("memory", memory_gateway)):
                started = time.perf_counter()
                response = await http.get(gateway.url + "/v1/models")
                times[name].append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.text
    for name, values in times.items():
        figures[name] = {
            "p50 ms": round(percentile(values, 50), 2),
            "p99 ms": round(percentile(values, 99), 2),
            "mean ms": round(statistics.mean(values), 2),
        }
    figures["redis adds (p50 / p99 ms)"] = (
        round(figures["redis"]["p50 ms"] - figures["memory"]["p50 ms"], 2),
        round(figures["redis"]["p99 ms"] - figures["memory"]["p99 ms"], 2),
    )
    return figures


async def main(args) -> None:
    redis = RedisServer()
    upstream = await FakeVLLM().start()
    upstream.tokens = [" word"] * int(args.hold)
    upstream.delay = 1.0
    gateways: list[GatewayProcess] = []
    try:
        settings = dict(
            url=redis.url, upstream=upstream.url, rpm=args.rpm, audio_limit=args.audio_limit
        )
        for backend in ("redis", "redis", "memory"):
            preload = '["sa-chat", "tts-1"]' if backend == "redis" else "[]"
            gateways.append(
                GatewayProcess(CONFIG.format(preload=preload, backend=backend, **settings))
            )
        for gateway in gateways:
            await asyncio.to_thread(gateway.wait_ready)
        pair, memory = gateways[:2], gateways[2]
        async with client("sk-load", 4) as http:  # warm both: first chat, first speech
            for gateway in pair:
                await chat_stream(http, gateway.url, 2)
                await speech_stream(http, gateway.url)
        upstream.delay = 1.0
        report = {"held streams": await held_streams(pair, args.streams, args.speech, args.hold)}
        report["limit accuracy"] = await accuracy(
            pair, args.burst, args.rpm, args.audio_limit, args.audio_streams
        )
        report["latency per request (GET /v1/models, limited key)"] = await latency(
            pair[0], memory, args.latency_requests
        )
        print(json.dumps(report, indent=2))
    finally:
        for gateway in gateways:
            gateway.stop()
        await upstream.stop()
        redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--speech", type=int, default=10, help="speech streams at a time")
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--rpm", type=int, default=137)
    parser.add_argument("--audio-limit", type=float, default=20.0)
    parser.add_argument("--audio-streams", type=int, default=8)
    parser.add_argument("--latency-requests", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
