"""Which language a piece of text is written in, from its script alone.

Speech routing only needs to tell the scripts our voices handle apart (Latin for English,
kana for Japanese, Han for Chinese, Hangul for Korean); a statistical detector would add a
dependency and still guess wrong on one-word inputs like "OK".
"""

from __future__ import annotations

import unicodedata


def _script(char: str) -> str | None:
    code = ord(char)
    if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9D:
        return "kana"
    if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF:
        return "han"
    if 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "hangul"
    if char.isalpha() and "LATIN" in unicodedata.name(char, ""):
        return "latin"
    return None


def detect_language(text: str) -> str:
    """Return an ISO-639-1 code: "ja", "zh", "ko" or (the default) "en"."""
    counts = {"kana": 0, "han": 0, "hangul": 0, "latin": 0}
    for char in text:
        script = _script(char)
        if script:
            counts[script] += 1
    if counts["kana"]:
        return "ja"
    if counts["hangul"] and counts["hangul"] >= counts["han"]:
        return "ko"
    if counts["han"]:
        return "zh"
    return "en"
