"""Schemathesis hooks for tests/test_schemathesis.py (loaded with SCHEMATHESIS_HOOKS).

Generated strings almost never name a real model or voice, so about two cases in three get
real ones (and a real WAV as the upload): those requests reach the engines. What would make
a run slow on 2 cores is bounded here (speech input, completion tokens, n), never skipped.
The ``error_envelope`` check holds every error to the OpenAI envelope the SDKs parse.
"""

from __future__ import annotations

import io
import os
import wave
from pathlib import Path

import numpy as np
import schemathesis
from hypothesis import strategies as st

CHAT_MODELS = ["gpt-4o-mini", "smollm2-135m", "gpt-4o"]
SPEECH_MODELS = ["tts-1", "embedded-tts", "piper-joe", "gpt-4o-mini-tts"]
TRANSCRIBE_MODELS = ["whisper-1", "whisper-tiny.en"]
VOICES = ["alloy", "ash", "nova", "joe", "jf_alpha", "echo"]
ALL_MODELS = CHAT_MODELS + SPEECH_MODELS + TRANSCRIBE_MODELS + ["kokoro-82m", "whisper-base"]
MAX_SPEECH_CHARS = 60
MAX_TOKENS = 8
MAX_N = 2


def _wav(seconds: float = 0.6, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


# Real speech when the test provides it (the gateway's own Piper voice, so Whisper finds
# words and segments); a tone otherwise.
WAV = Path(os.environ["SCHEMATHESIS_WAV"]).read_bytes() if os.environ.get("SCHEMATHESIS_WAV") else _wav()


def _real(names: list[str]):
    """A real name about two times in three, else (None) whatever was generated."""
    return st.one_of(st.sampled_from(names), st.none(), st.sampled_from(names))


@schemathesis.hook
def flatmap_case(context, case):
    path = case.operation.path
    if path == "/v1/models/{model_id}":
        return _real(ALL_MODELS).map(lambda m: _set_model_id(case, m))
    if not isinstance(case.body, dict):
        return st.just(case)
    if path == "/v1/audio/speech":
        return st.tuples(_real(SPEECH_MODELS), _real(VOICES)).map(lambda c: _speech(case, *c))
    if path == "/v1/chat/completions":
        return st.tuples(_real(CHAT_MODELS), _real(VOICES)).map(lambda c: _chat(case, *c))
    if path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
        real_audio = st.sampled_from([True, True, False])
        return st.tuples(_real(TRANSCRIBE_MODELS), real_audio).map(lambda c: _upload(case, *c))
    return st.just(case)


def _set_model_id(case, model):
    if model is not None:
        case.path_parameters = {**(case.path_parameters or {}), "model_id": model}
    return case


def _speech(case, model, voice):
    body = case.body
    if model is not None:
        body["model"] = model
    if voice is not None:
        body["voice"] = voice
    if isinstance(body.get("input"), str):
        body["input"] = body["input"][:MAX_SPEECH_CHARS]
    return case


def _chat(case, model, voice):
    body = case.body
    if model is not None:
        body["model"] = model
    limits = [key for key in ("max_tokens", "max_completion_tokens") if _is_int(body.get(key))]
    for key in limits:
        body[key] = min(body[key], MAX_TOKENS)
    if not limits:
        body["max_completion_tokens"] = MAX_TOKENS
    if _is_int(body.get("n")):
        body["n"] = min(body["n"], MAX_N)
    if voice is not None and isinstance(body.get("audio"), dict):
        body["audio"]["voice"] = voice
    return case


def _upload(case, model, real_audio):
    body = case.body
    if model is not None:
        body["model"] = model
    if real_audio:
        body["file"] = WAV
    return case


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@schemathesis.check
def error_envelope(ctx, response, case):
    """Every error answers {"error": {"message", "type", "param", "code"}}."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"error {response.status_code} as {content_type}"
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    return True
