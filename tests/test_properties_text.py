"""Properties of the streaming text helpers: sentence splitting and marker hold-back.

Speech starts after the first sentence, so the splitter runs on every chat reply that is
spoken: a piece lost or repeated is a word the listener never hears or hears twice, and a
stream cut differently from the whole text would make the audio depend on token timing.
"""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapters.text.holdback import partial_marker_length
from adapters.text.sentences import SentenceBuffer, split_sentences
from tests.cuts import cut

# Text that exercises the splitter: words, Latin and CJK terminators, abbreviations,
# decimals, quotes and brackets after a stop, newlines, runs of spaces, long run-ons, and
# the clause marks a spoken reply's first piece may end at (with numbers that hold them).
_pieces = st.sampled_from(
    [
        "Hello", "world", "Dr.", "e.g.", "U.S.", "3.5", "J.", "etc.", ".", "!", "?", "...", "…",
        ";", ",", "、", "，", "。", "！", "？", "」", "”", ")", '"', "'", " ", " ", " ", "\n",
        "\n\n", "\t", "こんにちは", "天气很好", "a" * 40, "word, " * 5, ":", "：", " - ", " — ",
        "——", "1,000", "10:30", "one two three",
    ]
)
texts = st.lists(_pieces | st.text(max_size=6), max_size=40).map("".join)
max_chars = st.integers(min_value=4, max_value=120)
# None: sentences only, as the speech engines split; a number: a spoken reply's first
# piece may end at a clause once it has that many words.
clause_words = st.none() | st.integers(min_value=1, max_value=6)
# None: the first piece as wide as the rest may be; a number: at most that wide, as a
# realtime answer's first piece is.
first_widths = st.none() | st.integers(min_value=4, max_value=60)


def _assert_tiles(text: str, pieces: list[str]) -> None:
    """The pieces are the text in order, nothing dropped or repeated: each is found after
    the previous one with only whitespace between them."""
    position = 0
    for piece in pieces:
        found = text.find(piece, position)
        assert found != -1, (piece, text[position:])
        assert text[position:found].strip() == "", (text[position:found], piece)
        position = found + len(piece)
    assert text[position:].strip() == ""


@given(text=texts, limit=max_chars, words=clause_words, first=first_widths)
@settings(max_examples=400)
def test_no_text_is_lost_or_repeated_and_pieces_fit(text, limit, words, first):
    pieces = split_sentences(text, limit, words, first)
    _assert_tiles(text, pieces)
    for piece in pieces:
        assert piece and piece == piece.strip()
        assert len(piece) <= limit
    if pieces and first is not None:
        assert len(pieces[0]) <= first


@given(
    text=texts,
    limit=max_chars,
    words=clause_words,
    cuts=st.lists(st.integers(min_value=0), max_size=20),
    first=first_widths,
)
@settings(max_examples=400)
# The buffer used to re-split from its last piece: after a capped cut inside "e.g." the
# stream lost the abbreviation and spoke "." alone where the whole text had ". Hello".
@example(
    text="HelloHelloHelloHelloDr.0:e.g. HelloHelloHelloHello", limit=7, words=None, cuts=[29],
    first=None,
)
# Blank lines before the first words are a "sentence" the buffer forgets: the first piece,
# a clause, is still to come after them.
@example(
    text="\n\none two three, four five. Six, seven.", limit=120, words=3, cuts=[3, 20],
    first=None,
)
def test_streamed_text_splits_as_the_whole_text_does(text, limit, words, cuts, first):
    buffer = SentenceBuffer(limit, first_clause_words=words, first_max_chars=first)
    streamed: list[str] = []
    for chunk in cut(text, cuts):
        streamed += buffer.push(chunk)
    streamed += buffer.flush()
    assert streamed == split_sentences(text, limit, words, first)


@given(text=st.text(max_size=12), markers=st.lists(st.text(min_size=1, max_size=6), max_size=3))
@settings(max_examples=400)
def test_holdback_is_the_longest_end_that_starts_a_marker(text, markers):
    expected = max(
        (k for m in markers for k in range(1, len(m)) if len(text) >= k and text.endswith(m[:k])),
        default=0,
    )
    assert partial_marker_length(text, markers) == expected


@given(
    text=st.lists(st.sampled_from(["<", "</", "<tool", "_call", ">", "</tool_call>", "<tool_call>", "x", " "]), max_size=20).map("".join),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
@settings(max_examples=300)
def test_a_stream_filtered_with_holdback_finds_every_marker_however_it_is_cut(text, cuts):
    """What a stop-string filter built on the hold-back does: text goes out as soon as it
    cannot start a marker, so a marker split across chunks is still found whole and no
    piece of it ever reaches the client."""
    markers = ("<tool_call>", "</tool_call>")
    pattern = re.compile("|".join(map(re.escape, markers)))
    sent, found, held = [], [], ""
    for chunk in cut(text, cuts):
        held += chunk
        while match := pattern.search(held):
            sent.append(held[: match.start()])
            found.append(match.group())
            held = held[match.end() :]
        keep = partial_marker_length(held, markers)
        sent.append(held[: len(held) - keep])
        held = held[len(held) - keep :]
    sent.append(held)
    assert found == pattern.findall(text)
    assert "".join(sent) == pattern.sub("", text)
