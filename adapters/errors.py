"""The project's one error hierarchy, at the bottom of its layers: engines raise these,
adapters raise these, and the gateway answers them (its ``APIError`` is
:class:`EngineError`) as OpenAI error envelopes or realtime ``error`` events.
"""

from __future__ import annotations


class EngineError(Exception):
    """The service's one error type, raised by engines (which know nothing of HTTP) and by
    the gateway alike: what went wrong, the status and OpenAI ``code`` a client gets for
    it, and ``param``, the offending input, if any. ``type`` (OpenAI's error type) is left
    to the gateway to derive from the status unless set; ``headers`` go on the response."""

    status_code = 500
    code: str | None = "engine_error"
    type: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = dict(headers or {})


class InvalidInput(EngineError):
    """The input is well-formed but this engine cannot use it (bad voice, bad audio)."""

    status_code = 400
    code = "invalid_value"


class EngineOverloaded(EngineError):
    """Too many requests are waiting for this engine; the client should retry later."""

    status_code = 429
    code = "engine_overloaded"


class EngineUnavailable(EngineError):
    """The engine could not be loaded (missing package, bad weights)."""

    status_code = 503
    code = "engine_unavailable"
