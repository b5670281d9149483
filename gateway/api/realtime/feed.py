"""A realtime response's turn, run by its own task from the moment it starts.

The response renders the events as server events when it takes them; the turn does not
wait for it. That lets a reply start before its response exists (a speculative reply,
begun at the user's pause: :mod:`.speculation`) and be taken over, events made so far
first, by the response once the turn has really ended. Every response's turn runs this
way, speculative or not, so there is one path to render and one to stop.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import AsyncIterator

from engines.chat import ChatRequest, TextDelta
from engines.registry import ModelRegistry
from engines.workers import commit_admission, open_admission

from ...policy import Policy
from ...pump import Pump
from ...turn import run_turn
from ..chat.voice import SpokenReply


class TurnFeed:
    def __init__(
        self,
        registry: ModelRegistry,
        model: str,
        request: ChatRequest,
        reply: SpokenReply | None,
        policy: Policy,
    ) -> None:
        self.request = request
        self.reply = reply
        self.first_token_at: float | None = None  # perf_counter, when the model wrote it
        self.heard_at: float | None = None  # a speculative reply's words, transcribed
        self._pump: Pump[object] = Pump()
        self._pump.start(lambda: self._produce(registry, model, policy))

    async def _produce(self, registry: ModelRegistry, model: str, policy: Policy) -> None:
        # The turn's own admission to the engine queues, as an HTTP request has one
        # (engines.workers): refused while queues are full, never once it has begun.
        open_admission()
        turn = run_turn(registry, model, self.request, policy, reply=self.reply, door="realtime")
        async with aclosing(turn):  # stopping the feed frees the chat model and the voice
            async for event in turn:
                commit_admission()
                if self.first_token_at is None and isinstance(event, TextDelta):
                    self.first_token_at = time.perf_counter()
                self._pump.put(event)

    async def events(self) -> AsyncIterator[object]:
        """The turn's events, those made before this was called first; the turn's
        failure is raised after the events that came before it."""
        pump = self._pump
        while True:
            items = pump.take()
            if items:
                for event in items:
                    yield event
                continue
            if pump.done:
                pump.raise_failure()
                return
            await pump.wait()

    async def stop(self) -> None:
        """Stop the turn (if it still runs) and wait until it has let go of its engines."""
        await self._pump.stop()
