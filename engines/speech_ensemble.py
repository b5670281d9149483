"""One speech model made of several engines: each request goes to the member that owns
the chosen voice and speaks the input's language (see adapters/voices.py)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import AsyncIterator, Sequence

import structlog

from adapters.voices import VoiceNotFound, VoiceOption, choose_voice

from .base import (
    AudioChunk,
    EngineUnavailable,
    InvalidInput,
    SpeechEngine,
    SpeechRequest,
    VoiceInfo,
)

log = structlog.get_logger(__name__)


class SpeechEnsemble(SpeechEngine):
    def __init__(self, name, context, *, members: list[str]) -> None:
        super().__init__(name, context)
        self.member_names = list(members)
        self._members: dict[str, SpeechEngine] = {}
        self._stack: AsyncExitStack | None = None

    def load(self) -> None:  # members load through the registry in start()
        pass

    async def start(self) -> None:
        stack = AsyncExitStack()
        for member in self.member_names:
            try:
                engine = await stack.enter_async_context(
                    self.context.registry.speech(member)
                )
            except EngineUnavailable as exc:
                # A GPL-free install has no Piper: serve with the members that load.
                log.warning("speech_member_unavailable", model=member, reason=exc.message)
                continue
            self._members[member] = engine
        if not self._members:
            await stack.aclose()
            raise EngineUnavailable(f"no member of {self.name!r} could be loaded")
        self._stack = stack

    async def stop(self) -> None:
        self._members.clear()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    def voices(self) -> Sequence[VoiceInfo]:
        return [voice for engine in self._members.values() for voice in engine.voices()]

    def voice_aliases(self) -> dict[str, list[str]]:
        return self.context.voices

    def route(self, voice: str, language: str) -> tuple[SpeechEngine, str]:
        options = [
            VoiceOption(id=v.id, owner=member, languages=v.languages)
            for member, engine in self._members.items()
            for v in engine.voices()
        ]
        try:
            chosen = choose_voice(voice, language, self.context.voices, options)
        except VoiceNotFound as exc:
            raise InvalidInput(exc.message, param=exc.param) from exc
        return self._members[chosen.owner], chosen.id

    @property
    def speed_range(self) -> tuple[float, float]:  # type: ignore[override]
        lows, highs = zip(*(engine.speed_range for engine in self._members.values()))
        return max(lows), min(highs)

    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[AudioChunk]:
        engine, voice = self.route(request.voice, request.language)
        routed = SpeechRequest(
            text=request.text,
            voice=voice,
            language=request.language,
            speed=request.speed,
            instructions=request.instructions,
        )
        async for chunk in engine.synthesize(routed):
            yield chunk
