"""What the gateway adds in front of a chat upstream, side by side with LiteLLM (issue 11).

One command, loopback only, bounded in time:

    .venv/bin/python bench/overhead.py                 # ~5 s per cell, 18 cells
    .venv/bin/python bench/overhead.py --seconds 2 --no-litellm   # a quick look
    .venv/bin/python bench/overhead.py --seconds 2 --no-litellm --workers 2   # 2 processes

An upstream that costs almost nothing (raw asyncio protocol in its own process, no sleeps,
20 one-token SSE chunks, vLLM's OpenAI format for both ``/v1/completions``, what the
gateway's Step-Audio chat engine calls, and ``/v1/chat/completions``, what the direct
client and LiteLLM call) is measured three ways: called directly, through the gateway (a
``step-audio-gateway serve`` process with the Step-Audio chat engine pointed at it) and
through the LiteLLM proxy (one worker, logging off; installed by this script into its own
benchmark-only venv, ``.bench/litellm-venv``, pinned below; if that install fails the
script says so and reports direct and gateway only).

For each target, non-streamed and streamed, at concurrency 1, 32 and 128: latency p50/p99
(time to first token too, when streamed) and what the proxy adds over direct, throughput,
errors, the server process's CPU (user+system from /proc, children included) per request
and per upstream token chunk, and its RSS. The client is the same httpx client for all
three, so its own cost cancels out of the "added" figures but not out of throughput: on a
2-core machine client, proxy and upstream share the cores, and other processes on the
host may too (the load average is printed with the results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LITELLM_VERSION = "1.108.0"
LITELLM_VENV = ROOT / ".bench" / "litellm-venv"
TOKENS = 20
CONCURRENCY = (1, 32, 128)
MODEL = "bench-chat"

# ----------------------------------------------------------------------------- fake upstream


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(payload: dict) -> bytes:
    return _chunked(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


def _responses() -> dict[tuple[str, bool], list[bytes]]:
    """Every answer the upstream gives, built once: (path, streamed) -> writes."""
    words = [f" w{i}" for i in range(TOKENS)]
    usage = {"prompt_tokens": 10, "completion_tokens": TOKENS, "total_tokens": 10 + TOKENS}
    sse_head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    tail = [_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"]

    def plain(body: dict) -> list[bytes]:
        data = json.dumps(body).encode()
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        return [head % len(data) + data]

    def completion(choices: list, **extra) -> dict:
        return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": MODEL,
                "choices": choices, **extra}

    def chat(choices: list, **extra) -> dict:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                "model": MODEL, "choices": choices, **extra}

    out = {
        ("/v1/completions", True): [sse_head]
        + [_sse(completion([{"index": 0, "text": w, "logprobs": None, "finish_reason": None}]))
           for w in words]
        + [_sse(completion([{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}])),
           _sse(completion([], usage=usage))] + tail,
        ("/v1/completions", False): plain(completion(
            [{"index": 0, "text": "".join(words), "logprobs": None, "finish_reason": "stop"}],
            usage=usage)),
        ("/v1/chat/completions", True): [sse_head]
        + [_sse(chat([{"index": 0, "delta": {"role": "assistant", "content": w},
                       "finish_reason": None}])) for w in words]
        + [_sse(chat([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
           _sse(chat([], usage=usage))] + tail,
        ("/v1/chat/completions", False): plain({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "".join(words)}}],
            "usage": usage}),
    }
    out[("/v1/models", False)] = plain({"object": "list", "data": [
        {"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]})
    return out


class _Upstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive, pipelining-safe, just enough of it for the benchmark."""

    answers: dict = {}
    connections = 0

    def connection_made(self, transport) -> None:
        type(self).connections += 1
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            path = head.split(" ", 2)[1]
            if path == "/health":
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                continue
            streamed = b'"stream":true' in body.replace(b" ", b"")
            writes = self.answers.get((path, streamed)) or self.answers.get((path, False))
            if writes is None:
                self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                continue
            for write in writes:
                self.transport.write(write)


def serve_upstream(port: int) -> None:
    _Upstream.answers = _responses()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", port)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its waited-for children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    total = ticks / os.sysconf("SC_CLK_TCK")
    for child in _children(pid):
        total += cpu_seconds(child)
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_mib(pid: int) -> float:
    total = 0.0
    for p in [pid, *_children(pid)]:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not become ready in {timeout:g} s")


def start_upstream() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc, f"http://127.0.0.1:{port}"


GATEWAY_CONFIG = """
[engines]
preload = ["{model}"]
max_queue = 100000
[server]
max_connections = 0
[models."{model}"]
engine = "step-audio-chat"
options = {{ vllm_urls = ["{upstream}"], check_tokenizer = false, health_interval = 60.0 }}
"""


def start_gateway(upstream: str, workers: int | None = None, cleanup: list | None = None):
    """The gateway under test; ``workers`` (server.workers) above 1 needs the state shared,
    so a redis-server of its own is started for it (and stopped through ``cleanup``)."""
    from tests.redis_server import GatewayProcess, RedisServer

    config = GATEWAY_CONFIG.format(model=MODEL, upstream=upstream)
    if workers is not None and workers > 1:
        redis = RedisServer()
        if cleanup is not None:
            cleanup.append(redis.stop)
        config += f'[state]\nbackend = "redis"\nredis_url = "{redis.url}"\n'
    env = {"GATEWAY__SERVER__WORKERS": str(workers)} if workers is not None else None
    gateway = GatewayProcess(config, env=env)
    gateway.wait_ready(120)
    return gateway


def install_litellm() -> Path | None:
    """The LiteLLM proxy in its own venv (never the gateway's); None, said why, if that fails."""
    binary = LITELLM_VENV / "bin" / "litellm"
    marker = LITELLM_VENV / f".installed-{LITELLM_VERSION}"
    if marker.exists() and binary.exists():
        return binary
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} ...", flush=True)
    try:
        if not (LITELLM_VENV / "bin" / "pip").exists():
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q",
                        f"litellm[proxy]=={LITELLM_VERSION}"], check=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"LiteLLM could not be installed here ({exc}); reporting direct and gateway only.")
        return None
    marker.touch()
    return binary


LITELLM_CONFIG = """
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {upstream}/v1
      api_key: sk-bench
litellm_settings:
  turn_off_message_logging: true
  disable_spend_logs: true
  telemetry: false
general_settings:
  disable_spend_logs: true
"""


def start_litellm(binary: Path, upstream: str) -> tuple[subprocess.Popen, str, object]:
    port = free_port()
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    config.write(LITELLM_CONFIG.format(model=MODEL, upstream=upstream))
    config.close()
    log = tempfile.TemporaryFile()
    # A master key, as any real deployment has (1.108 refuses to start without one); the
    # client sends it as its bearer token to every target.
    env = {**os.environ, "LITELLM_MASTER_KEY": "sk-bench", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
           "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True"}
    proc = subprocess.Popen([str(binary), "--config", config.name, "--host", "127.0.0.1",
                             "--port", str(port), "--num_workers", "1", "--telemetry", "False"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health/liveliness", proc, 180, "LiteLLM proxy")
    except RuntimeError:
        log.seek(0)
        print(log.read().decode(errors="replace")[-3000:])
        proc.kill()
        raise
    return proc, url, log


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- load


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def run_cell(url: str, pid: int | None, streamed: bool, concurrency: int,
                   seconds: float, max_requests: int) -> dict:
    """``concurrency`` workers send requests back to back until ``seconds`` pass or
    ``max_requests`` are done."""
    import httpx

    body = json.dumps({"model": MODEL, "max_tokens": TOKENS, "stream": streamed,
                       "messages": [{"role": "user", "content": "Say twenty words."}]}).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    latencies: list[float] = []
    ttfts: list[float] = []
    chunks = 0
    errors: dict[str, int] = {}
    started = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(30.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        for _ in range(min(concurrency, 8)):  # warm: connections, lazy imports, caches
            await client.post("/v1/chat/completions", content=body, headers=headers)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal started, chunks
            while time.perf_counter() < deadline and started < max_requests:
                started += 1
                begin = time.perf_counter()
                try:
                    if not streamed:
                        response = await client.post("/v1/chat/completions", content=body,
                                                     headers=headers)
                        response.read()
                        if response.status_code != 200 or b'"choices"' not in response.content:
                            raise RuntimeError(f"HTTP {response.status_code}")
                    else:
                        first = None
                        seen = 0
                        done = False
                        async with client.stream("POST", "/v1/chat/completions", content=body,
                                                 headers=headers) as response:
                            if response.status_code != 200:
                                raise RuntimeError(f"HTTP {response.status_code}")
                            async for line in response.aiter_lines():
                                if not line.startswith("data:"):
                                    continue
                                if line.strip() == "data: [DONE]":
                                    done = True
                                    continue
                                if first is None and '"content":"' in line.replace(" ", ""):
                                    first = time.perf_counter()
                                seen += 1
                        if not done or first is None:
                            raise RuntimeError("stream ended without [DONE] or content")
                        ttfts.append(first - begin)
                        chunks += seen
                    latencies.append(time.perf_counter() - begin)
                except Exception as exc:  # noqa: BLE001 - counted, reported
                    key = type(exc).__name__ + (f": {exc}" if isinstance(exc, RuntimeError) else "")
                    errors[key] = errors.get(key, 0) + 1

        cpu0 = cpu_seconds(pid) if pid else 0.0
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu = (cpu_seconds(pid) - cpu0) if pid else 0.0
    done = len(latencies)
    return {
        "requests": done,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_s": round(wall, 3),
        "rps": round(done / wall, 1) if wall else 0.0,
        "p50_ms": round(percentile(latencies, 50) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 99) * 1e3, 3),
        "ttft_p50_ms": round(percentile(ttfts, 50) * 1e3, 3) if streamed else None,
        "ttft_p99_ms": round(percentile(ttfts, 99) * 1e3, 3) if streamed else None,
        "chunks_per_s": round(chunks / wall, 1) if streamed and wall else None,
        "cpu_ms_per_request": round(cpu / done * 1e3, 3) if pid and done else None,
        "cpu_us_per_chunk": round(cpu / (done * TOKENS) * 1e6, 1) if pid and done and streamed else None,
        "rss_mib": round(rss_mib(pid), 1) if pid else None,
    }


def table(results: dict) -> str:
    rows = ["| target | mode | c | req | err | p50 ms | p99 ms | added p50 | added p99 | TTFT p50 "
            "| req/s | CPU ms/req | CPU µs/chunk | RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    direct = results.get("direct", {})
    for target, cells in results.items():
        for key, cell in cells.items():
            mode, c = key.split("@")
            base = direct.get(key)
            added = ("" , "")
            if base and target != "direct":
                added = (f"{cell['p50_ms'] - base['p50_ms']:+.2f}", f"{cell['p99_ms'] - base['p99_ms']:+.2f}")
            fmt = lambda v: "" if v is None else f"{v:g}"  # noqa: E731
            rows.append(
                f"| {target} | {mode} | {c} | {cell['requests']} | {cell['errors']} | "
                f"{cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | {added[0]} | {added[1]} | "
                f"{fmt(cell['ttft_p50_ms'])} | {cell['rps']:g} | {fmt(cell['cpu_ms_per_request'])} | "
                f"{fmt(cell['cpu_us_per_chunk'])} | {fmt(cell['rss_mib'])} |")
    return "\n".join(rows)


def time_wait(port: str) -> int:
    """Sockets in TIME_WAIT towards ``port`` (hex), from /proc/net/tcp."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "06" and (parts[1].endswith(":" + port) or parts[2].endswith(":" + port)):
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell (bound)")
    parser.add_argument("--max-requests", type=int, default=5000, help="per cell (bound)")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--workers", type=int, default=None,
                        help="the gateway's server.workers (default: its own default, \"auto\"; "
                        "above 1 a redis-server is started for its shared state)")
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "overhead.json")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return

    upstream, upstream_url = start_upstream()
    upstream_port = "%04X" % int(upstream_url.rsplit(":", 1)[1])
    targets: dict[str, tuple[str, int | None]] = {"direct": (upstream_url, upstream.pid)}
    cleanup = [lambda: stop(upstream)]
    results: dict[str, dict] = {}
    notes: list[str] = []
    try:
        gateway = start_gateway(upstream_url, args.workers, cleanup)
        cleanup.append(gateway.stop)
        targets["gateway"] = (gateway.url, gateway.process.pid)
        if not args.no_litellm:
            binary = install_litellm()
            if binary is None:
                notes.append("LiteLLM not installed (see above)")
            else:
                try:
                    proc, url, _log = start_litellm(binary, upstream_url)
                    cleanup.append(lambda: stop(proc))
                    targets["litellm"] = (url, proc.pid)
                except RuntimeError as exc:
                    notes.append(f"LiteLLM did not start: {exc}")
        for name, (url, pid) in targets.items():
            results[name] = {}
            tw_before = time_wait(upstream_port)
            for streamed in (False, True):
                for c in CONCURRENCY:
                    key = f"{'stream' if streamed else 'plain'}@{c}"
                    cell = asyncio.run(run_cell(url, pid, streamed, c, args.seconds, args.max_requests))
                    results[name][key] = cell
                    print(f"{name:8} {key:10} {cell['requests']:6} req  p50 {cell['p50_ms']:8.2f} ms  "
                          f"p99 {cell['p99_ms']:8.2f} ms  {cell['rps']:8.1f} req/s  "
                          f"errors {cell['errors']} {cell['error_kinds'] or ''}", flush=True)
            served = sum(cell["requests"] for cell in results[name].values())
            results[name]["upstream_time_wait_growth"] = {
                "requests": served, "time_wait": time_wait(upstream_port) - tw_before}
    finally:
        for step in reversed(cleanup):
            step()
    growth = {name: cells.pop("upstream_time_wait_growth") for name, cells in results.items()}
    load = os.getloadavg()
    report = {"tokens_per_request": TOKENS, "seconds_per_cell": args.seconds,
              "gateway_workers": args.workers or "default",
              "cores": os.cpu_count(), "loadavg": load, "litellm_version": LITELLM_VERSION,
              "time_wait_growth": growth, "notes": notes, "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print()
    print(table(results))
    print()
    print(f"upstream sockets left in TIME_WAIT (loopback, per target): {growth}")
    print(f"cores {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          "(other processes on this host share the cores)")
    for note in notes:
        print("note:", note)
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
