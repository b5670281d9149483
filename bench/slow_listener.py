"""Other users' chat latency while one client holds a spoken chat stream open and never reads.

Before streams were decoupled from their writers, that client kept the chat model's turn
while its socket was full, and every other chat waited until it went away. Now its reply
is generated at the engine's pace into the stream's buffer (default 8 MiB), so other chats
wait at most for that generation, as they would beside a client that reads at full speed.

    .venv/bin/python bench/slow_listener.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time

import httpx
from _server import start_server

SHORT_CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Hi!"}],
    "max_tokens": 8,
}
SPOKEN_STREAM = {
    "model": "gpt-4o-audio-preview",
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "pcm16"},
    "stream": True,
    "max_tokens": 300,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}],
}


def timed(client: httpx.Client) -> float:
    start = time.monotonic()
    client.post("/v1/chat/completions", json=SHORT_CHAT).raise_for_status()
    return time.monotonic() - start


def open_unread(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    body = json.dumps(SPOKEN_STREAM).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server, url = start_server(["tts-1", "gpt-4o-mini"])
    with httpx.Client(base_url=url, timeout=600) as client:
        timed(client)  # warm
        alone = [timed(client) for _ in range(args.rounds)]
        print(f"short chat alone: median {statistics.median(alone):.2f} s, max {max(alone):.2f} s")
        stalled = open_unread(url)
        opened = time.monotonic()
        time.sleep(0.5)
        for _ in range(args.rounds):
            at = time.monotonic() - opened
            print(f"short chat {at:5.1f} s after a non-reading client opened its stream:"
                  f" {timed(client):.2f} s")
        stalled.close()
    server.should_exit = True


if __name__ == "__main__":
    main()
