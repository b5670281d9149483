"""Server-sent events the way the OpenAI SDKs parse them.

Only ``data:`` lines (no ``event:`` names, which older SDKs turn into wrapper objects),
one JSON object per event, ``: ping`` comments as keep-alives (a data-less event breaks
both SDKs' JSON parsing), and, once a 200 has gone out, failures reported as a final
``data: {"error": ...}`` event, which the SDKs raise as ``openai.APIError``.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import aclosing
from typing import Any, AsyncIterator

import msgspec
import structlog
from litestar import Request
from litestar.response import Stream

from .errors import APIError, sse_error_event, to_api_error
from .pump import Pump
from .streaming import FinalChunk, WatchedStream

log = structlog.get_logger(__name__)

MEDIA_TYPE = "text/event-stream"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"

_encoder = msgspec.json.Encoder()

# JSON leaves U+0085, U+2028 and U+2029 unescaped, but httpx's Response.iter_lines (what
# line-by-line clients and httpx-sse before 0.4.2 read events with) splits lines on them as
# str.splitlines does, cutting the event's JSON in two. Escaped, it is the same JSON value.
_LINE_BREAKS = re.compile("|".join(["\u0085", "\u2028", "\u2029"]).encode())


def _escape_line_breaks(data: bytes) -> bytes:
    return _LINE_BREAKS.sub(lambda m: b"\\u%04x" % ord(m.group().decode()), data)


def event(payload: Any) -> bytes:
    data = _encoder.encode(payload)
    # Those line breaks are not ASCII; most events are, and isascii() costs a tenth of
    # one substring search (or of the regular expression).
    if not data.isascii():
        data = _escape_line_breaks(data)
    return b"data: " + data + b"\n\n"


class StreamOverflow(APIError):
    """The client left more unread than a stream may buffer; its generation was stopped."""

    status_code = 400  # the client's doing, reported as an invalid_request_error
    code = "stream_buffer_exceeded"


async def decoupled(
    events: AsyncIterator[bytes], *, keepalive: float, budget: int
) -> AsyncIterator[bytes]:
    """``events`` produced by a task of its own, whatever pace the client reads at.

    A generator driven by the response writer runs only as fast as the client reads: a
    listener that stopped reading held the chat model's turn (every other chat waited)
    while its socket was full. Here one producer task per stream runs the source into a
    buffer and never waits for the writer, so the source's engine is released when
    generation ends, however slowly the client reads. Past ``budget`` unread bytes the
    client is taken to have stopped reading: the source is closed at once (freeing its
    engine) and the stream ends with an error event after what was buffered.

    The writer sends everything buffered as one chunk (one send per wake-up, not per
    event; the last one, once the source is done, as a :class:`FinalChunk` that ends the
    body in the same write) and a ``: ping`` comment after ``keepalive`` seconds of
    silence (0: none).

    Each event costs the writer one bare future to wait on: the keep-alive is one timer
    per stream that re-arms itself from the time of the last write (no timeout context,
    timer handle or event per event), since events come far more often than pings.
    """
    loop = asyncio.get_running_loop()
    pump: Pump[bytes] = Pump(budget)
    ping_due = False
    quiet_since = loop.time()  # the last write (or the start)
    timer: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal timer, ping_due
        timer = None
        if not pump.waiting:
            return  # the writer is busy sending; it re-arms when it next waits
        due = quiet_since + keepalive
        if loop.time() >= due - 0.001:  # timers may fire up to the clock's resolution early
            ping_due = True
            pump.wake()
        else:
            timer = loop.call_at(due, tick)

    async def produce() -> None:
        async with aclosing(events):
            async for chunk in events:
                if not pump.put(chunk, len(chunk)):
                    break
            else:
                return
        # The source is closed: its engine is free again.
        log.warning("stream_overflow", unread=pump.unread, budget=budget)
        overflow = StreamOverflow(
            f"The stream was stopped: more than {budget} bytes were waiting for the "
            "client to read them (server.stream_buffer_bytes)."
        )
        pump.put(sse_error_event(overflow))

    pump.start(produce)
    try:
        while True:
            if pump.items:
                pending = pump.take()
                data = pending[0] if len(pending) == 1 else b"".join(pending)
                ping_due = False
                if pump.done and pump.failure is None:
                    data = FinalChunk(data)  # nothing can follow: sent with the body's end
                yield data
                quiet_since = loop.time()
                continue
            if pump.done:
                pump.raise_failure()
                return
            if ping_due:
                ping_due = False
                yield PING
                quiet_since = loop.time()
                continue
            if keepalive > 0 and timer is None:
                timer = loop.call_at(quiet_since + keepalive, tick)
            await pump.wait()
    finally:
        if timer is not None:
            timer.cancel()
        await pump.stop()


async def frames(
    items: AsyncIterator[Any], request: Request, *, done: bool
) -> AsyncIterator[bytes]:
    """``items`` as ``data:`` events, ended by a failure's error event instead of silence.

    Encoding and failure reporting are one generator: every event passes through each
    layer, and one layer fewer is a measurable share of an event's cost."""
    try:
        async for item in items:
            yield event(item)
        if done:
            yield DONE
    except Exception as exc:  # noqa: BLE001 - any failure must reach the client
        error = to_api_error(exc, request)
        log.warning("stream_failed", status=error.status_code, message=error.message)
        yield _escape_line_breaks(sse_error_event(error))


def sse_response(
    items: AsyncIterator[Any], request: Request, *, keepalive: float, done: bool
) -> Stream:
    """A streamed 200 of ``data:`` events: failures become an error event, silences pings,
    and a client that does not read holds no engine (see :func:`decoupled`).

    ``done`` adds the ``data: [DONE]`` terminator (chat and transcription streams have it;
    the speech stream's spec ends with its ``speech.audio.done`` event instead).
    """
    budget = request.app.state["settings"].server.stream_buffer_bytes
    return WatchedStream(
        decoupled(frames(items, request, done=done), keepalive=keepalive, budget=budget),
        media_type=MEDIA_TYPE,
        headers=HEADERS,
    )
