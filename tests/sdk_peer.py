"""A scripted web SDK client for tests: the JSON protocol over a real
WebSocket (aiohttp's client) and, for calls, a real aiortc peer connection
standing in for the browser's (a 1 kHz tone as its microphone, a Goertzel
filter on what it hears)."""

from __future__ import annotations

import asyncio
import fractions
import json
import math
from typing import Any

import numpy as np
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, AudioResampler


def goertzel_power(pcm: np.ndarray, freq: float, rate: int = 8000) -> float:
    """Power of ``freq`` in ``pcm`` relative to the whole signal's (0..1)."""
    x = pcm.astype(np.float64)
    if not len(x) or not np.any(x):
        return 0.0
    n = len(x)
    k = 2.0 * math.cos(2.0 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for v in x:
        s1, s2 = v + k * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - k * s1 * s2
    return float(2.0 * power / (n * float(np.dot(x, x))))


class ToneTrack(MediaStreamTrack):
    """A microphone that plays a sine (8 kHz mono, paced in real time)."""

    kind = "audio"

    def __init__(self, freq: float = 1000.0, level: float = 8000.0) -> None:
        super().__init__()
        self.freq, self.level = freq, level
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self._n / 8000 - loop.time()))
        t = np.arange(self._n, self._n + 160)
        pcm = (self.level * np.sin(2 * np.pi * self.freq * t / 8000)).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 8000, self._n, fractions.Fraction(1, 8000)
        self._n += 160
        return frame


class BrowserPeer:
    """The browser's side of a call's media: offers audio, records what it hears."""

    def __init__(self, tone: float = 1000.0) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(ToneTrack(tone))
        self.heard: list[np.ndarray] = []
        self._reader: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        resampler = AudioResampler(format="s16", layout="mono", rate=8000)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for out in resampler.resample(frame):
                self.heard.append(out.to_ndarray().reshape(-1).astype(np.int16))

    def heard_pcm(self) -> np.ndarray:
        return np.concatenate(self.heard) if self.heard else np.zeros(0, dtype=np.int16)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()


class SdkSocket:
    """The protocol over one WebSocket: send frames, wait for frames."""

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, type_: str | None = None, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """The next frame of ``type_`` (and fields ``match``), skipping others
        (they stay in :attr:`frames`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {type_} frame {match} within {timeout} s; got {self.frames}")
            msg = await self.ws.receive(timeout=remaining)
            if msg.type != WSMsgType.TEXT:
                raise AssertionError(f"socket ended: {msg.type} {msg.data!r}; got {self.frames}")
            frame = json.loads(msg.data)
            self.frames.append(frame)
            if (type_ is None or frame.get("type") == type_) and all(frame.get(k) == v for k, v in match.items()):
                return frame

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send ``frame`` with a fresh ``ref``; the reply that echoes it."""
        ref = f"r{len(self.frames)}-{id(frame)}"
        await self.send({**frame, "ref": ref})
        return await self.recv(ref=ref)

    async def hello(self) -> dict[str, Any]:
        return await self.request({"type": "hello", "version": 1})

    async def login(self, username: str, password: str) -> dict[str, Any]:
        return await self.request({"type": "login", "username": username, "password": password})
