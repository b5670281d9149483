"""Speed (tempo) change without a pitch change, for the speech ``speed`` parameter.

Naively resampling to play faster would raise the voice like a chipmunk; FFmpeg's
``atempo`` filter (WSOLA-style overlap-add) keeps the pitch and only changes the
duration. It runs through PyAV's filter graph, so no ffmpeg binary is involved.

The filter is stateful: speech arrives sentence by sentence and is pushed through
one graph, so the overlap-add window spans sentence boundaries without seams.
"""

from __future__ import annotations

from fractions import Fraction

import av
import av.filter
import numpy as np

__all__ = ["TempoFilter", "MIN_TEMPO", "MAX_TEMPO", "atempo_chain"]

MIN_TEMPO = 0.25
MAX_TEMPO = 4.0

# One atempo instance accepts 0.5..2.0 (newer FFmpeg allows up to 100, but quality
# drops outside this band because it starts skipping whole windows).
_STAGE_MIN = 0.5
_STAGE_MAX = 2.0


def atempo_chain(rate: float) -> list[float]:
    """Split ``rate`` into factors that each lie within atempo's 0.5..2.0 range.

    e.g. 4.0 -> [2.0, 2.0], 0.25 -> [0.5, 0.5], 3.0 -> [2.0, 1.5].
    """
    stages: list[float] = []
    remaining = float(rate)
    while remaining > _STAGE_MAX:
        stages.append(_STAGE_MAX)
        remaining /= _STAGE_MAX
    while remaining < _STAGE_MIN:
        stages.append(_STAGE_MIN)
        remaining /= _STAGE_MIN
    if not stages or abs(remaining - 1.0) > 1e-9:
        stages.append(remaining)
    return stages


def _drain(graph: av.filter.Graph) -> np.ndarray:
    """Pull every frame the sink has ready; stop on EAGAIN (needs input) or EOF."""
    parts: list[np.ndarray] = []
    while True:
        try:
            frame = graph.pull()
        except (av.BlockingIOError, av.EOFError):
            break
        if frame.samples:
            parts.append(frame.to_ndarray().reshape(-1))
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


class TempoFilter:
    """Change tempo by ``rate`` (2.0 = twice as fast) at an unchanged pitch.

    Call :meth:`push` with each piece of float32 mono audio and :meth:`flush` once
    at the end; output comes back as soon as the filter has it, a little behind the
    input (atempo holds back about one analysis window).
    """

    def __init__(self, rate: float, sample_rate: int) -> None:
        rate = float(rate)
        if not (MIN_TEMPO <= rate <= MAX_TEMPO):
            raise ValueError(f"tempo must be between {MIN_TEMPO} and {MAX_TEMPO}, got {rate}")
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        self.rate = rate
        self.sample_rate = int(sample_rate)
        self._pts = 0
        self._chunk = max(256, self.sample_rate // 25)  # 40 ms per frame fed to atempo
        self._flushed = False
        # Factor 1.0 is the common case; skip the graph so it costs nothing and adds no delay.
        self._graph: av.filter.Graph | None = None if rate == 1.0 else self._build()

    def _build(self) -> av.filter.Graph:
        graph = av.filter.Graph()
        node = graph.add_abuffer(
            sample_rate=self.sample_rate,
            format="flt",
            layout="mono",
            time_base=Fraction(1, self.sample_rate),
        )
        for factor in atempo_chain(self.rate):
            stage = graph.add("atempo", f"{factor:.6f}")
            node.link_to(stage)
            node = stage
        # Pin the sink's format so pulled frames are packed float mono like the input.
        fmt = graph.add("aformat", "sample_fmts=flt:channel_layouts=mono")
        node.link_to(fmt)
        sink = graph.add("abuffersink")
        fmt.link_to(sink)
        graph.configure()
        return graph

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed the next piece of audio; returns the tempo-changed audio ready so far."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._graph is None:
            return x.copy()
        if self._flushed:
            raise RuntimeError("TempoFilter already flushed")
        if x.size == 0:
            return np.zeros(0, dtype=np.float32)
        # atempo fills a whole output frame sized after its input frame before it
        # emits anything, so one big push would come back only with the next push.
        # Feeding short chunks bounds that hold-back to one chunk (~40 ms).
        parts: list[np.ndarray] = []
        for start in range(0, x.size, self._chunk):
            piece = x[start : start + self._chunk]
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(piece.reshape(1, -1)), format="flt", layout="mono"
            )
            frame.sample_rate = self.sample_rate
            frame.time_base = Fraction(1, self.sample_rate)
            frame.pts = self._pts
            self._pts += piece.size
            self._graph.push(frame)
            parts.append(_drain(self._graph))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def flush(self) -> np.ndarray:
        """Signal end of stream and return the audio the filter was still holding."""
        if self._graph is None or self._flushed:
            return np.zeros(0, dtype=np.float32)
        self._flushed = True
        self._graph.push(None)
        return _drain(self._graph)
