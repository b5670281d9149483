"""/v1/realtime through the official Node SDK's realtime client (tests/node/realtime.mjs).

The Node SDK opens only ``wss://`` URLs, so this gateway is served over TLS with a
certificate made for the test, which Node is told to trust (``NODE_EXTRA_CA_CERTS``).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import threading
import time

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.settings import load_settings
from tests.conftest import NODE_DIR, free_port
from tests.test_realtime import QUESTION
from tests.test_transcription import wer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    settings = load_settings()
    settings.engines.preload = ["tts-1", "whisper-1", "gpt-4o-mini"]
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, configure_logs=False), host="127.0.0.1", port=port,
        log_level="warning", ssl_keyfile=str(key), ssl_certfile=str(cert),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", verify=trust, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError("TLS gateway did not become ready")
    yield url, cert
    server.should_exit = True
    thread.join(timeout=20)


@pytest.fixture(scope="module")
def observations(node_sdk, tls_gateway, openai_client, tmp_path_factory) -> dict:
    url, cert = tls_gateway
    pcm = openai_client.audio.speech.create(
        model="tts-1", voice="alloy", input=QUESTION, response_format="pcm"
    ).content
    path = tmp_path_factory.mktemp("node-rt") / "question.pcm"
    path.write_bytes(pcm)
    result = subprocess.run(
        [node_sdk, str(NODE_DIR / "realtime.mjs"), url + "/v1", str(path)],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(cert)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_node_server_vad_turn(observations):
    vad = observations["vad"]
    assert vad["started"] and vad["stopped"]
    assert wer(QUESTION, vad["transcript"]) <= 0.34, vad["transcript"]
    assert vad["status"] in ("completed", "incomplete") and vad["answer"].strip()
    assert vad["audio_bytes"] > 24_000  # over half a second of 24 kHz PCM


def test_node_manual_text_turn(observations):
    text = observations["text"]
    assert text["status"] in ("completed", "incomplete") and text["text"].strip()


def test_node_malformed_event_gets_error_and_session_continues(observations):
    error = observations["error"]
    assert error["event_id"] == "evt_node_bad" and error["param"] == "audio_end_ms"
    assert error["type"] == "invalid_request_error"
    assert observations["continued"]
    assert observations["sdk_errors"]  # the SDK surfaced it through its error listener


def test_readme_node_example_runs(node_sdk, tls_gateway):
    from tests.test_realtime import readme_blocks

    url, cert = tls_gateway
    for i, code in enumerate(readme_blocks("js")):
        script = NODE_DIR / f".readme-realtime-{os.getpid()}-{i}.mjs"  # beside node_modules
        script.write_text(code)
        try:
            result = subprocess.run(
                [node_sdk, str(script)], cwd=NODE_DIR, capture_output=True, text=True, timeout=300,
                env={**os.environ, "NODE_EXTRA_CA_CERTS": str(cert), "GATEWAY_URL": url + "/v1"},
            )
        finally:
            script.unlink()
        assert result.returncode == 0 and not result.stderr.strip(), result.stderr[-3000:]
        out = result.stdout.strip()
        assert re.search(r"\S.*\n\[(completed|incomplete)\]$", out, re.S), out
