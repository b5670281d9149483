"""Fault-injection engines: real engines cannot be made to fail on cue mid-stream, so these
stand in for them in the tests of the gateway's failure paths (and only there)."""

from __future__ import annotations

import numpy as np

from engines.base import AudioChunk, EngineError, SpeechEngine, VoiceInfo


class FailingMidStream(SpeechEngine):
    """Yields one real-looking sentence of audio, then fails like a crashed model would."""

    def load(self) -> None:
        pass

    def voices(self):
        return [VoiceInfo(id="alloy", engine="fault", languages=("en",))]

    async def synthesize(self, request):
        yield AudioChunk(samples=np.full(24000, 0.1, np.float32), sample_rate=24000, text="one")
        raise EngineError("the speech model crashed")


class FailsToLoad(SpeechEngine):
    def load(self) -> None:
        raise RuntimeError("weights are corrupt")

    def voices(self):
        return []

    async def synthesize(self, request):  # pragma: no cover - never loads
        yield


class Paced(SpeechEngine):
    """``input`` is "WORK GAP N": N sentences, each WORK seconds on the worker, with GAP
    seconds off it between them (the time a real stream spends encoding and sending)."""

    def load(self) -> None:
        pass

    def voices(self):
        return [VoiceInfo(id="alloy", engine="fault", languages=("en",))]

    def pace(self, text: str) -> tuple[float, float, int]:
        work, gap, count = text.split()
        return float(work), float(gap), int(count)

    async def synthesize(self, request):
        import asyncio
        import time

        work, gap, count = self.pace(request.text)
        for index in range(count):
            if index and gap:
                await asyncio.sleep(gap)
            await self.worker.run(time.sleep, work)
            yield AudioChunk(samples=np.zeros(2400, np.float32), sample_rate=24000, text=str(index))


class Slow(Paced):
    """Takes ``input`` seconds (on its worker) for each of two sentences, like a big model
    on a busy CPU; its worker's queue limit is what the overload test exercises."""

    def pace(self, text: str) -> tuple[float, float, int]:
        return float(text), 0.0, 2


from engines.chat import ChatEngine, Finish, TextDelta  # noqa: E402


class ChatFailingMidStream(ChatEngine):
    """Streams two words, then fails like a crashed upstream would."""

    def load(self) -> None:
        pass

    async def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def generate(self, request):
        yield TextDelta("Hello")
        yield TextDelta(" there")
        raise EngineError("the chat model crashed")
        yield Finish("stop", 1, 2)  # pragma: no cover


class ChatOverloaded(ChatEngine):
    """Refuses every generation as a full queue does, before producing anything."""

    def load(self) -> None:
        pass

    async def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def generate(self, request):
        from engines.base import EngineOverloaded

        raise EngineOverloaded("model 'busy-chat' has 16 requests waiting; retry shortly")
        yield  # pragma: no cover


# --------------------------------------------------------------------------- crashing real engines
# The real embedded engines, made to crash on cue: a request whose text starts with
# "crashN " gets N real items (audio chunks, transcript segments, chat events) and then
# the kind of exception a crashed native library raises. Any other request is served
# as usual, so a test can check that the same engine serves the next request.

import re  # noqa: E402

from engines.embedded.llama import LlamaChatEngine  # noqa: E402
from engines.embedded.piper import PiperEngine  # noqa: E402
from engines.embedded.whisper import FasterWhisperEngine  # noqa: E402

_CUE = re.compile(r"^crash(\d+) ?")


def crash_cue(text: str | None) -> tuple[int | None, str]:
    """(items to deliver before crashing, or None for no crash; the text without the cue)."""
    match = _CUE.match(text or "")
    if not match:
        return None, text or ""
    return int(match.group(1)), text[match.end() :]


class NativeCrash(RuntimeError):
    """What a native inference library raises when it dies mid-run (not an EngineError)."""


async def _crash_after(items, after: int):
    delivered = 0
    if after > 0:
        async for item in items:
            yield item
            delivered += 1
            if delivered >= after:
                break
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()
    raise NativeCrash(f"the inference library crashed after {delivered} item(s)")


class CrashingPiper(PiperEngine):
    async def synthesize(self, request):
        after, text = crash_cue(request.text)
        if after is None:
            async for chunk in super().synthesize(request):
                yield chunk
            return
        import dataclasses

        real = super().synthesize(dataclasses.replace(request, text=text))
        async for chunk in _crash_after(real, after):
            yield chunk


class CrashingWhisper(FasterWhisperEngine):
    async def transcribe(self, audio, options):
        after, prompt = crash_cue(options.prompt)
        if after is None:
            return await super().transcribe(audio, options)
        import dataclasses

        stream = await super().transcribe(audio, dataclasses.replace(options, prompt=prompt or None))
        stream.segments = _crash_after(stream.segments, after)
        return stream


class CrashingLlama(LlamaChatEngine):
    async def generate(self, request):
        last = request.messages[-1]
        after, text = crash_cue(last.content)
        if after is None:
            async for event in super().generate(request):
                yield event
            return
        import dataclasses

        messages = [*request.messages[:-1], dataclasses.replace(last, content=text)]
        real = super().generate(dataclasses.replace(request, messages=messages))
        async for event in _crash_after(real, after):
            yield event


def rss_mib() -> float:
    """Resident memory of this process (tests run the gateway in a thread of it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def drop_captured_logs() -> None:
    """pytest keeps every record logged during a test (with its traceback, whose frames
    hold whole audio buffers) until the test ends, in its caplog and report handlers on the
    root logger; a memory test drops them between rounds so that it measures the gateway."""
    import logging

    for handler in logging.getLogger().handlers:
        if hasattr(handler, "records") and callable(getattr(handler, "reset", None)):
            handler.reset()


class StallingLlama(LlamaChatEngine):
    """The real model, which pauses for ``STALL`` seconds right after the token that
    completes the first piece a spoken reply voices (its first sentence, or that sentence's
    opening clause), as a busy or slow model does between tokens (a real one cannot be made
    to pause on cue). ``pauses`` records each pause as (text so far, when it began, when it
    ended)."""

    STALL = 2.0
    pauses: list[tuple[str, float, float]] = []

    async def generate(self, request):
        import asyncio
        import time

        from adapters.text.sentences import FIRST_CLAUSE_WORDS, SentenceBuffer
        from engines.chat import TextDelta

        # Split as gateway.api.chat.voice.SpokenReply does.
        sentences = SentenceBuffer(first_clause_words=FIRST_CLAUSE_WORDS)
        stalled, text = False, ""
        async for event in super().generate(request):
            yield event
            if stalled or not isinstance(event, TextDelta):
                continue
            text += event.text
            if sentences.push(event.text):
                stalled, began = True, time.monotonic()
                await asyncio.sleep(self.STALL)
                type(self).pauses.append((text, began, time.monotonic()))


class EnginesRegistry:
    """The model registry's interface the realtime session and a spoken reply use, holding
    given stand-in engines by kind (``chat``, ``speech``, ``transcription``,
    ``audio_tokens``): every model name resolves to the engine of its kind."""

    compute_slots = 2  # the chat model does not wait for the voice (no pacing)

    def __init__(self, **engines) -> None:
        self.engines = engines

    def check(self, name, capability):
        return name

    def canonical(self, name):
        return name

    def states(self):
        return []

    def __getattr__(self, kind):
        from contextlib import asynccontextmanager

        if kind not in self.__dict__.get("engines", {}):
            raise AttributeError(kind)

        @asynccontextmanager
        async def use(name):
            yield self.engines[kind]

        return use
