"""The control strings of the Step-1 tokenizer that Step-Audio-Chat and TTS-3B share.

Every Step-Audio prompt is a run of turns ``<|BOT|>{role}\\n{content}<|EOT|>`` written
back to back with no separator (as upstream's chat template writes them). The strings and ids live here, in
one small module, because the prompt builder and the tool-turn renderer both frame turns
and neither should import the other.

The ids are the reference's **[inferred]** mapping (``tts.py`` builds prompts from raw ids
1, 4 and 3; both ``config.json`` files say ``bos_token_id`` 1 and ``eos_token_id`` 3).
``<s>`` is added by the tokenizer (``add_bos_token``), so the builders never write it.
"""

from __future__ import annotations

import re

from .audio_tokens import AUDIO_TOKEN_COUNT, AUDIO_TOKEN_ID_OFFSET

BOS = "<s>"
BOT = "<|BOT|>"
EOT = "<|EOT|>"

BOS_TOKEN_ID = 1
EOT_TOKEN_ID = 3  # also the EOS of both models
BOT_TOKEN_ID = 4

#: Stop generation on the end of the assistant turn, and on a new turn as a safety net
#: (reference, "What a gateway must implement" item 4).
STOP_STRINGS = (EOT, BOT)
#: The same stops as token ids. vLLM leaves special tokens out of the text it matches stop
#: strings against (``skip_special_tokens``), so only ids can stop on them reliably.
STOP_TOKEN_IDS = (EOT_TOKEN_ID, BOT_TOKEN_ID)

#: What the vLLM behind the gateway must read as :data:`TOKENIZER_PROBE_IDS` (without BOS):
#: the lowest and highest audio tokens and both turn markers. A different model, or a
#: tokenizer without the audio tokens, spells ``<audio_N>`` as a dozen ordinary pieces and
#: the model answers nonsense to every spoken turn, so the gateway checks at start.
TOKENIZER_PROBE = f"<audio_0><audio_{AUDIO_TOKEN_COUNT - 1}>{BOT}{EOT}"
TOKENIZER_PROBE_IDS = (
    AUDIO_TOKEN_ID_OFFSET,
    AUDIO_TOKEN_ID_OFFSET + AUDIO_TOKEN_COUNT - 1,
    BOT_TOKEN_ID,
    EOT_TOKEN_ID,
)

#: Strings in text that the tokenizer would turn into turn markers or audio tokens.
#: ``<s>``/``</s>`` are left out: they are ordinary HTML (strikethrough) in user text, and
#: a stray BOS cannot open a turn.
SPECIAL_TOKEN_PATTERN = re.compile(r"<\|BOT\|>|<\|EOT\|>|<audio_\d+>")


def turn(role: str, content: str) -> str:
    """One closed turn: ``<|BOT|>{role}\\n{content}<|EOT|>``."""
    return f"{BOT}{role}\n{content}{EOT}"


def open_turn(role: str) -> str:
    """A turn left open for the model to continue: ``<|BOT|>{role}\\n`` (no EOT)."""
    return f"{BOT}{role}\n"


def find_special_token(text: str) -> str | None:
    """The first control or audio token string written inside ``text``, or None.

    Text that carries one would be tokenized into that control token, letting a client
    close its turn and open a ``system`` one, or smuggle audio codes in as typed text.
    """
    match = SPECIAL_TOKEN_PATTERN.search(text)
    return match.group(0) if match else None


#: Breaks a control string for the tokenizer and stays invisible to a reader.
ZERO_WIDTH_SPACE = "\u200b"


def neutralise(text: str) -> str:
    """``text`` with every control or audio token string broken by a zero-width space after
    its ``<``, so the tokenizer reads the characters the writer typed, not the token.

    Chosen over refusing the request: a user asking what ``<|BOT|>`` means, pasting a log,
    or a conversation whose earlier reply quoted one still gets an answer (a refusal would
    also fail every later request that carries that history), and the model still sees
    the text as written.
    """
    return SPECIAL_TOKEN_PATTERN.sub(lambda m: "<" + ZERO_WIDTH_SPACE + m.group(0)[1:], text)
