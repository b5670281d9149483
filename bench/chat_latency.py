"""Latency of a streamed spoken chat answer through the real HTTP server.

Prints time to the first text token, time to the first audio chunk and total time for a
streamed answer with audio (pcm16), next to the same request without audio (the text-only
baseline, same run), and the seconds of audio produced.

    python bench/chat_latency.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx
from _server import start_server

QUESTION = "Tell me three facts about the ocean."


def run_once(client: httpx.Client, audio: bool, max_tokens: int) -> dict:
    body = {
        "model": "gpt-4o-audio-preview",
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if audio:
        body |= {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}
    started = time.perf_counter()
    first_text = first_audio = None
    pcm_bytes = tokens = 0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if not chunk["choices"]:
                continue
            delta = chunk["choices"][0]["delta"]
            now = time.perf_counter() - started
            text = delta.get("content") or (delta.get("audio") or {}).get("transcript")
            if text:
                tokens += 1
                first_text = first_text if first_text is not None else now
            data = (delta.get("audio") or {}).get("data")
            if data:
                first_audio = first_audio if first_audio is not None else now
                pcm_bytes += len(data) * 3 // 4
    return {
        "first_text": first_text,
        "first_audio": first_audio,
        "total": time.perf_counter() - started,
        "audio_s": pcm_bytes / 2 / 24000,
        "deltas": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=120)
    args = parser.parse_args()
    server, url = start_server(["tts-1", "whisper-1", "gpt-4o-mini"])
    client = httpx.Client(base_url=url, timeout=300)
    run_once(client, True, 10)  # warm-up
    print(
        f"Streamed chat answer, median of {args.repeats}, max_tokens={args.max_tokens}, temperature 0"
    )
    print(
        f"{'mode':14} {'first text s':>12} {'first audio s':>13} {'total s':>8} {'audio s':>8} {'deltas':>7}"
    )
    results = {}
    for mode, audio in (("text only", False), ("text + audio", True)):
        runs = [run_once(client, audio, args.max_tokens) for _ in range(args.repeats)]
        med = {
            k: statistics.median(r[k] for r in runs) if runs[0][k] is not None else None
            for k in runs[0]
        }
        results[mode] = med
        fa = f"{med['first_audio']:.3f}" if med["first_audio"] is not None else "-"
        print(
            f"{mode:14} {med['first_text']:12.3f} {fa:>13} {med['total']:8.3f} {med['audio_s']:8.2f} {med['deltas']:7.0f}"
        )
    text, spoken = results["text only"], results["text + audio"]
    print(
        f"\nratios: first audio / total = {spoken['first_audio'] / spoken['total']:.2f}; "
        f"first text with audio / without = {spoken['first_text'] / text['first_text']:.2f}; "
        f"total with audio / without = {spoken['total'] / text['total']:.2f}"
    )
    server.should_exit = True


if __name__ == "__main__":
    main()
