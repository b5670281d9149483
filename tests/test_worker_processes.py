"""``server.workers``: one gateway served by several worker processes, through real
``step-audio-gateway serve`` processes and a real redis-server.

What a client and an operator see: requests are answered by every worker, ``/metrics``
counts each request once whichever worker answered it and whichever answers the scrape,
a spoken reply's audio id made through one worker resolves through the other, a worker
that dies is replaced without its counts being lost or its gauges lingering, and the
settings that would lose state (memory backend, Step-Audio engines) are refused at start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.processes import usable_cores
from tests.conftest import free_port
from tests.redis_server import GATEWAY_BIN, ROOT, GatewayProcess, RedisServer

WORKERS = """
[server]
workers = {workers}
log_level = "info"
[engines]
preload = {preload}
[state]
backend = "redis"
redis_url = "{url}"
redis_prefix = "{prefix}"
"""

SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


def start(redis_server, *, workers="2", preload="[]", prefix="workers", env=None) -> GatewayProcess:
    config = WORKERS.format(workers=workers, preload=preload, url=redis_server.url, prefix=prefix)
    return GatewayProcess(config, env={"GATEWAY__SERVER__LOG_LEVEL": "info", **(env or {})}).wait_ready()


@pytest.fixture(scope="module")
def pair(redis_server):
    gateway = start(redis_server)
    yield gateway
    gateway.stop()


def samples(url: str, name: str) -> dict[str, float]:
    """``name``'s samples on /metrics, by their label text."""
    found = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) == name:
            found[match.group(2) or ""] = float(match.group(3))
    return found


def per_worker(url: str, name: str = "step_audio_gateway_worker_responses") -> dict[int, float]:
    return {
        int(re.search(r'pid="(\d+)"', labels).group(1)): value
        for labels, value in samples(url, name).items()
    }


def settled_responses(url: str, total: float, timeout: float = 10.0) -> dict[int, float]:
    """Each worker's response count once they add up to ``total`` (workers publish theirs
    about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = per_worker(url)
        if sum(counts.values()) == total or time.monotonic() > deadline:
            assert sum(counts.values()) == total, counts
            return counts
        time.sleep(0.2)


def requests_total(url: str) -> float:
    return sum(samples(url, "step_audio_gateway_requests_total").values())


def test_both_workers_answer_and_metrics_count_every_request_once(pair):
    before = requests_total(pair.url)
    counts = settled_responses(pair.url, before)
    sent = 0
    while sent < 400:
        for _ in range(40):  # a new connection each: the kernel hands it to either worker
            assert httpx.get(pair.url + "/v1/models", timeout=10).status_code == 200
        sent += 40
        counts = settled_responses(pair.url, before + sent)
        if len(counts) == 2 and min(counts.values()) > 0:
            break
    assert len(counts) == 2 and min(counts.values()) > 0, counts  # both workers answered
    assert requests_total(pair.url) == before + sent  # each counted once, in one scrape
    ready = per_worker(pair.url, "step_audio_gateway_worker_ready")
    assert ready == dict.fromkeys(counts, 1.0)
    assert samples(pair.url, "step_audio_gateway_state_backend_up") == {'backend="redis"': 1.0}
    page = httpx.get(pair.url + "/metrics").text
    families = [family.name for family in text_string_to_metric_families(page)]
    assert len(families) == len(set(families))  # each metric once, whichever worker answers
    assert not any(name.startswith(("process_", "python_")) for name in families)


def served_by(url: str, send) -> tuple[int, httpx.Response]:
    """Send one request and tell which worker answered it (its response count moved)."""
    before = settled_responses(url, requests_total(url))
    response = send()
    after = settled_responses(url, sum(before.values()) + 1)
    (pid,) = [pid for pid in after if after[pid] != before.get(pid, 0)]
    return pid, response


def chat(url: str, messages: list[dict], spoken: bool) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 4, "temperature": 0}
    if spoken:
        body |= {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=300)


def test_a_spoken_replys_audio_id_made_by_one_worker_resolves_on_the_other(redis_server):
    gateway = start(redis_server, preload='["gpt-4o-mini", "tts-1"]', prefix="audio-ids")
    try:
        maker, first = served_by(
            gateway.url, lambda: chat(gateway.url, [{"role": "user", "content": "Say hi."}], True)
        )
        assert first.status_code == 200, first.text
        follow = [
            {"role": "user", "content": "Say hi."},
            {
                "role": "assistant",
                "audio": {"id": first.json()["choices"][0]["message"]["audio"]["id"]},
            },
            {"role": "user", "content": "Again."},
        ]
        answers = {}
        for _ in range(40):
            pid, answer = served_by(gateway.url, lambda: chat(gateway.url, follow, False))
            answers[pid] = answer
            if len(answers) == 2:
                break
        unknown = chat(
            gateway.url,
            [follow[0], {"role": "assistant", "audio": {"id": "audio_" + "0" * 24}}, follow[2]],
            False,
        )
        loaded = samples(gateway.url, "step_audio_gateway_model_loaded")
        load_seconds = samples(gateway.url, "step_audio_gateway_model_load_seconds")
        deadline = time.monotonic() + 10  # until each worker has published since its last request
        while True:
            in_use = samples(gateway.url, "step_audio_gateway_model_requests_in_use")
            if in_use['model="smollm2-135m"'] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        gateway.stop()
    # The model gauges combine the workers' registries: loaded in any, holders summed.
    assert loaded['model="smollm2-135m"'] == 1.0 and loaded['model="whisper-base"'] == 0.0
    assert load_seconds['model="smollm2-135m"'] > 0
    assert in_use['model="smollm2-135m"'] == 0.0  # nothing in flight: no worker holds it
    assert in_use['model="piper-joe"'] == 2.0  # the speech router holds it, in each worker
    assert len(answers) == 2 and maker in answers, answers.keys()  # the maker and the other
    for answer in answers.values():
        assert answer.status_code == 200, answer.text
    assert unknown.status_code == 400 and "audio" in unknown.json()["error"]["param"]


def test_a_worker_that_dies_is_replaced_and_nothing_it_counted_is_lost(redis_server):
    gateway = start(redis_server, prefix="restart")
    try:
        for _ in range(30):
            httpx.get(gateway.url + "/v1/models", timeout=10)
        total = requests_total(gateway.url)
        old = settled_responses(gateway.url, total)
        victim = max(old, key=old.get)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready = per_worker(gateway.url, "step_audio_gateway_worker_ready")
            if len(ready) == 2 and victim not in ready and set(ready.values()) == {1.0}:
                break
            time.sleep(0.3)
        assert victim not in ready and len(ready) == 2, ready  # replaced; its gauges gone
        assert httpx.get(gateway.url + "/ready", timeout=10).status_code == 200
        assert requests_total(gateway.url) == total + 1  # the dead worker's counts remain
    finally:
        gateway.stop()


def test_every_worker_keeps_the_connection_deadlines(redis_server):
    """The deadline protocol and its settings reach the spawned workers: a head that
    stalls is answered 408 after header_timeout_seconds, whichever worker holds it."""
    gateway = start(
        redis_server, prefix="deadlines", env={"GATEWAY__SERVER__HEADER_TIMEOUT_SECONDS": "1"}
    )
    try:
        answers, took = [], []
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
                began = time.monotonic()
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")  # never ends
                answers.append(sock.recv(65536))
                took.append(time.monotonic() - began)
    finally:
        gateway.stop()
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers
    assert all(0.9 < seconds < 5 for seconds in took), took


def test_a_worker_retired_by_sigttou_leaves_the_gateway_ready(redis_server):
    """uvicorn's supervisor takes SIGTTOU as "one worker fewer": the one left is all
    readiness waits for, and the retired one's live gauges go."""
    gateway = start(redis_server, prefix="ttou")
    try:
        before = per_worker(gateway.url, "step_audio_gateway_worker_ready")
        gateway.process.send_signal(signal.SIGTTOU)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = per_worker(gateway.url, "step_audio_gateway_worker_ready")
            if len(after) == 1:
                break
            time.sleep(0.2)
        time.sleep(1)  # the supervisor's next beat records the new target
        statuses = [httpx.get(gateway.url + "/ready", timeout=10).status_code for _ in range(5)]
    finally:
        gateway.stop()
    assert len(before) == 2 and len(after) == 1 and set(after) < set(before), (before, after)
    assert statuses == [200] * 5


def test_sigterm_lets_a_request_in_flight_finish_then_stops_every_worker(redis_server):
    gateway = start(redis_server, prefix="stop")
    body = b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}'
    try:
        workers = per_worker(gateway.url, "step_audio_gateway_worker_ready")
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
                % len(body)
                + body[:20]
            )
            time.sleep(0.5)  # the request is in flight, its body half sent
            gateway.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            sock.sendall(body[20:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert gateway.process.wait(timeout=30) == 0
    finally:
        gateway.stop()
    assert answer.startswith(b"HTTP/1.1 404"), answer  # answered in full, not cut
    assert b'"code":"model_not_found"' in answer.replace(b" ", b"")
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), pid
    with pytest.raises(httpx.ConnectError):
        httpx.get(gateway.url + "/health", timeout=5)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_auto_is_one_worker_per_usable_core_on_redis(redis_server):
    gateway = start(redis_server, workers='"auto"', prefix="auto")
    try:
        ready = per_worker(gateway.url, "step_audio_gateway_worker_ready")
        log = gateway.output()
    finally:
        gateway.stop()
    cores = usable_cores()  # the affinity's cores, under this host's cgroup quota if any
    assert f'"workers": {cores}' in log, log
    if cores > 1:
        assert len(ready) == cores
    else:  # one process: no per-worker series
        assert ready == {}


def serve(env: dict[str, str], seconds: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(GATEWAY_BIN), "serve", "--port", "1"],
        cwd=ROOT,
        env={**os.environ, "GATEWAY__ENGINES__PRELOAD": "[]", **env},
        capture_output=True,
        text=True,
        timeout=seconds,
    )


def test_more_than_one_worker_on_memory_state_is_refused():
    result = serve({"GATEWAY__SERVER__WORKERS": "2"})
    assert result.returncode == 2
    assert "server.workers = 2 needs a shared state backend" in result.stderr
    assert 'backend = "redis"' in result.stderr


def test_more_than_one_worker_with_the_step_audio_engines_is_refused(tmp_path):
    result = serve(
        {
            "GATEWAY__SERVER__WORKERS": "2",
            "GATEWAY__STATE__BACKEND": "redis",
            "GATEWAY__STEP_AUDIO__MODEL_DIR": str(tmp_path),
        }
    )
    assert result.returncode == 2
    assert "step-audio-tts-3b once per worker process" in result.stderr
    assert "one per GPU" in result.stderr


@pytest.mark.parametrize(
    "env, reason",
    [
        ({}, 'state.backend is "memory"'),
        (
            {"GATEWAY__STATE__BACKEND": "redis", "GATEWAY__STEP_AUDIO__MODEL_DIR": "/nowhere"},
            "keep one copy per gateway",
        ),
    ],
)
def test_auto_is_one_worker_and_says_why_on_memory_state_or_with_step_audio(env, reason):
    process = subprocess.Popen(
        [str(GATEWAY_BIN), "serve", "--port", str(free_port())],
        cwd=ROOT,
        env={
            **os.environ,
            "GATEWAY__ENGINES__PRELOAD": "[]",
            "GATEWAY__SERVER__LOG_LEVEL": "info",
            "GATEWAY__SERVER__LOG_FORMAT": "json",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any('"serving"' in line for line in lines):
            lines.append(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(timeout=30)
    events = {e["event"]: e for e in map(json.loads, (x for x in lines if x.startswith("{")))}
    assert events["serving"]["workers"] == 1, lines
    assert reason in events["one_worker_process"]["reason"], lines


ASSEMBLE = """
import hashlib, sys
from pathlib import Path
from engines.embedded.assets import whisper_base_dir
folder = whisper_base_dir(Path(sys.argv[1]))
print(hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest())
"""


def test_workers_starting_together_assemble_whisper_base_once_and_whole(tmp_path):
    """Every worker loads its engines at start, at the same moment: Whisper base, joined
    from its part packages on first use, must come out whole for each of them."""
    from engines.embedded.assets import WHISPER_BASE_SHA256

    workers = [
        subprocess.Popen(
            [sys.executable, "-c", ASSEMBLE, str(tmp_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0], results
    assert [out.strip() for out, _ in results] == [WHISPER_BASE_SHA256] * 3
    assert sum("assembling whisper-base" in err for _, err in results) == 1  # once


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"cpu.max": "50000 100000\n"}, 1),  # cgroup v2, docker run --cpus 0.5
        ({"cpu.max": "max 100000\n"}, None),  # no quota: every core of the affinity
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_auto_counts_the_cores_a_container_may_use(tmp_path, files, expected):
    """A CPU quota cannot be set on this host, so its cgroup files are written in a folder
    standing in for /sys/fs/cgroup."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cores = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == (min(expected, cores) if expected else cores)
