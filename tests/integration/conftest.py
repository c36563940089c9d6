"""Fixtures of the integration tests: scripted SIP peers on real loopback
sockets (closed at teardown, before the engines stop), and helpers to read
the engine's session logs and to shorten its SIP timers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest

from engine.server import Engine
from engine.sip.transaction import Timers

from .sip_peer import TcpPeer, UdpPeer

#: Short RFC 3261 timers: 64*T1 = 0.64 s, Timer D 0.2 s.
FAST_TIMERS = Timers(t1=0.01, t2=0.04, t4=0.05, d=0.2, trying=0.2)

PeerFactory = Callable[..., Awaitable[UdpPeer | TcpPeer]]


@pytest.fixture
async def peers() -> AsyncIterator[PeerFactory]:
    """``await peers(engine, host="127.0.0.1", transport="UDP")`` opens a peer
    talking to ``engine``'s SIP port; every peer is closed at teardown."""
    opened: list[UdpPeer | TcpPeer] = []

    async def factory(engine: Engine, host: str = "127.0.0.1", transport: str = "UDP",
                      port: int = 0) -> UdpPeer | TcpPeer:
        server = (host, engine.ua.port)
        peer: UdpPeer | TcpPeer
        if transport == "UDP":
            peer = await UdpPeer(host, server).open(port)
        else:
            peer = await TcpPeer(host, server).open()
        opened.append(peer)
        return peer

    yield factory
    for peer in opened:
        await peer.close()


def use_timers(engine: Engine, timers: Timers = FAST_TIMERS) -> None:
    """Run ``engine``'s SIP timers (transactions and 2xx retransmission) at
    ``timers`` from now on. EngineConfig has no timers setting, so the test
    sets the two places that read them."""
    engine.ua.config.timers = timers
    engine.ua.endpoint.layer.timers = timers


def session_logs(engine: Engine) -> str:
    logs = Path(engine.config.data_dir) / "logs"
    return "\n".join(p.read_text() for p in sorted(logs.glob("*.log")))


async def wait_for_log(engine: Engine, text: str, timeout: float = 5.0) -> str:
    """The session logs once ``text`` is in them (or at ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        logs = session_logs(engine)
        if text in logs or loop.time() > deadline:
            return logs
        await asyncio.sleep(0.02)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
