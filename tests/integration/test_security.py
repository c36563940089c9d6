"""The SecurityPolicy over real sockets: per-source rate limit and ban,
trusted sources, scanner User-Agents, size limits on UDP and TCP, and the
slow-loris defence."""

from __future__ import annotations

import asyncio
import time

from engine.transport.sip_endpoint import SecurityPolicy

from .conftest import EngineFactory, PeerFactory, wait_until
from .sip_peer import Dialog, TcpPeer, UdpPeer, request

RULES = """
rules:
  - {name: Echo, pattern: "echo", scenarios: [answer_wait_hangup]}
  - {name: InDialog, pattern: "talk", scenarios: [in_dialog]}
"""


def options(peer: UdpPeer | TcpPeer, port: int, headers: list[tuple[str, str]] | None = None,
            uri: str | None = None) -> bytes:
    return request("OPTIONS", uri or f"sip:echo@127.0.0.1:{port}", local=peer.local,
                   transport=peer.transport, headers=headers or [])


async def test_rate_limit_bans_source_but_not_in_dialog_requests(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """From an untrusted source with ``burst`` 5: a call (its INVITE takes
    one token) carries 30 in-dialog INFOs, none counted, all answered; then
    4 OPTIONS are answered, the next is refused and bans the source, after
    which nothing from it is answered, in-dialog requests included."""
    policy = SecurityPolicy(rate=0.01, burst=5, ban_seconds=60, trusted=frozenset())
    engine = await make_engine(RULES, policy=policy)
    port = engine.ua.port
    peer = await peers.udp(engine)
    dialog = Dialog(peer, f"sip:talk@127.0.0.1:{port}")
    await dialog.call()
    for _ in range(30):
        dialog.send("INFO", body=b"Signal=1\r\n", content_type="application/dtmf-relay")
        assert (await peer.expect(method="INFO")).status == 200
    for _ in range(4):
        peer.send(options(peer, port))
        assert (await peer.expect(method="OPTIONS")).status == 200
    peer.send(options(peer, port))
    await peer.silence(0.2)
    assert engine.directory.is_banned("127.0.0.1", time.monotonic())
    peer.send(options(peer, port))
    dialog.send("BYE")
    await peer.silence(0.2)
    assert engine.ua.endpoint.stats["banned"] >= 3


async def test_made_up_to_tags_count_against_the_rate(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Requests with a To tag of no dialog we have (481 each) are not
    exempt: beyond ``burst`` the source is banned."""
    policy = SecurityPolicy(rate=0.01, burst=3, ban_seconds=60, trusted=frozenset())
    engine = await make_engine(RULES, policy=policy)
    port = engine.ua.port
    peer = await peers.udp(engine)
    for i in range(3):
        peer.send(request("BYE", f"sip:talk@127.0.0.1:{port}", local=peer.local,
                          to_tag="made-up", cseq=i + 2))
        assert (await peer.expect(method="BYE")).status == 481
    peer.send(request("BYE", f"sip:talk@127.0.0.1:{port}", local=peer.local, to_tag="made-up"))
    await peer.silence(0.2)
    assert engine.directory.is_banned("127.0.0.1", time.monotonic())


async def test_malformed_requests_count_against_the_rate(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Malformed requests from an untrusted source count like any other:
    beyond ``burst`` they get no 400 and the source is banned (no reflection
    of floods)."""
    policy = SecurityPolicy(rate=0.01, burst=3, ban_seconds=60, trusted=frozenset())
    engine = await make_engine(RULES, policy=policy)
    peer = await peers.udp(engine)
    bad = options(peer, engine.ua.port).replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    for _ in range(3):
        peer.send(bad)
        resp = await peer.expect()
        assert resp.status == 400 and "CSeq" in resp.reason
    peer.send(bad)
    peer.send(options(peer, engine.ua.port))
    await peer.silence(0.2)


async def test_trusted_source_is_exempt(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A trusted source may send far beyond ``burst``: 40 OPTIONS sent at
    once, all 40 answered, and it is never banned."""
    policy = SecurityPolicy(rate=0.01, burst=2, trusted=frozenset({"127.0.0.1"}))
    engine = await make_engine(RULES, policy=policy)
    peer = await peers.udp(engine)
    for _ in range(40):
        peer.send(options(peer, engine.ua.port))
    for _ in range(40):
        assert (await peer.expect(method="OPTIONS")).status == 200
    assert engine.ua.endpoint.stats["banned"] == 0


async def test_ban_expires(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A burst over the limit bans the source; once ``ban_seconds`` (tiny
    here) have passed and the bucket refilled, it is answered again."""
    policy = SecurityPolicy(rate=20.0, burst=3, ban_seconds=0.3, trusted=frozenset())
    engine = await make_engine(RULES, policy=policy)
    peer = await peers.udp(engine)
    for _ in range(10):
        peer.send(options(peer, engine.ua.port))
    answered = 0
    try:
        while True:
            await peer.expect(method="OPTIONS", timeout=0.2)
            answered += 1
    except asyncio.TimeoutError:
        pass
    assert 3 <= answered < 10
    assert engine.ua.endpoint.stats["banned"] >= 1
    assert await wait_until(lambda: not engine.directory.is_banned("127.0.0.1", time.monotonic()), 2.0)
    await asyncio.sleep(0.1)  # the bucket refills at 20/s
    peer.send(options(peer, engine.ua.port))
    assert (await peer.expect(method="OPTIONS")).status == 200


async def test_bans_run_on_the_engine_clock(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Check the endpoint's admission reads the engine's clock (the one the
    registrar uses), not its own: a ban until virtual time 1060 drops a
    request at 1000 and lets one through at 1061, however far the real
    monotonic clock is from either (virtual clock, no sleep)."""
    engine = await make_engine(RULES, policy=SecurityPolicy(trusted=frozenset()))
    now = [1000.0]
    engine.clock = lambda: now[0]
    engine.directory.ban("127.0.0.1", 1060.0)
    peer = await peers.udp(engine)
    uri = f"sip:echo@127.0.0.1:{engine.ua.port}"
    peer.send(request("OPTIONS", uri, local=peer.local, call_id="while-banned"))
    assert await wait_until(lambda: engine.ua.endpoint.stats["received"] == 1, 2.0)
    now[0] = 1061.0
    peer.send(request("OPTIONS", uri, local=peer.local, call_id="after-the-ban"))
    resp = await peer.expect(method="OPTIONS")
    assert (resp.status, resp.call_id) == (200, "after-the-ban")
    assert engine.ua.endpoint.stats["banned"] == 1


async def test_scanner_user_agents_dropped(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Requests whose User-Agent names a known scanner (friendly-scanner,
    sipvicious, any case) get nothing, even from a trusted source; another
    User-Agent on the same socket is answered."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    port = engine.ua.port
    for agent in ("friendly-scanner", "sipvicious 0.2.8", "SIPVicious"):
        peer.send(options(peer, port, [("User-Agent", agent)]))
        peer.send(request("INVITE", f"sip:echo@127.0.0.1:{port}", local=peer.local,
                          headers=[("User-Agent", agent)]))
    await peer.silence(0.3)
    assert engine.ua.endpoint.stats["dropped"] >= 6
    assert not engine.ua.calls
    peer.send(options(peer, port, [("User-Agent", "Linphone/5.2")]))
    assert (await peer.expect()).status == 200


async def test_long_request_uri_gets_414(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A Request-URI longer than ``max_uri`` is refused with 414 (over UDP
    and TCP); one just under the limit is answered normally."""
    engine = await make_engine(RULES, policy=SecurityPolicy(max_uri=100, trusted=frozenset({"127.0.0.1"})))
    port = engine.ua.port
    for transport in ("UDP", "TCP"):
        peer = await peers(engine, transport=transport)
        long_uri = f"sip:{'a' * 120}@127.0.0.1:{port}"
        peer.send(options(peer, port, uri=long_uri))
        assert (await peer.expect()).status == 414
        short_uri = f"sip:{'a' * 60}@127.0.0.1:{port}"
        peer.send(options(peer, port, uri=short_uri))
        assert (await peer.expect()).status == 200


async def test_oversized_datagram_dropped(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A datagram over ``max_message`` is dropped unanswered; one under it
    is answered."""
    engine = await make_engine(RULES, policy=SecurityPolicy(max_message=4000, trusted=frozenset({"127.0.0.1"})))
    peer = await peers.udp(engine)
    port = engine.ua.port
    peer.send(options(peer, port, [("X-Pad", "p" * 5000)]))
    await peer.silence(0.3)
    assert engine.ua.endpoint.stats["dropped"] == 1
    peer.send(options(peer, port, [("X-Pad", "p" * 3000)]))
    assert (await peer.expect()).status == 200


async def test_tcp_head_without_end_beyond_max_message_closes(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Over TCP, a head that grows beyond ``max_message`` without its empty
    line gets the connection closed; other connections are unaffected."""
    engine = await make_engine(RULES, policy=SecurityPolicy(max_message=4000, trusted=frozenset({"127.0.0.1"})))
    port = engine.ua.port
    good = await peers.tcp(engine)
    bad = await peers.tcp(engine)
    head = options(bad, port).split(b"\r\n\r\n")[0] + b"\r\n"
    bad.send(head + b"X-Pad: " + b"p" * 5000)
    assert await bad.closed_by_server()
    good.send(options(good, port))
    assert (await good.expect()).status == 200


async def test_slow_loris_closed_after_idle_timeout(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """With a small ``tcp_idle_timeout``: a connection trickling a message
    it never finishes is closed, also after an earlier whole message; a
    connection sending only CRLF keep-alives and never a message is closed;
    a connection that sent a message and is then quiet stays open."""
    policy = SecurityPolicy(tcp_idle_timeout=0.3, trusted=frozenset({"127.0.0.1"}))
    engine = await make_engine(RULES, policy=policy)
    port = engine.ua.port
    loris = await peers.tcp(engine)
    late_loris = await peers.tcp(engine)
    pinger = await peers.tcp(engine)
    quiet = await peers.tcp(engine)
    for peer in (late_loris, quiet):
        peer.send(options(peer, port))
        assert (await peer.expect()).status == 200
    trickles = {loris: options(loris, port)[:-4], late_loris: options(late_loris, port)[:-4]}
    for i in range(200):  # at most 10 s; ends when both are closed
        if loris.eof.is_set() and late_loris.eof.is_set():
            break
        for peer, data in trickles.items():
            if not peer.eof.is_set() and i < len(data):
                peer.send(data[i:i + 1])
        if not pinger.eof.is_set():
            pinger.send(b"\r\n\r\n")
        await asyncio.sleep(0.05)
    assert loris.eof.is_set() and late_loris.eof.is_set()
    assert await pinger.closed_by_server(2.0)
    assert not quiet.eof.is_set()
    quiet.send(options(quiet, port))
    assert (await quiet.expect()).status == 200


async def test_tcp_connection_limit_and_banned_source(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Beyond ``max_tcp_connections`` a new connection is closed at once
    while the open ones keep working; once its source is banned, a new TCP
    connection from it is closed too."""
    policy = SecurityPolicy(max_tcp_connections=2, rate=0.01, burst=5, trusted=frozenset())
    engine = await make_engine(RULES, policy=policy)
    port = engine.ua.port
    first = await peers.tcp(engine)
    second = await peers.tcp(engine)
    for peer in (first, second):
        peer.send(options(peer, port))
        assert (await peer.expect()).status == 200
    third = await peers.tcp(engine)
    assert await third.closed_by_server()
    for _ in range(3):
        first.send(options(first, port))
    for _ in range(3):
        assert (await first.expect()).status == 200
    first.send(options(first, port))  # the sixth request: banned
    await first.silence(0.2)
    await second.close()
    assert await wait_until(lambda: len(engine.ua.endpoint._tcp) == 1, 2.0)
    fourth = await peers.tcp(engine)
    assert await fourth.closed_by_server()


HANGUP_LATER = '''
"""Answer, hang up 0.8 s after the caller's ACK."""
from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine, set_timeout


def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Connected, lambda ev: set_timeout(call.hangup, 800))
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    call.answer()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
'''


async def test_quiet_tcp_call_keeps_its_connection(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """The slow-loris defence closes connections that leave a message
    unfinished, not connections that carry a call and are merely quiet: a
    TCP call silent for longer than ``tcp_idle_timeout`` still gets the
    engine's BYE on its connection (the caller's port takes no new ones)."""
    policy = SecurityPolicy(tcp_idle_timeout=0.2, trusted=frozenset({"127.0.0.1"}))
    engine = await make_engine("""
rules:
  - {name: Later, pattern: "later", scenarios: [hangup_later]}
""", {"hangup_later": HANGUP_LATER}, policy=policy)
    peer = await peers.tcp(engine)
    dialog = Dialog(peer, f"sip:later@127.0.0.1:{engine.ua.port};transport=tcp")
    await dialog.call()
    bye = await peer.recv_request("BYE")
    assert not peer.eof.is_set()
    peer.send(bye.create_response(200).to_bytes())
    assert await wait_until(lambda: not engine.ua.calls, 2.0)
