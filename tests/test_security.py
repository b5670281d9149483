"""Safe to expose: keys decided on the routed path, replies owned by their key, server
timeouts, and ``Allow`` on OPTIONS (issue 8, items 1, 9, 10 and 11).

One gateway serves the module, started exactly as ``step-audio-gateway serve`` starts
it (gateway.server.server_config) but with one-second timeouts, two keys (one given as
its sha256) and the real embedded engines. Requests whose path a client library would
tidy up, and clients that stall or trickle, are written on raw sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from adapters.voice_owners import VoiceOwners
from gateway.app import create_app
from gateway.server import DeadlineHttpToolsProtocol, protocol_class, server_config
from gateway.settings import load_settings
from tests.conftest import LiveServer, free_port

KEY_A = "sk-alpha-0123456789"
KEY_B = "sk-bravo-9876543210"  # configured only as its sha256
TIMEOUT = 1.0  # header, body idle and keep-alive timeouts of the module's server
MIN_RATE = 200.0  # bytes per second
SLACK = 1.5  # scheduling on a busy two-core machine


class ServedAsServe(LiveServer):
    """LiveServer, but with the uvicorn configuration ``serve`` uses (``overrides`` on top)."""

    def __init__(self, settings, registry=None, **overrides) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings.server.port = self.port
        app = create_app(settings, registry, configure_logs=False)
        self.server = uvicorn.Server(server_config(app, settings, lifespan="on", **overrides))
        self.thread = threading.Thread(target=self.server.run, daemon=True)


def timed_settings(preload: list[str]):
    settings = load_settings()
    settings.server.api_keys = [KEY_A, "sha256:" + hashlib.sha256(KEY_B.encode()).hexdigest()]
    settings.server.header_timeout_seconds = TIMEOUT
    settings.server.body_idle_timeout_seconds = TIMEOUT
    settings.server.body_min_bytes_per_second = MIN_RATE
    settings.server.keep_alive_timeout_seconds = TIMEOUT
    settings.engines.preload = preload
    return settings


@pytest.fixture(scope="module")
def gateway():
    live = ServedAsServe(timed_settings(["tts-1", "gpt-4o-mini"])).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def h11_gateway():
    """The same server on the h11 fallback (where httptools is not installed)."""
    live = ServedAsServe(timed_settings(["tts-1"]), http=protocol_class("h11")).start()
    yield live
    live.stop()


@pytest.fixture(params=["httptools", "h11"])
def timed(request):
    """The server timeouts hold on both HTTP parsers the deadlines run over."""
    return request.getfixturevalue("gateway" if request.param == "httptools" else "h11_gateway")


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "connection": "close"}


# ------------------------------------------------------------------ raw HTTP


def connect(gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def raw_request(gateway, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, bytes]:
    """Send the request line exactly as given (no client tidies the path) and read the answer."""
    lines = [f"{method} {target} HTTP/1.1", "host: 127.0.0.1", "connection: close",
             f"content-length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with connect(gateway) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        answer = read_all(sock)
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a content-length, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed before a whole response head"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def closed_after(sock: socket.socket, since: float) -> tuple[float, bytes]:
    """Wait for the server to close; seconds from ``since`` and whatever it wrote."""
    data = read_all(sock)
    return time.monotonic() - since, data


# ------------------------------------------------------------------ 1. keys on the routed path

SPEECH = json.dumps({"model": "tts-1", "input": "hello", "voice": "alloy"}).encode()
TRICKY = [
    ("GET", "//v1/models"),
    ("GET", "///v1/models"),
    ("GET", "/v1//models"),
    ("GET", "/v1/models/"),
    ("GET", "//v1/models/whisper-1"),
    ("GET", "/%76%31/models"),
    ("GET", "/v1%2Fmodels"),
    ("GET", "/v1/models/."),
    ("GET", "/v1/models/./"),
    ("GET", "/./v1/models"),
    ("GET", "/v1/./models"),
    ("GET", "/health/../v1/models"),
    ("GET", "/V1/models"),
    ("GET", "/v1"),
    ("GET", "/v1/no-such-thing"),
    ("GET", "/no-such-thing"),
    ("DELETE", "/v1/audio/speech"),
    ("POST", "//v1/audio/speech"),
    ("POST", "///v1/audio/transcriptions"),
    ("POST", "//v1/chat/completions"),
    ("GET", "//v1/audio/voices"),
]


@pytest.mark.parametrize(("method", "target"), TRICKY)
def test_no_key_no_answer_whatever_the_path_spelling(gateway, method, target):
    status, body = raw_request(gateway, method, target, body=SPEECH if method == "POST" else b"")
    assert status == 401, (target, body[:200])
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    status, _ = raw_request(gateway, method, target, {"authorization": "Bearer sk-wrong"})
    assert status == 401


@pytest.mark.parametrize("target", ["//v1/models", "///v1/models", "/%76%31/models", "/v1/models/"])
def test_a_good_key_is_served_on_every_spelling_the_router_accepts(gateway, target):
    status, body = raw_request(gateway, "GET", target, {"authorization": f"Bearer {KEY_A}"})
    assert status == 200 and json.loads(body)["object"] == "list"


def test_keys_given_as_sha256_are_accepted_and_the_digest_itself_is_not(gateway):
    digest = "sha256:" + hashlib.sha256(KEY_B.encode()).hexdigest()
    assert httpx.get(gateway.url + "/v1/models", headers=auth(KEY_B)).status_code == 200
    assert httpx.get(gateway.url + "/v1/models", headers={"api-key": KEY_B}).status_code == 200
    assert httpx.get(gateway.url + "/v1/models", headers=auth(digest)).status_code == 401
    assert httpx.get(gateway.url + "/v1/models", headers=auth(KEY_B[:-1])).status_code == 401


def test_health_readiness_and_preflight_stay_open(gateway):
    assert httpx.get(gateway.url + "/health").status_code == 200
    assert httpx.get(gateway.url + "/ready").status_code == 200
    status, _ = raw_request(gateway, "OPTIONS", "/v1/models")
    assert status == 204


def test_unknown_paths_answer_404_to_a_key_holder(gateway):
    status, body = raw_request(gateway, "GET", "/v1/no-such-thing", {"authorization": f"Bearer {KEY_A}"})
    assert status == 404 and json.loads(body)["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------ 9. server timeouts

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + KEY_A.encode() + b"\r\ncontent-type: application/json\r\n"
SPEECH_HEAD = HEAD.replace(b"/v1/chat/completions", b"/v1/audio/speech")


def test_a_silent_connection_is_closed_within_the_header_timeout(timed):
    with connect(timed) as sock:
        seconds, data = closed_after(sock, time.monotonic())
    assert data == b"" and TIMEOUT * 0.9 <= seconds <= TIMEOUT + SLACK, seconds


def test_a_stalled_header_is_answered_408_and_closed(timed):
    with connect(timed) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        seconds, data = closed_after(sock, time.monotonic())
    print(f"stalled header closed after {seconds:.2f} s (header timeout {TIMEOUT} s)")
    assert data.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in data
    assert TIMEOUT * 0.9 <= seconds <= TIMEOUT + SLACK, seconds


def test_a_trickled_header_is_cut_at_the_deadline_despite_activity(timed):
    with connect(timed) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nx-slow: ")
        try:
            for _ in range(int((TIMEOUT + SLACK) * 20) + 20):
                sock.sendall(b"a")
                time.sleep(0.05)
        except OSError:  # reset by the server: it closed the connection
            pass
        seconds, data = closed_after(sock, started)
    assert data.startswith(b"HTTP/1.1 408 ") or data == b""
    assert seconds <= TIMEOUT + SLACK, seconds


def test_a_stalled_body_is_answered_408_and_closed(timed):
    with connect(timed) as sock:
        sock.sendall(HEAD + b"content-length: 5000\r\n\r\n" + b'{"model": ')
        seconds, data = closed_after(sock, time.monotonic())
    assert data.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in data
    assert TIMEOUT * 0.9 <= seconds <= TIMEOUT + SLACK, seconds


def test_a_body_trickled_below_the_minimum_rate_is_cut(timed):
    """One byte every 50 ms never leaves a gap as long as the idle timeout, but is far
    below the minimum rate."""
    with connect(timed) as sock:
        sock.sendall(HEAD + b"content-length: 5000\r\n\r\n")
        started = time.monotonic()
        try:
            for _ in range(200):
                sock.sendall(b" ")
                time.sleep(0.05)
        except OSError:
            pass
        seconds, data = closed_after(sock, started)
    assert seconds <= TIMEOUT + 20 * 0.05 * 2 + SLACK, seconds
    assert data.startswith(b"HTTP/1.1 408 ") or data == b""


def test_a_slow_body_above_the_minimum_rate_is_served(timed):
    """Longer than every timeout in total, but never idle and above the minimum rate."""
    body = json.dumps({"model": "tts-1", "input": "Hi.", "voice": "alloy", "response_format": "wav"}).encode()
    body += b" " * (int(MIN_RATE * 4 * TIMEOUT) - len(body))
    with connect(timed) as sock:
        sock.sendall(SPEECH_HEAD + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode())
        started = time.monotonic()
        step = int(MIN_RATE * 2 * 0.1)  # twice the minimum rate, 0.1 s apart
        for i in range(0, len(body), step):
            sock.sendall(body[i:i + step])
            time.sleep(0.1)
        assert time.monotonic() - started > 1.5 * TIMEOUT
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b"\r\nRIFF" in answer.partition(b"\r\n\r\n")[2][:16]  # a WAV file, chunked


def test_an_idle_keep_alive_connection_is_closed(timed):
    with connect(timed) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        first = read_response(sock)
        seconds, rest = closed_after(sock, time.monotonic())
    assert rest == b""
    assert first.startswith(b"HTTP/1.1 200 ")
    assert seconds <= TIMEOUT + SLACK, seconds


def test_two_requests_on_one_connection_each_get_their_own_header_deadline(timed):
    with connect(timed) as sock:
        for _ in range(2):
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
            time.sleep(TIMEOUT * 0.6)
            sock.sendall(b"\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(TIMEOUT * 0.6)  # shorter than the keep-alive timeout


async def test_a_websocket_session_outlives_every_timeout(timed):
    """The header deadline stops at the upgrade: a realtime session idle for longer than
    the header, body and keep-alive timeouts is still open."""
    import websockets

    url = timed.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers={"authorization": f"Bearer {KEY_A}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await asyncio.sleep(2.5 * TIMEOUT)
        await asyncio.wait_for(await ws.ping(), timeout=5)
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(url):
            pass


def test_pipelined_requests_are_each_answered_in_order(timed):
    """Two requests in one packet: the second waits for the first's response, and neither
    is cut by a deadline while it waits."""
    with connect(timed) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
                     b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                     b"authorization: Bearer " + KEY_A.encode() + b"\r\n\r\n")
        answers = read_all(sock)
    assert answers.startswith(b"HTTP/1.1 200 ") and answers.count(b"HTTP/1.1 200 ") == 2, answers[:500]
    first, second = answers.split(b"HTTP/1.1 200 ")[1:]
    assert b'"object"' not in first and b'"object":"list"' in second.replace(b" ", b"")


def test_serve_runs_httptools_on_uvloop():
    """The stack chosen by measurement (issue 11): both are main dependencies, so a plain
    install serves with them, and the deadlines ride on the httptools protocol."""
    config = server_config(object(), load_settings())
    assert config.http is DeadlineHttpToolsProtocol and config.loop == "uvloop"
    assert config.gateway_deadlines.header_timeout == load_settings().server.header_timeout_seconds


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_past_max_connections_new_requests_get_503(parser):
    settings = load_settings()
    settings.engines.preload = []
    settings.server.max_connections = 3
    live = ServedAsServe(settings, http=protocol_class(parser)).start(ready_path="/health")
    held = []
    try:
        for _ in range(3):  # holders: connected, their request head still coming
            held.append(connect(live))
            held[-1].sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.2)
        assert raw_request(live, "GET", "/health")[0] == 503
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert raw_request(live, "GET", "/health")[0] == 200
    finally:
        live.stop()


# ------------------------------------------------------------------ 11. Allow


def test_options_allow_lists_every_method_of_the_path(gateway):
    spec = json.loads(open("openapi/openapi.json").read())["paths"]
    for path, operations in spec.items():
        target = path.replace("{model_id}", "whisper-1")
        expected = {m.upper() for m in operations if m in ("get", "post", "put", "patch", "delete")}
        with httpx.Client() as client:
            options = client.options(gateway.url + target, headers=auth(KEY_A))
            refused = client.request("PATCH", gateway.url + target, headers=auth(KEY_A))
        allow = {m.strip() for m in options.headers["allow"].split(",")}
        assert options.status_code == 204 and allow == expected | {"OPTIONS"}, (path, allow)
        if "PATCH" not in expected:
            assert refused.status_code == 405
            assert {m.strip() for m in refused.headers["allow"].split(",")} == allow, path


def test_voices_path_allows_get_and_post(gateway):
    response = httpx.options(gateway.url + "/v1/audio/voices", headers=auth(KEY_A))
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "POST", "OPTIONS"}


# ------------------------------------------------------------------ 10. replies belong to their key


def spoken_reply_streamed(gateway, key: str) -> tuple[str, float]:
    """A spoken chat reply over SSE (longer than every server timeout); its audio id and
    how long the stream lasted."""
    request = {"model": "gpt-4o-audio-preview", "modalities": ["text", "audio"],
               "audio": {"voice": "alloy", "format": "pcm16"}, "stream": True, "max_tokens": 200,
               "temperature": 0, "messages": [{"role": "user", "content": "Write a long story about a dragon."}]}
    audio_id, done = None, False
    started = time.monotonic()
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=request, headers=auth(key), timeout=180) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                for choice in json.loads(line[6:]).get("choices", []):
                    audio_id = (choice["delta"].get("audio") or {}).get("id", audio_id)
    assert done and audio_id
    return audio_id, time.monotonic() - started


def continue_by_id(gateway, key: str, audio_id: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", headers=auth(key), timeout=180, json={
        "model": "gpt-4o-mini", "max_tokens": 1, "messages": [
            {"role": "user", "content": "Tell me one fact about dogs."},
            {"role": "assistant", "audio": {"id": audio_id}},
            {"role": "user", "content": "Another one?"}]})


def test_another_key_cannot_resolve_an_audio_id(gateway):
    audio_id, seconds = spoken_reply_streamed(gateway, KEY_A)
    # The stream outlived every server timeout, and was not cut by them.
    assert seconds > 2 * TIMEOUT, seconds
    assert continue_by_id(gateway, KEY_A, audio_id).status_code == 200
    stolen = continue_by_id(gateway, KEY_B, audio_id)
    unknown = continue_by_id(gateway, KEY_B, "audio_" + "0" * 32)
    assert stolen.status_code == unknown.status_code == 400
    # Exactly the answer an id that never existed gets: no oracle.
    assert stolen.json()["error"]["message"].replace(audio_id, "ID") == unknown.json()["error"]["message"].replace("audio_" + "0" * 32, "ID")
    assert stolen.json()["error"]["param"] == "messages[1].audio.id"


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize("override", [
    {"GATEWAY__SERVER__API_KEYS": '["sha256:abc"]'},
    {"GATEWAY__SERVER__API_KEYS": '["sha256:' + "g" * 64 + '"]'},
    {"GATEWAY__SERVER__HEADER_TIMEOUT_SECONDS": "0"},
    {"GATEWAY__SERVER__MAX_CONNECTIONS": "-1"},
])
def test_bad_key_digests_and_timeouts_are_refused_at_start(override):
    from gateway.settings import SettingsError

    with pytest.raises(SettingsError):
        load_settings(environ=override)


def test_an_owner_id_is_stable_and_is_not_the_key_or_its_digest():
    from gateway.auth import KeyRing

    digest = hashlib.sha256(KEY_B.encode()).hexdigest()
    plain, hashed = KeyRing([KEY_B]), KeyRing(["sha256:" + digest.upper()])
    owner = plain.owner(KEY_B)
    assert owner == hashed.owner(KEY_B) and owner.startswith("key_")
    assert KEY_B not in owner and owner[4:] not in digest
    assert plain.owner(KEY_A) is None and plain.owner(digest) is None


# ------------------------------------------------------------------ 10. cloned voices belong to their key

from engines.base import SpeechRequest, VoiceInfo  # noqa: E402
from engines.embedded.piper import PiperEngine  # noqa: E402


class CloningPiper(PiperEngine):
    """Stands in for Step-Audio-TTS-3B, the only engine that clones (GPU weights): real
    Piper synthesis, and clones kept by name as that engine keeps them, voiced by Joe."""

    def __init__(self, name, context, **options) -> None:
        super().__init__(name, context, **options)
        self.clones: dict[str, str] = {}

    def voices(self):
        return [*super().voices(), *(VoiceInfo(id=c, engine="cloning-piper", languages=("en",),
                                               description="cloned voice") for c in self.clones)]

    async def register_voice(self, name, wav_bytes, transcript):
        self.clones[name] = transcript
        return next(v for v in self.voices() if v.id == name)

    async def synthesize(self, request):
        if request.voice in self.clones:
            request = SpeechRequest(text=request.text, voice="joe", language=request.language,
                                    speed=request.speed, instructions=request.instructions)
        async for chunk in super().synthesize(request):
            yield chunk


@pytest.fixture(scope="module")
def cloning_gateway(tmp_path_factory):
    from engines.base import Capability
    from engines.catalog import CATALOG, EngineKind
    from engines.registry import ModelRegistry, ModelSpec

    settings = load_settings()
    settings.server.api_keys = [KEY_A, KEY_B]
    settings.engines.preload = ["cloner"]
    kind = EngineKind("tests.test_security:CloningPiper", frozenset({Capability.SPEECH}))
    registry = ModelRegistry([ModelSpec("cloner", "cloning-piper")], cache_dir=tmp_path_factory.mktemp("cache"),
                             catalog={**CATALOG, "cloning-piper": kind})
    live = ServedAsServe(settings, registry).start()
    yield live
    live.stop()


def clone(gateway, key: str, name: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/audio/voices", headers=auth(key), timeout=60,
                      data={"name": name, "transcript": "Hello there.", "model": "cloner"},
                      files={"audio_sample": ("s.wav", b"RIFF....WAVE", "audio/wav")})


def voices(gateway, key: str) -> list[str]:
    response = httpx.get(gateway.url + "/v1/audio/voices", headers=auth(key), timeout=60)
    assert response.status_code == 200
    return [v["id"] for v in response.json()["data"]]


def speak(gateway, key: str, voice: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/audio/speech", headers=auth(key), timeout=60,
                      json={"model": "cloner", "input": "Good morning.", "voice": voice, "response_format": "wav"})


def test_a_cloned_voice_is_seen_and_used_only_by_its_key(cloning_gateway):
    from gateway.auth import KeyRing

    gw = cloning_gateway
    made = clone(gw, KEY_A, "narrator")
    assert made.status_code == 201 and made.json()["id"] == "narrator"
    assert "narrator" in voices(gw, KEY_A)
    assert speak(gw, KEY_A, "narrator").content[:4] == b"RIFF"
    # Key B sees nothing of it: not listed, not usable by its name nor by its engine id,
    # and each refusal reads as the one an unknown voice gets.
    assert not any(v == "narrator" or v.startswith("clone-") for v in voices(gw, KEY_B))
    by_name, unknown = speak(gw, KEY_B, "narrator"), speak(gw, KEY_B, "nobody")
    assert by_name.status_code == unknown.status_code == 400
    assert by_name.json()["error"]["message"].replace("narrator", "X") == unknown.json()["error"]["message"].replace("nobody", "X")
    engine_id = VoiceOwners.clone_id(KeyRing([KEY_A]).owner(KEY_A), "narrator")
    by_id, no_such_id = speak(gw, KEY_B, engine_id), speak(gw, KEY_B, "clone-" + "0" * 20)
    assert by_id.status_code == no_such_id.status_code == 400
    assert by_id.json()["error"]["message"].replace(engine_id, "X") == no_such_id.json()["error"]["message"].replace("clone-" + "0" * 20, "X")
    assert speak(gw, KEY_A, engine_id).status_code == 400  # ids are never accepted from requests


def test_two_keys_may_clone_the_same_name_without_touching_each_other(cloning_gateway):
    gw = cloning_gateway
    assert clone(gw, KEY_A, "reader").status_code == 201
    assert clone(gw, KEY_B, "reader").status_code == 201
    assert voices(gw, KEY_A).count("reader") == 1 and voices(gw, KEY_B).count("reader") == 1
    assert speak(gw, KEY_A, "reader").status_code == speak(gw, KEY_B, "reader").status_code == 200


@pytest.mark.parametrize("name", ["joe", "JOE", "clone-abc", " "])
def test_a_clone_may_not_shadow_a_shared_voice_or_look_like_an_engine_id(cloning_gateway, name):
    response = clone(cloning_gateway, KEY_A, name)
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"
