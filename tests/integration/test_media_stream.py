"""A call streamed to a WebSocket bot (call.stream_to), on real loopback
sockets: a scripted SIP phone sending a 1000 Hz tone over RTP, an engine
whose scenario streams the call, and an aiohttp bot speaking Twilio Media
Streams (and linear16).

Checked: the frames the bot receives (connected, start, media..., stop),
the caller's tone in the decoded µ-law, the bot's audio heard by the
phone, marks echoed after their audio played, ``clear`` stopping the
phone's audio within two frames (measured on the phone's RTP timestamps),
a dropped bot socket reconnecting, bad frames counted and ignored.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from engine.media.codecs.g711 import ulaw_decode, ulaw_encode
from engine.media.rtp import RtpPacket, RtpSender
from engine.server import Engine

from logs import session_logs, wait_for_log

from .conftest import EngineFactory, PeerFactory, wait_until
from .sip_peer import Dialog, UdpPeer, sdp_offer

RULES = """
rules:
  - {name: Bot, pattern: "bot", scenarios: [bot]}
"""

SCENARIO = """
from engine.scenario import AppEvents, CallEvents, Logger, StreamEvents, VoxEngine


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    stream = call.stream_to(URL, custom={"who": "test"}, format=FORMAT, rate=RATE)
    call.add_event_listener(StreamEvents.StreamStarted, lambda ev: Logger.write(f"started reconnect={ev.reconnect}"))
    call.add_event_listener(StreamEvents.StreamError, lambda ev: Logger.write(f"stream error retry={ev.retry_in}"))
    call.add_event_listener(StreamEvents.StreamStopped, lambda ev: Logger.write(f"stopped {ev.reason} {stream.stats}"))


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""


def goertzel(pcm: np.ndarray, freq: float, rate: int = 8000) -> float:
    """Power of ``freq`` in ``pcm``."""
    x = pcm.astype(np.float64)
    k = 2 * np.cos(2 * np.pi * freq / rate)
    s1 = s2 = 0.0
    for v in x:
        s1, s2 = v + k * s1 - s2, s1
    return s1 * s1 + s2 * s2 - k * s1 * s2


def tone(freq: float, samples: int, level: int = 8000) -> np.ndarray:
    return (level * np.sin(2 * np.pi * freq * np.arange(samples) / 8000)).astype(np.int16)


def chirp(samples: int, f0: float = 300.0, f1: float = 700.0) -> np.ndarray:
    """A rising tone: no two 20 ms frames of it are alike (each frame can be found by its bytes)."""
    t = np.arange(samples) / 8000
    rate = (f1 - f0) / t[-1]
    return (8000 * np.sin(2 * np.pi * (f0 * t + rate * t * t / 2))).astype(np.int16)


class Phone(asyncio.DatagramProtocol):
    """The caller's RTP: a 1000 Hz tone sent every 20 ms, what arrives kept."""

    def __init__(self) -> None:
        self.received: list[RtpPacket] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.sender = RtpSender()
        self.codes = ulaw_encode(tone(1000, 8000 * 30)).tobytes()
        self.sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _open_phones.append(self)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(RtpPacket.parse(data))

    async def talk(self, to: tuple[str, int]) -> None:
        assert self.transport is not None
        while True:
            payload = self.codes[self.sent * 160 % len(self.codes):][:160]
            self.transport.sendto(self.sender.next_packet(payload, 0, 160).serialize(), to)
            self.sent += 1
            await asyncio.sleep(0.02)

    def pcm(self, packets: list[RtpPacket] | None = None) -> np.ndarray:
        packets = self.received if packets is None else packets
        return ulaw_decode(np.frombuffer(b"".join(p.payload for p in packets), dtype=np.uint8))


_open_phones: list[Phone] = []


@pytest.fixture(autouse=True)
async def close_phones() -> AsyncIterator[None]:
    yield
    while _open_phones:
        phone = _open_phones.pop()
        if phone.transport is not None:
            phone.transport.close()
    await asyncio.sleep(0.01)  # the transports' close runs on the loop


@dataclass
class Bot:
    """A bot's side of each connection: frames received (parsed), and a script."""

    script: Callable[["Bot", web.WebSocketResponse, int], Awaitable[None]]
    connections: list[list[Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    clear_ref: bytes | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.headers.append(dict(request.headers))
        frames: list[Any] = []
        self.connections.append(frames)
        script = asyncio.ensure_future(self.script(self, ws, len(self.connections) - 1))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    frames.append(json.loads(msg.data))
                elif msg.type == WSMsgType.BINARY:
                    frames.append(msg.data)
        finally:
            script.cancel()
        return ws

    async def next_frame(self, conn: int, pred: Callable[[Any], bool], start: int = 0) -> int:
        """The index of the first frame from ``start`` on that ``pred`` accepts (waits)."""
        frames = self.connections[conn]
        i = start
        while True:
            while i < len(frames):
                if pred(frames[i]):
                    return i
                i += 1
            await asyncio.sleep(0.005)


@pytest.fixture
async def serve_bot() -> AsyncIterator[Callable[[Bot], Awaitable[Bot]]]:
    runners: list[web.AppRunner] = []

    async def start(bot: Bot) -> Bot:
        app = web.Application()
        app.router.add_get("/bot", bot.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        bot.url = f"ws://127.0.0.1:{port}/bot"
        runners.append(runner)
        return bot

    yield start
    for runner in runners:
        await runner.cleanup()


def media(pcm: np.ndarray) -> str:
    return json.dumps({"event": "media", "streamSid": "x",
                       "media": {"payload": base64.b64encode(ulaw_encode(pcm).tobytes()).decode()}})


def is_event(kind: str, **where: str) -> Callable[[Any], bool]:
    def pred(f: Any) -> bool:
        if not isinstance(f, dict) or f.get("event") != kind:
            return False
        body = f.get(kind, {})
        return all(body.get(k) == v for k, v in where.items())
    return pred


async def call_bot(make_engine: EngineFactory, peers: PeerFactory, bot: Bot, *, fmt: str = "twilio",
                   rate: int = 8000) -> tuple[Engine, Dialog, UdpPeer, Phone, asyncio.Task[None]]:
    source = SCENARIO.replace("URL,", f"{bot.url!r},").replace("FORMAT", repr(fmt)).replace("RATE", str(rate))
    engine = await make_engine(RULES, {"bot": source})
    peer = await peers.udp(engine)
    loop = asyncio.get_running_loop()
    transport, phone = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    dialog = Dialog(peer, f"sip:bot@127.0.0.1:{engine.ua.port}")
    dialog.invite(sdp_offer("127.0.0.1", port))
    ok = await peer.expect(200, method="INVITE")
    dialog.learn(ok)
    dialog.ack()
    body = ok.body.decode()
    rtp_port = int(next(line for line in body.splitlines() if line.startswith("m=audio")).split()[1])
    talking = asyncio.ensure_future(phone.talk(("127.0.0.1", rtp_port)))
    return engine, dialog, peer, phone, talking


async def hang_up(dialog: Dialog, peer: UdpPeer, talking: asyncio.Task[None]) -> None:
    talking.cancel()
    dialog.send("BYE")
    await peer.expect(200, method="BYE")


async def conversation(bot: Bot, ws: web.WebSocketResponse, conn: int) -> None:
    """Greet with 1 s of 440 Hz and a mark; then talk (a chirp, mark "long")
    and, half a second into it, barge in with clear."""
    await bot.next_frame(conn, is_event("start"))
    await ws.send_str(media(tone(440, 8000)))
    await ws.send_str(json.dumps({"event": "mark", "streamSid": "x", "mark": {"name": "greeting"}}))
    await ws.send_str("{this is not json")
    await ws.send_str(json.dumps({"event": "media", "media": {"payload": "!!"}}))
    at = await bot.next_frame(conn, is_event("mark", name="greeting"))
    await ws.send_str(media(chirp(8000 * 3)))
    await ws.send_str(json.dumps({"event": "mark", "streamSid": "x", "mark": {"name": "long"}}))
    # half a second of the chirp heard (outbound track), then clear
    seen = at
    for _ in range(25):
        seen = await bot.next_frame(conn, is_event("media", track="outbound"), seen + 1)
    ref = bot.connections[conn][seen]
    await ws.send_str(json.dumps({"event": "clear", "streamSid": "x"}))
    bot.clear_ref = base64.b64decode(ref["media"]["payload"])
    await bot.next_frame(conn, is_event("mark", name="long"))
    bot.done.set()


async def test_a_call_streamed_to_a_bot(make_engine: EngineFactory, peers: PeerFactory,
                                        serve_bot: Callable[[Bot], Awaitable[Bot]]) -> None:
    """The bot gets connected, start (with the call's id, both tracks, µ-law
    8 kHz and the custom parameters), then media carrying the caller's
    1000 Hz tone, and stop at the hang-up; the phone hears the bot's 440 Hz
    greeting; the greeting's mark comes back after it played; a clear half a
    second into a 3 s reply silences the phone within two frames (40 ms) of
    the last frame the bot had seen, measured on RTP timestamps, and echoes
    the pending mark; the bot's two bad frames are counted, not fatal."""
    bot = await serve_bot(Bot(conversation))
    engine, dialog, peer, phone, talking = await call_bot(make_engine, peers, bot)
    await asyncio.wait_for(bot.done.wait(), 10)
    await wait_until(lambda: len(phone.received) > 0 and phone.received[-1].payload != bot.clear_ref, 2)
    await asyncio.sleep(0.2)  # some silence after the clear reaches the phone
    await hang_up(dialog, peer, talking)
    await wait_until(lambda: any(is_event("stop")(f) for f in bot.connections[0]))
    frames = bot.connections[0]

    # -- the frame sequence
    kinds = [f["event"] for f in frames]
    assert kinds[0] == "connected" and kinds[1] == "start" and kinds[-1] == "stop"
    assert set(kinds[2:-1]) == {"media", "mark"}
    start = frames[1]["start"]
    assert start["tracks"] == ["inbound", "outbound"]
    assert start["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["customParameters"] == {"who": "test"}
    assert frames[-1]["stop"]["callSid"] == start["callSid"]
    assert [f["mark"]["name"] for f in frames if f["event"] == "mark"] == ["greeting", "long"]

    # -- the caller's tone, as the bot decodes it
    inbound = [f for f in frames if is_event("media", track="inbound")(f)]
    chunks = [int(f["media"]["chunk"]) for f in inbound]
    assert chunks == sorted(chunks) and len(set(chunks)) == len(chunks)
    said = ulaw_decode(np.frombuffer(b"".join(base64.b64decode(f["media"]["payload"]) for f in inbound[-25:]),
                                     dtype=np.uint8))
    assert goertzel(said, 1000) > 100 * goertzel(said, 440)

    # -- the bot's greeting, as the phone hears it
    packets = sorted(phone.received, key=lambda p: p.sequence_number)
    loud = [p for p in packets if np.abs(phone.pcm([p]).astype(np.int32)).max() > 2000]
    greeting = phone.pcm(loud[5:40])
    assert goertzel(greeting, 440) > 100 * goertzel(greeting, 1000)

    # -- clear: the phone's audio stops within 40 ms of the frame the bot last saw
    ref = [p for p in packets if p.payload == bot.clear_ref]
    assert len(ref) == 1, "the chirp frame the bot saw reached the phone, once"
    after = [p for p in packets if p.sequence_number > ref[0].sequence_number]
    first_quiet = next(p for p in after if np.abs(phone.pcm([p]).astype(np.int32)).max() < 100)
    assert (first_quiet.timestamp - ref[0].timestamp) % 2**32 <= 320  # 40 ms at 8 kHz
    assert all(np.abs(phone.pcm([p]).astype(np.int32)).max() < 100
               for p in after if p.sequence_number >= first_quiet.sequence_number)

    logs = await wait_for_log(engine, "stopped call ended")
    assert "started reconnect=False" in logs, session_logs(engine)
    assert "'bad_frames': {'invalid JSON': 1, 'bad base64': 1}" in logs


async def drop_once(bot: Bot, ws: web.WebSocketResponse, conn: int) -> None:
    """Close the first connection right after start; stay on the second."""
    await bot.next_frame(conn, is_event("start"))
    if conn == 0:
        await ws.close()
        return
    await bot.next_frame(conn, is_event("media"))
    bot.done.set()


async def test_a_dropped_bot_socket_reconnects(make_engine: EngineFactory, peers: PeerFactory,
                                               serve_bot: Callable[[Bot], Awaitable[Bot]]) -> None:
    """The bot closes its socket: StreamError, then a new connection that
    opens again with connected and start (the same streamSid) and carries
    media on; the scenario sees StreamStarted with reconnect=True."""
    bot = await serve_bot(Bot(drop_once))
    engine, dialog, peer, _phone, talking = await call_bot(make_engine, peers, bot)
    await asyncio.wait_for(bot.done.wait(), 10)
    await hang_up(dialog, peer, talking)
    first, second = bot.connections[0], bot.connections[1]
    assert [f["event"] for f in second[:2]] == ["connected", "start"]
    assert second[1]["start"]["streamSid"] == first[1]["start"]["streamSid"]
    logs = await wait_for_log(engine, "started reconnect=True")
    assert "stream error retry=0.2" in logs and "started reconnect=True" in logs, logs


async def linear16_echo(bot: Bot, ws: web.WebSocketResponse, conn: int) -> None:
    """linear16 at 16 kHz: wait for 10 binary frames, send back 0.5 s of 440 Hz."""
    n = await bot.next_frame(conn, lambda f: isinstance(f, bytes))
    for _ in range(10):
        n = await bot.next_frame(conn, lambda f: isinstance(f, bytes), n + 1)
    up = np.repeat(tone(440, 4000), 2).astype("<i2")
    await ws.send_bytes(up.tobytes())
    await ws.send_str(json.dumps({"type": "mark", "data": {"name": "m"}}))
    await bot.next_frame(conn, lambda f: isinstance(f, dict) and f.get("type") == "mark")
    bot.done.set()


async def test_linear16_stream(make_engine: EngineFactory, peers: PeerFactory,
                               serve_bot: Callable[[Bot], Awaitable[Bot]]) -> None:
    """linear16: a metadata text frame first, then stereo 16 kHz PCM frames
    (640 samples a tick) with the caller's tone on the left; the bot's PCM
    is heard by the phone and its mark echoed as played."""
    bot = await serve_bot(Bot(linear16_echo))
    _engine, dialog, peer, phone, talking = await call_bot(make_engine, peers, bot, fmt="linear16", rate=16000)
    await asyncio.wait_for(bot.done.wait(), 10)
    await hang_up(dialog, peer, talking)
    frames = bot.connections[0]
    assert frames[0]["sampleRate"] == 16000 and frames[0]["mixType"] == "stereo"
    pcm = [f for f in frames if isinstance(f, bytes)]
    assert all(len(f) == 1280 for f in pcm)
    left = np.frombuffer(b"".join(pcm[-10:]), dtype="<i2")[0::2]
    assert goertzel(left, 1000, 16000) > 100 * goertzel(left, 440, 16000)
    assert {"type": "mark", "data": {"name": "m", "event": "playout"}} in frames
    loud = [p for p in phone.received if np.abs(phone.pcm([p]).astype(np.int32)).max() > 2000]
    heard = phone.pcm(loud[2:20])
    assert goertzel(heard, 440) > 100 * goertzel(heard, 1000)
