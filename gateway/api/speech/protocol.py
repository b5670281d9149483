"""Wire structs of POST /v1/audio/speech (OpenAI ``CreateSpeechRequest`` and its SSE events)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from adapters.limits import BudgetExceeded, visible_text

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class VoiceRef(msgspec.Struct):
    """A voice given as an object (``{"id": "voice_..."}``), as newer SDKs allow."""

    id: str


class CreateSpeechRequest(msgspec.Struct, kw_only=True):
    model: str
    input: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    voice: str | VoiceRef
    instructions: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    response_format: SpeechFormat = "mp3"
    speed: Annotated[float, msgspec.Meta(ge=0.25, le=4.0)] = 1.0
    stream_format: Literal["sse", "audio"] = "audio"

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice

    def check_input(self, limits) -> None:
        """Only what a voice can say reaches the engine: control and format characters
        (NUL, zero-width spaces, bidi marks) are dropped, and input left with nothing to
        say is refused as whitespace is."""
        self.input = visible_text(self.input)
        if not self.input.strip():
            raise BudgetExceeded("The input must contain text to speak.", "input", "invalid_value")
        if self.instructions is not None:
            self.instructions = visible_text(self.instructions)


class SpeechUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class SpeechAudioDelta(msgspec.Struct, kw_only=True, tag_field="type", tag="speech.audio.delta"):
    audio: str


class SpeechAudioDone(msgspec.Struct, kw_only=True, tag_field="type", tag="speech.audio.done"):
    usage: SpeechUsage
