"""First audio of a spoken reply whose first sentence is long, with and without the first
piece cut at a clause (issue 20).

The chat model is simulated by a steady stream of words (``--words-per-second``), so only
the split changes between the two runs; the voice is the real embedded one (``tts-1``,
``alloy``), through the same ``SpokenReply`` a chat completion and a realtime response use.
Runs alternate between the two ways, so both see the same load.

    .venv/bin/python bench/first_clause.py [--repeats 5] [--words-per-second 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gateway.api.chat.voice as voice  # noqa: E402
from adapters.text.sentences import FIRST_CLAUSE_WORDS  # noqa: E402
from engines.registry import registry_from_settings  # noqa: E402
from gateway.settings import load_settings  # noqa: E402

TEXT = (
    "The quickest way to get there from the station, if you do not mind a short walk, is to "
    "follow the river north until you reach the old stone bridge. Then turn left."
)


async def first_audio_seconds(registry, words_per_second: float) -> tuple[float, str]:
    """Seconds from the reply's first word to its first encoded audio, and its first piece."""
    reply = voice.SpokenReply(registry, "tts-1", "alloy", "pcm")
    reply.start()
    started = time.perf_counter()

    async def write() -> None:
        for word in TEXT.split(" "):
            reply.feed(word + " ")
            await asyncio.sleep(1 / words_per_second)
        reply.close()

    writer = asyncio.create_task(write())
    first = None
    async for data in reply.drain():
        if first is None and data:
            first = time.perf_counter() - started
    await writer
    await reply.aclose()
    return first, reply.marks[0][1]


async def main(repeats: int, words_per_second: float) -> None:
    settings = load_settings()
    settings.engines.preload = []
    registry = registry_from_settings(settings)
    timings: dict[str, list[float]] = {"sentence": [], "clause": []}
    try:
        await first_audio_seconds(registry, words_per_second)  # load and warm the voice
        for _ in range(repeats):
            for way, words in (("sentence", None), ("clause", FIRST_CLAUSE_WORDS)):
                voice.FIRST_CLAUSE_WORDS = words  # what SpokenReply reads when it is made
                seconds, first = await first_audio_seconds(registry, words_per_second)
                timings[way].append(seconds)
                print(f"{way:8} first audio {seconds * 1000:6.0f} ms  first piece {first!r}")
    finally:
        voice.FIRST_CLAUSE_WORDS = FIRST_CLAUSE_WORDS
        await registry.close()
    for way, values in timings.items():
        print(f"{way:8} median first audio {statistics.median(values) * 1000:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--words-per-second", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(main(args.repeats, args.words_per_second))
