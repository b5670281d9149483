"""``step-audio-gateway serve`` (and ``python -m gateway``): run the server; ``openapi``: print the spec;
``config-reference``: print docs/configuration.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .settings import SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="step-audio-gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the OpenAI-compatible API")
    serve.add_argument("--config", help="TOML settings file (default: config/default.toml)")
    serve.add_argument("--host", help="address to bind (default from settings)")
    serve.add_argument("--port", type=int, help="port to bind (default from settings)")
    spec = commands.add_parser("openapi", help="print the OpenAPI document as JSON")
    spec.add_argument("--config", help="TOML settings file")
    reference = commands.add_parser(
        "config-reference", help="print the configuration reference (docs/configuration.md)"
    )
    reference.add_argument("--config", help="TOML settings file whose defaults and comments to read")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"step-audio-gateway: {exc}", file=sys.stderr)
        return 2
    if args.command == "config-reference":
        from .config_reference import render
        from .settings import DEFAULT_CONFIG

        sys.stdout.write(render(Path(args.config) if args.config else DEFAULT_CONFIG))
        return 0
    if args.command == "openapi":
        from .openapi_export import openapi_document

        print(json.dumps(openapi_document(settings), indent=2, sort_keys=True))
        return 0
    return _serve(settings, args.host, args.port)


def _serve(settings, host: str | None, port: int | None) -> int:
    """One process (workers = 1, as tests run it in-process through server_config), or a
    supervisor and its worker processes (gateway/processes.py)."""
    import structlog

    from .logging import configure_logging
    from .processes import resolve_workers, serve_workers

    if host:
        settings.server.host = host
    if port:
        settings.server.port = port
    workers, why_one = resolve_workers(settings)
    configure_logging(settings.server.log_level, settings.server.log_format)
    log = structlog.get_logger("gateway")
    if why_one:
        log.info("one_worker_process", reason=why_one)
    log.info(
        "serving",
        url=f"http://{settings.server.host}:{settings.server.port}/v1",
        docs=f"http://{settings.server.host}:{settings.server.port}/docs",
        workers=workers,
    )
    if workers > 1:
        return serve_workers(settings, workers)

    import uvicorn

    from .app import create_app
    from .server import server_config

    server = uvicorn.Server(server_config(create_app(settings, settle_heap=True), settings))
    server.run()
    return 0 if server.started else 3  # 3: could not start (as uvicorn.run exits)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
