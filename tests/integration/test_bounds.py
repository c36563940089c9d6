"""Bounded cost of unauthenticated requests, over real sockets: CANCELs
count toward the per-source rate and a CANCEL of nothing leaves no
transaction; out-of-dialog MESSAGEs have their own, stricter limit; the
server transaction table, the session table, TCP connections per source
and SDK WebSockets per source and in all are capped; a guest login stores
a row without any hash and runs no scrypt."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from typing import Any

import aiohttp
import pytest

from engine.sip.message import SipResponse
from engine.sip.transaction import Timers
from engine.state.store import GUEST_HASH
from engine.transport.sip_endpoint import SecurityPolicy

from .conftest import EngineFactory, PeerFactory, use_timers, wait_until
from .sip_peer import Dialog, TcpPeer, UdpPeer, request

#: A call rings until cancelled; a MESSAGE starts a session that waits.
RING = '''
"""Let every call ring; take MESSAGEs and do nothing."""
from engine.runtime.scenario import AppEvents, VoxEngine

VoxEngine.add_event_listener(AppEvents.CallAlerting, lambda e: None)
VoxEngine.add_event_listener(AppEvents.MessageReceived, lambda e: None)
'''

RULES = """
rules:
  - {name: Ring, pattern: "ring|msg", scenarios: [ring]}
"""

TRUSTED = SecurityPolicy(trusted=frozenset({"127.0.0.1"}))


def cancel_of_nothing(peer: UdpPeer | TcpPeer, port: int) -> bytes:
    """A CANCEL whose branch no INVITE ever used."""
    return request("CANCEL", f"sip:ring@127.0.0.1:{port}", local=peer.local, transport=peer.transport)


def message(peer: UdpPeer, port: int) -> bytes:
    return request("MESSAGE", f"sip:msg@127.0.0.1:{port}", local=peer.local, body=b"hi",
                   content_type="text/plain")


def options(peer: UdpPeer | TcpPeer, port: int) -> bytes:
    return request("OPTIONS", f"sip:ring@127.0.0.1:{port}", local=peer.local, transport=peer.transport)


async def responses(peer: UdpPeer, count: int) -> list[SipResponse]:
    """The next ``count`` responses (final ones)."""
    out: list[SipResponse] = []
    while len(out) < count:
        out.append(await peer.expect())
    return out


async def test_cancel_flood_is_banned_like_an_invite_flood(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """From an untrusted source with ``burst`` 5, CANCELs that match no
    INVITE count like any new request: five get 481, the sixth is dropped
    and bans the source, and a security event says so."""
    policy = SecurityPolicy(rate=0.01, burst=5, ban_seconds=60, trusted=frozenset())
    engine = await make_engine(RULES, {"ring": RING}, policy=policy)
    port = engine.ua.port
    peer = await peers.udp(engine)
    for _ in range(5):
        peer.send(cancel_of_nothing(peer, port))
        assert (await peer.expect(method="CANCEL")).status == 481
    peer.send(cancel_of_nothing(peer, port))
    await peer.silence(0.2)
    assert engine.directory.is_banned("127.0.0.1", time.monotonic())


async def test_cancels_of_nothing_leave_no_transaction(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """100 CANCELs of nothing each get a 481 with a To tag and leave the
    server transaction table empty (a transaction would live Timer J, 32 s);
    a CANCEL of a ringing INVITE still gets 200 and the INVITE 487."""
    engine = await make_engine(RULES, {"ring": RING}, policy=TRUSTED)
    port = engine.ua.port
    peer = await peers.udp(engine)
    for _ in range(100):
        peer.send(cancel_of_nothing(peer, port))
    answers = await responses(peer, 100)
    assert {(r.status, r.cseq.method) for r in answers} == {(481, "CANCEL")}
    assert all(r.to.tag for r in answers)
    assert engine.ua.endpoint.layer.server_count == 0
    dialog = Dialog(peer, f"sip:ring@127.0.0.1:{port}")
    dialog.invite()
    assert (await peer.expect(100, method="INVITE")).status == 100
    peer.send(dialog.build("CANCEL", branch=dialog.invite_branch, in_dialog=False))
    assert (await peer.expect(method="CANCEL")).status == 200
    assert (await peer.expect(method="INVITE")).status == 487


async def test_message_flood_starts_at_most_the_limit_sessions(
    make_engine: EngineFactory, peers: PeerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``message_burst`` 5 (and a general rate far above the flood),
    30 out-of-dialog MESSAGEs start 5 sessions: the other 25 get 503 with
    Retry-After and no session, and the refusal is a security event."""
    policy = SecurityPolicy(rate=1000, burst=1000, message_rate=0.01, message_burst=5,
                            trusted=frozenset())
    engine = await make_engine(RULES, {"ring": RING}, policy=policy, session_idle_timeout=30.0)
    port = engine.ua.port
    peer = await peers.udp(engine)
    with caplog.at_level(logging.WARNING, logger="callbridge.security"):
        for _ in range(30):
            peer.send(message(peer, port))
        answers = await responses(peer, 30)
    assert sorted(r.status for r in answers) == [200] * 5 + [503] * 25
    assert all(r.headers.get("Retry-After") == "5" for r in answers if r.status == 503)
    assert len(engine.runtime.sessions) == 5
    assert "security event=rate_limited src=127.0.0.1 transport=UDP what=MESSAGE" in caplog.text
    assert not engine.directory.is_banned("127.0.0.1", time.monotonic())


async def test_transaction_cap_answers_503_and_recovers(
    make_engine: EngineFactory, peers: PeerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``max_transactions`` 5, a ringing INVITE and four OPTIONS fill
    the table: a fifth OPTIONS gets a stateless 503 with Retry-After, a
    retransmitted OPTIONS still gets its 200, the CANCEL of the INVITE still
    works (200, 487), and once the OPTIONS transactions end (Timer J) a new
    OPTIONS is answered again."""
    policy = SecurityPolicy(max_transactions=5, trusted=frozenset({"127.0.0.1"}))
    engine = await make_engine(RULES, {"ring": RING}, policy=policy)
    use_timers(engine, Timers(t1=0.05, t2=0.2, t4=0.25, d=0.5, trying=0.2))  # Timer J: 3.2 s
    port = engine.ua.port
    peer = await peers.udp(engine)
    dialog = Dialog(peer, f"sip:ring@127.0.0.1:{port}")
    dialog.invite()
    assert (await peer.expect(100, method="INVITE")).status == 100
    sent = [options(peer, port) for _ in range(4)]
    for data in sent:
        peer.send(data)
        assert (await peer.expect(method="OPTIONS")).status == 200
    assert engine.ua.endpoint.layer.server_count == 5
    with caplog.at_level(logging.WARNING, logger="callbridge.security"):
        peer.send(options(peer, port))
        refused = await peer.expect(method="OPTIONS")
    assert (refused.status, refused.headers.get("Retry-After")) == (503, "5")
    assert "security event=cap_reached src=127.0.0.1 transport=UDP cap=transactions" in caplog.text
    peer.send(sent[0])  # a retransmission reaches its transaction
    assert (await peer.expect(method="OPTIONS")).status == 200
    peer.send(dialog.build("CANCEL", branch=dialog.invite_branch, in_dialog=False))
    assert (await peer.expect(method="CANCEL")).status == 200
    assert (await peer.expect(method="INVITE")).status == 487
    assert await wait_until(lambda: engine.ua.endpoint.layer.server_count < 5, 10.0)
    peer.send(options(peer, port))
    assert (await peer.expect(method="OPTIONS")).status == 200


async def test_session_cap_answers_503(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """With ``max_sessions`` 2: two MESSAGEs start two sessions, a third
    MESSAGE and a call get 503 with Retry-After, and no third session runs."""
    engine = await make_engine(RULES, {"ring": RING}, policy=TRUSTED, max_sessions=2,
                               session_idle_timeout=30.0)
    port = engine.ua.port
    peer = await peers.udp(engine)
    for _ in range(2):
        peer.send(message(peer, port))
        assert (await peer.expect(method="MESSAGE")).status == 200
    peer.send(message(peer, port))
    refused = await peer.expect(method="MESSAGE")
    assert (refused.status, refused.headers.get("Retry-After")) == (503, "5")
    dialog = Dialog(peer, f"sip:ring@127.0.0.1:{port}")
    dialog.invite()
    refused = await peer.expect(method="INVITE")
    assert (refused.status, refused.headers.get("Retry-After")) == (503, "5")
    assert len(engine.runtime.sessions) == 2


async def test_tcp_connections_per_source_capped(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """25 TCP connections from one untrusted address: 5 are closed by the
    server (``max_tcp_per_source`` 20) and the 20 others carry requests;
    once one closes, a new connection is accepted."""
    policy = SecurityPolicy(rate=1000, burst=1000, trusted=frozenset())
    engine = await make_engine(RULES, {"ring": RING}, policy=policy)
    port = engine.ua.port
    conns = [await peers.tcp(engine) for _ in range(25)]
    assert await wait_until(lambda: sum(c.eof.is_set() for c in conns) == 5, 5.0)
    alive = [c for c in conns if not c.eof.is_set()]
    assert len(alive) == 20
    for conn in alive:
        conn.send(options(conn, port))
        assert (await conn.expect(method="OPTIONS")).status == 200
    assert sum(c.eof.is_set() for c in conns) == 5
    await alive[0].close()
    assert await wait_until(lambda: engine.ua.endpoint.admission.connections_from("127.0.0.1") == 19, 2.0)
    late = await peers.tcp(engine)
    late.send(options(late, port))
    assert (await late.expect(method="OPTIONS")).status == 200


async def test_websockets_over_the_caps_are_refused(make_engine: EngineFactory) -> None:
    """With ``ws_max_per_source`` 2, a third socket from 127.0.0.1 is
    refused 429 before the upgrade, and once one closes a new one is
    accepted; with ``ws_max_connections`` 2 (and a higher per-source cap)
    a third socket is refused 503. The accepted sockets keep working."""
    per_source = await make_engine(RULES, {"ring": RING}, policy=TRUSTED, ws_max_per_source=2)
    in_all = await make_engine(RULES, {"ring": RING}, policy=TRUSTED, ws_max_connections=2)
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{per_source.http_port}/ws"
        first = await http.ws_connect(url)
        second = await http.ws_connect(url)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
        assert refused.value.status == 429
        await first.close()
        assert await wait_until(lambda: len(_sockets(per_source)) == 1, 2.0)
        third = await http.ws_connect(url)
        url = f"http://127.0.0.1:{in_all.http_port}/ws"
        fourth = await http.ws_connect(url)
        fifth = await http.ws_connect(url)
        with pytest.raises(aiohttp.WSServerHandshakeError) as full:
            await http.ws_connect(url)
        assert full.value.status == 503
        for ws in (second, third, fourth, fifth):
            await ws.send_str(json.dumps({"type": "ping", "ref": "p"}))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "pong"
            await ws.close()


def _sockets(engine: Any) -> set[Any]:
    from engine.web.app import CONNECTIONS

    runner = engine.http_runner
    assert runner is not None
    return runner.app[CONNECTIONS]  # type: ignore[no-any-return]


async def test_guest_login_stores_no_hash_and_runs_no_scrypt(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest login stores a profile row whose password hash is the guest
    marker and whose SIP HA1 values are empty, without calling scrypt (it
    raises here); nobody logs in as that guest by password."""
    engine = await make_engine(RULES, {"ring": RING}, policy=TRUSTED)
    store = engine.store
    assert store is not None

    def no_scrypt(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("scrypt was called")

    monkeypatch.setattr(hashlib, "scrypt", no_scrypt)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws")
        await ws.send_str(json.dumps({"type": "hello", "version": 1, "ref": "h"}))
        assert json.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
        await ws.send_str(json.dumps({"type": "login", "guest": "Ann", "ref": "l"}))
        ok = json.loads((await ws.receive(timeout=5)).data)
        assert (ok["type"], ok["guest"], ok["display_name"]) == ("login_ok", True, "Ann")
        name = ok["username"]
        with store._read() as conn:
            row = conn.execute("SELECT display_name, password_hash, ha1_realm, ha1_md5, ha1_sha256"
                               " FROM users WHERE name = ?", (name,)).fetchone()
        assert tuple(row) == ("Ann", GUEST_HASH, "", "", "")
        monkeypatch.undo()
        assert not store.verify_password(name, secrets.token_urlsafe(8))
        assert store.sip_ha1(name, store.sip_realm, "MD5") is None
        await ws.close()
    assert await wait_until(lambda: store.get_user(name) is None, 2.0)
