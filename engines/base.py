"""The one engine interface: what every transcription, speech and chat engine provides.

Engines know nothing of HTTP or of the OpenAI wire format. They take plain requests
(numpy audio, text, options), stream plain results, and raise :class:`EngineError`
subclasses that the gateway turns into OpenAI error envelopes.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Sequence

import anyio.to_thread
import numpy as np

# The error hierarchy lives at the bottom (adapters.errors), shared with the adapters;
# engines and the gateway import it from here as they always have.
from adapters.errors import (  # noqa: F401
    EngineError,
    EngineOverloaded,
    EngineUnavailable,
    InvalidInput,
)

if TYPE_CHECKING:
    from .registry import ModelRegistry
    from .workers import Worker


class Capability(str, enum.Enum):
    TRANSCRIPTION = "transcription"
    TRANSLATION = "translation"
    SPEECH = "speech"
    CHAT = "chat"
    AUDIO_TOKENS = "audio_tokens"  # speech -> discrete codes (the Step-Audio tokenizer)


# --------------------------------------------------------------------------- lifecycle


class Engine(abc.ABC):
    """Base class: a loadable model. What it can do is the interface it implements
    (:mod:`engines.capabilities`), which its kind in the catalog declares.

    ``load`` and ``unload`` are blocking and called from a worker thread by the registry,
    so an engine may do slow file and model work there without stalling the event loop.
    """

    #: Whether the engine computes in this process, on its worker's turns of the shared
    #: compute slot; False for one that calls a server (vLLM), which costs no turns.
    computes_locally: bool = True

    def __init__(self, name: str, context: "EngineContext") -> None:
        self.name = name
        self.context = context

    @property
    def worker(self) -> "Worker":
        return self.context.worker

    @abc.abstractmethod
    def load(self) -> None: ...

    def unload(self) -> None:
        """Release memory. The default drops nothing; engines holding models override it."""

    async def start(self) -> None:
        """Load without blocking the event loop; engines built from others override this."""
        await anyio.to_thread.run_sync(self.load)

    async def stop(self) -> None:
        await anyio.to_thread.run_sync(self.unload)


@dataclass
class EngineContext:
    """What the registry hands an engine: its worker, a cache folder, its sibling models."""

    worker: "Worker"
    cache_dir: Path
    registry: "ModelRegistry"
    voices: dict[str, list[str]] = field(default_factory=dict)


# --------------------------------------------------------------------------- speech


@dataclass(frozen=True)
class VoiceInfo:
    id: str
    engine: str
    languages: tuple[str, ...]
    gender: str | None = None
    description: str = ""


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: str
    language: str
    speed: float = 1.0
    instructions: str | None = None


@dataclass(frozen=True)
class AudioChunk:
    """Mono float32 samples in [-1, 1] for one piece of text (usually a sentence)."""

    samples: np.ndarray
    sample_rate: int
    text: str = ""

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


class SpeechEngine(Engine):
    #: Speed factors the engine applies natively (duration change without pitch change);
    #: the gateway applies the rest with a tempo filter.
    speed_range: tuple[float, float] = (1.0, 1.0)
    #: Whether the engine acts on control tags leading its input text (Step-Audio-TTS's
    #: "(RAP)", "(四川话)"...): a spoken reply then carries the reply's tags to every sentence.
    reads_leading_tags: bool = False

    @abc.abstractmethod
    def voices(self) -> Sequence[VoiceInfo]: ...

    def voice_aliases(self) -> dict[str, list[str]]:
        """OpenAI voice names this engine maps onto its own voices, in order of
        preference (the speech router's table; other engines map none)."""
        return {}

    @abc.abstractmethod
    def synthesize(self, request: SpeechRequest) -> AsyncIterator[AudioChunk]:
        """Yield audio sentence by sentence, as soon as each is ready."""

    async def register_voice(self, name: str, wav_bytes: bytes, transcript: str) -> VoiceInfo:
        """Clone a voice from a recording and its exact transcript, where the model can."""
        raise InvalidInput(f"The model '{self.name}' cannot clone voices.", param="model")


# --------------------------------------------------------------------------- transcription


@dataclass(frozen=True)
class VadSettings:
    """How speech is found in a long upload (OpenAI's ``chunking_strategy``): Silero's
    speech threshold, the silence that ends a stretch of speech, and the padding kept
    around it."""

    threshold: float = 0.5
    silence_ms: int = 300
    padding_ms: int = 200


@dataclass(frozen=True, eq=False)
class KnownSpeaker:
    """A speaker named by the client, and a short clip of their voice (16 kHz mono)."""

    name: str
    audio: np.ndarray


@dataclass(frozen=True)
class TranscriptionOptions:
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    task: str = "transcribe"  # or "translate" (into English)
    word_timestamps: bool = False
    logprobs: bool = False
    #: Label each segment with its speaker (engines whose ``diarizes`` is True).
    diarize: bool = False
    #: The client's ``chunking_strategy`` as VAD settings; None: the engine's own.
    vad: VadSettings | None = None
    known_speakers: tuple[KnownSpeaker, ...] = ()
    #: (start, end) seconds of the only stretches to transcribe (the diarizer's speaker
    #: turns), in place of the engine's own VAD; empty: all of the audio.
    clips: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Segment:
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
    words: list[Word] = field(default_factory=list)
    speaker: str | None = None  # set by diarizing engines


@dataclass(frozen=True)
class TranscriptionInfo:
    language: str
    duration: float


@dataclass
class TranscriptionStream:
    """Language and duration are known up front; segments arrive as they are decoded."""

    info: TranscriptionInfo
    segments: AsyncIterator[Segment]


class TranscriptionEngine(Engine):
    sample_rate: int = 16_000
    #: Whether ``options.diarize`` is served: segments then carry their speaker.
    diarizes: bool = False

    @abc.abstractmethod
    async def transcribe(
        self, audio: np.ndarray, options: TranscriptionOptions
    ) -> TranscriptionStream:
        """Transcribe mono float32 audio at ``sample_rate``."""


# --------------------------------------------------------------------------- audio tokens


@dataclass(frozen=True)
class AudioTokens:
    """The two raw code streams of one utterance and the prompt text made from them."""

    linguistic: list[int]  # vq02 codes, 0-1023
    semantic: list[int]  # vq06 codes, 0-4095 (not yet shifted by 1024)
    text: str  # "<audio_N>..." for a chat prompt
    duration: float  # seconds of audio that were tokenized


class AudioTokenizer(Engine):
    """Speech in, discrete codes out: what a chat model that reads speech is given."""

    @abc.abstractmethod
    async def tokenize(self, audio: np.ndarray, sample_rate: int) -> AudioTokens:
        """Codes for mono float32 ``audio`` at ``sample_rate``."""
