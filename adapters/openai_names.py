"""The model names OpenAI clients and the agent frameworks built on them ask for.

A client pointed at the gateway keeps its model names: the Agents SDK's ``RealtimeAgent``
asks for ``gpt-realtime-2.1`` and its ``Agent`` for ``gpt-5.6-luna``, LiveKit's and Pipecat's
LLM services for ``gpt-4.1``. Each configuration makes these aliases of its own models
(config/default.toml lists them for the embedded engines; the Step-Audio settings default to
them), and a test holds both to these lists so that a name added here reaches every
deployment.
"""

from __future__ import annotations

#: Text chat models (Chat Completions and the Responses API).
CHAT = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    # The OpenAI Agents SDK's default (openai-agents 0.24: an Agent without a model).
    "gpt-5.6-luna",
)

#: Chat models that hear and speak (``modalities: ["text", "audio"]``).
AUDIO_CHAT = (
    "gpt-audio",
    "gpt-audio-mini",
    "gpt-audio-2025-08-28",
    "gpt-4o-audio-preview",
    "gpt-4o-mini-audio-preview",
    "gpt-4o-audio-preview-2024-12-17",
)

#: Realtime conversation models (``/v1/realtime?model=``).
REALTIME = (
    "gpt-realtime",
    "gpt-realtime-mini",
    "gpt-realtime-1.5",
    "gpt-realtime-2",
    "gpt-realtime-2.1",
    "gpt-realtime-2.1-mini",
    "gpt-realtime-2025-08-28",
    "gpt-4o-realtime-preview",
    "gpt-4o-mini-realtime-preview",
    "gpt-4o-realtime-preview-2024-12-17",
    "gpt-4o-mini-realtime-preview-2024-12-17",
)

#: Everything a chat engine answers to.
ALL_CHAT = CHAT + AUDIO_CHAT + REALTIME

#: Text to speech.
SPEECH = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")

#: Speech to text.
TRANSCRIPTION = (
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-transcribe",
    "gpt-realtime-whisper",  # Pipecat's OpenAIRealtimeSTTService default
    "gpt-live-transcribe",  # a LiveKit STT model name
)

#: Speech to text with speakers (``response_format: "diarized_json"``).
DIARIZATION = ("gpt-4o-transcribe-diarize",)
