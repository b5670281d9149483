"""Whisper's encoder fitted to the audio (engines/embedded/whisper_window.py), on the
real Whisper base weights and real recordings: the same words as the padded 30 s window,
from one encoder pass over a window the length of the turn."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from faster_whisper import WhisperModel

from adapters.audio.pcm import resample
from engines.embedded.assets import resolve_whisper_weights
from engines.embedded.whisper_window import FittedWhisper, content_frames, fitted_window
from tests.recordings import pcm24k
from tests.test_transcription import wer

ENGLISH = ["en_happy_prompt", "zero_shot_en_prompt"]


class EncoderSpy:
    """Stands in front of the CTranslate2 model and records each encoder input's frames."""

    def __init__(self, model) -> None:
        self._model = model
        self.windows: list[int] = []

    def encode(self, features, *args, **kwargs):
        self.windows.append(features.shape[-1])
        return self._model.encode(features, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


@pytest.fixture(scope="module")
def weights() -> str:
    cache = Path(os.environ.get("GATEWAY_CACHE_DIR", Path.home() / ".cache/step-audio-gateway"))
    return str(resolve_whisper_weights("whisper-base", cache))


def heard(name: str, share: float = 1.0) -> np.ndarray:
    pcm = np.frombuffer(pcm24k(name), np.int16).astype(np.float32) / 32768
    audio = resample(pcm, 24_000, 16_000)
    return audio[: int(len(audio) * share)]


def transcribe(model, audio: np.ndarray, language: str | None = None) -> str:
    segments, _ = model.transcribe(
        audio, language=language, beam_size=1, condition_on_previous_text=False,
        vad_filter=True, temperature=[0.0, 0.2, 0.4],
    )
    return "".join(s.text for s in segments)


def test_a_turn_is_encoded_once_over_a_window_the_length_of_the_turn(weights):
    """Language detection and decoding share one encoder pass, of at most the turn plus
    the margin (or the minimum window): a 5 s recording is not padded to 30 s."""
    model = FittedWhisper(weights, device="cpu", compute_type="int8", cpu_threads=2)
    spy = model.model = EncoderSpy(model.model)
    audio = heard("zero_shot_en_prompt")
    text = transcribe(model, audio)
    assert "Margaret" in text
    assert len(spy.windows) == 1, spy.windows
    assert spy.windows[0] <= fitted_window(len(audio) // 160 + 1, model.margin, model.minimum)
    assert spy.windows[0] < 3000


@pytest.mark.parametrize("name", ENGLISH)
@pytest.mark.parametrize("share", [0.6, 1.0])
def test_the_fitted_window_hears_what_the_full_window_hears(weights, name, share):
    """Whole recordings and recordings cut mid-turn (what a speculative transcription
    hears at a pause): the words match the padded window's within one word in twenty."""
    full = WhisperModel(weights, device="cpu", compute_type="int8", cpu_threads=2)
    fitted = FittedWhisper(weights, device="cpu", compute_type="int8", cpu_threads=2)
    audio = heard(name, share)
    expected, got = transcribe(full, audio), transcribe(fitted, audio)
    assert wer(expected, got) <= 0.05, (expected, got)


def test_content_ends_where_the_padding_starts():
    features = np.zeros((80, 3000), np.float32)
    features[:, :437] = np.random.default_rng(0).standard_normal((80, 437))
    assert content_frames(features) == 437
    assert content_frames(features[None]) == 437
    assert fitted_window(437, 200, 800) == 800
    assert fitted_window(1437, 200, 800) == 1700
    assert fitted_window(2950, 200, 800) == 3000
