"""A network backend for the vLLM pool's httpx client that answers httpcore cheaply.

Before every request and after every response httpcore's pool asks each of its
connections whether it has expired, and an idle one answers by asking its stream whether
the socket is readable. httpcore's anyio stream looks the socket up through anyio's typed
attributes on every call, which builds a dict of every attribute each time: with 32
streams in flight that scan was 13% of the gateway's CPU in a py-spy profile of
bench/overhead.py (issue 11). Here the socket is looked up once per connection.
Everything else (reads, writes, timeouts, TLS, error mapping) is httpcore's own.
"""

from __future__ import annotations

import ssl
from typing import Any, Iterable

import httpcore
from httpcore._utils import is_socket_readable


class _Stream(httpcore.AsyncNetworkStream):
    __slots__ = ("_inner", "_socket")

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return is_socket_readable(self._socket)
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)


class CachedSocketBackend(httpcore.AnyIOBackend):
    """httpcore's anyio backend, with streams that keep their socket at hand."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await super().connect_tcp(host, port, timeout, local_address, socket_options))


def use_cached_socket_backend(transport: Any) -> bool:
    """Swap the backend of an ``httpx.AsyncHTTPTransport``'s pool; False (and nothing
    changed) when this httpx keeps its pool elsewhere: only speed depends on it."""
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.AsyncConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = CachedSocketBackend()
        return True
    return False
