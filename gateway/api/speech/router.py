"""POST /v1/audio/speech."""

from __future__ import annotations

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from adapters.audio.encode import CONTENT_TYPES
from adapters.voice_owners import VoiceOwners
from adapters.voices import VoiceNotFound
from engines.registry import ModelRegistry

from ... import sse
from ...errors import InvalidRequest, error_responses
from ...openapi_docs import BINARY, documented_operation, event_stream
from ...policy import policy_of
from ...settings import Settings
from ...streaming import WatchedStream, abort_on_failure, prime
from .protocol import CreateSpeechRequest, SpeechAudioDelta, SpeechAudioDone
from .serving import SpeechStream, sse_events


@post(
    "/v1/audio/speech",
    status_code=200,
    summary="Generate audio from text",
    tags=["audio"],
    responses=error_responses(),
    operation_class=documented_operation(
        ok={
            **{media: BINARY for media in dict.fromkeys(CONTENT_TYPES.values())},
            "text/event-stream": event_stream(SpeechAudioDelta, SpeechAudioDone),
        },
        ok_description=(
            "The audio in `response_format`, streamed as it is made (`pcm`: raw 24 kHz 16-bit"
            " little-endian mono); with `stream_format=sse`, base64 audio events."
        ),
    ),
)
async def create_speech(
    request: Request,
    data: JSONBody[CreateSpeechRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
    voice_owners: NamedDependency[VoiceOwners],
) -> Stream:
    """Streams encoded audio (``stream_format=audio``) or base64 SSE deltas (``sse``)."""
    policy = policy_of(request.scope)
    await voice_owners.refresh()
    try:  # the key's own cloned voice by its name; another key's clone is unknown
        voice = voice_owners.engine_voice(policy.owner, data.voice_name)
    except VoiceNotFound as exc:
        raise InvalidRequest(exc.message, param="voice") from None
    stream = SpeechStream(registry, data, voice, policy)
    if data.stream_format == "sse":
        events = await prime(sse_events(stream))
        return sse.sse_response(
            events, request, keepalive=settings.server.sse_keepalive_seconds, done=False
        )
    chunks = await prime(aiter(stream))
    # Ends in the same step as its last write (no listener task group to wait for), so
    # the request's metrics are recorded before a client that got the whole file can ask.
    return WatchedStream(abort_on_failure(chunks), media_type=stream.media_type)
