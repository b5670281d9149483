"""What the frameworks tier compares against: real recordings (tests/recordings) and their
texts, word error rates, WAV bytes. Standard library, numpy and jiwer only."""

from __future__ import annotations

import ast
import io
import re
import wave
from pathlib import Path

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = ROOT / "tests" / "recordings"
NODE_DIR = ROOT / "tests" / "node"
API_KEY = "sk-frameworks-tier"  # the one key the tier's gateway accepts


def recording(name: str) -> tuple[np.ndarray, int]:
    """A recording of tests/recordings as int16 mono samples and their rate."""
    with wave.open(str(RECORDINGS / f"{name}.wav")) as file:
        assert file.getnchannels() == 1 and file.getsampwidth() == 2
        return np.frombuffer(file.readframes(file.getnframes()), "<i2"), file.getframerate()


def recording_at(name: str, rate: int) -> np.ndarray:
    """The recording as int16 samples at ``rate`` (linear interpolation: enough for speech
    heard by Whisper, and no resampler to import)."""
    samples, source_rate = recording(name)
    if source_rate == rate:
        return samples
    count = int(round(len(samples) * rate / source_rate))
    positions = np.arange(count) * (source_rate / rate)
    return np.interp(positions, np.arange(len(samples)), samples.astype(np.float64)).astype("<i2")


def texts() -> dict[str, str]:
    """What each recording's speaker reads (``TEXTS`` in tests/recordings/__init__.py), read
    without importing that module (it needs the gateway's audio helpers)."""
    tree = ast.parse((RECORDINGS / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "TEXTS" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("TEXTS not found in tests/recordings/__init__.py")


TEXTS = texts()


_NORMALIZE = jiwer.Compose([
    # Punctuation separates words: a voice reads get_weather({"city": ...}) as words.
    jiwer.ToLowerCase(), jiwer.SubstituteRegexes({r"[^\w\s']|_": " "}),
    jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
    jiwer.Strip(), jiwer.ReduceToListOfListOfWords(),
])


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate, case and punctuation aside (as tests/test_transcription.py)."""
    return jiwer.wer(reference, hypothesis, reference_transform=_NORMALIZE,
                     hypothesis_transform=_NORMALIZE)


# Symbols a voice reads out as words (Piper read "https://api.x.org/a?b=1&c" as "https colon
# slash slash api dot x dot org slash a b equals 1 and c"): the text said is compared with
# what was heard as it is spoken.
_SPOKEN = [(r"://", " colon slash slash "), (r"(?<=\w)\.(?=\w)", " dot "), (r"/", " slash "),
           (r"=", " equals "), (r"&", " and ")]


def as_spoken(text: str) -> str:
    for symbol, words in _SPOKEN:
        text = re.sub(symbol, words, text)
    return text


def assert_heard(said: str, heard: str) -> None:
    """Speech the model made (its text ``said``) was heard back as that text: at most 40% of
    its words wrong, or two words for a short answer, and never half of them; or, where a
    voice and Whisper split words differently ("JSON" heard as "Jason", "an error" as "in
    air": a CI run's answer, half its words wrong), at most a third of its letters. (The
    embedded model's answers vary in length; a five-word answer with one name misheard is
    still that answer, silence or noise is not.) Letters are compared with the symbols in
    ``said`` read as the voice reads them: an answer that wrote a URL spoke it."""
    words = _NORMALIZE(said)[0] if said.strip() else []
    assert words, f"nothing was said: {said!r}"
    errors = round(wer(said, heard) * len(words))
    if errors <= max(2, 0.4 * len(words)) and errors < len(words) / 2:
        return
    assert letter_error_rate(as_spoken(said), heard) <= 1 / 3, (said, heard)


def letter_error_rate(reference: str, hypothesis: str) -> float:
    """Edits between the two texts' letters (spaces, case and punctuation aside) per
    letter of ``reference``."""
    def letters(text: str) -> str:
        return "".join(_NORMALIZE(text)[0]) if text.strip() else ""

    return jiwer.cer(letters(reference), letters(hypothesis) or " ")


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(np.asarray(samples, "<i2").tobytes())
    return buffer.getvalue()
