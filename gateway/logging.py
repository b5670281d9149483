"""Structured logs: JSON lines for machines, readable lines on a terminal.

Every request gets an id (``req_<hex>``, or a sane one the client sent) that is bound to
all log lines written while serving it and echoed as ``x-request-id``, which the OpenAI
SDKs surface as ``response._request_id`` and ``error.request_id``.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import time

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
log = structlog.get_logger("gateway.access")
# Whether configure_logging's level lets the access line through. Below it, the line is
# not even built: the filtering logger drops it anyway, after a lazy proxy's bind() and
# the fields' arithmetic, several µs of every request.
_access_enabled = True


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    global _access_enabled
    _access_enabled = numeric <= logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Inference libraries log every call at INFO through the stdlib; keep their warnings.
    for noisy in ("faster_whisper", "piper", "httpx"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


def new_request_id() -> str:
    # 128 random bits in uuid4().hex's shape, without a UUID object or a system call: a
    # request id is unique, not a secret (random is reseeded in each forked worker).
    return "req_%032x" % random.getrandbits(128)


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Assign the request id, echo it on every response, and write one access line."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:  # the last one wins, as a dict of them did
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
        request_id = incoming if incoming and _CLIENT_ID.match(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0
        first_byte: float | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and first_byte is None:
                first_byte = time.perf_counter()
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await app(scope, receive, send_with_id)
        finally:
            if _access_enabled:
                elapsed = time.perf_counter() - started
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status,
                    ms=round(elapsed * 1000, 1),
                    first_byte_ms=round((first_byte - started) * 1000, 1) if first_byte else None,
                )
            structlog.contextvars.unbind_contextvars("request_id")

    return middleware
