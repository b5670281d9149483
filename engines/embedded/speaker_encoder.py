"""Speaker embeddings with Resemblyzer's GE2E encoder, in numpy (no torch).

The weights ship inside the ``resemblyzer`` wheel (Apache-2.0; the package is installed
``--no-deps`` by dev.py, see requirements/no-deps.txt: its own code needs torch, librosa
and webrtcvad, none of which is used here). ``pretrained.pt`` is a torch checkpoint in
torch's legacy (pre-1.6) serialisation: a few pickles, then the raw bytes of each storage.
:func:`read_checkpoint` reads it with an unpickler that builds numpy arrays and refuses
every global but the three a tensor state dict needs, so the file runs no code.

The network (GE2E, Wan et al. 2018): 40 mel bands every 10 ms (25 ms windows, power
spectrum, not logarithmic), a 3-layer LSTM of 256 units, the last layer's final hidden
state through a 256 x 256 linear layer and a ReLU, L2-normalised. An utterance's
embedding is the normalised mean of the embeddings of 1.6 s partials (160 frames) taken
every 77 frames, as Resemblyzer's ``embed_utterance`` does.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

RATE = 16_000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s
PARTIAL_STEP = 77  # Resemblyzer's default rate of 1.3 partials per second
HIDDEN = 256
LAYERS = 3
NORM_TARGET_DBFS = -30.0

MODEL_PACKAGE = "resemblyzer"
MODEL_FILE = "pretrained.pt"
_HANN = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic, as librosa's stft


class EncoderUnavailable(RuntimeError):
    pass


def weights_path() -> Path:
    """``pretrained.pt`` inside the installed ``resemblyzer`` package (never imported:
    its ``__init__`` imports torch)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailable(
            "the speaker encoder's weights ship in the package resemblyzer; install it with "
            "`pip install --no-deps -r requirements/no-deps.txt`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    if not path.is_file():
        raise EncoderUnavailable(f"{path} is missing: the pinned resemblyzer ships it")
    return path


# ------------------------------------------------------------------ checkpoint reading


class _Storage:
    """A storage named in the pickle; its bytes follow the pickles and are filled in later."""

    def __init__(self, dtype: np.dtype, size: int) -> None:
        self.dtype = dtype
        self.size = size
        self.array: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _Storage, offset: int, shape, stride) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def materialise(self) -> np.ndarray:
        data = self.storage.array
        assert data is not None
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=tuple(self.shape),
            strides=tuple(s * item for s in self.stride),
        )
        return np.array(view, copy=True)


_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "IntStorage": np.int32}


def _rebuild_tensor(storage, offset, shape, stride, *_ignored):
    return _TensorRef(storage, offset, shape, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, size, *_ = pid
        if kind != "storage" or storage_type not in _DTYPES:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(np.dtype(_DTYPES[storage_type]), int(size))
        return self.storages[key]


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """The ``model_state`` of a legacy torch checkpoint, as float32 numpy arrays."""
    raw = path.read_bytes()
    file = io.BytesIO(raw)
    safe = functools.partial(_Unpickler, storages={})
    for _ in range(3):  # magic number, protocol version, system info: plain values
        safe(file).load()
    storages: dict[str, _Storage] = {}
    checkpoint = _Unpickler(file, storages).load()
    keys = _Unpickler(file, storages).load()
    for key in keys:
        storage = storages[key]
        (count,) = struct.unpack("<q", file.read(8))
        nbytes = count * storage.dtype.itemsize
        storage.array = np.frombuffer(file.read(nbytes), dtype=storage.dtype)
    state = checkpoint["model_state"]
    return {name: ref.materialise().astype(np.float32) for name, ref in state.items()}


# ------------------------------------------------------------------ the network


@functools.cache
def _mel_filters() -> np.ndarray:
    """40 Slaney mel bands over the 201 bins of a 400-point FFT (librosa's defaults)."""
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor.get_mel_filters(RATE, N_FFT, n_mels=N_MELS).astype(np.float32)


def normalise_volume(audio: np.ndarray) -> np.ndarray:
    """Raise quiet audio to -30 dBFS RMS (never lowers it), as the encoder was trained."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    if rms <= 1e-9:
        return audio
    change = NORM_TARGET_DBFS - 20.0 * np.log10(rms)
    return audio * np.float32(10.0 ** (change / 20.0)) if change > 0 else audio


def mel_frames(audio: np.ndarray) -> np.ndarray:
    """(frames, 40) mel power spectrogram, one frame every 10 ms (centred, zero-padded)."""
    x = np.pad(np.asarray(audio, dtype=np.float32), N_FFT // 2)
    if len(x) < N_FFT:
        x = np.pad(x, (0, N_FFT - len(x)))
    frames = sliding_window_view(x, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2
    return (power.astype(np.float32) @ _mel_filters().T).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


class SpeakerEncoder:
    """Blocking; one instance is shared by the requests of one engine (it holds no state
    between calls)."""

    def __init__(self, path: Path | None = None) -> None:
        weights = read_checkpoint(path or weights_path())
        self.layers = []
        for layer in range(LAYERS):
            w_ih = weights[f"lstm.weight_ih_l{layer}"]
            w_hh = weights[f"lstm.weight_hh_l{layer}"]
            bias = weights[f"lstm.bias_ih_l{layer}"] + weights[f"lstm.bias_hh_l{layer}"]
            self.layers.append((np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), bias))
        self.linear_w = np.ascontiguousarray(weights["linear.weight"].T)
        self.linear_b = weights["linear.bias"]

    def embed_partials(self, mels: np.ndarray) -> np.ndarray:
        """(batch, 160, 40) mel partials → (batch, 256) L2-normalised embeddings."""
        batch, steps, _ = mels.shape
        x = mels.astype(np.float32)
        h = np.zeros((batch, HIDDEN), np.float32)
        for w_ih, w_hh, bias in self.layers:
            projected = (x.reshape(batch * steps, -1) @ w_ih + bias).reshape(batch, steps, -1)
            h = np.zeros((batch, HIDDEN), np.float32)
            c = np.zeros((batch, HIDDEN), np.float32)
            outputs = np.empty((batch, steps, HIDDEN), np.float32)
            for t in range(steps):
                gates = projected[:, t] + h @ w_hh
                i, f, g, o = np.split(gates, 4, axis=1)  # PyTorch's gate order
                c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
                outputs[:, t] = h
            x = outputs
        raw = np.maximum(h @ self.linear_w + self.linear_b, 0.0)
        return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-9)

    def embed_utterance(self, audio: np.ndarray) -> np.ndarray:
        """One 256-d embedding for 16 kHz mono audio: the normalised mean of its partials'."""
        mels = mel_frames(normalise_volume(audio))
        partials = partial_slices(len(mels))
        if partials[-1] > len(mels) - PARTIAL_FRAMES:
            mels = np.pad(mels, ((0, partials[-1] + PARTIAL_FRAMES - len(mels)), (0, 0)))
        batch = np.stack([mels[s : s + PARTIAL_FRAMES] for s in partials])
        mean = self.embed_partials(batch).mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-9)


def partial_slices(n_frames: int) -> list[int]:
    """Start frames of the partials covering ``n_frames`` (a last partial at least 3/4
    covered is kept, zero-padded; at least one partial)."""
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + PARTIAL_STEP + 1), PARTIAL_STEP))
    if len(starts) > 1 and (n_frames - starts[-1]) / PARTIAL_FRAMES < 0.75:
        starts.pop()
    return starts
