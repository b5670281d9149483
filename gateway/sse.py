"""Server-sent events the way the OpenAI SDKs parse them.

Only ``data:`` lines (no ``event:`` names, which older SDKs turn into wrapper objects),
one JSON object per event, ``: ping`` comments as keep-alives (a data-less event breaks
both SDKs' JSON parsing), and, once a 200 has gone out, failures reported as a final
``data: {"error": ...}`` event, which the SDKs raise as ``openai.APIError``.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, AsyncIterator

import msgspec
import structlog
from litestar import Request
from litestar.response import Stream

from .errors import sse_error_event, to_api_error

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
    return b"data: " + _escape_line_breaks(_encoder.encode(payload)) + b"\n\n"


async def report_failures(events: AsyncIterator[bytes], request: Request) -> AsyncIterator[bytes]:
    """End the stream with an error event instead of silence when the source fails."""
    try:
        async for chunk in events:
            yield chunk
    except Exception as exc:  # noqa: BLE001 - any failure must reach the client
        error = to_api_error(exc, request)
        log.warning("stream_failed", status=error.status_code, message=error.message)
        yield _escape_line_breaks(sse_error_event(error))


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


async def with_keepalive(events: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    """Interleave ``: ping`` comments whenever ``events`` is silent for ``interval`` seconds.

    The source is drained by one producer task (so its own cancel scopes never straddle
    tasks); the consumer waits on a queue with a timeout, which is safe to cancel.
    """
    if interval <= 0:
        async for item in events:
            yield item
        return
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async for item in events:
                await queue.put(item)
        except Exception as exc:  # noqa: BLE001 - forwarded to the consumer
            await queue.put(_Raised(exc))
            return
        await queue.put(_END)

    producer = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=interval)
            except asyncio.TimeoutError:
                yield PING
                continue
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        if not producer.done():
            producer.cancel()
            try:
                await producer
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass


async def encode_events(items: AsyncIterator[Any], *, done: bool) -> AsyncIterator[bytes]:
    async for item in items:
        yield event(item)
    if done:
        yield DONE


def sse_response(
    items: AsyncIterator[Any], request: Request, *, keepalive: float, done: bool
) -> Stream:
    """A streamed 200 of ``data:`` events: failures become an error event, silences pings.

    ``done`` adds the ``data: [DONE]`` terminator (chat and transcription streams have it;
    the speech stream's spec ends with its ``speech.audio.done`` event instead).
    """
    body = report_failures(encode_events(items, done=done), request)
    return Stream(with_keepalive(body, keepalive), media_type=MEDIA_TYPE, headers=HEADERS)
