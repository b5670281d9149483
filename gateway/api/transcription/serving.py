"""Transcription and translation: multipart form → decoded audio → engine → chosen format.

Segments come out of the engine one at a time. A streamed request turns each into a
``transcript.text.delta`` at once; the other formats are built when the last has come.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import AsyncIterator, TypeVar

import msgspec
from litestar import Request

from adapters.audio.decode import AudioDecodeError, AudioTooLong, decode_audio
from adapters.subtitles import to_srt, to_vtt
from adapters.text.languages import language_name
from adapters.text.tokens import count_audio_tokens, count_text_tokens
from engines.base import (
    Capability,
    Segment,
    TranscriptionEngine,
    TranscriptionOptions,
    TranscriptionStream,
    Word,
)
from engines.registry import ModelRegistry

from ... import metrics
from ...errors import InvalidRequest, PayloadTooLarge, error_from_msgspec
from ...json_body import apply_audio_budget
from ...multipart import fold_form, upload
from ...policy import UNLIMITED, Policy
from ...settings import LimitsSettings
from .protocol import (
    DurationUsage,
    InputTokenDetails,
    LogProb,
    TokenUsage,
    Transcription,
    TranscriptionForm,
    TranscriptionSegment,
    TranscriptionVerbose,
    TranscriptionWord,
    TranscriptTextDelta,
    TranscriptTextDone,
    TranslationForm,
)

FormT = TypeVar("FormT", TranscriptionForm, TranslationForm)
SUPPORTED_FORMATS = "flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav, webm"
_LIST_FIELDS = ("timestamp_granularities", "include", "known_speaker_names", "languages")


@dataclass
class AudioUpload:
    data: bytes
    filename: str


async def read_form(
    request: Request,
    form_type: type[FormT],
    max_upload_bytes: int,
    limits: LimitsSettings | None = None,
) -> tuple[FormT, AudioUpload]:
    limits = limits or LimitsSettings()
    apply_audio_budget(limits)  # decoding this upload stops at max_audio_seconds
    media_type = request.content_type[0]
    if media_type != "multipart/form-data":
        raise InvalidRequest(
            f"Invalid Content-Type header ({media_type or 'none'}), expected multipart/form-data.",
            code="invalid_content_type",
        )
    form = await request.form()
    items = list(form.multi_items())
    file = upload(items)
    if file is None:
        raise InvalidRequest(
            "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
        )
    data = await file.read()
    if len(data) > max_upload_bytes:
        raise PayloadTooLarge(
            f"Maximum content size limit ({max_upload_bytes} bytes) exceeded "
            f"({len(data)} bytes read).",
            param="file",
        )
    try:
        fields = msgspec.convert(fold_form(items, _LIST_FIELDS), form_type, strict=False)
    except msgspec.ValidationError as exc:
        raise error_from_msgspec(exc, form=True) from None
    if fields.prompt is not None and len(fields.prompt) > limits.max_text_chars:
        raise InvalidRequest(
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{limits.max_text_chars}, but got a string with length {len(fields.prompt)} instead.",
            param="prompt",
            code="string_above_max_length",
        )
    return fields, AudioUpload(data=data, filename=file.filename or "")


async def decode(upload: AudioUpload, engine: TranscriptionEngine):
    """Decoding is compute too: it waits its turn in the engine's queue (a full queue
    refuses it with 429) and runs in the shared compute slot, and it stops at the audio
    budget."""
    try:
        return await engine.worker.run(decode_audio, upload.data, engine.sample_rate)
    except AudioTooLong as exc:
        raise InvalidRequest(str(exc), param="file", code="audio_too_long") from None
    except AudioDecodeError as exc:
        raise InvalidRequest(
            f"{exc} Supported formats: {SUPPORTED_FORMATS}.", param="file", code="invalid_file"
        ) from None


def options_for(form: TranscriptionForm | TranslationForm) -> TranscriptionOptions:
    if isinstance(form, TranslationForm):
        return TranscriptionOptions(
            prompt=form.prompt, temperature=form.temperature, task="translate"
        )
    return TranscriptionOptions(
        language=form.language or None,
        prompt=form.prompt,
        temperature=form.temperature,
        word_timestamps="word" in form.timestamp_granularities,
        logprobs="logprobs" in form.include,
    )


async def run(
    registry: ModelRegistry,
    model: str,
    capability: Capability,
    upload: AudioUpload,
    options: TranscriptionOptions,
    policy: Policy = UNLIMITED,
) -> AsyncIterator[TranscriptionStream]:
    """Yield one stream, keeping the engine in use until the caller is done with it."""
    registry.check(model, capability)
    policy.check_model(model)
    use = registry.translation if capability is Capability.TRANSLATION else registry.transcription
    async with use(model) as engine:
        audio = await decode(upload, engine)
        # Heard audio is known before the work: charged whole, or 429 charging nothing.
        await policy.charge_audio_in(len(audio) / engine.sample_rate)
        stream = await engine.transcribe(audio, options)
        endpoint = "translation" if options.task == "translate" else "transcription"
        metrics.count_audio(endpoint, "in", model, len(audio) / engine.sample_rate)
        yield stream


# ------------------------------------------------------------------ complete responses


def word_logprobs(words: list[Word]) -> list[LogProb]:
    return [
        LogProb(
            token=w.word, logprob=math.log(max(w.probability, 1e-12)), bytes=list(w.word.encode())
        )
        for w in words
    ]


def full_text(segments: list[Segment]) -> str:
    return "".join(s.text for s in segments).strip()


def render(
    fmt: str, task: str, info, segments: list[Segment], options: TranscriptionOptions
) -> tuple[object, str]:
    """Return (body, media type) for a non-streamed response."""
    text = full_text(segments)
    if fmt == "text":
        return text + ("\n" if text else ""), "text/plain; charset=utf-8"
    if fmt == "srt":
        return to_srt(segments), "text/plain; charset=utf-8"
    if fmt == "vtt":
        return to_vtt(segments), "text/plain; charset=utf-8"
    usage = DurationUsage(seconds=round(info.duration, 3))
    if fmt == "verbose_json":
        words = [w for s in segments for w in s.words]
        return (
            TranscriptionVerbose(
                task=task,
                language=language_name(info.language),
                duration=round(info.duration, 3),
                text=text,
                segments=[
                    TranscriptionSegment(
                        id=s.id,
                        seek=s.seek,
                        start=round(s.start, 3),
                        end=round(s.end, 3),
                        text=s.text,
                        tokens=s.tokens,
                        temperature=s.temperature,
                        avg_logprob=s.avg_logprob,
                        compression_ratio=s.compression_ratio,
                        no_speech_prob=s.no_speech_prob,
                    )
                    for s in segments
                ],
                words=[
                    TranscriptionWord(
                        word=w.word.strip(), start=round(w.start, 3), end=round(w.end, 3)
                    )
                    for w in words
                ]
                if options.word_timestamps
                else None,
                usage=usage,
            ),
            "application/json",
        )
    logprobs = word_logprobs([w for s in segments for w in s.words]) if options.logprobs else None
    return Transcription(text=text, usage=usage, logprobs=logprobs), "application/json"


# ------------------------------------------------------------------ streamed events


async def events(
    transcripts: AsyncIterator[TranscriptionStream], prompt: str | None, logprobs: bool
) -> AsyncIterator[object]:
    async for stream in transcripts:
        options_logprobs: list[LogProb] = []
        parts: list[str] = []
        output_tokens = 0
        async for segment in stream.segments:
            delta = segment.text.lstrip() if not parts else segment.text
            if not delta:
                continue
            parts.append(delta)
            output_tokens += len(segment.tokens)
            delta_logprobs = word_logprobs(segment.words) if logprobs and segment.words else None
            if delta_logprobs:
                options_logprobs.extend(delta_logprobs)
            yield TranscriptTextDelta(delta=delta, logprobs=delta_logprobs)
        audio_tokens = count_audio_tokens(stream.info.duration)
        prompt_tokens = count_text_tokens(prompt or "")
        yield TranscriptTextDone(
            text="".join(parts),
            logprobs=options_logprobs or None,
            usage=TokenUsage(
                input_tokens=audio_tokens + prompt_tokens,
                input_token_details=InputTokenDetails(
                    text_tokens=prompt_tokens, audio_tokens=audio_tokens
                ),
                output_tokens=output_tokens,
                total_tokens=audio_tokens + prompt_tokens + output_tokens,
            ),
        )
