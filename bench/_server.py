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


def start_server(preload: list[str]) -> tuple[uvicorn.Server, str]:
    """Serve with ``preload`` loaded; return the server and its base URL once ready."""
    settings = load_settings()
    settings.engines.preload = preload
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
