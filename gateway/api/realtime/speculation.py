"""Speculative replies: Step-Audio's scheme carried through to the answer.

At the user's pause the turn may be over, or not: the turn detector waits for
``silence_duration_ms`` of silence before it says so. The turn's transcription starts at
the pause (:mod:`.input_audio`), and so does, here, the reply a response would make of it:
the same request, the same voice, run by a :class:`~.feed.TurnFeed` whose charges to the
key are held (:class:`~gateway.policy.HeldCharges`) and whose events nobody sees yet.

When the turn ends there, the response created for it builds its request as always; if
that is the request the speculation answered, with the same voice, it takes the feed over:
the answer's first audio is ready or nearly so. Otherwise (the user went on, the session
or the conversation changed in between) the speculation is stopped and charges nothing.
Only the chat model's compute is risked, from a pause to the words that follow it.

Not for a model that hears the user's audio itself (Step-Audio reads audio tokens): the
committed audio, with its trailing silence, is not the audio of the pause.

Earlier still, when the user starts to speak, the conversation so far is handed to the
chat engine to compute ahead (``ChatEngine.prefill``): the reply, at a pause or at the
turn's end, then has only the user's new words left to read, not also the answer before
them, whose tokens the embedded model sampled one by one and cannot reuse.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import structlog

from ... import metrics
from ...policy import HeldCharges, RateLimitExceeded
from . import protocol as p
from .conversation import Item
from .feed import TurnFeed

log = structlog.get_logger(__name__)


@dataclass
class Speculation:
    feed: TurnFeed
    voicing: tuple | None
    policy: HeldCharges
    heard_at: float  # when the pause's words were transcribed


class SpeculativeReplies:
    """A part of :class:`~.serving.RealtimeSession` (see the module notes)."""

    _speculative_reply: asyncio.Task | None = None
    _prefilling: asyncio.Task | None = None  # the conversation computed ahead
    # A key refused a response is not worked for ahead of its asking until its window
    # resets: work begun at a pause must not be a way around the key's limits.
    _no_speculation_until = 0.0

    def _work_ahead(self) -> bool:
        """Whether work may begin before the turn ends: turns are answered, nothing is
        being answered now, and the key was not refused."""
        return (
            self._answers_turns()
            and self.response is None
            and time.monotonic() >= self._no_speculation_until
        )

    def _prefill_conversation(self) -> None:
        """The user began to speak: have the chat engine compute the conversation so far
        (one such task at a time)."""
        if self._prefilling is not None and not self._prefilling.done():
            return
        if self._work_ahead():
            self._prefilling = asyncio.create_task(self._prefill())

    async def _prefill(self) -> None:
        from .response import ResponseRun  # the response module builds on this one

        try:
            run = ResponseRun(self, self.response_of(p.ResponseConfig()))
            request = await run._request()
            async with self.registry.chat(self.config.model) as engine:
                await engine.prefill(request)
        except Exception as exc:  # noqa: BLE001 - a head start; the reply meets any fault
            log.debug("realtime prefill skipped", error=repr(exc))

    async def prefilled(self) -> None:
        """Return once the conversation's prefill, if one runs, is done: it computes what
        a reply would, and a reply that started beside it would compute it again."""
        task = self._prefilling
        if task is not None and not task.done():
            await asyncio.shield(task)

    def _speculate(self, heard: asyncio.Task, item_id: str, audio: np.ndarray) -> None:
        """Begin the reply to the words heard so far (``heard``: their transcription)."""
        self._drop_speculative_reply()
        if not self._work_ahead():
            return
        self._speculative_reply = asyncio.create_task(self._begin_reply(heard, item_id, audio))

    async def _begin_reply(
        self, heard: asyncio.Task, item_id: str, audio: np.ndarray
    ) -> Speculation | None:
        from .response import ResponseRun  # the response module builds on this one

        words = await asyncio.shield(heard)  # the committed item may still take them
        heard_at = time.perf_counter()
        if not await self._reads_transcripts():
            return None
        item = Item(id=item_id, type="message", role="user")
        item.keep_audio(audio)
        item.content.append({"type": "input_audio", "transcript": words.text})
        run = ResponseRun(self, self.response_of(p.ResponseConfig()), pending=item)
        request = await run._request()
        await self.prefilled()
        policy = HeldCharges(self.policy)
        return Speculation(run.feed(request, policy), run.voicing(), policy, heard_at)

    async def _reads_transcripts(self) -> bool:
        async with self.registry.chat(self.config.model) as engine:
            return not engine.accepts_audio_tokens

    def _drop_speculative_reply(self) -> None:
        task, self._speculative_reply = self._speculative_reply, None
        if task is not None:
            task.add_done_callback(_stop_unused)
            task.cancel()
            metrics.REALTIME_SPECULATIONS.labels(outcome="dropped").inc()

    async def _stop_speculative_reply(self) -> None:
        """The session is closing: stop the prefill and the speculation, and wait for
        them (and its reply) to stop."""
        prefilling, self._prefilling = self._prefilling, None
        if prefilling is not None:
            prefilling.cancel()
            try:
                await prefilling
            except BaseException:  # noqa: BLE001 - closing anyway
                pass
        task, self._speculative_reply = self._speculative_reply, None
        if task is None:
            return
        task.cancel()
        try:
            speculation = await task
        except BaseException:  # noqa: BLE001 - closing anyway
            return
        if speculation is not None:
            await speculation.feed.stop()

    async def adopt_speculation(self, request, voicing: tuple | None) -> TurnFeed | None:
        """The speculative reply's feed if it answers ``request`` in the same voice (its
        held charges are made now); None, the speculation stopped, otherwise."""
        task, self._speculative_reply = self._speculative_reply, None
        if task is None:
            return None
        try:
            speculation = await task
        except Exception:  # noqa: BLE001 - the response makes its own reply and meets it
            speculation = None
        if speculation is None:
            metrics.REALTIME_SPECULATIONS.labels(outcome="dropped").inc()
            return None
        if speculation.feed.request != request or speculation.voicing != voicing:
            metrics.REALTIME_SPECULATIONS.labels(outcome="dropped").inc()
            await speculation.feed.stop()
            return None
        try:
            await speculation.policy.release()
        except RateLimitExceeded as exc:
            self.refused(exc)
            await speculation.feed.stop()
            raise
        metrics.REALTIME_SPECULATIONS.labels(outcome="adopted").inc()
        speculation.feed.heard_at = speculation.heard_at
        return speculation.feed

    def refused(self, error: RateLimitExceeded) -> None:
        """The key was refused: no reply is begun ahead for it until it may ask again."""
        retry = int((getattr(error, "headers", None) or {}).get("retry-after", 60))
        self._no_speculation_until = time.monotonic() + retry


_stopping: set[asyncio.Task] = set()  # held here: the loop keeps only weak references


def _stop_unused(task: asyncio.Task) -> None:
    """A dropped speculation that had started its reply: stop the reply."""
    if task.cancelled() or task.exception() is not None:
        return
    speculation = task.result()
    if speculation is not None:
        stopping = asyncio.ensure_future(speculation.feed.stop())
        _stopping.add(stopping)
        stopping.add_done_callback(_stopping.discard)
