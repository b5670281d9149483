"""Time to refuse each over-budget input of issue 8, and the memory it costs.

Starts a gateway with the default settings and sends each input the hostile tester sent
(schema bombs, a FLAC of 2 h silence, a 35 MB and a 5 MB message, deep JSON), ``--repeats``
times each; prints the status, the median and worst time to the refusal and the process's
resident-memory peak above its level before the request, against a target.

    python bench/budgets.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.settings import load_settings  # noqa: E402
from tests.conftest import live_server  # noqa: E402
from tests.test_budgets import (  # noqa: E402
    PeakRSS,
    flac_of_silence,
    nested_object,
    tool_call_request,
)

CHAT = "/v1/chat/completions"


def cases(flac: bytes) -> list[tuple[str, float, dict]]:
    """(label, target seconds, httpx.post keyword arguments)."""
    audio_part = {"type": "input_audio", "input_audio": {
        "data": base64.b64encode(flac).decode(), "format": "wav"}}
    deep = b'{"model":"tts-1","voice":"alloy","input":"x","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return [
        ("tool schema minItems 1e9", 0.1, {"url": CHAT, "json": tool_call_request(
            {"type": "array", "items": {"type": "integer"}, "minItems": 10**9})}),
        ("tool schema minLength 1e9", 0.1, {"url": CHAT, "json": tool_call_request(
            {"type": "string", "minLength": 10**9})}),
        ("tool schema nested 25 levels", 0.1, {"url": CHAT, "json": tool_call_request(nested_object(25))}),
        ("tool schema nested 250 levels", 0.1, {"url": CHAT, "json": tool_call_request(nested_object(250))}),
        ("response_format minItems 1e9", 0.1, {"url": CHAT, "json": {
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "JSON"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "array", "items": {"type": "integer"}, "minItems": 10**9}}}}}),
        ("FLAC 2 h silence, transcription", 0.1, {
            "url": "/v1/audio/transcriptions", "data": {"model": "whisper-1"},
            "files": {"file": ("bomb.flac", flac, "audio/flac")}}),
        ("FLAC 2 h silence, chat input_audio", 0.2, {"url": CHAT, "json": {
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": [audio_part]}]}}),
        ("35 MB chat message", 1.5, {"url": CHAT, "json": {
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "word " * 7_000_000}]}}),
        ("5 MB chat message (context)", 0.5, {"url": CHAT, "json": {
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "word " * 1_000_000}]}}),
        ("JSON nested 100,000 levels", 0.1, {
            "url": "/v1/audio/speech", "content": deep,
            "headers": {"content-type": "application/json"}}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = load_settings()
    settings.engines.preload = ["whisper-1", "gpt-4o-mini"]
    live = live_server(settings).start()
    try:
        flac = flac_of_silence(2 * 3600)
        print(f"FLAC of 2 h silence at 8 kHz: {len(flac) / 1e6:.2f} MB\n")
        print(f"{'input':36} {'status':>6} {'median':>9} {'worst':>9} {'target':>8} {'RSS peak':>9}")
        with httpx.Client(base_url=live.url, timeout=120) as client:
            for label, target, request in cases(flac):
                times, peaks, status = [], [], None
                for _ in range(args.repeats):
                    with PeakRSS() as memory:
                        start = time.perf_counter()
                        response = client.post(**request)
                        times.append(time.perf_counter() - start)
                    peaks.append(memory.grown_mb)
                    status = response.status_code
                    code = json.loads(response.content)["error"]["code"] if status >= 400 else ""
                print(f"{label:36} {status:>6} {statistics.median(times) * 1000:>7.0f}ms "
                      f"{max(times) * 1000:>7.0f}ms {target * 1000:>6.0f}ms {max(peaks):>6.0f} MB"
                      f"  {code}{'' if statistics.median(times) <= target else '  OVER TARGET'}")
    finally:
        live.stop()


if __name__ == "__main__":
    main()
