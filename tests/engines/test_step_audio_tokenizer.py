"""The Step-Audio tokenizer engine on a tiny random-weight replica of its download folder.

The real ``Step-Audio-Tokenizer`` weights (a 881 MB Paraformer-large, a 523 MB ONNX model)
cannot be downloaded here, and need a GPU. The replica stands in for them: the same file
layout, built the same way the real files were made, only small and random:

* ``dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/``: a
  ``config.yaml`` naming the real classes (``ParaformerStreaming``, ``SANMEncoderChunkOpt``,
  ``WavFrontendOnline`` with 80 mels and LFR 7/6, so the same 60 ms frames), a ``model.pt``
  saved from FunASR's own ``ParaformerStreaming`` with random weights (2 encoder blocks of
  width 16 instead of 50 of width 512), an ``am.mvn`` and a ``tokens.json``;
* ``linguistic_tokenizer.npy``: 1024 random centroids of the encoder's width;
* ``speech_tokenizer_v1.onnx``: an ONNX graph with the real model's interface (input
  ``feats`` float32 ``[1, 128, T]``, input ``feats_length`` int32 ``[1]``, output
  ``indices`` int64) and its 4x time reduction (100 Hz mel -> 25 Hz codes): two stride-2
  convolutions and an argmax over 4096 codes.

Random weights make the codes meaningless, so these tests check what does not depend on
them: the loading path, the preprocessing, the chunking and rates, the token format, the
refusals, and that inference stays off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time

import funasr  # noqa: E402,F401 - the tier's environment must have it
import numpy as np
import onnx  # noqa: E402
import onnxruntime  # noqa: E402,F401
import pytest
import torch  # noqa: E402

from adapters.step_audio.audio_tokens import (  # noqa: E402
    TOKENS_PER_SECOND,
    audio_token_string,
    split_audio_tokens,
)
from engines.base import EngineContext, EngineUnavailable, InvalidInput  # noqa: E402
from engines.step_audio.tokenizer import (  # noqa: E402
    CENTROIDS_FILE,
    PARAFORMER_DIR,
    SPEECH_TOKENIZER_FILE,
    StepAudioTokenizer,
    mel_filterbank,
    preprocess,
    trim_silence,
    whisper_log_mel,
)
from engines.workers import Worker  # noqa: E402

ENCODER_WIDTH = 16
LINGUISTIC_HZ = 50 / 3
SEMANTIC_HZ = 25.0
_TOKEN = re.compile(r"<audio_(\d+)>")


# --------------------------------------------------------------------------- the replica


def _paraformer_config() -> dict:
    return {
        "model": "ParaformerStreaming",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {
            "output_size": ENCODER_WIDTH,
            "attention_heads": 2,
            "linear_units": 32,
            "num_blocks": 2,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe_online",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "chunk_size": [12, 15],
            "stride": [8, 10],
            "pad_left": [0, 0],
            "encoder_att_look_back_factor": [4, 4],
            "decoder_att_look_back_factor": [1, 1],
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": 2,
            "linear_units": 32,
            "num_blocks": 1,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "att_layer_num": 1,
            "kernel_size": 11,
            "sanm_shfit": 5,
        },
        "predictor": "CifPredictorV2",
        "predictor_conf": {
            "idim": ENCODER_WIDTH,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
        },
        "frontend": "WavFrontendOnline",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": 80,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": 7,
            "lfr_n": 6,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "normalize": None,
    }


def _write_paraformer(folder, rng) -> None:
    import funasr.models.paraformer_streaming.model  # noqa: F401  (registers the class)
    import yaml
    from funasr.register import tables

    folder.mkdir(parents=True)
    config = _paraformer_config()
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    tokens = ["<blank>", "<s>", "</s>", "a", "b", "c", "<unk>"]
    (folder / "tokens.json").write_text(json.dumps(tokens))
    dim = config["frontend_conf"]["n_mels"] * config["frontend_conf"]["lfr_m"]
    shift = " ".join(f"{v:.4f}" for v in rng.normal(0, 1, dim))
    scale = " ".join(f"{v:.4f}" for v in rng.uniform(0.05, 0.2, dim))
    (folder / "am.mvn").write_text(
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {scale} ]\n</Nnet>\n"
    )
    model_class = tables.model_classes.get(config["model"])
    model_conf = dict(config["model_conf"])
    for key in (
        "encoder",
        "encoder_conf",
        "decoder",
        "decoder_conf",
        "predictor",
        "predictor_conf",
    ):
        model_conf[key] = config[key]
    torch.manual_seed(0)
    model = model_class(**model_conf, input_size=dim, vocab_size=len(tokens))
    torch.save(model.state_dict(), folder / "model.pt")


def _write_speech_tokenizer(path, rng, channels: int = 8) -> None:
    from onnx import TensorProto, helper, numpy_helper

    def weight(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Cast", ["feats_length"], ["length64"], to=TensorProto.INT64),
        helper.make_node("Slice", ["feats", "zero", "length64", "time_axis"], ["mel"]),
        helper.make_node("Conv", ["mel", "w1", "b1"], ["c1"], strides=[2], pads=[1, 1]),
        helper.make_node("Tanh", ["c1"], ["h1"]),
        helper.make_node("Conv", ["h1", "w2", "b2"], ["c2"], strides=[2], pads=[1, 1]),
        helper.make_node("Tanh", ["c2"], ["h2"]),
        helper.make_node("Transpose", ["h2"], ["frames"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["frames", "codebook"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["indices"], axis=2, keepdims=0),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "time_axis"),
        weight("w1", channels, 128, 3),
        weight("b1", channels),
        weight("w2", channels, channels, 3),
        weight("b2", channels),
        weight("codebook", channels, 4096),
    ]
    graph = helper.make_graph(
        nodes,
        "speech_tokenizer_v1_replica",
        [
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
            helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1]),
        ],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, "codes"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_replica(root, cache_dir) -> None:
    """A Step-Audio-Tokenizer folder with tiny random weights, in the real layout.

    The real centroids are k-means over Paraformer encoder frames. Random vectors would sit
    far from the tiny encoder's frames (which share a large common component), so nearly
    every frame would pick the same one. The replica's centroids are instead 1024 of its
    own encoder's frames (what k-means++ starts from) plus a little noise.
    """
    rng = np.random.default_rng(0)
    _write_paraformer(root / PARAFORMER_DIR, rng)
    _write_speech_tokenizer(root / SPEECH_TOKENIZER_FILE, rng)
    np.save(root / CENTROIDS_FILE, np.zeros((1024, ENCODER_WIDTH), dtype=np.float32))
    engine = _engine(root, cache_dir, device="cpu", cpu_threads=1)
    engine.load()
    audio = np.concatenate(
        [_speech_like(3.0, 16_000, seed) * gain for seed, gain in ((2, 1.0), (3, 0.1), (4, 0.5))]
    )
    noise = rng.normal(0, 0.3, audio.size).astype(np.float32)
    frames = np.concatenate(
        [engine.linguistic_features(preprocess(x, 16_000)).numpy() for x in (audio, noise)]
    )
    picks = frames[rng.integers(0, len(frames), 1024)]
    centroids = picks + rng.normal(0, 0.05, picks.shape)
    np.save(root / CENTROIDS_FILE, centroids.astype(np.float32))
    engine.unload()


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("Step-Audio-Tokenizer")
    build_replica(root, tmp_path_factory.mktemp("build"))
    return root


def _engine(model_dir, tmp_path, **options) -> StepAudioTokenizer:
    context = EngineContext(
        worker=Worker("step-audio-tokenizer", 1, 4), cache_dir=tmp_path, registry=None
    )
    return StepAudioTokenizer("step-audio-tokenizer", context, model_dir=str(model_dir), **options)


#: scripts/gpu_check runs this module with "cuda": the same replica on the GPU.
DEVICE = os.environ.get("GATEWAY_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def engine(replica, tmp_path_factory):
    engine = _engine(replica, tmp_path_factory.mktemp("cache"), device=DEVICE, cpu_threads=1)
    engine.load()
    yield engine
    engine.unload()


def test_the_speech_tokenizer_runs_on_the_engines_device(engine):
    """On a GPU, ONNX Runtime's CUDA provider (it falls back to the CPU silently)."""
    providers = engine._onnx.get_providers()
    if DEVICE.startswith("cuda"):
        assert engine.device.startswith("cuda") and providers[0] == "CUDAExecutionProvider"
    else:
        assert providers == ["CPUExecutionProvider"]


def _speech_like(seconds: float, rate: int, seed: int = 1) -> np.ndarray:
    """A few harmonics with a wobbling pitch plus noise: varied enough to vary the codes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (0.2 * voice + 0.02 * rng.normal(size=t.size)).astype(np.float32)


def _assert_format_and_rate(tokens, seconds: float) -> None:
    text = tokens.text
    # Only <audio_N> tokens, nothing between them.
    assert _TOKEN.sub("", text) == ""
    values = [int(v) for v in _TOKEN.findall(text)]
    assert values and len(values) % 5 == 0
    for start in range(0, len(values), 5):
        group = values[start : start + 5]
        assert all(0 <= v <= 1023 for v in group[:2]), group
        assert all(1024 <= v <= 5119 for v in group[2:]), group
    # The strict parser agrees and gives back the raw streams' whole groups.
    linguistic, semantic = split_audio_tokens(text)
    groups = len(values) // 5
    assert linguistic == tokens.linguistic[: 2 * groups]
    assert semantic == tokens.semantic[: 3 * groups]
    assert text == audio_token_string(tokens.linguistic, tokens.semantic)
    # Each stream runs at its rate, within upstream's +-2 frames.
    assert abs(len(tokens.linguistic) - seconds * LINGUISTIC_HZ) <= 2, len(tokens.linguistic)
    assert abs(len(tokens.semantic) - seconds * SEMANTIC_HZ) <= 2, len(tokens.semantic)
    # So the prompt holds ~41.67 tokens a second, less a ragged tail of whole groups.
    low = min((seconds * LINGUISTIC_HZ - 2) // 2, (seconds * SEMANTIC_HZ - 2) // 3)
    high = min((seconds * LINGUISTIC_HZ + 2) // 2, (seconds * SEMANTIC_HZ + 2) // 3)
    assert 5 * low <= len(values) <= 5 * high
    assert abs(len(values) - seconds * TOKENS_PER_SECOND) <= 5 * 2


# --------------------------------------------------------------------------- tests


async def test_two_seconds_become_whole_groups_at_41_7_tokens_a_second(engine):
    seconds = 2.0
    tokens = await engine.tokenize(_speech_like(seconds, 16_000), 16_000)
    assert tokens.duration == pytest.approx(seconds)
    _assert_format_and_rate(tokens, seconds)
    assert len(set(tokens.linguistic)) > 1 and len(set(tokens.semantic)) > 1
    assert await engine.token_string(_speech_like(seconds, 16_000), 16_000) == tokens.text


async def test_8_khz_audio_is_upsampled_instead_of_failing(engine):
    # Upstream asserts on any rate below 16 kHz (reference §13.1).
    seconds = 2.0
    tokens = await engine.tokenize(_speech_like(seconds, 8_000), 8_000)
    assert tokens.duration == pytest.approx(seconds, abs=0.01)
    _assert_format_and_rate(tokens, seconds)


async def test_stereo_44_1_khz_is_downmixed_and_resampled(engine):
    seconds = 1.0
    mono = _speech_like(seconds, 44_100)
    tokens = await engine.tokenize(np.stack([mono, 0.5 * mono]), 44_100)
    _assert_format_and_rate(tokens, seconds)


async def test_audio_over_30_seconds_is_cut_into_chunks(engine):
    # vq06 runs per <=30 s chunk; the 0.5 s tail is its own chunk, not dropped.
    seconds = 30.5
    tokens = await engine.tokenize(_speech_like(seconds, 16_000), 16_000)
    assert abs(len(tokens.semantic) - seconds * SEMANTIC_HZ) <= 4
    assert abs(len(tokens.linguistic) - seconds * LINGUISTIC_HZ) <= 2


async def test_loudness_does_not_change_the_tokens(engine):
    # Peak normalisation to 0.999 happens before both tokenizers. The Paraformer frontend
    # dithers its fbank (FunASR's default, dither=1.0 on the int16 scale, as upstream), so
    # the linguistic codes may differ in a rare frame; the ONNX path is deterministic.
    audio = _speech_like(1.0, 16_000)
    quiet = await engine.tokenize(audio * 0.25, 16_000)
    loud = await engine.tokenize(audio, 16_000)
    assert quiet.semantic == loud.semantic
    assert len(quiet.linguistic) == len(loud.linguistic)
    same = sum(a == b for a, b in zip(quiet.linguistic, loud.linguistic))
    assert same >= 0.8 * len(loud.linguistic)


@pytest.mark.parametrize(
    ("samples", "rate"),
    [(0, 16_000), (479, 16_000), (100, 8_000), (239, 8_000)],
    ids=["empty", "29.9ms", "12.5ms-8k", "29.9ms-8k"],
)
async def test_empty_or_under_30_ms_is_refused(engine, samples, rate):
    with pytest.raises(InvalidInput) as info:
        await engine.tokenize(np.zeros(samples, dtype=np.float32), rate)
    assert info.value.param == "input_audio"
    assert engine.worker.busy == 0  # refused before taking the worker


async def test_30_ms_is_enough(engine):
    tokens = await engine.tokenize(_speech_like(0.03, 16_000), 16_000)
    assert tokens.semantic and tokens.linguistic  # too short for a whole group, but coded
    assert tokens.text == ""


async def test_nan_is_refused(engine):
    audio = _speech_like(0.5, 16_000)
    audio[100] = np.nan
    with pytest.raises(InvalidInput):
        await engine.tokenize(audio, 16_000)


async def test_inference_runs_on_the_worker_and_the_loop_stays_responsive(engine, monkeypatch):
    # The blocking call is held open until the event loop has ticked several times while
    # the worker is busy: proof that the loop runs during inference, whatever its speed.
    threads: list[int] = []
    release = threading.Event()
    original = engine._tokenize

    def held(*args):
        threads.append(threading.get_ident())
        assert release.wait(10), "the event loop never ticked while the worker was busy"
        return original(*args)

    monkeypatch.setattr(engine, "_tokenize", held)
    ticks_while_busy = 0
    gaps: list[float] = []

    async def ticker():
        nonlocal ticks_while_busy
        last = time.perf_counter()
        while not release.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            if engine.worker.busy == 1:
                ticks_while_busy += 1
                if ticks_while_busy >= 5:
                    release.set()

    tick = asyncio.create_task(ticker())
    tokens = await engine.tokenize(_speech_like(8.0, 16_000), 16_000)
    await tick

    assert threads and threads[0] != threading.get_ident()
    assert ticks_while_busy >= 5
    assert max(gaps) < 0.5, max(gaps)
    _assert_format_and_rate(tokens, 8.0)
    assert engine.worker.busy == 0


def test_missing_files_make_the_engine_unavailable(tmp_path):
    engine = _engine(tmp_path, tmp_path, device="cpu")
    with pytest.raises(EngineUnavailable, match="not a Step-Audio-Tokenizer folder"):
        engine.load()


def test_centroids_of_the_wrong_width_are_refused(replica, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(replica, copy)
    np.save(copy / CENTROIDS_FILE, np.zeros((1024, ENCODER_WIDTH + 1), dtype=np.float32))
    engine = _engine(copy, tmp_path, device="cpu")
    with pytest.raises(EngineUnavailable, match="centroids"):
        engine.load()


def test_a_checkpoint_missing_encoder_weights_is_refused(replica, tmp_path):
    # FunASR itself only prints a warning and keeps the random initial weights.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(replica, copy)
    weights = copy / PARAFORMER_DIR / "model.pt"
    state = torch.load(weights, weights_only=True)
    del state[next(k for k in state if k.startswith("encoder."))]
    torch.save(state, weights)
    engine = _engine(copy, tmp_path, device="cpu")
    with pytest.raises(EngineUnavailable, match="encoder weights"):
        engine.load()


def test_cuda_without_a_gpu_is_unavailable(replica, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    engine = _engine(replica, tmp_path, device="cuda")
    with pytest.raises(EngineUnavailable, match="CUDA"):
        engine.load()
    auto = _engine(replica, tmp_path)  # "auto" falls back to the CPU
    auto.load()
    assert auto.device == "cpu"


# --------------------------------------------------------------------------- features


def test_mel_filterbank_is_slaney_normalised():
    filters = mel_filterbank(128)
    assert filters.shape == (128, 201)
    assert (filters >= 0).all()
    # Slaney normalisation makes each triangle's area (in Hz) 1; the 40 Hz FFT bins
    # sample the wide upper triangles well enough to see it.
    areas = filters.sum(axis=1) * 40.0
    assert np.allclose(areas[80:], 1.0, atol=0.1)
    peaks = filters.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()


def test_whisper_log_mel_shape_and_range():
    mel = whisper_log_mel(_speech_like(2.0, 16_000))
    assert mel.shape == (128, 200)  # one frame per 160 samples
    assert mel.dtype == np.float32
    assert mel.max() - mel.min() <= 2.0 + 1e-6  # floored 8 decades below the peak, / 4


def test_preprocess_peak_normalises_and_resamples():
    audio = preprocess(_speech_like(1.0, 8_000) * 0.1, 8_000)
    assert abs(len(audio) - 16_000) <= 2
    assert np.max(np.abs(audio)) == pytest.approx(0.999, abs=1e-4)
    silence = preprocess(np.full(16_000, 0.001, dtype=np.float32), 16_000)
    assert np.max(np.abs(silence)) == pytest.approx(0.0999, abs=1e-4)  # floor at 0.01


def _padded(speech: np.ndarray, before: float, after: float, rate: int = 16_000) -> np.ndarray:
    quiet = lambda seconds: np.zeros(int(seconds * rate), np.float32)  # noqa: E731
    return np.concatenate([quiet(before), speech, quiet(after)])


@pytest.mark.parametrize("before", [0.0, 0.02, 1.0])
def test_trim_keeps_50_ms_before_the_speech_and_a_fixed_length_after_it(before):
    """Reference §3.2: 50 ms kept before, 220 ms after, the speech in whole 240-sample steps."""
    speech = _speech_like(1.3, 16_000)
    trimmed = trim_silence(preprocess(_padded(speech, before, 2.0), 16_000))
    # Its length depends on the speech alone: the speech (as librosa's 512-sample frames
    # see it, so up to a frame more) in whole 240-sample steps, plus 270 ms.
    assert len(trimmed) % 240 == 0
    assert len(speech) + 4320 <= len(trimmed) <= len(speech) + 4320 + 512 + 240, len(trimmed)
    # Speech starts 50 ms in (librosa's frames are 128 samples), zeros before it; a
    # recording that starts sooner is padded with zeros, not cut.
    onset = int(np.argmax(np.abs(trimmed) > 0.05))
    assert abs(onset - 800) <= 3 * 128, onset
    assert not np.any(trimmed[: max(0, onset - 3 * 128)])


def test_trim_pads_a_recording_that_ends_with_its_speech():
    speech = _speech_like(0.8, 16_000)
    trimmed = trim_silence(preprocess(_padded(speech, 0.5, 0.0), 16_000))
    assert not np.any(trimmed[-3000:])  # the 220 ms after the speech are added silence
    assert np.max(np.abs(trimmed)) == pytest.approx(0.999, abs=1e-3)


async def test_prompt_codes_trim_the_silence_the_chat_path_keeps(engine):
    """A TTS prompt's codes cover its speech; a spoken question's cover all of it."""
    speech = _speech_like(1.5, 16_000, seed=4)
    recording = _padded(speech, 2.0, 2.0)
    heard = await engine.tokenize(recording, 16_000)
    prompt = await asyncio.to_thread(engine.prompt_codes, recording, 16_000)
    _assert_format_and_rate(heard, 5.5)
    kept = len(trim_silence(preprocess(recording, 16_000))) / 16_000
    assert kept < 2.0
    _assert_format_and_rate(prompt, kept)
    # The same speech with less silence around it gives a prompt of the same length.
    closer = await asyncio.to_thread(engine.prompt_codes, _padded(speech, 0.3, 0.6), 16_000)
    assert abs(len(split_audio_tokens(closer.text)[1]) - len(split_audio_tokens(prompt.text)[1])) <= 3
