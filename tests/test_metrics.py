"""/metrics tells an operator how soon listeners hear something, not only how long requests last.

Each test reads the page before and after one request and checks what that request added.
"""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engines.base import Capability
from engines.catalog import CATALOG, EngineKind
from engines.registry import ModelRegistry, ModelSpec
from gateway.settings import load_settings
from tests.audio_utils import duration, pcm_duration
from tests.conftest import PARAGRAPH, start_server

P = "step_audio_gateway_"


def scrape(http) -> dict[tuple[str, frozenset], float]:
    page = http.get("/metrics")
    assert page.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page.text)
        for sample in family.samples
    }


def added(before, after, name: str, **labels: str) -> float:
    """What one request added to the sample(s) of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())

    def total(samples) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)

    return total(after) - total(before)


def test_streamed_speech_reports_its_first_audio_long_before_its_end(http, openai_client):
    before = scrape(http)
    audio = openai_client.audio.speech.create(model="tts-1", voice="alloy", input=PARAGRAPH, response_format="mp3").content
    after = scrape(http)

    labels = {"endpoint": "speech", "model": "tts-1"}
    assert added(before, after, P + "time_to_first_audio_seconds_count", **labels) == 1
    first_audio = added(before, after, P + "time_to_first_audio_seconds_sum", **labels)
    whole = added(before, after, P + "request_duration_seconds_sum", path="/v1/audio/speech")
    first_byte = added(before, after, P + "time_to_first_byte_seconds_sum", path="/v1/audio/speech")
    # Five sentences: the first is heard while the other four are still being made.
    assert 0 < first_audio < whole / 2, (first_audio, whole)
    assert 0 < first_byte <= whole
    spoken = added(before, after, P + "audio_seconds_total", endpoint="speech", direction="out", model="tts-1")
    assert abs(spoken - duration(audio)) < 0.1 * duration(audio), (spoken, duration(audio))


def test_spoken_chat_reply_reports_first_token_first_audio_and_audio_out(http, openai_client):
    before = scrape(http)
    stream = openai_client.chat.completions.create(
        model="gpt-4o-mini", modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": "Tell me about the sea."}], max_tokens=60, temperature=0, stream=True)
    deltas = [c.choices[0].delta.audio for c in stream if c.choices and c.choices[0].delta.audio]
    as_dicts = [d if isinstance(d, dict) else d.model_dump(exclude_none=True) for d in deltas]
    pcm = b"".join(base64.b64decode(d["data"]) for d in as_dicts if "data" in d)
    after = scrape(http)

    assert added(before, after, P + "time_to_first_token_seconds_count", model="gpt-4o-mini") == 1
    assert added(before, after, P + "time_to_first_audio_seconds_count", endpoint="chat", model="gpt-4o-mini") == 1
    first_token = added(before, after, P + "time_to_first_token_seconds_sum", model="gpt-4o-mini")
    first_audio = added(before, after, P + "time_to_first_audio_seconds_sum", endpoint="chat", model="gpt-4o-mini")
    assert 0 < first_token < first_audio  # audio follows the sentence the tokens complete
    spoken = added(before, after, P + "audio_seconds_total", endpoint="chat", direction="out", model="gpt-4o-mini")
    assert abs(spoken - pcm_duration(pcm)) < 0.05 * pcm_duration(pcm) + 0.05, (spoken, pcm_duration(pcm))


def test_transcription_counts_the_audio_it_heard(http, openai_client, speech_wav):
    before = scrape(http)
    openai_client.audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(speech_wav)))
    after = scrape(http)
    heard = added(before, after, P + "audio_seconds_total", endpoint="transcription", direction="in", model="whisper-1")
    assert abs(heard - duration(speech_wav)) < 0.05, (heard, duration(speech_wav))


def test_a_refused_request_adds_no_latency_figures(http):
    before = scrape(http)
    response = http.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "  "})
    assert response.status_code == 400
    after = scrape(http)
    assert added(before, after, P + "time_to_first_audio_seconds_count") == 0
    assert added(before, after, P + "audio_seconds_total") == 0


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """A gateway whose one speech model is a slow fake (tests/faults.py): real models are
    too quick here to be caught mid-queue."""
    catalog = {**CATALOG, "slow": EngineKind("tests.faults:Slow", frozenset({Capability.SPEECH}))}
    registry = ModelRegistry([ModelSpec("slow", "slow"), ModelSpec("idle", "slow")],
                             cache_dir=tmp_path_factory.mktemp("cache"), catalog=catalog, max_queue=4)
    settings = load_settings()
    settings.engines.preload = []
    live = start_server(settings, registry)
    yield live
    live.stop()


def model_gauges(client, model: str) -> dict[str, float]:
    page = scrape(client)
    return {name.removeprefix(P + "model_"): value for (name, labels), value in page.items()
            if name.startswith(P + "model_") and ("model", model) in labels}


def test_model_gauges_show_what_is_loaded_running_and_queued(slow_server):
    with httpx.Client(base_url=slow_server.url, timeout=30) as client:
        assert model_gauges(client, "slow")["loaded"] == 0
        with ThreadPoolExecutor(3) as pool:
            speaking = [pool.submit(client.post, "/v1/audio/speech", json={"model": "slow", "voice": "alloy", "input": "1.0"})
                        for _ in range(3)]
            deadline = time.monotonic() + 20
            busiest: dict[str, float] = {}
            while time.monotonic() < deadline and not all(f.done() for f in speaking):
                gauges = model_gauges(client, "slow")
                if gauges.get("inference_waiting", 0) >= busiest.get("inference_waiting", 0):
                    busiest = gauges
                if gauges.get("inference_waiting") == 2:
                    break
                time.sleep(0.05)
            assert all(f.result().status_code == 200 for f in speaking)
        # Three requests on one worker: one computing, two queued behind it.
        assert busiest["loaded"] == 1 and busiest["requests_in_use"] == 3, busiest
        assert busiest["inference_running"] == 1 and busiest["inference_waiting"] == 2, busiest
        after = model_gauges(client, "slow")
        assert after["requests_in_use"] == after["inference_running"] == after["inference_waiting"] == 0
        assert after["load_seconds"] >= 0
        idle = model_gauges(client, "idle")
        assert idle["loaded"] == 0 and "load_seconds" not in idle
