"""POST /v1/audio/speech."""

from __future__ import annotations

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from engines.registry import ModelRegistry

from ... import sse
from ...errors import error_responses
from ...settings import Settings
from ...streaming import abort_on_failure, prime
from .protocol import CreateSpeechRequest
from .serving import SpeechStream, sse_events


@post(
    "/v1/audio/speech",
    status_code=200,
    summary="Generate audio from text",
    tags=["audio"],
    responses=error_responses(),
)
async def create_speech(
    request: Request,
    data: JSONBody[CreateSpeechRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> Stream:
    """Streams encoded audio (``stream_format=audio``) or base64 SSE deltas (``sse``)."""
    stream = SpeechStream(registry, data)
    if data.stream_format == "sse":
        events = await prime(sse_events(stream))
        return sse.sse_response(
            events, request, keepalive=settings.server.sse_keepalive_seconds, done=False
        )
    chunks = await prime(aiter(stream))
    return Stream(abort_on_failure(chunks), media_type=stream.media_type)
