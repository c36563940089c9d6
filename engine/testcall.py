"""``callbridge call NUMBER``: place one test call through a running engine.

A throw-away :class:`~engine.calls.sip_ua.UserAgent` on an ephemeral loopback port
dials ``sip:NUMBER@HOST:PORT``, prints each event, stays connected for
``duration`` seconds (or until the far end hangs up) and hangs up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

from engine.calls.sip_media import SipLegMedia
from engine.calls.call import CallEvent, CallEvents, CallState
from engine.transport.rtp_socket import RtpPortAllocator
from engine.transport.sip_endpoint import Peer, SecurityPolicy
from engine.sip.uri import format_host
from engine.calls.sip_ua import UaConfig, UserAgent
from engine.state.directory import MemoryDirectory

__all__ = ["TestCallResult", "place_test_call"]


@dataclass
class TestCallResult:
    connected: bool = False
    code: int | None = None
    reason: str | None = None
    events: list[str] = field(default_factory=list)


async def place_test_call(
    host: str, port: int, number: str, *, caller: str = "callbridge-cli", duration: float = 5.0,
    headers: dict[str, str] | None = None, transport: str = "UDP",
    echo: Callable[[str], None] = lambda line: None,
) -> TestCallResult:
    """Dial ``number`` at the engine on ``host:port`` and report what happened."""
    local = "::1" if ":" in host else "127.0.0.1"
    ports = RtpPortAllocator(local, 40000, 41000)
    ua = UserAgent(
        UaConfig(hosts=[local], port=0, policy=SecurityPolicy(rate=0)),
        media_factory=lambda call: SipLegMedia(ports, local),
        directory=MemoryDirectory(),
    )
    await ua.start()
    result = TestCallResult()
    done = asyncio.Event()
    settled = asyncio.Event()

    def record(ev: CallEvent) -> None:
        line = f"{ev.name}" + (f" {ev.code} {ev.reason}" if ev.code else "")
        result.events.append(line)
        echo(line)
        if ev.name == "Connected":
            result.connected = True
            settled.set()
        if ev.name in ("Disconnected", "Failed"):
            result.code, result.reason = ev.code, ev.reason
            done.set()
            settled.set()

    try:
        hostpart = format_host(host)
        call = ua.call_sip(
            f"sip:{number}@{hostpart}:{port}", callerid=caller, headers=headers,
            peer=Peer(transport, host, port),
        )
        for name in (CallEvents.Ringing, CallEvents.Progress, CallEvents.Connected,
                     CallEvents.Disconnected, CallEvents.Failed, CallEvents.MessageReceived):
            call.add_event_listener(name, record)
        try:
            await asyncio.wait_for(settled.wait(), 35.0)
        except asyncio.TimeoutError:
            pass
        if call.state == CallState.CONNECTED:
            try:
                await asyncio.wait_for(done.wait(), duration)
            except asyncio.TimeoutError:
                call.hangup()
                echo("hung up")
        elif not call.state.ended:
            call.hangup()
        await asyncio.sleep(0.2)
    finally:
        await ua.stop()
    return result
