"""Token counts for usage fields when the engine has no tokenizer of its own.

Embedded speech engines have no text tokenizer, yet OpenAI clients read ``usage``. We
count words and punctuation marks (and each CJK character) as one token each, and audio
as 25 tokens per second, the rate of Step-Audio's acoustic codes. Documented in the
README so the numbers are meaningful rather than invented.
"""

from __future__ import annotations

import math
import re

AUDIO_TOKENS_PER_SECOND = 25
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|\w+|[^\w\s]")


def count_text_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def count_audio_tokens(seconds: float) -> int:
    return int(math.ceil(max(0.0, seconds) * AUDIO_TOKENS_PER_SECOND))
