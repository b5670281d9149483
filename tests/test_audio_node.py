"""Speech and transcription through the official openai Node SDK (tests/node/audio.mjs).

The Node SDK builds its multipart bodies differently from the Python one (array fields,
booleans, a ``toFile`` upload), reads speech from a fetch ``Response`` body, and parses
SSE with its own reader; each journey here runs against the live gateway.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.audio_utils import duration, stream_info
from tests.conftest import NODE_DIR, PARAGRAPH
from tests.test_transcription import COFFEE_WORDS, JAPANESE_COFFEE, english_words, wer


@pytest.fixture(scope="module")
def node_audio(node_sdk, base_url, speech_wav, openai_client, tmp_path_factory) -> tuple[dict, object]:
    folder = tmp_path_factory.mktemp("node-audio")
    (folder / "paragraph.wav").write_bytes(speech_wav)
    japanese = openai_client.audio.speech.create(
        model="tts-1", voice="nova", input=JAPANESE_COFFEE, response_format="wav").content
    (folder / "japanese.wav").write_bytes(japanese)
    result = subprocess.run(
        [node_sdk, str(NODE_DIR / "audio.mjs"), base_url + "/v1", str(folder / "paragraph.wav"), str(folder), PARAGRAPH,
         str(folder / "japanese.wav")],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), folder


def test_node_streams_speech_that_is_an_mp3_of_the_text(node_audio):
    seen, folder = node_audio
    speech = seen["speech"]
    assert speech["content_type"] == "audio/mpeg"
    mp3 = (folder / "speech.mp3").read_bytes()
    assert len(mp3) == speech["bytes"] and stream_info(mp3)[0].startswith("mp3")
    assert duration(mp3) > 8  # four sentences of speech
    # It arrived in pieces, the first well before the last.
    assert speech["pieces"] > 1 and speech["first_ms"] < speech["total_ms"] / 2, speech


def test_node_reads_speech_events_with_its_sse_parser(node_audio):
    events = node_audio[0]["speech_sse"]
    assert events["content_type"].startswith("text/event-stream")
    assert events["types"][-1] == "speech.audio.done" and events["types"].count("speech.audio.done") == 1
    assert set(events["types"][:-1]) == {"speech.audio.delta"}
    assert events["pcm_bytes"] > 24_000 and events["pcm_bytes"] % 2 == 0  # over half a second of s16le
    usage = events["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_node_uploads_and_gets_every_transcription_format(node_audio):
    seen = node_audio[0]["transcription"]
    assert wer(PARAGRAPH, seen["json"]) <= 0.10, seen["json"]
    verbose = seen["verbose"]
    assert verbose["language"] == "english" and wer(PARAGRAPH, verbose["text"]) <= 0.10
    assert verbose["words"] >= 30 and verbose["segments"] >= 1 and verbose["words_in_order"]
    assert 8 < verbose["duration"] < 30
    # srt, vtt and text come back as strings, not objects.
    assert seen["srt_type"] == seen["vtt_type"] == seen["text_type"] == "string"
    assert seen["srt"].lstrip().startswith("1\n") and " --> " in seen["srt"]
    assert seen["vtt"].startswith("WEBVTT")
    assert wer(PARAGRAPH, seen["text"]) <= 0.10


def test_node_streams_a_transcription_with_logprobs(node_audio):
    seen = node_audio[0]["transcription_stream"]
    assert seen["types"][-1] == "transcript.text.done" and "transcript.text.delta" in seen["types"]
    assert seen["deltas"].strip() == seen["done"].strip()
    assert wer(PARAGRAPH, seen["done"]) <= 0.10
    assert seen["logprobs"] > 0


def test_node_gets_a_translation_of_japanese_speech_as_text(node_audio):
    """Japanese in, its English meaning out ("I drink coffee every morning")."""
    seen = node_audio[0]["translation"]
    assert seen["type"] == "string"
    assert COFFEE_WORDS <= english_words(seen["text"]) and seen["text"].isascii(), seen["text"]


def test_node_sees_mistakes_as_typed_errors_naming_the_field(node_audio):
    errors = node_audio[0]["errors"]
    for name, expected in {
        "bad_voice": ("BadRequestError", 400, "voice"),
        "bad_speed": ("BadRequestError", 400, "speed"),
        "unknown_model": ("NotFoundError", 404, "model"),
        "not_audio": ("BadRequestError", 400, "file"),
    }.items():
        error = errors[name]
        assert error["thrown"], name
        assert (error["class"], error["status"], error["param"]) == expected, (name, error)
        assert error["type"] and error["message"], (name, error)
