"""Test callers written for the end-to-end tests: a minimal SIP UAC over
UDP (:class:`UdpUac`) and a phone with real RTP (:class:`RtpPhone`) that
sends a tone as PCMU paced at 20 ms (and types digits as in-band DTMF) and
keeps every packet it receives, so tests can check by Goertzel what it
heard."""

from __future__ import annotations

import asyncio
import collections
import re
import secrets
import socket

import numpy as np

from engine.media.codecs import get_decoder, get_encoder
from engine.media.dtmf import generate_dtmf_sequence
from engine.media.players import ToneSource
from engine.media.rtp import RtpPacket, RtpSender


class UdpUac:
    """Just enough of a SIP caller over UDP: INVITE with a PCMU-only offer
    (so in-band detection is the only way), ACK, BYE."""

    def __init__(self, engine_port: int, rtp_port: int, number: str = "dtmf") -> None:
        self.number = number
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.engine = ("127.0.0.1", engine_port)
        self.rtp_port = rtp_port
        self.call_id = secrets.token_hex(8)
        self.tag = secrets.token_hex(4)
        self.to_tag = ""

    def close(self) -> None:
        self.sock.close()

    def _request(self, method: str, cseq: int, body: str = "") -> bytes:
        to = f"<sip:{self.number}@127.0.0.1:{self.engine[1]}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"{method} sip:{self.number}@127.0.0.1:{self.engine[1]} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)}",
            f"From: <sip:tester@127.0.0.1:{self.port}>;tag={self.tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:tester@127.0.0.1:{self.port}>",
            "Max-Forwards: 70",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    async def _final(self, method: str) -> str:
        loop = asyncio.get_running_loop()
        while True:
            data = (await asyncio.wait_for(loop.sock_recv(self.sock, 4096), 5)).decode()
            status = int(data.split(" ", 2)[1])
            if status >= 200 and f" {method}\r\n" in data:
                assert status == 200, data
                return data

    async def invite(self) -> int:
        """Place the call; return the engine's RTP port from its SDP answer."""
        sdp = (
            "v=0\r\no=tester 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        )
        self.sock.sendto(self._request("INVITE", 1, sdp), self.engine)
        answer = await self._final("INVITE")
        self.answered_at = asyncio.get_running_loop().time()
        tag = re.search(r"^To:.*;tag=([^;\r\n]+)", answer, re.MULTILINE)
        assert tag, answer
        self.to_tag = tag.group(1)
        self.sock.sendto(self._request("ACK", 1), self.engine)
        port = re.search(r"^m=audio (\d+) ", answer, re.MULTILINE)
        assert port, answer
        assert "telephone-event" not in answer, answer
        return int(port.group(1))

    async def bye(self) -> None:
        self.sock.sendto(self._request("BYE", 2), self.engine)
        await self._final("BYE")


class RtpPhone:
    """A caller with audio: :class:`UdpUac` signalling plus an RTP socket
    that sends a ``freq`` Hz tone (``None``: silence) and records what arrives."""

    def __init__(self, engine_port: int, number: str, freq: float | None) -> None:
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp.setblocking(False)
        self.uac = UdpUac(engine_port, self.rtp.getsockname()[1], number)
        self.freq = freq
        self._source = ToneSource(freq, None, -16.0) if freq else None
        self._keys: collections.deque[np.ndarray] = collections.deque()
        self.packets: list[RtpPacket] = []
        #: Loop time at which each packet of :attr:`packets` arrived.
        self.arrivals: list[float] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def call(self) -> None:
        """Place the call, then send and receive RTP until :meth:`close`.
        RTP is received from the start, so early media is kept too."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._receive())]
        engine_rtp = await self.uac.invite()
        self._tasks.append(loop.create_task(self._send(("127.0.0.1", engine_rtp))))

    def press(self, digits: str) -> None:
        """Type ``digits`` as in-band DTMF (in place of the tone while they play)."""
        pcm = generate_dtmf_sequence(digits)
        pcm = np.concatenate([pcm, np.zeros(-len(pcm) % 160, np.int16)])
        self._keys.extend(pcm.reshape(-1, 160))

    def set_tone(self, freq: float | None) -> None:
        """Send ``freq`` Hz from now on (``None``: silence)."""
        self.freq = freq
        self._source = ToneSource(freq, None, -16.0) if freq else None

    async def _send(self, to: tuple[str, int]) -> None:
        encoder = get_encoder("PCMU")
        sender = RtpSender()
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while True:
            source = self._source
            if self._keys:
                pcm = self._keys.popleft()
            else:
                pcm = source.read(160) if source is not None else np.zeros(160, np.int16)
            self.rtp.sendto(sender.next_packet(encoder.encode(pcm), 0, 160, marker=i == 0).serialize(), to)
            i += 1
            delay = start + i * 0.02 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.rtp, 2048)
            self.packets.append(RtpPacket.parse(data))
            self.arrivals.append(loop.time())

    def heard(self, seconds: float = 1.0) -> np.ndarray:
        """The last ``seconds`` of audio received, decoded (PCMU)."""
        decoder = get_decoder("PCMU")
        last = self.packets[-int(seconds * 50):]
        if not last:
            return np.zeros(0)
        return np.concatenate([decoder.decode(p.payload) for p in last]).astype(np.float64)

    def heard_before(self, when: float) -> np.ndarray:
        """Audio of the packets that arrived before loop time ``when``."""
        decoder = get_decoder("PCMU")
        early = [p for p, t in zip(self.packets, self.arrivals) if t < when]
        if not early:
            return np.zeros(0)
        return np.concatenate([decoder.decode(p.payload) for p in early]).astype(np.float64)

    def clear(self) -> None:
        self.packets.clear()
        self.arrivals.clear()

    async def hang_up(self) -> None:
        await self.uac.bye()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, OSError):
                pass
        self.uac.close()
        self.rtp.close()


def tone_level(pcm: np.ndarray, freq: float, rate: int = 8000) -> float:
    """Amplitude of ``freq`` in ``pcm`` (one DFT bin, i.e. Goertzel)."""
    if pcm.size == 0:
        return 0.0
    n = np.arange(pcm.size)
    return float(abs(np.dot(pcm, np.exp(-2j * np.pi * freq * n / rate))) * 2 / pcm.size)
