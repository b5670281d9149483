"""Streaming helpers: start a stream only once its first piece exists; end the work a
request started when its client leaves.

A streamed response commits to a 200 with its first byte. Pulling the first item before
the response starts lets failures that happen up front (an unknown voice, a model that
will not load, undecodable audio, a full queue) still answer with a proper status and
error envelope. Once that first item exists the request is committed: engine queues
refuse it nothing more (see engines.workers.QueueAdmission), so a stream is never cut off
for being busy.

Litestar stops a streamed response when its client disconnects, but not a handler that
is still computing a JSON answer: a chat whose client had gone kept the model generating
to the end. :func:`disconnect_middleware` watches for the client leaving once the body
has been read (told by the server's protocol, gateway.server) and cancels the request's
work, and :func:`spawn` ties background tasks (a stream's producer) to the request, so
none outlives it.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Generic, TypeVar

import anyio
import structlog
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import ASGIApp, Message, Receive, Scope, Send

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
    return _Primed(first, source)


class _Primed(Generic[T]):
    """``first``, then the rest of ``source``, adding no frame of its own per item: its
    ``__anext__`` hands out the source's own awaitable (an async generator re-yielding
    every item was one more layer each event of a stream passed through)."""

    __slots__ = ("_first", "_rest")

    def __init__(self, first: T, rest: AsyncIterator[T]) -> None:
        self._first = [first]
        self._rest = rest

    def __aiter__(self) -> "_Primed[T]":
        return self

    def __anext__(self) -> Awaitable[T]:
        if self._first:
            return _ready(self._first.pop())
        return self._rest.__anext__()

    async def aclose(self) -> None:
        close = getattr(self._rest, "aclose", None)
        if close is not None:
            await close()


async def _ready(value: T) -> T:
    return value


_request_tasks: contextvars.ContextVar[set[asyncio.Task] | None] = contextvars.ContextVar(
    "request_tasks", default=None
)


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
    """Run ``coro`` as a task that is cancelled, at the latest, when the request ends."""
    task = asyncio.create_task(coro)
    tasks = _request_tasks.get()
    if tasks is not None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    return task


#: The scope key under which gateway.server's protocol hands a request its DisconnectWatch.
DISCONNECT_WATCH = "gateway.disconnect_watch"


class DisconnectWatch:
    """How the server tells a request that its client has gone, with no task waiting in
    ``receive()`` for it: the request calls :meth:`listen`, and the protocol calls
    :meth:`fire` once when the connection is lost. A task per request only to wait for
    that cost more than the rest of the disconnect handling (issue 11).

    ``resume`` is the protocol's ``resume_reading``: a large body leaves the socket paused
    (uvicorn's flow control), and only reading it shows the client closing, so listening
    resumes it, as a ``receive()`` waiting for the disconnect would.
    """

    __slots__ = ("callback", "_resume")

    def __init__(self, resume: Callable[[], None] | None = None) -> None:
        self.callback: Callable[[], None] | None = None
        self._resume = resume

    def listen(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        if self._resume is not None:
            self._resume()

    def fire(self) -> None:
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()


class _Connection:
    """The request's view of its ASGI connection, which notices the client leaving.

    Once the app has read the whole body, the only message left to come is
    ``http.disconnect``. Its arrival, told by the server's :class:`DisconnectWatch`
    (or, under a server without one, seen by a listener task that owns ``receive``), is
    handed to every later ``receive`` call (Litestar's stream listener among them) and,
    while the response is not complete, answered by cancelling the request's task.

    That cancellation is asyncio's own (``Task.cancel``, taken back with ``uncancel``
    when the middleware absorbs it, as ``asyncio.timeout`` does) rather than an anyio
    cancel scope: a scope per request cost more than the rest of this middleware.
    """

    def __init__(self, receive: Receive, send: Send, watch: DisconnectWatch | None) -> None:
        self._receive = receive
        self._send = send
        self._task = asyncio.current_task()
        self._body_read = False
        self._complete = False
        self._left = asyncio.Event()
        self.watch = watch
        self.listener: asyncio.Task | None = None
        self.cancelled = False  # the request's task was cancelled because the client left

    async def receive(self) -> Message:
        if not self._body_read:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._leave()
            elif not message.get("more_body", False):
                self._body_read = True
                if self.watch is not None:
                    self.watch.listen(self._leave)
                else:
                    self.listener = asyncio.create_task(self._listen())
            return message
        await self._left.wait()
        return {"type": "http.disconnect"}

    @property
    def watching(self) -> bool:
        """A disconnect now cancels the request (watched from the end of its body on)."""
        return self._body_read

    async def send(self, message: Message) -> None:
        if message["type"] != "http.response.body" or message.get("more_body", False):
            await self._send(message)
            return
        self._complete = True
        await self._send(message)
        self._left.set()  # as the server does: once the response is complete, receive ends

    async def _listen(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass  # nothing but a disconnect is expected after the body
        self._leave()

    def _leave(self) -> None:
        self._left.set()
        if not self._complete and not self.cancelled and self._task is not None:
            log.info("client_disconnected")
            self.cancelled = True
            self._task.cancel()

    def absorb(self) -> bool:
        """Take back this connection's cancellation; False when the task must stay
        cancelled (it was not ours, or someone else cancelled it as well)."""
        if not self.cancelled or self._task is None:
            return False
        self.cancelled = False
        return self._task.uncancel() == 0


def disconnect_middleware(app: ASGIApp) -> ASGIApp:
    """A client that leaves cancels its request's work (see the module notes), and each
    request gets its own admission record, shared with the tasks it starts (one layer for
    both: every response message passes through each layer)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        tasks: set[asyncio.Task] = set()
        connection = _Connection(receive, send, scope.get(DISCONNECT_WATCH))
        token = _request_tasks.set(tasks)
        admission = open_admission()
        try:
            await app(scope, connection.receive, connection.send)
        except asyncio.CancelledError:
            if not connection.absorb():
                raise
        finally:
            if connection.watch is not None:
                connection.watch.callback = None  # the request is over: nothing to cancel
            if connection.listener is not None:
                # It only waits for the disconnect (or for the end the server reports once
                # the response is complete), so it holds nothing to wait for; cancelled
                # first, so that it cannot cancel this task while it cleans up.
                connection.listener.cancel()
            connection.absorb()  # cancelled, but the app returned anyway
            close_admission(admission)
            _request_tasks.reset(token)
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(*pending, return_exceptions=True)

    return middleware


class FinalChunk(bytes):
    """The last bytes of a stream, marked by a source that knows nothing follows them:
    they go out with the end of the body, in one write, not two."""

    __slots__ = ()


class _WatchedResponse(ASGIStreamingResponse):
    __slots__ = ()

    async def _stream(self, send: Send) -> None:
        final = False
        async for chunk in self.iterator:
            final = type(chunk) is FinalChunk
            body = chunk if isinstance(chunk, bytes) else chunk.encode(self.encoding)
            await send({"type": "http.response.body", "body": body, "more_body": not final})
        if not final:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send_body(self, send: Send, receive: Receive) -> None:
        connection = getattr(receive, "__self__", None)
        if isinstance(connection, _Connection) and connection.watching:
            await self._stream(send)  # disconnect_middleware already watches
        else:
            await super().send_body(send, receive)


class WatchedStream(Stream):
    """A :class:`~litestar.response.Stream` without Litestar's own disconnect listener.

    Litestar runs every streamed response in a task group with a task that waits for
    ``http.disconnect``; :func:`disconnect_middleware` already waits for it once the
    body is read and cancels the whole request, stream included, so that second task
    (and its task group, a measurable share of a short stream's cost) is skipped when
    the middleware's listener is running. Otherwise Litestar's behaviour is kept.
    """

    __slots__ = ()

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        if type(response) is ASGIStreamingResponse:  # same slots: only send_body differs
            response.__class__ = _WatchedResponse
        return response


async def _empty() -> AsyncIterator[T]:
    return
    yield  # pragma: no cover


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
