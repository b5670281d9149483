"""aiortc plumbing for WebRTC calls (calls.py): ICE held to configured addresses, the
gateway's outgoing audio track, and a caller's microphone read as 16 kHz samples.

ICE. aioice (under aiortc) gathers a host candidate on every address of the machine but
127.0.0.1, and pairs with whatever candidates and checks the peer sends. A gateway must
instead offer exactly the addresses it is configured with (``[webrtc] host_addresses``:
loopback out of the box, a real interface in a deployment) and send nothing to an
address outside ``remote_networks``. :func:`hold_ice` does both, per connection, on the
gateway's own peer connections (the tests' clients use it too): gathering binds only the
configured addresses, and remote candidates and connectivity checks from outside the
accepted networks are ignored (so no peer-reflexive candidate is learnt from them either).
It reaches into aioice 0.13's connection (pinned in requirements/constraints.txt; the
WebRTC tests fail loudly if that changes). No STUN server is used unless configured:
aiortc would otherwise ask Google's.

Audio. Opus over RTP is 48 kHz; the engines hear 16 kHz and speak at the session's wire
rate. :class:`OutputTrack` paces the session's spoken audio out in 20 ms frames (silence
between responses), and tells the call when a response's audio starts and stops playing;
:func:`read_microphone` turns the peer's frames into 16 kHz float samples.
"""

from __future__ import annotations

import asyncio
import fractions
import ipaddress
import os
import socket
import sys
import time
from collections import deque
from typing import Awaitable, Callable

import av
import numpy as np
from aioice import ice
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from ...settings import WebRTCSettings

RATE = 48_000
FRAME = 960  # 20 ms at 48 kHz: what browsers packetize Opus in
_TIME_BASE = fractions.Fraction(1, RATE)


# ---------------------------------------------------------------------- ICE


class IcePolicy:
    """Which local addresses ICE binds and offers, what it announces instead, and which
    remote networks it may talk to."""

    def __init__(self, addresses: list[str], networks: list[str], announced: str = "") -> None:
        self.addresses = list(addresses)
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.announced = announced

    @classmethod
    def of(cls, settings: WebRTCSettings) -> "IcePolicy":
        return cls(settings.host_addresses, settings.remote_networks, settings.announced_address)

    def accepts(self, host: str) -> bool:
        """Whether ``host`` may be talked to; a name (an mDNS ``.local`` candidate) never."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def filter_sdp(self, sdp: str) -> str:
        """The SDP without the candidates it may not talk to (before aiortc reads them)."""
        return "".join(
            line for line in sdp.splitlines(keepends=True)
            if not line.startswith("a=candidate:") or self.accepts(_candidate_host(line))
        )

    def announce(self, sdp: str) -> str:
        """The SDP with each host address replaced by the announced one, when set."""
        if not self.announced:
            return sdp
        out = []
        for line in sdp.splitlines(keepends=True):
            if line.startswith("a=candidate:") and _candidate_host(line) in self.addresses:
                parts = line.split(" ")
                parts[4] = self.announced
                line = " ".join(parts)
            out.append(line)
        return "".join(out)


def _candidate_host(line: str) -> str:
    parts = line.split(" ")
    return parts[4] if len(parts) > 4 else ""


class _HeldConnection(ice.Connection):
    """An aioice connection held to an :class:`IcePolicy` (see the module notes)."""

    ice_policy: IcePolicy

    async def gather_candidates(self) -> None:
        if self._local_candidates_start:
            return
        self._local_candidates_start = True
        for component in sorted(self._components):
            self._local_candidates += await self.get_component_candidates(
                component=component, addresses=self.ice_policy.addresses
            )
        self._local_candidates_end = True

    def _add_remote_candidate(self, remote_candidate, network_host: str) -> None:
        if self.ice_policy.accepts(network_host):
            super()._add_remote_candidate(remote_candidate, network_host)

    def request_received(self, message, addr, protocol) -> None:
        if self.ice_policy.accepts(addr[0]):
            super().request_received(message, addr, protocol)


def hold_ice(pc: RTCPeerConnection, policy: IcePolicy) -> None:
    """Hold every ICE connection ``pc`` has made so far to ``policy``: call it once its
    transports exist (after setRemoteDescription for an answer, after addTransceiver and
    createDataChannel for an offer) and before it gathers (setLocalDescription)."""
    for gatherer in _gatherers(pc):
        connection = gatherer._connection
        if type(connection) is ice.Connection:
            connection.__class__ = _HeldConnection
        connection.ice_policy = policy


def _gatherers(pc: RTCPeerConnection) -> list:
    found = []
    transports = [t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for dtls in transports:
        if dtls is not None and dtls.transport.iceGatherer not in found:
            found.append(dtls.transport.iceGatherer)
    return found


def peer_connection(settings: WebRTCSettings) -> RTCPeerConnection:
    """A peer connection with the configured STUN/TURN servers, and none otherwise."""
    servers = [
        RTCIceServer(urls=s.urls, username=s.username or None, credential=s.credential or None)
        for s in settings.ice_servers
    ]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


def watch_refusals(pc: RTCPeerConnection, on_refused: Callable[[], None]) -> None:
    """Call ``on_refused`` whenever what the gateway sends on ``pc``'s ICE sockets is
    refused (an ICMP port unreachable): the peer's socket has closed, as when its browser
    was killed or lost its tab without closing the call. Linux tells an unconnected UDP
    socket of such errors only with ``IP_RECVERR`` set (the next receive then fails with
    ECONNREFUSED, which asyncio hands to the protocol); the errors it also queues are read
    off at once, so they never take the socket's receive buffer. Elsewhere nothing is
    told, and the peer timeout alone finds a vanished peer. Call it once ``pc`` has
    gathered (after setLocalDescription)."""
    for gatherer in _gatherers(pc):
        for protocol in gatherer._connection._protocols:
            sock = protocol.transport.get_extra_info("socket")
            option = _RECVERR.get(sock.family) if sock is not None else None
            if option is None:
                continue
            try:
                sock.setsockopt(*option, 1)
            except OSError:
                continue
            handle = protocol.error_received

            def received(exc: Exception, handle=handle, sock=sock) -> None:
                _drain_errors(sock)
                if isinstance(exc, ConnectionRefusedError):
                    on_refused()
                handle(exc)

            protocol.error_received = received


_RECVERR = {
    socket.AF_INET: (socket.IPPROTO_IP, getattr(socket, "IP_RECVERR", 11)),
    socket.AF_INET6: (socket.IPPROTO_IPV6, getattr(socket, "IPV6_RECVERR", 25)),
} if sys.platform == "linux" else {}


def _drain_errors(sock) -> None:
    # (uvloop hands out a stand-in for the socket that cannot receive: read a duplicate)
    try:
        own = socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))
    except OSError:
        return
    with own:
        for _ in range(64):
            try:
                own.recvmsg(1, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except OSError:
                return


# ---------------------------------------------------------------------- audio out


class OutputTrack(MediaStreamTrack):
    """The gateway's voice on a call: queued responses' audio, 20 ms at a time in real
    time, silence in between. ``on_started(response_id)`` when a response's first frame
    goes out, ``on_stopped(response_id)`` when its last one has, once it is finished."""

    kind = "audio"

    def __init__(
        self, on_started: Callable[[str], None], on_stopped: Callable[[str], None]
    ) -> None:
        super().__init__()
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._queue: deque[tuple[str, str, np.ndarray]] = deque()  # response, item, int16
        self._finished: set[str] = set()
        self.playing: str | None = None  # the response whose audio is going out
        self.played: dict[str, int] = {}  # item id -> samples sent
        self._started_at: float | None = None
        self._pts = 0

    def push(self, response_id: str, item_id: str, samples: np.ndarray) -> None:
        """48 kHz float samples of a response's item, to be played after what is queued."""
        if samples.size:
            pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
            self._queue.append((response_id, item_id, pcm))

    def finish(self, response_id: str) -> None:
        """The response has no more audio coming (``response.done``)."""
        self._finished.add(response_id)
        if self.playing is None and not any(r == response_id for r, _, _ in self._queue):
            self._finished.discard(response_id)  # it never played: nothing to stop

    def clear(self) -> tuple[str, str, int] | None:
        """Drop what has not been played. Returns (response, item, samples played of
        the item) when something was playing or waiting, else None."""
        current = self._queue[0] if self._queue else None
        response_id = self.playing or (current[0] if current else None)
        if response_id is None:
            return None
        item_id = current[1] if current else next(reversed(self.played), "")
        self._queue.clear()
        self._finished.discard(response_id)
        self.playing = None
        return response_id, item_id, self.played.get(item_id, 0)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pace()
        frame = av.AudioFrame.from_ndarray(self._next_samples().reshape(1, -1), layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        self._pts += FRAME
        return frame

    async def _pace(self) -> None:
        if self._started_at is None:
            self._started_at = time.monotonic()
        wait = self._started_at + self._pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    def _next_samples(self) -> np.ndarray:
        out = np.zeros(FRAME, dtype=np.int16)
        filled = 0
        while filled < FRAME and self._queue:
            response_id, item_id, pcm = self._queue[0]
            if response_id != self.playing:
                if self.playing is not None:
                    self._stopped(self.playing)
                self.playing = response_id
                self._on_started(response_id)
            take = min(FRAME - filled, len(pcm))
            out[filled : filled + take] = pcm[:take]
            filled += take
            self.played[item_id] = self.played.get(item_id, 0) + take
            if take == len(pcm):
                self._queue.popleft()
            else:
                self._queue[0] = (response_id, item_id, pcm[take:])
        if not self._queue and self.playing in self._finished:
            self._stopped(self.playing)
        return out

    def _stopped(self, response_id: str) -> None:
        self._finished.discard(response_id)
        self.playing = None
        self._on_stopped(response_id)


# ---------------------------------------------------------------------- audio in


def watch_rtp(receiver, on_packet: Callable[[], None]) -> None:
    """Call ``on_packet`` for every RTP packet ``receiver`` gets, as it arrives (before the
    jitter buffer and the decoder): how the call knows its peer is still there."""
    handle = receiver._handle_rtp_packet

    async def handled(packet, arrival_time_ms: int) -> None:
        on_packet()
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handled


async def read_microphone(
    track: MediaStreamTrack,
    hear: Callable[[np.ndarray], Awaitable[None]],
    on_packet: Callable[[], None],
) -> None:
    """Every frame the peer sends, as 16 kHz mono float samples, until its track ends."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=16_000)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        on_packet()
        for out in resampler.resample(frame):
            await hear(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
