"""From engine audio to response bytes: resample, change tempo, encode, one piece at a time.

Engines hand over audio sentence by sentence at their own rate (Piper 22.05 kHz, Kokoro
24 kHz). Everything OpenAI clients receive is 24 kHz mono, so the stages below keep their
state across sentences: no clicks at the joins, and bytes leave as soon as they exist.
"""

from __future__ import annotations

import numpy as np

from .encode import StreamingEncoder
from .pcm import StreamResampler
from .tempo import TempoFilter

OUTPUT_RATE = 24_000
# Seconds of each sentence encoded and sent on their own, ahead of the rest of it.
LEAD_SECONDS = 0.15


def lead_and_rest(samples: np.ndarray, sample_rate: int) -> list[np.ndarray]:
    """Cut a sentence's audio into its first ``LEAD_SECONDS`` and the rest.

    Encoding a whole sentence to MP3 or Opus takes 10-60 ms on a small host, all of it
    between the sentence being synthesised and its first byte leaving. Encoding a short
    lead first puts audio on the wire about 2 ms after synthesis; the rest (about a
    hundred ms of playing time away from being needed, and ready in 10-20 ms) follows at
    once. Every codec here turns 0.15 s into at least 0.09 s of decodable audio (MP3 and
    AAC hold back a frame or two). 0.3 s put mp3 and opus 3-4 ms later (bench/
    speech_first_byte.py --voices joe: 21.3 / 20.0 ms of gateway share against 17.5 / 15.7).
    """
    cut = int(LEAD_SECONDS * sample_rate)
    if len(samples) <= cut * 2:
        return [samples]
    return [samples[:cut], samples[cut:]]


def split_speed(speed: float, native_range: tuple[float, float]) -> tuple[float, float]:
    """Split ``speed`` into the part the engine applies itself and the rest for the filter.

    A model that stretches its own durations sounds better than any tempo filter, so the
    engine takes as much of the change as its range allows.
    """
    low, high = native_range
    native = min(max(speed, low), high)
    residual = speed / native
    if abs(residual - 1.0) < 1e-6:
        residual = 1.0
    return native, residual


class SpeechAudioPipeline:
    """``encoder``: anything with ``encode(samples) -> bytes`` and ``finish() -> bytes``
    (the realtime door's PCM and G.711, adapters.realtime.audio); a
    :class:`StreamingEncoder` for ``fmt`` by default."""

    def __init__(
        self, fmt: str, *, tempo: float = 1.0, sample_rate: int = OUTPUT_RATE, encoder=None
    ) -> None:
        self.sample_rate = sample_rate
        self.encoder = encoder if encoder is not None else StreamingEncoder(fmt, sample_rate)
        self.tempo = TempoFilter(tempo, sample_rate)
        self._resampler: StreamResampler | None = None
        self._input_rate: int | None = None
        self.samples_out = 0

    @property
    def seconds(self) -> float:
        return self.samples_out / self.sample_rate

    def _shape(self, samples: np.ndarray) -> np.ndarray:
        shaped = self.tempo.push(samples) if len(samples) else samples
        self.samples_out += len(shaped)
        return shaped

    def process(self, samples: np.ndarray, sample_rate: int) -> bytes:
        out = b""
        if self._input_rate != sample_rate:
            if self._resampler is not None:  # the engine changed rate: flush the old one
                out += self.encoder.encode(self._shape(self._resampler.flush()))
            self._resampler = StreamResampler(sample_rate, self.sample_rate)
            self._input_rate = sample_rate
        assert self._resampler is not None
        resampled = self._resampler.push(np.asarray(samples, dtype=np.float32))
        return out + self.encoder.encode(self._shape(resampled))

    def finish(self) -> bytes:
        tail = self._resampler.flush() if self._resampler is not None else np.zeros(0, np.float32)
        shaped = self._shape(tail) if len(tail) else np.zeros(0, np.float32)
        rest = self.tempo.flush()
        self.samples_out += len(rest)
        return (
            self.encoder.encode(np.concatenate([shaped, rest]).astype(np.float32))
            + self.encoder.finish()
        )
