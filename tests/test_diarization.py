"""Who said what: gpt-4o-transcribe-diarize on conversations assembled from real recordings
of different speakers (tests/conversations.py), through the official Python SDK and raw
HTTP, every body and event checked against the vendored OpenAI spec."""

from __future__ import annotations

import base64
import functools
import io
import json
import subprocess

import httpx
import numpy as np
import openai
import pytest

from gateway.settings import KeyLimitSettings, load_settings
from tests.conftest import NODE_DIR, live_server
from tests.conversations import RATE, Conversation, Turn, assemble, der, load, phrases
from tests.test_transcription import wer

MODEL = "gpt-4o-transcribe-diarize"

# name -> (speaker -> recording, seconds, seed): 2, 3 and 4 speakers, 1 to 2.5 minutes.
CONVERSATIONS = {
    "two-english": ({"ann": "en_happy_prompt", "ben": "zero_shot_en_prompt"}, 60, 1),
    "three-chinese": (
        {"fay": "fear_zh_female_prompt", "sam": "speed_prompt", "val": "vad_prompt"}, 90, 3
    ),
    "four-english": (
        {"ann": "en_happy_prompt", "ben": "zero_shot_en_prompt", "dee": "denoise_prompt",
         "oli": "openai_sample1"},
        150,
        4,
    ),
}


@functools.cache
def conversation(name: str) -> Conversation:
    speakers, seconds, seed = CONVERSATIONS[name]
    return assemble(speakers, seconds, seed)


def wav(audio: np.ndarray) -> bytes:
    return Conversation(audio.astype(np.float32), []).wav()


def data_url(audio: np.ndarray) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav(audio)).decode()


def turns_of(segments) -> list[Turn]:
    return [Turn(s.start, s.end, s.speaker) for s in segments]


def truth_of(segment, reference: list[Turn]) -> str:
    """The reference speaker who speaks most of ``segment``'s time."""
    overlap: dict[str, float] = {}
    for turn in reference:
        shared = min(turn.end, segment.end) - max(turn.start, segment.start)
        if shared > 0:
            overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
    return max(overlap, key=overlap.get) if overlap else ""


@pytest.fixture(scope="module")
def gateway():
    settings = load_settings()
    settings.server.api_keys = ["sk-local", "sk-in"]
    settings.engines.preload = []
    settings.limits.per_key = {"sk-in": KeyLimitSettings(audio_seconds_in_per_minute=20)}
    server = live_server(settings).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(
        base_url=gateway.url + "/v1", api_key="sk-local", max_retries=0, timeout=600
    )


@pytest.fixture(scope="module")
def http(gateway):
    with httpx.Client(
        base_url=gateway.url, headers={"authorization": "Bearer sk-local"}, timeout=600
    ) as client:
        yield client


def diarize(client, audio_wav: bytes, **extra):
    return client.audio.transcriptions.with_raw_response.create(
        model=MODEL, file=("talk.wav", io.BytesIO(audio_wav), "audio/wav"),
        response_format="diarized_json", chunking_strategy="auto", **extra,
    )


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_diarized_json_finds_every_speaker_and_their_turns(client, spec, name):
    talk = conversation(name)
    raw = diarize(client, talk.wav())
    assert raw.headers["content-type"].startswith("application/json")
    body = json.loads(raw.text)
    spec.validate(body, "CreateTranscriptionResponseDiarizedJson")
    result = raw.parse()
    assert isinstance(result, openai.types.audio.TranscriptionDiarized)
    assert result.task == "transcribe" and abs(result.duration - talk.duration) < 0.1
    assert result.usage.type == "duration" and result.usage.seconds == pytest.approx(
        talk.duration, abs=0.1
    )
    segments = result.segments
    assert [s.id for s in segments] == [f"seg_{i:03d}" for i in range(1, len(segments) + 1)]
    assert all(s.type == "transcript.text.segment" and s.text for s in segments)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(segments, segments[1:]))
    speakers = {s.speaker for s in segments}
    assert len(speakers) == len(talk.speakers), speakers
    # Unnamed speakers are A, B, ... in order of first appearance.
    first_seen = list(dict.fromkeys(s.speaker for s in segments))
    assert first_seen == [chr(ord("A") + i) for i in range(len(first_seen))]
    score = der(talk.turns, turns_of(segments), talk.duration)
    print(f"{name}: DER {score:.3f}, {len(speakers)} speakers, {talk.duration:.0f} s")
    assert score <= 0.10, (score, [(s.start, s.end, s.speaker, s.text) for s in segments])
    # The text is the segments' text, in order (Chinese is written without spaces).
    assert "".join("".join(s.text for s in segments).split()) == "".join(result.text.split())


def test_known_speakers_name_their_segments(client):
    talk = conversation("four-english")
    # Two of the four are named by a clip of their own voice (2-10 s, as OpenAI asks).
    references = {
        "agent": load("denoise_prompt")[RATE : 7 * RATE],
        "customer": np.concatenate(phrases(load("en_happy_prompt"))),
    }
    truth = {"agent": "dee", "customer": "ann"}
    result = diarize(
        client, talk.wav(),
        extra_body={
            "known_speaker_names": list(references),
            "known_speaker_references": [data_url(a) for a in references.values()],
        },
    ).parse()
    named = {name: [s for s in result.segments if truth_of(s, talk.turns) == who]
             for name, who in truth.items()}
    for name, segments in named.items():
        assert segments and {s.speaker for s in segments} == {name}, name
    others = {s.speaker for s in result.segments} - set(references)
    assert others == {"A", "B"}  # the two unnamed speakers, lettered
    assert der(talk.turns, turns_of(result.segments), talk.duration) <= 0.10


def test_streamed_segments_then_done(client, http, spec):
    talk = conversation("two-english")
    whole = diarize(client, talk.wav()).parse()
    response = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("talk.wav", talk.wav(), "audio/wav")},
        data={"model": MODEL, "response_format": "diarized_json", "stream": "true",
              "chunking_strategy": "auto"},
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "text/event-stream"
    )
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    schemas = {
        "transcript.text.delta": "TranscriptTextDeltaEvent",
        "transcript.text.segment": "TranscriptTextSegmentEvent",
        "transcript.text.done": "TranscriptTextDoneEvent",
    }
    for event in events:
        spec.validate(event, schemas[event["type"]])
    assert events[-1]["type"] == "transcript.text.done"
    segments = [e for e in events if e["type"] == "transcript.text.segment"]
    deltas = [e for e in events if e["type"] == "transcript.text.delta"]
    # Each segment's delta comes just before it and names it.
    assert [d["segment_id"] for d in deltas] == [s["id"] for s in segments]
    assert [(s["id"], s["speaker"]) for s in segments] == [
        (s.id, s.speaker) for s in whole.segments
    ]
    # The same words (Whisper's int8 decoding may punctuate a word differently run to run).
    assert wer(whole.text, events[-1]["text"]) <= 0.05
    assert events[-1]["usage"]["type"] == "tokens"

    # The SDK reads the same stream into its typed events.
    seen = list(client.audio.transcriptions.create(
        model=MODEL, file=("talk.wav", io.BytesIO(talk.wav()), "audio/wav"),
        response_format="diarized_json", chunking_strategy="auto", stream=True,
    ))
    typed = [e for e in seen if isinstance(e, openai.types.audio.TranscriptionTextSegmentEvent)]
    assert [(e.id, e.speaker) for e in typed] == [(s.id, s.speaker) for s in whole.segments]
    assert isinstance(seen[-1], openai.types.audio.TranscriptionTextDoneEvent)


def test_json_and_text_answer_the_transcript(client, spec):
    talk = conversation("two-english")
    whole = diarize(client, talk.wav()).parse()
    raw = client.audio.transcriptions.with_raw_response.create(
        model=MODEL, file=("talk.wav", io.BytesIO(talk.wav()), "audio/wav"),
        chunking_strategy="auto",
    )
    body = json.loads(raw.text)
    spec.validate(body, "CreateTranscriptionResponseJson")
    assert "segments" not in body and wer(whole.text, body["text"]) <= 0.05
    text = client.audio.transcriptions.create(
        model=MODEL, file=("talk.wav", io.BytesIO(talk.wav()), "audio/wav"),
        chunking_strategy="auto", response_format="text",
    )
    assert isinstance(text, str) and wer(whole.text, text) <= 0.05


def test_server_vad_chunking_is_taken_as_the_sdk_sends_it(client):
    talk = conversation("two-english")
    result = client.audio.transcriptions.create(
        model=MODEL, file=("talk.wav", io.BytesIO(talk.wav()), "audio/wav"),
        response_format="diarized_json",
        chunking_strategy={"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 400,
                           "prefix_padding_ms": 300},
    )
    assert {s.speaker for s in result.segments} == {"A", "B"}
    assert der(talk.turns, turns_of(result.segments), talk.duration) <= 0.10


def _error(call) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return caught.value.body


def test_openai_rules_for_the_diarize_model(client):
    talk = conversation("two-english")
    short = wav(talk.audio[: 20 * RATE])

    def create(file=short, **fields):
        return lambda: client.audio.transcriptions.create(
            model=fields.pop("model", MODEL), file=("talk.wav", io.BytesIO(file), "audio/wav"),
            **fields,
        )

    # Above 30 s a chunking_strategy is required; below it, none is.
    assert _error(create(talk.wav(), response_format="diarized_json"))["param"] == (
        "chunking_strategy"
    )
    assert client.audio.transcriptions.create(
        model=MODEL, file=("talk.wav", io.BytesIO(short), "audio/wav"),
        response_format="diarized_json",
    ).segments
    # Only the diarize model diarizes, and it answers json, text and diarized_json only.
    assert _error(create(model="whisper-1", response_format="diarized_json"))["param"] == (
        "response_format"
    )
    assert _error(create(response_format="srt"))["param"] == "response_format"
    assert _error(create(prompt="Speakers talk."))["param"] == "prompt"
    reference = data_url(talk.audio[RATE : 4 * RATE])
    assert _error(create(extra_body={"known_speaker_names": ["a", "b"],
                                     "known_speaker_references": [reference]}))["param"] == (
        "known_speaker_names"
    )
    # A reference must be 2 to 10 seconds of audio, in a data URL.
    for bad in (data_url(talk.audio[RATE : 2 * RATE]), "https://example.com/a.wav"):
        body = _error(create(extra_body={"known_speaker_names": ["a"],
                                         "known_speaker_references": [bad]}))
        assert body["param"] == "known_speaker_references"
    assert _error(create(chunking_strategy={"type": "server_vad", "threshold": 2}))[
        "param"
    ].startswith("chunking_strategy")


def test_reference_clips_count_as_audio_heard(gateway):
    """sk-in may have 20 s heard per minute: a 15 s upload with two 5 s references is
    refused whole (429, nothing charged); the upload alone then fits."""
    talk = conversation("two-english")
    clip = wav(talk.audio[: 15 * RATE])
    reference = data_url(talk.audio[RATE : 6 * RATE])
    with httpx.Client(
        base_url=gateway.url, headers={"authorization": "Bearer sk-in"}, timeout=600
    ) as http:
        def post(**extra):
            return http.post(
                "/v1/audio/transcriptions",
                files={"file": ("talk.wav", clip, "audio/wav")},
                data={"model": MODEL, "response_format": "diarized_json", **extra},
            )

        refused = post(**{"known_speaker_names[]": ["a", "b"],
                          "known_speaker_references[]": [reference, reference]})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        served = post()
        assert served.status_code == 200, served.text
        assert served.json()["segments"]
        again = post()  # 15 s more does not fit in the 5 s left
        assert again.status_code == 429, again.text


def test_node_sdk_reads_diarized_json_and_its_stream(gateway, node_sdk, tmp_path):
    talk = conversation("two-english")
    (tmp_path / "talk.wav").write_bytes(talk.wav())
    (tmp_path / "agent.wav").write_bytes(wav(np.concatenate(phrases(load("en_happy_prompt")))))
    result = subprocess.run(
        [node_sdk, str(NODE_DIR / "diarize.mjs"), gateway.url + "/v1", str(tmp_path / "talk.wav"),
         str(tmp_path / "agent.wav")],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    diarized = seen["diarized"]
    assert diarized["task"] == "transcribe" and diarized["usage"]["type"] == "duration"
    # ann (en_happy_prompt) is named "agent"; the other speaker is A.
    assert {s["speaker"] for s in diarized["segments"]} == {"agent", "A"}
    for segment in diarized["segments"]:
        expected = "agent" if truth_of(Turn(segment["start"], segment["end"], ""), talk.turns) == "ann" else "A"
        assert segment["speaker"] == expected, segment
    assert der(talk.turns, [Turn(s["start"], s["end"], s["speaker"]) for s in diarized["segments"]],
               talk.duration) <= 0.10
    stream = seen["stream"]
    assert stream["types"][-1] == "transcript.text.done"
    assert set(stream["types"][:-1]) == {"transcript.text.delta", "transcript.text.segment"}
    assert len(stream["segments"]) == len(diarized["segments"])
    assert {s["speaker"] for s in stream["segments"]} == {"A", "B"}
    assert wer(diarized["text"], stream["done"]) <= 0.05
