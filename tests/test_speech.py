"""POST /v1/audio/speech through the official openai SDK, as a user would call it."""

from __future__ import annotations

import base64
import json
import time

import pytest

from gateway.settings import load_settings
from tests.audio_utils import decode, duration, pcm_duration, rms, stream_info
from tests.conftest import PARAGRAPH, ROOT, start_server

SENTENCE = "Hello! This is the speech gateway, speaking from a plain CPU."

MAGIC = {
    "mp3": lambda b: b[:3] == b"ID3" or (b[0] == 0xFF and b[1] & 0xE0 == 0xE0),
    "opus": lambda b: b[:4] == b"OggS" and b"OpusHead" in b[:100],
    "aac": lambda b: b[0] == 0xFF and b[1] in (0xF1, 0xF9),
    "flac": lambda b: b[:4] == b"fLaC",
    "wav": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WAVE",
}
CONTENT_TYPES = {
    "mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac",
    "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm",
}


@pytest.fixture(scope="module")
def steady_client():
    """A gateway whose Piper samples no noise (``noise_scale`` and ``noise_w_scale`` 0), for
    the tests that compare two syntheses: by default Piper's unseeded noise makes every run
    of a text a little different, so those comparisons needed loose bounds and luck."""
    from openai import OpenAI

    settings = load_settings()
    settings.engines.preload = ["tts-1"]
    settings.models["piper-joe"].options = {"noise_scale": 0.0, "noise_w_scale": 0.0}
    live = start_server(settings)
    yield OpenAI(base_url=live.url + "/v1", api_key="sk-local", max_retries=0, timeout=120)
    live.stop()


@pytest.fixture(scope="module")
def reference_seconds(steady_client) -> float:
    pcm = steady_client.audio.speech.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format="pcm"
    ).content
    return pcm_duration(pcm)


def test_piper_without_noise_repeats_itself(steady_client):
    """What the comparisons below rest on: two syntheses of one text are the same samples."""
    first, second = (steady_client.audio.speech.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format="pcm").content for _ in range(2))
    assert first == second and pcm_duration(first) > 2.0


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_format_decodes_to_audio_of_plausible_duration(steady_client, fmt, reference_seconds):
    response = steady_client.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format=fmt
    )
    data = response.content
    assert response.headers["content-type"] == CONTENT_TYPES[fmt]
    assert response.headers["x-request-id"].startswith("req_")
    if fmt == "pcm":
        seconds = pcm_duration(data)  # 24 kHz s16le mono, no header
    else:
        assert MAGIC[fmt](data), data[:16]
        seconds = duration(data)
        assert stream_info(data)[2] == 1
    # A 10-word sentence takes a few seconds to say; every format carries the same audio.
    assert 2.0 < seconds < 8.0
    # The same samples in every format: only the codec's padding may differ.
    assert abs(seconds - reference_seconds) < 0.1, (seconds, reference_seconds)
    if fmt != "pcm":
        assert rms(decode(data)) > 0.02  # speech, not silence


def test_default_format_is_mp3(openai_client):
    response = openai_client.audio.speech.with_raw_response.create(
        model="tts-1", voice="alloy", input="Just the default."
    )
    assert response.headers["content-type"] == "audio/mpeg"
    assert MAGIC["mp3"](response.content)


def test_wav_and_pcm_are_24khz_mono(openai_client):
    wav = openai_client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="wav").content
    assert stream_info(wav) == ("pcm_s16le", 24000, 1)
    flac = openai_client.audio.speech.create(model="tts-1", voice="nova", input=SENTENCE, response_format="flac").content
    assert stream_info(flac)[1:] == (24000, 1)


def test_streamed_speech_starts_before_the_whole_answer_exists(openai_client):
    """Bytes of the first sentence arrive while later sentences are still being made."""
    text = " ".join([PARAGRAPH] * 3)
    started = time.perf_counter()
    arrivals = []
    with openai_client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="pcm"
    ) as response:
        for chunk in response.iter_bytes():
            if chunk:
                arrivals.append((time.perf_counter() - started, len(chunk)))
    first, last = arrivals[0][0], arrivals[-1][0]
    total_bytes = sum(n for _, n in arrivals)
    assert pcm_duration(b"\0" * total_bytes) > 20  # about 40 s of speech
    assert len(arrivals) > 5
    assert first < last / 3, (first, last)


def test_sse_stream_carries_base64_deltas_then_one_done_with_usage(http):
    with http.stream(
        "POST", "/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "pcm", "stream_format": "sse"},
        headers={"accept": "application/octet-stream"},  # what the SDK sends, even for SSE
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines[:3]
    events = [json.loads(line[6:]) for line in lines]
    *deltas, done = events
    assert deltas and all(e["type"] == "speech.audio.delta" for e in deltas)
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert 2.0 < pcm_duration(audio) < 8.0


@pytest.mark.parametrize("fmt", ["mp3", "opus", "pcm"])
def test_a_sentence_first_sends_a_short_lead_of_audio_then_the_rest(http, fmt):
    """Encoding a whole sentence to MP3 or Opus took 10-60 ms, all of it between the
    sentence being synthesised and its first byte leaving (issue 11: first audio byte
    within 20 ms of first-sentence synthesis). Its first 0.3 s now go out on their own:
    the first delta is a fraction of a second of playable audio, and the deltas together
    still make the whole answer."""
    text = "The gateway turns text into speech on an ordinary computer. It streams each sentence."
    with http.stream(
        "POST", "/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt, "stream_format": "sse"},
    ) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    pieces = [base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"]
    seconds = pcm_duration if fmt == "pcm" else duration
    lead, whole = seconds(pieces[0]), seconds(b"".join(pieces))
    assert 0.05 < lead < 0.35, lead  # the lead (0.15 s; MP3 holds a frame back), not the sentence
    assert 4.0 < whole < 9.0, whole
    assert len(pieces) >= 4  # a lead and a rest for each sentence (plus the codec's tail)


def test_sse_via_sdk_stream_format(openai_client):
    response = openai_client.audio.speech.create(
        model="gpt-4o-mini-tts", voice="coral", input=SENTENCE, stream_format="sse", response_format="mp3"
    )
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    mp3 = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert MAGIC["mp3"](mp3) and 2.0 < duration(mp3) < 9.0


@pytest.mark.parametrize("speed", [0.5, 2.0, 4.0, 0.25])
def test_speed_changes_tempo(steady_client, speed, reference_seconds):
    pcm = steady_client.audio.speech.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format="pcm", speed=speed
    ).content
    expected = reference_seconds / speed
    assert abs(pcm_duration(pcm) - expected) < 0.05 * expected, (pcm_duration(pcm), expected)


def median_f0(pcm: bytes, rate: int = 24000) -> float:
    """Median fundamental frequency of the voiced 40 ms frames (autocorrelation peak in
    70-400 Hz, counted as voiced when it explains over half the frame's energy)."""
    import numpy as np

    samples = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768
    size, low, high = int(0.04 * rate), rate // 400, rate // 70
    estimates = []
    for start in range(0, len(samples) - size, size // 2):
        frame = samples[start : start + size] - samples[start : start + size].mean()
        energy = float(np.dot(frame, frame))
        if energy < 1e-4:
            continue
        corr = np.correlate(frame, frame, "full")[size - 1 :]
        lag = low + int(np.argmax(corr[low:high]))
        if corr[lag] / energy > 0.5:
            estimates.append(rate / lag)
    assert len(estimates) >= 5
    return float(np.median(estimates))


def test_speed_keeps_pitch(steady_client):
    """A tempo change, not a resample: the voice's fundamental stays where it was (a
    resampling speed-up by 2 would double it)."""
    normal = steady_client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="pcm").content
    fast = steady_client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="pcm", speed=2.0).content
    assert abs(median_f0(fast) - median_f0(normal)) < 0.25 * median_f0(normal)


def test_instructions_are_accepted_and_change_nothing_on_the_embedded_voices(http):
    """Neither Piper nor Kokoro has a style control, and the docs say the field is ignored:
    so it is accepted, and the audio is the same sample for sample. (Kokoro has no random
    sampling, so the same input and voice give the same audio on every run.)"""
    row = next(line for line in (ROOT / "docs" / "compatibility.md").read_text().splitlines()
               if line.startswith("| `instructions` | ignored | the embedded engines"))
    assert "Kokoro" in row and "Piper" in row
    body = {"model": "gpt-4o-mini-tts", "voice": {"id": "jf_alpha"}, "input": SENTENCE, "response_format": "pcm"}
    plain = http.post("/v1/audio/speech", json=body)
    instructed = http.post("/v1/audio/speech", json={**body, "instructions": "Speak slowly and warmly, in a whisper."})
    assert plain.status_code == instructed.status_code == 200, instructed.text
    assert 2.0 < pcm_duration(plain.content) < 10.0
    assert instructed.content == plain.content


def test_japanese_is_spoken_by_kokoro_even_with_an_english_voice_name(openai_client):
    pcm = openai_client.audio.speech.create(
        model="tts-1", voice="alloy", input="こんにちは。今日はいい天気ですね。", response_format="pcm"
    ).content
    assert 1.0 < pcm_duration(pcm) < 8.0


def test_input_of_exactly_4096_characters_is_accepted(http):
    text = ("Tick tock. " * 400)[:4096]
    assert len(text) == 4096
    with http.stream("POST", "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}) as response:
        assert response.status_code == 200
        first = next(response.iter_bytes())
        assert first


VOICE_TEXTS = {
    "en": "Please call me back after lunch tomorrow.",
    "ja": "今日はとてもいい天気ですね。",  # "The weather is very nice today, isn't it."
}
VOICE_WORDS = {"en": ("call", "lunch", "tomorrow"), "ja": ("今日", "とても")}  # Whisper base may hear 天気 as 電気


def test_every_listed_voice_speaks_its_text_in_its_language(http):
    """Every engine voice says a whole sentence, in about the time it takes to say it, and
    Whisper hears it back in the right language with its key words; every OpenAI voice name
    says it as the engine voice it maps to first. A voice gets the language of that engine
    voice (Piper's joe: English; the Kokoro voices: Japanese, which they speak natively)."""
    voices = {v["id"]: v for v in http.get("/v1/audio/voices").json()["data"]}
    openai_names = {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar"}
    engine_names = {"joe", "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"}
    assert openai_names | engine_names <= set(voices)

    def speak(name: str, language: str) -> bytes:
        response = http.post("/v1/audio/speech", json={
            "model": "tts-1", "voice": name, "input": VOICE_TEXTS[language], "response_format": "wav"})
        assert response.status_code == 200, (name, response.text)
        seconds = duration(response.content)
        assert 1.0 < seconds < 5.0, (name, seconds)  # a seven-word sentence, a short Japanese one
        return response.content

    spoken = {}
    for name in sorted(engine_names):
        language = "en" if name == "joe" else "ja"
        spoken[name] = speak(name, language)
        heard = http.post(
            "/v1/audio/transcriptions", files={"file": ("v.wav", spoken[name], "audio/wav")},
            data={"model": "whisper-1", "response_format": "verbose_json"},
        ).json()
        assert heard["language"] == {"en": "english", "ja": "japanese"}[language], (name, heard)
        assert all(word in heard["text"].lower() for word in VOICE_WORDS[language]), (name, heard["text"])
    for name in sorted(openai_names):
        target = voices[name]["maps_to"][0]
        audio = speak(name, "en" if target == "joe" else "ja")
        if target != "joe":  # Kokoro is deterministic: the very audio that was heard above
            assert audio == spoken[target], (name, target)
