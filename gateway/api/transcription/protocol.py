"""Wire structs of /v1/audio/transcriptions and /v1/audio/translations."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

TranscriptFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


class TranscriptionForm(msgspec.Struct, kw_only=True):
    """The multipart fields (bracket keys such as ``include[]`` already folded)."""

    model: str
    language: str | None = None
    prompt: str | None = None
    response_format: TranscriptFormat = "json"
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    timestamp_granularities: list[Literal["word", "segment"]] = []
    include: list[Literal["logprobs"]] = []
    stream: bool = False
    chunking_strategy: Any = None


class TranslationForm(msgspec.Struct, kw_only=True):
    model: str
    prompt: str | None = None
    response_format: TranscriptFormat = "json"
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0


class DurationUsage(msgspec.Struct, kw_only=True, tag_field="type", tag="duration"):
    seconds: float


class InputTokenDetails(msgspec.Struct, kw_only=True):
    text_tokens: int
    audio_tokens: int


class TokenUsage(msgspec.Struct, kw_only=True, tag_field="type", tag="tokens"):
    input_tokens: int
    input_token_details: InputTokenDetails
    output_tokens: int
    total_tokens: int


class LogProb(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int]


class Transcription(msgspec.Struct, kw_only=True, omit_defaults=True):
    text: str
    usage: DurationUsage | None = None
    logprobs: list[LogProb] | None = None


class TranscriptionWord(msgspec.Struct, kw_only=True):
    word: str
    start: float
    end: float


class TranscriptionSegment(msgspec.Struct, kw_only=True):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionVerbose(msgspec.Struct, kw_only=True, omit_defaults=True):
    task: str
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment] | None = None
    words: list[TranscriptionWord] | None = None
    usage: DurationUsage | None = None


class TranscriptTextDelta(
    msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="transcript.text.delta"
):
    delta: str
    logprobs: list[LogProb] | None = None


class TranscriptTextDone(
    msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="transcript.text.done"
):
    text: str
    logprobs: list[LogProb] | None = None
    usage: TokenUsage | None = None
