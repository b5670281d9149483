"""Step-Audio-TTS-3B engine on a tiny random-weight replica of its download folder.

The real weights (a 7 GB Step-1 LM and two CosyVoice-300M vocoders) cannot be downloaded
here, so ``replica`` writes a stand-in with the same file layout and formats: a tiny LM
saved with ``save_pretrained`` (a standard architecture; the engine loads it through
``AutoModelForCausalLM`` like the real one) plus its tokenizer with the Step-1 control ids
(``<s>`` 1, ``<|EOT|>`` 3, ``<|BOT|>`` 4); per CosyVoice folder a ``cosyvoice.yaml`` naming
the real CosyVoice flow and HiFT classes at toy sizes, their random ``flow.pt``/``hift.pt``,
and a ``campplus.onnx`` mapping ``[1, T, 80]`` fbank frames to a 192-d x-vector; and a
speakers folder with ``speakers_info.json`` and prompt wavs. The audio is noise, so the
tests check the pipeline (shapes, rates, ranges, which model ran), not speech quality.
Generation is capped with ``max_new_tokens`` so each sentence takes well under a second.

The Step-Audio tokenizer is replaced by a fake of its one function the engine uses: prompt
audio in, audio token ids (65536+N, about 41.7 per second) out.
"""

from __future__ import annotations

import io
import json
import math
import os
import wave
from pathlib import Path

import cosyvoice.flow.flow  # noqa: E402,F401 - the tier's environment must have these
import hyperpyyaml  # noqa: E402,F401
import kaldi_native_fbank  # noqa: E402,F401
import matcha.utils.audio  # noqa: E402,F401
import numpy as np
import onnx  # noqa: E402
import pytest
import torch  # noqa: E402
import transformers  # noqa: E402,F401

from engines.base import EngineContext, InvalidInput, SpeechRequest  # noqa: E402
from engines.step_audio import tts as tts_module  # noqa: E402
from engines.step_audio.tts import (  # noqa: E402
    AUDIO_TOKEN_OFFSET,
    SAMPLE_RATE,
    SYS_PROMPT_RAP,
    SYS_PROMPT_WITH_SPEAKER,
    SYS_PROMPT_WITHOUT_SPEAKER,
    StepAudioTTS,
    build_tts_prompt,
    codes_from_generation,
)
from engines.workers import Worker  # noqa: E402

LM_VOCAB = AUDIO_TOKEN_OFFSET + 5120  # text ids, then the 5120 audio codes

TINY_COSYVOICE_YAML = """\
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1024
    num_mels: 80
    sampling_rate: 22050
    hop_size: 256
    win_size: 1024
    fmin: 0
    fmax: 8000
    center: False
flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: 16
    output_size: 80
    spk_embed_dim: 192
    output_type: 'mel'
    vocab_size: 5120
    input_frame_rate: 25
    only_mask_loss: True
    encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        input_size: 16
        output_size: 16
        attention_heads: 2
        linear_units: 32
        num_blocks: 1
        dropout_rate: 0.0
        positional_dropout_rate: 0.0
        attention_dropout_rate: 0.0
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        use_cnn_module: False
        macaron_style: False
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: 80
        sampling_ratios: [1]
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [16]
            dropout: 0.0
            attention_head_dim: 8
            n_blocks: 1
            num_mid_blocks: 1
            num_heads: 2
            act_fn: 'gelu'
hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: 16
    nb_harmonics: 8
    sampling_rate: 22050
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 8]
    upsample_kernel_sizes: [16, 16]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3]
    resblock_dilation_sizes: [[1, 3, 5]]
    source_resblock_kernel_sizes: [7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: 16
"""


# --------------------------------------------------------------------------- replica


def wav_bytes(seconds: float, rate: int, freq: float = 220.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * math.pi * freq * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def write_lm(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<s>", "</s>", "<|EOT|>", "<|BOT|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [SYS_PROMPT_WITH_SPEAKER, SYS_PROMPT_RAP, "system\nhuman\nassistant\n", "Hello there."]
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="<|EOT|>", unk_token="<unk>"
    )
    assert fast.convert_tokens_to_ids(["<s>", "<|EOT|>", "<|BOT|>"]) == [1, 3, 4]
    fast.save_pretrained(folder)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=LM_VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=3,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)


def write_campplus(path: Path) -> None:
    """A stand-in speaker encoder: mean over frames, then a random 80x192 projection."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((80, 192)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "weight"], ["output"]),
        ],
        "campplus",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "frames", 80])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 192])],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


def write_cosyvoice(folder: Path, seed: int) -> None:
    from hyperpyyaml import load_hyperpyyaml

    folder.mkdir()
    (folder / "cosyvoice.yaml").write_text(TINY_COSYVOICE_YAML)
    torch.manual_seed(seed)
    configs = load_hyperpyyaml(TINY_COSYVOICE_YAML)
    torch.save(configs["flow"].state_dict(), folder / "flow.pt")
    torch.save(configs["hift"].state_dict(), folder / "hift.pt")
    write_campplus(folder / "campplus.onnx")


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tts")
    model = root / "Step-Audio-TTS-3B"
    model.mkdir()
    write_lm(model)
    write_cosyvoice(model / "CosyVoice-300M-25Hz", seed=1)
    write_cosyvoice(model / "CosyVoice-300M-25Hz-Music", seed=2)
    speakers = root / "speakers"
    speakers.mkdir()
    info = {"Tingting": "Hello there.", "TingtingRAP": "（RAP）Yo, hello there."}
    (speakers / "speakers_info.json").write_text(json.dumps(info, ensure_ascii=False))
    (speakers / "Tingting_prompt.wav").write_bytes(wav_bytes(1.0, 44_100))
    (speakers / "TingtingRAP_prompt.wav").write_bytes(wav_bytes(1.2, 48_000, freq=330.0))
    return model, speakers


class FakeTokenizer:
    """The one Step-Audio tokenizer function the engine uses: prompt audio -> code ids."""

    def __init__(self) -> None:
        self.rates: list[int] = []

    def prompt_codes(self, samples: np.ndarray, sample_rate: int) -> list[int]:
        self.rates.append(sample_rate)
        count = max(1, int(len(samples) / sample_rate * 41.67))
        return [AUDIO_TOKEN_OFFSET + (i * 37) % 5120 for i in range(count)]


@pytest.fixture(scope="module")
def coder() -> FakeTokenizer:
    return FakeTokenizer()


#: scripts/gpu_check runs this module with "cuda": the same replica on the GPU.
DEVICE = os.environ.get("GATEWAY_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def engine(replica, coder, tmp_path_factory):
    model, speakers = replica
    context = EngineContext(
        worker=Worker("step-audio-tts"), cache_dir=tmp_path_factory.mktemp("cache"), registry=None
    )
    engine = StepAudioTTS(
        "step-audio-tts",
        context,
        model_path=str(model),
        speakers_dir=str(speakers),
        prompt_coder=coder,
        device=DEVICE,
        max_new_tokens=24,
    )
    engine.load()
    yield engine
    engine.unload()


async def collect(engine, **request):
    request.setdefault("language", "en")
    return [chunk async for chunk in engine.synthesize(SpeechRequest(**request))]


def assert_audio(chunk) -> None:
    assert chunk.sample_rate == SAMPLE_RATE == 22_050
    assert chunk.samples.dtype == np.float32
    assert chunk.samples.ndim == 1 and chunk.samples.size > 0
    assert np.isfinite(chunk.samples).all()
    assert np.abs(chunk.samples).max() <= 0.99


# --------------------------------------------------------------------------- engine


async def test_two_sentences_stream_one_chunk_each(engine, coder):
    assert {v.id for v in engine.voices()} == {"Tingting"}
    assert coder.rates[:2] == [44_100, 48_000]  # prompts go to the tokenizer at their rate
    chunks = await collect(engine, text="Hello there. How are you?", voice="Tingting")
    assert [c.text for c in chunks] == ["Hello there.", "How are you?"]
    for chunk in chunks:
        assert_audio(chunk)


async def test_tags_repeat_on_every_sentence(engine):
    chunks = await collect(
        engine, text="One. Two.", voice="Tingting", instructions="speak happily, in Cantonese"
    )
    assert [c.text for c in chunks] == ["(高兴1)(粤语)One.", "(高兴1)(粤语)Two."]


def test_weights_are_bf16_on_a_gpu_and_float32_on_the_cpu(engine):
    """Upstream runs the LM and the flow in bf16 on CUDA (transformers before 4.56 takes
    ``torch_dtype`` and ignores ``dtype``: float32 weights, twice the memory)."""
    expected = torch.bfloat16 if DEVICE.startswith("cuda") else torch.float32
    assert engine._device.type == torch.device(DEVICE).type
    assert next(engine._lm.parameters()).dtype == expected
    for vocoder in (engine._common, engine._music):
        assert next(vocoder.flow.parameters()).dtype == expected


async def test_unknown_voice_is_invalid_voice(engine):
    with pytest.raises(InvalidInput) as info:
        await collect(engine, text="Hi.", voice="nobody")
    assert info.value.param == "voice"


async def test_rap_uses_the_music_model(engine, monkeypatch):
    used = []
    for attr in ("_common", "_music"):
        vocoder = getattr(engine, attr)
        original = vocoder.synthesize

        def spy(codes, prompt, _original=original, _attr=attr):
            used.append((_attr, prompt.prompt_text))
            return _original(codes, prompt)

        monkeypatch.setattr(vocoder, "synthesize", spy)
    chunks = await collect(engine, text="(RAP)Yo yo.", voice="Tingting")
    assert used == [("_music", "（RAP）Yo, hello there.")]  # the TingtingRAP prompt
    assert_audio(chunks[0])
    used.clear()
    await collect(engine, text="Plain.", voice="Tingting")
    assert used == [("_common", "Hello there.")]


async def test_register_voice_then_speak_with_it(engine, coder):
    info = await engine.register_voice("myvoice", wav_bytes(1.0, 8_000), "My own words.")
    assert info.id == "myvoice"
    assert coder.rates[-1] == 16_000  # an 8 kHz prompt is upsampled before tokenizing
    assert "myvoice" in {v.id for v in engine.voices()}
    prompts = []
    original = engine.generate_codes
    engine.generate_codes = lambda ids: prompts.append(ids) or original(ids)
    try:
        chunks = await collect(engine, text="Cloned speech.", voice="myvoice")
    finally:
        del engine.generate_codes
    assert_audio(chunks[0])
    system = engine._tokenizer.encode(f"system\n{SYS_PROMPT_WITHOUT_SPEAKER}")
    assert prompts[0][2 : 2 + len(system)] == system  # clones use the speaker-less prompt
    assert engine.remove_voice("myvoice")


async def test_register_voice_needs_a_transcript(engine):
    with pytest.raises(InvalidInput):
        await engine.register_voice("x", wav_bytes(0.5, 16_000), "  ")


# --------------------------------------------------------------------------- pure parts


class CharTokenizer:
    """encode(): BOS then one id per character (100 + code point)."""

    def encode(self, text: str) -> list[int]:
        return [1] + [100 + ord(ch) for ch in text]


def test_prompt_layout_matches_reference():
    tok = CharTokenizer()
    codes = [AUDIO_TOKEN_OFFSET + 7, AUDIO_TOKEN_OFFSET + 9]
    ids = build_tts_prompt(tok, "Hi", "Yo", "Tingting", codes)
    system = tok.encode("system\n" + SYS_PROMPT_WITH_SPEAKER.format("Tingting"))
    human, assistant = tok.encode("human\n"), tok.encode("assistant\n")
    body = lambda s: tok.encode("\n" + s)[len(tok.encode("\n")) :]  # noqa: E731
    assert body("Hi") == [100 + ord("H"), 100 + ord("i")]
    assert ids == (
        [1, 4, *system, 3]
        + [4, *human, *body("Yo"), 3]
        + [4, *assistant, *codes, 3]
        + [4, *human, *body("Hi"), 3]
        + [4, *assistant]
    )


def test_system_prompt_choice():
    assert tts_module.system_prompt("(RAP)yo", "Tingting") == SYS_PROMPT_RAP
    assert tts_module.system_prompt("(哼唱)la", "Tingting") == tts_module.SYS_PROMPT_HUMMING
    assert tts_module.system_prompt("(高兴1)(RAP)yo", "T") == SYS_PROMPT_WITH_SPEAKER.format("T")
    assert tts_module.system_prompt("hi", "") == SYS_PROMPT_WITHOUT_SPEAKER
    assert "使用[Tingting]的声音" in tts_module.system_prompt("hi", "Tingting")


def test_prompt_codes_accept_ids_codes_and_token_streams():
    from types import SimpleNamespace

    samples = np.zeros(16_000, np.float32)
    as_ids = lambda s, r: [AUDIO_TOKEN_OFFSET + 1, AUDIO_TOKEN_OFFSET + 2]  # noqa: E731
    as_codes = lambda s, r: [1, 2]  # noqa: E731
    assert tts_module._prompt_codes(as_ids, samples, 16_000) == [65537, 65538]
    assert tts_module._prompt_codes(as_codes, samples, 16_000) == [65537, 65538]
    streams = SimpleNamespace(linguistic=[1, 2], semantic=[3, 4, 5])
    tokens = SimpleNamespace(prompt_codes=lambda s, r: streams)
    expected = [1, 2, 1024 + 3, 1024 + 4, 1024 + 5]
    assert tts_module._prompt_codes(tokens, samples, 16_000) == [
        AUDIO_TOKEN_OFFSET + n for n in expected
    ]


def test_generation_ids_to_codes():
    assert codes_from_generation([AUDIO_TOKEN_OFFSET + 5, AUDIO_TOKEN_OFFSET + 6, 3]) == [5, 6]
    # Stopped by the length limit: the last code is kept (upstream drops it, bug 6).
    assert codes_from_generation([AUDIO_TOKEN_OFFSET + 5, AUDIO_TOKEN_OFFSET + 6]) == [5, 6]


def test_repetition_processor_bans_a_repeated_last_token():
    processor = tts_module._repetition_processor()
    scores = torch.zeros(2, 20)
    repeated = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 9], [1, 2, 3, 4, 5, 6, 7, 8, 10, 11]])
    out = processor(repeated, scores.clone())
    assert out[0, 9] == float("-inf") and torch.isfinite(out[0]).sum() == 19
    assert torch.isfinite(out[1]).all()
    short = processor(torch.tensor([[9, 9]]), torch.zeros(1, 20))
    assert torch.isfinite(short).all()


# --------------------------------------------------------------------------- spoken chat replies


@pytest.mark.parametrize(
    ("reply", "vocoder", "prefix"),
    [
        ("(RAP)Yo, I rap. Second line here. Third and last!", "_music", "(RAP)"),
        ("(高兴1)(四川话)今天天气好。我们出去玩。好不好？", "_common", "(高兴1)(四川话)"),
    ],
)
async def test_a_spoken_replys_leading_tags_reach_every_sentence(
    engine, monkeypatch, reply, vocoder, prefix
):
    """Step-Audio-Chat may open its reply with a tag; upstream voices the whole reply with
    it, so each sentence the gateway voices on its own carries it (the rap one on the
    music vocoder with the TingtingRAP prompt)."""
    from gateway.api.chat.voice import SpokenReply
    from tests.faults import EnginesRegistry

    heard, used = [], []
    original = engine.synthesize

    def recording(request):
        heard.append(request.text)
        return original(request)

    monkeypatch.setattr(engine, "synthesize", recording)
    for attr in ("_common", "_music"):
        vocoder_object = getattr(engine, attr)
        synthesize = vocoder_object.synthesize

        def spy(codes, prompt, _synthesize=synthesize, _attr=attr):
            used.append(_attr)
            return _synthesize(codes, prompt)

        monkeypatch.setattr(vocoder_object, "synthesize", spy)

    spoken = SpokenReply(EnginesRegistry(speech=engine), "step-audio-tts", "Tingting", "wav")
    spoken.start()
    for piece in reply:  # streamed the way the chat model writes it
        spoken.feed(piece)
    spoken.close()
    audio = b"".join([chunk async for chunk in spoken.drain()])
    await spoken.aclose()
    assert len(heard) == 3 and audio
    assert all(text.startswith(prefix) for text in heard), heard
    assert heard[0] == reply[: len(heard[0])]  # the first sentence as written
    assert used == [vocoder] * 3
