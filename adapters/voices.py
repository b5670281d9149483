"""OpenAI voice names onto engine voices.

Code written for OpenAI names voices like "alloy" or "nova". The configuration maps each
name to engine voices in order of preference; the first one that speaks the input's
language wins, so "alloy" reads English with Piper's Joe and Japanese with Kokoro. An
engine's own voice name ("jf_alpha") is accepted as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)


class VoiceNotFound(LookupError):
    def __init__(self, message: str, param: str = "voice") -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class VoiceOption:
    """An engine voice that can be chosen: its id, the member that owns it, its languages."""

    id: str
    owner: str
    languages: tuple[str, ...]


def choose_voice(
    requested: str,
    language: str,
    table: Mapping[str, list[str]],
    available: Iterable[VoiceOption],
) -> VoiceOption:
    by_id = {voice.id: voice for voice in available}
    candidates = [by_id[name] for name in table.get(requested, [requested]) if name in by_id]
    if not candidates:
        known = sorted({*table, *by_id})
        raise VoiceNotFound(
            f"Voice '{requested}' is not available. Available voices: {', '.join(known)}."
        )
    for voice in candidates:
        if language in voice.languages:
            return voice
    if requested in table:
        # An OpenAI name is a promise that *some* voice answers: take any that can.
        for voice in by_id.values():
            if language in voice.languages:
                return voice
    raise VoiceNotFound(
        f"No voice for '{requested}' can speak this input's language ({language}).",
        param="input" if requested in table else "voice",
    )
