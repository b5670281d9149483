"""The voice stages around a chat engine: audio in, audio out.

Input: a chat engine that takes text gets each ``input_audio`` part transcribed first
(:class:`TranscribingInput`); an engine that understands audio itself (Step-Audio, which
tokenises speech) will plug in a different stage with the same ``prepare`` method.

Output: :class:`SpokenReply` voices the reply sentence by sentence *while the text is
still being generated*: complete sentences go to a background synthesis task whose
encoded audio the stream picks up between tokens. The first piece may be the first
sentence's opening clause, once it has enough words (``FIRST_CLAUSE_WORDS``): the first
audio then waits for a few words, not for the whole sentence.

A speech engine that reads leading control tags (Step-Audio-TTS-3B: ``(RAP)``,
``(四川话)``, ``(高兴1)``...) gets the reply's leading tags in front of every sentence,
since upstream voices the whole reply with them and a tag on the first sentence alone
would change voice after it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Callable, TypeVar

import anyio.to_thread

from adapters.audio.decode import AudioDecodeError, AudioTooLong, decode_audio
from adapters.audio.pipeline import SpeechAudioPipeline, lead_and_rest, split_speed
from adapters.audio.tempo import TempoFilter
from adapters.chat.transcripts import Transcript, TranscriptCache, transcript_key
from adapters.step_audio.speech_controls import split_leading_tags
from adapters.text.language import detect_language
from adapters.text.sentences import FIRST_CLAUSE_WORDS, SentenceBuffer
from engines.base import (
    InvalidInput,
    SpeechRequest,
    TranscriptionOptions,
)
from engines.registry import ModelRegistry

from ...errors import InvalidRequest
from ...policy import UNLIMITED, Policy
from ...pump import Pump
from ...streaming import spawn

T = TypeVar("T")


@dataclass(frozen=True)
class PreparedAudio:
    text: str
    seconds: float


async def _decode(data_b64: str, param: str, sample_rate: int):
    try:
        data = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("The audio data is not valid base64.", param=param) from None
    try:
        return await anyio.to_thread.run_sync(decode_audio, data, sample_rate)
    except AudioTooLong as exc:
        raise InvalidRequest(str(exc), param=param, code="audio_too_long") from None
    except AudioDecodeError as exc:
        raise InvalidRequest(
            f"{exc} Send wav or mp3 audio as base64.", param=param, code="invalid_audio"
        ) from None


class TranscribingInput:
    """Input audio → text, with the configured transcription model.

    With a ``cache``, each audio is transcribed once: a conversation sends its earlier
    spoken turns again with every request (see :mod:`adapters.chat.transcripts`).
    """

    def __init__(
        self, registry: ModelRegistry, model: str, cache: TranscriptCache | None = None
    ) -> None:
        self.registry = registry
        self.model = model
        self.cache = cache

    async def prepare(self, data_b64: str, param: str) -> PreparedAudio:
        key = None
        if self.cache is not None:
            try:
                raw = base64.b64decode(data_b64, validate=True)
            except (binascii.Error, ValueError):
                raw = None  # _decode below answers with the error
            if raw is not None:
                key = transcript_key(self.registry.canonical(self.model), raw)
                known = await self.cache.get(key)
                if known is not None:
                    return PreparedAudio(text=known.text, seconds=known.seconds)
        prepared = await self._transcribe(data_b64, param)
        if key is not None:
            await self.cache.put(key, Transcript(prepared.text, prepared.seconds))
        return prepared

    async def _transcribe(self, data_b64: str, param: str) -> PreparedAudio:
        async with self.registry.transcription(self.model) as engine:
            audio = await _decode(data_b64, param, engine.sample_rate)
            stream = await engine.transcribe(audio, TranscriptionOptions())
            text = "".join([segment.text async for segment in stream.segments]).strip()
        return PreparedAudio(text=text, seconds=len(audio) / engine.sample_rate)


class TokenizingInput:
    """Input audio → ``<audio_N>`` tokens, for chat engines that read speech (Step-Audio)."""

    sample_rate = 16_000

    def __init__(self, registry: ModelRegistry, model: str) -> None:
        self.registry = registry
        self.model = model

    async def prepare(self, data_b64: str, param: str) -> PreparedAudio:
        audio = await _decode(data_b64, param, self.sample_rate)
        async with self.registry.audio_tokens(self.model) as engine:
            try:
                tokens = await engine.tokenize(audio, self.sample_rate)
            except InvalidInput as exc:
                raise InvalidRequest(exc.message, param=param, code="invalid_audio") from None
        return PreparedAudio(text=tokens.text, seconds=len(audio) / self.sample_rate)


class SpokenReply:
    """Synthesises sentences in the background as they are completed.

    ``feed`` takes text deltas, ``close`` ends the input; ``ready`` returns the encoded
    audio produced so far without waiting, ``drain`` waits for the rest. One pipeline
    spans all sentences, so the pieces form one continuous stream or file.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        model: str,
        voice: str,
        fmt: str,
        policy: Policy = UNLIMITED,
        *,
        speed: float = 1.0,
        pipeline: SpeechAudioPipeline | None = None,
        first_chars: int | None = None,
        first_piece_chars: int | None = None,
    ) -> None:
        self.registry = registry
        self.model = model
        self.voice = voice
        self.policy = policy  # spoken seconds are charged to it as they are made
        self.speed = speed
        self.pipeline = pipeline if pipeline is not None else SpeechAudioPipeline(fmt)
        # ``first_chars``: cut a run-on sentence there, so it does not hold the first audio.
        # The first piece may end at a clause: the listener hears the answer begin after a
        # few words rather than after its whole first sentence.
        # ``first_piece_chars``: the first piece is at most that wide (cut at a clause or a
        # space, or between CJK characters), however long its sentence.
        limit = {} if first_chars is None else {"max_chars": first_chars}
        self._buffer = SentenceBuffer(
            first_clause_words=FIRST_CLAUSE_WORDS, first_max_chars=first_piece_chars, **limit
        )
        self.produced = 0  # encoded bytes made so far
        #: (byte offset where a sentence's audio ends, the sentence): what was heard of a
        #: reply cut short (see gateway.api.realtime.speech.heard_transcript).
        self.marks: list[tuple[int, str]] = []
        self._sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self._audio: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        #: Called whenever audio (or its end, or a failure) is queued: see interleave().
        self.on_audio: Callable[[], None] | None = None
        self.transcript = ""
        self._queued = 0  # sentences handed to synthesis
        self._voiced = 0  # of those, synthesised and encoded
        self._caught_up: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None  # held back by ready() for its next call
        # When the first piece (a sentence, or its opening clause) went to synthesis, and
        # its first audio was encoded (perf_counter; None until then): a realtime turn's
        # latency stages.
        self.first_sentence_at: float | None = None
        self.first_audio_at: float | None = None
        self.first_piece: str | None = None

    @property
    def seconds(self) -> float:
        return self.pipeline.seconds

    def start(self) -> None:
        self._task = spawn(self._synthesise())  # ends with the request at the latest

    def feed(self, text: str) -> None:
        self.transcript += text
        for sentence in self._buffer.push(text):
            self._queue_sentence(sentence)

    def close(self) -> None:
        for sentence in self._buffer.flush():
            self._queue_sentence(sentence)
        self._sentences.put_nowait(None)

    def _queue_sentence(self, sentence: str) -> None:
        if self.first_sentence_at is None:
            self.first_sentence_at = time.perf_counter()
            self.first_piece = sentence
        self._queued += 1
        self._sentences.put_nowait(sentence)

    async def caught_up(self) -> None:
        """Return once every sentence fed so far is synthesised and encoded (or synthesis
        has ended, failed or was never started)."""
        while self._voiced < self._queued and self._task is not None and not self._task.done():
            self._caught_up = asyncio.get_running_loop().create_future()
            try:
                await self._caught_up
            finally:
                self._caught_up = None

    def _wake_caught_up(self) -> None:
        if self._caught_up is not None and not self._caught_up.done():
            self._caught_up.set_result(None)

    def ready(self) -> list[bytes]:
        """The audio encoded so far, without waiting. A failure after some audio is raised
        by the next call, so the audio made before it (all the key's budget paid for) is
        still sent."""
        if self._failure is not None:
            raise self._failure
        out = []
        while not self._audio.empty():
            item = self._audio.get_nowait()
            if isinstance(item, BaseException):
                if out:
                    self._failure = item
                    break
                raise item
            if item is not None:
                out.append(item)
            else:
                self._audio.put_nowait(None)  # keep the end marker for drain()
                break
        return out

    async def drain(self) -> AsyncIterator[bytes]:
        if self._failure is not None:
            raise self._failure
        while True:
            item = await self._audio.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # our caller's, not the task's
                    raise
            except Exception:  # noqa: BLE001 - the reply is being dropped anyway
                pass

    async def _synthesise(self) -> None:
        try:
            async with self.registry.speech(self.model) as engine:
                carry = _TagCarrier() if engine.reads_leading_tags else None
                native = self._apply_speed(engine.speed_range)
                while (said := await self._sentences.get()) is not None:
                    sentence = carry(said) if carry is not None else said
                    request = SpeechRequest(
                        text=sentence,
                        voice=self.voice,
                        language=detect_language(sentence),
                        speed=native,
                    )
                    async for chunk in engine.synthesize(request):
                        # The sentence's first 0.15 s on its own, as /v1/audio/speech
                        # sends it: out sooner, and charged apart from the rest.
                        for piece in lead_and_rest(chunk.samples, chunk.sample_rate):
                            await self._encode(piece, chunk.sample_rate)
                    self.marks.append((self.produced, said))
                    self._voiced += 1
                    self._wake_caught_up()
                tail = await anyio.to_thread.run_sync(self.pipeline.finish)
                if tail:
                    self._queue_audio(tail)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            self._queue_audio(exc)
        finally:
            self._queue_audio(None)
            self._wake_caught_up()

    async def _encode(self, samples, sample_rate: int) -> None:
        before = self.pipeline.seconds
        data = await anyio.to_thread.run_sync(self.pipeline.process, samples, sample_rate)
        # Spoken seconds count against the key as they are made; the piece that runs it
        # out ends the reply with a 429 error, never sent.
        await self.policy.charge_audio_out(self.pipeline.seconds - before)
        if data:
            self._queue_audio(data)

    def _apply_speed(self, native_range: tuple[float, float]) -> float:
        """The engine takes what it can of the speed; the pipeline's tempo the rest."""
        native, residual = split_speed(self.speed, native_range)
        if residual != 1.0:
            self.pipeline.tempo = TempoFilter(residual, self.pipeline.sample_rate)
        return native

    def _queue_audio(self, item: bytes | BaseException | None) -> None:
        if isinstance(item, bytes):
            if not self.produced:
                self.first_audio_at = time.perf_counter()
            self.produced += len(item)
        self._audio.put_nowait(item)
        if self.on_audio is not None:
            self.on_audio()


async def interleave(
    events: AsyncIterator[T],
    reply: SpokenReply,
    *,
    text_of: Callable[[T], str | None],
    pace: bool,
) -> AsyncIterator[T | bytes]:
    """The engine's ``events`` and the ``reply``'s encoded audio, each as soon as it exists.

    Picking audio up only between the chat model's tokens made a finished sentence wait
    for the next token (about 25 ms on this model, more on a busy engine) before it left:
    ``bench/speech_first_byte.py`` measured it as most of the gateway's share of a spoken
    reply's first audio. Here one task drives the engine (so its generator, and any
    cancel scope it holds across a yield, stays in one task), feeds the reply the text
    (``text_of`` an event, None for events that are not text), and the consumer wakes on
    whichever comes first. Closing this generator closes the engine's at once (a hang-up
    frees the chat model).

    ``pace``: the chat model and the speech engine take turns on one compute slot, so
    the sentence's synthesis and the model's next token cannot overlap anyway; the next
    token is then asked for only once the sentences fed so far are voiced and encoded.
    Otherwise the sentence waited for the token in flight (about 18 ms), and its encoding
    ran beside the next one, whose threads took both cores (about 20 ms more). Where the
    two do not share a slot (vLLM, or several slots) text keeps streaming meanwhile.
    """
    pump: Pump[T] = Pump()

    async def produce() -> None:
        async with aclosing(events):
            async for event in events:
                text = text_of(event)
                if text:
                    reply.feed(text)
                pump.put(event)
                if pace and text:
                    await reply.caught_up()

    reply.on_audio = pump.wake
    pump.start(produce)
    try:
        while True:
            for event in pump.take():
                yield event
                for data in reply.ready():
                    yield data
            for data in reply.ready():
                yield data
            if pump.done and not pump.items:
                pump.raise_failure()
                return
            if not pump.items:
                await pump.wait()
    finally:
        reply.on_audio = None
        await pump.stop()


class _TagCarrier:
    """Puts the reply's leading control tags (those its first sentence starts with) in
    front of each later sentence that has none of its own."""

    def __init__(self) -> None:
        self.prefix: str | None = None

    def __call__(self, sentence: str) -> str:
        opening = sentence.lstrip()
        tags, body = split_leading_tags(opening)
        if self.prefix is None:
            self.prefix = opening[: len(opening) - len(body)]
            return sentence
        return sentence if tags else self.prefix + sentence
