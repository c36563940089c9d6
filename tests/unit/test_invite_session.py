"""The sans-IO INVITE session (engine.sip.invite_session) on virtual time:
alone (timer values, event lists) and in the lossy pair harness."""

from __future__ import annotations

from engine.sip.auth import ClientAuthSession, DigestServer
from engine.sip.headers import NameAddr
from engine.sip.invite_session import (
    AckTimedOut, Answered, CallCancelled, CallFailed, CancelReady, CredentialsWithheld, InviteReady,
    InviteSession, InviteSessionState, NoAnswer, ProvisionalReceived, Redirected, RedirectRefused,
    ReInviteReceived, ReInviteRefused, Retransmit2xx,
)
from engine.sip.message import new_call_id, new_tag
from engine.sip.offer_answer import NegotiationState
from engine.sip.transaction import Timers
from engine.sip.uri import SipUri, parse_uri

from sip_helpers import LayerPair, SessionUac, SessionUas, add_via, make_request, make_response

T = Timers()


def sdp(direction: str = "sendrecv", address: str = "192.0.2.9", version: int = 1) -> bytes:
    return (
        f"v=0\r\no=- 1 {version} IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
        f"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
    ).encode()


def uac(target: str = "sip:bob@192.0.2.2", *, auth: ClientAuthSession | None = None,
        scope: tuple[str, int] | None = None) -> InviteSession:
    uri = parse_uri(target)
    assert isinstance(uri, SipUri)
    return InviteSession.create_uac(
        T, False,
        from_=NameAddr(SipUri(host="192.0.2.1", user="alice"), None, {"tag": new_tag()}),
        to=NameAddr(uri), call_id=new_call_id(),
        headers=[("Contact", "<sip:alice@192.0.2.1>")], extra=[("X-Case", "1")], offer=sdp(),
        auth=auth, auth_target=(uri.host, uri.port or 5060) if auth else None, redirect_scope=scope,
    )


def started(session: InviteSession, now: float = 0.0, no_answer: float = 60.0) -> InviteReady:
    events = session.start(SipUri(host="192.0.2.2", user="bob"), now, no_answer)
    assert len(events) == 1 and isinstance(events[0], InviteReady)
    add_via(events[0].request)
    return events[0]


# -- UAS ------------------------------------------------------------------------


def answered_uas(now: float = 0.0, reliable: bool = False) -> InviteSession:
    invite = make_request(body=sdp())
    session = InviteSession.create_uas(invite, T, reliable)
    ok = invite.create_response(200, to_tag="uas")
    ok.body = sdp(address="192.0.2.2")
    session.send_answer(ok, invite, "<sip:bob@192.0.2.2>", now)
    return session


def test_uas_2xx_retransmission_doubles_to_t2_and_gives_up_at_64_t1_with_bye() -> None:
    """Check the 2xx goes again at T1, 2T1, 4T1, then every T2, never past
    64*T1, where the session gives up with a BYE carrying Reason 408."""
    session = answered_uas()
    fired: list[float] = []
    while True:
        when = session.get_timer()
        assert when is not None
        events = session.handle_timer(when)
        if isinstance(events[0], AckTimedOut):
            break
        assert isinstance(events[0], Retransmit2xx)
        fired.append(when)
    assert fired[:4] == [0.5, 1.5, 3.5, 7.5]
    assert all(b - a == 4.0 for a, b in zip(fired[3:], fired[4:]))
    assert when == 32.0 and fired[-1] < 32.0
    bye = events[0].bye
    assert bye is not None and bye.method == "BYE"
    assert bye.headers.get("Reason") == 'SIP;cause=408;text="ACK Timeout"'
    assert session.get_timer() is None and session.state is InviteSessionState.DISCONNECTED


def test_uas_2xx_retransmission_sends_the_bytes_of_the_2xx_written_once() -> None:
    """Check the 2xx the session retransmits is the response as sent,
    serialized when first needed and the same bytes object every time."""
    invite = make_request(body=sdp())
    session = InviteSession.create_uas(invite, T, False)
    ok = invite.create_response(200, to_tag="uas")
    ok.headers.add("Contact", "<sip:bob@192.0.2.2>")
    ok.body = sdp(address="192.0.2.2")
    sent = ok.to_bytes()
    session.send_answer(ok, invite, "<sip:bob@192.0.2.2>", 0.0)
    first = session.handle_timer(0.5)
    second = session.handle_timer(1.5)
    assert isinstance(first[0], Retransmit2xx) and isinstance(second[0], Retransmit2xx)
    assert first[0].data == sent and second[0].data is first[0].data
    assert session.awaiting_ack
    session.receive_ack(make_request("ACK", to_tag="uas"))
    assert not session.awaiting_ack and session.get_timer() is None


def test_uas_reliable_transport_only_waits_for_the_ack() -> None:
    """Check over TCP no 2xx is retransmitted: the one timer is the 64*T1 ACK wait."""
    session = answered_uas(reliable=True)
    assert session.get_timer() == 32.0
    assert isinstance(session.handle_timer(32.0)[0], AckTimedOut)


def test_uas_ack_confirms_and_stops_retransmission() -> None:
    """Check the ACK (same CSeq) confirms the session and disarms the timer;
    an ACK with another CSeq is ignored."""
    session = answered_uas()
    wrong = make_request("ACK", to_tag="uas", cseq=1)
    assert session.receive_ack(wrong) == []
    ack = make_request("ACK", to_tag="uas")
    events = session.receive_ack(ack)
    assert events and events[0].first  # type: ignore[attr-defined]
    assert session.state is InviteSessionState.CONFIRMED and session.get_timer() is None
    assert session.offer_answer.state is NegotiationState.DONE


def test_uas_cancel_before_answer_then_not_after() -> None:
    """Check CANCEL asks for 487 while the INVITE is unanswered, and not once a final response went."""
    invite = make_request(body=sdp())
    session = InviteSession.create_uas(invite, T, False)
    assert session.receive_cancel()
    session.send_final(invite.create_response(487, to_tag="uas"))
    assert not session.receive_cancel()
    assert session.offer_answer.state is NegotiationState.IDLE  # the offer was rolled back


def test_uas_glare_491_while_2xx_waits_for_ack() -> None:
    """Check a re-INVITE while our 2xx waits for its ACK gets 491 (RFC 3261 §14.2)."""
    session = answered_uas()
    reinvite = make_request(to_tag="uas", cseq=314160, body=sdp(version=2))
    events = session.receive_reinvite(reinvite)
    assert len(events) == 1 and isinstance(events[0], ReInviteRefused)
    assert events[0].response.status == 491


def test_uas_reinvite_hold_and_unhold() -> None:
    """Check re-INVITEs putting us on hold (sendonly, then 0.0.0.0) and back
    are reported with ``hold`` and go through offer/answer."""
    session = answered_uas()
    session.receive_ack(make_request("ACK", to_tag="uas"))
    cseq = 314160
    for body, hold in ((sdp("sendonly", version=2), True), (sdp("sendrecv", version=3), False),
                       (sdp(address="0.0.0.0", version=4), True)):
        reinvite = make_request(to_tag="uas", cseq=cseq, body=body)
        events = session.receive_reinvite(reinvite)
        assert isinstance(events[0], ReInviteReceived) and events[0].hold is hold
        assert session.offer_answer.state is NegotiationState.REMOTE_OFFER
        ok = reinvite.create_response(200)
        ok.body = sdp(address="192.0.2.2", version=cseq)
        session.send_reinvite_answer(reinvite, ok, 10.0)
        assert session.offer_answer.state is NegotiationState.DONE
        assert session.awaiting_ack
        session.receive_ack(make_request("ACK", to_tag="uas", cseq=cseq))
        cseq += 1
    assert session.remote_hold is True


# -- UAC ------------------------------------------------------------------------


def test_uac_no_answer_cancels_after_provisional() -> None:
    """Check the no-answer timer fires at start + timeout, with a CANCEL once a 1xx came."""
    session = uac()
    ready = started(session, now=5.0, no_answer=30.0)
    assert session.get_timer() == 35.0
    events = session.receive_response(make_response(ready.request, 180))
    assert isinstance(events[0], ProvisionalReceived)
    events = session.handle_timer(35.0)
    assert [type(e) for e in events] == [CancelReady, NoAnswer]
    assert events[0].request.method == "CANCEL"  # type: ignore[attr-defined]


def test_uac_cancel_waits_for_a_provisional_response() -> None:
    """Check a CANCEL wanted before any 1xx leaves with the first one (RFC 3261 §9.1), once."""
    session = uac()
    ready = started(session)
    assert session.cancel() == []
    events = session.receive_response(make_response(ready.request, 100, to_tag=None))
    assert [type(e) for e in events] == [CancelReady]
    assert session.receive_response(make_response(ready.request, 180)) == []
    assert [type(e) for e in session.receive_response(make_response(ready.request, 487))] == [CallCancelled]


def test_uac_cancel_race_with_200_acks_and_byes() -> None:
    """Check a 200 that crosses our CANCEL is acknowledged and ended with BYE."""
    session = uac()
    ready = started(session)
    session.receive_response(make_response(ready.request, 180))
    assert [type(e) for e in session.cancel()] == [CancelReady]
    events = session.receive_response(make_response(ready.request, 200, contact="<sip:bob@192.0.2.2>"))
    assert len(events) == 1 and isinstance(events[0], Answered)
    assert events[0].abandoned and events[0].bye is not None and events[0].bye.method == "BYE"
    assert events[0].ack.method == "ACK"


def test_uac_401_retried_once_per_challenge_with_credentials() -> None:
    """Check a 401 is answered with Authorization and a new CSeq, at most twice."""
    server = DigestServer("example", secret=b"k" * 32)
    session = uac(auth=ClientAuthSession("alice", "secret"))
    ready = started(session)
    cseqs = [ready.request.cseq.number]
    for _ in range(2):
        challenge = make_response(ready.request, 401, extra=[
            ("WWW-Authenticate", v) for v in server.make_challenges(0.0)])
        events = session.receive_response(challenge)
        assert len(events) == 1 and isinstance(events[0], InviteReady)
        ready = events[0]
        add_via(ready.request)
        assert ready.request.headers.get("Authorization", "").startswith("Digest ")
        assert ready.request.headers.get("X-Case") == "1"
        cseqs.append(ready.request.cseq.number)
    assert cseqs == [1, 2, 3]
    last = make_response(ready.request, 401, extra=[("WWW-Authenticate", v) for v in server.make_challenges(0.0)])
    events = session.receive_response(last)
    assert isinstance(events[-1], CallFailed) and events[-1].status == 401


def test_uac_3xx_followed_and_credentials_withheld_there() -> None:
    """Check a 302 leads to a new INVITE to its Contact, where a 401 is not answered."""
    session = uac(auth=ClientAuthSession("alice", "secret"))
    ready = started(session)
    events = session.receive_response(make_response(ready.request, 302, contact="<sip:carol@192.0.2.7>"))
    assert isinstance(events[0], Redirected)
    events = session.follow(events[0].target)
    assert isinstance(events[0], InviteReady)
    assert events[0].request.uri_text == "sip:carol@192.0.2.7" and events[0].request.cseq.number == 2
    add_via(events[0].request)
    server = DigestServer("example", secret=b"k" * 32)
    challenge = make_response(events[0].request, 401, extra=[
        ("WWW-Authenticate", v) for v in server.make_challenges(0.0)])
    assert [type(e) for e in session.receive_response(challenge)] == [CredentialsWithheld, CallFailed]


def test_uac_3xx_off_the_trunk_refused() -> None:
    """Check a call that must stay on one host:port fails on a 3xx elsewhere."""
    session = uac(scope=("192.0.2.2", 5060))
    ready = started(session)
    events = session.receive_response(make_response(ready.request, 302, contact="<sip:x@198.51.100.1>"))
    assert [type(e) for e in events] == [RedirectRefused, CallFailed]
    assert events[1].status == 302  # type: ignore[attr-defined]


# -- the pair -------------------------------------------------------------------


def _pair_call(loss: set[int], reliable: bool = False) -> tuple[LayerPair, SessionUac, SessionUas]:
    pair = LayerPair(loss=lambda k: k in loss, reliable=reliable)
    caller = SessionUac(pair, uac())
    callee = SessionUas(pair, body=sdp(address="192.0.2.2"))
    callee.send_bye_on_timeout = True
    pair.client_agent, pair.server_agent = caller, callee
    caller.perform(caller.session.start(SipUri(host="192.0.2.2", user="bob"), 0.0, 60.0), 0.0)
    pair.run()
    return pair, caller, callee


def test_pair_sessions_connect_despite_loss() -> None:
    """Check UAC and UAS sessions confirm over a link that loses the first
    INVITE and the first 200, and both layers empty out."""
    pair, caller, callee = _pair_call({1, 4})
    assert callee.acked and caller.session.state is InviteSessionState.CONFIRMED
    assert callee.session is not None and callee.session.state is InviteSessionState.CONFIRMED
    assert caller.session.offer_answer.state is NegotiationState.DONE
    lines = [line for _, _, line, _ in pair.trace]
    assert lines.count("SIP/2.0 200 OK") >= 2
    assert len(pair.client) == 0 and len(pair.server) == 0


def test_pair_lost_acks_end_the_call_with_bye() -> None:
    """Check that when every ACK is lost the UAS gives up at 64*T1 and sends BYE, which the UAC takes."""
    pair = LayerPair(drop=lambda line: line.startswith("ACK "))
    caller = SessionUac(pair, uac())
    callee = SessionUas(pair)
    callee.send_bye_on_timeout = True
    pair.client_agent, pair.server_agent = caller, callee
    caller.perform(caller.session.start(SipUri(host="192.0.2.2", user="bob"), 0.0, 60.0), 0.0)
    pair.run()
    assert not callee.acked
    assert any(isinstance(e, AckTimedOut) for e in callee.events)
    assert caller.bye_received
    assert callee.session is not None and callee.session.state is InviteSessionState.DISCONNECTED


def test_invite_session_is_slotted() -> None:
    """Check an INVITE session has no instance dict (it lives as long as its
    call; bench/memory.py measured 1.6 KB of dict each) and still takes
    every attribute its life sets: answered, confirmed by the ACK, ended."""
    session = answered_uas()
    assert not hasattr(session, "__dict__")
    assert isinstance(session.ack, type(None)) and session.dialog is not None
    outbound = uac()
    assert not hasattr(outbound, "__dict__")
    started(outbound)
