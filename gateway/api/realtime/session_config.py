"""``session.update``: the session's configuration, checked whole before any of it applies,
and its wire shape (``session.created`` / ``session.updated``). A transcription session
takes only the audio input and ``include`` (:mod:`.transcription_session`)."""

from __future__ import annotations

import msgspec

from adapters.voice_owners import is_clone_id
from engines.base import Capability

from ...errors import InvalidRequest
from . import events as ev
from . import protocol as p
from .conversation import (
    check_rate,
    format_wire,
    tool_choice_of,
    tool_choice_wire,
    tool_wire,
    transcription_wire,
)


class SessionConfigEvents:
    """A part of :class:`~.serving.RealtimeSession` (see the module notes)."""

    def session_wire(self) -> dict:
        if self.transcribes_only:
            return self.transcription_session_wire()
        c = self.config
        wire = {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": c.model,
            "output_modalities": c.output_modalities,
            "instructions": c.instructions,
            "tools": [tool_wire(t) for t in c.tools],
            "tool_choice": tool_choice_wire(c.tool_choice),
            "max_output_tokens": c.max_output_tokens,
            "tracing": None,
            "expires_at": self.expires_at,
            "audio": {
                "input": {
                    "format": format_wire(c.input_format),
                    # the spec types these as objects: "off" is their absence, not null
                    **(
                        {}
                        if c.transcription is None
                        else {"transcription": transcription_wire(c.transcription)}
                    ),
                    "turn_detection": c.turn_detection_wire(),
                },
                "output": {"format": format_wire(c.output_format), "voice": c.voice, "speed": c.speed},
            },
        }
        if c.include:  # the spec's include is a list, never null: absent until asked for
            wire["include"] = list(c.include)
        return wire

    async def _update(self, event: p.SessionUpdate) -> None:
        new = event.session
        self._check_session_type(new)
        audio = new.audio or p.AudioConfig()
        if self.transcribes_only:  # a transcription session reads its audio input alone
            new = p.SessionConfig(audio=p.AudioConfig(input=audio.input), include=new.include)
            audio = new.audio
        c = self.config
        if new.model is not None:
            self.registry.check(new.model, Capability.CHAT)
            self.policy.check_model(new.model)
        if audio.input is not None:
            self._check_audio_input(audio.input)
        if audio.output is not None:
            if audio.output.format is not None:
                check_rate(audio.output.format, "session.audio.output.format.rate")
            if audio.output.voice is not None:
                await self._check_voice(audio.output.voice, "session.audio.output.voice")
        if new.tool_choice is not None or new.tools is not None:
            # The pair as it will be: new tools can leave a kept choice nothing to call.
            tool_choice_of(
                new.tool_choice if new.tool_choice is not None else c.tool_choice,
                new.tools if new.tools is not None else c.tools,
            )
        # everything checked: apply
        if new.model is not None:
            c.model = new.model
        if new.instructions is not None:
            c.instructions = new.instructions
        if new.output_modalities:
            c.output_modalities = list(new.output_modalities)
        if new.tools is not None:
            c.tools = list(new.tools)
        if new.tool_choice is not None:
            c.tool_choice = new.tool_choice
        if new.max_output_tokens is not None:
            c.max_output_tokens = new.max_output_tokens
        if new.include is not None:
            c.include = list(new.include)
        if audio.input is not None:
            self._apply_audio_input(audio.input)
        if audio.output is not None:
            if audio.output.format is not None:
                c.output_format = audio.output.format.type
            if audio.output.voice is not None:
                c.voice = audio.output.voice
            if audio.output.speed is not None:
                c.speed = audio.output.speed
        await self.send(ev.SessionUpdated(session=self.session_wire()))

    def _check_audio_input(self, audio: p.AudioInput) -> None:
        if audio.format is not None:
            check_rate(audio.format, "session.audio.input.format.rate")
        if isinstance(audio.transcription, p.Transcription):
            self._check_transcription_model(audio.transcription.model)

    def _apply_audio_input(self, audio: p.AudioInput) -> None:
        c = self.config
        if audio.format is not None and audio.format.type != c.input_format:
            c.input_format = audio.format.type
            self._reset_input()
        if audio.transcription is not msgspec.UNSET:
            c.transcription = audio.transcription
            if c.transcription is None and self.transcribes_only:
                c.transcription = p.Transcription()  # it always transcribes: the default model
        if audio.turn_detection is not msgspec.UNSET:
            c.turn_detection = audio.turn_detection
            self._reset_input()

    async def _check_voice(self, voice: str, param: str) -> None:
        async with self.registry.speech(self.settings.chat.speech_model) as engine:
            # A cloned voice's engine id is never a name a session may use (see
            # adapters.voice_owners): it would reach another key's clone.
            known = {v.id for v in engine.voices() if not is_clone_id(v.id)}
            known |= set(engine.context.voices)
        if voice not in known:
            raise InvalidRequest(
                f"Voice '{voice}' is not available. Available voices: {', '.join(sorted(known))}.",
                param=param,
            )
