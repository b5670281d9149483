"""The embedded voices give the cores back as soon as a sentence is made.

The gateway encodes each sentence the moment the engine hands it over, and a streamed
MP3 or Opus answer's first byte waits on that encode. ONNX Runtime's threads spin after a
run by default: on a 2-core host they held the cores the encoder needed, and the first
0.15 s of a sentence took 8-12 ms to encode instead of 2.5 ms (bench/speech_first_byte.py).
Spinning shows as CPU the process burns while it has nothing to do: about 25 ms of every
50 ms just after a Piper sentence with ONNX Runtime's defaults, none with its sessions
opened by engines/embedded/onnx_session.py.
"""

from __future__ import annotations

import time

import pytest

from engines.base import EngineContext, SpeechRequest
from engines.embedded.kokoro import KokoroEngine
from engines.embedded.piper import PiperEngine
from engines.workers import Worker

CASES = [
    (PiperEngine, "joe", "en", "The first sentence is short. So is the second one."),
    (KokoroEngine, "jf_alpha", "ja", "最初の文です。次の文です。"),
]


@pytest.mark.parametrize(("engine_class", "voice", "language", "text"), CASES)
def test_a_voice_leaves_the_cores_idle_between_sentences(
    tmp_path, engine_class, voice, language, text
):
    name = engine_class.__name__
    context = EngineContext(worker=Worker(name, 1, 4), cache_dir=tmp_path, registry=None)
    engine = engine_class(name, context)
    engine.load()
    try:
        sentences = engine._chunks(SpeechRequest(text=text, voice=voice, language=language))
        for _ in range(2):
            assert len(next(sentences).samples) > 0
            before = time.process_time()
            time.sleep(0.05)
            idle_cpu = time.process_time() - before
            assert idle_cpu < 0.005, f"{idle_cpu * 1000:.1f} ms of CPU in 50 ms with nothing to do"
        sentences.close()
    finally:
        engine.unload()


async def test_a_cancelled_kokoro_sentence_stops_at_once_and_the_voice_goes_on(tmp_path):
    """Kokoro voices a long sentence in one run of a few seconds. A reply cancelled in it
    (a barge-in, a client gone) stops that run within a layer instead of holding the cores
    and the voice's worker to the end: the cancel returns in a fraction of the run's time,
    and the next request is voiced as before."""
    import asyncio

    context = EngineContext(worker=Worker("kokoro", 1, 4), cache_dir=tmp_path, registry=None)
    engine = KokoroEngine("kokoro", context)
    engine.load()
    long = "我总觉得有人在跟着我，我能听到奇怪的脚步声，可是回头一看什么也没有"
    request = SpeechRequest(text=long, voice="jf_alpha", language="zh")

    async def voice() -> list:
        return [chunk async for chunk in engine.synthesize(request)]

    try:
        started = time.perf_counter()
        whole = await voice()
        run = time.perf_counter() - started
        task = asyncio.create_task(voice())
        await asyncio.sleep(0.3)
        cancelled_at = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stopped = time.perf_counter() - cancelled_at
        assert run > 1.5, f"the sentence took {run:.2f} s: too short to tell"
        assert stopped < 0.25 * run, f"cancel took {stopped:.2f} s of a {run:.2f} s run"
        again = await voice()
        assert len(again[0].samples) == len(whole[0].samples)
    finally:
        engine.unload()
