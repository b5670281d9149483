"""The OpenAPI document we publish under openapi/, generated from the app's routes."""

from __future__ import annotations

import json
from pathlib import Path

from .settings import REPO_ROOT, Settings, load_settings

EXPORT_PATH = REPO_ROOT / "openapi" / "openapi.json"


def openapi_document(settings: Settings | None = None) -> dict:
    from .app import create_app

    app = create_app(settings or load_settings(), preload=False, configure_logs=False)
    return app.openapi_schema.to_schema()


def render(settings: Settings | None = None) -> str:
    return json.dumps(openapi_document(settings), indent=2, sort_keys=True) + "\n"


def export(path: Path = EXPORT_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(), encoding="utf-8")
    return path


if __name__ == "__main__":  # python -m gateway.openapi_export
    print(export())
