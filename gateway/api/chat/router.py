"""POST /v1/chat/completions."""

from __future__ import annotations

from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from ... import sse
from ...errors import error_responses
from ...json_body import apply_audio_budget
from ...openapi_docs import documented_operation, event_stream
from ...policy import policy_of
from ...settings import Settings
from ...streaming import prime
from .protocol import ChatCompletion, ChatCompletionChunk, CreateChatCompletionRequest
from .serving import ChatService, chunks, complete


@post(
    "/v1/chat/completions",
    status_code=200,
    summary="Create a chat completion",
    tags=["chat"],
    responses=error_responses(),
    operation_class=documented_operation(
        ok={
            "application/json": ChatCompletion,
            "text/event-stream": event_stream(ChatCompletionChunk, done=True),
        },
        ok_description=(
            "A chat completion; with `stream=true`, `chat.completion.chunk` events ending in"
            " `data: [DONE]`."
        ),
    ),
)
async def create_chat_completion(
    request: Request,
    data: JSONBody[CreateChatCompletionRequest],
    chat_service: NamedDependency[ChatService],
) -> Response[ChatCompletion] | Stream:
    """Text or ``input_audio`` in; text, tool calls and (with ``modalities``) audio out.

    ``stream=true`` answers with ``chat.completion.chunk`` events; nothing is ever
    answered as a JSON body to a streaming request, or the SDK would parse nothing.

    One injected dependency, not two: Litestar resolves two dependencies of a handler in
    an anyio task group of their own (two tasks per request), which cost this hot route
    more than the rest of its handler. The settings are the app's, read from its state.
    """
    settings: Settings = request.app.state["settings"]
    apply_audio_budget(settings.limits)
    prepared = await chat_service.prepare(data, policy_of(request.scope))
    if data.stream:
        first_ready = await prime(chunks(chat_service, prepared))
        return sse.sse_response(
            first_ready, request, keepalive=settings.server.sse_keepalive_seconds, done=True
        )
    return Response(await complete(chat_service, prepared), media_type="application/json")
