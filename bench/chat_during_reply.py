"""A chat request sent while a long spoken reply streams, against the same request alone.

One client streams a long spoken answer (modalities text + audio, pcm16); once its first
audio has arrived, a second client sends a short streamed chat request and times its
first token and its whole answer. The same request is timed alone right before each
such round, so both see the same load. Printed: medians of the request alone and during
the reply, their ratio, and whether the reply was still speaking when the answer ended.

    python bench/chat_during_reply.py [--repeats 5] [--max-tokens 40] [--n-threads-batch 1]

``--n-threads-batch 1`` evaluates prompts on one thread: on a host whose cores other
processes share, two spinning threads stall prompts for seconds, alone and during the
reply alike (engines/embedded/llama.py, Threads).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import httpx
from _server import start_server

QUESTION = "Name five animals and say one thing about each."
STORY = "Tell me a very long story about a dragon who learns to sing."


def timed_chat(client: httpx.Client, max_tokens: int) -> dict:
    """Seconds to the first token and to the end of a streamed text answer."""
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 1,
    }
    started = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and '"content":"' in line:
                first = time.perf_counter() - started
    return {"first": first, "total": time.perf_counter() - started}


class SpokenReply(threading.Thread):
    """Streams a long spoken answer until told to stop; ``speaking`` is set at its first
    audio, ``ended`` when its stream ended on its own."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.speaking = threading.Event()
        self.stop = threading.Event()
        self.ended = False

    def run(self) -> None:
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": STORY}],
            "stream": True,
            "max_tokens": 500,
            "temperature": 0,
            "seed": 1,
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "pcm16"},
        }
        with httpx.stream("POST", self.url + "/v1/chat/completions", json=body, timeout=300) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if self.stop.is_set():
                    return  # leaving closes the stream: the gateway stops the reply
                if line.startswith("data: {") and '"data":"' in line:
                    choices = json.loads(line[6:])["choices"]
                    if choices and (choices[0]["delta"].get("audio") or {}).get("data"):
                        self.speaking.set()
        self.ended = True
        self.speaking.set()


def during_reply(client: httpx.Client, url: str, max_tokens: int) -> dict:
    reply = SpokenReply(url)
    reply.start()
    reply.speaking.wait(120)
    result = timed_chat(client, max_tokens)
    result["reply_still_speaking"] = not reply.ended
    reply.stop.set()
    reply.join(120)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--n-threads-batch", type=int, help="the chat model's prompt threads")
    args = parser.parse_args()
    options = {}
    if args.n_threads_batch is not None:
        options["smollm2-135m"] = {"n_threads_batch": args.n_threads_batch}
    server, url = start_server(["tts-1", "gpt-4o-mini"], options)
    client = httpx.Client(base_url=url, timeout=300)
    timed_chat(client, args.max_tokens)  # warm-up
    alone, during = [], []
    for _ in range(args.repeats):
        alone.append(timed_chat(client, args.max_tokens))
        during.append(during_reply(client, url, args.max_tokens))
    print(f"Streamed chat answer, max_tokens={args.max_tokens}, temperature 0, "
          f"n_threads_batch={args.n_threads_batch or 'default'}; "
          f"median of {args.repeats} rounds (alone right before each spoken reply)")
    print(f"{'':28} {'first token s':>13} {'total s':>8}")
    for name, runs in (("alone", alone), ("during a spoken reply", during)):
        first = statistics.median(r["first"] for r in runs)
        total = statistics.median(r["total"] for r in runs)
        print(f"{name:28} {first:13.3f} {total:8.3f}")
    ratios = [d["total"] / a["total"] for a, d in zip(alone, during)]
    speaking = sum(r["reply_still_speaking"] for r in during)
    print(f"\ntotal during / alone, per round: {', '.join(f'{r:.2f}' for r in ratios)}"
          f" (median {statistics.median(ratios):.2f}); the reply was still speaking at the"
          f" answer's end in {speaking} of {len(during)} rounds")
    server.should_exit = True


if __name__ == "__main__":
    main()
