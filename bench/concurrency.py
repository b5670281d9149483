"""How speech streams share one engine: several listeners at once, through the real server.

N clients ask for the same five-sentence text at the same moment (Piper, pcm, streamed).
Engines take turns a sentence at a time, so every listener should hear its first sentence
after about N first-sentence times, instead of waiting for whole answers queued ahead of
it. Printed per N: first byte (median and worst), total time, audio produced per wall
second, and 429s; then the worst first byte against what one-after-another serving would
give (N-1 whole answers plus a first sentence), measured on the same run.

    python bench/concurrency.py [--clients 1 2 4 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import httpx
from _server import start_server

TEXT = (
    "The gateway turns text into speech on an ordinary computer. "
    "It streams each sentence as soon as it is ready. "
    "Clients hear the first words while the rest is still being made. "
    "Every output format is encoded on the fly. "
    "Nothing here needs a graphics card or a network connection."
)
PCM_BYTES_PER_SECOND = 24_000 * 2


def listen(url: str, start: threading.Event, results: list, slot: int) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "pcm"}
    start.wait()
    began = time.perf_counter()
    first, size = None, 0
    with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=300) as response:
        if response.status_code != 200:
            response.read()
            results[slot] = (response.status_code, None, time.perf_counter() - began, 0)
            return
        for chunk in response.iter_bytes():
            if first is None and chunk:
                first = time.perf_counter() - began
            size += len(chunk)
    results[slot] = (200, first, time.perf_counter() - began, size / PCM_BYTES_PER_SECOND)


def round_of(url: str, clients: int) -> dict:
    results: list = [None] * clients
    start = threading.Event()
    threads = [threading.Thread(target=listen, args=(url, start, results, i)) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    start.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    served = [r for r in results if r[0] == 200]
    firsts = [r[1] for r in served]
    return {
        "first_median": statistics.median(firsts) if firsts else float("nan"),
        "first_worst": max(firsts) if firsts else float("nan"),
        "total": wall,
        "audio_per_second": sum(r[3] for r in served) / wall,
        "refused": sum(1 for r in results if r[0] == 429),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _, url = start_server(["tts-1"])
    round_of(url, 1)  # warm-up
    rows = {}
    for clients in args.clients:
        runs = [round_of(url, clients) for _ in range(args.repeats)]
        rows[clients] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    alone = rows.get(1) or round_of(url, 1)
    print(f"Piper (tts-1, voice alloy), pcm, five sentences; median of {args.repeats} rounds")
    print(f"{'clients':>7} {'first byte p50':>15} {'worst':>8} {'total':>8} {'audio s/s':>10} {'429s':>5}"
          f" {'one-after-another worst':>24} {'ratio':>6}")
    for clients, row in rows.items():
        serial_worst = (clients - 1) * alone["total"] + alone["first_median"]
        print(f"{clients:>7} {row['first_median']:>14.3f}s {row['first_worst']:>7.3f}s {row['total']:>7.2f}s"
              f" {row['audio_per_second']:>10.1f} {row['refused']:>5.0f} {serial_worst:>23.3f}s"
              f" {row['first_worst'] / serial_worst:>6.2f}")


if __name__ == "__main__":
    main()
