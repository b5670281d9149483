"""Has the speaker finished their turn? Smart Turn v3.2, an audio classifier (a Whisper
Tiny encoder with a one-logit head, int8, 8.7 MB) that hears the last 8 s of a turn and
says how likely the turn is complete: intonation and the words so far, not silence alone.

The weights ship inside the ``pipecat-ai`` wheel (BSD-2-Clause, as is the model card),
installed ``--no-deps`` (requirements/no-deps.txt): the file is found through the
package's location, never by importing pipecat, whose framework and dependencies are
not installed.

Input, as pipecat's ``LocalSmartTurnAnalyzerV3`` prepares it: 16 kHz mono float audio,
the turn's last 8 s (zeros in front of a shorter one), normalised to zero mean and unit
variance, as Whisper's 80-band log-mel features (25 ms windows, 10 ms hop: 80 x 800).
:func:`features` computes them in float32 numpy with faster-whisper's mel filterbank; they
match transformers' ``WhisperFeatureExtractor(chunk_length=8)`` (what pipecat's own numpy
copy reproduces) within 7e-6 on the test recordings, for values from -0.6 to 2. Output:
the probability that the turn is complete.

A call takes about 50 ms of one core on the 2-core test host (5 ms of features, the rest
the model; 100 ms and more when the host is busy): too long for the event loop that
carries every realtime session's audio, so :func:`predict` runs it on this module's one
thread and returns a future the turn detector reads as audio arrives. One thread (and one
intra-op thread) holds the model to one core however many sessions pause at once; their
calls queue, and a queued call whose turn went on meanwhile is cancelled unrun.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

RATE = 16_000
SECONDS = 8
SAMPLES = SECONDS * RATE
MODEL_PACKAGE = "pipecat"
MODEL_FILE = ("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")
_NORMALISE_EPS = 1e-7  # transformers' WhisperFeatureExtractor's, for an all-zero input
_N_FFT = 400  # 25 ms
_HOP = 160  # 10 ms
_N_MELS = 80
_HANN = np.hanning(_N_FFT + 1)[:-1].astype(np.float32)  # periodic, as torch's

_lock = threading.Lock()
_session = None
_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="end-of-turn")


class ModelUnavailable(RuntimeError):
    pass


def model_path() -> Path:
    """The ONNX file inside the installed ``pipecat-ai`` package (not imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the Smart Turn model ships in the package pipecat-ai; install it with "
            "`pip install --no-deps -r requirements/no-deps.txt`"
        )
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MODEL_FILE)
    if not path.is_file():
        raise ModelUnavailable(f"{path} is missing: the pinned pipecat-ai ships it")
    return path


def _model():
    """One ONNX session per process (stateless: every call hears a whole window)."""
    global _session
    with _lock:
        if _session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.inter_op_num_threads = 1
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            _session = onnxruntime.InferenceSession(
                str(model_path()), sess_options=options, providers=["CPUExecutionProvider"]
            )
    return _session


@functools.cache
def _mel_filters() -> np.ndarray:
    """Whisper's 80 Slaney mel bands over the 201 bins of a 400-point FFT."""
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor.get_mel_filters(RATE, _N_FFT, n_mels=_N_MELS).astype(np.float32)


def last_seconds(audio: np.ndarray) -> np.ndarray:
    """The model's window: the last 8 s, zeros in front of a shorter turn."""
    audio = np.asarray(audio, dtype=np.float32)[-SAMPLES:]
    return np.pad(audio, (SAMPLES - len(audio), 0))


def features(audio: np.ndarray) -> np.ndarray:
    """Whisper log-mel features (80 x 800) of the turn's last 8 s."""
    x = last_seconds(audio)
    x = (x - x.mean()) / np.sqrt(x.var() + _NORMALISE_EPS)
    # centred frames (reflected at the edges), every 10 ms; the last frame is dropped
    frames = sliding_window_view(np.pad(x, _N_FFT // 2, mode="reflect"), _N_FFT)[::_HOP]
    power = np.abs(np.fft.rfft(frames[:-1] * _HANN, axis=-1)) ** 2
    # einsum, not @: a BLAS product wakes OpenBLAS's threads, which on a busy host took
    # 5-25 ms for this 80 x 201 x 800 product; einsum's own loop takes 1.5 ms
    mel = np.einsum("mf,tf->mt", _mel_filters(), power)
    log_mel = np.log10(np.maximum(mel, 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)  # an 80 dB range below the peak
    return ((log_mel + 4.0) / 4.0).astype(np.float32)


def completion_probability(audio: np.ndarray) -> float:
    """P(the turn is complete) for the turn's 16 kHz audio so far (blocking)."""
    (out,) = _model().run(None, {"input_features": features(audio)[None]})
    return float(np.asarray(out).reshape(-1)[0])


def predict(audio: np.ndarray) -> Future:
    """:func:`completion_probability` on the module's thread, off the caller's loop."""
    return _thread.submit(completion_probability, np.array(audio, dtype=np.float32))
