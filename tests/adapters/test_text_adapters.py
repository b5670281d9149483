"""Pure adapters: sentence splitting, script detection, voices, subtitles, multipart folding."""

from __future__ import annotations

import pytest

from adapters.subtitles import to_srt, to_vtt
from adapters.text.language import detect_language
from adapters.text.sentences import FIRST_CLAUSE_WORDS, SentenceBuffer, split_sentences
from adapters.text.tokens import count_audio_tokens, count_text_tokens
from adapters.voices import VoiceNotFound, VoiceOption, choose_voice
from engines.base import Segment
from gateway.multipart import fold_form


def test_sentences_split_on_latin_and_cjk_punctuation():
    assert split_sentences("Hello there. How are you? Fine!") == ["Hello there.", "How are you?", "Fine!"]
    assert split_sentences("こんにちは。元気ですか？はい！") == ["こんにちは。", "元気ですか？", "はい！"]
    assert split_sentences("Dr. Smith paid $3.50 today. Then left.") == ["Dr. Smith paid $3.50 today.", "Then left."]
    assert split_sentences("no punctuation at all") == ["no punctuation at all"]
    assert split_sentences("   ") == []


def test_long_sentences_are_capped_at_a_comma_or_space():
    text = "word, " * 100
    pieces = split_sentences(text, max_chars=60)
    assert all(len(p) <= 60 for p in pieces)
    assert " ".join(pieces).split() == text.split()


def streamed(deltas: list[str]) -> list[list[str]]:
    """What a spoken reply's buffer hands out after each delta, then at the end."""
    buffer = SentenceBuffer(first_clause_words=FIRST_CLAUSE_WORDS)
    return [buffer.push(delta) for delta in deltas] + [buffer.flush()]


def test_a_spoken_replys_first_piece_is_its_opening_clause_once_more_words_follow():
    assert streamed([
        "The capital of France is Paris,",  # the clause may not be over yet: "Paris,"...
        " ",
        "a city",  # ...now it is
        " known for art, food and history. It has many",
        " museums, parks, and cafes. Bye",
    ]) == [
        [], [], ["The capital of France is Paris,"],
        # The rest of that sentence, then whole sentences: commas cut only the first piece.
        ["a city known for art, food and history."],
        ["It has many museums, parks, and cafes."],
        ["Bye"],
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Yes, of course, we can do that today.",  # too few words before either comma
        "We charged the account 1,000 dollars and 3,5 euros today.",  # numbers, not clauses
        "The meeting starts at 10:30 on Monday in the big room.",
        "The gateway reads several formats e.g., wav and mp3 both.",  # an abbreviation's aside
        "Sure. Paris is the capital of France, and its largest city.",  # first piece: "Sure."
    ],
)
def test_a_first_piece_is_not_cut_at_a_comma_too_early_or_inside_a_number(text):
    first = split_sentences(text, first_clause_words=FIRST_CLAUSE_WORDS)[0]
    assert first == split_sentences(text)[0]


def test_the_clause_rule_counts_cjk_characters_as_short_words():
    # Six characters before the first comma are too few; thirteen before the second are not.
    assert split_sentences("今天天气很好，我们去公园散步吧，好不好？然后回家。",
                           first_clause_words=FIRST_CLAUSE_WORDS) == [
        "今天天气很好，我们去公园散步吧，", "好不好？", "然后回家。"
    ]
    assert split_sentences("北京是中国的首都、也是一座历史名城。",
                           first_clause_words=FIRST_CLAUSE_WORDS) == [
        "北京是中国的首都、", "也是一座历史名城。"
    ]


def test_without_the_clause_rule_text_splits_into_sentences_only():
    """The speech engines split a whole input so: a clause cut there would only add pauses."""
    text = "The capital of France is Paris, a city known for art. It is big."
    assert split_sentences(text) == [
        "The capital of France is Paris, a city known for art.", "It is big."
    ]


@pytest.mark.parametrize("text,lang", [("Hello", "en"), ("こんにちは", "ja"), ("漢字とかな", "ja"), ("今天天气很好", "zh"), ("안녕하세요", "ko"), ("123 !?", "en")])
def test_language_from_script(text, lang):
    assert detect_language(text) == lang


def test_token_counts():
    assert count_text_tokens("Hello, world!") == 4
    assert count_text_tokens("今日は") == 3
    assert count_audio_tokens(2.0) == 50


VOICES = [VoiceOption("joe", "piper", ("en",)), VoiceOption("jf_alpha", "kokoro", ("ja", "en"))]
TABLE = {"alloy": ["joe", "jf_alpha"], "nova": ["jf_alpha"], "ghost": ["missing"]}


def test_openai_names_pick_the_first_voice_speaking_the_language():
    assert choose_voice("alloy", "en", TABLE, VOICES).id == "joe"
    assert choose_voice("alloy", "ja", TABLE, VOICES).id == "jf_alpha"
    assert choose_voice("nova", "en", TABLE, VOICES).id == "jf_alpha"
    assert choose_voice("jf_alpha", "ja", TABLE, VOICES).id == "jf_alpha"


def test_unknown_or_unfit_voices_fail_with_a_param():
    with pytest.raises(VoiceNotFound) as caught:
        choose_voice("bogus", "en", TABLE, VOICES)
    assert caught.value.param == "voice" and "alloy" in caught.value.message
    with pytest.raises(VoiceNotFound) as caught:
        choose_voice("joe", "ja", TABLE, VOICES)
    assert caught.value.param == "voice"
    with pytest.raises(VoiceNotFound):
        choose_voice("ghost", "en", TABLE, VOICES)


def seg(start, end, text):
    return Segment(id=0, seek=0, start=start, end=end, text=text, tokens=[], temperature=0, avg_logprob=0, compression_ratio=0, no_speech_prob=0)


def test_srt_and_vtt_timestamps():
    segments = [seg(0, 1.5, " Hello."), seg(3661.25, 3662.0, " Later.")]
    assert to_srt(segments) == "1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n2\n01:01:01,250 --> 01:01:02,000\nLater.\n"
    assert to_vtt(segments).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello.\n")


def test_multipart_folding():
    items = [
        ("model", "whisper-1"), ("timestamp_granularities[]", "word"), ("timestamp_granularities[]", "segment"),
        ("include", "logprobs"), ("chunking_strategy[type]", "server_vad"), ("chunking_strategy[threshold]", "0.5"),
        ("stream", "true"),
    ]
    folded = fold_form(items, list_fields=("timestamp_granularities", "include"))
    assert folded == {
        "model": "whisper-1", "timestamp_granularities": ["word", "segment"], "include": ["logprobs"],
        "chunking_strategy": {"type": "server_vad", "threshold": "0.5"}, "stream": "true",
    }
    assert fold_form([("chunking_strategy", '{"type": "server_vad"}')]) == {"chunking_strategy": {"type": "server_vad"}}
    assert fold_form([("timestamp_granularities", "word,segment")], ["timestamp_granularities"]) == {"timestamp_granularities": ["word", "segment"]}


def test_chinese_written_with_ascii_punctuation_splits_at_its_stops_and_clauses():
    """Small models often write Chinese with ASCII commas and stops and no space after:
    between two CJK characters they end a clause or a sentence; "3.5" and "1,000" still
    do not."""
    text = "我知道你想多少天给我打电话,但我们还有一个问题.我们走吧。价格是3.5元,共1,000个。"
    assert split_sentences(text, 120) == [
        "我知道你想多少天给我打电话,但我们还有一个问题.", "我们走吧。", "价格是3.5元,共1,000个。"]
    assert split_sentences(text, 120, first_clause_words=5)[0] == "我知道你想多少天给我打电话,"


def test_a_long_chinese_sentence_is_capped_by_how_long_it_takes_to_say():
    """120 Latin characters are some 8 s of speech, 120 CJK characters nearly 30: a CJK
    character counts three toward the cap, so the first audio of a run-on Chinese
    sentence does not wait for half a minute of synthesis."""
    run_on = "我们今天去公园散步然后去吃饭" * 6  # 84 characters, no punctuation
    pieces = split_sentences(run_on, 120)
    assert "".join(pieces) == run_on
    assert all(len(p) <= 40 for p in pieces), [len(p) for p in pieces]
    latin = "word " * 40
    assert [len(p) for p in split_sentences(latin.strip(), 120)][0] > 100


def test_a_first_piece_is_cut_at_its_width_between_cjk_characters_or_at_a_space():
    """The first piece at most ``first_max_chars`` wide (a CJK character counting three);
    a clause within it still ends it sooner, and the rest splits as before."""
    chinese = "我总觉得有人在跟着我我能听到奇怪的脚步声。你呢？"
    assert split_sentences(chinese, 120, 5, first_max_chars=40) == [
        "我总觉得有人在跟着我我能听", "到奇怪的脚步声。", "你呢？"
    ]
    with_clause = "我总觉得有人在跟着我，我能听到奇怪的脚步声。"
    assert split_sentences(with_clause, 120, 5, first_max_chars=40) == [
        "我总觉得有人在跟着我，", "我能听到奇怪的脚步声。"
    ]
    assert split_sentences("One two three four five six seven eight nine ten.", 120, 5, 20) == [
        "One two three four", "five six seven eight nine ten."
    ]
    assert split_sentences(chinese, 120, 5) == ["我总觉得有人在跟着我我能听到奇怪的脚步声。", "你呢？"]
