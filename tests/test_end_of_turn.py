"""Turn detection on real recordings (tests/recordings), streamed as a client streams
them: ``Paused`` waits for a real pause and says where the speech ended, and
``semantic_vad`` ends a turn soon after complete words (the Smart Turn model says so)
but waits through the silence after unfinished ones.

The truth these are held to is the audio's own: where its loudness falls for good
(10 ms frames 40 dB under the loudest), or where a test cut it.
"""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import pytest
from openai import AsyncOpenAI

from adapters.audio.pcm import resample
from adapters.realtime.vad import (
    PAUSE_MS,
    RATE,
    SEMANTIC_EAGERNESS,
    WINDOW,
    Paused,
    Resumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    VadSettings,
)
from tests.recordings import NAMES, pcm24k
from tests.test_realtime import Session

CHUNK = RATE // 50  # 20 ms pieces, as a browser client sends them
NEAR = 2 * WINDOW  # how close a reported end of speech must be to the audio's
MEDIUM = SEMANTIC_EAGERNESS["medium"]
# Within this much silence a complete turn has ended by the model's word: not by the
# eagerness's 2 s, nor by a fixed silence like the 800 ms medium once had; 224 ms of pause
# and room for a model call slowed down on a busy host.
MODEL_DECIDED_MS = 750


def speech16k(name: str) -> np.ndarray:
    pcm = np.frombuffer(pcm24k(name), "<i2").astype(np.float32) / 32768.0
    return resample(pcm, 24_000, RATE)


def silence(ms: int) -> np.ndarray:
    return np.zeros(ms * RATE // 1000, dtype=np.float32)


def loud_until(audio: np.ndarray) -> int:
    """The sample where the audio's last 10 ms frame within 40 dB of its loudest ends."""
    frame = RATE // 100
    n = len(audio) // frame
    rms = np.sqrt((audio[: n * frame].reshape(n, frame) ** 2).mean(axis=1))
    loud = np.nonzero(rms > rms.max() * 10 ** (-40 / 20))[0]
    return int(loud[-1] + 1) * frame


def semantic_medium() -> VadSettings:
    return VadSettings(silence_duration_ms=MEDIUM.silence_ms, complete_at=MEDIUM.complete_at)


def stream(detector: TurnDetector, audio: np.ndarray, paced: bool) -> list[tuple]:
    """Push ``audio`` 20 ms at a time (at real time when ``paced``, as a microphone
    delivers it); each event with the samples pushed so far and the wall time."""
    heard = []
    began = time.monotonic()
    for start in range(0, len(audio), CHUNK):
        for event in detector.push(audio[start : start + CHUNK]):
            heard.append((event, detector.samples, time.monotonic()))
        if paced:
            time.sleep(max(0.0, began + (start + CHUNK) / RATE - time.monotonic()))
    return heard


def of_type(heard: list[tuple], kind: type) -> list[tuple]:
    return [h for h in heard if isinstance(h[0], kind)]


def ms(samples: int) -> float:
    return samples * 1000 / RATE


@pytest.mark.parametrize("name", NAMES)
def test_paused_comes_after_a_real_pause_and_says_where_speech_ended(name):
    speech = speech16k(name)
    audio = np.concatenate([silence(500), speech, silence(1000)])
    heard = stream(TurnDetector(VadSettings()), audio, paced=False)

    paused = of_type(heard, Paused)
    assert paused, heard
    for event, pushed, _ in paused:
        waited = ms(pushed - event.end_sample)
        assert PAUSE_MS <= waited <= PAUSE_MS + ms(2 * WINDOW + CHUNK), (event, pushed)
    end = len(silence(500)) + loud_until(speech)
    assert abs(paused[-1][0].end_sample - end) <= NEAR, (paused[-1], end)
    stopped = of_type(heard, SpeechStopped)[-1][0]
    assert abs(stopped.audio_end_ms - ms(end)) <= ms(NEAR)  # server_vad's meaning kept


def test_gaps_between_words_are_no_pause_and_a_real_one_is():
    """Silence put between two words of a sentence: 120 ms of it is still the same
    stretch of speech, 400 ms is a pause that ``Paused`` places where the words stop
    (and that ``Resumed`` closes: a second's silence ends this turn, not 400 ms)."""
    speech = speech16k("en_happy_prompt")
    cut = int(1.58 * RATE)  # between two words ("that big | project"), 63 dB down
    lead = silence(500)

    def with_gap(ms_: int) -> list[tuple]:
        audio = np.concatenate([lead, speech[:cut], silence(ms_), speech[cut:], silence(1000)])
        return stream(TurnDetector(VadSettings(silence_duration_ms=1000)), audio, paced=False)

    where = len(lead) + cut
    near_gap = [e for e, *_ in of_type(with_gap(120), Paused) if abs(e.end_sample - where) < RATE]
    assert near_gap == []
    heard = with_gap(400)
    near_gap = [e for e, *_ in of_type(heard, Paused) if abs(e.end_sample - where) < RATE]
    assert len(near_gap) == 1 and abs(near_gap[0].end_sample - where) <= NEAR, near_gap
    assert of_type(heard, Resumed), "speech after the pause resumes the turn"


def after_the_words(speech: np.ndarray) -> tuple[list[tuple], int]:
    """Stream ``speech`` to a medium semantic_vad detector: its words at once, then from
    the end of the words on, as the microphone delivers them, with silence after. What it
    heard from the end of the words, and the sample where they ended."""
    detector = TurnDetector(semantic_medium())
    words = loud_until(speech)
    stream(detector, np.concatenate([silence(500), speech[:words]]), paced=False)
    after = np.concatenate([speech[words:], silence(MEDIUM.silence_ms + 500)])
    return stream(detector, after, paced=True), len(silence(500)) + words


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_semantic_vad_ends_a_complete_turn_soon_after_the_words(name):
    heard, end = after_the_words(speech16k(name))

    paused = of_type(heard, Paused)
    stopped = of_type(heard, SpeechStopped)
    assert len(paused) == 1 and len(stopped) == 1, heard
    (stop, stopped_at, stopped_wall), (_, paused_at, paused_wall) = stopped[0], paused[0]
    assert abs(stop.audio_end_ms - ms(end)) <= ms(NEAR)
    after_speech = ms(stopped_at - end)
    assert after_speech <= MODEL_DECIDED_MS, f"{after_speech:.0f} ms: not the model's call"
    # ended as soon as the model answered: the pause, then the model's wall time
    model_wall = (stopped_wall - paused_wall) * 1000
    assert after_speech <= ms(paused_at - end) + model_wall + ms(2 * CHUNK)


# Cuts inside a sentence, at a quiet point between words, then silence. The model says
# "incomplete" (P <= 0.2 with 150-300 ms of silence after each, measured).
UNFINISHED = [
    ("en_happy_prompt", 1.58),  # "You know, I just finished that big |"
    ("zero_shot_en_prompt", 3.59),  # "... and he was particularly close |"
    ("fear_zh_female_prompt", 1.08),  # "我总觉得有人 |" (its own pause, found by Silero)
]


@pytest.mark.slow
@pytest.mark.parametrize("name, seconds", UNFINISHED)
def test_semantic_vad_waits_when_the_words_are_unfinished(name, seconds):
    heard, end = after_the_words(speech16k(name)[: int(seconds * RATE)])

    stopped = of_type(heard, SpeechStopped)
    assert len(stopped) == 1, heard
    stop, stopped_at, _ = stopped[0]
    after_speech = ms(stopped_at - end)
    # no end while a complete turn would have ended; the eagerness's silence ends it
    assert after_speech > MODEL_DECIDED_MS
    assert abs(after_speech - MEDIUM.silence_ms) <= ms(2 * WINDOW + CHUNK)
    assert abs(stop.audio_end_ms - ms(end)) <= ms(NEAR)
    assert not of_type(heard, SpeechStarted)



async def speak(conn, pcm: bytes, sent: list[float]) -> None:
    """Append ``pcm`` in 100 ms pieces at real time; ``sent[0]``: ms of the session's
    input audio appended so far."""
    began, piece = time.monotonic(), 4_800  # 100 ms of 24 kHz 16-bit PCM
    for start in range(0, len(pcm), piece):
        chunk = pcm[start : start + piece]
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        sent[0] += len(chunk) / 48
        await asyncio.sleep(max(0.0, began + (start + piece) / 48_000 - time.monotonic()))


@pytest.mark.slow
async def test_a_semantic_vad_session_waits_out_unfinished_words_and_not_finished_ones(
    server, spec
):
    """Through /v1/realtime: the eagerness a client picks reaches the detector, and the
    ``speech_stopped`` events show it."""
    unfinished = pcm24k("en_happy_prompt")[: int(1.58 * 24_000) * 2]
    finished = pcm24k("zero_shot_en_prompt")
    client = AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        session = Session(conn, spec)
        await session.until("session.created")
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad", "eagerness": "medium",
                               "create_response": False},
        }}})
        updated = await session.until("session.updated")
        detection = updated["session"]["audio"]["input"]["turn_detection"]
        assert detection["type"] == "semantic_vad" and detection["eagerness"] == "medium"

        sent = [0.0]
        for pcm, unfinished_words in [(unfinished, True), (finished, False)]:
            samples = np.frombuffer(pcm, "<i2").astype(np.float32)
            words_end = sent[0] + loud_until(resample(samples, 24_000, RATE)) * 1000 / RATE
            feeding = asyncio.create_task(speak(conn, pcm + bytes(48 * 2 * 2_500), sent))
            stopped = await session.until("input_audio_buffer.speech_stopped")
            while stopped["audio_end_ms"] < words_end - ms(NEAR):  # a pause in the words
                stopped = await session.until("input_audio_buffer.speech_stopped")
            heard_after_words = sent[0] - words_end
            await feeding
            assert abs(stopped["audio_end_ms"] - words_end) <= ms(NEAR), (stopped, words_end)
            if unfinished_words:  # the medium eagerness's 2 s, not the model's word
                assert heard_after_words >= 1500, heard_after_words
            else:
                assert heard_after_words <= MODEL_DECIDED_MS + 100, heard_after_words
