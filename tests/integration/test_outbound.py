"""Outbound calls from a scenario (``VoxEngine.call_sip``) to a phone played
by a Python UDP socket: cancelling a ringing call (RFC 3261 §9.1)."""

from __future__ import annotations

import logging
import socket

import pytest

from engine.runtime.dialout import DialPolicy
from engine.server import Engine
from engine.sip.auth import ClientAuthSession
from engine.sip.message import SipRequest
from engine.sip.uri import SipUri, parse_uri
from engine.transport.sip_endpoint import Peer

from .conftest import EngineFactory, PeerFactory, wait_for_log, wait_until
from .sip_peer import UdpPeer, request

RULES = """
rules:
  - {name: DialOut, pattern: "dial", scenarios: [dial_out]}
"""

DIAL_OUT = '''
"""On a MESSAGE to 'dial': call the SIP URI in its text; X-Mode 'on-ring'
hangs up on Ringing, 'soon' hangs up 50 ms after dialing."""
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine, set_timeout


def on_message(e):
    mode = e.headers.get("X-Mode", "")
    out = VoxEngine.call_sip(e.text, callerid="5550100")

    def hang_up(why):
        Logger.write(f"hanging up on {why}")
        out.hangup()

    def ended(ev):
        Logger.write(f"ended {ev.name} {ev.code}")
        VoxEngine.terminate()

    out.add_event_listener(CallEvents.Disconnected, ended)
    out.add_event_listener(CallEvents.Failed, ended)
    if mode == "on-ring":
        out.add_event_listener(CallEvents.Ringing, lambda ev: hang_up("ringing"))
    elif mode == "soon":
        set_timeout(lambda: hang_up("timer"), 50)


VoxEngine.add_event_listener(AppEvents.MessageReceived, on_message)
'''


async def dial(engine: Engine, peers: PeerFactory, phone: UdpPeer, mode: str) -> SipRequest:
    """Make the scenario call ``phone``; return the INVITE it receives."""
    trigger = await peers.udp(engine)
    body = f"sip:bob@127.0.0.1:{phone.local[1]}".encode()
    trigger.send(request("MESSAGE", f"sip:dial@127.0.0.1:{engine.ua.port}", local=trigger.local,
                         body=body, content_type="text/plain", headers=[("X-Mode", mode)]))
    assert (await trigger.expect()).status == 200
    return await phone.recv_request("INVITE")


def provisional(invite: SipRequest, status: int) -> bytes:
    resp = invite.create_response(status, to_tag=None if status == 100 else "bob1")
    return resp.to_bytes()


async def finish_cancel(engine: Engine, phone: UdpPeer, invite: SipRequest, cancel: SipRequest) -> None:
    """Answer the CANCEL 200 and the INVITE 487; the engine ACKs the 487
    with the INVITE's branch (RFC 3261 §17.1.1.3)."""
    server = phone.sources[-1]
    phone.send(cancel.create_response(200).to_bytes(), server)
    phone.send(invite.create_response(487, to_tag="bob1").to_bytes(), server)
    ack = await phone.recv_request("ACK")
    assert ack.top_via.branch == invite.top_via.branch
    assert ack.cseq.number == invite.cseq.number
    logs = await wait_for_log(engine, "ended Disconnected 487")
    assert "ended Disconnected 487" in logs


def check_cancel(cancel: SipRequest, invite: SipRequest) -> None:
    """RFC 3261 §9.1: one Via, the INVITE's top Via; same Request-URI,
    Call-ID, From, To and CSeq number."""
    assert cancel.headers.get_all("Via") == [invite.headers.get("Via")]
    assert cancel.uri_text == invite.uri_text
    assert cancel.call_id == invite.call_id
    assert cancel.headers.get("From") == invite.headers.get("From")
    assert cancel.headers.get("To") == invite.headers.get("To")
    assert cancel.cseq.number == invite.cseq.number and cancel.cseq.method == "CANCEL"


async def test_cancel_on_ringing_matches_the_invite(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """The scenario hangs up when the phone rings: the CANCEL carries the
    INVITE's Via (so the phone can match it), the phone's 487 is ACKed and
    the scenario sees Disconnected 487."""
    engine = await make_engine(RULES, {"dial_out": DIAL_OUT})
    phone = await peers.udp(engine)
    invite = await dial(engine, peers, phone, "on-ring")
    phone.send(provisional(invite, 180), phone.sources[-1])
    cancel = await phone.recv_request("CANCEL")
    check_cancel(cancel, invite)
    await finish_cancel(engine, phone, invite, cancel)
    assert await wait_until(lambda: not engine.ua.calls, 3.0)


async def test_hangup_before_any_response_cancels_once(make_engine: EngineFactory, peers: PeerFactory, caplog: pytest.LogCaptureFixture) -> None:
    """The scenario hangs up before the phone said anything: the CANCEL
    waits for a provisional response (RFC 3261 §9.1), leaves on the 100
    Trying, and is not sent again on the 180 that follows."""
    engine = await make_engine(RULES, {"dial_out": DIAL_OUT})
    caplog.set_level(logging.ERROR, logger="engine")
    phone = await peers.udp(engine)
    invite = await dial(engine, peers, phone, "soon")
    await wait_for_log(engine, "hanging up on timer")
    for raw in phone.drain():  # INVITE retransmissions only, no CANCEL yet
        assert raw.startswith(b"INVITE ")
    phone.send(provisional(invite, 100), phone.sources[-1])
    cancel = await phone.recv_request("CANCEL")
    check_cancel(cancel, invite)
    phone.send(provisional(invite, 180), phone.sources[-1])
    await phone.silence(0.3)
    await finish_cancel(engine, phone, invite, cancel)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_outbound_call_over_tcp(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A call to a ``transport=tcp`` URI: the engine connects to the phone,
    sends INVITE, ACK and (after the scenario hangs up on ringing) CANCEL
    over that one connection, with TCP in every Via."""
    engine = await make_engine(RULES, {"dial_out": DIAL_OUT})
    phone = await peers.tcp_listener()
    trigger = await peers.udp(engine)
    uri = f"sip:bob@127.0.0.1:{phone.local[1]};transport=tcp"
    trigger.send(request("MESSAGE", f"sip:dial@127.0.0.1:{engine.ua.port}", local=trigger.local,
                         body=uri.encode(), content_type="text/plain", headers=[("X-Mode", "on-ring")]))
    assert (await trigger.expect()).status == 200
    invite = await phone.recv_request("INVITE")
    assert invite.top_via.transport == "TCP"
    assert "transport=tcp" in (invite.headers.get("Contact") or "")
    phone.send(provisional(invite, 180))
    cancel = await phone.recv_request("CANCEL")
    check_cancel(cancel, invite)
    phone.send(cancel.create_response(200).to_bytes())
    phone.send(invite.create_response(487, to_tag="bob1").to_bytes())
    ack = await phone.recv_request("ACK")
    assert ack.top_via.branch == invite.top_via.branch
    logs = await wait_for_log(engine, "ended Disconnected 487")
    assert "ended Disconnected 487" in logs
    assert phone.connections == 1


async def test_unreachable_tcp_target_fails_at_once_with_503(make_engine: EngineFactory,
                                                           peers: PeerFactory) -> None:
    """A call to a TCP URI where nothing listens fails as soon as the
    connection is refused (RFC 3261 §18.4: a transport error is a 503,
    §8.1.3.1), not after Timer B's 32 s."""
    engine = await make_engine(RULES, {"dial_out": DIAL_OUT})
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens on it now
    trigger = await peers.udp(engine)
    uri = f"sip:bob@127.0.0.1:{port};transport=tcp"
    trigger.send(request("MESSAGE", f"sip:dial@127.0.0.1:{engine.ua.port}", local=trigger.local,
                         body=uri.encode(), content_type="text/plain"))
    assert (await trigger.expect()).status == 200
    logs = await wait_for_log(engine, "ended Failed 503", timeout=5.0)
    assert "ended Failed 503" in logs
    assert await wait_until(lambda: not engine.ua.calls and not engine.ua.endpoint._client_cb, 2.0)


@pytest.mark.parametrize("status", [404, 486, 503, 603])
async def test_outbound_final_error_fails_with_its_code(make_engine: EngineFactory, peers: PeerFactory,
                                                        status: int) -> None:
    """A 4xx/5xx/6xx to the engine's INVITE is ACKed (same branch) and the
    scenario's call ends in Failed with that code."""
    engine = await make_engine(RULES, {"dial_out": DIAL_OUT})
    phone = await peers.udp(engine)
    invite = await dial(engine, peers, phone, "")
    server = phone.sources[-1]
    phone.send(invite.create_response(status, to_tag="bob1").to_bytes(), server)
    ack = await phone.recv_request("ACK")
    assert ack.top_via.branch == invite.top_via.branch
    logs = await wait_for_log(engine, f"ended Failed {status}")
    assert f"ended Failed {status}" in logs


async def test_outbound_redirect_is_followed(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A 302 with a Contact sends the call on to that Contact (a new INVITE,
    same Call-ID, higher CSeq); the second phone answers 200, the engine
    ACKs it and the call connects; the phone's BYE ends it."""
    engine = await make_engine(RULES, {"dial_out": DIAL_OUT})
    first = await peers.udp(engine)
    second = await peers.udp(engine)
    invite = await dial(engine, peers, first, "")
    moved = invite.create_response(302, to_tag="moved1")
    moved.headers.add("Contact", f"<sip:carol@127.0.0.1:{second.local[1]}>")
    first.send(moved.to_bytes(), first.sources[-1])
    assert (await first.recv_request("ACK")).top_via.branch == invite.top_via.branch
    again = await second.recv_request("INVITE")
    assert again.uri_text == f"sip:carol@127.0.0.1:{second.local[1]}"
    assert again.call_id == invite.call_id and again.cseq.number > invite.cseq.number
    ok = again.create_response(200, to_tag="carol1")
    ok.headers.add("Contact", f"<sip:carol@127.0.0.1:{second.local[1]}>")
    ok.headers.add("Content-Type", "application/sdp")
    ok.body = (b"v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    server = second.sources[-1]
    second.send(ok.to_bytes(), server)
    ack = await second.recv_request("ACK")
    assert ack.cseq.number == again.cseq.number and ack.cseq.method == "ACK"
    assert ack.uri_text == f"sip:carol@127.0.0.1:{second.local[1]}"
    bye = request("BYE", f"sip:callbridge@127.0.0.1:{engine.ua.port}", local=second.local,
                  from_uri=str(again.to.uri), from_tag="carol1", to_uri=str(again.from_.uri),
                  to_tag=again.from_.tag, call_id=again.call_id, cseq=1)
    second.send(bye, server)
    logs = await wait_for_log(engine, "ended Disconnected 200")
    assert "ended Disconnected 200" in logs


# -- redirects and the trunk's credentials ---------------------------------------------

TRUNK_RULES = """
rules:
  - {name: Trunk, pattern: "dialout", scenarios: [dial_trunk]}
"""

CHALLENGE = 'Digest realm="carrier", nonce="abc123", algorithm=MD5, qop="auth"'


def free_udp_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def redirect(invite: SipRequest, contact: str) -> bytes:
    moved = invite.create_response(302, to_tag="moved1")
    moved.headers.add("Contact", f"<{contact}>")
    return moved.to_bytes()


def challenge(invite: SipRequest) -> bytes:
    resp = invite.create_response(401, to_tag="auth1")
    resp.headers.add("WWW-Authenticate", CHALLENGE)
    return resp.to_bytes()


async def trunk_engine(make_engine: EngineFactory, peers: PeerFactory) -> tuple[Engine, UdpPeer]:
    """An engine whose trunk (with credentials) is a scripted UDP peer."""
    port = free_udp_port()
    engine = await make_engine(TRUNK_RULES, trunk=f"sip:acct42:s3cret@127.0.0.1:{port}",
                               dial_policy=DialPolicy(allow=(r"[0-9]+",)))
    trunk = await peers.udp(engine, port=port)
    return engine, trunk


async def test_trunk_call_does_not_follow_a_redirect_off_the_trunk(
        make_engine: EngineFactory, peers: PeerFactory) -> None:
    """call_pstn: the trunk answers 302 to another host:port. The engine
    ACKs the 302 and fails the call with 302; nothing is sent to the named
    host (a redirect must not turn a trunk call into a call anywhere)."""
    engine, trunk = await trunk_engine(make_engine, peers)
    elsewhere = await peers.udp(engine)
    engine.runtime.start_session(engine.rules.match("dialout"), custom_data="5551234")
    invite = await trunk.recv_request("INVITE")
    trunk.send(redirect(invite, f"sip:5551234@127.0.0.1:{elsewhere.local[1]}"), trunk.sources[-1])
    assert (await trunk.recv_request("ACK")).top_via.branch == invite.top_via.branch
    logs = await wait_for_log(engine, "ended Failed 302")
    assert "ended Failed 302" in logs
    await elsewhere.silence(0.3)


async def test_trunk_call_follows_a_redirect_on_the_trunk_with_credentials(
        make_engine: EngineFactory, peers: PeerFactory) -> None:
    """call_pstn: a 302 to another number on the trunk's own host:port is
    followed, and the trunk's 401 to that INVITE is answered with the
    trunk's credentials (they belong to that host:port)."""
    engine, trunk = await trunk_engine(make_engine, peers)
    engine.runtime.start_session(engine.rules.match("dialout"), custom_data="5551234")
    invite = await trunk.recv_request("INVITE")
    trunk.send(redirect(invite, f"sip:5559999@127.0.0.1:{trunk.local[1]}"), trunk.sources[-1])
    again = await trunk.recv_request("INVITE")
    assert again.uri_text == f"sip:5559999@127.0.0.1:{trunk.local[1]}"
    trunk.send(challenge(again), trunk.sources[-1])
    authorized = await trunk.recv_request("INVITE")
    assert 'username="acct42"' in (authorized.headers.get("Authorization") or "")
    trunk.send(authorized.create_response(486, to_tag="busy1").to_bytes(), trunk.sources[-1])
    assert "ended Failed 486" in await wait_for_log(engine, "ended Failed 486")


async def test_credentials_never_follow_a_redirect_to_another_host(
        make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A call with credentials for its first host (call_sip with auth, as
    call_pstn makes): that host answers 302 to another host:port, which
    challenges with 401. The 401 is ACKed and the call fails with 401: no
    INVITE with an Authorization header ever reaches the other host."""
    engine = await make_engine(RULES, {"dial_out": DIAL_OUT})
    first = await peers.udp(engine)
    other = await peers.udp(engine)
    call = engine.ua.call_sip(f"sip:bob@127.0.0.1:{first.local[1]}",
                              auth=ClientAuthSession("acct42", "s3cret"))
    invite = await first.recv_request("INVITE")
    first.send(redirect(invite, f"sip:carol@127.0.0.1:{other.local[1]}"), first.sources[-1])
    moved = await other.recv_request("INVITE")
    assert moved.headers.get("Authorization") is None
    other.send(challenge(moved), other.sources[-1])
    assert (await other.recv_request("ACK")).cseq.number == moved.cseq.number
    assert await wait_until(lambda: call.state.ended, 3.0)
    assert call.end_code == 401
    for raw in other.drain() + first.drain():
        assert b"Authorization" not in raw


async def test_maddr_does_not_choose_where_a_request_goes(make_engine: EngineFactory) -> None:
    """A target URI with ``maddr`` (RFC 3261 §19.1.1, deprecated) is sent
    to its host part: maddr never names another destination."""
    engine = await make_engine(RULES, {"dial_out": DIAL_OUT})
    uri = parse_uri("sip:bob@127.0.0.1:5070;maddr=192.0.2.1")
    assert isinstance(uri, SipUri)
    assert await engine.ua.resolve(uri) == Peer("UDP", "127.0.0.1", 5070)
