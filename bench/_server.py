"""A real gateway on a free loopback port, started in-process for the benchmarks."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from gateway.app import create_app  # noqa: E402
from gateway.settings import load_settings  # noqa: E402


def start_server(
    preload: list[str], options: dict[str, dict] | None = None
) -> tuple[uvicorn.Server, str]:
    """Serve with ``preload`` loaded and ``options`` (model id -> engine options) over the
    defaults; return the server and its base URL once ready."""
    settings = load_settings()
    settings.engines.preload = preload
    for model_id, extra in (options or {}).items():
        settings.models[model_id].options = {**settings.models[model_id].options, **extra}
    settings.server.log_level = "warning"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/ready").status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not start")


def streamed_speech(
    client: httpx.Client, voice: str, text: str, fmt: str
) -> tuple[float, list[tuple[float, int]], float, bytes]:
    """POST /v1/audio/speech and read the stream as it comes. Returns when the request
    started (``perf_counter``), each piece's arrival as (seconds since then, bytes
    received so far), the total seconds, and the whole body."""
    started = time.perf_counter()
    pieces: list[tuple[float, int]] = []
    body = bytearray()
    with client.stream(
        "POST",
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": voice, "input": text, "response_format": fmt},
    ) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            if chunk:
                body += chunk
                pieces.append((time.perf_counter() - started, len(body)))
    return started, pieces, time.perf_counter() - started, bytes(body)
