"""The checked-in OpenAPI document is current; the console script and ``python -m gateway`` serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx

from gateway.openapi_export import EXPORT_PATH, render
from tests.conftest import ROOT, free_port


def test_checked_in_openapi_is_fresh():
    """Fails when the API changed without `python -m gateway.openapi_export`."""
    assert EXPORT_PATH.read_text(encoding="utf-8") == render(), (
        "openapi/openapi.json is stale: run `python -m gateway.openapi_export` and commit it"
    )


def test_openapi_documents_every_endpoint():
    document = json.loads(EXPORT_PATH.read_text())
    paths = document["paths"]
    for path in ("/v1/audio/speech", "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/models", "/v1/models/{model_id}", "/v1/audio/voices", "/health", "/ready"):
        assert path in paths
    upload = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"file", "model"} <= set(upload["required"])
    speech = paths["/v1/audio/speech"]["post"]["requestBody"]["content"]["application/json"]
    assert speech


def _serve(args: list[str], port: int) -> subprocess.Popen:
    env = {**os.environ, "GATEWAY__ENGINES__PRELOAD": '["whisper-tiny.en"]', "GATEWAY__SERVER__LOG_FORMAT": "json"}
    return subprocess.Popen(args + ["serve", "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_ready(port: int, timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("server did not become ready")


def _stop(process: subprocess.Popen) -> str:
    process.terminate()
    out, _ = process.communicate(timeout=20)
    return out.decode()


def test_python_dash_m_gateway_serves_and_logs_json():
    port = free_port()
    process = _serve([sys.executable, "-m", "gateway"], port)
    try:
        assert _wait_ready(port).json()["models"] == ["whisper-tiny.en"]
        response = httpx.get(f"http://127.0.0.1:{port}/v1/models")
        request_id = response.headers["x-request-id"]
    finally:
        output = _stop(process)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "request" and line.get("path") == "/v1/models"]
    assert access and access[0]["request_id"] == request_id and access[0]["status"] == 200


def test_console_script_serves():
    port = free_port()
    script = os.path.join(os.path.dirname(sys.executable), "step-audio-gateway")
    process = _serve([script], port)
    try:
        _wait_ready(port)
    finally:
        _stop(process)


def test_bad_config_exits_with_a_message(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'eighty'\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "port" in result.stderr
