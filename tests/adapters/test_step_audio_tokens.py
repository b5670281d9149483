"""Step-Audio tokenizer codes as ``<audio_N>`` prompt text (adapters.step_audio.audio_tokens).

Golden facts from shared/reference/step-audio-pipeline.md, §3.1 "Token string format"
(``tokenizer.py`` ``merge_vq0206_to_token_str``) and §9 "Sampling parameters, lengths,
rates".
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from adapters.step_audio.audio_tokens import (
    AUDIO_TOKEN_ID_OFFSET,
    GROUP_SECONDS,
    LINGUISTIC_RATE_HZ,
    SEMANTIC_RATE_HZ,
    TOKENS_PER_SECOND,
    audio_token_string,
    deinterleave,
    format_audio_tokens,
    from_token_ids,
    interleave,
    is_audio_token_string,
    parse_audio_tokens,
    split_audio_tokens,
    to_token_ids,
    token_count_for_seconds,
    validate_codes,
    whole_groups,
)
from adapters.step_audio.special_tokens import find_special_token


def reference_merge(vq02: list[int], vq06: list[int]) -> str:
    """§3.1 as written: "2 vq02 codes, then 3 vq06 codes, repeated"; "vq06 codes are
    shifted by +1024"; "each code becomes <audio_{N}> with no separators"; "the merge loop
    stops when fewer than 2 vq02 codes or 3 vq06 codes remain"."""
    shifted = [1024 + x for x in vq06]
    result: list[int] = []
    i = j = 0
    while len(vq02) - i >= 2 and len(shifted) - j >= 3:
        result.extend(vq02[i : i + 2] + shifted[j : j + 3])
        i, j = i + 2, j + 3
    return "".join(f"<audio_{x}>" for x in result)


# --------------------------------------------------------------------------- golden strings


def test_two_linguistic_then_three_semantic_codes_per_group():
    # §3.1 "Interleaving: 2 vq02 codes, then 3 vq06 codes, repeated"; "vq02 codes are
    # written as-is: N in [0, 1023]"; "vq06 codes are shifted by +1024: N in [1024, 5119]".
    linguistic = [7, 1023, 0, 512]
    semantic = [0, 1, 4095, 10, 20, 30]
    assert audio_token_string(linguistic, semantic) == (
        "<audio_7><audio_1023><audio_1024><audio_1025><audio_5119>"
        "<audio_0><audio_512><audio_1034><audio_1044><audio_1054>"
    )
    assert interleave(linguistic, semantic) == [7, 1023, 1024, 1025, 5119, 0, 512, 1034, 1044, 1054]


def test_codebook_edges():
    # §3.1: codebook 1024 (vq02) and 4096 (vq06); the written range is 0-5119.
    assert audio_token_string([0, 1023], [0, 0, 4095]) == (
        "<audio_0><audio_1023><audio_1024><audio_1024><audio_5119>"
    )


@pytest.mark.parametrize(
    "n_linguistic, n_semantic, groups",
    [
        (2, 3, 1),
        (3, 3, 1),
        (2, 5, 1),
        (4, 6, 2),
        (5, 7, 2),
        (4, 5, 1),
        (1, 3, 0),
        (2, 2, 0),
        (0, 0, 0),
        (10, 3, 1),
        (2, 30, 1),
    ],
)
def test_ragged_tails_are_dropped(n_linguistic, n_semantic, groups):
    # §3.1 "Only whole groups are kept: the merge loop stops when fewer than 2 vq02 codes
    # or 3 vq06 codes remain."
    linguistic = list(range(n_linguistic))
    semantic = list(range(100, 100 + n_semantic))
    assert whole_groups(n_linguistic, n_semantic) == groups
    text = audio_token_string(linguistic, semantic)
    assert text.count("<audio_") == 5 * groups
    assert text == reference_merge(linguistic, semantic)


def test_matches_the_reference_loop_for_random_streams():
    rng = random.Random(20250218)
    for _ in range(300):
        linguistic = [rng.randrange(1024) for _ in range(rng.randrange(0, 40))]
        semantic = [rng.randrange(4096) for _ in range(rng.randrange(0, 60))]
        assert audio_token_string(linguistic, semantic) == reference_merge(linguistic, semantic)


def test_llm_token_ids_are_65536_plus_n():
    # §3.1 "LLM token id = 65536 + N ... Audio ids therefore span 65536-70655, inside the
    # 74752 vocabulary."
    assert AUDIO_TOKEN_ID_OFFSET == 65536
    assert to_token_ids([0, 1023, 1024, 5119]) == [65536, 66559, 66560, 70655]
    assert from_token_ids([65536, 70655]) == [0, 5119]
    assert 70655 < 74752
    with pytest.raises(ValueError, match="5120"):
        to_token_ids([5120])
    with pytest.raises(ValueError, match="not an audio token"):
        from_token_ids([3])  # <|EOT|>


def test_rates_and_budget():
    # §3.1 "vq02 ... 16.7 Hz", "vq06 ... 25 Hz", "One group covers 120 ms; the combined
    # rate is ~41.67 tokens/s"; §9 "Audio token rate 16.7 Hz + 25 Hz = 41.67 tok/s".
    assert round(LINGUISTIC_RATE_HZ, 1) == 16.7 and SEMANTIC_RATE_HZ == 25
    assert GROUP_SECONDS * LINGUISTIC_RATE_HZ == pytest.approx(2)
    assert GROUP_SECONDS * SEMANTIC_RATE_HZ == pytest.approx(3)
    assert TOKENS_PER_SECOND == pytest.approx(41.67, abs=0.01)
    assert token_count_for_seconds(0.12) == 5
    assert token_count_for_seconds(1.2) == 50
    assert token_count_for_seconds(0.1) == 0
    assert token_count_for_seconds(60) == 2500
    with pytest.raises(ValueError):
        token_count_for_seconds(-1)


def test_audio_tokens_are_what_the_prompt_guard_looks_for():
    assert find_special_token(audio_token_string([1, 2], [3, 4, 5])) == "<audio_1>"


# --------------------------------------------------------------------------- inverse


def test_round_trip_recovers_the_whole_groups():
    rng = random.Random(7)
    for _ in range(200):
        linguistic = [rng.randrange(1024) for _ in range(rng.randrange(0, 30))]
        semantic = [rng.randrange(4096) for _ in range(rng.randrange(0, 45))]
        groups = whole_groups(len(linguistic), len(semantic))
        assert split_audio_tokens(audio_token_string(linguistic, semantic)) == (
            linguistic[: 2 * groups],
            semantic[: 3 * groups],
        )


def test_parse_and_format_are_inverse():
    values = [0, 1, 1024, 2000, 5119]
    text = format_audio_tokens(values)
    assert text == "<audio_0><audio_1><audio_1024><audio_2000><audio_5119>"
    assert parse_audio_tokens(text) == values
    assert parse_audio_tokens("") == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("<audio_1> <audio_2>", "character 9"),  # no separators upstream
        ("<audio_01>", "character 0"),  # not a vocabulary token
        ("<audio_-1>", "character 0"),
        ("<audio_5120>", "outside 0-5119"),
        ("hello", "character 0"),
        ("<audio_1><audio_2", "character 9"),
    ],
)
def test_parse_rejects_anything_but_canonical_tokens(text, message):
    with pytest.raises(ValueError, match=message):
        parse_audio_tokens(text)


def test_split_checks_group_shape():
    with pytest.raises(ValueError, match="not whole groups of 5.*4 left over"):
        split_audio_tokens(format_audio_tokens([1, 2, 1024, 1025, 1026, 3, 4, 1027, 1028]))
    # a semantic number where a linguistic one belongs, and the other way round
    with pytest.raises(ValueError, match="audio token 1 .* linguistic"):
        deinterleave([1, 1024, 1024, 1025, 1026])
    with pytest.raises(ValueError, match="audio token 4 .* semantic"):
        deinterleave([1, 2, 1024, 1025, 3])
    assert not is_audio_token_string("")
    assert not is_audio_token_string("<audio_1>")
    assert is_audio_token_string(audio_token_string([1, 2], [3, 4, 5]))


def test_drop_partial_mirrors_the_forward_merge():
    values = [1, 2, 1024, 1025, 1026, 3, 4, 1027]
    assert deinterleave(values, drop_partial=True) == ([1, 2], [0, 1, 2])


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "linguistic, semantic, message",
    [
        ([1024, 0], [0, 0, 0], r"linguistic \(vq02\) code 1024 at index 0 is outside .*0-1023"),
        ([0, -1], [0, 0, 0], r"linguistic \(vq02\) code -1 at index 1"),
        ([0, 0], [0, 4096, 0], r"semantic \(vq06\) code 4096 at index 1 is outside .*0-4095"),
        ([0, 0], [0, 0, 1.0], r"semantic \(vq06\) code at index 2 is not an integer"),
        ([True, 0], [0, 0, 0], r"linguistic \(vq02\) code at index 0 is not an integer"),
        (["1", 0], [0, 0, 0], r"not an integer"),
    ],
)
def test_out_of_range_codes_are_refused(linguistic, semantic, message):
    with pytest.raises(ValueError, match=message):
        validate_codes(linguistic, semantic)
    with pytest.raises(ValueError, match=message):
        audio_token_string(linguistic, semantic)


def test_codes_in_a_dropped_tail_are_still_validated():
    with pytest.raises(ValueError, match="index 2"):
        audio_token_string([0, 0, 5000], [0, 0, 0])


def test_numpy_codes_are_accepted():
    linguistic = np.array([3, 4], dtype=np.int64)
    semantic = np.array([5, 6, 7], dtype=np.int32)
    assert audio_token_string(linguistic, semantic) == (
        "<audio_3><audio_4><audio_1029><audio_1030><audio_1031>"
    )
