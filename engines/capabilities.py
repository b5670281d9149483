"""Which interface serves which capability: the one table engines are checked against.

The catalog (engines/catalog.py) says what each kind of engine can do without importing
it; once loaded, an engine must implement the interface of every capability it is used
for, and the registry's typed accessors (``registry.chat(name)``...) hand it out as that
interface, so no caller checks types or probes attributes.
"""

from __future__ import annotations

from .base import AudioTokenizer, Capability, Engine, SpeechEngine, TranscriptionEngine
from .chat import ChatEngine

INTERFACES: dict[Capability, type[Engine]] = {
    Capability.SPEECH: SpeechEngine,
    Capability.TRANSCRIPTION: TranscriptionEngine,
    Capability.TRANSLATION: TranscriptionEngine,
    Capability.CHAT: ChatEngine,
    Capability.AUDIO_TOKENS: AudioTokenizer,
}
