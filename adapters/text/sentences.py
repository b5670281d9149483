"""Split text into sentences so speech can start after the first one is synthesised.

The split is deliberately conservative: it breaks after terminal punctuation (Latin and
CJK) followed by space or end of text, and keeps common abbreviations ("Dr.", "e.g.")
and decimals ("3.5") inside their sentence. Over-long sentences are cut at the last comma
or space before ``max_chars`` so one run-on paragraph does not delay the first audio.
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


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
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
    )
    return marks


def _is_abbreviation(text: str, dot: int) -> bool:
    if text[dot] != ".":
        return False
    word = re.search(r"([\w.]+)$", text[:dot])
    if not word:
        return False
    token = word.group(1).lower()
    return token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha() and token.isupper())


def _cap(sentence: str, max_chars: int) -> list[str]:
    out = []
    while len(sentence) > max_chars:
        window = sentence[:max_chars]
        cut = max(window.rfind(", "), window.rfind("、"), window.rfind("，"))
        if cut < max_chars // 3:
            cut = window.rfind(" ")
        if cut < max_chars // 3:
            cut = max_chars - 1
        out.append(sentence[: cut + 1].strip())
        sentence = sentence[cut + 1 :].strip()
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
    """

    def __init__(self, max_chars: int = 300) -> None:
        self.max_chars = max_chars
        self._pending = ""
        self._handed = 0  # pieces of ``_pending`` already returned

    def push(self, text: str) -> list[str]:
        self._pending += text
        pieces = split_sentences(self._pending, self.max_chars)
        fresh = pieces[self._handed : -1]
        self._handed = max(self._handed, len(pieces) - 1)
        self._forget_settled()
        return fresh

    def flush(self) -> list[str]:
        rest = split_sentences(self._pending, self.max_chars)[self._handed :]
        self._pending, self._handed = "", 0
        return rest

    def _forget_settled(self) -> None:
        """Drop the text before the last boundary that more text follows: no later split
        depends on it (no stop or abbreviation reaches across such a boundary)."""
        pending = self._pending
        settled = [end for end in _boundaries(pending) if pending[end:].strip()]
        if settled:
            self._handed -= len(split_sentences(pending[: settled[-1]], self.max_chars))
            self._pending = pending[settled[-1] :]
