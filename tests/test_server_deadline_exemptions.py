"""The times the server's header and body deadlines must not run (gateway/server.py):
while a client waits for its ``100 Continue``, while the app has stopped reading the
body (uvicorn's flow control paused the socket), and while a response streams. In each
the client is not the one stalling, so cutting it would drop a good request.

The gateway's own handlers read their bodies at once and stream only as fast as their
engines allow, so none of them can hold a body unread or leave a gap in a stream for a
chosen time. The server here is therefore the protocol and configuration ``serve`` runs
(``server_config``, on both HTTP parsers) around a small ASGI app that does exactly that:
it waits ``hold`` seconds before asking for the body, then echoes its length or streams
events ``gap`` seconds apart. Clients are raw sockets, so each test decides which bytes
arrive when. The deadlines are short; every "not cut" is checked over at least twice
the deadline, every "cut" with a generous bound, for a busy two-core machine. (A real
spoken chat stream outliving the gateway's timeouts is checked in tests/test_security.py,
test_another_key_cannot_resolve_an_audio_id.)
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from urllib.parse import parse_qs

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from gateway.server import protocol_class, server_config
from gateway.settings import load_settings
from tests.conftest import LiveServer, free_port

DEADLINE = 0.5  # header and body idle timeouts of the servers here, seconds
MIN_RATE = 1024.0  # bytes per second
SLACK = 1.5  # scheduling on a busy two-core machine


async def app(scope, receive, send) -> None:
    """``/echo``: wait ``hold`` s, read the body, answer its length. ``/stream``: the
    same, then ``events`` SSE events ``gap`` s apart and ``[DONE]``."""
    query = {
        key: float(values[0]) for key, values in parse_qs(scope["query_string"].decode()).items()
    }
    await asyncio.sleep(query.get("hold", 0.0))
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"] != "/stream":
        body = json.dumps({"bytes": size}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for i in range(int(query["events"])):
        await asyncio.sleep(query["gap"])
        await send(
            {"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True}
        )
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


class Served(LiveServer):
    """``app`` behind the uvicorn configuration ``serve`` uses, with short deadlines."""

    def __init__(self, parser: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = load_settings()
        settings.server.host = "127.0.0.1"
        settings.server.port = self.port
        settings.server.header_timeout_seconds = DEADLINE
        settings.server.body_idle_timeout_seconds = DEADLINE
        settings.server.body_min_bytes_per_second = MIN_RATE
        settings.server.keep_alive_timeout_seconds = DEADLINE
        config = server_config(app, settings, lifespan="off", http=protocol_class(parser))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)


@pytest.fixture(scope="module", params=["httptools", "h11"])
def served(request):
    live = Served(request.param).start(ready_path="/echo")
    yield live
    live.stop()


# ------------------------------------------------------------------ raw HTTP


def connect(live) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def head(path: str, length: int, *extra: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "host: x",
        "connection: close",
        f"content-length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_interim(sock: socket.socket) -> bytes:
    """The first response head (a ``100 Continue`` or the final answer); what follows it
    in the same read is left out."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# ------------------------------------------------------------------ 1. Expect: 100-continue


def test_a_client_waiting_for_100_continue_is_not_timed_out(served):
    """The app asks for the body only after four deadlines; the client holds its body
    back until then, as ``Expect: 100-continue`` tells it to, and is served."""
    body = b'{"hello": "world"}'
    with connect(served) as sock:
        sock.sendall(head("/echo?hold=" + str(4 * DEADLINE), len(body), "expect: 100-continue"))
        sent = time.monotonic()
        interim = read_interim(sock)
        waited = time.monotonic() - sent
        assert interim.startswith(b"HTTP/1.1 100 "), interim[:300]
        sock.sendall(body)
        answer = read_all(sock)
    assert waited >= 2 * DEADLINE, waited
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"bytes": 18}'), answer[:300]


def test_after_100_continue_the_client_has_a_whole_body_deadline_to_start(served):
    """The body deadline starts when the ``100 Continue`` goes out, not at some earlier
    point of the wait: a client that takes half the deadline to start its body is served.
    (The app's wait ends 0.8 deadlines into a deadline period, so a deadline still
    counted from the wait would expire 0.2 deadlines after the ``100 Continue``.)"""
    body = b'{"hello": "world"}'
    with connect(served) as sock:
        sock.sendall(head("/echo?hold=" + str(2.8 * DEADLINE), len(body), "expect: 100-continue"))
        interim = read_interim(sock)
        assert interim.startswith(b"HTTP/1.1 100 "), interim[:300]
        time.sleep(0.5 * DEADLINE)
        try:
            sock.sendall(body)
        except OSError:  # already closed by the server
            pass
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"bytes": 18}'), answer[:300]


def test_after_100_continue_a_client_that_sends_nothing_is_answered_408(served):
    """The exemption ends with the wait: from the ``100 Continue`` on, the body deadline
    applies as to any body."""
    with connect(served) as sock:
        sock.sendall(head("/echo?hold=" + str(1.5 * DEADLINE), 100, "expect: 100-continue"))
        interim = read_interim(sock)
        continued = time.monotonic()
        assert interim.startswith(b"HTTP/1.1 100 "), interim[:300]
        answer = interim.partition(b"\r\n\r\n")[2] + read_all(sock)
        seconds = time.monotonic() - continued
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in answer, answer[:300]
    assert seconds <= 2 * DEADLINE + SLACK, seconds


# ------------------------------------------------------------------ 2. the app has stopped reading


def test_a_body_the_app_does_not_read_yet_is_not_timed_out(served):
    """The client sends a body far past uvicorn's read buffer at once; the server stops
    reading it (flow control) while the app is busy for four deadlines. Nothing arrives
    in that time, but the client is not stalling: it is served in full."""
    size = 16 * HIGH_WATER_LIMIT
    with connect(served) as sock:
        sock.sendall(head("/echo?hold=" + str(4 * DEADLINE), size))
        started = time.monotonic()
        sender = threading.Thread(target=sock.sendall, args=(b"x" * size,), daemon=True)
        sender.start()  # blocks while the server does not read
        answer = read_all(sock)
        seconds = time.monotonic() - started
        sender.join(timeout=10)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"bytes": size}
    assert seconds >= 2 * DEADLINE, seconds


def test_once_the_app_reads_again_a_stalled_body_is_answered_408(served):
    """The exemption ends when the app reads: a client that sent only part of its body
    is cut a deadline or two after the app has taken what arrived (two when the server
    had read it all before the pause, so nothing came after it)."""
    hold = 2 * DEADLINE
    with connect(served) as sock:
        sock.sendall(
            head("/echo?hold=" + str(hold), 16 * HIGH_WATER_LIMIT) + b"x" * (4 * HIGH_WATER_LIMIT)
        )
        started = time.monotonic()
        answer = read_all(sock)
        seconds = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in answer, answer[:300]
    assert hold <= seconds <= hold + 2 * DEADLINE + SLACK, seconds


# ------------------------------------------------------------------ 3. a streamed response


def test_a_stream_with_gaps_longer_than_the_deadlines_is_not_cut(served):
    """The body arrives in its own packet after a pause (so the body deadline was
    running), then the response streams with gaps of 1.5 deadlines: no deadline runs
    while a response is produced."""
    body = b'{"stream": true}'
    with connect(served) as sock:
        sock.sendall(head("/stream?events=3&gap=" + str(1.5 * DEADLINE), len(body)))
        time.sleep(0.3 * DEADLINE)
        sock.sendall(body)
        started = time.monotonic()
        answer = read_all(sock)
        seconds = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert [b"data: 0", b"data: 1", b"data: 2", b"data: [DONE]"] == [
        line for line in answer.split(b"\n") if line.startswith(b"data: ")
    ]
    assert seconds >= 4 * DEADLINE, seconds
