"""Split text into sentences so speech can start after the first one is synthesised.

The split is deliberately conservative: it breaks after terminal punctuation (Latin and
CJK) followed by space or end of text, and keeps common abbreviations ("Dr.", "e.g.")
and decimals ("3.5") inside their sentence. Chinese written with ASCII punctuation splits
at it too. Over-long sentences are cut at the last comma or space before ``max_chars``
(a CJK character counting three: it takes as long to say) so one run-on paragraph does not
delay the first audio.

A spoken reply may also end its *first* piece at a clause (``first_clause_words``): see
:data:`FIRST_CLAUSE_WORDS`.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "sr",
    "jr",
    "st",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "inc",
    "ltd",
    "co",
    "no",
    "fig",
    "approx",
    "dept",
    "est",
    "u.s",
    "a.m",
    "p.m",
}
_LATIN_END = re.compile(r"[.!?;…]+[\"'”’)\]]*(?=\s|$)")
_CJK_END = re.compile(r"[。！？；…]+[」』”’）)]*|\n+")

#: How many words a spoken reply's first piece needs before it may end at a clause rather
#: than at its sentence's end. Each piece is synthesised on its own, so a very short one
#: ("Well," "Yes, of course,") is voiced as a clipped utterance of its own; and its audio
#: must last until the next piece is written and synthesised, or the listener hears a gap
#: after it. Five words is about 1.7-2 s of speech at 150-180 words a minute: a phrase
#: with a contour of its own, and longer than the rest of a sentence takes to write (a few
#: dozen tokens at tens a second) and to voice (a fraction of real time). Chinese and
#: Japanese are spoken at some 4-5 characters a second, so 8 characters last about as long
#: (each counts 5/8 of a word; a piece mixing scripts adds both).
FIRST_CLAUSE_WORDS = 5
_WORDS_PER_CJK_CHAR = 5 / 8
# A clause ends at a comma, colon or dash. A Latin one must be followed by whitespace, so
# "1,000", "3,5" and "10:30" are never cut; a dash only between spaced words ("now - or",
# "now — or"), not inside "well-known" or "1990–2000".
_LATIN_CLAUSE = re.compile(r"(?:[,:]|(?<=\s)(?:--?|[–—]))[\"'”’)\]]*(?=\s)")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_CJK_CHAR = re.compile(f"[{_CJK}]")
# Chinese written with ASCII punctuation (as small models often write it): a stop or a
# comma with no space after it, between two CJK characters, ends a sentence or a clause.
_CJK_ASCII_END = re.compile(f"(?<=[{_CJK}])[.!?]+(?=[{_CJK}])")
_CJK_CLAUSE = re.compile(f"(?:[，、：]|——|(?<=[{_CJK}])[,:](?=[{_CJK}]))[」』”’）)]*")
# A CJK character takes about as long to say as three Latin letters (4-5 characters a
# second against some 15): the caps on a piece's length count it so.
_CJK_WIDTH = 3
# What may start the rest of the sentence after a clause: a word or an opening quote or
# bracket, not the sentence's own stop (", ." would leave the stop to be voiced alone).
_STARTS_MORE_WORDS = re.compile(r"\s*[\w\"'“‘(\[「『（]")


def split_sentences(
    text: str,
    max_chars: int = 300,
    first_clause_words: int | None = None,
    first_max_chars: int | None = None,
) -> list[str]:
    """The text's sentences, none over ``max_chars``; with ``first_clause_words``, the
    first one may end early at a clause (see :func:`_first_clause_end`); with
    ``first_max_chars``, the first piece is at most that wide (cut as an over-long
    sentence is)."""
    if first_clause_words is None and first_max_chars is None:
        return _sentences(text, max_chars)
    first_end = _first_piece_end(
        text, min(max_chars, first_max_chars or max_chars), first_clause_words
    )
    if first_end is None:
        return _sentences(text, max_chars)
    return [text[:first_end].strip(), *_sentences(text[first_end:], max_chars)]


def _first_piece_end(text: str, max_chars: int, min_words: int | None) -> int | None:
    """Where the first piece ends if not at its sentence's end: at a clause, or where a
    first sentence wider than ``max_chars`` is cut."""
    end = _first_clause_end(text, max_chars, min_words) if min_words else None
    if end is not None:
        return end
    start = len(text) - len(text.lstrip())
    sentence_end = next((e for e in _boundaries(text) if text[:e].strip()), len(text))
    cut = _cap_cut(text[start:sentence_end].rstrip(), max_chars)
    return None if cut is None else start + cut


def _sentences(text: str, max_chars: int) -> list[str]:
    sentences: list[str] = []
    start = 0
    for end in _boundaries(text):
        piece = text[start:end].strip()
        if piece:
            sentences.extend(_cap(piece, max_chars))
        start = end
    tail = text[start:].strip()
    if tail:
        sentences.extend(_cap(tail, max_chars))
    return sentences


def _boundaries(text: str):
    marks = sorted(
        {m.end() for m in _LATIN_END.finditer(text) if not _is_abbreviation(text, m.start())}
        | {m.end() for m in _CJK_END.finditer(text)}
        | {m.end() for m in _CJK_ASCII_END.finditer(text)}
    )
    return marks


def _first_clause_end(text: str, max_chars: int, min_words: int) -> int | None:
    """Where the text's first sentence may be cut at a clause: the first clause mark before
    that sentence's end with at least ``min_words`` words before it and more words after
    it, within ``max_chars`` (a longer opening is the cap's to cut).

    Like a sentence end, a clause counts only once more text follows it, and whether it
    does depends only on the first non-space character after it: so a stream cut at any
    point picks the same clause as the whole text does, or none yet.
    """
    sentence_end = next((end for end in _boundaries(text) if text[:end].strip()), len(text))
    for end in _clause_marks(text):
        opening = text[:end].strip()
        if end >= sentence_end or _width(opening) > max_chars:
            return None
        if _spoken_words(opening) >= min_words and _STARTS_MORE_WORDS.match(text, end):
            return end
    return None


def _clause_marks(text: str) -> list[int]:
    latin = {
        m.end()
        for m in _LATIN_CLAUSE.finditer(text)
        if not _after_abbreviation(text, m.start())
    }
    return sorted(latin | {m.end() for m in _CJK_CLAUSE.finditer(text)})


def _after_abbreviation(text: str, mark: int) -> bool:
    """"e.g., wav" or "etc., and": the comma belongs to the abbreviation's aside."""
    return mark > 0 and text[mark - 1] == "." and _is_abbreviation(text, mark - 1)


def _spoken_words(text: str) -> float:
    cjk_chars = len(_CJK_CHAR.findall(text))
    latin = [token for token in _CJK_CHAR.sub(" ", text).split() if re.search(r"\w", token)]
    return len(latin) + cjk_chars * _WORDS_PER_CJK_CHAR


def _is_abbreviation(text: str, dot: int) -> bool:
    if text[dot] != ".":
        return False
    word = re.search(r"([\w.]+)$", text[:dot])
    if not word:
        return False
    token = word.group(1).lower()
    return token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha() and token.isupper())


def _width(text: str) -> int:
    return len(text) + (_CJK_WIDTH - 1) * len(_CJK_CHAR.findall(text))


def _fit(sentence: str, max_chars: int) -> int:
    """How many of the sentence's first characters are ``max_chars`` wide (at least one)."""
    width = 0
    for i, char in enumerate(sentence):
        width += _CJK_WIDTH if _CJK_CHAR.match(char) else 1
        if width > max_chars:
            return max(1, i)
    return len(sentence)


def _cap_cut(sentence: str, max_chars: int) -> int | None:
    """Where a sentence wider than ``max_chars`` is cut (the length of its first piece):
    at the last comma, else the last space, in its first ``max_chars``; None if it fits."""
    fit = _fit(sentence, max_chars)
    if fit >= len(sentence):
        return None
    window = sentence[:fit]
    clauses = [m.end() - 1 for m in _CJK_CLAUSE.finditer(window)]
    cut = max(window.rfind(", "), clauses[-1] if clauses else -1)
    if cut < fit // 3:
        cut = window.rfind(" ")
    if cut < fit // 3:
        cut = fit - 1
    return cut + 1


def _cap(sentence: str, max_chars: int) -> list[str]:
    out = []
    while (cut := _cap_cut(sentence, max_chars)) is not None:
        out.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    if sentence:
        out.append(sentence)
    return out


class SentenceBuffer:
    """Collects streamed text and hands out each sentence once it is complete.

    A sentence counts as complete when another one has started after it, so the cut
    never falls inside "Dr." or "3.5" just because the next token has not arrived yet.
    The text is re-split from the last settled sentence boundary (one that more text follows)
    with a count of the pieces already handed out, rather than from the last piece: a
    long sentence's capped pieces may start mid-word, where the abbreviation check would
    see a different word than in the whole text. So the stream splits as the whole does.

    ``first_clause_words``: the first piece may end at a clause (see
    :data:`FIRST_CLAUSE_WORDS`); the rest of that sentence is the next piece.
    ``first_max_chars``: the first piece is at most that wide.
    """

    def __init__(
        self,
        max_chars: int = 300,
        first_clause_words: int | None = None,
        first_max_chars: int | None = None,
    ) -> None:
        self.max_chars = max_chars
        self.first_clause_words = first_clause_words
        self.first_max_chars = first_max_chars
        self._pending = ""
        self._handed = 0  # pieces of ``_pending`` already returned
        self._from_start = True  # ``_pending`` still starts where the text began

    def push(self, text: str) -> list[str]:
        self._pending += text
        pieces = self._split(self._pending)
        fresh = pieces[self._handed : -1]
        self._handed = max(self._handed, len(pieces) - 1)
        self._forget_settled()
        return fresh

    def flush(self) -> list[str]:
        rest = self._split(self._pending)[self._handed :]
        self._pending, self._handed, self._from_start = "", 0, True
        return rest

    def _split(self, text: str) -> list[str]:
        # Only the text's first piece may be a clause: once a piece has been forgotten,
        # ``_pending`` starts mid-text.
        if not self._from_start:
            return split_sentences(text, self.max_chars)
        return split_sentences(
            text, self.max_chars, self.first_clause_words, self.first_max_chars
        )

    def _forget_settled(self) -> None:
        """Drop the text before the last boundary that more text follows: no later split
        depends on it (no stop or abbreviation reaches across such a boundary)."""
        pending = self._pending
        settled = [end for end in _boundaries(pending) if pending[end:].strip()]
        if settled:
            forgotten = len(self._split(pending[: settled[-1]]))
            self._handed -= forgotten
            self._pending = pending[settled[-1] :]
            # Text that was only blank lines held no piece: the first is still to come.
            self._from_start = self._from_start and not forgotten
