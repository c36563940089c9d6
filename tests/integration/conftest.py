"""Fixtures of the integration tests: scripted SIP peers on real loopback
sockets (closed at teardown, before the engines stop), and helpers to read
the engine's session logs and to shorten its SIP timers."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable

import pytest

from logs import wait_for_log  # noqa: F401 (the tests import it from here)

from engine.server import Engine
from engine.sip.transaction import Timers

from .sip_peer import TcpListener, TcpPeer, UdpPeer

#: Short RFC 3261 timers: 64*T1 = 0.64 s, Timer D 0.2 s.
FAST_TIMERS = Timers(t1=0.01, t2=0.04, t4=0.05, d=0.2, trying=0.2)

#: The type of tests/conftest.py's ``make_engine`` fixture.
EngineFactory = Callable[..., Awaitable[Engine]]


class PeerFactory:
    """Opens scripted peers talking to an engine's SIP port and closes them
    all at teardown. ``await peers(engine, host, transport)`` for either
    transport, ``peers.udp(...)`` and ``peers.tcp(...)`` for a typed one."""

    def __init__(self) -> None:
        self.opened: list[UdpPeer | TcpPeer | TcpListener] = []

    async def udp(self, engine: Engine, host: str = "127.0.0.1", port: int = 0) -> UdpPeer:
        peer = await UdpPeer(host, (host, engine.ua.port)).open(port)
        self.opened.append(peer)
        return peer

    async def tcp(self, engine: Engine, host: str = "127.0.0.1") -> TcpPeer:
        peer = await TcpPeer(host, (host, engine.ua.port)).open()
        self.opened.append(peer)
        return peer

    async def tcp_listener(self, host: str = "127.0.0.1") -> TcpListener:
        peer = await TcpListener(host).open()
        self.opened.append(peer)
        return peer

    async def __call__(self, engine: Engine, host: str = "127.0.0.1",
                       transport: str = "UDP") -> UdpPeer | TcpPeer:
        if transport == "UDP":
            return await self.udp(engine, host)
        return await self.tcp(engine, host)

    async def close(self) -> None:
        for peer in self.opened:
            await peer.close()


@pytest.fixture
async def peers() -> AsyncIterator[PeerFactory]:
    """Scripted SIP peers on loopback (see :class:`PeerFactory`)."""
    factory = PeerFactory()
    yield factory
    await factory.close()


def use_timers(engine: Engine, timers: Timers = FAST_TIMERS) -> None:
    """Run ``engine``'s SIP timers (transactions and 2xx retransmission) at
    ``timers`` from now on (EngineConfig has no timers setting)."""
    engine.ua.set_timers(timers)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.fixture
async def http() -> AsyncIterator["aiohttp.ClientSession"]:
    """An HTTP client (closed at teardown)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session
