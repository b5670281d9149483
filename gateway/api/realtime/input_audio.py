"""Input audio and turn detection: ``input_audio_buffer.*`` events, the turn detector
(Silero) on what is heard, commits that become user items, and their transcription (heard
speculatively from the first pause, kept if the turn really ended), within the session's
budgets of audio held and transcription work queued.

When the session asked for transcripts, each phrase heard at a pause is sent as a
``conversation.item.input_audio_transcription.delta`` at once, while the user may still be
speaking (with the item id ``speech_started`` gave, which the commit keeps); ``completed``
follows with the whole turn's transcript. A turn heard whole (a manual commit, no pause
heard) is one delta."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections import deque
from typing import Any

import numpy as np

from adapters.audio.pcm import resample
from adapters.realtime.audio import InputConverter, bytes_per_second
from adapters.realtime.vad import (
    RATE,
    Gap,
    Paused,
    Resumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    VadSettings,
)
from engines.base import EngineError, TranscriptionOptions, Word

from ... import metrics
from ...errors import InvalidRequest, error_from_engine
from ..transcription.serving import word_logprobs
from . import events as ev
from . import protocol as p
from .conversation import Item, new_id
from .hearing import PHRASE_SECONDS, Heard, TurnHearing

_ARRIVALS_KEPT = 2_000  # appends: 40 s of 20 ms pieces, past any turn detector's silence


class InputAudio:
    """A part of :class:`~.serving.RealtimeSession` (see the module notes)."""

    async def _commit_manually(self, event: p.AudioCommit) -> None:
        if self.config.turn_detection is not None and self.detector.speaking:
            self.detector.speaking = False
        await self._commit(manual=True)

    async def _clear_input(self, event: p.AudioClear) -> None:
        self._reset_input()
        await self.send(ev.InputCleared())

    def _reset_input(self) -> None:
        self.converter = InputConverter(self.config.input_format)
        self.buffer: list[np.ndarray] = []
        self.buffered = 0  # samples in buffer
        self.buffer_start = getattr(self, "heard", 0)  # session sample index of buffer[0]
        self.heard = getattr(self, "heard", 0)  # 16 kHz samples heard this session
        self.detector = TurnDetector(
            self.config.vad() if self.config.turn_detection else VadSettings(), self.heard
        )
        self._pending_item = new_id("item")
        # (samples heard, when they arrived) for the last appends: when did speech end?
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=_ARRIVALS_KEPT)
        self._new_hearing()
        self._drop_speculative_reply()

    async def _append(self, event: p.AudioAppend) -> None:
        data_b64 = event.audio
        try:
            data = base64.b64decode(data_b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("The audio is not valid base64.", param="audio") from None
        self._check_audio_held(len(data), "audio")
        await self.hear(self.converter.push(data))

    async def hear_call_audio(self, samples: np.ndarray) -> None:
        """16 kHz samples from a WebRTC call's microphone (calls.py): what an append is
        on the WebSocket. A refusal is said once, not once per 20 ms packet, until the
        audio is taken again."""
        try:
            self._check_held_samples(len(samples), "audio")
            await self.hear(samples)
        except EngineError as exc:
            if not getattr(self, "_refusing_call_audio", False):
                await self.error(exc)
            self._refusing_call_audio = True
        else:
            self._refusing_call_audio = False

    async def hear(self, samples: np.ndarray) -> None:
        """16 kHz samples heard: into the buffer, through the turn detector."""
        limit = int(self.limits.max_buffer_seconds * RATE)
        if self.buffered + len(samples) > limit:
            raise InvalidRequest(
                f"The input audio buffer holds at most {self.limits.max_buffer_seconds:g} s; "
                "commit or clear it.",
                param="audio",
                code="input_audio_buffer_full",
            )
        self.buffer.append(samples)
        self.buffered += len(samples)
        self.heard += len(samples)
        self._arrivals.append((self.heard, time.perf_counter()))
        if self.config.turn_detection is None:
            return
        for turn in self.detector.push(samples):
            await self._on_turn(turn)
        if not self.detector.speaking:  # silence: keep only what a prefix may need
            keep = int(self.config.vad().prefix_padding_ms * RATE / 1000) + 2 * 512
            self._trim_to(self.heard - keep)

    async def _on_turn(self, turn: Any) -> None:
        """What the turn detector heard in the audio just appended."""
        if isinstance(turn, SpeechStarted):
            await self.send(ev.SpeechStarted(
                audio_start_ms=turn.audio_start_ms, item_id=self._pending_item
            ))
            self._trim_to(turn.audio_start_ms * RATE // 1000)
            self._new_hearing()
            interrupts = self.config.turn_detection.interrupt_response is not False
            if self.response is not None and interrupts:
                metrics.REALTIME_BARGE_INS.inc()
                await self.cancel_response("turn_detected")
            self._prefill_conversation()  # speculation.py
        elif isinstance(turn, Gap):
            # A long phrase is heard from a gap between its words while the user goes on,
            # so that a pause finds little or nothing left to hear (hearing.py).
            unheard = (turn.sample - self._hearing.heard_until) / RATE
            if unheard >= PHRASE_SECONDS and self._has_room_to_hear():
                self._hear_phrase(self._pending_item, until=turn.sample)
        elif isinstance(turn, Paused):
            # Step-Audio's scheme: start hearing the turn at the pause, and the reply to
            # it (speculation.py). The phrase heard is kept if the user goes on: only what
            # they say next is left to hear. Not while the recogniser already has this
            # session's full share of work.
            if self.buffer and self._has_room_to_hear():
                if turn.end_sample > self._hearing.heard_until:  # words since the last cut
                    self._hear_phrase(self._pending_item)
                words = self._hearing.words
                self._speculate(words, self._pending_item, np.concatenate(self.buffer))
        elif isinstance(turn, Resumed):
            self._drop_speculative_reply()
        elif isinstance(turn, SpeechStopped):
            await self._on_speech_stopped(turn)

    async def _on_speech_stopped(self, turn: SpeechStopped) -> None:
        self._speech_stopped_at = time.perf_counter()
        self._speech_ended_at = self._arrival_of(self.heard_through(turn))
        await self.send(ev.SpeechStopped(
            audio_end_ms=turn.audio_end_ms, item_id=self._pending_item
        ))
        hearing = self._hearing
        if hearing.words is not None and hearing.heard_until < self.heard_through(turn):
            # Words after the last pause heard (its phrase found no room then): they are
            # the last phrase, not a reason to hear the phrases already announced again.
            self._hear_phrase(self._pending_item)
        heard = hearing.words
        self._new_hearing(cancel=False)  # the item takes these words
        item = None
        try:
            item = await self._commit(manual=False, heard=heard)
        except InvalidRequest:
            # A turn that cannot be kept (a budget is spent) is dropped, not left to grow
            # the buffer: the error event says why.
            self._clear_buffer()
            raise
        finally:
            if item is None:
                hearing.cancel()
        if item is None or not self._answers_turns():
            self._drop_speculative_reply()
            return
        try:
            await self.create_response()  # takes the reply begun at the pause, if it fits
        except BaseException:
            self._drop_speculative_reply()
            raise

    def _answers_turns(self) -> bool:
        """Whether the end of a turn begins a response (never in a transcription session)."""
        detection = self.config.turn_detection
        return (
            not self.transcribes_only
            and detection is not None
            and detection.create_response is not False
        )

    def _arrival_of(self, sample: int) -> float | None:
        """When the audio holding session sample ``sample`` arrived, if still known."""
        return next((at for heard, at in self._arrivals if heard >= sample), None)

    def _check_audio_held(self, n_bytes: int, param: str) -> None:
        """Refuse ``n_bytes`` more of wire audio when the session would hold more than
        ``max_audio_seconds_held`` of input (buffer and items), before decoding it."""
        incoming = n_bytes * RATE // bytes_per_second(self.config.input_format)
        self._check_held_samples(incoming, param)

    def _check_held_samples(self, incoming: int, param: str) -> None:
        held = self.buffered + sum(len(i.audio) for i in self.items.values() if i.audio is not None)
        limit = self.limits.max_audio_seconds_held
        if held + incoming > limit * RATE:
            raise InvalidRequest(
                f"The session holds {held / RATE:.1f} s of input audio; with this "
                f"{incoming / RATE:.1f} s it would pass its limit of {limit:g} s. Delete "
                "conversation items or clear the input buffer.",
                param=param,
                code="session_audio_limit",
            )

    def _transcriptions_pending(self) -> int:
        return len(self._transcribing)

    def _has_room_to_hear(self) -> bool:
        return self._transcriptions_pending() < self.limits.max_pending_transcriptions

    def _check_transcription_room(self) -> None:
        """One session may keep at most ``max_pending_transcriptions`` items waiting for
        the recogniser, which every key shares."""
        limit = self.limits.max_pending_transcriptions
        if self._transcriptions_pending() >= limit:
            raise InvalidRequest(
                f"{self._transcriptions_pending()} audio items are still being transcribed; "
                f"a session may have at most {limit} waiting. Try again when one is done.",
                code="too_many_pending_transcriptions",
            )

    def _start_transcription(self, item: Item, heard: asyncio.Task | None = None) -> None:
        """Counted until it ends, even if its item is deleted: the work goes on."""
        task = asyncio.create_task(self._transcribe(item, heard))
        item.transcription = task
        self._transcribing.add(task)
        task.add_done_callback(self._transcribing.discard)

    def _new_hearing(self, cancel: bool = True) -> None:
        """Hear the next turn from the start of the buffer (``cancel``: the words of the
        one heard so far are not wanted)."""
        if cancel and getattr(self, "_hearing", None) is not None:
            self._hearing.cancel()
        self._hearing = TurnHearing(self._recognise, getattr(self, "buffer_start", 0))

    def _hear_phrase(self, item_id: str, until: int | None = None) -> None:
        """Give the recogniser the audio since the last phrase, up to session sample
        ``until`` (all there is by default), of item ``item_id``'s turn, whose transcript
        it announces."""
        if not self.buffer:
            return
        until = self.heard if until is None else min(until, self.heard)
        skip = max(0, self._hearing.heard_until - self.buffer_start)
        audio = np.concatenate(self.buffer)[skip : until - self.buffer_start]
        if len(audio):
            async def announce(phrase: Heard, first: bool) -> None:
                try:
                    await self._announce(item_id, phrase, first)
                except Exception:  # noqa: BLE001 - the client went: the router closes the session
                    pass  # (the words are still the turn's; only their delta is lost)

            self._hearing.hear(audio, until, announce)

    @staticmethod
    def heard_through(turn: SpeechStopped) -> int:
        """The session sample where the turn's speech ended."""
        return turn.audio_end_ms * RATE // 1000

    def _trim_to(self, session_sample: int) -> None:
        drop = session_sample - self.buffer_start
        if drop <= 0 or not self.buffer:
            return
        audio = np.concatenate(self.buffer)[drop:]
        self.buffer = [audio] if len(audio) else []
        self.buffered = len(audio)
        self.buffer_start = session_sample

    async def _commit(self, *, manual: bool, heard: asyncio.Task | None = None) -> Item | None:
        if self.buffered < RATE // 10:
            if manual:
                raise InvalidRequest(
                    "Error committing input audio buffer: buffer too small. Expected at least "
                    f"100ms of audio, but buffer only has {self.buffered * 1000 // RATE}ms of audio.",
                    code="input_audio_buffer_commit_empty",
                )
            return None
        self._make_room_for_turn()
        self._check_transcription_room()
        audio = np.concatenate(self.buffer)
        try:  # heard audio is charged whole on commit, or refused charging nothing
            await self.policy.charge_audio_in(len(audio) / RATE)
        except EngineError:
            self._clear_buffer()
            raise
        item = Item(id=self._pending_item, type="message", role="user")
        item.keep_audio(audio)
        item.content.append({"type": "input_audio", "transcript": None})
        self._clear_buffer()
        previous = self._last_id()
        self.items[item.id] = item
        await self.send(ev.InputCommitted(previous_item_id=previous, item_id=item.id))
        await self.send(ev.ItemAdded(previous_item_id=previous, item=item.wire()))
        await self.send(ev.ItemDone(previous_item_id=previous, item=item.wire()))
        self._start_transcription(item, heard)
        return item

    def _clear_buffer(self) -> None:
        self.buffer, self.buffered = [], 0
        self.buffer_start = self.heard
        self._pending_item = new_id("item")

    def _transcription_model(self) -> str:
        cfg = self.config.transcription
        return (cfg.model if cfg else None) or self.settings.chat.input_audio_model

    def _language(self) -> str | None:
        """The language the session named: ``language``, or ``languages`` if it is one."""
        cfg = self.config.transcription
        if cfg is None:
            return None
        if cfg.language:
            return cfg.language
        return cfg.languages[0] if cfg.languages and len(cfg.languages) == 1 else None

    async def _recognise(
        self, audio: np.ndarray, prompt: str | None = None, language: str | None = None
    ) -> Heard:
        """What the recogniser hears in ``audio`` (16 kHz): the session's transcription
        prompt and language, or for a phrase of a turn, the words and language before it."""
        cfg = self.config.transcription
        prompts = [cfg.prompt if cfg else None, prompt]
        async with self.registry.transcription(self._transcription_model()) as engine:
            if engine.sample_rate != RATE:
                audio = resample(audio, RATE, engine.sample_rate)
            options = TranscriptionOptions(
                language=self._language() or language,
                prompt=" ".join(p for p in prompts if p) or None,
                logprobs=self.config.logprobs,
            )
            stream = await engine.transcribe(audio, options)
            segments = [segment async for segment in stream.segments]
            words = [w for s in segments for w in s.words] if self.config.logprobs else []
            return Heard([s.text for s in segments], stream.info.language, words)

    async def _announce(self, item_id: str, phrase: Heard, first: bool) -> None:
        """A phrase of the item's transcript, as a delta (if the session asked for
        transcripts, and the phrase has words)."""
        text = "".join(phrase.pieces)
        text = text.lstrip() if first else text
        if self.config.transcription is None or not text.strip():
            return
        await self.send(ev.TranscriptionDelta(
            item_id=item_id, delta=text, **self._logprobs_of(phrase.words)
        ))

    def _logprobs_of(self, words: list[Word]) -> dict:
        """The ``logprobs`` field, when the session's ``include`` asks for it."""
        return {"logprobs": word_logprobs(words)} if self.config.logprobs else {}

    async def _transcribe(self, item: Item, heard: asyncio.Task | None = None) -> None:
        """Transcribe a committed user item (or take the speculative transcription that
        started at the pause), announcing it when the session asked for transcripts."""
        announce = self.config.transcription is not None
        seconds = len(item.audio) / RATE
        try:
            words = None
            if heard is not None:  # its phrases were announced as they were heard
                try:
                    words = await heard
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():
                        raise
            if words is None:
                words = await self._recognise(item.samples())
                await self._announce(item.id, words, True)
            transcript = words.text
            item.content[0]["transcript"] = transcript
            model = self._transcription_model() if self.transcribes_only else self.config.model
            metrics.count_audio("realtime", "in", model, seconds)
            if announce:
                await self.send(ev.TranscriptionCompleted(
                    item_id=item.id,
                    transcript=transcript,
                    usage={"type": "duration", "seconds": round(seconds, 3)},
                    **self._logprobs_of(words.words),
                ))
        except EngineError as exc:
            item.content[0]["transcript"] = ""
            error = error_from_engine(exc)
            await self.send(ev.TranscriptionFailed(
                item_id=item.id,
                error=ev.TranscriptionFailedDetail(
                    type=error.type, code=error.code, message=error.message, param=error.param
                ),
            ))
        finally:
            self._transcribed(item)
