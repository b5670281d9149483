"""OpenAI error envelopes for every failure, raised anywhere.

The SDKs read ``{"error": {"message", "type", "param", "code"}}`` and choose an exception
class (and whether to retry) from the status. So every path, including Litestar's own
404/405/413 and validation failures, ends here, and nothing becomes a bare 500 page. We
never answer a validation problem with 408 or 409: the SDKs retry those.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from engines.base import EngineError, InvalidInput

log = structlog.get_logger(__name__)


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct):
    error: ErrorDetail


#: The gateway raises the same error type as the engines (engines.base): one hierarchy,
#: whose classes carry the status and code; these names are the gateway's spelling of it.
APIError = EngineError
InvalidRequest = InvalidInput


def error_type(error: EngineError) -> str:
    """OpenAI's error ``type``: set on the error, or what OpenAI sends for its status."""
    if error.type:
        return error.type
    if error.status_code == 429:
        return "requests"
    return "server_error" if error.status_code >= 500 else "invalid_request_error"


def error_detail(error: EngineError) -> ErrorDetail:
    return ErrorDetail(
        message=error.message, type=error_type(error), param=error.param, code=error.code
    )


class AuthenticationFailed(APIError):
    status_code = 401
    code = "invalid_api_key"


class NotFound(APIError):
    status_code = 404
    code = "not_found"


class PayloadTooLarge(APIError):
    status_code = 413
    code = "file_too_large"


class ServerError(APIError):
    status_code = 500
    code = "internal_error"


def error_from_engine(exc: EngineError) -> EngineError:
    """``exc`` ready for the wire: its type filled in, and for a full queue what OpenAI
    sends for a rate limit (the SDKs raise RateLimitError and retry after retry-after; a
    full queue is a transient limit on how many requests this server takes at once, not a
    broken server, so 429 rather than 503)."""
    if exc.status_code == 429:
        exc.code = "rate_limit_exceeded"
        exc.headers.setdefault("retry-after", "1")
    exc.type = error_type(exc)
    return exc


_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")


def error_from_validation(exc: ValidationException) -> APIError:
    extra = exc.extra if isinstance(exc.extra, list) else []
    if not extra:
        return InvalidRequest(str(exc.detail), code="invalid_request")
    first = extra[0] if isinstance(extra[0], dict) else {}
    message = str(first.get("message", exc.detail))
    param = first.get("key")
    missing = _MISSING_FIELD.search(message)
    if missing:
        return InvalidRequest(
            f"Missing required parameter: '{missing.group(1)}'.",
            param=missing.group(1),
            code="missing_required_parameter",
        )
    if param in (None, "data"):
        param = None
        if message.startswith("'") or "Expected `object`" in message:
            message = "The request body must be a JSON object."
    message = plain_message(message)
    return InvalidRequest(
        f"Invalid value for '{param}': {message}" if param else message, param=param
    )


def _error_from_http(exc: HTTPException, request: Request) -> APIError:
    if isinstance(exc, NotFoundException):  # only raised by routing: handlers raise NotFound
        return NotFound(f"Invalid URL ({request.method} {request.url.path})", code="unknown_url")
    if isinstance(exc, MethodNotAllowedException):
        allowed = (exc.headers or {}).get("allow")
        return APIError(
            f"Method {request.method} is not allowed for {request.url.path}.",
            status_code=405,
            code="method_not_allowed",
            headers={"allow": allowed} if allowed else None,  # RFC 9110 §15.5.6
        )
    if exc.status_code == 413:
        return PayloadTooLarge("The request body is too large.", code="request_too_large")
    detail = str(exc.detail)
    if detail.startswith("JSON is malformed"):
        return invalid_json()
    if exc.status_code >= 500:
        return ServerError(detail)
    return APIError(detail, status_code=exc.status_code, code="invalid_request")


def to_api_error(exc: Exception, request: Request) -> APIError:
    if isinstance(exc, EngineError):
        return error_from_engine(exc)
    if isinstance(exc, ValidationException):
        return error_from_validation(exc)
    if isinstance(exc, HTTPException):
        return _error_from_http(exc, request)
    log.exception("unhandled_error", error=repr(exc))
    error = ServerError("The server had an error while processing your request.")
    error.headers["x-should-retry"] = "false"
    return error


def error_response(error: APIError) -> Response[Any]:
    return Response(
        content=ErrorResponse(error=error_detail(error)),
        status_code=error.status_code,
        headers=error.headers,
        media_type="application/json",
    )


def handle_exception(request: Request, exc: Exception) -> Response[Any]:
    error = to_api_error(exc, request)
    if error.status_code == HTTP_500_INTERNAL_SERVER_ERROR:
        log.error("request_failed", status=error.status_code, message=error.message)
    return error_response(error)


def sse_error_event(error: APIError) -> bytes:
    """The event that ends a stream already under way (see gateway/sse.py)."""
    return b"data: " + msgspec.json.encode(ErrorResponse(error=error_detail(error))) + b"\n\n"


_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`")

_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
    "bytes": "a string",
}


def _type_words(spec: str) -> str:
    return " or ".join(_TYPE_WORDS.get(part.strip(), part.strip()) for part in spec.split("|"))


_PLAIN = (
    # "Expected `str`, got `int`"
    (re.compile(r"Expected `([^`]+)`, got `([^`]+)`"),
     lambda m: f"expected {_type_words(m[1])}, got {_type_words(m[2])}"),
    # "Expected `str` of length <= 4096", "Expected `array` of length >= 1"
    (re.compile(r"Expected `(str|bytes)` of length (<=|>=) (\d+)"),
     lambda m: f"must be at {'most' if m[2] == '<=' else 'least'} {m[3]} characters long"),
    (re.compile(r"Expected `([^`]+)` of length (<=|>=) (\d+)"),
     lambda m: f"must have at {'most' if m[2] == '<=' else 'least'} {m[3]} items"),
    # "Expected `float` <= 4.0", "Expected `int` >= 1"
    (re.compile(r"Expected `([^`]+)` (<=|>=|<|>) (\S+)"),
     lambda m: "must be "
     + {"<=": "at most", ">=": "at least", "<": "less than", ">": "greater than"}[m[2]]
     + f" {m[3]}"),
    (re.compile(r"Expected `([^`]+)` matching regex `([^`]*)`"),
     lambda m: f"must match the pattern {m[2]}"),
    (re.compile(r"Invalid enum value (.+)"),
     lambda m: f"{_quoted(m[1])} is not one of the allowed values"),
    (re.compile(r"Invalid value (.+)"), lambda m: f"{_quoted(m[1])} is not one of the allowed values"),
    (re.compile(r"Object contains unknown field `([^`]+)`"), lambda m: f"unknown field '{m[1]}'"),
)


def _quoted(value: str, limit: int = 64) -> str:
    """A client's value as an error quotes it: its start only (a 100 kB value would
    otherwise come back whole in the message)."""
    return value if len(value) <= limit else value[: limit - 4] + "...'"


def plain_message(message: str) -> str:
    """A msgspec message in plain words: no Python type names, no backticks."""
    for pattern, words in _PLAIN:
        message = pattern.sub(words, message)
    return message.replace("`", "'")


def error_from_msgspec(exc: msgspec.ValidationError, *, form: bool = False) -> APIError:
    """Name the field msgspec names: the whole path (``messages[0].content``) in a JSON
    body, the field's name in a multipart ``form`` (whose fields are flat names)."""
    message = str(exc)
    at = _AT_PATH.search(message)
    path = at.group(1) if at else ""
    if form:
        path = re.split(r"[.\[]", path, maxsplit=1)[0]
    text = _AT_PATH.sub("", message)
    missing = _MISSING_FIELD.search(text)
    if missing:
        param = f"{path}.{missing.group(1)}" if path else missing.group(1)
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if not path:
        if text.startswith("Expected `object`"):
            return InvalidRequest("The request body must be a JSON object.", code="invalid_request")
        return InvalidRequest(plain_message(text))
    return InvalidRequest(f"Invalid value for '{path}': {plain_message(text)}.", param=path)


def invalid_json(reason: str = "") -> APIError:
    return InvalidRequest(
        "We could not parse the JSON body of your request"
        + (f" ({reason})" if reason else "")
        + ". The body must be valid JSON sent with Content-Type: application/json.",
        code="invalid_json",
    )


_STATUS_TEXT = {
    400: "Invalid request: the error names the offending parameter in `param`.",
    401: "Missing or wrong API key.",
    404: "Unknown model (`model_not_found`).",
    413: "Upload or request body too large.",
    429: "The engine's queue is full; retry after `retry-after` seconds.",
    500: "Unexpected server error.",
    503: "The model could not be loaded.",
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries documenting the OpenAI error envelope for ``statuses``."""
    statuses = statuses or (400, 401, 404, 429, 500, 503)
    return {
        status: ResponseSpec(
            data_container=ErrorResponse, description=_STATUS_TEXT[status], generate_examples=False
        )
        for status in statuses
    }
