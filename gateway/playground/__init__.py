"""The playground at ``/``: a page that drives the public API from the browser.

Plain HTML, CSS and JavaScript shipped in the package (no build step, nothing fetched from a
CDN), so it works on an offline host. It uses only what any client may use: ``/v1`` over
fetch and the ``/v1/realtime`` WebSocket, with the key typed into the page.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router, get
from litestar.response import File
from litestar.static_files import create_static_files_router

HERE = Path(__file__).parent / "static"


@get("/", include_in_schema=False, sync_to_thread=False)
def index() -> File:
    return File(HERE / "index.html", content_disposition_type="inline", media_type="text/html")


def playground_router() -> Router:
    assets = create_static_files_router(
        path="/playground", directories=[HERE], include_in_schema=False, name="playground"
    )
    return Router(path="/", route_handlers=[index, assets], include_in_schema=False)
