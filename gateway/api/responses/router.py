"""POST /v1/responses; GET and DELETE /v1/responses/{id}; GET .../input_items."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream

from ... import sse
from ...auth import owner_of
from ...errors import InvalidRequest, NotFound, error_responses, to_api_error
from ...json_body import apply_audio_budget
from ...openapi_docs import documented_operation, event_stream
from ...policy import policy_of
from ...settings import Settings
from ...streaming import prime
from .protocol import (
    STREAM_EVENTS,
    CreateResponseRequest,
    DeletedResponse,
    InputItemList,
    ResponseObject,
    StoredRecord,
)
from .serving import ResponsesService, complete, stream


@post(
    "/v1/responses",
    status_code=200,
    summary="Create a model response",
    tags=["responses"],
    responses=error_responses(),
    operation_class=documented_operation(
        ok={
            "application/json": ResponseObject,
            "text/event-stream": event_stream(*STREAM_EVENTS),
        },
        ok_description=(
            "A Response object; with `stream=true`, Responses stream events from"
            " `response.created` to `response.completed` (or `response.incomplete`, or"
            " `error` and `response.failed`)."
        ),
    ),
)
async def create_response(
    request: Request,
    data: JSONBody[CreateResponseRequest],
    responses_service: NamedDependency[ResponsesService],
) -> Response[ResponseObject] | Stream:
    """Text and function tools, through the chat door's checks and generation: the
    request is translated into a chat request and rendered back as a Response."""
    settings: Settings = request.app.state["settings"]
    apply_audio_budget(settings.limits)
    turn = await responses_service.prepare(data, policy_of(request.scope), settings.limits)
    if data.stream:
        events = stream(responses_service, turn, lambda exc: to_api_error(exc, request))
        first_ready = await prime(events)
        return sse.sse_response(
            first_ready, request, keepalive=settings.server.sse_keepalive_seconds, done=False
        )
    response = await complete(responses_service, turn)
    return Response(response, media_type="application/json")


async def _stored(service: ResponsesService, response_id: str, request: Request) -> StoredRecord:
    record = await service.record(response_id, owner_of(request.scope))
    if record is None:  # unknown, expired, not stored, or another key's: one answer
        raise _not_found(response_id)
    return record


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", code="response_not_found")


@get(
    "/v1/responses/{response_id:str}",
    summary="Retrieve a model response",
    tags=["responses"],
    responses=error_responses(400, 401, 404),
)
async def retrieve_response(
    request: Request,
    response_id: FromPath[str],
    responses_service: NamedDependency[ResponsesService],
    stream: FromQuery[bool] = False,
) -> ResponseObject:
    """A stored response (``store`` was not false), while it has not expired."""
    if stream:
        raise InvalidRequest(
            "Streaming a stored response again is not supported; omit 'stream'.",
            param="stream",
            code="unsupported_value",
        )
    return (await _stored(responses_service, response_id, request)).response


@delete(
    "/v1/responses/{response_id:str}",
    status_code=200,
    summary="Delete a model response",
    tags=["responses"],
    responses=error_responses(401, 404),
)
async def delete_response(
    request: Request,
    response_id: FromPath[str],
    responses_service: NamedDependency[ResponsesService],
) -> DeletedResponse:
    if not await responses_service.delete(response_id, owner_of(request.scope)):
        raise _not_found(response_id)
    return DeletedResponse(id=response_id)


@get(
    "/v1/responses/{response_id:str}/input_items",
    summary="List input items",
    tags=["responses"],
    responses=error_responses(400, 401, 404),
)
async def list_input_items(
    request: Request,
    response_id: FromPath[str],
    responses_service: NamedDependency[ResponsesService],
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    order: FromQuery[Literal["asc", "desc"]] = "desc",
    after: FromQuery[str | None] = None,
) -> InputItemList:
    """Every input item of the response's conversation (earlier turns' included)."""
    items = (await _stored(responses_service, response_id, request)).input
    if order == "desc":
        items = items[::-1]
    if after is not None:
        ids = [item.id for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return InputItemList(
        data=page,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=len(items) > limit,
    )
