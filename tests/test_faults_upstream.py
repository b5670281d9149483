"""A vLLM replica that misbehaves, seen through the gateway's HTTP API.

vLLM cannot run here, so the replica is the fake of tests/engines/test_vllm_pool.py (real
HTTP on loopback, vLLM's streaming format), extended with the faults a real upstream
shows: it refuses connections, stalls before its first byte or in mid-stream, resets the
connection mid-stream, or sends garbage (not HTTP; unreadable events). The pool's own
reactions are tested in test_vllm_pool.py; here the contract is what an API client sees:
a status with the OpenAI envelope when nothing was sent yet (always, for a non-streamed
reply: it is asked of vLLM whole), an error event once the answer has started, the next
request served as soon as the replica behaves, /health 200 throughout, and memory back
at its baseline after many faulted requests.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket

import httpx
import pytest

from gateway.settings import ModelSettings, load_settings
from tests.conftest import live_server
from tests.engines.test_vllm_pool import FakeVLLM, _chunk, _completion_chunk, _event
from tests.faults import drop_captured_logs, rss_mib

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

READ_TIMEOUT = 1.0  # how long the gateway waits on a silent replica, here
TOKENS = ["Hello", " from", " the", " fake", " replica", "."]
BEFORE_FIRST_BYTE = ["refuse", "stall_first", "garbage", "garbage_event", "status"]
MID_STREAM = ["stall_mid", "reset_mid", "drop", "garbage_mid"]


class FaultyVLLM(FakeVLLM):
    """The fake replica with the faults it lacked; ``mode`` as in FakeVLLM, plus:

    * ``"refuse"``: nothing listens on its port (connections are refused);
    * ``"stall_first"`` / ``"stall_mid"``: silent before the response / after two tokens;
    * ``"reset_mid"``: two tokens, then a TCP reset;
    * ``"garbage"``: bytes that are not HTTP; ``"garbage_event"`` / ``"garbage_mid"``: a
      200 stream whose first / third event is not JSON.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tokens = list(TOKENS)
        self.port = 0

    async def start(self) -> "FaultyVLLM":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def set_mode(self, mode: str) -> None:
        listening = self._server is not None and self._server.is_serving()
        if mode == "refuse" and listening:
            await self.stop()
        elif mode != "refuse" and not listening:
            await self.start()
        self.mode = mode

    async def _complete(self, reader, writer, request) -> bool:
        mode = self.mode
        if mode == "stall_first":
            await self._until_gone(reader)
            return False
        if mode == "garbage":
            writer.write(b"\x00\xff\xfe this is not HTTP at all \r\n\r\n\x13\x37")
            await writer.drain()
            return False
        if mode not in ("stall_mid", "reset_mid", "garbage_event", "garbage_mid"):
            return await super()._complete(reader, writer, request)
        if not request.get("stream"):
            # A whole answer is one JSON body at the end: the mid-answer faults strike
            # before any byte of it.
            if mode == "garbage_mid":
                body = b"\xff\xfe{{{ not json"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                return False
            if mode == "reset_mid":
                await asyncio.sleep(0.05)
                self._reset(writer)
                return False
            await self._until_gone(reader)  # stall_mid
            return False
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        if mode == "garbage_event":
            writer.write(_chunk(b'data: {"choices": [{"text": \n\n'))
            await writer.drain()
            return False
        for token in self.tokens[:2]:
            writer.write(_event(_completion_chunk(request, token, None)))
        await writer.drain()
        if mode == "garbage_mid":
            writer.write(_chunk(b"data: \xff\xfe{{{ not json\n\n"))
            await writer.drain()
            return False
        if mode == "reset_mid":
            self._reset(writer)
            return False
        await self._until_gone(reader)  # stall_mid
        return False

    @staticmethod
    def _reset(writer) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async def _until_gone(self, reader) -> None:
        try:
            await asyncio.wait_for(reader.read(1), timeout=60)
        except (asyncio.TimeoutError, ConnectionError):
            pass


@pytest.fixture
async def upstream():
    replica = await FaultyVLLM().start()
    settings = load_settings()
    settings.models["sa-chat"] = ModelSettings(
        engine="step-audio-chat",
        options={"vllm_urls": [replica.url], "read_timeout": READ_TIMEOUT, "health_interval": 60.0},
    )
    settings.engines.preload = ["sa-chat"]
    live = await live_server(settings).astart()
    async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
        yield client, replica
    live.stop()
    if replica._server is not None and replica._server.is_serving():
        await replica.stop()


def _body(stream: bool) -> dict:
    return {"model": "sa-chat", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]}


def _envelope(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"
    return error


async def _events(response: httpx.Response) -> list[dict]:
    lines = [line async for line in response.aiter_lines()]
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    return [json.loads(d) for d in data if d != "[DONE]"] + ([{"done": True}] if "[DONE]" in data else [])


async def faulted_request(client: httpx.AsyncClient, mode: str, stream: bool) -> None:
    """One request against a replica in ``mode``, checked against the contract."""
    if mode in BEFORE_FIRST_BYTE or not stream:
        # A non-streamed reply is asked of vLLM whole, so a fault "mid-stream" strikes
        # before any of its answer exists: retryable, like a fault before the first byte.
        response = await client.post("/v1/chat/completions", json=_body(stream))
        error = _envelope(response, 503)
        assert "vLLM replica" in error["message"], error
        return
    async with client.stream("POST", "/v1/chat/completions", json=_body(True)) as response:
        assert response.status_code == 200
        events = await _events(response)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-1] if c.get("choices"))
    assert text == "".join(TOKENS[:2])  # what was generated before the fault reached the client
    assert set(events[-1]) == {"error"}, events[-1]  # and then one error event, no [DONE]
    assert events[-1]["error"]["type"] == "server_error"
    assert "failed in the middle of the answer" in events[-1]["error"]["message"]


async def served(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=_body(False))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "".join(TOKENS)
    assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("mode", BEFORE_FIRST_BYTE + MID_STREAM)
async def test_a_faulty_replica_is_a_clear_error_and_the_next_request_is_served(upstream, mode, stream):
    client, replica = upstream
    await replica.set_mode(mode)
    await faulted_request(client, mode, stream)
    assert (await client.get("/health")).status_code == 200
    await replica.set_mode("ok")
    await served(client)


async def test_many_faulted_requests_leave_memory_at_its_baseline(upstream):
    """Every fault, streamed and not, five rounds after a warm-up round; a leaked
    connection, response or stream per fault would grow with the rounds. (pytest's captured
    log records are dropped after each round: see drop_captured_logs.)"""
    client, replica = upstream
    modes = BEFORE_FIRST_BYTE + MID_STREAM

    async def one_round():
        for mode in modes:
            for stream in (False, True):
                await replica.set_mode(mode)
                await faulted_request(client, mode, stream)
        await replica.set_mode("ok")
        await served(client)
        drop_captured_logs()
        gc.collect()
        return rss_mib()

    await one_round()
    readings = [await one_round() for _ in range(5)]
    print(f"\nRSS after each round of {2 * len(modes)} faulted requests (MiB): {[round(r, 1) for r in readings]}")
    assert readings[-1] - readings[0] < 15, readings
