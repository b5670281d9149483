"""A spoken reply for a realtime response: the chat path's sentence-by-sentence synthesis
(:class:`~gateway.api.chat.voice.SpokenReply`: one loop for both doors, with its control
tag carrier, its speed and its audio-out charge), in the session's wire format.

Its marks (where each piece's audio ends: a sentence, or the first sentence's opening
clause) let a cancelled or truncated reply keep, as its transcript, only the words whose
audio was actually sent or heard: the next turn's context then holds what the user heard,
not what the model had planned to say.
"""

from __future__ import annotations

from adapters.realtime.audio import wire_pipeline
from engines.registry import ModelRegistry

from ...policy import Policy
from ..chat.voice import SpokenReply

# A run-on first sentence would hold the first audio back: in a conversation the wait
# matters more than where a long sentence is cut (at a clause or a space).
FIRST_AUDIO_CHARS = 120
# And the answer's first piece is shorter still, for the voice that takes longest: Kokoro
# needs about 0.6 s for four Chinese characters and 1.3 s for ten on the 2-core host
# (an answer's first sentence of 50 took 7 s), while Piper voices an English clause in
# about 0.1 s. 48 is 16 CJK characters or eight or nine English words (a clause such as
# "The quickest way to get there from the station," fits), cut at a clause, else a space
# (between CJK characters where there is none). The next piece is written and voiced
# while it plays.
FIRST_PIECE_CHARS = 48


def realtime_speech(
    registry: ModelRegistry, model: str, voice: str, fmt: str, speed: float, policy: Policy
) -> SpokenReply:
    return SpokenReply(
        registry,
        model,
        voice,
        fmt,
        policy,
        speed=speed,
        pipeline=wire_pipeline(fmt),
        first_chars=FIRST_AUDIO_CHARS,
        first_piece_chars=FIRST_PIECE_CHARS,
    )


def heard_transcript(marks: list[tuple[int, str]], heard_bytes: int) -> str:
    """The words whose audio lies within the first ``heard_bytes``: whole sentences, then
    the share of the next sentence's words that its heard audio stands for."""
    words: list[str] = []
    start = 0
    for end, sentence in marks:
        if heard_bytes >= end:
            words.append(sentence.strip())
        else:
            if heard_bytes > start and end > start:
                parts = sentence.split()
                share = (heard_bytes - start) / (end - start)
                words.extend(parts[: int(len(parts) * share)])
            break
        start = end
    return " ".join(w for w in words if w)
