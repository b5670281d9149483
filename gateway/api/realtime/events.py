"""Realtime server events (the GA names the official SDKs parse), one typed struct each.

A handler builds the event it sends from its struct, so a misspelt or missing field is an
error where it is written, not a frame the SDKs reject; the outbox encodes each struct
once (msgspec, with ``type`` first as its tag). Fields a spec event may leave out are
``UNSET`` until given, and then absent from the frame, as OpenAI sends them.

The objects inside some events (a session, an item, a response, a content part) are
dicts built by their owners (``session_wire``, :meth:`Item.wire`, :meth:`Response.wire`):
they change with the configuration, and each has one builder.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from ..transcription.protocol import LogProb
from .conversation import new_id


def _event_id() -> str:
    return new_id("event")


class ServerEvent(msgspec.Struct, kw_only=True, tag_field="type"):
    event_id: str = msgspec.field(default_factory=_event_id)


# ---------------------------------------------------------------------- session and errors


class ErrorDetail(msgspec.Struct, kw_only=True):
    type: str
    code: str | None
    message: str
    param: str | None
    event_id: str | None = None  # the client event it answers


class Error(ServerEvent, kw_only=True, tag="error"):
    error: ErrorDetail


class SessionCreated(ServerEvent, kw_only=True, tag="session.created"):
    session: dict[str, Any]


class SessionUpdated(ServerEvent, kw_only=True, tag="session.updated"):
    session: dict[str, Any]


class RateLimitsUpdated(ServerEvent, kw_only=True, tag="rate_limits.updated"):
    rate_limits: list[dict[str, Any]]


# ---------------------------------------------------------------------- input audio


class SpeechStarted(ServerEvent, kw_only=True, tag="input_audio_buffer.speech_started"):
    audio_start_ms: int
    item_id: str


class SpeechStopped(ServerEvent, kw_only=True, tag="input_audio_buffer.speech_stopped"):
    audio_end_ms: int
    item_id: str


class InputCommitted(ServerEvent, kw_only=True, tag="input_audio_buffer.committed"):
    previous_item_id: str | None
    item_id: str


class InputCleared(ServerEvent, kw_only=True, tag="input_audio_buffer.cleared"):
    pass


class TranscriptionDelta(
    ServerEvent, kw_only=True, tag="conversation.item.input_audio_transcription.delta"
):
    item_id: str
    content_index: int = 0
    delta: str
    # only when the session's include asks for item.input_audio_transcription.logprobs
    logprobs: list[LogProb] | UnsetType = UNSET


class TranscriptionCompleted(
    ServerEvent, kw_only=True, tag="conversation.item.input_audio_transcription.completed"
):
    item_id: str
    content_index: int = 0
    transcript: str
    logprobs: list[LogProb] | UnsetType = UNSET
    usage: dict[str, Any]


class TranscriptionFailedDetail(msgspec.Struct, kw_only=True):
    type: str
    code: str | None
    message: str
    param: str | None


class TranscriptionFailed(
    ServerEvent, kw_only=True, tag="conversation.item.input_audio_transcription.failed"
):
    item_id: str
    content_index: int = 0
    error: TranscriptionFailedDetail


# ---------------------------------------------------------------------- conversation items


class ItemAdded(ServerEvent, kw_only=True, tag="conversation.item.added"):
    previous_item_id: str | None | UnsetType = UNSET
    item: dict[str, Any]


class ItemDone(ServerEvent, kw_only=True, tag="conversation.item.done"):
    previous_item_id: str | None | UnsetType = UNSET
    item: dict[str, Any]


class ItemRetrieved(ServerEvent, kw_only=True, tag="conversation.item.retrieved"):
    item: dict[str, Any]


class ItemDeleted(ServerEvent, kw_only=True, tag="conversation.item.deleted"):
    item_id: str


class ItemTruncated(ServerEvent, kw_only=True, tag="conversation.item.truncated"):
    item_id: str
    content_index: int
    audio_end_ms: int


# ---------------------------------------------------------------------- responses


class ResponseCreated(ServerEvent, kw_only=True, tag="response.created"):
    response: dict[str, Any]


class ResponseDone(ServerEvent, kw_only=True, tag="response.done"):
    response: dict[str, Any]


class OutputItemAdded(ServerEvent, kw_only=True, tag="response.output_item.added"):
    response_id: str
    output_index: int
    item: dict[str, Any]


class OutputItemDone(ServerEvent, kw_only=True, tag="response.output_item.done"):
    response_id: str
    output_index: int
    item: dict[str, Any]


class _InPart(ServerEvent, kw_only=True):
    """An event about one content part of an output item."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int = 0


class ContentPartAdded(_InPart, kw_only=True, tag="response.content_part.added"):
    part: dict[str, Any]


class ContentPartDone(_InPart, kw_only=True, tag="response.content_part.done"):
    part: dict[str, Any]


class OutputTextDelta(_InPart, kw_only=True, tag="response.output_text.delta"):
    delta: str


class OutputTextDone(_InPart, kw_only=True, tag="response.output_text.done"):
    text: str


class OutputAudioDelta(_InPart, kw_only=True, tag="response.output_audio.delta"):
    delta: str  # base64 audio in the session's output format


class OutputAudioDone(_InPart, kw_only=True, tag="response.output_audio.done"):
    pass


class OutputAudioTranscriptDelta(
    _InPart, kw_only=True, tag="response.output_audio_transcript.delta"
):
    delta: str


class OutputAudioTranscriptDone(_InPart, kw_only=True, tag="response.output_audio_transcript.done"):
    transcript: str


class _InCall(ServerEvent, kw_only=True):
    response_id: str
    item_id: str
    output_index: int
    call_id: str


class FunctionCallArgumentsDelta(
    _InCall, kw_only=True, tag="response.function_call_arguments.delta"
):
    delta: str


class FunctionCallArgumentsDone(_InCall, kw_only=True, tag="response.function_call_arguments.done"):
    name: str
    arguments: str


# ---------------------------------------------------------------------- WebRTC output audio
# Sent on calls only (calls.py): there the gateway plays the audio itself, so it says
# when a response's audio began and stopped playing, and when unplayed audio was dropped.


class OutputAudioBufferStarted(ServerEvent, kw_only=True, tag="output_audio_buffer.started"):
    response_id: str


class OutputAudioBufferStopped(ServerEvent, kw_only=True, tag="output_audio_buffer.stopped"):
    response_id: str


class OutputAudioBufferCleared(ServerEvent, kw_only=True, tag="output_audio_buffer.cleared"):
    response_id: str
