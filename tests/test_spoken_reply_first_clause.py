"""A spoken answer starts at its first clause, not at the end of its first sentence.

The chat model here is a stand-in whose pen we hold: it writes the opening clause of a long
first sentence and a word after it, then waits until the listener has heard something (or
gives up after a minute and writes the rest). The voice is the real embedded one, through
the same ``SpokenReply`` and stream (``interleave``) a chat completion and a realtime
response use. So "the first audio came while the model was still writing the sentence" is
a fact of the order of events, not of timing.
"""

from __future__ import annotations

import asyncio

import pytest

from engines.registry import registry_from_settings
from gateway.api.chat.voice import SpokenReply, interleave
from gateway.api.realtime.speech import heard_transcript, realtime_speech
from gateway.policy import UNLIMITED
from gateway.settings import load_settings

pytestmark = pytest.mark.slow

OPENING = "The quickest way to get there from the station,"
REST = (
    "if you do not mind a short walk, is to follow the river north until you reach the old "
    "stone bridge. Then turn left."
)
PATIENCE = 60.0  # seconds the writer waits to be heard before it writes on regardless


class Writer:
    """The chat model's text, paused after the opening clause and the word that follows
    it (which shows the clause is over) until ``heard`` is set."""

    def __init__(self) -> None:
        self.heard = asyncio.Event()
        self.paused = False

    async def write(self):
        for word in (OPENING + " " + REST).split(" ")[: len(OPENING.split()) + 1]:
            yield word + " "
        self.paused = True
        try:
            await asyncio.wait_for(self.heard.wait(), PATIENCE)
        except TimeoutError:
            pass  # never heard: write the rest, and the test sees the audio came too late
        self.paused = False
        yield REST.split(" ", 1)[1]


@pytest.fixture(scope="module")
async def registry():
    settings = load_settings()
    settings.engines.preload = []
    registry = registry_from_settings(settings)
    async with registry.speech("tts-1"):  # loaded now, so no test waits on the load
        pass
    yield registry
    await registry.close()


def chat_reply(registry) -> SpokenReply:
    return SpokenReply(registry, "tts-1", "alloy", "pcm")


def realtime_reply(registry) -> SpokenReply:
    return realtime_speech(registry, "tts-1", "alloy", "audio/pcm", 1.0, UNLIMITED)


@pytest.mark.parametrize("make_reply", [chat_reply, realtime_reply], ids=["chat", "realtime"])
async def test_the_first_audio_comes_while_the_first_sentence_is_still_being_written(
    registry, make_reply
):
    writer, reply = Writer(), make_reply(registry)
    heard_while_paused: list[bool] = []  # for each audio chunk: was the writer paused?

    def hear(item) -> None:
        if isinstance(item, bytes) and item:
            heard_while_paused.append(writer.paused)
            writer.heard.set()

    reply.start()
    try:
        async for item in interleave(writer.write(), reply, text_of=lambda text: text, pace=False):
            hear(item)
        reply.close()
        async for item in reply.drain():
            hear(item)
    finally:
        await reply.aclose()
    assert heard_while_paused[0], "the first audio waited for the rest of the first sentence"
    # The clause was voiced as a piece of its own; the rest of its sentence, then the next.
    assert [said for _, said in reply.marks] == [
        OPENING,
        "if you do not mind a short walk, is to follow the river north until you reach the "
        "old stone bridge.",
        "Then turn left.",
    ]
    # A reply cut short just after its first piece is remembered as having said the clause.
    first_end = reply.marks[0][0]
    assert heard_transcript(reply.marks, first_end) == OPENING
    assert heard_transcript(reply.marks, reply.produced) == OPENING + " " + REST


LONG = (
    "The quickest way to get there from the station is to follow the river north until "
    "you reach the old stone bridge. Then turn left."
)


async def _marks(reply: SpokenReply, text: str) -> list[str]:
    async def write():
        for word in text.split(" "):
            yield word + " "

    reply.start()
    try:
        async for _ in interleave(write(), reply, text_of=lambda t: t, pace=False):
            pass
        reply.close()
        async for _ in reply.drain():
            pass
    finally:
        await reply.aclose()
    return [said for _, said in reply.marks]


async def test_a_realtime_answer_starts_with_a_short_piece_of_a_long_first_sentence(registry):
    """A first sentence with no clause to end at: a realtime answer voices its first
    eight words or so as a piece of their own (the wait for the first audio is the
    voice's time for those); a chat reply, as before, voices the whole sentence."""
    realtime = await _marks(realtime_reply(registry), LONG)
    chat = await _marks(chat_reply(registry), LONG)
    assert realtime == [
        "The quickest way to get there from the station",
        "is to follow the river north until you reach the old stone bridge.",
        "Then turn left.",
    ]
    assert chat == [LONG.split(". ")[0] + ".", "Then turn left."]
