"""Step-Audio-TTS-3B in-process: the Step-1 3B LM writes audio codes, CosyVoice voices them.

Loads the folder as downloaded::

    Step-Audio-TTS-3B/
      config.json, modeling_*.py, *.safetensors, tokenizer files   the Step-1 3B LM
      lib/liboptimus_ths-*.so                                      optional attention kernels
      CosyVoice-300M-25Hz/        cosyvoice.yaml campplus.onnx flow.pt hift.pt
      CosyVoice-300M-25Hz-Music/  the same, used for (RAP) and (哼唱)

and the speakers from a folder given as an option (``speakers_dir``; upstream reads
``speakers/`` relative to the working directory, bug 7): ``speakers_info.json`` maps ids to
prompt transcripts, ``{id}_prompt.wav`` holds each prompt.

Per request, as upstream ``tts.py`` does:

* ``voice``/``instructions``/``speed`` become a speaker and leading tags through
  :func:`adapters.step_audio.speech_controls.speech_controls` (music tag first, at most one).
* The input is split into sentences; each is synthesised on its own with the request's
  tags repeated in front (reference item 11), and yielded as soon as it is voiced.
* The LM prompt is upstream's exactly: ``[1]``, a system turn (the speaker-naming prompt for a
  built-in voice, the RAP/humming prompt for music, the speaker-less one for a cloned
  voice), the speaker's transcript and prompt audio codes as a one-shot example, the
  target text, and an open assistant turn; texts are encoded as ``enc("\\n"+text)`` minus
  ``enc("\\n")``. Token ids 1/4/3 come from :mod:`adapters.step_audio.special_tokens`.
* Sampling: temperature 0.7, ``max_length`` 8192 (prompt + output), the repetition-aware
  logits processor (window 10, threshold 0.1), the model's own top-k/top-p. A trailing EOS
  is dropped and ids minus 65536 are the dual-codebook codes. Unlike upstream (bug 6) a
  last token that is *not* EOS (the length limit was hit) is kept.
* Flow: the speaker's codes are prepended, the prompt mel (80 bins at 22.05 kHz, from the
  yaml's ``feat_extractor``) conditions the first frames, the campplus x-vector (Kaldi
  fbank of the 16 kHz prompt) the speaker; 10 Euler steps. The output frame count is
  ``codes / input_frame_rate * 22050 / 256`` with the yaml's frame rate, and the token
  features are stretched to it by linear interpolation of the prompt and target parts
  separately, as Step-Audio's copy of CosyVoice does. HiFT turns the mel into 22 050 Hz
  audio, clamped to ±0.99. ``(RAP)``/``(哼唱)`` leading the text select the Music model.

Prompt codes (the speaker's audio as LM ids 65536+N) come from the Step-Audio tokenizer.
The engine takes any object with a ``prompt_codes(samples, sample_rate)`` method (or the
upstream ``wav2token(samples, sample_rate)``, whose first result is used, or a plain
callable) as ``prompt_coder``; it is needed at load (for the built-in speakers) and by
:meth:`StepAudioTTS.register_voice`, and is called on the engine's worker thread. It may
return LM ids (65536+N), codes N (0-5119), or an object with ``linguistic`` and
``semantic`` code lists (the tokenizer engine's ``AudioTokens``), interleaved 2:3 here.

Libraries: the flow and vocoder classes are CosyVoice's own, built from ``cosyvoice.yaml``
with hyperpyyaml (PyPI ``cosyvoice-package`` and ``matcha-tts-package``, installed without
their pinned dependencies; neither needs torchaudio for these modules). Audio is resampled
with PyAV (FFmpeg's swresample) where upstream uses torchaudio, and the campplus fbank is
computed with ``kaldi-native-fbank`` where upstream uses ``torchaudio.compliance.kaldi``.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import sys
import threading
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence

import numpy as np

from adapters.step_audio.special_tokens import BOS_TOKEN_ID, BOT_TOKEN_ID, EOT_TOKEN_ID
from adapters.step_audio.speech_controls import (
    MUSIC_TAGS,
    SpeechControls,
    selectable_voices,
    speech_controls,
)
from adapters.text.sentences import split_sentences
from adapters.voices import VoiceNotFound

from ..base import (
    AudioChunk,
    EngineUnavailable,
    InvalidInput,
    SpeechEngine,
    SpeechRequest,
    VoiceInfo,
)

SAMPLE_RATE = 22_050
TOKENIZER_RATE = 16_000
AUDIO_TOKEN_OFFSET = 65_536
CODEBOOK_SIZE = 5_120  # 1024 linguistic + 4096 semantic codes
MAX_LENGTH = 8_192
TEMPERATURE = 0.7
REPETITION_WINDOW = 10
REPETITION_THRESHOLD = 0.1
FLOW_STEPS = 10

COMMON_MODEL = "CosyVoice-300M-25Hz"
MUSIC_MODEL = "CosyVoice-300M-25Hz-Music"

_TAGS_PROMPT = (
    "作为一名卓越的声优演员，你的任务是根据文本中（）或()括号内标注的情感、语种或方言、音乐哼唱、"
    "语音调整等标签，以丰富细腻的情感和自然顺畅的语调来朗读文本。\n"
    '# 情感标签涵盖了多种情绪状态，包括但不限于：\n- "高兴1"\n- "高兴2"\n- "生气1"\n- "生气2"\n'
    '- "悲伤1"\n- "撒娇1"\n\n'
    '# 语种或方言标签包含多种语言或方言，包括但不限于：\n- "中文"\n- "英文"\n- "韩语"\n- "日语"\n'
    '- "四川话"\n- "粤语"\n- "广东话"\n\n'
    '# 音乐哼唱标签包含多种类型歌曲哼唱，包括但不限于：\n- "RAP"\n- "哼唱"\n\n'
    '# 语音调整标签，包括但不限于：\n- "慢速1"\n- "慢速2"\n- "快速1"\n- "快速2"\n\n'
    "请在朗读时，{speaker}根据这些情感标签的指示，调整你的情感、语气、语调和哼唱节奏，"
    "以确保文本的情感和意义得到准确而生动的传达，如果没有()或（）括号，则根据文本语义内容自由演绎。"
)
#: The four system prompts of upstream ``tts.py``.
SYS_PROMPT_WITH_SPEAKER = _TAGS_PROMPT.format(speaker="使用[{}]的声音，")
SYS_PROMPT_WITHOUT_SPEAKER = _TAGS_PROMPT.format(speaker="")
SYS_PROMPT_RAP = "请参考对话历史里的音色，用RAP方式将文本内容大声说唱出来。"
SYS_PROMPT_HUMMING = "请参考对话历史里的音色，用哼唱的方式将文本内容大声唱出来。"

#: Upstream's ``detect_instruction_name``: the first bracket group, at the very start only.
_FIRST_TAG = re.compile(r"^([（\(][^\(\)()]*[）\)]).*$", re.DOTALL)

#: Module paths Step-Audio's vendored CosyVoice uses that the PyPI packaging lays out
#: differently; a yaml naming them resolves to the packaged modules.
_MODULE_ALIASES = {
    "cosyvoice.matcha.audio": "matcha.utils.audio",
    "cosyvoice.utils.audio": "matcha.utils.audio",
    "cosyvoice.matcha.decoder": "matcha.models.components.decoder",
    "cosyvoice.matcha.flow_matching": "matcha.models.components.flow_matching",
    "cosyvoice.matcha.transformer": "matcha.models.components.transformer",
}


def instruction_name(text: str) -> str:
    """The first leading tag without brackets (``"RAP"`` for ``"(RAP)yo"``), else ``""``."""
    match = _FIRST_TAG.match(text)
    return match.group(1).strip("()（）") if match else ""


def system_prompt(text: str, speaker: str) -> str:
    """The system prompt upstream picks for ``text`` spoken by ``speaker`` ("" for a clone)."""
    if instruction_name(text) in MUSIC_TAGS:
        return SYS_PROMPT_HUMMING if "哼唱" in text else SYS_PROMPT_RAP
    if speaker:
        return SYS_PROMPT_WITH_SPEAKER.format(speaker)
    return SYS_PROMPT_WITHOUT_SPEAKER


def build_tts_prompt(
    tokenizer: Any, text: str, prompt_text: str, speaker: str, prompt_code: Sequence[int]
) -> list[int]:
    """The TTS-3B prompt ids for ``text`` (as upstream builds them).

    ``tokenizer.encode`` is called as upstream calls it (its default special tokens), so
    whatever the Step-1 tokenizer adds is reproduced; ``"\\n"+text`` minus ``"\\n"`` keeps a
    sentencepiece word-start artefact off the first character.
    """
    newline = tokenizer.encode("\n")

    def body(value: str) -> list[int]:
        return list(tokenizer.encode("\n" + value))[len(newline) :]

    human = list(tokenizer.encode("human\n"))
    assistant = list(tokenizer.encode("assistant\n"))
    ids = [BOS_TOKEN_ID]
    ids += [
        BOT_TOKEN_ID,
        *tokenizer.encode(f"system\n{system_prompt(text, speaker)}"),
        EOT_TOKEN_ID,
    ]
    ids += [BOT_TOKEN_ID, *human, *body(prompt_text), EOT_TOKEN_ID]
    ids += [BOT_TOKEN_ID, *assistant, *prompt_code, EOT_TOKEN_ID]
    ids += [BOT_TOKEN_ID, *human, *body(text), EOT_TOKEN_ID]
    ids += [BOT_TOKEN_ID, *assistant]
    return ids


def _repetition_processor():
    from transformers import LogitsProcessor

    class RepetitionAwareLogitsProcessor(LogitsProcessor):
        """Bans the last token when it fills more than 10% of the last 10 (upstream's repetition guard)."""

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] < REPETITION_WINDOW:
                return scores
            window = input_ids[:, -REPETITION_WINDOW:]
            last = window[:, -1]
            share = (window == last.unsqueeze(-1)).sum(dim=1).float() / REPETITION_WINDOW
            banned = share > REPETITION_THRESHOLD
            rows = banned.nonzero(as_tuple=True)[0]
            scores[rows, last[rows]] = float("-inf")
            return scores

    return RepetitionAwareLogitsProcessor()


def codes_from_generation(generated: Sequence[int], eos_id: int = EOT_TOKEN_ID) -> list[int]:
    """Dual-codebook codes from the ids after the prompt: a final EOS dropped, minus 65536."""
    ids = list(generated)
    if ids and ids[-1] == eos_id:
        ids = ids[:-1]
    return [token - AUDIO_TOKEN_OFFSET for token in ids]


def _prompt_codes(coder: Any, samples: np.ndarray, sample_rate: int) -> list[int]:
    """LM ids (65536+N) of a prompt from the tokenizer object; raw codes N are offset."""
    if hasattr(coder, "prompt_codes"):
        result = coder.prompt_codes(samples, sample_rate)
    elif hasattr(coder, "wav2token"):
        result = coder.wav2token(samples, sample_rate)
        if isinstance(result, tuple):
            result = result[0]
    elif callable(coder):
        result = coder(samples, sample_rate)
    else:
        raise TypeError("prompt_coder has no prompt_codes()/wav2token() and is not callable")
    if hasattr(result, "linguistic") and hasattr(result, "semantic"):
        # The tokenizer engine's AudioTokens: two raw streams, interleaved 2:3 as upstream.
        from adapters.step_audio.audio_tokens import interleave

        result = interleave(result.linguistic, result.semantic)
    codes = [int(code) for code in np.asarray(result).reshape(-1)]
    if not codes:
        raise InvalidInput("The prompt audio gave no audio codes.", param="voice")
    if max(codes) < AUDIO_TOKEN_OFFSET:
        codes = [code + AUDIO_TOKEN_OFFSET for code in codes]
    if min(codes) < AUDIO_TOKEN_OFFSET or max(codes) >= AUDIO_TOKEN_OFFSET + CODEBOOK_SIZE:
        raise ValueError("prompt codes must be audio ids 65536..70655 or codes 0..5119")
    return codes


def read_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples of an audio file at its own sample rate."""
    import av

    from adapters.audio.decode import AudioDecodeError, decode_audio

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError("The file contains no audio stream.")
            rate = int(container.streams.audio[0].rate or 0)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError("The audio file could not be read.") from exc
    if rate <= 0:
        raise AudioDecodeError("The audio file has no sample rate.")
    return decode_audio(data, target_rate=rate), rate


def kaldi_fbank(samples_16k: np.ndarray, num_bins: int = 80) -> np.ndarray:
    """Kaldi fbank (25 ms/10 ms povey frames, no dither) of 16 kHz float samples, [T, bins]."""
    import kaldi_native_fbank as knf

    options = knf.FbankOptions()
    options.frame_opts.samp_freq = TOKENIZER_RATE
    options.frame_opts.dither = 0.0
    options.mel_opts.num_bins = num_bins
    fbank = knf.OnlineFbank(options)
    fbank.accept_waveform(TOKENIZER_RATE, samples_16k.astype(np.float32).tolist())
    fbank.input_finished()
    frames = [np.asarray(fbank.get_frame(i)) for i in range(fbank.num_frames_ready)]
    return np.stack(frames).astype(np.float32) if frames else np.zeros((0, num_bins), np.float32)


@dataclass
class SpeakerPrompt:
    """One voice's prompt: its transcript and codes for the LM, its features for the flow."""

    prompt_text: str
    prompt_code: list[int]  # LM ids, 65536+N
    speech_feat: Any  # [1, T, 80] mel at 22.05 kHz
    embedding: Any  # [1, 192] campplus x-vector

    @property
    def flow_tokens(self) -> list[int]:
        return [code - AUDIO_TOKEN_OFFSET for code in self.prompt_code]


class CosyVoiceVocoder:
    """One ``CosyVoice-300M-25Hz*`` folder: flow + HiFT from its yaml, campplus on CPU."""

    def __init__(self, model_dir: Path, device: Any, dtype: Any) -> None:
        import onnxruntime
        import torch
        from hyperpyyaml import load_hyperpyyaml

        self.model_dir = model_dir
        self.device = device
        self.dtype = dtype
        text = (model_dir / "cosyvoice.yaml").read_text(encoding="utf-8")
        _alias_vendored_modules(text)
        configs = load_hyperpyyaml(text)
        self.feat_extractor = configs["feat_extractor"]
        self.flow = configs["flow"]
        self.hift = configs["hift"]
        del configs
        self.flow.load_state_dict(_load_state(model_dir / "flow.pt"))
        self.hift.load_state_dict(_load_state(model_dir / "hift.pt"))
        self.flow.to(device=device, dtype=dtype).eval()
        self.hift.to(device).eval()
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        self.campplus = onnxruntime.InferenceSession(
            str(model_dir / "campplus.onnx"),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._torch = torch

    def speech_feat(self, samples_22k: np.ndarray):
        """[1, T, 80] mel of 22.05 kHz samples (the yaml's ``feat_extractor``)."""
        torch = self._torch
        mel = self.feat_extractor(torch.from_numpy(samples_22k.astype(np.float32))[None])
        return mel.squeeze(0).transpose(0, 1).unsqueeze(0)

    def speaker_embedding(self, samples_16k: np.ndarray):
        """[1, D] campplus x-vector of 16 kHz samples (mean-normalised Kaldi fbank)."""
        feat = kaldi_fbank(samples_16k)
        feat = feat - feat.mean(axis=0, keepdims=True)
        session = self.campplus
        output = session.run(None, {session.get_inputs()[0].name: feat[None]})[0]
        return self._torch.tensor(np.asarray(output, np.float32).reshape(1, -1))

    def mel(self, codes: Sequence[int], prompt: SpeakerPrompt):
        """The flow's mel for ``codes`` after the speaker's prompt, [1, 80, frames]."""
        torch = self._torch
        F = torch.nn.functional
        flow = self.flow
        device, dtype = self.device, self.dtype
        with torch.inference_mode():
            embedding = F.normalize(prompt.embedding.to(device, dtype), dim=1)
            embedding = flow.spk_embed_affine_layer(embedding)
            prompt_tokens = torch.tensor([prompt.flow_tokens], dtype=torch.long, device=device)
            tokens = torch.tensor([list(codes)], dtype=torch.long, device=device)
            all_tokens = torch.cat([prompt_tokens, tokens], dim=1)
            lengths = torch.tensor([all_tokens.shape[1]], dtype=torch.int32, device=device)
            hidden = flow.input_embedding(torch.clamp(all_tokens, min=0))
            hidden, _ = flow.encoder(hidden, lengths)
            hidden = flow.encoder_proj(hidden)

            conf = getattr(flow, "mel_feat_conf", None) or {}
            rate, hop = conf.get("sampling_rate", SAMPLE_RATE), conf.get("hop_size", 256)
            prompt_frames = prompt.speech_feat.shape[1]
            frames = int(len(codes) / flow.input_frame_rate * rate / hop)
            split = prompt_tokens.shape[1]
            target = F.interpolate(hidden[:, split:].transpose(1, 2), size=frames, mode="linear")
            if split:
                head = F.interpolate(
                    hidden[:, :split].transpose(1, 2), size=prompt_frames, mode="linear"
                )
                target = torch.cat([head, target], dim=2)
            hidden = flow.length_regulator.model(target).transpose(1, 2)

            total = prompt_frames + frames
            cond = torch.zeros([1, total, flow.output_size], device=device, dtype=dtype)
            cond[:, :prompt_frames] = prompt.speech_feat.to(device, dtype)
            mask = torch.ones([1, 1, total], device=device, dtype=dtype)
            mel = flow.decoder(
                mu=hidden.transpose(1, 2).contiguous(),
                mask=mask,
                spks=embedding,
                cond=cond.transpose(1, 2).contiguous(),
                n_timesteps=FLOW_STEPS,
            )
            return mel[:, :, prompt_frames:]

    def vocode(self, mel) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            result = self.hift.inference(mel=mel.float())
            speech = result[0] if isinstance(result, tuple) else result
            speech = torch.clamp(speech.float(), -0.99, 0.99)
        return speech.reshape(-1).cpu().numpy().astype(np.float32)

    def synthesize(self, codes: Sequence[int], prompt: SpeakerPrompt) -> np.ndarray:
        if not codes:
            return np.zeros(0, np.float32)
        mel = self.mel(codes, prompt)
        if mel.shape[2] == 0:
            return np.zeros(0, np.float32)
        return self.vocode(mel)


def _load_state(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _alias_vendored_modules(yaml_text: str) -> None:
    for vendored, packaged in _MODULE_ALIASES.items():
        if vendored in yaml_text and vendored not in sys.modules:
            try:
                importlib.import_module(vendored)
            except ImportError:
                sys.modules[vendored] = importlib.import_module(packaged)


def _load_optimus(lib_dir: Path) -> bool:
    """Upstream's optional Step-1 attention kernels; failure only means slower attention."""
    import torch

    if not (lib_dir.is_dir() and torch.cuda.is_available()):
        return False
    for path in sorted(lib_dir.glob("liboptimus_ths-*.so")):
        try:
            torch.ops.load_library(str(path))
            return True
        except Exception:  # noqa: BLE001 - the wrong torch/CUDA build: try the next one
            continue
    return False


def _dtype_argument() -> str:
    """``from_pretrained``'s name for the weights' dtype: ``torch_dtype`` before
    transformers 4.56, where an unknown ``dtype`` is silently ignored (float32 weights);
    the GPU image pins 4.48, the line Step1's code was written for."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


class StepAudioTTS(SpeechEngine):
    """Step-Audio-TTS-3B as a speech engine (see the module docstring)."""

    speed_range = (1.0, 1.0)
    #: Leading ``(tag)`` prefixes steer this model, so a spoken chat reply carries its
    #: opening tags to every sentence (gateway.api.chat.voice).
    reads_leading_tags = True

    def __init__(
        self,
        name,
        context,
        *,
        model_path: str,
        speakers_dir: str,
        prompt_coder: Any = None,
        tokenizer_model: str | None = None,
        aliases: dict[str, str] | None = None,
        device: str | None = None,
        max_length: int = MAX_LENGTH,
        max_new_tokens: int | None = None,
        temperature: float = TEMPERATURE,
        speed_mode: str = "tempo",
        sentence_max_chars: int = 300,
    ) -> None:
        super().__init__(name, context)
        self.model_path = Path(model_path)
        self.speakers_dir = Path(speakers_dir)
        self.prompt_coder = prompt_coder
        self.tokenizer_model = tokenizer_model
        self._tokenizer_hold: AsyncExitStack | None = None
        self.aliases = dict(aliases or {})
        self.device_name = device
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        if speed_mode not in ("tag", "tempo"):
            raise ValueError(f"speed_mode must be 'tag' or 'tempo', got {speed_mode!r}")
        self.speed_mode = speed_mode
        if speed_mode == "tag":
            self.speed_range = (0.25, 4.0)
        self.sentence_max_chars = sentence_max_chars
        self._lm = None
        self._tokenizer = None
        self._common: CosyVoiceVocoder | None = None
        self._music: CosyVoiceVocoder | None = None
        self._speakers: dict[str, SpeakerPrompt] = {}
        self._clones: dict[str, SpeakerPrompt] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading

    async def start(self) -> None:
        """Borrow the tokenizer model from the registry (for the speakers' prompt codes),
        then load; the tokenizer stays loaded while this engine is."""
        if self.prompt_coder is None and self.tokenizer_model:
            stack = AsyncExitStack()
            self.prompt_coder = await stack.enter_async_context(
                self.context.registry.audio_tokens(self.tokenizer_model)
            )
            self._tokenizer_hold = stack
        try:
            await super().start()
        except BaseException:
            await self._release_tokenizer()
            raise

    async def stop(self) -> None:
        await super().stop()
        await self._release_tokenizer()

    async def _release_tokenizer(self) -> None:
        if self._tokenizer_hold is not None:
            stack, self._tokenizer_hold = self._tokenizer_hold, None
            self.prompt_coder = None
            await stack.aclose()

    def load(self) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise EngineUnavailable(f"Step-Audio-TTS needs torch and transformers: {exc}") from exc
        for folder in (
            self.model_path,
            self.model_path / COMMON_MODEL,
            self.model_path / MUSIC_MODEL,
        ):
            if not folder.is_dir():
                raise EngineUnavailable(f"Step-Audio-TTS-3B folder missing: {folder}")
        if self.prompt_coder is None:
            raise EngineUnavailable(
                "Step-Audio-TTS needs the Step-Audio tokenizer (prompt_coder) for speaker prompts"
            )
        device = torch.device(self.device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Upstream runs the LM and flow in bf16 on CUDA; CPU kernels want float32.
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        _load_optimus(self.model_path / "lib")
        self._device = device
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=True)
        self._lm = AutoModelForCausalLM.from_pretrained(
            self.model_path, **{_dtype_argument(): dtype}, trust_remote_code=True
        ).to(device)
        self._lm.eval()
        self._common = CosyVoiceVocoder(self.model_path / COMMON_MODEL, device, dtype)
        self._music = CosyVoiceVocoder(self.model_path / MUSIC_MODEL, device, dtype)
        self._speakers = self._load_speakers()

    def unload(self) -> None:
        self._lm = self._tokenizer = self._common = self._music = None
        self._speakers = {}

    def _load_speakers(self) -> dict[str, SpeakerPrompt]:
        info_path = self.speakers_dir / "speakers_info.json"
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EngineUnavailable(f"cannot read {info_path}: {exc}") from exc
        speakers = {}
        for speaker_id, prompt_text in info.items():
            wav = self.speakers_dir / f"{speaker_id}_prompt.wav"
            try:
                data = wav.read_bytes()
            except OSError as exc:
                raise EngineUnavailable(f"speaker {speaker_id!r}: cannot read {wav}") from exc
            speakers[speaker_id] = self._prompt(data, str(prompt_text))
        return speakers

    def _prompt(self, wav_bytes: bytes, transcript: str) -> SpeakerPrompt:
        """Preprocess a prompt wav: codes from the tokenizer, mel, x-vector."""
        from adapters.audio.decode import AudioDecodeError
        from adapters.audio.pcm import resample

        assert self._common is not None, "engine used before load()"
        try:
            samples, rate = read_audio(wav_bytes)
        except AudioDecodeError as exc:
            raise InvalidInput(
                f"The voice prompt audio cannot be read: {exc}", param="voice"
            ) from exc
        if rate < TOKENIZER_RATE:  # the tokenizer asserts >= 16 kHz (bug 1): upsample first
            samples, rate = resample(samples, rate, TOKENIZER_RATE), TOKENIZER_RATE
        samples_16k = resample(samples, rate, TOKENIZER_RATE)
        samples_22k = resample(samples, rate, SAMPLE_RATE)
        return SpeakerPrompt(
            prompt_text=transcript,
            prompt_code=_prompt_codes(self.prompt_coder, samples, rate),
            speech_feat=self._common.speech_feat(samples_22k),
            embedding=self._common.speaker_embedding(samples_16k),
        )

    # ------------------------------------------------------------------ voices

    def speaker_ids(self) -> list[str]:
        """Every prompt id the controls may use: built-ins, clones and clones' music forms
        (a cloned voice raps and hums with its own prompt, as upstream's ``clone_dict``)."""
        clones = [f"{name}{music}" for name in self._clones for music in ("", *MUSIC_TAGS)]
        return [*self._speakers, *clones]

    def voices(self) -> Sequence[VoiceInfo]:
        voices = []
        for voice in selectable_voices(self.speaker_ids()):
            cloned = voice in self._clones
            music = [m for m in MUSIC_TAGS if cloned or f"{voice}{m}" in self._speakers]
            description = "Step-Audio-TTS-3B " + ("cloned voice" if cloned else "speaker")
            if music:
                description += (
                    " (can " + " and ".join("rap" if m == "RAP" else "hum" for m in music) + ")"
                )
            voices.append(
                VoiceInfo(
                    id=voice,
                    engine="step-audio-tts",
                    languages=("zh", "en", "ja", "ko"),
                    description=description + ", 22.05 kHz",
                )
            )
        return voices

    async def register_voice(self, name: str, wav_bytes: bytes, transcript: str) -> VoiceInfo:
        """Clone a voice from a prompt recording and its exact transcript (reference item 8)."""
        if not name or any(name == base + m for base in self._speakers for m in MUSIC_TAGS):
            raise InvalidInput(f"Invalid voice name {name!r}.", param="voice")
        if name in self._speakers:
            raise InvalidInput(f"Voice {name!r} is a built-in speaker.", param="voice")
        if not transcript.strip():
            raise InvalidInput(
                "A cloned voice needs the exact transcript of its prompt.", param="voice"
            )
        prompt = await self.worker.run(self._prompt, wav_bytes, transcript.strip())
        self._clones[name] = prompt
        return next(v for v in self.voices() if v.id == name)

    def remove_voice(self, name: str) -> bool:
        return self._clones.pop(name, None) is not None

    # ------------------------------------------------------------------ synthesis

    def controls(self, request: SpeechRequest) -> SpeechControls:
        try:
            return speech_controls(
                request.text,
                voice=request.voice,
                instructions=request.instructions,
                speed=request.speed,
                speakers=self.speaker_ids(),
                aliases=self.aliases,
                speed_mode=self.speed_mode,
            )
        except VoiceNotFound as exc:
            raise InvalidInput(exc.message, param=exc.param) from exc
        except ValueError as exc:
            raise InvalidInput(str(exc), param="speed") from exc

    def segments(self, controls: SpeechControls) -> list[str]:
        """The sentences of the input, each with the request's tags in front."""
        body = controls.text[len(controls.prefix) :]
        return [
            controls.for_segment(sentence)
            for sentence in split_sentences(body, max_chars=self.sentence_max_chars)
        ]

    def _plan(self, request: SpeechRequest) -> list[tuple[str, list[int], SpeakerPrompt, bool]]:
        controls = self.controls(request)
        clone = self._clones.get(controls.speaker)
        prompt = clone or self._speakers[controls.prompt_speaker]
        speaker = "" if clone else controls.speaker  # a clone uses the speaker-less prompt
        plan = []
        for segment in self.segments(controls):
            ids = build_tts_prompt(
                self._tokenizer, segment, prompt.prompt_text, speaker, prompt.prompt_code
            )
            if len(ids) >= self.max_length:
                raise InvalidInput(
                    f"A sentence of the input is too long for Step-Audio-TTS "
                    f"({len(ids)} prompt tokens, limit {self.max_length}).",
                    param="input",
                )
            plan.append((segment, ids, prompt, instruction_name(segment) in MUSIC_TAGS))
        if not plan:
            raise InvalidInput("The input has no text to speak.", param="input")
        return plan

    def generate_codes(self, prompt_ids: list[int]) -> list[int]:
        import torch
        from transformers import LogitsProcessorList

        lm = self._lm
        max_length = self.max_length
        if self.max_new_tokens is not None:
            max_length = min(max_length, len(prompt_ids) + self.max_new_tokens)
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self._device)
        with torch.inference_mode():
            output = lm.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_length=max_length,
                temperature=self.temperature,
                do_sample=True,
                eos_token_id=EOT_TOKEN_ID,
                pad_token_id=EOT_TOKEN_ID,
                logits_processor=LogitsProcessorList([_repetition_processor()]),
            )
        return codes_from_generation(output[0, len(prompt_ids) :].tolist())

    def _chunks(self, request: SpeechRequest) -> Iterator[AudioChunk]:
        assert self._lm is not None, "engine used before load()"
        for segment, ids, prompt, music in self._plan(request):
            with self._lock:
                codes = self.generate_codes(ids)
                vocoder = self._music if music else self._common
                audio = vocoder.synthesize(codes, prompt)
            yield AudioChunk(samples=audio, sample_rate=SAMPLE_RATE, text=segment)

    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[AudioChunk]:
        self.controls(request)  # refuse a bad voice/instruction before any work is queued
        async for chunk in self.worker.iterate(lambda: self._chunks(request)):
            yield chunk
