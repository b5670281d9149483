"""Wire structs of /v1/audio/transcriptions and /v1/audio/translations."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

TranscriptFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
TranscriptionFormat = Literal["json", "text", "srt", "verbose_json", "vtt", "diarized_json"]


class ServerVadChunking(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``chunking_strategy`` as an object (OpenAI's ``VadConfig``)."""

    type: Literal["server_vad"]
    prefix_padding_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 300
    silence_duration_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 200
    threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5


class TranscriptionForm(msgspec.Struct, kw_only=True):
    """The multipart fields (bracket keys such as ``include[]`` already folded)."""

    model: str
    language: str | None = None
    prompt: str | None = None
    response_format: TranscriptionFormat = "json"
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    timestamp_granularities: list[Literal["word", "segment"]] = []
    include: list[Literal["logprobs"]] = []
    stream: bool = False
    chunking_strategy: Literal["auto"] | ServerVadChunking | None = None
    known_speaker_names: Annotated[list[str], msgspec.Meta(max_length=4)] = []
    known_speaker_references: Annotated[list[str], msgspec.Meta(max_length=4)] = []


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


class TranscriptionDiarizedSegment(
    msgspec.Struct, kw_only=True, tag_field="type", tag="transcript.text.segment"
):
    id: str
    start: float
    end: float
    text: str
    speaker: str


class TranscriptionDiarized(msgspec.Struct, kw_only=True, omit_defaults=True):
    task: Literal["transcribe"]
    duration: float
    text: str
    segments: list[TranscriptionDiarizedSegment]
    usage: DurationUsage | None = None


class TranscriptTextDelta(
    msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="transcript.text.delta"
):
    delta: str
    logprobs: list[LogProb] | None = None
    segment_id: str | None = None


#: A finished diarized segment, streamed (``diarized_json`` with ``stream=true``): the same
#: object as the segments of ``diarized_json``.
TranscriptTextSegment = TranscriptionDiarizedSegment


class TranscriptTextDone(
    msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="transcript.text.done"
):
    text: str
    logprobs: list[LogProb] | None = None
    usage: TokenUsage | None = None
