"""POST /v1/audio/transcriptions and /v1/audio/translations (multipart uploads)."""

from __future__ import annotations

from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.response import Stream

from engines.base import Capability
from engines.registry import ModelRegistry

from ... import sse
from ...errors import error_responses
from ...openapi_docs import TEXT, documented_operation, event_stream
from ...policy import policy_of
from ...settings import Settings
from ...streaming import prime
from .protocol import (
    Transcription,
    TranscriptionDiarized,
    TranscriptionForm,
    TranscriptionVerbose,
    TranscriptTextDelta,
    TranscriptTextDone,
    TranscriptTextSegment,
    TranslationForm,
)
from .serving import events, options_for, read_form, render, run, speaker_request


@post(
    "/v1/audio/transcriptions",
    status_code=200,
    summary="Transcribe audio into the input language",
    tags=["audio"],
    responses=error_responses(400, 401, 404, 413, 429, 500, 503),
    operation_class=documented_operation(
        form=TranscriptionForm,
        ok={
            "application/json": (Transcription, TranscriptionVerbose, TranscriptionDiarized),
            "text/plain": TEXT,
            "text/event-stream": event_stream(
                TranscriptTextDelta, TranscriptTextSegment, TranscriptTextDone, done=True
            ),
        },
        ok_description=(
            "`json`, `verbose_json` and `diarized_json` as JSON; `text`, `srt` and `vtt` as"
            " plain text; with `stream=true`, transcript events ending in `data: [DONE]`"
            " (`transcript.text.segment` events with `diarized_json`)."
        ),
    ),
)
async def create_transcription(
    request: Request, registry: NamedDependency[ModelRegistry], settings: NamedDependency[Settings]
) -> Response | Stream:
    form, upload = await read_form(
        request, TranscriptionForm, settings.server.max_upload_bytes, settings.limits
    )
    options = options_for(form)
    transcripts = run(
        registry,
        form.model,
        Capability.TRANSCRIPTION,
        upload,
        options,
        policy_of(request.scope),
        speaker_request(form),
    )
    if form.stream:
        first_ready = await prime(
            events(transcripts, form.prompt, options.logprobs, options.diarize)
        )
        return sse.sse_response(
            first_ready, request, keepalive=settings.server.sse_keepalive_seconds, done=True
        )
    return await _complete(transcripts, form.response_format, "transcribe", options)


@post(
    "/v1/audio/translations",
    status_code=200,
    summary="Translate audio into English",
    tags=["audio"],
    responses=error_responses(400, 401, 404, 413, 429, 500, 503),
    operation_class=documented_operation(
        form=TranslationForm,
        ok={"application/json": (Transcription, TranscriptionVerbose), "text/plain": TEXT},
        ok_description="`json` and `verbose_json` as JSON; `text`, `srt` and `vtt` as plain text.",
    ),
)
async def create_translation(
    request: Request, registry: NamedDependency[ModelRegistry], settings: NamedDependency[Settings]
) -> Response:
    form, upload = await read_form(
        request, TranslationForm, settings.server.max_upload_bytes, settings.limits
    )
    options = options_for(form)
    transcripts = run(
        registry, form.model, Capability.TRANSLATION, upload, options, policy_of(request.scope)
    )
    return await _complete(transcripts, form.response_format, "translate", options)


async def _complete(transcripts, fmt, task, options) -> Response:
    async for stream in transcripts:
        segments = [segment async for segment in stream.segments]
        body, media_type = render(fmt, task, stream.info, segments, options)
    return Response(body, media_type=media_type)
