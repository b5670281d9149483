"""Chat completions: wire request → engine request → engine events → chunks or one response.

Everything that can be refused is refused in :meth:`ChatService.prepare`, before the first
byte, so it still gets a status code. Generation then yields :class:`Turn` events that two
small renderers turn into ``chat.completion.chunk`` objects (streamed) or one
``chat.completion`` (not streamed), so both shapes come from the same run of the engine.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import AsyncIterator

import msgspec

from adapters.audio.encode import chat_audio_format
from adapters.chat.audio_store import AudioStore
from adapters.chat.transcripts import MemoryTranscriptCache, TranscriptCache
from adapters.text.tokens import count_audio_tokens
from adapters.voice_owners import VoiceOwners, is_clone_id
from adapters.voices import VoiceNotFound
from engines.base import Capability
from engines.chat import (
    ChatMessage,
    ChatRequest,
    Finish,
    ResponseFormat,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallArgsDelta,
    ToolCallStart,
    ToolChoice,
    ToolSpec,
)
from engines.registry import ModelRegistry

from ... import metrics
from ...auth import ANONYMOUS
from ...errors import InvalidRequest
from ...policy import UNLIMITED, Policy
from ...settings import ChatSettings
from ...streaming import prime
from ...turn import AudioBytes, run_turn
from ..tool_choice import choose_tools
from .protocol import (
    REFUSED_FIELDS,
    AllowedToolsChoice,
    AssistantMessage,
    AudioDelta,
    ChatAudio,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionTokensDetails,
    CreateChatCompletionRequest,
    Delta,
    DeveloperMessage,
    FunctionCall,
    FunctionDelta,
    FunctionMessage,
    ImageUrlPart,
    InputAudioPart,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    PromptTokensDetails,
    ResponseMessage,
    SystemMessage,
    TextPart,
    TokenLogprobWire,
    ToolCallDelta,
    ToolCallWire,
    ToolMessage,
    TopLogprobWire,
    Usage,
    UserMessage,
)
from .voice import SpokenReply, TokenizingInput, TranscribingInput


@dataclass
class Prepared:
    """A request that passed every check: what the engine gets, and how to answer."""

    wire: CreateChatCompletionRequest
    engine_request: ChatRequest
    input_audio_seconds: float = 0.0
    audio_format: str | None = None  # encoder format when the reply is spoken
    voice: str | None = None
    id: str = field(default_factory=lambda: "chatcmpl-" + _random_hex())
    audio_id: str = ""  # set by prepare() when the reply is spoken
    created: int = field(default_factory=lambda: int(time.time()))
    policy: Policy = UNLIMITED  # the key's limits; its owner files the spoken reply

    @property
    def owner(self) -> str:
        return self.policy.owner

    @property
    def speaks(self) -> bool:
        return self.audio_format is not None


@dataclass(frozen=True)
class AudioEnd:
    id: str
    transcript: str
    expires_at: int
    seconds: float


class ChatService:
    def __init__(
        self,
        registry: ModelRegistry,
        settings: ChatSettings,
        store: AudioStore,
        transcripts: TranscriptCache | None = None,
        *,
        voice_owners: VoiceOwners | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.store = store
        self.voice_owners = voice_owners or VoiceOwners()  # whose cloned voice is whose
        # Spoken turns come back as history with every request: each is transcribed once.
        self.transcripts = transcripts or MemoryTranscriptCache()

    # ------------------------------------------------------------------ checks

    async def prepare(
        self, wire: CreateChatCompletionRequest, policy: Policy = UNLIMITED
    ) -> Prepared:
        self.registry.check(wire.model, Capability.CHAT)
        policy.check_model(wire.model)
        owner = policy.owner
        if (wire.n or 1) > 1:
            raise InvalidRequest(
                "n > 1 is not supported: this gateway returns one choice per request.",
                param="n",
                code="unsupported_value",
            )
        for name, why in REFUSED_FIELDS.items():
            if getattr(wire, name) is not None:
                raise InvalidRequest(
                    f"'{name}' is not supported: {why}.", param=name, code="unsupported_parameter"
                )
        logit_bias = _logit_bias(wire.logit_bias)
        audio_format, voice = await self._check_audio(wire, owner)
        tool_choice, tools = _tool_choice(
            wire,
            [
                ToolSpec(
                    name=t.function.name,
                    description=t.function.description or "",
                    parameters=t.function.parameters or {"type": "object", "properties": {}},
                )
                for t in wire.tools or []
            ],
        )
        messages, audio_seconds = await self._messages(wire, owner)
        await policy.charge_audio_in(audio_seconds)  # 429 before generating, if over
        stop = [wire.stop] if isinstance(wire.stop, str) else list(wire.stop or [])
        max_tokens = wire.max_completion_tokens or wire.max_tokens
        request = ChatRequest(
            messages=messages,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=wire.parallel_tool_calls is not False,
            max_tokens=max_tokens,
            temperature=1.0 if wire.temperature is None else wire.temperature,
            top_p=1.0 if wire.top_p is None else wire.top_p,
            stop=stop,
            seed=wire.seed,
            response_format=_response_format(wire),
            logprobs=bool(wire.logprobs),
            top_logprobs=wire.top_logprobs or 0 if wire.logprobs else 0,
            defaulted=frozenset(
                name for name in ("temperature", "top_p") if getattr(wire, name) is None
            ),
            frequency_penalty=wire.frequency_penalty or 0.0,
            presence_penalty=wire.presence_penalty or 0.0,
            logit_bias=logit_bias,
            # Streamed text and spoken sentences need the answer as it is made.
            incremental=bool(wire.stream) or audio_format is not None,
        )
        return Prepared(
            wire=wire,
            engine_request=request,
            input_audio_seconds=audio_seconds,
            audio_format=audio_format,
            voice=voice,
            policy=policy,
            # The spoken reply's id names stored audio: unguessable, unlike the others.
            audio_id="audio_" + os.urandom(16).hex() if audio_format is not None else "",
        )

    async def _check_audio(
        self, wire: CreateChatCompletionRequest, owner: str = ANONYMOUS
    ) -> tuple[str | None, str | None]:
        if "audio" not in (wire.modalities or []):
            return None, None
        if wire.audio is None:
            raise InvalidRequest(
                "The audio parameter is required when modalities includes 'audio'.",
                param="audio",
                code="missing_required_parameter",
            )
        if wire.stream and wire.audio.format != "pcm16":
            raise InvalidRequest(
                f"'audio.format' does not support '{wire.audio.format}' when stream=true. "
                "Supported values are: 'pcm16'.",
                param="audio.format",
                code="unsupported_value",
            )
        model = self.settings.speech_model
        async with self.registry.speech(model) as engine:
            known = {v.id for v in engine.voices()} | set(engine.context.voices)
        await self.voice_owners.refresh()
        try:  # the key's own cloned voice by its name; another key's clone is unknown
            voice = self.voice_owners.engine_voice(owner, wire.audio.voice_name)
        except VoiceNotFound as exc:
            raise InvalidRequest(exc.message, param="audio.voice") from None
        if voice not in known:
            raise InvalidRequest(
                f"Voice '{voice}' is not available. Available voices: "
                f"{', '.join(sorted(k for k in known if not is_clone_id(k)))}.",
                param="audio.voice",
            )
        return chat_audio_format(wire.audio.format), voice

    async def _messages(
        self, wire: CreateChatCompletionRequest, owner: str = ANONYMOUS
    ) -> tuple[list[ChatMessage], float]:
        transcriber = TranscribingInput(
            self.registry, self.settings.input_audio_model, self.transcripts
        )
        tokenizer = None
        if any(
            isinstance(m, UserMessage) and not isinstance(m.content, str) for m in wire.messages
        ):
            async with self.registry.chat(wire.model) as engine:
                if engine.accepts_audio_tokens:
                    tokenizer = TokenizingInput(self.registry, self.settings.input_audio_tokenizer)
        last_user = max(
            (i for i, m in enumerate(wire.messages) if isinstance(m, UserMessage)), default=-1
        )
        messages: list[ChatMessage] = []
        audio_seconds = 0.0
        for i, message in enumerate(wire.messages):
            where = f"messages[{i}]"
            if isinstance(message, (SystemMessage, DeveloperMessage)):
                messages.append(ChatMessage("system", _text(message.content)))
            elif isinstance(message, UserMessage):
                if isinstance(message.content, str):
                    messages.append(ChatMessage("user", message.content, name=message.name))
                    continue
                # Only the current user turn reaches an audio-reading engine as tokens;
                # earlier spoken turns are history and go as transcripts (as upstream keeps history).
                stage = tokenizer if tokenizer is not None and i == last_user else transcriber
                pieces, tokens = [], []
                for j, part in enumerate(message.content):
                    if isinstance(part, TextPart):
                        pieces.append(part.text)
                    elif isinstance(part, InputAudioPart):
                        prepared = await stage.prepare(
                            part.input_audio.data, f"{where}.content[{j}].input_audio.data"
                        )
                        audio_seconds += prepared.seconds
                        (tokens if stage is tokenizer else pieces).append(prepared.text)
                    else:
                        kind = "image" if isinstance(part, ImageUrlPart) else "file"
                        raise InvalidRequest(
                            f"The model '{wire.model}' does not accept {kind} input.",
                            param=f"{where}.content[{j}]",
                            code="unsupported_content",
                        )
                text = "\n".join(p for p in pieces if p)
                if tokens:
                    # Step-Audio takes text or audio in a turn, not both: text goes first.
                    if text:
                        messages.append(ChatMessage("user", text, name=message.name))
                    messages.append(
                        ChatMessage("user", None, name=message.name, audio_tokens="".join(tokens))
                    )
                else:
                    messages.append(ChatMessage("user", text, name=message.name))
            elif isinstance(message, AssistantMessage):
                messages.append(await self._assistant(message, where, owner))
            elif isinstance(message, ToolMessage):
                messages.append(
                    ChatMessage("tool", _text(message.content), tool_call_id=message.tool_call_id)
                )
            elif isinstance(message, FunctionMessage):
                messages.append(ChatMessage("tool", message.content or "", name=message.name))
        return messages, audio_seconds

    async def _assistant(
        self, message: AssistantMessage, where: str, owner: str = ANONYMOUS
    ) -> ChatMessage:
        content = message.content
        if isinstance(content, list):
            content = "".join(p.text for p in content if isinstance(p, TextPart)) or None
        if message.audio is not None:
            # Another key's id reads as unknown: same answer, no oracle.
            stored = await self.store.get(message.audio.id, owner=owner)
            if stored is not None:
                content = stored.transcript
            elif message.audio.transcript is not None:
                content = message.audio.transcript
            else:
                raise InvalidRequest(
                    f"Audio '{message.audio.id}' is unknown or has expired; send the "
                    "assistant's reply as text content instead.",
                    param=f"{where}.audio.id",
                )
        calls = [
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in message.tool_calls or []
        ]
        return ChatMessage("assistant", content, tool_calls=calls, name=message.name)

    # ------------------------------------------------------------------ generation

    def run(self, prepared: Prepared) -> AsyncIterator[object]:
        """The turn's events (gateway.turn): ``TextDelta`` and the tool-call events as the
        engine makes them, ``AudioBytes`` as sentences are synthesised, then ``AudioEnd``
        (spoken replies) and the engine's ``Finish`` last."""
        model = prepared.wire.model
        metrics.count_audio("chat", "in", model, prepared.input_audio_seconds)
        reply = None
        if prepared.speaks:
            reply = SpokenReply(
                self.registry,
                self.settings.speech_model,
                prepared.voice,
                prepared.audio_format,
                prepared.policy,
            )

        async def stored(reply: SpokenReply, called_tools: bool) -> AudioEnd | None:
            # The id went out with the first spoken delta (chunks()), so a reply that
            # said anything is stored, tool calls or not: only a reply that was tool
            # calls alone has no audio.
            if not reply.transcript and called_tools:
                return None
            kept = await self.store.put(
                prepared.audio_id,
                reply.transcript,
                self.settings.audio_ttl_seconds,
                owner=prepared.owner,
            )
            return AudioEnd(prepared.audio_id, reply.transcript, kept.expires_at, reply.seconds)

        return run_turn(
            self.registry,
            model,
            prepared.engine_request,
            prepared.policy,
            reply=reply,
            on_spoken=stored,
        )


# ------------------------------------------------------------------ rendering


_encoder = msgspec.json.Encoder()
# A key is written unescaped only as a key: inside a JSON string its quotes are escaped.
_NO_CHOICES = b'"choices":[]'
_CHOICES_OPEN = b'"choices":['
_CONTENT_OPEN = b'{"index":0,"delta":{"content":'
_CONTENT_CLOSE = b'},"logprobs":null,"finish_reason":null}'


def _random_hex() -> str:
    """128 random bits as 32 hex digits, the shape uuid4().hex had, from the random
    module (reseeded in each forked worker): a completion id is unique, not a secret,
    and neither a UUID object nor a getrandom() system call per request is needed."""
    return "%032x" % random.getrandbits(128)


@lru_cache(maxsize=256)
def fingerprint(model: str) -> str:
    return "fp_" + hashlib.sha256(model.encode()).hexdigest()[:10]


def usage(prepared: Prepared, finish: Finish, audio_seconds: float) -> Usage:
    audio_in = count_audio_tokens(prepared.input_audio_seconds)
    audio_out = count_audio_tokens(audio_seconds)
    prompt = finish.prompt_tokens + audio_in
    completion = finish.completion_tokens + audio_out
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(audio_tokens=audio_in),
        completion_tokens_details=CompletionTokensDetails(audio_tokens=audio_out),
    )


def _logprobs_wire(items: list[TokenLogprob]) -> list[TokenLogprobWire]:
    return [
        TokenLogprobWire(
            token=t.token,
            logprob=t.logprob,
            bytes=t.bytes,
            top_logprobs=[
                TopLogprobWire(token=a.token, logprob=a.logprob, bytes=a.bytes) for a in t.top
            ],
        )
        for t in items
    ]


async def complete(service: ChatService, prepared: Prepared) -> ChatCompletion:
    text: list[str] = []
    logprobs: list[TokenLogprob] = []
    calls: dict[int, list] = {}
    audio = bytearray()
    end: AudioEnd | None = None
    finish: Finish | None = None
    async with aclosing(service.run(prepared)) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                text.append(event.text)
                logprobs.extend(event.logprobs or [])
            elif isinstance(event, ToolCallStart):
                calls[event.index] = [event.id, event.name, ""]
            elif isinstance(event, ToolCallArgsDelta):
                calls[event.index][2] += event.fragment
            elif isinstance(event, AudioBytes):
                audio += event.data
            elif isinstance(event, AudioEnd):
                end = event
            elif isinstance(event, Finish):
                finish = event
    assert finish is not None
    content = "".join(text)
    message = ResponseMessage(
        content=None if end is not None or (calls and not content) else content
    )
    if calls:
        message.tool_calls = [
            ToolCallWire(id=i, function=FunctionCall(name=n, arguments=a))
            for i, n, a in (calls[k] for k in sorted(calls))
        ]
    if end is not None:
        message.audio = ChatAudio(
            id=end.id,
            data=base64.b64encode(bytes(audio)).decode("ascii"),
            expires_at=end.expires_at,
            transcript=end.transcript,
        )
    return ChatCompletion(
        id=prepared.id,
        created=prepared.created,
        model=prepared.wire.model,
        choices=[
            Choice(
                index=0,
                message=message,
                logprobs=ChoiceLogprobs(content=_logprobs_wire(logprobs))
                if prepared.engine_request.logprobs
                else None,
                finish_reason=finish.reason,
            )
        ],
        usage=usage(prepared, finish, end.seconds if end else 0.0),
        system_fingerprint=fingerprint(prepared.wire.model),
    )


async def chunks(
    service: ChatService, prepared: Prepared
) -> AsyncIterator[ChatCompletionChunk | msgspec.Raw]:
    """The stream, obeying what the SDK accumulators need: ``role``, tool ``id``/``name``
    and ``audio.id``/``expires_at`` exactly once; a ``finish_reason`` always; a usage
    chunk with empty choices when asked for."""
    include_usage = bool(
        prepared.wire.stream_options and prepared.wire.stream_options.include_usage
    )
    base = {
        "id": prepared.id,
        "created": prepared.created,
        "model": prepared.wire.model,
        "system_fingerprint": fingerprint(prepared.wire.model),
    }
    if include_usage:
        base["usage"] = None
    # Every chunk of a stream is the same object around its one choice: that object is
    # encoded once, and each chunk is only its choice spliced in (msgspec.Raw passes the
    # bytes through the SSE encoder as they are). The bytes are those the whole struct
    # would encode to; building and encoding it per chunk was most of a chunk's own cost.
    head, tail = _encoder.encode(ChatCompletionChunk(**base, choices=[])).split(_NO_CHOICES, 1)
    head += _CHOICES_OPEN
    tail = b"]" + tail

    def chunk(delta: Delta, finish_reason: str | None = None, logprobs=None) -> msgspec.Raw:
        choice = ChunkChoice(delta=delta, finish_reason=finish_reason, logprobs=logprobs)
        return msgspec.Raw(head + _encoder.encode(choice) + tail)

    # A text delta, the most common chunk, spliced from its encoded text: the same bytes
    # as chunk(Delta(content=text)) (a test compares them), without two structs per token.
    content_head = head + _CONTENT_OPEN
    content_tail = _CONTENT_CLOSE + tail

    speaks = prepared.speaks
    audio_id_sent = False

    def audio_delta(**fields) -> AudioDelta:
        nonlocal audio_id_sent
        if not audio_id_sent:
            fields["id"] = prepared.audio_id
            audio_id_sent = True
        return AudioDelta(**fields)

    audio_seconds = 0.0
    source = service.run(prepared)
    async with aclosing(source):
        # The role chunk waits for the engine's first event: a refusal (a full queue, a
        # model that will not load) then still answers with its status, not a 200.
        events = await prime(source)
        yield chunk(Delta(role="assistant", content=None if speaks else ""))
        async for event in events:
            if type(event) is TextDelta and not speaks and not event.logprobs:
                yield msgspec.Raw(content_head + _encoder.encode(event.text) + content_tail)
            elif isinstance(event, TextDelta):
                logprobs = (
                    ChoiceLogprobs(content=_logprobs_wire(event.logprobs))
                    if event.logprobs
                    else None
                )
                if speaks:
                    yield chunk(Delta(audio=audio_delta(transcript=event.text)), logprobs=logprobs)
                else:
                    yield chunk(Delta(content=event.text), logprobs=logprobs)
            elif isinstance(event, ToolCallStart):
                yield chunk(
                    Delta(
                        tool_calls=[
                            ToolCallDelta(
                                index=event.index,
                                id=event.id,
                                type="function",
                                function=FunctionDelta(name=event.name, arguments=""),
                            )
                        ]
                    )
                )
            elif isinstance(event, ToolCallArgsDelta):
                yield chunk(
                    Delta(
                        tool_calls=[
                            ToolCallDelta(
                                index=event.index, function=FunctionDelta(arguments=event.fragment)
                            )
                        ]
                    )
                )
            elif isinstance(event, AudioBytes):
                yield chunk(
                    Delta(audio=audio_delta(data=base64.b64encode(event.data).decode("ascii")))
                )
            elif isinstance(event, AudioEnd):
                audio_seconds = event.seconds
                yield chunk(Delta(audio=audio_delta(expires_at=event.expires_at)))
            elif isinstance(event, Finish):
                yield chunk(Delta(), finish_reason=event.reason)
                if include_usage:
                    yield ChatCompletionChunk(
                        **{**base, "usage": usage(prepared, event, audio_seconds)}, choices=[]
                    )


# ------------------------------------------------------------------ helpers


def _text(content: str | list) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, TextPart))


def _logit_bias(wire: dict[str, int] | None) -> dict[int, float]:
    """OpenAI keys the bias by token id written as a string; an id the model lacks is the
    engine's to refuse, since only it knows its vocabulary."""
    bias = {}
    for key, value in (wire or {}).items():
        if not key.isascii() or not key.isdigit():
            raise InvalidRequest(
                f"Invalid 'logit_bias': keys must be token ids (integers), got {key[:40]!r}.",
                param="logit_bias",
                code="invalid_value",
            )
        bias[int(key)] = float(value)
    return bias


def _tool_choice(
    wire: CreateChatCompletionRequest, tools: list[ToolSpec]
) -> tuple[ToolChoice, list[ToolSpec]]:
    """The engine's tool choice and the tools it is offered (all of them, unless
    ``allowed_tools`` names a subset)."""
    choice = wire.tool_choice
    if isinstance(choice, NamedToolChoice):
        return choose_tools("function", tools, name=choice.function.name)
    if isinstance(choice, AllowedToolsChoice):
        allowed = [t.function.name for t in choice.allowed_tools.tools]
        return choose_tools(choice.allowed_tools.mode, tools, allowed=allowed)
    return choose_tools(choice or "auto", tools)


def _response_format(wire: CreateChatCompletionRequest) -> ResponseFormat:
    fmt = wire.response_format
    if isinstance(fmt, JsonSchemaFormat):
        if fmt.json_schema.schema is None:
            return ResponseFormat.JSON_OBJECT
        return ResponseFormat.json_schema(fmt.json_schema.schema)
    if isinstance(fmt, JsonObjectFormat):
        return ResponseFormat.JSON_OBJECT
    return ResponseFormat.TEXT
