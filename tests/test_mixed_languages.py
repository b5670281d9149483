"""Speech input that mixes Chinese, Japanese and English, through /v1/audio/speech.

Kokoro's Japanese reader (OpenJTalk) looks up kanji its own dictionary lacks in SudachiPy's
dictionary; without that package installed, "这是テストです。" answered 500, and the same
sentence later in a streamed input cut the audio after the first sentence. Each sentence
is also read in its own language, so a Chinese or English sentence next to a Japanese one
is spoken, not dropped by the Japanese reader.
"""

from __future__ import annotations

import numpy as np
import pytest

SAMPLE_RATE = 24_000

# (input, fewest seconds of speech it plausibly takes): about 0.1 s per kana or Han
# character and 0.05 s per Latin letter, halved, so the bounds hold for any voice.
MIXED = [
    ("这是テストです。", 0.5),
    ("你好。これはテストです。Hello there.", 1.5),
    ("今日は良い天気ですね。The weather is nice today. 今天天气很好。", 2.5),
    ("中文汉字很难读吗？テストです。", 1.2),
    ("東京タワーへ行きましょう。我们一起去吧！Let's go together.", 2.5),
]


def _pcm(http, text: str, voice: str = "alloy") -> np.ndarray:
    response = http.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": voice, "input": text, "response_format": "pcm"},
    )
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, dtype="<i2").astype(np.float32) / 32768


@pytest.mark.parametrize("text,fewest_seconds", MIXED)
def test_mixed_chinese_japanese_english_input_is_spoken_whole(http, text, fewest_seconds):
    audio = _pcm(http, text)
    seconds = len(audio) / SAMPLE_RATE
    assert fewest_seconds <= seconds <= 12 * fewest_seconds + 3, seconds
    assert np.sqrt(np.mean(audio**2)) > 0.01  # speech, not a pause


def test_a_chinese_sentence_in_japanese_text_is_read_not_dropped(http):
    """The Chinese sentence gets its own reading: it adds speech, not just a pause."""
    japanese = _pcm(http, "これはテストです。")
    both = _pcm(http, "中文汉字很难读吗？これはテストです。")
    assert len(both) - len(japanese) > 1.0 * SAMPLE_RATE


def test_a_failing_dictionary_sentence_later_in_a_stream_plays_to_the_end(http):
    """The sentence that used to fail comes after a good one: the streamed file is whole."""
    with http.stream(
        "POST",
        "/v1/audio/speech",
        json={
            "model": "tts-1",
            "voice": "alloy",
            "input": "こんにちは。这是テストです。さようなら。",
            "response_format": "pcm",
        },
    ) as response:
        assert response.status_code == 200
        data = b"".join(response.iter_bytes())
    assert len(data) / 2 / SAMPLE_RATE > 2.0


def test_characters_no_reader_knows_leave_the_rest_spoken(http):
    """Emoji, symbols and Hangul inside Japanese text are left out; the words are spoken."""
    audio = _pcm(http, "😀テスト☃です。한국어。Ω≠∑。")
    assert len(audio) / SAMPLE_RATE > 0.4
    assert np.sqrt(np.mean(audio**2)) > 0.01
