"""JSON request bodies decoded strictly, within budgets, before a handler runs.

Litestar decodes a body to plain Python objects and then converts them with
``strict=False``, which turns ``"max_tokens": "5"`` into 5, and lets invalid UTF-8 or
1,000 nested arrays escape as a 500. Here the body goes straight from bytes to the
handler's struct in one strict msgspec decode (a string is never a number in JSON; only
multipart fields, always strings, are converted leniently, in gateway/multipart.py),
after a nesting check on the raw bytes; structs with a ``check_input(limits)`` method
then check their own budgets (text lengths, schemas). Every refusal is a 400 envelope.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.types import Empty

from adapters.audio.decode import MAX_SECONDS
from adapters.limits import BudgetExceeded, json_depth

from .errors import InvalidRequest, error_from_msgspec, invalid_json
from .settings import LimitsSettings


class GatewayRequest(Request):
    """The request class of the app: :meth:`json` decodes into the handler's body type."""

    async def json(self) -> Any:
        if self._json is Empty:
            cached = self._connection_state.json
            if cached is not Empty:
                self._json = cached
            else:
                body = await self.body()
                self._json = self._connection_state.json = decode_body(
                    body, self._body_type(), self.limits
                )
        return self._json

    @property
    def limits(self) -> LimitsSettings:
        settings = self.app.state.get("settings")
        return settings.limits if settings is not None else LimitsSettings()

    def _body_type(self) -> Any:
        field = getattr(self.route_handler, "parsed_data_field", None)
        return field.annotation if field is not None else Any


def decode_body(body: bytes, body_type: Any, limits: LimitsSettings) -> Any:
    if json_depth(body, limits.max_json_depth) > limits.max_json_depth:
        raise InvalidRequest(
            f"The JSON body nests arrays and objects more than {limits.max_json_depth} "
            "levels deep.",
            code="invalid_json",
        )
    try:
        value = msgspec.json.decode(body or b"null", type=body_type, strict=True)
    except msgspec.ValidationError as exc:
        raise error_from_msgspec(exc) from None
    except msgspec.DecodeError as exc:
        raise invalid_json(_reason(str(exc))) from None
    except UnicodeDecodeError:
        raise invalid_json("it is not valid UTF-8") from None
    except RecursionError:
        raise invalid_json("it nests too deeply") from None
    check = getattr(value, "check_input", None)
    if check is not None:
        try:
            check(limits)
        except BudgetExceeded as exc:
            raise InvalidRequest(exc.message, param=exc.param, code=exc.code) from None
    return value


def _reason(message: str) -> str:
    if "truncated" in message:
        return "it ends too early"
    if "trailing characters" in message:
        return "it has extra characters after the JSON value"
    return "it is not well-formed"


def apply_audio_budget(limits: LimitsSettings) -> None:
    """Decodes made for this request (in this task and the threads it starts) stop at
    ``max_audio_seconds``."""
    MAX_SECONDS.set(limits.max_audio_seconds)
