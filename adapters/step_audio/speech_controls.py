"""OpenAI speech options (``voice``, ``instructions``, ``speed``) as Step-Audio-TTS-3B input.

TTS-3B is steered by parenthesised tags in front of the text, e.g. ``(高兴1)(粤语)(慢速1)你好``
(the order upstream's ``tts_app.py`` writes). Its system prompt names these tags,
"including but not limited to":

* emotion: 高兴1, 高兴2 (happy, very happy), 生气1, 生气2 (angry), 悲伤1 (sad), 撒娇1 (cute);
* language/dialect: 中文, 英文, 韩语, 日语, 四川话, 粤语, 广东话;
* music: RAP, 哼唱 (humming/singing);
* speed: 慢速1, 慢速2, 快速1, 快速2.

The code itself acts on one tag only: a *leading* ``(RAP)`` or ``(哼唱)`` switches to the
music vocoder and to the speaker's ``{speaker}RAP`` / ``{speaker}哼唱`` prompt. Hence:

* the music tag, if any, is always first (``(高兴1)(RAP)`` would not be detected, bug 5),
  there is at most one, and it is written exactly ``(RAP)`` / ``(哼唱)`` (bug 4);
* a music style needs the speaker's music prompt, else upstream raises ``KeyError``
  (bug 3); here it is refused up front with :class:`~adapters.voices.VoiceNotFound`.

``instructions`` is free text. English and Chinese keywords are matched per category
(emotion, language, music, speed), the earliest mention winning and a longer phrase
("very happy") beating a shorter one at the same place. Everything else is **ignored**:
styles TTS-3B has no tag for ("whisper", "serious"; those are Step-Audio-EditX edits) and
negations ("not sad" reads as sad) alike. An unknown instruction must not fail a request
that OpenAI would accept, and a guessed tag would change the voice unpredictably.

``speed`` becomes a speed tag by default: upstream gives the tags no numbers, so the
buckets are a gateway choice, mirror images on a log scale (0.6 and 0.85 against 1/0.85
and 1/0.6). ``speed_mode="tempo"`` writes no tag and returns the exact ratio for
tempo post-processing instead (upstream's sox ``tempo``). A speed of 1.0 leaves speed to
the instructions ("slowly").

Tags already leading the input text (the chat model may write ``(四川话)`` itself) are
kept and win over the instructions for their category; the text's custom tags follow the
known ones. Tags are written with half-width brackets; full-width ones are read too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Collection, Mapping

from adapters.voices import VoiceNotFound

EMOTION_TAGS = ("高兴1", "高兴2", "生气1", "生气2", "悲伤1", "撒娇1")
LANGUAGE_TAGS = ("中文", "英文", "韩语", "日语", "四川话", "粤语", "广东话")
MUSIC_TAGS = ("RAP", "哼唱")
SPEED_TAGS = ("慢速1", "慢速2", "快速1", "快速2")

#: Prefix order: music first (the only place upstream detects it), then tts_app.py's
#: emotion, language, speed.
CATEGORIES = ("music", "emotion", "language", "speed")
_CATEGORY_OF = {
    **{tag: "music" for tag in MUSIC_TAGS},
    **{tag: "emotion" for tag in EMOTION_TAGS},
    **{tag: "language" for tag in LANGUAGE_TAGS},
    **{tag: "speed" for tag in SPEED_TAGS},
}

#: The speakers shipped upstream: one voice and its two music prompts (upstream's ``speakers/``).
DEFAULT_SPEAKERS = ("Tingting", "TingtingRAP", "Tingting哼唱")

MIN_SPEED, MAX_SPEED = 0.25, 4.0


def _words(pattern: str) -> str:
    return rf"\b(?:{pattern})\b"


# (pattern, tag) per category. English patterns are case-insensitive whole words; Chinese
# ones match anywhere (CJK has no word boundaries). Tag names themselves match too.
_INSTRUCTION_PATTERNS: dict[str, list[tuple[str, str]]] = {
    "music": [
        (_words(r"rap|raps|rapping|rapped|rapper"), "RAP"),
        (r"说唱|饶舌", "RAP"),
        (_words(r"hum|hums|humming|hummed|sing|sings|singing|sung"), "哼唱"),
        (r"哼唱|唱歌|唱", "哼唱"),
    ],
    "emotion": [
        (
            _words(
                r"(?:very|really|extremely|so|super)\s+(?:happy|happily|cheerful|cheerfully"
                r"|joyful|joyfully|glad)"
            ),
            "高兴2",
        ),
        (
            _words(
                r"excited|excitedly|ecstatic|ecstatically|thrilled|elated|overjoyed"
                r"|exuberant|exuberantly"
            ),
            "高兴2",
        ),
        (r"高兴2|非常高兴|特别高兴|兴奋|激动", "高兴2"),
        (
            _words(
                r"happy|happily|cheerful|cheerfully|joyful|joyfully|glad|gladly|delighted"
                r"|upbeat"
            ),
            "高兴1",
        ),
        (r"高兴1|高兴|开心|快乐|愉快", "高兴1"),
        (_words(r"(?:very|really|extremely|so|super)\s+(?:angry|angrily|mad)"), "生气2"),
        (_words(r"furious|furiously|enraged|livid|outraged|raging"), "生气2"),
        (r"生气2|非常生气|特别生气|愤怒|暴怒", "生气2"),
        (_words(r"angry|angrily|mad|annoyed|irritated|irritably"), "生气1"),
        (r"生气1|生气", "生气1"),
        (
            _words(
                r"sad|sadly|unhappy|unhappily|sorrowful|sorrowfully|melancholy|gloomy"
                r"|gloomily|mournful|mournfully|tearful|tearfully|depressed"
            ),
            "悲伤1",
        ),
        (r"悲伤1|悲伤|难过|伤心", "悲伤1"),
        (_words(r"cute|cutely|cutesy|coquettish|coquettishly|adorable|adorably"), "撒娇1"),
        (r"撒娇1|撒娇|可爱", "撒娇1"),
    ],
    "language": [
        (_words(r"sichuan|sichuanese|szechuan|szechuanese"), "四川话"),
        (r"四川话|四川", "四川话"),
        (_words(r"cantonese"), "粤语"),
        (r"粤语", "粤语"),
        (r"广东话", "广东话"),
        (_words(r"english"), "英文"),
        (r"英文|英语", "英文"),
        (_words(r"japanese"), "日语"),
        (r"日语|日文", "日语"),
        (_words(r"korean"), "韩语"),
        (r"韩语|韩文", "韩语"),
        (_words(r"mandarin|chinese|putonghua"), "中文"),
        (r"中文|普通话|汉语", "中文"),
    ],
    "speed": [
        (_words(r"(?:very|really|extremely|super)\s+(?:slow|slowly)"), "慢速2"),
        (r"慢速2|非常慢|特别慢|很慢", "慢速2"),
        (_words(r"slow|slowly|slower|unhurried|leisurely"), "慢速1"),
        (r"慢速1|慢速|慢点|慢一点|慢慢", "慢速1"),
        (
            _words(r"(?:very|really|extremely|super)\s+(?:fast|quick|quickly|rapid|rapidly)"),
            "快速2",
        ),
        (r"快速2|非常快|特别快|很快", "快速2"),
        (_words(r"fast|faster|quick|quickly|rapid|rapidly|briskly|hurried|hurriedly"), "快速1"),
        (r"快速1|快速|快点|快一点", "快速1"),
    ],
}
_COMPILED = {
    category: [(re.compile(pattern, re.IGNORECASE), tag) for pattern, tag in patterns]
    for category, patterns in _INSTRUCTION_PATTERNS.items()
}

_LEADING_TAG = re.compile(r"[（(]([^()（）]*)[）)]")


@dataclass(frozen=True)
class SpeechControls:
    """What to hand TTS-3B for one request.

    ``speaker`` is the registered voice (``prompt_speaker``); ``tags`` the prefix tags in
    order, without brackets; ``text`` the tags then the input, ready to synthesise;
    ``tempo`` the speed ratio still to apply to the audio (1.0: none).
    """

    speaker: str
    tags: tuple[str, ...]
    text: str
    tempo: float = 1.0

    @property
    def music(self) -> str | None:
        """``"RAP"`` or ``"哼唱"`` when the music vocoder is used, else None."""
        return self.tags[0] if self.tags and self.tags[0] in MUSIC_TAGS else None

    @property
    def prompt_speaker(self) -> str:
        """The ``speakers_info.json`` entry upstream uses: ``TingtingRAP`` for a rap."""
        return self.speaker + (self.music or "")

    @property
    def prefix(self) -> str:
        """The tags as text, to repeat in front of every segment when speaking in parts."""
        return format_tags(self.tags)

    def for_segment(self, segment: str) -> str:
        """``segment`` (a sentence of the input) with this request's tags in front."""
        return self.prefix + segment


def format_tags(tags: Collection[str]) -> str:
    """``("高兴1", "粤语")`` -> ``"(高兴1)(粤语)"``."""
    return "".join(f"({tag})" for tag in tags)


def split_leading_tags(text: str) -> tuple[list[str], str]:
    """The parenthesised tags at the very start of ``text``, and the text after them."""
    tags, position = [], 0
    while match := _LEADING_TAG.match(text, position):
        tags.append(match.group(1).strip())
        position = match.end()
    return tags, text[position:]


def instruction_tags(instructions: str | None) -> dict[str, str]:
    """The tag each category gets from free-text ``instructions`` (absent: not mentioned)."""
    found: dict[str, str] = {}
    for category, patterns in _COMPILED.items():
        best: tuple[int, int, str] | None = None  # (start, -length, tag)
        for pattern, tag in patterns:
            match = pattern.search(instructions or "")
            if match:
                candidate = (match.start(), -(match.end() - match.start()), tag)
                best = candidate if best is None else min(best, candidate)
        if best is not None:
            found[category] = best[2]
    return found


def speed_tag(speed: float) -> str | None:
    """The speed tag for an OpenAI ``speed``; None in the neutral band around 1.0."""
    _check_speed(speed)
    if speed <= 0.6:
        return "慢速2"
    if speed <= 0.85:
        return "慢速1"
    if speed >= 1 / 0.6:
        return "快速2"
    if speed >= 1 / 0.85:
        return "快速1"
    return None


def selectable_voices(speakers: Collection[str]) -> list[str]:
    """Registered speakers that are voices, not another speaker's music prompt."""
    ids = set(speakers)
    return sorted(
        speaker
        for speaker in ids
        if not any(speaker == base + music for music in MUSIC_TAGS for base in ids)
    )


def resolve_speaker(
    voice: str, speakers: Collection[str], aliases: Mapping[str, str] | None = None
) -> str:
    """The speaker id for ``voice``: an alias (e.g. ``alloy``), the id itself, or the id
    in other letter case. Raises :class:`VoiceNotFound` (param ``voice``) otherwise."""
    voices = selectable_voices(speakers)
    wanted = (aliases or {}).get(voice, voice)
    if wanted in voices:
        return wanted
    folded = [speaker for speaker in voices if speaker.casefold() == wanted.casefold()]
    if len(folded) == 1:
        return folded[0]
    known = sorted({*voices, *(aliases or {})})
    raise VoiceNotFound(f"Voice '{voice}' is not available. Available voices: {', '.join(known)}.")


def speech_controls(
    text: str,
    *,
    voice: str,
    instructions: str | None = None,
    speed: float = 1.0,
    speakers: Collection[str] = DEFAULT_SPEAKERS,
    aliases: Mapping[str, str] | None = None,
    speed_mode: str = "tag",
) -> SpeechControls:
    """The TTS-3B speaker, tags and text for one OpenAI speech request.

    ``speakers``: the registered speaker ids (``speakers_info.json`` keys); ``aliases``:
    OpenAI voice names onto them. ``speed_mode``: ``"tag"`` or ``"tempo"`` (see module
    doc). Raises :class:`VoiceNotFound` for an unknown voice or a music style the voice
    has no prompt for, ValueError for a speed outside 0.25-4.0.
    """
    if speed_mode not in ("tag", "tempo"):
        raise ValueError(f"speed_mode must be 'tag' or 'tempo', got {speed_mode!r}")
    _check_speed(speed)
    speaker = resolve_speaker(voice, speakers, aliases)

    chosen = instruction_tags(instructions)
    tempo = 1.0
    if speed != 1.0:
        chosen.pop("speed", None)  # an explicit speed beats "slowly" in the instructions
        if speed_mode == "tempo":
            tempo = speed
        elif tag := speed_tag(speed):
            chosen["speed"] = tag

    written, body = split_leading_tags(text)
    from_text: dict[str, str] = {}
    custom: list[str] = []
    for tag in written:
        category = _CATEGORY_OF.get(tag)
        if category is None:
            custom.append(tag)
        else:
            from_text.setdefault(category, tag)  # one tag per category: the first
    chosen.update(from_text)

    music = chosen.get("music")
    if music is not None and speaker + music not in speakers:
        style = "rap" if music == "RAP" else "hum"
        raise VoiceNotFound(
            f"Voice '{voice}' cannot {style}: there is no '{speaker}{music}' speaker prompt.",
            param="instructions",
        )

    tags = tuple(chosen[category] for category in CATEGORIES if category in chosen) + tuple(custom)
    return SpeechControls(speaker, tags, format_tags(tags) + body, tempo)


def _check_speed(speed: float) -> None:
    if not (isinstance(speed, (int, float)) and math.isfinite(speed)):
        raise ValueError(f"speed must be a number, got {speed!r}")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
