"""Streaming helpers: start a stream only once its first piece exists.

A streamed response commits to a 200 with its first byte. Pulling the first item before
the response starts lets failures that happen up front (an unknown voice, a model that
will not load, undecodable audio, a full queue) still answer with a proper status and
error envelope. Once that first item exists the request is committed: engine queues
refuse it nothing more (see engines.workers.Admission), so a stream is never cut off
for being busy.
"""

from __future__ import annotations

from typing import AsyncIterator, TypeVar

import structlog
from litestar.types import ASGIApp, Receive, Scope, Send

from engines.workers import close_admission, commit_admission, open_admission

log = structlog.get_logger(__name__)

T = TypeVar("T")


async def prime(source: AsyncIterator[T]) -> AsyncIterator[T]:
    """Return an iterator equal to ``source`` whose first item has already been produced."""
    try:
        first = await source.__anext__()
    except StopAsyncIteration:
        return _empty()
    commit_admission()
    return _chain(first, source)


def admission_middleware(app: ASGIApp) -> ASGIApp:
    """Each request gets its own admission record, shared with the tasks it starts."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        token = open_admission()
        try:
            await app(scope, receive, send)
        finally:
            close_admission(token)

    return middleware


async def _empty() -> AsyncIterator[T]:
    return
    yield  # pragma: no cover


async def _chain(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    yield first
    async for item in rest:
        yield item


async def abort_on_failure(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """For binary streams: a failure mid-way must not look like a complete file.

    Re-raising makes the server drop the connection without the final chunk, so the
    client sees a truncated transfer instead of a short but "successful" audio file.
    """
    try:
        async for chunk in source:
            yield chunk
    except Exception as exc:
        log.warning("binary_stream_failed", error=repr(exc))
        raise
