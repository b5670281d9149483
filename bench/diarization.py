"""Diarized transcription speed and accuracy, through the real HTTP server.

A 3-minute conversation of four speakers, assembled from the real recordings as the tests
assemble theirs (tests/conversations.py), is sent as ``gpt-4o-transcribe-diarize`` with
``response_format=diarized_json``. Prints, per run, the wall time, the real-time factor
(seconds of compute per second of audio; the issue asks for at most 0.3), the diarization
error rate (0.25 s collar) and the number of speakers found; then the time of the
diarization alone (VAD, embeddings and clustering, in-process, no Whisper).

    python bench/diarization.py [--repeats 3] [--seconds 180]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
from _server import start_server

from tests.conversations import Turn, assemble, der

SPEAKERS = {
    "ann": "en_happy_prompt",
    "ben": "zero_shot_en_prompt",
    "dee": "denoise_prompt",
    "oli": "openai_sample1",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=180.0)
    args = parser.parse_args()
    talk = assemble(SPEAKERS, args.seconds, seed=4)
    body = talk.wav()
    _, url = start_server(["gpt-4o-transcribe-diarize"])
    print(f"conversation: {talk.duration:.1f} s, {len(talk.speakers)} speakers, "
          f"{len(talk.turns)} turns")
    factors = []
    with httpx.Client(base_url=url, timeout=1200) as client:
        for run in range(args.repeats):
            start = time.perf_counter()
            response = client.post(
                "/v1/audio/transcriptions",
                files={"file": ("talk.wav", body, "audio/wav")},
                data={"model": "gpt-4o-transcribe-diarize",
                      "response_format": "diarized_json", "chunking_strategy": "auto"},
            )
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            segments = response.json()["segments"]
            hypothesis = [Turn(s["start"], s["end"], s["speaker"]) for s in segments]
            score = der(talk.turns, hypothesis, talk.duration)
            factors.append(elapsed / talk.duration)
            print(f"run {run + 1}: {elapsed:.1f} s, RTF {elapsed / talk.duration:.3f}, "
                  f"DER {score:.3f}, {len({s['speaker'] for s in segments})} speakers found")
    print(f"median RTF {statistics.median(factors):.3f}")

    from engines.diarization import diarize
    from engines.embedded.speaker_encoder import SpeakerEncoder

    encoder = SpeakerEncoder()
    start = time.perf_counter()
    diarize(encoder, talk.audio)
    alone = time.perf_counter() - start
    print(f"diarization alone (no Whisper): {alone:.2f} s, RTF {alone / talk.duration:.3f}")


if __name__ == "__main__":
    main()
