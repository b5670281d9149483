"""Per-key limits through the HTTP API of a live gateway (in-memory state, real engines):
requests and tokens per minute, audio seconds heard and spoken, concurrent streams,
allowed models, OpenAI's 429 envelope and x-ratelimit-* headers."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import wave

import httpx
import numpy as np
import pytest

from gateway.settings import KeyLimitSettings, load_settings
from tests.conftest import PARAGRAPH, live_server
from tests.redis_server import avoid_minute_edge

KEYS = {
    "sk-rpm": KeyLimitSettings(rpm=3),
    "sk-rpm-paths": KeyLimitSettings(rpm=2),
    # The same policy matched through the key's sha256 form (the file holds no secret).
    "sha256:" + hashlib.sha256(b"sk-hashed").hexdigest(): KeyLimitSettings(rpm=2),
    "sk-refund": KeyLimitSettings(rpm=2),
    "sk-models": KeyLimitSettings(models=["tts-1"]),
    "sk-out": KeyLimitSettings(audio_seconds_out_per_minute=5),
    "sk-out-binary": KeyLimitSettings(audio_seconds_out_per_minute=3),
    "sk-in": KeyLimitSettings(audio_seconds_in_per_minute=3),
    "sk-streams": KeyLimitSettings(concurrent_streams=1),
    "sk-tokens": KeyLimitSettings(tpm=20),
    "sk-chat-out": KeyLimitSettings(audio_seconds_out_per_minute=1),
}
API_KEYS = ["sk-rpm", "sk-hashed", "sk-refund", "sk-models", "sk-out", "sk-out-binary", "sk-in"]
API_KEYS += ["sk-streams", "sk-tokens", "sk-free", "sk-rpm-paths", "sk-chat-out"]
RESET = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+(\.\d+)?s)$")


@pytest.fixture(scope="module")
def gateway():
    settings = load_settings()
    settings.server.api_keys = API_KEYS
    settings.engines.preload = ["tts-1"]
    settings.limits.per_key = KEYS
    server = live_server(settings).start()
    yield server
    server.stop()


def client(gateway, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=gateway.url, headers={"authorization": f"Bearer {key}"}, timeout=120
    )


def speak(text: str = "Hello there.", **extra) -> dict:
    return {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", **extra}


def wav(seconds: float, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.1 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(samples.tobytes())
    return out.getvalue()


def assert_rate_limited(response: httpx.Response, kind: str) -> dict:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == kind
    assert set(error) == {"message", "type", "param", "code"}
    assert float(response.headers["retry-after"]) >= 1
    return error


def test_requests_per_minute_with_openai_headers(gateway):
    avoid_minute_edge()
    with client(gateway, "sk-rpm") as http:
        answers = [http.get("/v1/models") for _ in range(4)]
    for remaining, response in zip(["2", "1", "0"], answers):
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-remaining-requests"] == remaining
        assert RESET.match(response.headers["x-ratelimit-reset-requests"])
    error = assert_rate_limited(answers[3], "requests")
    assert "requests per min (RPM): Limit 3" in error["message"]
    assert answers[3].headers["x-ratelimit-remaining-requests"] == "0"
    # Another key is not limited by it, and an unlisted key has no limits at all.
    with client(gateway, "sk-free") as http:
        free = [http.get("/v1/models") for _ in range(5)]
    assert all(r.status_code == 200 for r in free)
    assert "x-ratelimit-limit-requests" not in free[0].headers


def test_a_key_listed_by_its_sha256_is_limited(gateway):
    with client(gateway, "sk-hashed") as http:
        statuses = [http.get("/v1/models").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_requests_refused_before_any_work_are_not_counted(gateway):
    avoid_minute_edge()
    with client(gateway, "sk-refund") as http:
        bad = [http.post("/v1/audio/speech", json=speak("   ")) for _ in range(3)]
        good = [http.get("/v1/models") for _ in range(3)]
    assert [r.status_code for r in bad] == [400, 400, 400]
    assert [r.status_code for r in good] == [200, 200, 429]


def test_a_model_the_key_may_not_use_is_not_found(gateway):
    avoid_minute_edge()
    with client(gateway, "sk-models") as http:
        allowed = http.post("/v1/audio/speech", json=speak())
        other = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav(1.0), "audio/wav")},
            data={"model": "whisper-1"},
        )
        chat = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert allowed.status_code == 200 and allowed.content
    for response in (other, chat):
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "does not exist or you do not have access to it" in error["message"]


def test_spoken_audio_is_charged_as_it_streams_and_cuts_the_stream(gateway):
    avoid_minute_edge()
    with client(gateway, "sk-out") as http:
        with http.stream(
            "POST", "/v1/audio/speech", json=speak(PARAGRAPH * 2, stream_format="sse")
        ) as response:
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit-audio-seconds-out"] == "5"
            events = [json.loads(line[6:]) for line in response.iter_lines() if line]
        after = http.post("/v1/audio/speech", json=speak())
    *deltas, last = events
    assert "error" in last, last  # cut with an error event, not speech.audio.done
    assert last["error"]["code"] == "rate_limit_exceeded"
    assert "audio seconds spoken per min" in last["error"]["message"]
    spoken = sum(len(base64.b64decode(e["audio"])) for e in deltas) / 2 / 24_000
    assert spoken <= 5.0  # never more than the key's minute (the paragraph is far longer)
    error = assert_rate_limited(after, "audio_seconds")
    assert after.headers["x-ratelimit-remaining-audio-seconds-out"] == "0"
    assert "Limit 5" in error["message"]


def test_a_binary_speech_stream_is_cut_when_its_key_runs_out(gateway):
    avoid_minute_edge()
    with client(gateway, "sk-out-binary") as http:
        with pytest.raises(httpx.RemoteProtocolError):
            with http.stream("POST", "/v1/audio/speech", json=speak(PARAGRAPH * 2)) as response:
                assert response.status_code == 200
                received = b"".join(response.iter_bytes())
                pytest.fail(f"the stream ended normally after {len(received)} bytes")


def test_heard_audio_is_charged_whole_or_refused_charging_nothing(gateway):
    avoid_minute_edge()

    def transcribe(http, seconds):
        return http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav(seconds), "audio/wav")},
            data={"model": "whisper-tiny.en"},
        )

    with client(gateway, "sk-in") as http:
        too_long = transcribe(http, 5.0)
        first = transcribe(http, 2.0)
        second = transcribe(http, 2.0)
    error = assert_rate_limited(too_long, "audio_seconds")
    assert "audio seconds heard per min" in error["message"]
    assert first.status_code == 200, first.text  # the refused 5 s charged nothing
    assert first.headers["x-ratelimit-remaining-audio-seconds-in"] == "3"  # as admitted
    assert_rate_limited(second, "audio_seconds")  # 2 s more does not fit in the last 1 s


def test_concurrent_streams_per_key(gateway):
    avoid_minute_edge()
    opened = threading.Event()
    statuses: list[int] = []

    def long_stream():
        with client(gateway, "sk-streams") as http:
            with http.stream(
                "POST", "/v1/audio/speech", json=speak(PARAGRAPH, stream_format="sse")
            ) as response:
                statuses.append(response.status_code)
                opened.set()
                for _ in response.iter_lines():
                    pass

    worker = threading.Thread(target=long_stream)
    worker.start()
    assert opened.wait(60)
    with client(gateway, "sk-streams") as http:
        during = http.get("/v1/models")
    worker.join(120)
    with client(gateway, "sk-streams") as http:
        after = http.get("/v1/models")
    assert statuses == [200]
    error = assert_rate_limited(during, "requests")
    assert "concurrent streams" in error["message"]
    assert after.status_code == 200


def test_tokens_per_minute_refuse_the_next_request(gateway):
    avoid_minute_edge()
    with client(gateway, "sk-tokens") as http:
        first = http.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "Say hello to everyone in the room."}],
                "max_tokens": 4,
            },
        )
        second = http.get("/v1/models")
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-tokens"] == "20"
    assert first.json()["usage"]["total_tokens"] > 20  # the prompt alone passes the limit
    error = assert_rate_limited(second, "tokens")
    assert "tokens per min (TPM)" in error["message"]
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"


def test_every_spelling_of_a_limited_path_counts_and_public_routes_do_not(gateway):
    avoid_minute_edge()
    with client(gateway, "sk-rpm-paths") as http:
        public = [http.get(path).status_code for path in ("/health", "/ready", "/metrics")]
        spelled = [
            http.get(path).status_code for path in ("/v1//models", "/v1/./models", "/%76%31/models")
        ]
    assert public == [200, 200, 200]
    assert spelled == [200, 200, 429]


def test_a_spoken_chat_reply_is_cut_when_its_key_has_spoken_its_minute(gateway):
    avoid_minute_edge()
    body = {
        "model": "gpt-4o-mini",
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "pcm16"},
        "stream": True,
        "max_tokens": 80,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
    }
    with client(gateway, "sk-chat-out") as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] != "[DONE]"
    last = json.loads(events[-1])
    assert last["error"]["code"] == "rate_limit_exceeded", last
    audio = b"".join(
        base64.b64decode(chunk["choices"][0]["delta"]["audio"]["data"])
        for chunk in map(json.loads, events[:-1])
        if chunk.get("choices") and (chunk["choices"][0]["delta"].get("audio") or {}).get("data")
    )
    assert len(audio) / 2 / 24_000 <= 1.0  # never more than the key's second
