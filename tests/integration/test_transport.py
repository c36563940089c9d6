"""SIP over real UDP and TCP sockets: RFC 3581 rport/received, TCP framing
by Content-Length (split and coalesced segments) and CRLF keep-alives."""

from __future__ import annotations

import asyncio

import pytest

from engine.sip.message import SipRequest
from engine.sip.parser import parse_message
from engine.transport.sip_endpoint import Peer

from .conftest import EngineFactory, PeerFactory, wait_until
from .sip_peer import Dialog, TcpListener, TcpPeer, request

RULES = """
rules:
  - {name: Echo, pattern: "echo", scenarios: [answer_wait_hangup]}
"""


async def test_rport_response_returns_to_source_port(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A request whose Via has ``;rport`` and a sent-by that is not the
    sender (a phone behind NAT) is answered at the socket it came from, and
    the top Via of the answer carries ``received=127.0.0.1;rport=<port>``."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    data = request("OPTIONS", f"sip:echo@127.0.0.1:{engine.ua.port}", local=("192.0.2.7", 5999))
    assert b";rport\r\n" in data
    peer.send(data)
    resp = await peer.expect()
    assert resp.status == 200
    via = resp.top_via
    assert (via.host, via.port) == ("192.0.2.7", 5999)
    assert via.params["received"] == "127.0.0.1"
    assert via.params["rport"] == str(peer.local[1])
    assert peer.sources == [("127.0.0.1", engine.ua.port)]


async def test_no_rport_over_udp_still_answers_source(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Without ``;rport`` the answer still goes to the source address (the
    engine's documented choice), with ``received`` in the top Via."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    peer.send(request("OPTIONS", f"sip:echo@127.0.0.1:{engine.ua.port}",
                      local=("192.0.2.7", 5999), rport=False))
    resp = await peer.expect()
    assert resp.status == 200 and resp.top_via.params["received"] == "127.0.0.1"


async def test_tcp_two_messages_in_one_segment(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Two requests written in one TCP segment (one with a body framed by
    Content-Length) are both answered, in order, on the same connection."""
    engine = await make_engine(RULES)
    peer = await peers.tcp(engine)
    port = engine.ua.port
    first = request("MESSAGE", f"sip:nobody@127.0.0.1:{port}", local=peer.local, transport="TCP",
                    body=b"hello\r\n\r\nnot a header", content_type="text/plain")
    second = request("OPTIONS", f"sip:echo@127.0.0.1:{port}", local=peer.local, transport="TCP")
    peer.send(first + second)
    one = await peer.expect()
    two = await peer.expect()
    assert (one.cseq.method, one.status) == ("MESSAGE", 404)
    assert (two.cseq.method, two.status) == ("OPTIONS", 200)
    assert one.top_via.transport == "TCP"


async def test_tcp_message_split_across_segments(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A request that arrives in many small TCP segments (the head cut
    inside CRLFCRLF, the body apart) is framed and answered once."""
    engine = await make_engine(RULES)
    peer = await peers.tcp(engine)
    data = request("MESSAGE", f"sip:nobody@127.0.0.1:{engine.ua.port}", local=peer.local,
                   transport="TCP", body=b"x" * 50, content_type="text/plain")
    cut = data.index(b"\r\n\r\n") + 2
    for piece in (data[:10], data[10:cut], data[cut:cut + 1], data[cut + 1:cut + 10], data[cut + 10:]):
        peer.send(piece)
        await asyncio.sleep(0.01)
    assert (await peer.expect()).status == 404
    await peer.silence(0.2)


async def test_tcp_crlf_keepalive_gets_pong(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A CRLFCRLF ping on TCP gets a single CRLF pong (RFC 5626 §3.5.1), and
    the connection keeps working."""
    engine = await make_engine(RULES)
    peer = await peers.tcp(engine)
    assert isinstance(peer, TcpPeer)
    peer.send(b"\r\n\r\n")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2
    while peer.pongs == 0 and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert peer.pongs == 1
    peer.send(request("OPTIONS", f"sip:echo@127.0.0.1:{engine.ua.port}", local=peer.local, transport="TCP"))
    assert (await peer.expect()).status == 200


async def test_udp_keepalive_ignored(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """CRLF keep-alives over UDP get no answer and count as nothing."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    peer.send(b"\r\n\r\n")
    peer.send(b"\r\n")
    await peer.silence(0.2)
    assert engine.ua.endpoint.stats["received"] == 0


async def test_tcp_call_uses_the_connection(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A call over TCP: INVITE, 200 (Contact with ``transport=tcp``), ACK,
    then the engine's BYE arrives on the same connection and is answered."""
    engine = await make_engine(RULES)
    peer = await peers.tcp(engine)
    dialog = Dialog(peer, f"sip:echo@127.0.0.1:{engine.ua.port};transport=tcp")
    ok = await dialog.call()
    assert "transport=tcp" in (ok.headers.get("Contact") or "")
    bye = await peer.recv_request("BYE")
    assert isinstance(bye, SipRequest)
    peer.send(bye.create_response(200).to_bytes())
    assert await wait_until(lambda: not engine.ua.calls, 3.0)


async def test_tcp_messages_to_new_peer_share_one_connection(make_engine: EngineFactory,
                                                             peers: PeerFactory) -> None:
    """Several messages sent to a TCP peer before the connection to it is
    up all travel, in order, over the one connection opened for them."""
    engine = await make_engine(RULES)
    phone = await peers.tcp_listener()
    target = Peer("TCP", "127.0.0.1", phone.local[1])
    for n in range(3):
        engine.ua.endpoint.send_stateless(_options(phone, n), target)
    got = [await phone.recv_request("OPTIONS") for _ in range(3)]
    assert [m.cseq.number for m in got] == [1, 2, 3]
    assert phone.connections == 1


def _options(phone: TcpListener, n: int) -> SipRequest:
    data = request("OPTIONS", f"sip:bob@127.0.0.1:{phone.local[1]}", local=("127.0.0.1", 5060),
                   transport="TCP", cseq=n + 1)
    msg = parse_message(data)
    assert isinstance(msg, SipRequest)
    return msg


async def test_advertised_host_in_contact_and_sdp(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """With ``advertised_host`` (the public address behind NAT) the engine
    listens on loopback but puts the advertised address in Contact and in
    the SDP of its answer."""
    engine = await make_engine(RULES, advertised_host="203.0.113.5")
    peer = await peers.udp(engine)
    dialog = Dialog(peer, f"sip:echo@127.0.0.1:{engine.ua.port}")
    dialog.invite()
    ok = await peer.expect()
    dialog.learn(ok)
    dialog.ack()
    assert ok.status == 200, (ok.status, ok.reason)
    assert f"@203.0.113.5:{engine.ua.port}" in (ok.headers.get("Contact") or "")
    assert b"c=IN IP4 203.0.113.5" in ok.body
