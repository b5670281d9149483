"""Conversations assembled at test time from real recordings of different speakers, and
the diarization error rate (DER) of a hypothesis against their known turns.

Each recording (tests/recordings) is one speaker. It is trimmed to its speech and cut at
its longer pauses into phrases; a conversation takes turns between speakers (never the
same speaker twice in a row), each turn one or two consecutive phrases of the speaker's
recording, with a pause of 0.3-1.2 s between turns and no overlap. The reference turns are
where each turn's speech starts and ends, known by construction.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np

from engines.diarization import Turn  # the truth in the shape the engine answers

from adapters.audio.decode import decode_audio
from tests.recordings import HERE

RATE = 16_000
COLLAR = 0.25  # seconds either side of each reference boundary left unscored
_FRAME = 0.01


@dataclass
class Conversation:
    audio: np.ndarray  # 16 kHz mono float32
    turns: list[Turn]

    @property
    def duration(self) -> float:
        return len(self.audio) / RATE

    @property
    def speakers(self) -> set[str]:
        return {t.speaker for t in self.turns}

    def wav(self) -> bytes:
        import io
        import wave

        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes((np.clip(self.audio, -1, 1) * 32767).astype("<i2").tobytes())
        return buffer.getvalue()


def load(name: str) -> np.ndarray:
    path = next(p for p in HERE.iterdir() if p.stem == name and p.suffix in (".wav", ".mp3"))
    return decode_audio(path.read_bytes(), RATE)


def _speech_mask(audio: np.ndarray) -> np.ndarray:
    """20 ms frames louder than 35 dB below the recording's loud frames (an energy gate,
    independent of the gateway's own Silero VAD)."""
    n = len(audio) // 320
    rms = np.sqrt(np.mean(audio[: n * 320].reshape(n, 320) ** 2, axis=1)) + 1e-9
    level = 20 * np.log10(rms)
    return level > np.percentile(level, 95) - 35


def phrases(audio: np.ndarray, min_pause: float = 0.3) -> list[np.ndarray]:
    """The recording's speech, cut at pauses of at least ``min_pause`` s."""
    mask = _speech_mask(audio)
    voiced = np.flatnonzero(mask)
    pieces, start, last = [], voiced[0], voiced[0]
    for frame in voiced[1:]:
        if (frame - last) * 0.02 >= min_pause:
            pieces.append((start, last + 1))
            start = frame
        last = frame
    pieces.append((start, last + 1))
    merged: list[list[int]] = []
    for s, e in pieces:  # a phrase under 0.8 s joins the one before it
        if merged and (e - s) * 0.02 < 0.8:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    return [audio[s * 320 : e * 320] for s, e in merged]


def assemble(speakers: dict[str, str], seconds: float, seed: int) -> Conversation:
    """``speakers`` maps a speaker's name to a recording's name."""
    rng = random.Random(seed)
    cut = {name: phrases(load(recording)) for name, recording in speakers.items()}
    parts = [np.zeros(int(0.5 * RATE), np.float32)]
    turns: list[Turn] = []
    at = 0.5
    previous = None
    while at < seconds:
        speaker = rng.choice([s for s in cut if s != previous])
        previous = speaker
        pieces = cut[speaker]
        first = rng.randrange(len(pieces))
        count = rng.choice([1, 2]) if first + 1 < len(pieces) else 1
        turn = []
        for piece in pieces[first : first + count]:
            if turn:
                turn.append(np.zeros(int(0.25 * RATE), np.float32))
            turn.append(piece)
        speech = np.concatenate(turn)
        turns.append(Turn(at, at + len(speech) / RATE, speaker))
        parts.append(speech)
        pause = rng.uniform(0.3, 1.2)
        parts.append(np.zeros(int(pause * RATE), np.float32))
        at += len(speech) / RATE + int(pause * RATE) / RATE
    return Conversation(np.concatenate(parts).astype(np.float32), turns)


def _frames(turns, n: int, names: list[str]) -> np.ndarray:
    labels = np.full(n, -1, dtype=np.int64)
    for turn in turns:
        labels[int(round(turn.start / _FRAME)) : int(round(turn.end / _FRAME))] = names.index(
            turn.speaker
        )
    return labels


def der(reference: list[Turn], hypothesis: list[Turn], duration: float) -> float:
    """Diarization error rate: (missed speech + false alarm + speaker confusion) / reference
    speech, in 10 ms frames, under the best one-to-one mapping of hypothesis speakers onto
    reference speakers, with frames within ``COLLAR`` of a reference boundary not scored."""
    n = int(np.ceil(duration / _FRAME)) + 1
    ref_names = sorted({t.speaker for t in reference})
    hyp_names = sorted({t.speaker for t in hypothesis})
    ref = _frames(reference, n, ref_names)
    hyp = _frames(hypothesis, n, hyp_names)
    scored = np.ones(n, dtype=bool)
    collar = int(round(COLLAR / _FRAME))
    for turn in reference:
        for edge in (turn.start, turn.end):
            f = int(round(edge / _FRAME))
            scored[max(f - collar, 0) : f + collar] = False
    ref, hyp = ref[scored], hyp[scored]
    total = int((ref >= 0).sum())
    missed = int(((ref >= 0) & (hyp < 0)).sum())
    false_alarm = int(((ref < 0) & (hyp >= 0)).sum())
    both = (ref >= 0) & (hyp >= 0)
    best_correct = 0
    slots = list(range(len(ref_names))) + [-1] * len(hyp_names)
    for mapping in set(itertools.permutations(slots, len(hyp_names))):
        mapped = np.array(mapping)[hyp[both]] if hyp_names else np.array([])
        best_correct = max(best_correct, int((mapped == ref[both]).sum()))
    confusion = int(both.sum()) - best_correct
    return (missed + false_alarm + confusion) / max(total, 1)
