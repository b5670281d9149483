"""The HTTP server stack on its own, the figures that chose it (issue 11).

    .venv/bin/python bench/server_stack.py --seconds 2

A trivial ASGI app (the body read, a fixed chat completion, or 20 SSE chunks and
``[DONE]`` when the body asks for a stream) is served by each stack in its own process:
uvicorn with the gateway's deadline protocol (gateway/server.py) over h11 or httptools,
on asyncio or uvloop, and granian (asgi, uvloop) when it is importable, which keeps none
of the deadlines and is measured only to compare. The app costs almost nothing, so what
the server process spends per request and per chunk is the stack's own cost. Stacks are
alternated cell by cell, ``--rounds`` times, and medians reported: the client shares the
two cores (and other processes on the host may too), so throughput is noisy, CPU per
request much less so. The same load client as bench/overhead.py.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import overhead as ov  # noqa: E402

STACKS = {  # name: (parser, loop)
    "h11+asyncio": ("h11", "asyncio"),
    "httptools+asyncio": ("httptools", "asyncio"),
    "httptools+uvloop": ("httptools", "uvloop"),
}
CELLS = [(False, 1), (False, 32), (True, 1), (True, 32)]

_PLAIN = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": ov.MODEL,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "w" * 20},
            }
        ],
    }
).encode()
_CHUNK = (
    b"data: "
    + json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": ov.MODEL,
            "choices": [{"index": 0, "delta": {"content": " w"}, "finish_reason": None}],
        },
        separators=(",", ":"),
    ).encode()
    + b"\n\n"
)


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if b'"stream": true' not in body:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(_PLAIN)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _PLAIN})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for _ in range(ov.TOKENS):
        await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def serve(stack: str, port: int) -> None:
    import uvicorn

    from gateway.server import protocol_class, server_config
    from gateway.settings import load_settings

    parser, loop = STACKS[stack]
    settings = load_settings()
    settings.server.host, settings.server.port = "127.0.0.1", port
    config = server_config(app, settings, http=protocol_class(parser), loop=loop)
    uvicorn.Server(config).run()


def start(stack: str) -> tuple[subprocess.Popen, str]:
    port = ov.free_port()
    if stack == "granian":
        command = [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--loop",
            "uvloop",
            "--workers",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "bench.server_stack:app",
        ]
    else:
        command = [sys.executable, __file__, "--serve", stack, str(port)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    ov.wait_http(url + "/ready", proc, 60, stack)
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell (bound)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "server_stack.json")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    stacks = list(STACKS) + (["granian"] if importlib.util.find_spec("granian") else [])
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    cells: dict[str, dict[str, list[dict]]] = {stack: {} for stack in stacks}
    try:
        for stack in stacks:
            servers[stack] = start(stack)
        for _ in range(args.rounds):
            for streamed, concurrency in CELLS:
                key = f"{'stream' if streamed else 'plain'}@{concurrency}"
                for stack in stacks:
                    proc, url = servers[stack]
                    cell = asyncio.run(
                        ov.run_cell(url, proc.pid, streamed, concurrency, args.seconds, 100000)
                    )
                    cells[stack].setdefault(key, []).append(cell)
                    print(
                        f"{stack:18} {key:10} {cell['rps']:8.1f} req/s  CPU {cell['cpu_ms_per_request']} ms/req"
                        f"  errors {cell['errors']}",
                        flush=True,
                    )
    finally:
        for proc, _ in servers.values():
            ov.stop(proc)

    def median(runs: list[dict], field: str) -> float | None:
        values = [run[field] for run in runs if run[field] is not None]
        return round(statistics.median(values), 3) if values else None

    summary = {
        stack: {
            key: {
                field: median(runs, field)
                for field in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request", "cpu_us_per_chunk")
            }
            | {"errors": sum(run["errors"] for run in runs)}
            for key, runs in by_cell.items()
        }
        for stack, by_cell in cells.items()
    }
    print("\n| stack | cell | req/s | p50 ms | p99 ms | CPU ms/req | CPU µs/chunk | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for stack, by_cell in summary.items():
        for key, row in by_cell.items():
            print(
                f"| {stack} | {key} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} | "
                f"{row['cpu_ms_per_request']} | {row['cpu_us_per_chunk'] or ''} | {row['errors']} |"
            )
    load = os.getloadavg()
    print(
        f"\ncores {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"medians of {args.rounds} rounds of {args.seconds:g} s per cell"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "loadavg": load,
                "rounds": args.rounds,
                "seconds": args.seconds,
                "summary": summary,
                "runs": cells,
            },
            indent=2,
        )
    )
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
