"""A spoken reply for a realtime response: the chat path's sentence-by-sentence
synthesis (:class:`~gateway.api.chat.voice.SpokenReply`), in the session's wire format,
remembering where each sentence's audio ends.

Those marks are what lets a cancelled or truncated reply keep, as its transcript, only
the words whose audio was actually sent or heard: the next turn's context then holds
what the user heard, not what the model had planned to say.
"""

from __future__ import annotations

import anyio.to_thread

from adapters.realtime.audio import OutputConverter, bytes_per_second
from adapters.text.language import detect_language
from adapters.text.sentences import SentenceBuffer
from engines.base import SpeechRequest
from engines.registry import ModelRegistry

from ..chat.voice import SpokenReply

FIRST_AUDIO_CHARS = 120


class RealtimeSpeech(SpokenReply):
    def __init__(self, registry: ModelRegistry, model: str, voice: str, fmt: str) -> None:
        super().__init__(registry, model, voice, "pcm")
        # A run-on first sentence would hold the first audio back: in a conversation the
        # wait matters more than where a long sentence is cut (at a clause or a space).
        self._buffer = SentenceBuffer(max_chars=FIRST_AUDIO_CHARS)
        self.fmt = fmt
        self.converter = OutputConverter(fmt)
        self.produced = 0  # wire bytes synthesised so far
        self.marks: list[tuple[int, str]] = []  # (byte offset where a sentence ends, sentence)

    @property
    def seconds(self) -> float:
        return self.produced / bytes_per_second(self.fmt)

    def _put(self, data: bytes) -> None:
        if data:
            self.produced += len(data)
            self._audio.put_nowait(data)

    async def _synthesise(self) -> None:
        try:
            async with self.registry.speech(self.model) as engine:
                while (sentence := await self._sentences.get()) is not None:
                    request = SpeechRequest(
                        text=sentence, voice=self.voice, language=detect_language(sentence)
                    )
                    async for chunk in engine.synthesize(request):
                        data = await anyio.to_thread.run_sync(
                            self.converter.push, chunk.samples, chunk.sample_rate
                        )
                        self._put(data)
                    self.marks.append((self.produced, sentence))
                self._put(self.converter.flush())
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            self._audio.put_nowait(exc)
        finally:
            self._audio.put_nowait(None)


def heard_transcript(marks: list[tuple[int, str]], heard_bytes: int) -> str:
    """The words whose audio lies within the first ``heard_bytes``: whole sentences, then
    the share of the next sentence's words that its heard audio stands for."""
    words: list[str] = []
    start = 0
    for end, sentence in marks:
        if heard_bytes >= end:
            words.append(sentence.strip())
        else:
            if heard_bytes > start and end > start:
                parts = sentence.split()
                share = (heard_bytes - start) / (end - start)
                words.extend(parts[: int(len(parts) * share)])
            break
        start = end
    return " ".join(w for w in words if w)
