"""OpenAI speech options as Step-Audio-TTS-3B tags (adapters.step_audio.speech_controls).

Golden facts from shared/reference/step-audio-pipeline.md, §6.3 "Instruction / tag format:
every form the code supports", §6.7 "speakers/ folder", §13 "Known bugs and quirks" 3-5
and "What a gateway must implement" item 8 "TTS mapping".
"""

from __future__ import annotations

import math

import pytest

from adapters.step_audio.speech_controls import (
    DEFAULT_SPEAKERS,
    EMOTION_TAGS,
    LANGUAGE_TAGS,
    MUSIC_TAGS,
    SPEED_TAGS,
    SpeechControls,
    instruction_tags,
    resolve_speaker,
    selectable_voices,
    speech_controls,
    speed_tag,
    split_leading_tags,
)
from adapters.voices import VoiceNotFound


def controls(text="你好", **kwargs):
    kwargs.setdefault("voice", "Tingting")
    return speech_controls(text, **kwargs)


def test_tag_lists_are_the_reference_lists():
    # §6.3 "Emotion: 高兴1, 高兴2, 生气1, 生气2, 悲伤1, 撒娇1"; "Language/dialect: 中文, 英文,
    # 韩语, 日语, 四川话, 粤语, 广东话"; "Music: RAP, 哼唱"; "Speed: 慢速1, 慢速2, 快速1, 快速2".
    assert EMOTION_TAGS == ("高兴1", "高兴2", "生气1", "生气2", "悲伤1", "撒娇1")
    assert LANGUAGE_TAGS == ("中文", "英文", "韩语", "日语", "四川话", "粤语", "广东话")
    assert MUSIC_TAGS == ("RAP", "哼唱")
    assert SPEED_TAGS == ("慢速1", "慢速2", "快速1", "快速2")


def test_tts_app_example():
    # §6.3 "tts_app.py builds the text as (emotion)(language)(speed) + text, e.g.
    # (高兴1)(粤语)(慢速1)你好".
    result = controls("你好", instructions="Speak happily in Cantonese.", speed=0.8)
    assert result == SpeechControls(
        "Tingting", ("高兴1", "粤语", "慢速1"), "(高兴1)(粤语)(慢速1)你好"
    )
    assert result.music is None and result.prompt_speaker == "Tingting"


@pytest.mark.parametrize(
    "instructions, tags",
    [
        # item 8 "happy/cheerful -> (高兴1); very happy/excited -> (高兴2)"
        ("speak happily", ("高兴1",)),
        ("a cheerful voice", ("高兴1",)),
        ("very happy", ("高兴2",)),
        ("sound excited!", ("高兴2",)),
        # "angry -> (生气1)/(生气2)"
        ("angry", ("生气1",)),
        ("absolutely furious", ("生气2",)),
        ("really angry", ("生气2",)),
        # "sad -> (悲伤1)"; "unhappy" is sad, not happy
        ("sadly", ("悲伤1",)),
        ("unhappy", ("悲伤1",)),
        # "cute/coquettish -> (撒娇1)"
        ("cute", ("撒娇1",)),
        ("coquettishly", ("撒娇1",)),
        # "Sichuanese -> (四川话); Cantonese -> (粤语); English -> (英文); Japanese -> (日语);
        # Korean -> (韩语); Mandarin -> (中文)"
        ("in Sichuanese", ("四川话",)),
        ("in Cantonese", ("粤语",)),
        ("in English", ("英文",)),
        ("in Japanese", ("日语",)),
        ("in Korean", ("韩语",)),
        ("in Mandarin", ("中文",)),
        # "rap -> (RAP); humming/singing -> (哼唱)"
        ("rap it", ("RAP",)),
        ("hum the words", ("哼唱",)),
        ("sing it", ("哼唱",)),
        # Chinese instructions, and tag names themselves
        ("用四川话开心地说", ("高兴1", "四川话")),
        ("撒娇", ("撒娇1",)),
        ("广东话", ("广东话",)),
        ("说唱", ("RAP",)),
        ("高兴2 粤语", ("高兴2", "粤语")),
        ("快乐地说", ("高兴1",)),  # 快乐 (happy) is not 快 (fast)
        # speed words when no speed is given
        ("slowly", ("慢速1",)),
        ("very slowly", ("慢速2",)),
        ("quickly", ("快速1",)),
        ("extremely fast", ("快速2",)),
        ("rapidly", ("快速1",)),  # not "rap"
    ],
)
def test_instruction_keywords(instructions, tags):
    assert controls(instructions=instructions).tags == tags


@pytest.mark.parametrize(
    "instructions",
    [None, "", "whisper", "sound serious and professional", "like a pirate", "breathy, child-like"],
)
def test_unknown_instructions_are_ignored(instructions):
    # Styles TTS-3B has no tag for (§6.3 lists none; whisper/serious are EditX edits, §12).
    result = controls("你好", instructions=instructions)
    assert result.tags == () and result.text == "你好"


def test_negation_is_not_understood():
    # Documented limitation: keywords are matched, not meanings.
    assert controls(instructions="don't sound sad").tags == ("悲伤1",)


def test_one_tag_per_category_earliest_mention_wins():
    assert instruction_tags("sad at first, then happy") == {"emotion": "悲伤1"}
    assert instruction_tags("happy, in Cantonese, slowly") == {
        "emotion": "高兴1",
        "language": "粤语",
        "speed": "慢速1",
    }


def test_music_tag_is_single_and_first():
    # item 8 "exactly one music tag and it must come first"; §13.5 "Only the first leading
    # bracket is checked for RAP / 哼唱. (高兴1)(RAP)… will not switch to the music vocoder."
    result = controls("我踏上自由的征途", instructions="rap it happily, then hum")
    assert result.tags == ("RAP", "高兴1")
    assert result.text == "(RAP)(高兴1)我踏上自由的征途"
    assert result.music == "RAP" and result.prompt_speaker == "TingtingRAP"


def test_humming_is_written_exactly():
    # §13.4 "(Humming (哼唱)) from tts_app is not recognised as humming"; §6.3 "Always emit
    # exactly (哼唱)".
    result = controls("啦啦啦", instructions="Humming")
    assert result.text == "(哼唱)啦啦啦"
    assert result.prompt_speaker == "Tingting哼唱"


def test_music_needs_the_speakers_music_prompt():
    # §13.3 "RAP or humming for a speaker without {id}RAP / {id}哼唱 entries -> KeyError";
    # item 8 "require {voice}RAP / {voice}哼唱 entries before allowing music styles".
    speakers = ("Tingting", "TingtingRAP", "Tingting哼唱", "Yuqian")
    with pytest.raises(VoiceNotFound) as caught:
        controls(voice="Yuqian", instructions="rap", speakers=speakers)
    assert caught.value.param == "instructions"
    assert "'YuqianRAP'" in caught.value.message
    with pytest.raises(VoiceNotFound, match="hum"):
        controls(voice="Yuqian", instructions="hum", speakers=speakers)
    assert controls(voice="Yuqian", instructions="happy", speakers=speakers).tags == ("高兴1",)


def test_voices():
    # §6.7 "Only one voice is usable (Tingting); the other two are its music variants";
    # item 8 "voice -> a registered speaker id ... Reject unknown voices with 400".
    assert DEFAULT_SPEAKERS == ("Tingting", "TingtingRAP", "Tingting哼唱")
    assert selectable_voices(DEFAULT_SPEAKERS) == ["Tingting"]
    assert resolve_speaker("Tingting", DEFAULT_SPEAKERS) == "Tingting"
    assert resolve_speaker("tingting", DEFAULT_SPEAKERS) == "Tingting"
    assert resolve_speaker("alloy", DEFAULT_SPEAKERS, {"alloy": "Tingting"}) == "Tingting"
    for unknown in ("nova", "TingtingRAP", "Tingting哼唱"):
        with pytest.raises(VoiceNotFound) as caught:
            resolve_speaker(unknown, DEFAULT_SPEAKERS)
        assert caught.value.param == "voice"
        assert "Available voices: Tingting." in caught.value.message
    with pytest.raises(VoiceNotFound, match="Available voices: Tingting, alloy"):
        controls(voice="nova", aliases={"alloy": "Tingting"})


@pytest.mark.parametrize(
    "speed, tag",
    [
        (0.25, "慢速2"),
        (0.6, "慢速2"),
        (0.61, "慢速1"),
        (0.85, "慢速1"),
        (0.86, None),
        (1.0, None),
        (1.17, None),
        (1.18, "快速1"),
        (1.66, "快速1"),
        (1.67, "快速2"),
        (4.0, "快速2"),
    ],
)
def test_speed_buckets(speed, tag):
    # item 8 "speed (OpenAI 0.25-4.0) -> bucket into (慢速2), (慢速1), none, (快速1), (快速2)
    # (thresholds are a gateway choice; upstream defines none)".
    assert speed_tag(speed) == tag
    result = controls(speed=speed)
    assert result.tags == ((tag,) if tag else ())
    assert result.tempo == 1.0


@pytest.mark.parametrize("speed", [0.2, 4.5, math.nan, math.inf, "fast"])
def test_speed_outside_the_openai_range_is_refused(speed):
    with pytest.raises(ValueError, match="speed"):
        controls(speed=speed)


def test_tempo_mode_returns_the_exact_ratio():
    # item 8 "Use sox-tempo post-processing (speech_adjust) for an exact ratio."
    result = controls(instructions="happy", speed=1.5, speed_mode="tempo")
    assert result.tags == ("高兴1",) and result.tempo == 1.5
    with pytest.raises(ValueError, match="speed_mode"):
        controls(speed_mode="both")


def test_explicit_speed_beats_speed_words():
    assert controls(instructions="slowly", speed=2.0).tags == ("快速2",)
    assert controls(instructions="slowly", speed=1.05).tags == ()
    assert controls(instructions="slowly", speed=1.0).tags == ("慢速1",)


def test_tags_already_in_the_text():
    # §6.3 tts_inference.py: "（RAP）我踏上自由的征途…" (full-width brackets); §2.5 the chat
    # model may write "(四川话)" itself, and those reach TTS.
    assert split_leading_tags("（RAP）我踏上自由的征途") == (["RAP"], "我踏上自由的征途")
    assert controls("（RAP）我踏上自由的征途").text == "(RAP)我踏上自由的征途"
    # text tags win over instructions for their category; others are added around them
    result = controls("(四川话)(高兴1)你好", instructions="sad, in English, slowly")
    assert result.text == "(高兴1)(四川话)(慢速1)你好"
    # a music tag in second place is moved first (§13.5)
    assert controls("(高兴1)(RAP)你好").text == "(RAP)(高兴1)你好"
    # custom tags are allowed (§6.3 allow_custom_value) and follow the known ones
    assert controls("(温柔)你好", instructions="happy").text == "(高兴1)(温柔)你好"
    # brackets later in the text are content
    assert controls("你好(笑)", instructions="happy").text == "(高兴1)你好(笑)"


def test_segments_repeat_the_tags():
    # item 11 "split the text into sentences and synthesise each one separately, repeating
    # the leading tags on every segment".
    result = controls("第一句。第二句。", instructions="rap in Cantonese")
    assert result.prefix == "(RAP)(粤语)"
    assert result.for_segment("第二句。") == "(RAP)(粤语)第二句。"
