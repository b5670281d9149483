"""A WebRTC caller in Python (aiortc), held to loopback like the gateway under test: it
binds 127.0.0.1 only and talks to 127.0.0.0/8 only (gateway.api.realtime.webrtc.hold_ice),
with no STUN server. Its microphone plays a recording, then silence; what the gateway
says is recorded at 48 kHz; the ``oai-events`` channel's server events are queued."""

from __future__ import annotations

import asyncio
import fractions
import json
import time

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from gateway.api.realtime.webrtc import IcePolicy, hold_ice, peer_connection
from gateway.settings import WebRTCSettings

RATE, FRAME = 48_000, 960
LOOPBACK = IcePolicy(["127.0.0.1"], ["127.0.0.0/8"])


class Microphone(MediaStreamTrack):
    """Queued audio (48 kHz float) in real time, 20 ms frames, silence when none."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pending = np.zeros(0, dtype=np.float32)
        self.started: float | None = None
        self.pts = 0
        self.spoken_until: float | None = None  # when the last queued sample goes out

    def say(self, samples: np.ndarray) -> None:
        self.pending = np.concatenate([self.pending, samples.astype(np.float32)])

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.started is None:
            self.started = time.monotonic()
        wait = self.started + self.pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = np.zeros(FRAME, dtype=np.float32)
        take = min(FRAME, len(self.pending))
        chunk[:take] = self.pending[:take]
        self.pending = self.pending[take:]
        if take and not len(self.pending):
            self.spoken_until = time.monotonic()
        ints = (np.clip(chunk, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(ints, format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, self.pts
        frame.time_base = fractions.Fraction(1, RATE)
        self.pts += FRAME
        return frame


class Caller:
    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.pc = peer_connection(WebRTCSettings(host_addresses=["127.0.0.1"]))
        self.microphone = Microphone()
        self.events: asyncio.Queue[dict] = asyncio.Queue()
        self.seen: list[dict] = []
        self.heard: list[np.ndarray] = []  # 48 kHz mono float, as received
        self.first_audio_at: float | None = None  # first non-silent frame
        self.opened = asyncio.Event()
        self.call_id: str | None = None
        self._tasks: list[asyncio.Task] = []

    async def dial(self, session: dict | None = None) -> httpx.Response:
        pc = self.pc
        pc.addTransceiver(self.microphone, direction="sendrecv")
        self.channel = pc.createDataChannel("oai-events")
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self._message)
        pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._listen(track))))
        hold_ice(pc, LOOPBACK)
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(timeout=60) as client:
            if session is None:
                response = await client.post(
                    self.url + "/v1/realtime/calls", content=pc.localDescription.sdp,
                    headers={**headers, "content-type": "application/sdp"},
                )
            else:
                response = await client.post(
                    self.url + "/v1/realtime/calls", headers=headers,
                    files={"sdp": (None, pc.localDescription.sdp, "application/sdp"),
                           "session": (None, json.dumps(session), "application/json")},
                )
        if response.status_code == 201:
            self.call_id = response.headers["location"].rsplit("/", 1)[-1]
            await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
            await asyncio.wait_for(self.opened.wait(), 20)
        return response

    def _message(self, message: str) -> None:
        event = json.loads(message)
        self.seen.append(event)
        self.events.put_nowait(event)

    async def _listen(self, track) -> None:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for out in resampler.resample(frame):
                samples = out.to_ndarray().reshape(-1)
                if self.first_audio_at is None and np.abs(samples).max() > 0.02:
                    self.first_audio_at = time.monotonic()
                self.heard.append(samples.copy())

    def send(self, event: dict) -> None:
        self.channel.send(json.dumps(event))

    async def until(self, *types: str, timeout: float = 120) -> dict:
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if event["type"] in types:
                return event

    def audio(self, since: int = 0) -> np.ndarray:
        return np.concatenate(self.heard[since:]) if self.heard[since:] else np.zeros(0)

    async def hang_up(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()

    async def vanish(self) -> None:
        """Go silent without a goodbye, as a browser whose machine dropped off the network:
        the sockets close, no DTLS close or SCTP abort is sent."""
        for transceiver in self.pc.getTransceivers():
            transport = transceiver.sender.transport.transport
            await transport._connection.close()
        for task in self._tasks:
            task.cancel()
