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

    def count_tokens(self, text: str) -> int:
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

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def generate(self, request):
        from engines.base import EngineOverloaded

        raise EngineOverloaded("model 'busy-chat' has 16 requests waiting; retry shortly")
        yield  # pragma: no cover
