"""Speech and transcription speed of the embedded engines, through the real HTTP server.

Prints, for a five-sentence input, the time to the first audio byte against the total
time of the streamed response, for every engine and output format (the ratio shows how
early audio starts), then the real-time factor (compute seconds per audio second) of each
embedded engine, measured on the same run.

    python bench/speech_latency.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import httpx
from _server import start_server, streamed_speech

from adapters.audio.decode import decode_audio

FIVE_SENTENCES = {
    "en": (
        "The gateway turns text into speech on an ordinary computer. "
        "It streams each sentence as soon as it is ready. "
        "Clients hear the first words while the rest is still being made. "
        "Every output format is encoded on the fly. "
        "Nothing here needs a graphics card or a network connection."
    ),
    "ja": (
        "このゲートウェイは普通のコンピューターで音声を作ります。"
        "文ごとにすぐ送り出します。"
        "残りを作っている間に、最初の言葉が聞こえます。"
        "どの形式も、その場で符号化します。"
        "グラフィックカードもネットワークも要りません。"
    ),
}
ENGINES = [
    ("piper (joe)", "joe", "en"),
    ("kokoro (jf_alpha)", "jf_alpha", "ja"),
    ("kokoro (jf_alpha, English)", "jf_alpha", "en"),
]
FORMATS = ["pcm", "wav", "mp3", "opus", "aac", "flac"]


def timed_speech(
    client: httpx.Client, voice: str, text: str, fmt: str
) -> tuple[float, float, bytes]:
    """Seconds to the first byte and in all, and the body."""
    _, pieces, total, data = streamed_speech(client, voice, text, fmt)
    return (pieces[0][0] if pieces else 0.0), total, data


def seconds_of(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return len(data) / 2 / 24000
    return len(decode_audio(data, 16000)) / 16000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    server, url = start_server(["tts-1", "whisper-1", "whisper-tiny.en"])
    client = httpx.Client(base_url=url, timeout=300)
    for _, voice, lang in ENGINES:  # warm up every engine once
        timed_speech(client, voice, "Warm up.", "pcm")

    print(f"Speech, five sentences, median of {args.repeats} (streamed over HTTP on 127.0.0.1)")
    print(
        f"{'engine':28} {'format':6} {'first byte s':>12} {'total s':>8} {'first/total':>11} {'audio s':>8} {'RTF':>6}"
    )
    rtf_by_engine: dict[str, list[float]] = {}
    for name, voice, lang in ENGINES:
        for fmt in FORMATS:
            runs = [
                timed_speech(client, voice, FIVE_SENTENCES[lang], fmt) for _ in range(args.repeats)
            ]
            first = statistics.median(r[0] for r in runs)
            total = statistics.median(r[1] for r in runs)
            audio = seconds_of(runs[0][2], fmt)
            rtf = total / audio
            rtf_by_engine.setdefault(name, []).append(rtf)
            print(
                f"{name:28} {fmt:6} {first:12.3f} {total:8.3f} {first / total:11.2f} {audio:8.2f} {rtf:6.3f}"
            )

    print(
        "\nReal-time factor of each embedded engine (compute s / audio s; below 1 is faster than real time)"
    )
    for name, values in rtf_by_engine.items():
        print(f"  speech        {name:28} RTF {min(values):.3f} (best format) .. {max(values):.3f}")
    _, _, clip = timed_speech(client, "joe", " ".join([FIVE_SENTENCES["en"]] * 2), "wav")
    clip_seconds = seconds_of(clip, "wav")
    for model in ("whisper-base", "whisper-tiny.en"):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            response = client.post(
                "/v1/audio/transcriptions",
                files={"file": ("clip.wav", io.BytesIO(clip), "audio/wav")},
                data={"model": model},
            )
            response.raise_for_status()
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        print(
            f"  transcription {model:28} RTF {median / clip_seconds:.3f} ({clip_seconds:.1f} s clip in {median:.2f} s)"
        )
    server.should_exit = True


if __name__ == "__main__":
    main()
