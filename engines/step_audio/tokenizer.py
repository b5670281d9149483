"""Step-Audio-Tokenizer: audio in, the ``<audio_N>`` prompt text Step-Audio-Chat reads.

Loads the folder as it is downloaded (``Step-Audio-Tokenizer/``)::

    dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/
        config.yaml, model.pt, am.mvn, tokens.json, ...   FunASR streaming Paraformer-large
    linguistic_tokenizer.npy                             k-means centroids, 1024 x encoder dim
    speech_tokenizer_v1.onnx                             CosyVoice v1 speech tokenizer

and produces the two code streams upstream's ``StepAudioTokenizer.wav2token`` produces:

* **vq02 (linguistic, 16.7 Hz)**: the audio goes through FunASR's streaming Paraformer
  encoder in 240 ms chunks (``chunk_size=[0, 4, 5]``, encoder look-back 4, the final chunk
  flagged ``is_final``); each encoder output frame (60 ms) becomes the index of its nearest
  centroid (Euclidean distance, as ``torch.cdist`` + argmin upstream). The real FunASR
  package (``funasr``) builds the model from the folder with ``AutoModel``, exactly as
  upstream builds it with its vendored ``funasr_detach``; the chunk loop that upstream adds
  to its copy as ``infer_encoder`` is reproduced here on FunASR's public pieces
  (``init_cache``, ``extract_fbank``, ``encode_chunk``), because released FunASR has no
  method that returns encoder outputs. Two differences from upstream's FunASR 1.0.8 copy:
  the fbank comes from kaldi-native-fbank instead of torchaudio (both Kaldi fbank, with
  the frontend's dither), and FunASR 1.4's online frontend pads the last LFR frames of the
  final chunk slightly differently, so the final frame count can differ by about one; and
  where FunASR 1.4 gives a final chunk no new frames, nothing is added (upstream's slice
  ``[-0:]`` would take the encoder's whole look-ahead window again).
* **vq06 (semantic, 25 Hz)**: the audio is cut into chunks of at most 30 s (chunks shorter
  than 480 samples are dropped), each turned into a Whisper 128-bin log-mel spectrogram,
  run through the ONNX model (inputs: mel ``float32 [1, 128, T]`` and its length
  ``int32 [1]``; output: integer codes), and the codes flattened. As upstream, a chunk whose
  code count is more than 2 away from ``duration x 25`` is an error.

The two streams are interleaved by :func:`adapters.step_audio.audio_tokens.audio_token_string`
(2 linguistic + 3 semantic per 120 ms group, whole groups only).

Preprocessing follows upstream's ``tokenizer.py``, with the gateway's own fixes: any rate is
resampled to 16 kHz here (upstream asserts on rates below 16 kHz; swresample replaces
upstream's torchaudio resampler), the peak is scaled to 0.999 (floor 0.01, as
``energy_norm_fn``). Silence is kept on the chat path (:meth:`tokenize`, upstream's
``enable_trim=False``) and trimmed on the TTS prompt path (:meth:`prompt_codes`, upstream's
``wav2token`` default) by :func:`trim_silence`.
Audio that is empty or shorter than 30 ms (480 samples at 16 kHz) is refused with
:class:`InvalidInput`.

Inference runs on the engine's worker, so the event loop never blocks and the worker's
bounded queue turns bursts into 429s; the worker also replaces upstream's process-wide
``vq02_lock``/``vq06_lock``.

The real model needs CUDA (upstream moves FunASR to the GPU and gives ONNX Runtime only the
CUDA provider); ``device="cpu"`` runs the same code on the CPU, which is how the tests run
it, on a tiny random-weight replica of the folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from adapters.audio.pcm import resample
from adapters.step_audio.audio_tokens import LINGUISTIC_CODEBOOK_SIZE, audio_token_string

from ..base import AudioTokenizer, AudioTokens, EngineError, EngineUnavailable, InvalidInput

PARAFORMER_DIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
CENTROIDS_FILE = "linguistic_tokenizer.npy"
SPEECH_TOKENIZER_FILE = "speech_tokenizer_v1.onnx"

SAMPLE_RATE = 16_000
MIN_SAMPLES = 480  # 30 ms: upstream's smallest vq06 chunk, and the gateway's floor
PEAK = 0.999
PEAK_FLOOR = 0.01
# Silence trimming of TTS prompts (upstream ``utils.trim_silence``).
TRIM_TOP_DB = 20
TRIM_FRAME, TRIM_HOP = 512, 128
TRIM_STEP = 240  # the speech span is rounded up to whole 15 ms steps
KEEP_BEFORE, KEEP_AFTER = 0.05, 0.22  # seconds of silence kept around the speech

# vq02: the streaming Paraformer's chunking, as upstream configures it.
CHUNK_SIZE = (0, 4, 5)
ENCODER_CHUNK_LOOK_BACK = 4
DECODER_CHUNK_LOOK_BACK = 1
SAMPLES_PER_ENCODER_CHUNK = CHUNK_SIZE[1] * 960  # 3840 samples = 240 ms

# vq06: Whisper's feature settings and upstream's chunking.
N_MELS = 128
N_FFT = 400
HOP_LENGTH = 160
MAX_CHUNK_SAMPLES = 30 * SAMPLE_RATE
SEMANTIC_RATE = 25
SEMANTIC_TOLERANCE = 2

_INPUT = "input_audio"


class StepAudioTokenizer(AudioTokenizer):
    """The Step-Audio audio tokenizer as an engine the chat path calls for audio input."""

    def __init__(
        self,
        name,
        context,
        *,
        model_dir: str,
        device: str = "auto",
        cpu_threads: int = 0,
    ) -> None:
        super().__init__(name, context)
        self.model_dir = Path(model_dir)
        self.requested_device = device
        self.cpu_threads = cpu_threads or min(4, os.cpu_count() or 1)
        self.device: str | None = None
        self._paraformer = None  # funasr AutoModel
        self._centroids = None  # torch.Tensor [1024, D], on the CPU as upstream
        self._onnx = None  # onnxruntime.InferenceSession

    # ----------------------------------------------------------------- lifecycle

    def load(self) -> None:
        try:
            import onnxruntime
            import torch
        except ImportError as exc:
            raise EngineUnavailable(
                f"The Step-Audio tokenizer needs torch and onnxruntime: {exc}"
            ) from exc
        paraformer_dir, centroids_path, onnx_path = self._paths()
        self.device = self._resolve_device(torch)
        self._paraformer = self._load_paraformer(paraformer_dir, torch)
        self._centroids = self._load_centroids(centroids_path, torch)
        self._onnx = self._load_speech_tokenizer(onnx_path, onnxruntime)

    def unload(self) -> None:
        self._paraformer = None
        self._centroids = None
        self._onnx = None

    def _paths(self) -> tuple[Path, Path, Path]:
        paraformer_dir = self.model_dir / PARAFORMER_DIR
        centroids = self.model_dir / CENTROIDS_FILE
        onnx_path = self.model_dir / SPEECH_TOKENIZER_FILE
        missing = [
            str(path)
            for path in (
                paraformer_dir / "config.yaml",
                paraformer_dir / "model.pt",
                centroids,
                onnx_path,
            )
            if not path.is_file()
        ]
        if missing:
            raise EngineUnavailable(
                f"{self.model_dir} is not a Step-Audio-Tokenizer folder; missing: "
                + ", ".join(missing)
            )
        return paraformer_dir, centroids, onnx_path

    def _resolve_device(self, torch) -> str:
        requested = self.requested_device
        if requested == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailable(
                f"device {requested!r} was asked for, but CUDA is not available"
            )
        if requested != "cpu" and not requested.startswith("cuda"):
            raise EngineUnavailable(
                f"device must be 'auto', 'cpu' or 'cuda[:N]', not {requested!r}"
            )
        return requested

    def _load_paraformer(self, folder: Path, torch):
        try:
            from funasr import AutoModel
        except ImportError as exc:
            raise EngineUnavailable(
                f"The Step-Audio tokenizer needs FunASR (funasr): {exc}"
            ) from exc
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            model = AutoModel(
                model=str(folder),
                model_revision="master",
                device=self.device,
                ncpu=self.cpu_threads,
                disable_update=True,  # no version check over the network
                disable_pbar=True,
                log_level="ERROR",
                ignore_init_mismatch=False,  # a weight of the wrong shape is an error
            )
        except Exception as exc:
            raise EngineUnavailable(f"FunASR could not load {folder}: {exc}") from exc
        finally:
            # AutoModel calls logging.basicConfig; leave the gateway's logging as it was.
            root.handlers[:] = handlers
            root.setLevel(level)
        if not hasattr(model.model, "encode_chunk") or not hasattr(model.model, "init_cache"):
            raise EngineUnavailable(
                f"{folder} is a {type(model.model).__name__}, not a streaming Paraformer"
            )
        self._check_encoder_weights(model, torch)
        model.model.eval()
        return model

    @staticmethod
    def _check_encoder_weights(model, torch) -> None:
        """FunASR only prints a warning for a weight missing from model.pt; refuse instead."""
        path = model.kwargs.get("init_param")
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state, dict) and key in state:
                state = state[key]
        missing = [
            name
            for name in model.model.state_dict()
            if name.startswith("encoder.") and name not in state and f"module.{name}" not in state
        ]
        if missing:
            raise EngineUnavailable(
                f"{path} lacks {len(missing)} encoder weights (first: {missing[0]})"
            )

    def _load_centroids(self, path: Path, torch):
        centroids = np.load(path)
        width = int(self._paraformer.kwargs["encoder_conf"]["output_size"])
        if centroids.shape != (LINGUISTIC_CODEBOOK_SIZE, width):
            raise EngineUnavailable(
                f"{path} holds centroids of shape {centroids.shape}; the encoder needs "
                f"({LINGUISTIC_CODEBOOK_SIZE}, {width})"
            )
        return torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))

    def _load_speech_tokenizer(self, path: Path, onnxruntime):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise EngineUnavailable(
                    "device is CUDA but this onnxruntime has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu)"
                )
            # onnxruntime-gpu finds CUDA and cuDNN in the nvidia-* wheels torch brings only
            # when told to (1.21+); without them the CUDA provider fails to load.
            if hasattr(onnxruntime, "preload_dlls"):
                onnxruntime.preload_dlls()
            index = int(self.device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index})]
            options.intra_op_num_threads = 1  # as upstream
        else:
            providers = ["CPUExecutionProvider"]
            options.intra_op_num_threads = self.cpu_threads
        try:
            session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=providers
            )
        except Exception as exc:
            raise EngineUnavailable(f"ONNX Runtime could not load {path}: {exc}") from exc
        if providers[0] != "CPUExecutionProvider" and (
            "CUDAExecutionProvider" not in session.get_providers()
        ):
            # ONNX Runtime falls back to the CPU silently when CUDA's libraries are missing.
            raise EngineUnavailable(
                f"ONNX Runtime could not start CUDA for {path.name} (providers: "
                f"{session.get_providers()}); check the CUDA and cuDNN 9 libraries"
            )
        inputs = session.get_inputs()
        if (
            len(inputs) != 2
            or inputs[0].type != "tensor(float)"
            or inputs[1].type != "tensor(int32)"
            or not session.get_outputs()
        ):
            found = ", ".join(f"{i.name}: {i.type}" for i in inputs)
            raise EngineUnavailable(
                f"{path} is not a CosyVoice speech tokenizer: it needs inputs "
                f"(mel float, length int32), found ({found})"
            )
        return session

    # ----------------------------------------------------------------- requests

    async def tokenize(self, audio: np.ndarray, sample_rate: int) -> AudioTokens:
        """Codes and prompt text for mono float audio at ``sample_rate`` (any rate)."""
        samples = _checked(audio, sample_rate)
        return await self.worker.run(self._tokenize, samples, sample_rate)

    def prompt_codes(self, audio: np.ndarray, sample_rate: int) -> AudioTokens:
        """Blocking tokenisation for another engine's worker thread (the TTS computes its
        speakers' prompt codes with it while it loads or registers a voice); silence
        around the speech is trimmed first, as upstream's ``wav2token`` does."""
        return self._tokenize(_checked(audio, sample_rate), sample_rate, trim=True)

    async def token_string(self, audio: np.ndarray, sample_rate: int) -> str:
        """Just the ``<audio_N>`` text, what upstream's ``StepAudioTokenizer.__call__`` returns."""
        return (await self.tokenize(audio, sample_rate)).text

    def _tokenize(self, samples: np.ndarray, sample_rate: int, trim: bool = False) -> AudioTokens:
        assert self._paraformer is not None and self._onnx is not None, "engine used before load()"
        audio = preprocess(samples, sample_rate, trim=trim)
        if len(audio) < MIN_SAMPLES:  # resampling can shave a sample or two off the end
            raise InvalidInput(_too_short(len(audio) / SAMPLE_RATE), param=_INPUT)
        linguistic = self._linguistic_codes(audio)
        semantic = self._semantic_codes(audio)
        try:
            text = audio_token_string(linguistic, semantic)
        except ValueError as exc:  # a code outside its codebook: the weights are wrong
            raise EngineError(f"the Step-Audio tokenizer produced a bad code: {exc}") from exc
        return AudioTokens(linguistic, semantic, text, len(audio) / SAMPLE_RATE)

    def _linguistic_codes(self, audio: np.ndarray) -> list[int]:
        """vq02: streaming Paraformer encoder frames -> nearest k-means centroid."""
        import torch

        features = self.linguistic_features(audio)
        if len(features) == 0:
            return []
        return torch.cdist(features, self._centroids).argmin(dim=1).tolist()

    def linguistic_features(self, audio: np.ndarray):
        """Encoder output frames ``[frames, D]`` (CPU float32) of 16 kHz audio, 60 ms each.

        Blocking; what upstream's ``infer_encoder`` returns as ``enc_out``.
        """
        import torch
        from funasr.utils.load_utils import extract_fbank

        automodel = self._paraformer
        model, frontend = automodel.model, automodel.kwargs["frontend"]
        options = dict(automodel.kwargs)
        options.update(
            chunk_size=list(CHUNK_SIZE),
            encoder_chunk_look_back=ENCODER_CHUNK_LOOK_BACK,
            decoder_chunk_look_back=DECODER_CHUNK_LOOK_BACK,
        )
        cache: dict = {}
        model.init_cache(cache, **options)
        waveform = torch.from_numpy(audio)
        stride = SAMPLES_PER_ENCODER_CHUNK
        count = len(waveform) // stride + 1  # the last, partial chunk is flagged final
        frames = []
        with torch.no_grad():
            for index in range(count):
                is_final = index == count - 1
                piece = waveform[index * stride : (index + 1) * stride]
                if is_final and len(piece) == 0:
                    break  # as upstream: a length that is a multiple of 240 ms sends no final chunk
                try:
                    speech, lengths = extract_fbank(
                        [piece],
                        data_type="sound",
                        frontend=frontend,
                        cache=cache["frontend"],
                        is_final=is_final,
                    )
                except Exception:
                    if is_final and len(piece) < MIN_SAMPLES:
                        break  # as upstream: a final scrap too short for one fbank frame
                    raise
                new_frames = int(lengths[0]) if len(lengths) else 0
                if new_frames == 0:
                    # Nothing new to encode: slicing [-0:] would repeat the whole window.
                    continue
                speech = speech.to(self.device)
                lengths = lengths.to(self.device)
                out, _ = model.encode_chunk(speech, lengths, cache=cache, is_final=is_final)
                frames.append(out[:, -new_frames:].float().cpu())
        if not frames:
            return torch.zeros((0, self._centroids.shape[1]))
        return torch.cat(frames, dim=1).squeeze(0)

    def _semantic_codes(self, audio: np.ndarray) -> list[int]:
        """vq06: Whisper log-mel of each <=30 s chunk -> CosyVoice ONNX tokenizer."""
        session = self._onnx
        mel_name, length_name = (i.name for i in session.get_inputs())
        codes: list[int] = []
        for start in range(0, len(audio), MAX_CHUNK_SAMPLES):
            chunk = audio[start : start + MAX_CHUNK_SAMPLES]
            if len(chunk) < MIN_SAMPLES:
                continue
            mel = whisper_log_mel(chunk, N_MELS)[np.newaxis]  # [1, 128, T]
            length = np.array([mel.shape[2]], dtype=np.int32)
            out = session.run(None, {mel_name: mel, length_name: length})[0]
            chunk_codes = np.asarray(out).reshape(-1).astype(np.int64).tolist()
            expected = round(len(chunk) / SAMPLE_RATE, 2) * SEMANTIC_RATE
            if abs(len(chunk_codes) - expected) > SEMANTIC_TOLERANCE:
                raise EngineError(
                    f"the speech tokenizer gave {len(chunk_codes)} codes for "
                    f"{len(chunk) / SAMPLE_RATE:.2f} s of audio; {expected:.0f} were expected"
                )
            codes.extend(chunk_codes)
        return codes


# --------------------------------------------------------------------------- audio


def _too_short(seconds: float) -> str:
    return (
        f"The audio is too short to tokenize ({seconds * 1000:.0f} ms); "
        f"at least {MIN_SAMPLES * 1000 // SAMPLE_RATE} ms is needed."
    )


def _checked(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 samples, or InvalidInput for audio the tokenizer cannot use."""
    if sample_rate <= 0:
        raise InvalidInput(f"invalid sample rate {sample_rate}", param=_INPUT)
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim == 2:  # (channels, samples): mean over channels, as utils.load_audio
        samples = samples.mean(axis=0)
    if samples.ndim != 1:
        raise InvalidInput("The audio must be mono samples.", param=_INPUT)
    if samples.size == 0:
        raise InvalidInput("The audio is empty.", param=_INPUT)
    if samples.size * SAMPLE_RATE < MIN_SAMPLES * sample_rate:
        raise InvalidInput(_too_short(samples.size / sample_rate), param=_INPUT)
    if not np.isfinite(samples).all():
        raise InvalidInput("The audio contains NaN or infinite samples.", param=_INPUT)
    return samples


def preprocess(samples: np.ndarray, sample_rate: int, trim: bool = False) -> np.ndarray:
    """16 kHz (up- or down-sampled), peak scaled to 0.999, silence trimmed if asked
    (in upstream's order)."""
    audio = resample(samples, sample_rate, SAMPLE_RATE) if sample_rate != SAMPLE_RATE else samples
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    audio = (audio / max(peak, PEAK_FLOOR) * PEAK).astype(np.float32)
    return trim_silence(audio) if trim else audio


def trim_silence(audio: np.ndarray) -> np.ndarray:
    """16 kHz audio cut to its speech plus a fixed margin, as upstream trims TTS prompts.

    librosa finds the speech (frames within 20 dB of the loudest; 512-sample frames, hop
    128). The result starts 50 ms before the speech, zero-padded if the speech starts
    sooner, and lasts the speech rounded up to whole 240-sample steps plus 270 ms (50 ms
    before, 220 ms after), zero-padded if the recording ends sooner. A prompt's length
    therefore depends on its speech alone, not on how much silence surrounded it.
    """
    import librosa

    _, (start, end) = librosa.effects.trim(
        audio, top_db=TRIM_TOP_DB, frame_length=TRIM_FRAME, hop_length=TRIM_HOP
    )
    before, after = int(KEEP_BEFORE * SAMPLE_RATE), int(KEEP_AFTER * SAMPLE_RATE)
    length = -(-(int(end) - int(start)) // TRIM_STEP) * TRIM_STEP + before + after
    first = int(start) - before
    if first < 0:
        audio, first = np.pad(audio, (-first, 0)), 0
    kept = audio[first : first + length]
    return np.pad(kept, (0, length - len(kept))).astype(np.float32)


def mel_filterbank(
    n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Slaney-style mel filters ``[n_mels, n_fft // 2 + 1]``, area-normalised.

    This is the filterbank Whisper ships precomputed in ``assets/mel_filters.npz`` (made
    with ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=128)``, librosa's defaults:
    the Slaney mel scale, linear below 1 kHz and logarithmic above, and "slaney"
    normalisation, each triangle scaled by 2 / its width in Hz). Computed here from that
    definition (Slaney, *Auditory Toolbox*, 1998; librosa ``filters.mel`` docs) instead of
    shipping the file; it matches Whisper's table to float32 precision.
    """

    f_sp = 200.0 / 3  # Hz per mel below the break
    break_hz = 1000.0
    break_mel = break_hz / f_sp
    log_step = np.log(6.4) / 27.0

    def hz_to_mel(hz):
        hz = np.asarray(hz, dtype=np.float64)
        return np.where(
            hz >= break_hz,
            break_mel + np.log(np.maximum(hz, 1e-10) / break_hz) / log_step,
            hz / f_sp,
        )

    def mel_to_hz(mel):
        mel = np.asarray(mel, dtype=np.float64)
        return np.where(
            mel >= break_mel, break_hz * np.exp(log_step * (mel - break_mel)), mel * f_sp
        )

    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(edges_hz)
    offsets = edges_hz[:, np.newaxis] - fft_hz[np.newaxis, :]
    rising = -offsets[:-2] / widths[:-1, np.newaxis]
    falling = offsets[2:] / widths[1:, np.newaxis]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, np.newaxis]
    return weights.astype(np.float32)


_MEL_FILTERS: dict[int, np.ndarray] = {}


def whisper_log_mel(samples: np.ndarray, n_mels: int = N_MELS) -> np.ndarray:
    """Whisper's log-mel spectrogram ``[n_mels, len // 160]`` of 16 kHz audio.

    Same steps as ``whisper.audio.log_mel_spectrogram`` (openai/whisper, MIT): a centred
    STFT (400-point periodic Hann window, hop 160, reflect padding), power spectrum with
    the last frame dropped, the mel filters above, ``log10`` of the energies floored at
    1e-10, values more than 8 below the maximum raised to it, then ``(x + 4) / 4``.
    """
    import torch

    filters = _MEL_FILTERS.get(n_mels)
    if filters is None:
        filters = _MEL_FILTERS[n_mels] = mel_filterbank(n_mels)
    audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = torch.from_numpy(filters) @ power
    log_mel = torch.clamp(mel, min=1e-10).log10()
    log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)
    return ((log_mel + 4.0) / 4.0).numpy()
