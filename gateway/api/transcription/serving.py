"""Transcription and translation: multipart form → decoded audio → engine → chosen format.

Segments come out of the engine one at a time. A streamed request turns each into a
``transcript.text.delta`` at once; the other formats are built when the last has come.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, TypeVar

import msgspec
from litestar import Request

from adapters.audio.decode import AudioDecodeError, AudioTooLong, decode_audio
from adapters.subtitles import to_srt, to_vtt
from adapters.text.languages import language_name
from adapters.text.tokens import count_audio_tokens, count_text_tokens
from engines.base import (
    Capability,
    KnownSpeaker,
    Segment,
    TranscriptionEngine,
    TranscriptionOptions,
    TranscriptionStream,
    VadSettings,
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
    ServerVadChunking,
    TokenUsage,
    Transcription,
    TranscriptionDiarized,
    TranscriptionDiarizedSegment,
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
_LIST_FIELDS = (
    "timestamp_granularities",
    "include",
    "known_speaker_names",
    "known_speaker_references",
    "languages",
)
# OpenAI's rules for gpt-4o-transcribe-diarize: a chunking_strategy above 30 s of audio,
# reference clips of 2 to 10 s, the formats json, text and diarized_json.
UNCHUNKED_SECONDS = 30.0
REFERENCE_SECONDS = (2.0, 10.0)
DIARIZE_FORMATS = ("json", "text", "diarized_json")


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


@dataclass
class SpeakerRequest:
    """What a transcription request says about speakers, checked against the model once
    it is known (:func:`run`)."""

    model: str
    response_format: str
    chunked: bool  # a chunking_strategy was given
    prompt: bool
    logprobs: bool
    names: list[str] = field(default_factory=list)
    references: list[AudioUpload] = field(default_factory=list)


def speaker_request(form: TranscriptionForm) -> SpeakerRequest:
    names, urls = form.known_speaker_names, form.known_speaker_references
    if len(names) != len(urls):
        raise InvalidRequest(
            f"known_speaker_names ({len(names)}) and known_speaker_references ({len(urls)})"
            " must have the same number of entries.",
            param="known_speaker_names",
            code="invalid_value",
        )
    if any(not name.strip() for name in names) or len(set(names)) != len(names):
        raise InvalidRequest(
            "Each known_speaker_names entry must be a distinct, non-empty name.",
            param="known_speaker_names",
            code="invalid_value",
        )
    return SpeakerRequest(
        model=form.model,
        response_format=form.response_format,
        chunked=form.chunking_strategy is not None,
        prompt=bool(form.prompt),
        logprobs="logprobs" in form.include,
        names=list(names),
        references=[_data_url(url, i) for i, url in enumerate(urls)],
    )


def _data_url(url: str, index: int) -> AudioUpload:
    head, comma, payload = url.partition(",")
    if not (head.startswith("data:") and head.endswith(";base64") and comma):
        raise InvalidRequest(
            f"known_speaker_references[{index}] must be a base64 data URL"
            " (data:audio/wav;base64,...).",
            param="known_speaker_references",
            code="invalid_value",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            f"known_speaker_references[{index}] is not valid base64.",
            param="known_speaker_references",
            code="invalid_value",
        ) from None
    return AudioUpload(data=data, filename=f"reference-{index}")


def _check_speakers(engine: TranscriptionEngine, request: SpeakerRequest) -> None:
    """OpenAI's rules for what a diarizing model takes, and what only it takes."""
    if not engine.diarizes:
        if request.response_format == "diarized_json":
            raise InvalidRequest(
                f"response_format 'diarized_json' is not compatible with model"
                f" '{request.model}'. Use gpt-4o-transcribe-diarize.",
                param="response_format",
                code="unsupported_value",
            )
        if request.names:
            raise InvalidRequest(
                f"known_speaker_names is not supported with model '{request.model}'."
                " Use gpt-4o-transcribe-diarize.",
                param="known_speaker_names",
                code="unsupported_value",
            )
        return
    if request.response_format not in DIARIZE_FORMATS:
        raise InvalidRequest(
            f"response_format '{request.response_format}' is not compatible with model"
            f" '{request.model}'. Use json, text or diarized_json.",
            param="response_format",
            code="unsupported_value",
        )
    for given, param in ((request.prompt, "prompt"), (request.logprobs, "include")):
        if given:
            raise InvalidRequest(
                f"{param} is not supported with model '{request.model}'.",
                param=param,
                code="unsupported_value",
            )


async def decode(upload: AudioUpload, engine: TranscriptionEngine, param: str = "file"):
    """Decoding is compute too: it waits its turn in the engine's queue (a full queue
    refuses it with 429) and runs in the shared compute slot, and it stops at the audio
    budget."""
    try:
        return await engine.worker.run(decode_audio, upload.data, engine.sample_rate)
    except AudioTooLong as exc:
        raise InvalidRequest(str(exc), param=param, code="audio_too_long") from None
    except AudioDecodeError as exc:
        raise InvalidRequest(
            f"{exc} Supported formats: {SUPPORTED_FORMATS}.", param=param, code="invalid_file"
        ) from None


async def _known_speakers(
    engine: TranscriptionEngine, request: SpeakerRequest
) -> tuple[KnownSpeaker, ...]:
    known = []
    low, high = REFERENCE_SECONDS
    for index, (name, clip) in enumerate(zip(request.names, request.references)):
        audio = await decode(clip, engine, param="known_speaker_references")
        seconds = len(audio) / engine.sample_rate
        if not low <= seconds <= high:
            raise InvalidRequest(
                f"known_speaker_references[{index}] is {seconds:.1f} seconds long; each"
                f" reference must be between {low:g} and {high:g} seconds.",
                param="known_speaker_references",
                code="invalid_value",
            )
        known.append(KnownSpeaker(name=name, audio=audio))
    return tuple(known)


def options_for(form: TranscriptionForm | TranslationForm) -> TranscriptionOptions:
    if isinstance(form, TranslationForm):
        return TranscriptionOptions(
            prompt=form.prompt, temperature=form.temperature, task="translate"
        )
    strategy = form.chunking_strategy
    return TranscriptionOptions(
        language=form.language or None,
        prompt=form.prompt,
        temperature=form.temperature,
        word_timestamps="word" in form.timestamp_granularities,
        logprobs="logprobs" in form.include,
        diarize=form.response_format == "diarized_json",
        vad=VadSettings(
            threshold=strategy.threshold,
            silence_ms=strategy.silence_duration_ms,
            padding_ms=strategy.prefix_padding_ms,
        )
        if isinstance(strategy, ServerVadChunking)
        else None,
    )


async def run(
    registry: ModelRegistry,
    model: str,
    capability: Capability,
    upload: AudioUpload,
    options: TranscriptionOptions,
    policy: Policy = UNLIMITED,
    speakers: SpeakerRequest | None = None,
) -> AsyncIterator[TranscriptionStream]:
    """Yield one stream, keeping the engine in use until the caller is done with it."""
    registry.check(model, capability)
    policy.check_model(model)
    use = registry.translation if capability is Capability.TRANSLATION else registry.transcription
    async with use(model) as engine:
        if speakers is not None:
            _check_speakers(engine, speakers)
        audio = await decode(upload, engine)
        seconds = len(audio) / engine.sample_rate
        if engine.diarizes and speakers is not None:
            if seconds > UNCHUNKED_SECONDS and not speakers.chunked:
                raise InvalidRequest(
                    f"chunking_strategy is required when using '{model}' for inputs longer"
                    f" than {UNCHUNKED_SECONDS:g} seconds (this one is {seconds:.1f} s):"
                    ' send chunking_strategy "auto".',
                    param="chunking_strategy",
                    code="invalid_value",
                )
            known = await _known_speakers(engine, speakers)
            options = replace(options, known_speakers=known)
            # The reference clips are heard too.
            seconds += sum(len(k.audio) for k in known) / engine.sample_rate
        # Heard audio is known before the work: charged whole, or 429 charging nothing.
        await policy.charge_audio_in(seconds)
        stream = await engine.transcribe(audio, options)
        endpoint = "translation" if options.task == "translate" else "transcription"
        metrics.count_audio(endpoint, "in", model, seconds)
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
    if fmt == "diarized_json":
        return (
            TranscriptionDiarized(
                task="transcribe",
                duration=round(info.duration, 3),
                text=text,
                segments=[_diarized(s) for s in segments],
                usage=usage,
            ),
            "application/json",
        )
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


def segment_id(segment: Segment) -> str:
    return f"seg_{segment.id + 1:03d}"


def _diarized(segment: Segment) -> TranscriptionDiarizedSegment:
    return TranscriptionDiarizedSegment(
        id=segment_id(segment),
        start=round(segment.start, 3),
        end=round(segment.end, 3),
        text=segment.text.strip(),
        speaker=segment.speaker or "A",
    )


# ------------------------------------------------------------------ streamed events


async def events(
    transcripts: AsyncIterator[TranscriptionStream],
    prompt: str | None,
    logprobs: bool,
    diarized: bool = False,
) -> AsyncIterator[object]:
    """Deltas as segments come; with ``diarized``, each delta names its segment and is
    followed by the finished segment with its speaker (``transcript.text.segment``)."""
    async for stream in transcripts:
        options_logprobs: list[LogProb] = []
        parts: list[str] = []
        output_tokens = 0
        async for segment in stream.segments:
            delta = segment.text.lstrip() if not parts else segment.text
            if not delta:
                continue
            parts.append(delta)
            output_tokens += len(segment.tokens) or count_text_tokens(delta)
            delta_logprobs = word_logprobs(segment.words) if logprobs and segment.words else None
            if delta_logprobs:
                options_logprobs.extend(delta_logprobs)
            if diarized:
                yield TranscriptTextDelta(delta=delta, segment_id=segment_id(segment))
                yield _diarized(segment)
                continue
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
