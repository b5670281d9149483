"""The Step-Audio tokenizer's two code streams as ``<audio_N>`` prompt text, and back.

Step-Audio-Chat hears audio as text: the tokenizer's codes are written into the prompt as
``<audio_N>`` strings (upstream ``tokenizer.py``, ``merge_vq0206_to_token_str``):

* two codebooks: *linguistic* "vq02" codes (1024 entries, 16.7 Hz) and *semantic* "vq06"
  codes (4096 entries, 25 Hz). The README swaps the names (it calls vq02 "semantic"); the
  numbers agree, and this module uses the architecture figure's names, as README_CN does;
* they are interleaved in groups of **2 linguistic then 3 semantic** codes. 2 x 60 ms =
  3 x 40 ms = 120 ms, so one group is 120 ms of audio and 41.67 tokens make a second;
* linguistic codes are written as they are (N in 0-1023), semantic codes shifted by 1024
  (N in 1024-5119), each as ``<audio_N>`` with no separator;
* **only whole groups are kept**: upstream's loop stops as soon as fewer than 2 linguistic
  or 3 semantic codes remain, so a ragged tail of either stream is dropped silently;
* in the LLM vocabulary ``<audio_N>`` is token id 65536 + N (70655 at most, inside 74752).

The inverse (:func:`parse_audio_tokens`, :func:`split_audio_tokens`) is strict: it accepts
only the text :func:`audio_token_string` could have written, so a malformed string is
reported with the position of the first bad token instead of being fed to the model.
"""

from __future__ import annotations

import operator
import re
from typing import Iterable, Sequence

LINGUISTIC_CODEBOOK_SIZE = 1024  # vq02
SEMANTIC_CODEBOOK_SIZE = 4096  # vq06
SEMANTIC_OFFSET = LINGUISTIC_CODEBOOK_SIZE  # vq06 code c is written <audio_{1024 + c}>
AUDIO_TOKEN_COUNT = LINGUISTIC_CODEBOOK_SIZE + SEMANTIC_CODEBOOK_SIZE  # N in 0..5119
AUDIO_TOKEN_ID_OFFSET = 65536  # LLM token id of <audio_N> is 65536 + N

LINGUISTIC_PER_GROUP = 2
SEMANTIC_PER_GROUP = 3
GROUP_SIZE = LINGUISTIC_PER_GROUP + SEMANTIC_PER_GROUP
LINGUISTIC_RATE_HZ = 50 / 3  # 16.7 Hz: one code per 60 ms
SEMANTIC_RATE_HZ = 25.0  # one code per 40 ms
GROUP_SECONDS = 0.12
TOKENS_PER_SECOND = GROUP_SIZE / GROUP_SECONDS  # 41.67, the README's "41.6Hz"

# Canonical form only: no sign, no leading zeros (the vocabulary has <audio_1>, not
# <audio_01>).
_TOKEN = re.compile(r"<audio_(0|[1-9][0-9]*)>")


# --------------------------------------------------------------------------- validation


def validate_codes(linguistic: Sequence[int], semantic: Sequence[int]) -> None:
    """Raise ValueError unless every code is an int inside its codebook.

    ``linguistic`` holds raw vq02 codes (0-1023), ``semantic`` raw vq06 codes (0-4095),
    both as the tokenizer produced them, before any offset.
    """
    _check_stream("linguistic (vq02)", linguistic, LINGUISTIC_CODEBOOK_SIZE)
    _check_stream("semantic (vq06)", semantic, SEMANTIC_CODEBOOK_SIZE)


def _check_stream(name: str, codes: Sequence[int], size: int) -> None:
    for index, code in enumerate(codes):
        try:
            # operator.index accepts ints and numpy integers, and refuses floats and str.
            value = operator.index(code)
        except TypeError:
            value = None
        if value is None or isinstance(code, bool):
            raise ValueError(f"{name} code at index {index} is not an integer: {code!r}")
        if not 0 <= value < size:
            raise ValueError(
                f"{name} code {value} at index {index} is outside its codebook (0-{size - 1})"
            )


# --------------------------------------------------------------------------- codes -> text


def whole_groups(linguistic_count: int, semantic_count: int) -> int:
    """How many 2+3 groups upstream's merge keeps from streams of these lengths."""
    return min(linguistic_count // LINGUISTIC_PER_GROUP, semantic_count // SEMANTIC_PER_GROUP)


def interleave(linguistic: Sequence[int], semantic: Sequence[int]) -> list[int]:
    """The token numbers N, in prompt order: 2 linguistic, then 3 semantic (+1024), ...

    Codes are validated first. A ragged tail (codes past the last whole group in either
    stream) is dropped, exactly as ``merge_vq0206_to_token_str`` does.
    """
    validate_codes(linguistic, semantic)
    values: list[int] = []
    for group in range(whole_groups(len(linguistic), len(semantic))):
        i, j = group * LINGUISTIC_PER_GROUP, group * SEMANTIC_PER_GROUP
        values.extend(operator.index(c) for c in linguistic[i : i + LINGUISTIC_PER_GROUP])
        values.extend(
            SEMANTIC_OFFSET + operator.index(c) for c in semantic[j : j + SEMANTIC_PER_GROUP]
        )
    return values


def format_audio_tokens(values: Iterable[int]) -> str:
    """``<audio_N>`` for each token number, with no separator."""
    return "".join(f"<audio_{value}>" for value in values)


def audio_token_string(linguistic: Sequence[int], semantic: Sequence[int]) -> str:
    """The prompt text for one utterance: what ``StepAudioTokenizer.__call__`` returns."""
    return format_audio_tokens(interleave(linguistic, semantic))


def to_token_ids(values: Iterable[int]) -> list[int]:
    """LLM token ids (65536 + N), for sending ``prompt_token_ids`` instead of text."""
    ids = []
    for index, value in enumerate(values):
        if not 0 <= value < AUDIO_TOKEN_COUNT:
            raise ValueError(
                f"audio token number {value} at index {index} is outside 0-{AUDIO_TOKEN_COUNT - 1}"
            )
        ids.append(AUDIO_TOKEN_ID_OFFSET + value)
    return ids


def from_token_ids(ids: Iterable[int]) -> list[int]:
    """Token numbers N from LLM ids (id - 65536); ValueError for a non-audio id."""
    values = []
    last = AUDIO_TOKEN_ID_OFFSET + AUDIO_TOKEN_COUNT - 1
    for index, token_id in enumerate(ids):
        if not AUDIO_TOKEN_ID_OFFSET <= token_id <= last:
            raise ValueError(
                f"token id {token_id} at index {index} is not an audio token "
                f"({AUDIO_TOKEN_ID_OFFSET}-{last})"
            )
        values.append(token_id - AUDIO_TOKEN_ID_OFFSET)
    return values


# --------------------------------------------------------------------------- text -> codes


def parse_audio_tokens(text: str) -> list[int]:
    """The token numbers N of a string made only of ``<audio_N>`` tokens.

    Raises ValueError naming the character offset of the first thing that is not a
    canonical ``<audio_N>`` token with N in 0-5119 (separators, other text, ``<audio_01>``).
    """
    values: list[int] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            snippet = text[position : position + 16]
            raise ValueError(f"not an <audio_N> token at character {position}: {snippet!r}")
        value = int(match.group(1))
        if value >= AUDIO_TOKEN_COUNT:
            raise ValueError(
                f"<audio_{value}> at character {position} is outside 0-{AUDIO_TOKEN_COUNT - 1}"
            )
        values.append(value)
        position = match.end()
    return values


def deinterleave(
    values: Sequence[int], *, drop_partial: bool = False
) -> tuple[list[int], list[int]]:
    """Split token numbers back into raw (linguistic, semantic) codes.

    Each group must be 2 numbers in 0-1023 then 3 in 1024-5119; anything else raises
    ValueError with the offending index. A trailing partial group raises too, since the
    tokenizer never writes one; ``drop_partial=True`` drops it instead, the way the forward
    merge drops a ragged tail (useful for model output cut off mid-group).
    """
    tail = len(values) % GROUP_SIZE
    if tail:
        if not drop_partial:
            raise ValueError(
                f"{len(values)} audio tokens are not whole groups of {GROUP_SIZE} "
                f"({LINGUISTIC_PER_GROUP} linguistic + {SEMANTIC_PER_GROUP} semantic); "
                f"{tail} left over"
            )
        values = values[: len(values) - tail]
    linguistic: list[int] = []
    semantic: list[int] = []
    for index, value in enumerate(values):
        if index % GROUP_SIZE < LINGUISTIC_PER_GROUP:
            if not 0 <= value < LINGUISTIC_CODEBOOK_SIZE:
                raise ValueError(
                    f"audio token {index} is <audio_{value}>, but positions 1-2 of each group "
                    f"are linguistic (0-{LINGUISTIC_CODEBOOK_SIZE - 1})"
                )
            linguistic.append(value)
        else:
            if not SEMANTIC_OFFSET <= value < AUDIO_TOKEN_COUNT:
                raise ValueError(
                    f"audio token {index} is <audio_{value}>, but positions 3-5 of each group "
                    f"are semantic ({SEMANTIC_OFFSET}-{AUDIO_TOKEN_COUNT - 1})"
                )
            semantic.append(value - SEMANTIC_OFFSET)
    return linguistic, semantic


def split_audio_tokens(text: str, *, drop_partial: bool = False) -> tuple[list[int], list[int]]:
    """The inverse of :func:`audio_token_string`: raw (linguistic, semantic) codes."""
    return deinterleave(parse_audio_tokens(text), drop_partial=drop_partial)


def is_audio_token_string(text: str) -> bool:
    """Whether ``text`` is a non-empty, well-formed run of whole audio token groups."""
    if not text:
        return False
    try:
        split_audio_tokens(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- budgeting


def token_count_for_seconds(seconds: float) -> int:
    """Prompt tokens for ``seconds`` of audio: whole 120 ms groups of 5 tokens.

    An estimate for context budgeting before tokenizing (the semantic stream may differ by
    up to 2 codes from ``duration * 25``, as upstream counts them); about 41.67 tokens a second.
    """
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {seconds}")
    # Round away float noise first so that 0.12 s is one whole group, not 0.9999...
    return int(round(seconds / GROUP_SECONDS, 9)) * GROUP_SIZE
