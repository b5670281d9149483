"""Requests served at the same time stay apart: each client gets the answer to its own input.

Engines interleave concurrent streams (a sentence or a token at a time on one worker), and
every stream keeps its own encoder, sentence buffer and spoken reply. These tests send
different inputs at once through the real engines and check that nothing of one request
shows up in another, and that nothing is lost.
"""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

from tests.audio_utils import pcm_duration
from tests.test_transcription import wer

QUESTIONS = [
    "What is the capital of France?",
    "Name a color of the sky.",
    "What do bees make?",
]
TEXTS = [
    "The red fox runs across the frozen river at dawn.",
    "Seven small boats are sailing toward the northern harbor.",
    "My grandmother bakes bread every Sunday morning.",
]


def _ask(client, question: str) -> str:
    response = client.chat.completions.create(
        model="gpt-4o-mini", temperature=0, max_tokens=30, messages=[{"role": "user", "content": question}])
    return response.choices[0].message.content


def _ask_streamed(client, question: str) -> tuple[str, bytes, str]:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", temperature=0, max_tokens=30, stream=True,
        modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": question}])
    transcript, pcm, audio_ids = [], bytearray(), set()
    for chunk in stream:
        if not chunk.choices or not chunk.choices[0].delta.audio:
            continue
        audio = chunk.choices[0].delta.audio
        audio = audio if isinstance(audio, dict) else audio.model_dump(exclude_none=True)
        transcript.append(audio.get("transcript", ""))
        pcm += base64.b64decode(audio.get("data", ""))
        if "id" in audio:
            audio_ids.add(audio["id"])
    assert len(audio_ids) == 1
    return "".join(transcript), bytes(pcm), audio_ids.pop()


def test_concurrent_chats_each_get_their_own_answer(openai_client):
    alone = [_ask(openai_client, q) for q in QUESTIONS]
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: _ask(openai_client, q), QUESTIONS))
    assert together == alone


def test_concurrent_spoken_replies_each_say_their_own_transcript(openai_client):
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        replies = list(pool.map(lambda q: _ask_streamed(openai_client, q), QUESTIONS))
    alone = [_ask(openai_client, q) for q in QUESTIONS]
    assert len({audio_id for _, _, audio_id in replies}) == len(QUESTIONS)
    for (transcript, pcm, _), text in zip(replies, alone):
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
    def speak(text: str) -> bytes:
        return openai_client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="wav").content

    with ThreadPoolExecutor(len(TEXTS)) as pool:
        spoken = list(pool.map(speak, TEXTS))
    heard = [_hear(openai_client, wav) for wav in spoken]
    assert [_closest(h) for h in heard] == list(range(len(TEXTS))), heard
    for text, words in zip(TEXTS, heard):
        assert wer(text, words) <= 0.5, (text, words)


def test_concurrent_transcriptions_each_hear_their_own_file(openai_client):
    spoken = [openai_client.audio.speech.create(model="tts-1", voice="alloy", input=t, response_format="wav").content
              for t in TEXTS]
    with ThreadPoolExecutor(len(spoken)) as pool:
        heard = list(pool.map(lambda wav: _hear(openai_client, wav), spoken))
    assert [_closest(h) for h in heard] == list(range(len(TEXTS))), heard
