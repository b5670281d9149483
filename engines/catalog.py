"""Engine kinds by name, imported only when a model of that kind is first loaded.

Heavy inference libraries stay unimported until needed, and a missing optional package
(say, the GPL Piper extra left out) only disables the models that use it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .base import Capability, Engine, EngineUnavailable


@dataclass(frozen=True)
class EngineKind:
    target: str  # "module:Class"
    capabilities: frozenset[Capability]

    def load_class(self) -> type[Engine]:
        module_name, _, class_name = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EngineUnavailable(
                f"engine {self.target} needs a package that is not installed: {exc}"
            ) from exc
        return getattr(module, class_name)


_SPEECH = frozenset({Capability.SPEECH})

CATALOG: dict[str, EngineKind] = {
    "faster-whisper": EngineKind(
        "engines.embedded.whisper:FasterWhisperEngine",
        frozenset({Capability.TRANSCRIPTION, Capability.TRANSLATION}),
    ),
    # Whisper composed with a speaker encoder: segments labelled with their speaker.
    "diarizing-transcriber": EngineKind(
        "engines.diarizing:DiarizingTranscriber", frozenset({Capability.TRANSCRIPTION})
    ),
    "piper": EngineKind("engines.embedded.piper:PiperEngine", _SPEECH),
    "kokoro": EngineKind("engines.embedded.kokoro:KokoroEngine", _SPEECH),
    "speech-ensemble": EngineKind("engines.speech_ensemble:SpeechEnsemble", _SPEECH),
    # The name configurations used before the ensemble was named for what it is.
    "speech-router": EngineKind("engines.speech_ensemble:SpeechEnsemble", _SPEECH),
    "llama-cpp": EngineKind("engines.embedded.llama:LlamaChatEngine", frozenset({Capability.CHAT})),
    "step-audio-tokenizer": EngineKind(
        "engines.step_audio.tokenizer:StepAudioTokenizer", frozenset({Capability.AUDIO_TOKENS})
    ),
    "step-audio-tts": EngineKind("engines.step_audio.tts:StepAudioTTS", _SPEECH),
    "step-audio-chat": EngineKind(
        "engines.step_audio.chat:StepAudioChatEngine", frozenset({Capability.CHAT})
    ),
}
