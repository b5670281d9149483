"""Transcription sessions (``/v1/realtime?intent=transcription``): a realtime session that
only hears. The OpenAI GA protocol's ``type: "transcription"`` session, what the Agents
SDK's streamed ``VoicePipeline``, LiveKit's ``STT(use_realtime=True)`` and Pipecat's
``OpenAIRealtimeSTTService`` open.

It is the same :class:`~.serving.RealtimeSession` with ``config.type == "transcription"``:
the same input audio, turn detection and phrase-by-phrase hearing (:mod:`.input_audio`,
:mod:`.hearing`), the same budgets and the same per-key policy. What differs is here: its
wire shape, the session.update it takes, the events it refuses (it never answers), its
model (a transcription model, checked against the key's list when named and when used),
and that its turns are a log, not a conversation: a turn's audio is let go once heard, and
the oldest turns once the item budget is full, so a session can listen for hours.

The type is chosen at the handshake, as OpenAI chooses it: a ``session.update`` of the
other type is refused (OpenAI: "Passing a transcription session update event to a
realtime session is not allowed"), and the session goes on as it was.
"""

from __future__ import annotations

from typing import Any

from engines.base import Capability

from ...errors import InvalidRequest
from . import protocol as p
from .conversation import Config, Item, format_wire, transcription_wire

TRANSCRIPTION = "transcription"

# Client events about responses or the conversation's content: nothing in a transcription
# session reads them. (The buffer's events, session.update and item retrieve/delete work.)
_REFUSED = (p.ResponseCreate, p.ResponseCancel, p.ItemCreate, p.ItemTruncate, p.OutputAudioClear)


def transcription_config(model: str | None) -> Config:
    """A new transcription session's configuration; ``model``: the transcription model
    the handshake named (None: the gateway's default, ``chat.input_audio_model``)."""
    return Config(model="", type=TRANSCRIPTION, transcription=p.Transcription(model=model))


class TranscriptionSession:
    """A part of :class:`~.serving.RealtimeSession` (see the module notes)."""

    @property
    def transcribes_only(self) -> bool:
        return self.config.type == TRANSCRIPTION

    def transcription_session_wire(self) -> dict:
        """The spec's ``RealtimeTranscriptionSessionCreateResponseGA``. ``noise_reduction``
        is not applied, so it is not reported; turn detection never answers here, so its
        create_response and interrupt_response are left out."""
        c = self.config
        transcription = transcription_wire(c.transcription or p.Transcription())
        transcription["model"] = self._transcription_model()
        detection = c.turn_detection_wire()
        if detection is not None:
            for answering in ("create_response", "interrupt_response"):
                detection.pop(answering)
        return {
            "type": TRANSCRIPTION,
            "object": "realtime.transcription_session",
            "id": self.id,
            "expires_at": self.expires_at,
            "include": list(c.include),
            "audio": {
                "input": {
                    "format": format_wire(c.input_format),
                    "transcription": transcription,
                    "turn_detection": detection,
                },
            },
        }

    def _check_event_kind(self, event: Any) -> None:
        """Refuse what a transcription session has no use for (an ``error`` event; the
        session goes on)."""
        if self.transcribes_only and isinstance(event, _REFUSED):
            name = type(event).__struct_config__.tag
            raise InvalidRequest(
                f"'{name}' is not supported in a transcription session: it transcribes the "
                "input audio and makes no responses.",
                code="unsupported_in_transcription_session",
            )

    def _check_session_type(self, new: p.SessionConfig) -> None:
        if new.type is not None and new.type != self.config.type:
            raise InvalidRequest(
                f"Passing a {new.type} session update event to a {self.config.type} session is "
                "not allowed: the session's type is chosen when it opens "
                "(/v1/realtime?intent=transcription for a transcription session).",
                param="session.type",
                code="invalid_value",
            )

    def _check_transcription_model(self, named: str | None) -> None:
        """A transcription model, and (in a transcription session, where it is the model the
        key uses) one of the key's: named, or the default it stands for."""
        model = named or self.settings.chat.input_audio_model
        self.registry.check(model, Capability.TRANSCRIPTION)
        if named is not None or self.transcribes_only:
            self.policy.check_model(model)

    def _make_room_for_turn(self) -> None:
        """Before a turn is committed: its model is still the key's, and (in a transcription
        session) the oldest turns are let go rather than the new one refused."""
        if not self.transcribes_only:
            self._check_items_budget()
            return
        self._check_transcription_model(self.config.transcription.model)
        while len(self.items) >= self.limits.max_items:
            del self.items[next(iter(self.items))]

    def _transcribed(self, item: Item) -> None:
        """A transcription session's turn is not heard again: its audio is let go (it
        counted against ``max_audio_seconds_held`` until now)."""
        if self.transcribes_only:
            item.audio = None
