"""IPv6: an engine on ``::1``, and one on ``127.0.0.1,::1``, answering
OPTIONS and completing INVITE/ACK/BYE calls over UDP and TCP with [::1] in
Via, Contact and the SDP (IP6)."""

from __future__ import annotations

import socket

import pytest

from engine.server import Engine
from engine.sip.message import SipRequest, SipResponse
from engine.sip.sdp import parse_sdp

from .conftest import EngineFactory, PeerFactory, wait_for_log, wait_until
from .sip_peer import Dialog, bracket, request

RULES = """
rules:
  - {name: Hangup, pattern: "echo", scenarios: [answer_wait_hangup]}
  - {name: InDialog, pattern: "talk", scenarios: [in_dialog]}
"""


def uri(number: str, host: str, port: int, transport: str) -> str:
    return f"sip:{number}@{bracket(host)}:{port}" + (";transport=tcp" if transport == "TCP" else "")


def check_family(msg: SipRequest | SipResponse, host: str, engine: Engine, transport: str) -> None:
    """Contact and SDP of ``msg`` (sent by the engine) are in ``host``'s family."""
    contact = msg.headers.get("Contact") or ""
    assert f"@{bracket(host)}:{engine.ua.port}" in contact, contact
    if transport == "TCP":
        assert "transport=tcp" in contact
    if msg.body:
        sdp = parse_sdp(msg.body)
        text = msg.body.decode()
        family = "IP6" if ":" in host else "IP4"
        assert f"IN {family} {host}" in text, text
        assert sdp.media[0].port > 0


async def check_options(engine: Engine, peers: PeerFactory, host: str, transport: str) -> None:
    peer = await peers(engine, host=host, transport=transport)
    peer.send(request("OPTIONS", uri("echo", host, engine.ua.port, transport), local=peer.local,
                      transport=transport))
    resp = await peer.expect()
    assert resp.status == 200
    via = resp.top_via
    assert via.params["received"] == host
    if transport == "UDP":
        assert via.params["rport"] == str(peer.local[1])


async def engine_hangs_up(engine: Engine, peers: PeerFactory, host: str, transport: str) -> None:
    """answer_wait_hangup: we INVITE and ACK, the engine sends the BYE."""
    peer = await peers(engine, host=host, transport=transport)
    dialog = Dialog(peer, uri("echo", host, engine.ua.port, transport))
    ok = await dialog.call()
    check_family(ok, host, engine, transport)
    bye = await peer.recv_request("BYE")
    via = bye.top_via
    assert (via.transport, via.host, via.port) == (transport, host, engine.ua.port)
    assert (bye.headers.get("Via") or "").startswith(f"SIP/2.0/{transport} {bracket(host)}:")
    assert bye.uri_text.startswith(f"sip:tester@{bracket(host)}:{peer.local[1]}")
    peer.send(bye.create_response(200).to_bytes())
    assert await wait_until(lambda: not engine.ua.calls, 3.0)


async def caller_hangs_up(engine: Engine, peers: PeerFactory, host: str, transport: str) -> None:
    """in_dialog: we INVITE, ACK and BYE; the scenario logs the end."""
    peer = await peers(engine, host=host, transport=transport)
    dialog = Dialog(peer, uri("talk", host, engine.ua.port, transport))
    ok = await dialog.call()
    check_family(ok, host, engine, transport)
    await wait_for_log(engine, "connected")
    dialog.send("BYE")
    resp = await peer.expect(method="BYE")
    assert resp.status == 200
    logs = await wait_for_log(engine, "ended Disconnected 200")
    assert "ended Disconnected 200" in logs


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_ipv6_only_engine(make_engine: EngineFactory, peers: PeerFactory, transport: str) -> None:
    """An engine on ``::1`` answers OPTIONS (received=::1, rport) and
    completes calls both ways of hanging up; Via, Contact, Request-URI of
    the BYE and SDP (``IN IP6 ::1``) all carry the IPv6 address."""
    engine = await make_engine(RULES, sip_hosts=["::1"])
    await check_options(engine, peers, "::1", transport)
    await engine_hangs_up(engine, peers, "::1", transport)
    await caller_hangs_up(engine, peers, "::1", transport)


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_dual_stack_engine(make_engine: EngineFactory, peers: PeerFactory, transport: str) -> None:
    """An engine on ``127.0.0.1,::1`` (one port) serves both families, and
    each call gets Via, Contact and SDP in its own family."""
    engine = await make_engine(RULES, sip_hosts=["127.0.0.1", "::1"])
    for host in ("127.0.0.1", "::1"):
        await check_options(engine, peers, host, transport)
        await engine_hangs_up(engine, peers, host, transport)
    await caller_hangs_up(engine, peers, "::1", transport)


async def test_dual_stack_rtp_port_is_held_on_the_advertised_address(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """On ``127.0.0.1,::1`` a call from ::1 gets SDP ``IN IP6 ::1`` and a
    port; that port must be held by the engine on ::1 (binding it fails)."""
    engine = await make_engine(RULES, sip_hosts=["127.0.0.1", "::1"])
    peer = await peers.udp(engine, host="::1")
    dialog = Dialog(peer, uri("talk", "::1", engine.ua.port, "UDP"))
    ok = await dialog.call()
    port = parse_sdp(ok.body).media[0].port
    probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        with pytest.raises(OSError):
            probe.bind(("::1", port))
    finally:
        probe.close()
        dialog.send("BYE")
        await peer.expect(method="BYE")
