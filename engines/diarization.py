"""Who spoke when: speech regions, speaker embeddings per window, clustering, turns.

Blocking numpy code, run on an engine's worker. The steps:

1. Silero VAD (the copy faster-whisper carries) finds the speech regions, with the
   request's ``chunking_strategy`` as its settings.
2. Each region is cut into 1.6 s windows every 0.8 s (half overlapping; a shorter region
   is one window) and each window gets a GE2E embedding (:mod:`.embedded.speaker_encoder`).
3. Average-linkage agglomerative clustering on cosine similarity merges windows until the
   closest two clusters are less similar than ``threshold``: the number of speakers is
   not given. Clusters holding less than ``min_speaker_seconds`` of windows are folded
   into their nearest neighbour (a cough, a laugh), and every window is then given to its
   nearest cluster centre.
4. Known speakers (reference clips) name the clusters whose centre is closest to their
   embedding, one cluster each, when at least ``reference_threshold`` similar; the other
   clusters are ``A``, ``B``... in order of first appearance.
5. Each 10 ms frame takes the label of the nearest window centre; silence takes the
   nearest speech's label, so a word whose timestamps reach into a pause still has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import VadSettings
from .embedded.speaker_encoder import (
    HOP,
    PARTIAL_FRAMES,
    RATE,
    SpeakerEncoder,
    mel_frames,
    normalise_volume,
)

FRAME = HOP / RATE  # 10 ms
WINDOW_STEP = PARTIAL_FRAMES // 2  # 0.8 s
MIN_REGION_FRAMES = 30  # speech shorter than 0.3 s carries no usable voice
BATCH = 64  # windows through the LSTM at once (64 x 160 x 1024 floats: 42 MB)


@dataclass(frozen=True)
class ClusterSettings:
    threshold: float = 0.68
    min_speaker_seconds: float = 3.0
    reference_threshold: float = 0.55


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: str


@dataclass
class Timeline:
    """A speaker label for every 10 ms frame of the audio (``labels[i]`` indexes
    ``speakers``), and the speech turns it is made of."""

    labels: np.ndarray
    speakers: list[str]
    turns: list[Turn]

    def speaker_between(self, start: float, end: float) -> str:
        if not self.speakers:
            return "A"
        first = min(max(int(start / FRAME), 0), len(self.labels) - 1)
        last = min(max(int(np.ceil(end / FRAME)), first + 1), len(self.labels))
        counts = np.bincount(self.labels[first:last], minlength=len(self.speakers))
        return self.speakers[int(np.argmax(counts))]


def speech_regions(audio: np.ndarray, vad: VadSettings) -> list[tuple[int, int]]:
    """(start, end) sample offsets of speech, by the Silero model faster-whisper ships."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(
        threshold=vad.threshold,
        min_silence_duration_ms=vad.silence_ms,
        speech_pad_ms=vad.padding_ms,
    )
    return [(c["start"], c["end"]) for c in get_speech_timestamps(audio, options)]


def _windows(regions: list[tuple[int, int]], n_frames: int) -> list[tuple[int, int]]:
    """(first frame, frame count) of the embedding windows inside the speech regions."""
    windows = []
    for start, end in regions:
        first, last = start // HOP, min(end // HOP, n_frames)
        length = last - first
        if length < MIN_REGION_FRAMES:
            continue
        if length <= PARTIAL_FRAMES:
            windows.append((first, length))
            continue
        starts = list(range(first, last - PARTIAL_FRAMES + 1, WINDOW_STEP))
        if last - (starts[-1] + PARTIAL_FRAMES) > WINDOW_STEP // 2:
            starts.append(last - PARTIAL_FRAMES)
        windows.extend((s, PARTIAL_FRAMES) for s in starts)
    return windows


def embed_windows(
    encoder: SpeakerEncoder, mels: np.ndarray, windows: list[tuple[int, int]]
) -> np.ndarray:
    out = np.empty((len(windows), 256), np.float32)
    for at in range(0, len(windows), BATCH):
        chunk = windows[at : at + BATCH]
        batch = np.zeros((len(chunk), PARTIAL_FRAMES, mels.shape[1]), np.float32)
        for row, (first, length) in enumerate(chunk):
            piece = mels[first : first + length]
            # A short window is repeated to fill 1.6 s (zeros would read as silence).
            reps = int(np.ceil(PARTIAL_FRAMES / max(len(piece), 1)))
            batch[row] = np.tile(piece, (reps, 1))[:PARTIAL_FRAMES]
        out[at : at + len(chunk)] = encoder.embed_partials(batch)
    return out


def _normalise(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-9)


def cluster(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """Average-linkage agglomerative clustering on cosine similarity: a cluster index per
    row, merging while the two most similar clusters are at least ``threshold`` similar."""
    n = len(embeddings)
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    similarity = (embeddings @ embeddings.T).astype(np.float64)
    np.fill_diagonal(similarity, -np.inf)
    sizes = np.ones(n)
    members = np.arange(n)
    alive = np.ones(n, dtype=bool)
    while alive.sum() > 1:
        flat = int(np.argmax(similarity))
        a, b = divmod(flat, n)
        if similarity[a, b] < threshold:
            break
        # Average linkage (Lance-Williams): the merged row is the size-weighted mean.
        merged = (sizes[a] * similarity[a] + sizes[b] * similarity[b]) / (sizes[a] + sizes[b])
        similarity[a], similarity[:, a] = merged, merged
        similarity[a, a] = -np.inf
        similarity[b], similarity[:, b] = -np.inf, -np.inf
        sizes[a] += sizes[b]
        alive[b] = False
        members[members == b] = a
    _, labels = np.unique(members, return_inverse=True)
    return labels


def _centres(embeddings: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return _normalise(np.stack([embeddings[labels == c].mean(axis=0) for c in range(k)]))


def _fold_small(
    embeddings: np.ndarray, labels: np.ndarray, weights: np.ndarray, min_weight: float
) -> np.ndarray:
    """Give the windows of clusters lighter than ``min_weight`` seconds to the nearest
    cluster that is not (unless none is)."""
    k = int(labels.max()) + 1
    weight = np.bincount(labels, weights=weights, minlength=k)
    big = np.flatnonzero(weight >= min_weight)
    if len(big) == 0:
        big = np.array([int(np.argmax(weight))])
    centres = _centres(embeddings, labels, k)[big]
    # Then every window goes to its nearest remaining centre (one k-means step).
    nearest = np.argmax(embeddings @ centres.T, axis=1)
    _, labels = np.unique(nearest, return_inverse=True)
    return labels


def diarize(
    encoder: SpeakerEncoder,
    audio: np.ndarray,
    vad: VadSettings = VadSettings(),
    settings: ClusterSettings = ClusterSettings(),
    references: list[tuple[str, np.ndarray]] = (),  # type: ignore[assignment]
) -> Timeline:
    """The speaker timeline of 16 kHz mono ``audio``; ``references`` are (name, clip)."""
    n_frames = max(1, int(np.ceil(len(audio) / HOP)))
    regions = speech_regions(audio, vad)
    mels = mel_frames(normalise_volume(np.asarray(audio, dtype=np.float32)))
    windows = _windows(regions, len(mels))
    if not windows:
        return Timeline(np.zeros(n_frames, np.int64), [], [])
    embeddings = embed_windows(encoder, mels, windows)
    seconds = np.array([length * FRAME for _, length in windows])
    labels = cluster(embeddings, settings.threshold)
    labels = _fold_small(embeddings, labels, seconds * 0.5, settings.min_speaker_seconds)
    k = int(labels.max()) + 1
    names = _name_clusters(
        encoder, _centres(embeddings, labels, k), labels, references, settings
    )
    return _timeline(windows, labels, names, regions, n_frames)


def _name_clusters(encoder, centres, labels, references, settings) -> list[str]:
    """A name per cluster: a known speaker's, or a letter in order of first appearance."""
    k = len(centres)
    names: list[str | None] = [None] * k
    if references:
        known = _normalise(np.stack([encoder.embed_utterance(clip) for _, clip in references]))
        similarity = centres @ known.T
        while np.isfinite(similarity).any() and similarity.max() >= settings.reference_threshold:
            c, r = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
            names[c] = references[r][0]
            similarity[c, :] = -np.inf
            similarity[:, r] = -np.inf
    taken = {n for n in names if n is not None}
    letters = (chr(ord("A") + i) for i in range(26))
    for c in dict.fromkeys(int(x) for x in labels):  # first-appearance order
        if names[c] is None:
            names[c] = next(letter for letter in letters if letter not in taken)
    return [n or "A" for n in names]


def _timeline(windows, labels, names, regions, n_frames) -> Timeline:
    speakers = list(dict.fromkeys(names))
    index = np.array([speakers.index(n) for n in names])
    centres = np.array([first + length / 2 for first, length in windows])
    frames = np.arange(n_frames) + 0.5
    # Each frame takes the label of the window whose centre is nearest (centres ascend).
    right = np.clip(np.searchsorted(centres, frames), 1, len(centres) - 1)
    left = right - 1
    if len(centres) == 1:
        nearest = np.zeros(n_frames, dtype=np.int64)
    else:
        nearest = np.where(
            np.abs(frames - centres[left]) <= np.abs(centres[right] - frames), left, right
        )
    frame_labels = index[labels[nearest]]
    turns: list[Turn] = []
    for start, end in regions:
        first, last = start // HOP, min(max(end // HOP, start // HOP + 1), n_frames)
        run_start = first
        for f in range(first + 1, last + 1):
            if f == last or frame_labels[f] != frame_labels[run_start]:
                speaker = speakers[frame_labels[run_start]]
                if turns and turns[-1].speaker == speaker and run_start * FRAME - turns[-1].end < 0.5:
                    turns[-1] = Turn(turns[-1].start, f * FRAME, speaker)
                else:
                    turns.append(Turn(run_start * FRAME, f * FRAME, speaker))
                run_start = f
    return Timeline(frame_labels.astype(np.int64), speakers, turns)
