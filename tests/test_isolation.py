"""Requests served at the same time stay apart: each client gets the answer to its own input.

Speech engines interleave concurrent streams a sentence at a time on one worker; chat
generations take turns on the one llama.cpp context, so concurrent chats wait in its queue.
Every stream keeps its own encoder, sentence buffer and spoken reply. Each test checks
that its requests really were in the gateway together (a test that passed just as well
with the calls made in turn would prove nothing). These tests send
different inputs at once through the real engines and check that nothing of one request
shows up in another, and that nothing is lost.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from adapters.audio.encode import encode_all
from tests.audio_utils import pcm_duration
from tests.test_transcription import wer

QUESTIONS = [
    "What is the capital of France?",
    "Name a color of the sky.",
    "What do bees make?",
]
TEXTS = [  # three sentences each, so the engine's turns interleave the requests with room to
    # spare: with two short ones, a request could finish its second sentence just before the
    # last request's first sentence reached its client (seen in CI, 72 µs apart).
    "The red fox runs across the frozen river at dawn. It stops to drink. Then it trots back into the pine forest.",
    "Seven small boats are sailing toward the northern harbor. The wind is strong. Their sails fill as the sun comes up.",
    "My grandmother bakes bread every Sunday morning. We eat it warm. The whole kitchen smells of butter and honey.",
]


def _at_once(work, items: list) -> tuple[list, list[tuple[float, float]]]:
    """``work`` on every item in its own thread, all released together; returns the results
    and each call's (start, end) times."""
    barrier = threading.Barrier(len(items))

    def timed(item):
        barrier.wait()
        start = time.perf_counter()
        result = work(item)
        return result, (start, time.perf_counter())

    with ThreadPoolExecutor(len(items)) as pool:
        results, spans = zip(*pool.map(timed, items))
    return list(results), list(spans)


def assert_overlapped(spans: list[tuple[float, float]]) -> None:
    """Every span was open at one same moment: the last to start began before the first to
    end finished. Without it the test would pass just as well had the calls run in turn."""
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans


def _ask(client, question: str) -> str:
    response = client.chat.completions.create(
        model="gpt-4o-mini", temperature=0, max_tokens=30, messages=[{"role": "user", "content": question}])
    return response.choices[0].message.content


def _ask_streamed(client, question: str) -> tuple[str, bytes, str, tuple[float, float]]:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", temperature=0, max_tokens=30, stream=True,
        modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": question}])
    transcript, pcm, audio_ids, arrivals = [], bytearray(), set(), []
    for chunk in stream:
        arrivals.append(time.perf_counter())
        if not chunk.choices or not chunk.choices[0].delta.audio:
            continue
        audio = chunk.choices[0].delta.audio
        audio = audio if isinstance(audio, dict) else audio.model_dump(exclude_none=True)
        transcript.append(audio.get("transcript", ""))
        pcm += base64.b64decode(audio.get("data", ""))
        if "id" in audio:
            audio_ids.add(audio["id"])
    assert len(audio_ids) == 1
    return "".join(transcript), bytes(pcm), audio_ids.pop(), (arrivals[0], arrivals[-1])


def test_concurrent_chats_each_get_their_own_answer(openai_client):
    alone = [_ask(openai_client, q) for q in QUESTIONS]
    together, spans = _at_once(lambda q: _ask(openai_client, q), QUESTIONS)
    assert_overlapped(spans)
    assert together == alone


def test_concurrent_spoken_replies_each_say_their_own_transcript(openai_client):
    replies, spans = _at_once(lambda q: _ask_streamed(openai_client, q), QUESTIONS)
    # All three were in the gateway at once. Their chunks do not interleave: generations
    # take turns on the one llama.cpp context, and a stream's first chunk waits for its
    # turn (measured: each stream's chunks came after the previous one's, give or take a
    # few ms while its last sentence was voiced), so that is not asserted.
    assert_overlapped(spans)
    alone = [_ask(openai_client, q) for q in QUESTIONS]
    assert len({audio_id for _, _, audio_id, _ in replies}) == len(QUESTIONS)
    for (transcript, pcm, _, _), text in zip(replies, alone):
        assert transcript == text  # the words of this question's answer, none of another's
        assert pcm_duration(pcm) > 0.5


def _closest(heard: str) -> int:
    """Index of the text ``heard`` is nearest to. Piper samples noise and Whisper base
    mishears a word now and then, so the check is which text it is, not that it is exact."""
    distances = [wer(text, heard) for text in TEXTS]
    return distances.index(min(distances))


def _hear(client, wav: bytes) -> str:
    return client.audio.transcriptions.create(model="whisper-1", file=("s.wav", io.BytesIO(wav)), language="en").text


def test_concurrent_speech_each_says_its_own_text(openai_client):
    def speak(text: str) -> tuple[bytes, tuple[float, float]]:
        """The speech as WAV, and when its first and last audio arrived (raw PCM, so the
        first bytes are speech, not a header sent before any synthesis)."""
        arrivals, pcm = [], bytearray()
        with openai_client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=text, response_format="pcm"
        ) as response:
            for piece in response.iter_bytes():
                if piece:
                    arrivals.append(time.perf_counter())
                    pcm += piece
        samples = np.frombuffer(bytes(pcm), np.int16).astype(np.float32) / 32768
        return encode_all(samples, 24_000, "wav"), (arrivals[0], arrivals[-1])

    results, _ = _at_once(speak, TEXTS)
    spoken = [wav for wav, _ in results]
    # Sentences of the three requests took turns on the engine: each stream had begun
    # before any other had ended.
    assert_overlapped([span for _, span in results])
    heard = [_hear(openai_client, wav) for wav in spoken]
    assert [_closest(h) for h in heard] == list(range(len(TEXTS))), heard
    for text, words in zip(TEXTS, heard):
        assert wer(text, words) <= 0.5, (text, words)


def test_concurrent_transcriptions_each_hear_their_own_file(openai_client):
    spoken = [openai_client.audio.speech.create(model="tts-1", voice="alloy", input=t, response_format="wav").content
              for t in TEXTS]
    heard, spans = _at_once(lambda wav: _hear(openai_client, wav), spoken)
    assert_overlapped(spans)
    assert [_closest(h) for h in heard] == list(range(len(TEXTS))), heard
