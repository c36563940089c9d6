"""Transaction machines and layer (RFC 3261 §17, RFC 6026), on virtual time.

No sockets and no sleeps: each test reads ``get_timer()``, calls
``handle_timer(get_timer())`` and looks at what was queued (aioquic's
``test_connection.py`` style).
"""

from __future__ import annotations

import random
from typing import Callable, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sip.dialog import Dialog, DialogState
from engine.sip.errors import LocalProtocolError
from engine.sip.message import SipRequest, SipResponse, new_branch, new_tag
from engine.sip.transaction import (
    CancelReceived,
    Event,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    Timers,
    TransactionInput,
    TransactionLayer,
    TransactionState,
    TransactionTerminated,
    TransactionTimedOut,
    TransportFailed,
    client_transaction_key,
    create_cancel,
    server_transaction_key,
)

from sip_helpers import (
    SessionUas,
    CLIENT_ADDR,
    SERVER_ADDR,
    LayerPair,
    add_via,
    make_request,
    make_response,
    parse,
)

S = TransactionState
I = TransactionInput  # noqa: E741
T = Timers()
ADDR = ("198.51.100.7", 5060)
AnyTransaction = Union[
    InviteClientTransaction,
    NonInviteClientTransaction,
    InviteServerTransaction,
    NonInviteServerTransaction,
]


def fire_all(tx: AnyTransaction) -> list[tuple[float, int, list[Event]]]:
    """Fire timers until none is left: ``(deadline, messages sent, events)``."""
    out = []
    while (deadline := tx.get_timer()) is not None:
        events = tx.handle_timer(deadline)
        out.append((deadline, len(tx.messages_to_send()), events))
    return out


def ict(reliable: bool = False, now: float = 0.0, **kw: object) -> InviteClientTransaction:
    return InviteClientTransaction(make_request("INVITE", **kw), ADDR, reliable, now)  # type: ignore[arg-type]


def nict(reliable: bool = False, now: float = 0.0) -> NonInviteClientTransaction:
    return NonInviteClientTransaction(make_request("OPTIONS"), ADDR, reliable, now)


def ist(reliable: bool = False, now: float = 0.0, timers: Timers = T) -> InviteServerTransaction:
    return InviteServerTransaction(make_request("INVITE"), ADDR, reliable, now, timers)


def nist(reliable: bool = False, now: float = 0.0) -> NonInviteServerTransaction:
    return NonInviteServerTransaction(make_request("BYE", to_tag="x"), ADDR, reliable, now)


# ===================================================================== ICT


class TestInviteClientTransaction:
    def test_sends_invite_on_creation(self) -> None:
        """Check the INVITE is queued once, serialized, to the given address."""
        tx = ict()
        [(data, addr)] = tx.messages_to_send()
        assert addr == ADDR
        assert data == tx.request.to_bytes()
        assert tx.state is S.CALLING
        assert tx.key == ("z9hG4bKabc123", "INVITE")

    def test_timer_a_doubles_without_cap_until_timer_b(self) -> None:
        """Check Timer A retransmits at T1, 2T1, 4T1... and Timer B times out at 64*T1."""
        tx = ict()
        first = tx.messages_to_send()[0][0]
        assert tx.get_timer() == 0.5
        retransmitted: list[bytes] = []
        deadlines = []
        while (deadline := tx.get_timer()) is not None:
            deadlines.append(deadline)
            events = tx.handle_timer(deadline)
            retransmitted += [data for data, _ in tx.messages_to_send()]
        # A: 0.5, 1.5 (+1), 3.5 (+2), 7.5 (+4), 15.5 (+8), 31.5 (+16); B: 32.
        assert deadlines == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 32.0]
        assert len(retransmitted) == 6
        assert all(data is first for data in retransmitted)  # serialized once
        assert events == [TransactionTimedOut(tx), TransactionTerminated(tx)]
        assert tx.state is S.TERMINATED

    def test_timer_a_beyond_t2(self) -> None:
        """Check Timer A is not capped at T2 (only E and G are)."""
        tx = InviteClientTransaction(make_request(), ADDR, False, 0.0, Timers(t1=1.0, t2=2.0))
        gaps = []
        last = 0.0
        while (deadline := tx.get_timer()) is not None and tx.state is S.CALLING:
            gaps.append(deadline - last)
            last = deadline
            tx.handle_timer(deadline)
        assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]

    def test_reliable_has_no_timer_a(self) -> None:
        """Check a reliable transport only runs Timer B."""
        tx = ict(reliable=True)
        tx.messages_to_send()
        assert tx.get_timer() == 32.0
        assert tx.handle_timer(31.9) == []
        events = tx.handle_timer(32.0)
        assert events == [TransactionTimedOut(tx), TransactionTerminated(tx)]
        assert tx.messages_to_send() == []

    def test_provisional_moves_to_proceeding_and_stops_timers(self) -> None:
        """Check a 1xx is passed up, stops retransmissions and Timer B (§17.1.1.2)."""
        tx = ict()
        ringing = make_response(tx.request, 180)
        assert tx.receive_response(ringing, 0.2) == [ResponseReceived(ringing, tx)]
        assert tx.state is S.PROCEEDING
        assert tx.get_timer() is None
        trying = make_response(tx.request, 183)
        assert tx.receive_response(trying, 0.3) == [ResponseReceived(trying, tx)]
        assert tx.state is S.PROCEEDING

    @pytest.mark.parametrize("state", ["calling", "proceeding"])
    def test_non_2xx_is_acked(self, state: str) -> None:
        """Check a 300-699 gets an ACK built per §17.1.1.3 and is passed up once."""
        tx = ict(extra=[("Route", "<sip:p1.example.com;lr>"), ("Route", "<sip:p2.example.com;lr>")])
        tx.messages_to_send()
        if state == "proceeding":
            tx.receive_response(make_response(tx.request, 180), 0.1)
        busy = make_response(tx.request, 486, to_tag="busy1")
        assert tx.receive_response(busy, 1.0) == [ResponseReceived(busy, tx)]
        assert tx.state is S.COMPLETED
        [(data, addr)] = tx.messages_to_send()
        assert addr == ADDR
        ack = parse(data)
        assert isinstance(ack, SipRequest)
        assert ack.method == "ACK"
        assert ack.uri_text == tx.request.uri_text
        assert [v.branch for v in ack.via] == ["z9hG4bKabc123"]
        assert ack.headers.get_all("Via") == tx.request.headers.get_all("Via")[:1]
        assert ack.call_id == tx.request.call_id
        assert ack.headers.get("From") == tx.request.headers.get("From")
        assert ack.to.tag == "busy1"
        assert (ack.cseq.number, ack.cseq.method) == (314159, "ACK")
        assert ack.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        assert ack.headers.get("Max-Forwards") == "70"
        assert ack.body == b""

    def test_retransmitted_non_2xx_is_acked_again(self) -> None:
        """Check each retransmission of the final response re-sends the same ACK and is not passed up."""
        tx = ict()
        tx.messages_to_send()
        busy = make_response(tx.request, 486)
        tx.receive_response(busy, 1.0)
        [(ack, _)] = tx.messages_to_send()
        for t in (1.5, 2.5):
            assert tx.receive_response(make_response(tx.request, 486), t) == []
            [(again, _)] = tx.messages_to_send()
            assert again is ack

    def test_completed_absorbs_other_responses(self) -> None:
        """Check 1xx and 2xx in COMPLETED are dropped silently."""
        tx = ict()
        tx.receive_response(make_response(tx.request, 603), 1.0)
        tx.messages_to_send()
        assert tx.receive_response(make_response(tx.request, 180), 1.1) == []
        assert tx.receive_response(make_response(tx.request, 200), 1.2) == []
        assert tx.messages_to_send() == []
        assert tx.state is S.COMPLETED

    @pytest.mark.parametrize(("reliable", "duration"), [(False, 32.0), (True, 0.0)])
    def test_timer_d(self, reliable: bool, duration: float) -> None:
        """Check Timer D is 32 s on UDP and zero on reliable transports."""
        tx = ict(reliable=reliable)
        tx.receive_response(make_response(tx.request, 404), 2.0)
        assert tx.get_timer() == 2.0 + duration
        assert tx.handle_timer(2.0 + duration) == [TransactionTerminated(tx)]
        assert tx.state is S.TERMINATED
        assert tx.get_timer() is None

    def test_2xx_moves_to_accepted_with_timer_m(self) -> None:
        """Check a 2xx is passed up without ACK, and Timer M is 64*T1 (RFC 6026 §8.4)."""
        tx = ict()
        tx.messages_to_send()
        ok = make_response(tx.request, 200)
        assert tx.receive_response(ok, 1.0) == [ResponseReceived(ok, tx)]
        assert tx.state is S.ACCEPTED
        assert tx.messages_to_send() == []  # the TU ACKs a 2xx
        assert tx.get_timer() == 33.0

    def test_accepted_hands_up_later_2xx(self) -> None:
        """Check retransmitted and forked 2xx in ACCEPTED reach the TU; others are absorbed."""
        tx = ict(reliable=True)
        tx.receive_response(make_response(tx.request, 200), 1.0)
        again = make_response(tx.request, 200)
        forked = make_response(tx.request, 200, to_tag="fork2")
        assert tx.receive_response(again, 2.0) == [ResponseReceived(again, tx)]
        assert tx.receive_response(forked, 2.5) == [ResponseReceived(forked, tx)]
        assert tx.receive_response(make_response(tx.request, 180), 3.0) == []
        assert tx.receive_response(make_response(tx.request, 500), 3.0) == []
        assert tx.get_timer() == 33.0  # not restarted
        assert tx.handle_timer(33.0) == [TransactionTerminated(tx)]

    def test_transport_error(self) -> None:
        """Check a transport error terminates and reports TransportFailed (§17.1.1.2)."""
        tx = ict()
        assert tx.handle_transport_error(0.1) == [TransportFailed(tx), TransactionTerminated(tx)]
        assert tx.get_timer() is None

    def test_input_after_termination_is_ignored(self) -> None:
        """Check a late response to a terminated transaction does nothing."""
        tx = ict(reliable=True)
        tx.handle_timer(32.0)
        assert tx.receive_response(make_response(tx.request, 200), 40.0) == []
        assert tx.state is S.TERMINATED

    def test_requires_branch(self) -> None:
        """Check a request without a branch is refused."""
        with pytest.raises(LocalProtocolError):
            InviteClientTransaction(make_request(branch=None), ADDR, False, 0.0)


# ==================================================================== NICT


class TestNonInviteClientTransaction:
    def test_timer_e_doubles_to_t2_until_timer_f(self) -> None:
        """Check Timer E at T1, doubling and capped at T2, and Timer F at 64*T1."""
        tx = nict()
        tx.messages_to_send()
        results = fire_all(tx)
        deadlines = [d for d, _, _ in results]
        assert deadlines == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
        assert [n for _, n, _ in results] == [1] * 10 + [0]
        assert results[-1][2] == [TransactionTimedOut(tx), TransactionTerminated(tx)]

    def test_proceeding_retransmits_every_t2(self) -> None:
        """Check that in PROCEEDING Timer E is reset to T2 (§17.1.2.2)."""
        tx = nict()
        tx.messages_to_send()
        tx.handle_timer(0.5)  # next E at 1.5
        tx.receive_response(make_response(tx.request, 100), 1.0)
        assert tx.state is S.PROCEEDING
        results = fire_all(tx)
        deadlines = [d for d, _, _ in results]
        assert deadlines[:4] == [1.5, 5.5, 9.5, 13.5]
        assert deadlines[-1] == 32.0
        assert results[-1][2] == [TransactionTimedOut(tx), TransactionTerminated(tx)]

    def test_reliable_has_no_timer_e(self) -> None:
        """Check a reliable transport only runs Timer F."""
        tx = nict(reliable=True)
        tx.messages_to_send()
        assert [(d, n) for d, n, _ in fire_all(tx)] == [(32.0, 0)]

    def test_provisional_passed_up(self) -> None:
        """Check 1xx in TRYING and PROCEEDING are passed to the TU."""
        tx = nict()
        r1 = make_response(tx.request, 100)
        r2 = make_response(tx.request, 183)
        assert tx.receive_response(r1, 0.1) == [ResponseReceived(r1, tx)]
        assert tx.receive_response(r2, 0.2) == [ResponseReceived(r2, tx)]

    @pytest.mark.parametrize("status", [200, 202, 404, 503])
    @pytest.mark.parametrize(("reliable", "duration"), [(False, 5.0), (True, 0.0)])
    def test_final_then_timer_k(self, status: int, reliable: bool, duration: float) -> None:
        """Check a final response is passed up once, then absorbed until Timer K (T4, 0 reliable)."""
        tx = nict(reliable=reliable)
        tx.messages_to_send()
        final = make_response(tx.request, status)
        assert tx.receive_response(final, 1.0) == [ResponseReceived(final, tx)]
        assert tx.state is S.COMPLETED
        assert tx.get_timer() == 1.0 + duration
        assert tx.receive_response(make_response(tx.request, status), 1.0) == []
        assert tx.receive_response(make_response(tx.request, 180), 1.0) == []
        assert tx.messages_to_send() == []
        assert tx.handle_timer(1.0 + duration) == [TransactionTerminated(tx)]

    def test_final_in_proceeding(self) -> None:
        """Check PROCEEDING -> COMPLETED on a final response and Timer E stops."""
        tx = nict()
        tx.receive_response(make_response(tx.request, 100), 0.1)
        tx.receive_response(make_response(tx.request, 200), 0.3)
        assert tx.state is S.COMPLETED
        assert tx.get_timer() == 5.3

    def test_timeout_wins_a_tie_with_retransmission(self) -> None:
        """Check Timer E due at the same instant as Timer F does not fire (the timeout goes first)."""
        tx = NonInviteClientTransaction(make_request("OPTIONS"), ADDR, False, 0.0, Timers(t1=1.0, t2=1.0))
        tx.messages_to_send()
        for second in range(1, 64):
            tx.handle_timer(float(second))
        assert tx._deadlines == {I.TIMER_E: 64.0, I.TIMER_F: 64.0}
        assert len(tx.messages_to_send()) == 63
        assert tx.handle_timer(64.0) == [TransactionTimedOut(tx), TransactionTerminated(tx)]
        assert tx.messages_to_send() == []

    def test_arm_replaces_an_armed_timer_and_adds_a_new_one(self) -> None:
        """Check arming a timer already armed (a re-arm) replaces its
        deadline, and arming one not armed adds it, the others kept."""
        tx = nict()
        assert tx._armed == (I.TIMER_E, 0.5, I.TIMER_F, 32.0)
        tx._arm(I.TIMER_E, 1.0, 0.5)
        assert tx._armed == (I.TIMER_F, 32.0, I.TIMER_E, 1.5)
        tx._arm(I.TIMER_K, 5.0, 0.5)
        assert tx._deadlines == {I.TIMER_E: 1.5, I.TIMER_F: 32.0, I.TIMER_K: 5.5}

    def test_transport_error(self) -> None:
        """Check a transport error terminates the transaction."""
        tx = nict()
        assert tx.handle_transport_error(0.0) == [TransportFailed(tx), TransactionTerminated(tx)]


# ===================================================================== IST


class TestInviteServerTransaction:
    def test_sends_100_trying_after_200ms(self) -> None:
        """Check the IST sends 100 Trying when the TU is silent for 200 ms (§17.2.1)."""
        tx = ist()
        assert tx.state is S.PROCEEDING
        assert tx.messages_to_send() == []
        assert tx.get_timer() == 0.2
        assert tx.handle_timer(0.2) == []
        [(data, addr)] = tx.messages_to_send()
        trying = parse(data)
        assert isinstance(trying, SipResponse)
        assert trying.status == 100
        assert trying.to.tag is None
        assert addr == ADDR
        assert tx.get_timer() is None

    def test_no_100_when_tu_answers_first(self) -> None:
        """Check a provisional response from the TU cancels the 100 Trying timer."""
        tx = ist()
        ringing = make_response(tx.request, 180)
        tx.send_response(ringing, 0.05)
        assert len(tx.messages_to_send()) == 1
        assert tx.get_timer() is None
        assert tx.last_response is ringing

    def test_trying_disabled(self) -> None:
        """Check ``Timers(trying=None)`` never sends 100 by itself."""
        tx = ist(timers=Timers(trying=None))
        assert tx.get_timer() is None

    def test_retransmission_before_any_response_gets_100(self) -> None:
        """Check an INVITE retransmission in PROCEEDING with nothing sent yet gets 100 at once."""
        tx = ist()
        tx.receive_request(make_request(), 0.1)
        [(data, _)] = tx.messages_to_send()
        assert parse(data).start_line() == "SIP/2.0 100 Trying"
        assert tx.get_timer() is None

    def test_retransmission_resends_last_provisional(self) -> None:
        """Check an INVITE retransmission in PROCEEDING re-sends the last 1xx."""
        tx = ist()
        tx.send_response(make_response(tx.request, 180), 0.0)
        [(ringing, _)] = tx.messages_to_send()
        assert tx.receive_request(make_request(), 0.5) == []
        [(again, _)] = tx.messages_to_send()
        assert again is ringing

    def test_non_2xx_retransmitted_by_timer_g_until_timer_h(self) -> None:
        """Check Timer G (T1 doubling to T2) and Timer H (64*T1) with no ACK."""
        tx = ist()
        busy = make_response(tx.request, 486)
        assert tx.send_response(busy, 0.0) == []
        assert tx.state is S.COMPLETED
        [(first, _)] = tx.messages_to_send()
        results = fire_all(tx)
        assert [d for d, _, _ in results] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
        assert [n for _, n, _ in results] == [1] * 10 + [0]
        assert results[-1][2] == [TransactionTimedOut(tx), TransactionTerminated(tx)]

    def test_reliable_non_2xx_has_no_timer_g(self) -> None:
        """Check reliable transports skip G but keep H."""
        tx = ist(reliable=True)
        tx.send_response(make_response(tx.request, 486), 0.0)
        tx.messages_to_send()
        assert [(d, n) for d, n, _ in fire_all(tx)] == [(32.0, 0)]

    def test_retransmission_in_completed_resends_final(self) -> None:
        """Check an INVITE retransmission in COMPLETED re-sends the final response."""
        tx = ist()
        tx.send_response(make_response(tx.request, 486), 0.0)
        [(busy, _)] = tx.messages_to_send()
        assert tx.receive_request(make_request(), 0.3) == []
        [(again, _)] = tx.messages_to_send()
        assert again is busy

    @pytest.mark.parametrize(("reliable", "duration"), [(False, 5.0), (True, 0.0)])
    def test_ack_confirms_then_timer_i(self, reliable: bool, duration: float) -> None:
        """Check ACK in COMPLETED -> CONFIRMED (G and H stop), absorbs, then Timer I ends it."""
        tx = ist(reliable=reliable)
        busy = make_response(tx.request, 486)
        tx.send_response(busy, 0.0)
        tx.messages_to_send()
        ack = make_request("ACK", to_tag="a6c85cf", contact=None)
        assert tx.receive_request(ack, 1.0) == []
        assert tx.state is S.CONFIRMED
        assert tx.get_timer() == 1.0 + duration
        assert tx.receive_request(ack, 1.0) == []
        assert tx.receive_request(make_request(), 1.0) == []
        assert tx.messages_to_send() == []
        assert tx.handle_timer(1.0 + duration) == [TransactionTerminated(tx)]

    def test_2xx_moves_to_accepted_with_timer_l(self) -> None:
        """Check a 2xx -> ACCEPTED, Timer L = 64*T1, INVITE retransmissions absorbed (RFC 6026 §7.1)."""
        tx = ist()
        ok = make_response(tx.request, 200, contact="<sip:bob@192.0.2.4>")
        assert tx.send_response(ok, 0.1) == []
        assert tx.state is S.ACCEPTED
        [(data, _)] = tx.messages_to_send()
        assert tx.get_timer() == pytest.approx(32.1)
        assert tx.receive_request(make_request(), 0.6) == []
        assert tx.messages_to_send() == []  # absorbed, not re-sent by the transaction

    def test_accepted_passes_tu_2xx_retransmissions(self) -> None:
        """Check 2xx retransmissions from the TU go out in ACCEPTED, with the
        same bytes (written again: an ACCEPTED transaction keeps no 2xx bytes)."""
        tx = ist()
        ok = make_response(tx.request, 200)
        tx.send_response(ok, 0.0)
        [(data, _)] = tx.messages_to_send()
        tx.send_response(ok, 0.5)
        [(again, _)] = tx.messages_to_send()
        assert again == data == ok.to_bytes()
        assert tx.last_response is ok and tx._last_bytes is None

    def test_accepted_hands_matching_ack_to_tu(self) -> None:
        """Check an ACK matching the IST in ACCEPTED goes up as RequestReceived(transaction=None)."""
        tx = ist()
        tx.send_response(make_response(tx.request, 200), 0.0)
        ack = make_request("ACK", to_tag="a6c85cf", contact=None)
        assert tx.receive_request(ack, 0.1) == [RequestReceived(ack, ADDR, None)]
        assert tx.state is S.ACCEPTED
        assert tx.handle_timer(32.0) == [TransactionTerminated(tx)]

    @pytest.mark.parametrize("status", [100, 180, 200, 486])
    def test_no_response_after_final_non_2xx(self, status: int) -> None:
        """Check the TU cannot send anything after a 300-699."""
        tx = ist()
        tx.send_response(make_response(tx.request, 486), 0.0)
        with pytest.raises(LocalProtocolError):
            tx.send_response(make_response(tx.request, status), 0.1)

    @pytest.mark.parametrize("status", [180, 486])
    def test_only_2xx_after_2xx(self, status: int) -> None:
        """Check only 2xx retransmissions are allowed in ACCEPTED."""
        tx = ist()
        tx.send_response(make_response(tx.request, 200), 0.0)
        with pytest.raises(LocalProtocolError, match="ACCEPTED"):
            tx.send_response(make_response(tx.request, status), 0.1)

    def test_ack_before_final_is_ignored(self) -> None:
        """Check a stray ACK in PROCEEDING changes nothing."""
        tx = ist()
        assert tx.receive_request(make_request("ACK", contact=None), 0.1) == []
        assert tx.state is S.PROCEEDING

    def test_foreign_method_refused(self) -> None:
        """Check feeding a BYE to an INVITE transaction is our misuse."""
        with pytest.raises(LocalProtocolError):
            ist().receive_request(make_request("BYE"), 0.0)

    @pytest.mark.parametrize("setup", ["proceeding", "completed", "confirmed", "accepted"])
    def test_transport_error(self, setup: str) -> None:
        """Check a transport error terminates in every live state."""
        tx = ist()
        if setup in ("completed", "confirmed"):
            tx.send_response(make_response(tx.request, 486), 0.0)
        if setup == "confirmed":
            tx.receive_request(make_request("ACK", contact=None), 0.1)
        if setup == "accepted":
            tx.send_response(make_response(tx.request, 200), 0.0)
        assert tx.handle_transport_error(0.2) == [TransportFailed(tx), TransactionTerminated(tx)]
        assert tx.get_timer() is None


# ==================================================================== NIST


class TestNonInviteServerTransaction:
    def test_trying_absorbs_retransmissions(self) -> None:
        """Check retransmissions in TRYING are discarded (§17.2.2) and no timer runs."""
        tx = nist()
        assert tx.state is S.TRYING
        assert tx.get_timer() is None
        assert tx.receive_request(make_request("BYE", to_tag="x"), 0.5) == []
        assert tx.messages_to_send() == []

    def test_proceeding_resends_provisional(self) -> None:
        """Check 1xx -> PROCEEDING, where retransmissions get the last 1xx again."""
        tx = nist()
        tx.send_response(make_response(tx.request, 100), 0.0)
        assert tx.state is S.PROCEEDING
        [(trying, _)] = tx.messages_to_send()
        tx.send_response(make_response(tx.request, 180), 0.1)
        [(ringing, _)] = tx.messages_to_send()
        tx.receive_request(make_request("BYE", to_tag="x"), 0.5)
        [(again, _)] = tx.messages_to_send()
        assert again is ringing and again is not trying

    @pytest.mark.parametrize("status", [200, 481])
    @pytest.mark.parametrize(("reliable", "duration"), [(False, 32.0), (True, 0.0)])
    @pytest.mark.parametrize("via_proceeding", [False, True])
    def test_final_then_timer_j(
        self, status: int, reliable: bool, duration: float, via_proceeding: bool
    ) -> None:
        """Check final -> COMPLETED, retransmissions re-send it, Timer J (64*T1, 0 reliable)."""
        tx = nist(reliable=reliable)
        if via_proceeding:
            tx.send_response(make_response(tx.request, 100), 0.0)
        tx.send_response(make_response(tx.request, status), 1.0)
        assert tx.state is S.COMPLETED
        final = tx.messages_to_send()[-1][0]
        assert tx.get_timer() == 1.0 + duration
        tx.receive_request(make_request("BYE", to_tag="x"), 1.0)
        [(again, _)] = tx.messages_to_send()
        assert again is final
        assert tx.handle_timer(1.0 + duration) == [TransactionTerminated(tx)]

    def test_no_response_after_final(self) -> None:
        """Check sending after the final response is our misuse."""
        tx = nist()
        tx.send_response(make_response(tx.request, 200), 0.0)
        for status in (100, 200, 500):
            with pytest.raises(LocalProtocolError, match="COMPLETED"):
                tx.send_response(make_response(tx.request, status), 0.1)


# ======================================================== transition tables

MACHINES = [
    InviteClientTransaction,
    NonInviteClientTransaction,
    InviteServerTransaction,
    NonInviteServerTransaction,
]
PEER_INPUTS = {
    InviteClientTransaction: [I.RECV_1XX, I.RECV_2XX, I.RECV_300_699],
    NonInviteClientTransaction: [I.RECV_1XX, I.RECV_2XX, I.RECV_300_699],
    InviteServerTransaction: [I.RECV_REQUEST, I.RECV_ACK],
    NonInviteServerTransaction: [I.RECV_REQUEST],
}


@pytest.mark.parametrize("machine", MACHINES)
def test_table_covers_every_peer_input_and_timer(machine: type[AnyTransaction]) -> None:
    """Check every live state has a row for every peer input, for each timer it runs, and for transport errors."""
    table = machine._transitions
    states = machine._state_timers
    for state, timers in states.items():
        if state is S.TERMINATED:
            assert not timers
            assert not [key for key in table if key[0] is state]
            continue
        for event in PEER_INPUTS[machine] + [I.TRANSPORT_ERROR]:
            assert (state, event) in table, (state, event)
        for timer in timers:
            assert (state, timer) in table, (state, timer)
    for (state, _), (_, next_state) in table.items():
        assert state in states and next_state in states


# ============================================================== properties

RANK = {
    InviteClientTransaction: {S.CALLING: 0, S.PROCEEDING: 1, S.COMPLETED: 2, S.ACCEPTED: 2, S.TERMINATED: 3},
    NonInviteClientTransaction: {S.TRYING: 0, S.PROCEEDING: 1, S.COMPLETED: 2, S.TERMINATED: 3},
    InviteServerTransaction: {
        S.PROCEEDING: 0, S.COMPLETED: 1, S.ACCEPTED: 1, S.CONFIRMED: 2, S.TERMINATED: 3
    },
    NonInviteServerTransaction: {S.TRYING: 0, S.PROCEEDING: 1, S.COMPLETED: 2, S.TERMINATED: 3},
}
STATUSES = st.sampled_from([100, 180, 183, 200, 202, 302, 404, 408, 486, 487, 500, 603])
CLIENT_STEPS = st.one_of(
    st.tuples(st.just("response"), STATUSES),
    st.tuples(st.just("timer"), st.just(0)),
    st.tuples(st.just("wait"), st.integers(1, 40)),
    st.tuples(st.just("error"), st.just(0)),
)
SERVER_STEPS = st.one_of(
    st.tuples(st.just("send"), STATUSES),
    st.tuples(st.just("retransmit"), st.just(0)),
    st.tuples(st.just("ack"), st.just(0)),
    st.tuples(st.just("timer"), st.just(0)),
    st.tuples(st.just("wait"), st.integers(1, 40)),
    st.tuples(st.just("error"), st.just(0)),
)


def _input_for_send(status: int) -> TransactionInput:
    return I.SEND_1XX if status < 200 else I.SEND_2XX if status < 300 else I.SEND_300_699


def _check_run(
    tx: AnyTransaction, steps: list[tuple[str, int]], apply: Callable[[str, int, float], list[Event]]
) -> None:
    machine = type(tx)
    edges = {(s, ns) for (s, _), (_, ns) in machine._transitions.items()}
    now = 0.0
    terminated_events = 0
    for kind, arg in steps:
        before = tx.state
        if kind == "timer":
            deadline = tx.get_timer()
            if deadline is None:
                continue
            now = deadline
            events = tx.handle_timer(now)
        elif kind == "wait":
            now += arg / 10
            events = tx.handle_timer(now)
        else:
            try:
                events = apply(kind, arg, now)
            except LocalProtocolError:
                # Documented: only a send the table does not allow.
                assert kind == "send"
                assert (before, _input_for_send(arg)) not in machine._transitions
                continue
        after = tx.state
        assert after is before or (before, after) in edges
        assert RANK[machine][after] >= RANK[machine][before]  # states only move forward
        assert set(tx._deadlines) <= machine._state_timers[after]
        deadline = tx.get_timer()
        assert deadline is None or deadline >= now
        terminated_events += sum(isinstance(e, TransactionTerminated) for e in events)
        if after is S.TERMINATED:
            assert deadline is None
        for event in events:
            if isinstance(event, ResponseReceived):
                assert event.transaction is tx
    assert terminated_events == (1 if tx.state is S.TERMINATED else 0)


@pytest.mark.parametrize("machine", [InviteClientTransaction, NonInviteClientTransaction])
@pytest.mark.parametrize("reliable", [False, True])
@settings(max_examples=150, deadline=None)
@given(steps=st.lists(CLIENT_STEPS, max_size=30))
def test_client_machines_random_inputs(
    machine: type[InviteClientTransaction] | type[NonInviteClientTransaction],
    reliable: bool,
    steps: list[tuple[str, int]],
) -> None:
    """Check random responses, timers and errors never raise and states only move forward."""
    method = "INVITE" if machine is InviteClientTransaction else "OPTIONS"
    tx = machine(make_request(method), ADDR, reliable, 0.0)

    def apply(kind: str, arg: int, now: float) -> list[Event]:
        if kind == "response":
            return tx.receive_response(make_response(tx.request, arg), now)
        return tx.handle_transport_error(now)

    _check_run(tx, steps, apply)


@pytest.mark.parametrize("machine", [InviteServerTransaction, NonInviteServerTransaction])
@pytest.mark.parametrize("reliable", [False, True])
@settings(max_examples=150, deadline=None)
@given(steps=st.lists(SERVER_STEPS, max_size=30))
def test_server_machines_random_inputs(
    machine: type[InviteServerTransaction] | type[NonInviteServerTransaction],
    reliable: bool,
    steps: list[tuple[str, int]],
) -> None:
    """Check random sends, retransmissions, ACKs and timers: only refused sends raise, states only move forward."""
    method = "INVITE" if machine is InviteServerTransaction else "OPTIONS"
    request = make_request(method)
    tx = machine(request, ADDR, reliable, 0.0)
    ack = make_request("ACK", contact=None, to_tag="a6c85cf")

    def apply(kind: str, arg: int, now: float) -> list[Event]:
        if kind == "send":
            return tx.send_response(make_response(request, arg), now)
        if kind == "retransmit":
            return tx.receive_request(request, now)
        if kind == "ack":
            if machine is NonInviteServerTransaction:
                return []
            return tx.receive_request(ack, now)
        return tx.handle_transport_error(now)

    _check_run(tx, steps, apply)


# =================================================================== layer


def _layer_invite(layer: TransactionLayer, now: float = 0.0, **kw: object) -> tuple[SipRequest, InviteServerTransaction]:
    request = make_request("INVITE", **kw)  # type: ignore[arg-type]
    [event] = layer.receive(request, ADDR, False, now)
    assert isinstance(event, RequestReceived)
    assert isinstance(event.transaction, InviteServerTransaction)
    return request, event.transaction


class TestLayerServer:
    def test_new_request_creates_server_transaction(self) -> None:
        """Check a new request produces RequestReceived with a new server transaction."""
        layer = TransactionLayer()
        request, tx = _layer_invite(layer)
        assert tx.request is request
        assert tx.addr == ADDR
        assert len(layer) == 1
        assert tx.key == server_transaction_key(request)
        assert tx.key == ("z9hG4bKabc123", "pc33.atlanta.example.com", 5060, "INVITE")

    def test_retransmission_never_reported_again(self) -> None:
        """Check a retransmitted request is absorbed by its transaction and re-answered."""
        layer = TransactionLayer()
        _, tx = _layer_invite(layer)
        layer.send_response(tx, make_response(tx.request, 180), 0.0)
        [(ringing, addr)] = layer.messages_to_send()
        assert addr == ADDR
        assert layer.receive(make_request(), ("203.0.113.9", 1), False, 0.5) == []
        assert layer.messages_to_send() == [(ringing, ADDR)]
        assert len(layer) == 1

    def test_non_invite_retransmission(self) -> None:
        """Check a non-INVITE retransmission after the final response gets it again."""
        layer = TransactionLayer()
        [event] = layer.receive(make_request("OPTIONS"), ADDR, False, 0.0)
        assert isinstance(event, RequestReceived) and event.transaction is not None
        layer.send_response(event.transaction, make_response(event.request, 200), 0.0)
        [(ok, _)] = layer.messages_to_send()
        assert layer.receive(make_request("OPTIONS"), ADDR, False, 1.0) == []
        assert layer.messages_to_send() == [(ok, ADDR)]

    def test_sent_by_and_method_are_part_of_the_key(self) -> None:
        """Check the same branch from another sent-by, or with another method, is a new transaction (§17.2.3)."""
        layer = TransactionLayer()
        _layer_invite(layer)
        [e1] = layer.receive(make_request(via_host="other.example.com"), ADDR, False, 0.0)
        [e2] = layer.receive(make_request(via_port=5070), ADDR, False, 0.0)
        [e3] = layer.receive(make_request("OPTIONS"), ADDR, False, 0.0)
        assert all(isinstance(e, RequestReceived) for e in (e1, e2, e3))
        assert len(layer) == 4

    def test_sent_by_host_is_case_insensitive(self) -> None:
        """Check hosts compare without case in the key."""
        layer = TransactionLayer()
        _layer_invite(layer)
        assert layer.receive(make_request(via_host="PC33.atlanta.example.com"), ADDR, False, 0.1) == []

    def test_ack_for_non_2xx_matches_invite(self) -> None:
        """Check the ACK for a 486 (same branch) confirms the IST and is not reported."""
        layer = TransactionLayer()
        _, tx = _layer_invite(layer)
        layer.send_response(tx, make_response(tx.request, 486), 0.0)
        ack = make_request("ACK", to_tag="a6c85cf", contact=None)
        assert layer.receive(ack, ADDR, False, 0.1) == []
        assert tx.state is S.CONFIRMED

    def test_ack_for_2xx_goes_to_tu(self) -> None:
        """Check an ACK with a new branch (the ACK to a 2xx) comes up with transaction None."""
        layer = TransactionLayer()
        _, tx = _layer_invite(layer)
        layer.send_response(tx, make_response(tx.request, 200), 0.0)
        ack = make_request("ACK", branch="z9hG4bKnewack", to_tag="a6c85cf", contact=None)
        assert layer.receive(ack, ADDR, False, 0.1) == [RequestReceived(ack, ADDR, None)]
        assert len(layer) == 1  # no transaction for an ACK

    def test_ack_reusing_invite_branch_after_2xx_goes_to_tu(self) -> None:
        """Check an ACK to a 2xx that reuses the INVITE branch still reaches the TU."""
        layer = TransactionLayer()
        _, tx = _layer_invite(layer)
        layer.send_response(tx, make_response(tx.request, 200), 0.0)
        ack = make_request("ACK", to_tag="a6c85cf", contact=None)
        assert layer.receive(ack, ADDR, False, 0.1) == [RequestReceived(ack, ADDR, None)]

    def test_cancel_matches_invite(self) -> None:
        """Check CANCEL gets its own NIST and names the IST it cancels (§9.2)."""
        layer = TransactionLayer()
        invite, ist_tx = _layer_invite(layer)
        cancel = create_cancel(invite)
        [event] = layer.receive(parse(cancel.to_bytes()), ADDR, False, 0.5)
        assert isinstance(event, CancelReceived)
        assert event.invite_transaction is ist_tx
        assert isinstance(event.transaction, NonInviteServerTransaction)
        assert len(layer) == 2
        # The TU: 200 to the CANCEL, 487 to the INVITE.
        layer.send_response(event.transaction, make_response(event.request, 200), 0.5)
        layer.send_response(ist_tx, make_response(invite, 487), 0.5)
        assert len(layer.messages_to_send()) == 2
        # A retransmitted CANCEL is answered by its transaction.
        assert layer.receive(parse(cancel.to_bytes()), ADDR, False, 1.0) == []
        assert len(layer.messages_to_send()) == 1

    def test_cancel_without_invite(self) -> None:
        """Check a CANCEL matching nothing reports invite_transaction None (the UA answers 481)."""
        layer = TransactionLayer()
        cancel = create_cancel(make_request(branch="z9hG4bKnothing"))
        [event] = layer.receive(cancel, ADDR, False, 0.0)
        assert isinstance(event, CancelReceived)
        assert event.invite_transaction is None

    def test_cancel_after_final_still_matches_while_alive(self) -> None:
        """Check a CANCEL after the final response still finds the IST (the TU sees its state)."""
        layer = TransactionLayer()
        invite, ist_tx = _layer_invite(layer)
        layer.send_response(ist_tx, make_response(invite, 200), 0.0)
        [event] = layer.receive(create_cancel(invite), ADDR, False, 0.1)
        assert isinstance(event, CancelReceived)
        assert event.invite_transaction is ist_tx
        assert event.invite_transaction.state is S.ACCEPTED


class TestLayerRfc2543:
    """§17.2.3 matching for branches without the z9hG4bK cookie."""

    @pytest.mark.parametrize("branch", [None, "1234abcd"])
    def test_retransmission_matches(self, branch: str | None) -> None:
        """Check an RFC 2543 INVITE retransmission matches by Request-URI, tags, Call-ID, CSeq and Via."""
        layer = TransactionLayer()
        _layer_invite(layer, branch=branch)
        assert layer.receive(make_request(branch=branch), ADDR, False, 0.5) == []
        assert len(layer) == 1
        # Any differing field makes it a new request.
        for changes in (
            {"cseq": 314160},
            {"call_id": "other"},
            {"from_tag": "x"},
            {"uri": "sip:carol@biloxi.example.com"},
            {"via_host": "elsewhere.example.com"},
        ):
            events = layer.receive(make_request(branch=branch, **changes), ADDR, False, 0.5)
            assert isinstance(events[0], RequestReceived) and events[0].transaction is not None
        assert len(layer) == 6

    def test_ack_matches_by_response_to_tag(self) -> None:
        """Check an RFC 2543 ACK matches only with the To tag of the final response."""
        layer = TransactionLayer()
        _, tx = _layer_invite(layer, branch=None)
        layer.send_response(tx, make_response(tx.request, 486, to_tag="t486"), 0.0)
        wrong = make_request("ACK", branch=None, to_tag="other", contact=None)
        assert layer.receive(wrong, ADDR, False, 0.1) == [RequestReceived(wrong, ADDR, None)]
        state_before = tx.state
        assert state_before is S.COMPLETED
        right = make_request("ACK", branch=None, to_tag="t486", contact=None)
        assert layer.receive(right, ADDR, False, 0.2) == []
        assert tx.state is S.CONFIRMED

    def test_ack_to_2xx_goes_to_tu(self) -> None:
        """Check an RFC 2543 ACK for a 2xx matching the IST in ACCEPTED reaches the TU."""
        layer = TransactionLayer()
        _, tx = _layer_invite(layer, branch=None)
        layer.send_response(tx, make_response(tx.request, 200, to_tag="t200"), 0.0)
        ack = make_request("ACK", branch=None, to_tag="t200", contact=None)
        assert layer.receive(ack, ADDR, False, 0.1) == [RequestReceived(ack, ADDR, None)]

    def test_cancel_matches(self) -> None:
        """Check an RFC 2543 CANCEL finds its INVITE."""
        layer = TransactionLayer()
        invite, tx = _layer_invite(layer, branch=None)
        [event] = layer.receive(create_cancel(invite), ADDR, False, 0.1)
        assert isinstance(event, CancelReceived)
        assert event.invite_transaction is tx

    def test_invites_differing_only_in_to_tag(self) -> None:
        """Check two RFC 2543 INVITEs differing only in To tag are two transactions, and both clean up."""
        layer = TransactionLayer()
        _, first = _layer_invite(layer, branch=None)
        _, second = _layer_invite(layer, branch=None, to_tag="re")
        assert first is not second
        layer.send_response(first, make_response(first.request, 486), 0.0)
        layer.send_response(second, make_response(second.request, 486, to_tag="re"), 0.0)
        while (deadline := layer.get_timer()) is not None:
            layer.handle_timer(deadline)
        assert len(layer) == 0
        assert layer._ack_2543 == {}

    def test_cleanup(self) -> None:
        """Check RFC 2543 transactions leave both indexes."""
        layer = TransactionLayer()
        _, tx = _layer_invite(layer, branch=None)
        layer.send_response(tx, make_response(tx.request, 486), 0.0)
        while (deadline := layer.get_timer()) is not None:
            layer.handle_timer(deadline)
        assert len(layer) == 0
        assert layer._ack_2543 == {}


class TestLayerClient:
    def test_send_request_creates_right_machine(self) -> None:
        """Check INVITE gets an ICT and anything else a NICT, keyed by branch and CSeq method."""
        layer = TransactionLayer()
        a = layer.send_request(make_request("INVITE"), ADDR, False, 0.0)
        b = layer.send_request(make_request("OPTIONS", branch="z9hG4bKo"), ADDR, False, 0.0)
        assert isinstance(a, InviteClientTransaction)
        assert isinstance(b, NonInviteClientTransaction)
        assert a.key == ("z9hG4bKabc123", "INVITE")
        assert len(layer) == 2
        assert [addr for _, addr in layer.messages_to_send()] == [ADDR, ADDR]

    def test_send_request_errors(self) -> None:
        """Check ACK, a missing branch and a live duplicate branch are refused."""
        layer = TransactionLayer()
        with pytest.raises(LocalProtocolError, match="send_stateless"):
            layer.send_request(make_request("ACK"), ADDR, False, 0.0)
        with pytest.raises(LocalProtocolError, match="branch"):
            layer.send_request(make_request(branch=None), ADDR, False, 0.0)
        layer.send_request(make_request(), ADDR, False, 0.0)
        with pytest.raises(LocalProtocolError, match="already"):
            layer.send_request(make_request(), ADDR, False, 0.0)

    def test_response_routing_and_cancel(self) -> None:
        """Check responses reach the transaction of their branch and CSeq method (INVITE vs CANCEL)."""
        layer = TransactionLayer()
        invite = make_request()
        inv_tx = layer.send_request(invite, ADDR, False, 0.0)
        layer.receive(make_response(invite, 180), ADDR, False, 0.1)
        cancel = create_cancel(invite)
        cancel_tx = layer.send_request(cancel, ADDR, False, 0.2)
        assert client_transaction_key(cancel) == ("z9hG4bKabc123", "CANCEL")
        ok = make_response(cancel, 200)
        assert layer.receive(ok, ADDR, False, 0.3) == [ResponseReceived(ok, cancel_tx)]
        terminated = make_response(invite, 487)
        assert layer.receive(terminated, ADDR, False, 0.4) == [ResponseReceived(terminated, inv_tx)]
        assert inv_tx.state is S.COMPLETED and cancel_tx.state is S.COMPLETED

    def test_stray_response(self) -> None:
        """Check a response matching no transaction comes up as StrayResponse."""
        layer = TransactionLayer()
        ok = make_response(make_request(branch="z9hG4bKunknown"), 200)
        assert layer.receive(ok, SERVER_ADDR, False, 0.0) == [StrayResponse(ok, SERVER_ADDR)]

    def test_2xx_after_timer_m_is_stray(self) -> None:
        """Check a 2xx retransmitted after Timer M is a StrayResponse the TU re-ACKs."""
        layer = TransactionLayer()
        invite = make_request()
        tx = layer.send_request(invite, ADDR, True, 0.0)
        layer.receive(make_response(invite, 200), ADDR, True, 1.0)
        assert layer.get_timer() == 33.0
        assert layer.handle_timer(33.0) == [TransactionTerminated(tx)]
        late = make_response(invite, 200)
        assert layer.receive(late, ADDR, True, 34.0) == [StrayResponse(late, ADDR)]

    def test_send_stateless(self) -> None:
        """Check send_stateless queues bytes outside any transaction."""
        layer = TransactionLayer()
        layer.send_stateless(make_request("ACK"), ADDR)
        layer.send_stateless(b"raw", SERVER_ADDR)
        out = layer.messages_to_send()
        assert out[1] == (b"raw", SERVER_ADDR)
        assert parse(out[0][0]).start_line().startswith("ACK ")
        assert len(layer) == 0


class TestLayerTimers:
    def test_earliest_deadline_and_cleanup(self) -> None:
        """Check get_timer is the earliest deadline and len() returns to 0 with no leak."""
        layer = TransactionLayer()
        layer.send_request(make_request("OPTIONS", branch="z9hG4bK1"), ADDR, False, 0.0)
        layer.send_request(make_request("OPTIONS", branch="z9hG4bK2"), ADDR, False, 0.2)
        layer.send_request(make_request("INVITE", branch="z9hG4bK3"), ADDR, True, 0.1)
        assert layer.get_timer() == 0.5
        layer.handle_timer(0.5)
        assert layer.get_timer() == 0.7
        timeouts = []
        while (deadline := layer.get_timer()) is not None:
            for event in layer.handle_timer(deadline):
                if isinstance(event, TransactionTimedOut):
                    timeouts.append((deadline, event.transaction.request.method))
        assert timeouts == [(32.0, "OPTIONS"), (32.1, "INVITE"), (32.2, "OPTIONS")]
        assert len(layer) == 0
        assert layer._client == {} and layer._server == {}

    def test_handle_timer_before_deadline_does_nothing(self) -> None:
        """Check handle_timer fires nothing early."""
        layer = TransactionLayer()
        layer.send_request(make_request("OPTIONS"), ADDR, False, 0.0)
        layer.messages_to_send()
        assert layer.handle_timer(0.49) == []
        assert layer.messages_to_send() == []

    def test_direct_transaction_calls_reschedule(self) -> None:
        """Check calling a layer-owned transaction directly still updates the layer's timers."""
        layer = TransactionLayer()
        _, tx = _layer_invite(layer)
        assert layer.get_timer() == 0.2
        tx.send_response(make_response(tx.request, 486), 0.1)
        assert layer.get_timer() == pytest.approx(0.6)  # Timer G, the 100 timer is stale

    def test_transport_error_removes(self) -> None:
        """Check a transport error through the layer reports and removes the transaction."""
        layer = TransactionLayer()
        tx = layer.send_request(make_request(), ADDR, False, 0.0)
        assert layer.handle_transport_error(tx, 0.1) == [TransportFailed(tx), TransactionTerminated(tx)]
        assert len(layer) == 0
        assert layer.get_timer() is None

    def test_stale_entries_skipped(self) -> None:
        """Check entries of ended transactions are skipped by handle_timer."""
        layer = TransactionLayer()
        txs = [
            layer.send_request(make_request("OPTIONS", branch=f"z9hG4bK{i}"), ADDR, False, 0.0)
            for i in range(300)
        ]
        for tx in txs[:290]:
            layer.handle_transport_error(tx, 0.1)
        assert len(layer) == 10
        layer.messages_to_send()
        assert layer.handle_timer(0.5) == []  # 290 stale entries popped and skipped
        assert len(layer.messages_to_send()) == 10  # the 10 live ones retransmitted
        assert len(layer._heap) == 10

    def test_stale_entries_swept(self) -> None:
        """Check stale entries are swept in place when they outnumber live ones, even mid-handle_timer."""
        layer = TransactionLayer()
        txs = [
            layer.send_request(make_request("OPTIONS", branch=f"z9hG4bK{i}"), ADDR, False, 0.0)
            for i in range(300)
        ]
        for tx in txs[10:]:
            layer.handle_transport_error(tx, 0.1)
        assert len(layer._heap) == 300
        layer.handle_timer(0.5)  # the first re-arm sweeps while the loop runs
        assert len(layer._heap) == 10
        layer.send_request(make_request("OPTIONS", branch="z9hG4bKlast"), ADDR, False, 1.0)
        assert len(layer._heap) == 11
        assert layer.get_timer() == 1.5

    def test_repr(self) -> None:
        """Check transactions show machine, method and state."""
        assert repr(ict()) == "<InviteClientTransaction INVITE CALLING>"

    def test_many_transactions_heap_stays_bounded(self) -> None:
        """Check thousands of transactions: timers in order, stale heap entries swept, all cleaned up."""
        layer = TransactionLayer()
        n = 3000
        txs = []
        for i in range(n):
            request = make_request(branch=f"z9hG4bK{i}", call_id=f"c{i}")
            [event] = layer.receive(request, ADDR, False, i * 0.001)
            assert isinstance(event, RequestReceived) and event.transaction is not None
            txs.append(event.transaction)
        for i, tx in enumerate(txs):  # each 1xx makes the 100-Trying entry stale
            layer.send_response(tx, make_response(tx.request, 180), i * 0.001)
            layer.send_response(tx, make_response(tx.request, 200), i * 0.001)
            assert len(layer._heap) <= 4 * len(layer) + 64
        layer.messages_to_send()
        last = 0.0
        fired = 0
        while (deadline := layer.get_timer()) is not None:
            assert deadline >= last
            last = deadline
            fired += len(layer.handle_timer(deadline))
        assert fired == n
        assert len(layer) == 0
        assert layer.get_timer() is None


def test_create_cancel() -> None:
    """Check the CANCEL copies R-URI, Call-ID, From, To, CSeq number, top Via and Route (§9.1)."""
    invite = make_request(
        extra=[("Route", "<sip:p1.example.com;lr>"), ("Via", "SIP/2.0/UDP below.example.com;branch=z9hG4bKlow")],
        body=b"v=0\r\n",
    )
    cancel = create_cancel(invite)
    parsed = parse(cancel.to_bytes())
    assert isinstance(parsed, SipRequest)
    assert parsed.method == "CANCEL"
    assert parsed.uri_text == invite.uri_text
    assert parsed.headers.get_all("Via") == invite.headers.get_all("Via")[:1]
    assert parsed.headers.get_all("Route") == ["<sip:p1.example.com;lr>"]
    for name in ("From", "To", "Call-ID"):
        assert parsed.headers.get(name) == invite.headers.get(name)
    assert str(parsed.cseq) == "314159 CANCEL"
    assert parsed.headers.get("Max-Forwards") == "70"
    assert parsed.body == b""


# ============================================================ pair harness


class UacCore:
    """A minimal UAC: INVITE, ACK every 2xx (§13.2.2.4), BYE ten seconds later."""

    def __init__(self, pair: LayerPair) -> None:
        self.pair = pair
        self.invite = make_request(
            branch=new_branch(), via_host="client.example.com", call_id=new_tag(), from_tag=new_tag()
        )
        self.dialog: Dialog | None = None
        self.ack_bytes: bytes | None = None
        self.bye_at: float | None = None
        self.acks_sent = 0
        self.bye_ok = False
        self.failed: list[Event] = []

    def start(self) -> None:
        self.pair.client.send_request(self.invite, SERVER_ADDR, self.pair.reliable, self.pair.now)

    def _ack(self) -> None:
        assert self.ack_bytes is not None
        self.pair.client.send_stateless(self.ack_bytes, SERVER_ADDR)
        self.acks_sent += 1

    def on_event(self, event: Event, now: float) -> None:
        if isinstance(event, ResponseReceived):
            response = event.response
            if response.cseq.method == "INVITE" and 200 <= response.status < 300:
                if self.dialog is None:
                    self.dialog = Dialog.create_uac(self.invite, response)
                    ack = add_via(self.dialog.create_ack(self.invite.cseq.number))
                    self.ack_bytes = ack.to_bytes()
                    self.bye_at = now + 10.0
                self._ack()
            elif response.cseq.method == "BYE" and response.status == 200:
                assert self.dialog is not None
                self.dialog.receive_response(response)
                self.bye_ok = True
        elif isinstance(event, StrayResponse):
            if event.response.cseq.method == "INVITE" and self.ack_bytes is not None:
                self._ack()
        elif isinstance(event, TransactionTimedOut):
            self.failed.append(event)

    def get_timer(self) -> float | None:
        return self.bye_at

    def handle_timer(self, now: float) -> None:
        assert self.dialog is not None
        self.bye_at = None
        bye = add_via(self.dialog.create_request("BYE"))
        self.pair.client.send_request(bye, SERVER_ADDR, self.pair.reliable, now)


class UasCore(SessionUas):
    """The UAS of these pair tests: the real INVITE session
    (:class:`sip_helpers.SessionUas`): 180 at once, 200 after two seconds,
    retransmitted until ACK (§13.3.1.4)."""

    def on_event(self, event: Event, now: float) -> None:
        assert not isinstance(event, TransactionTimedOut), event
        super().on_event(event, now)


def _run_call(loss: Callable[[int], bool], reliable: bool = False) -> tuple[LayerPair, UacCore, UasCore]:
    pair = LayerPair(loss=loss, reliable=reliable)
    uac = UacCore(pair)
    uas = UasCore(pair)
    pair.client_agent = uac
    pair.server_agent = uas
    uac.start()
    pair.run()
    return pair, uac, uas


def _every(n: int) -> Callable[[int], bool]:
    return lambda k: k % n == 0


def _seeded(seed: int, rate: float) -> Callable[[int], bool]:
    rng = random.Random(seed)
    drops: dict[int, bool] = {}
    return lambda k: drops.setdefault(k, rng.random() < rate)


@pytest.mark.parametrize(
    "loss",
    [
        pytest.param(lambda k: False, id="no-loss"),
        pytest.param(_every(3), id="every-3rd"),
        pytest.param(_every(4), id="every-4th"),
        pytest.param(_every(5), id="every-5th"),
        pytest.param(_every(7), id="every-7th"),
        pytest.param(lambda k: k <= 3, id="first-three"),
        pytest.param(_seeded(1, 0.3), id="random-30%-seed1"),
        pytest.param(_seeded(2, 0.3), id="random-30%-seed2"),
        pytest.param(_seeded(3, 0.3), id="random-30%-seed3"),
    ],
)
def test_pair_call_completes_despite_loss(loss: Callable[[int], bool]) -> None:
    """Check INVITE/180/200/ACK then BYE/200 complete over a lossy link, and both layers empty out."""
    pair, uac, uas = _run_call(loss)
    assert uas.invites == 1  # INVITE retransmissions never reach the TU twice
    assert uas.acked
    assert uac.bye_ok and uas.bye_received
    assert uac.failed == []
    assert uac.dialog is not None and uas.dialog is not None
    assert uac.dialog.id == (uas.dialog.id[0], uas.dialog.id[2], uas.dialog.id[1])
    assert uac.dialog.state is DialogState.TERMINATED
    assert uas.dialog.state is DialogState.TERMINATED
    assert len(pair.client) == 0 and len(pair.server) == 0
    assert pair.client.get_timer() is None and pair.server.get_timer() is None


def test_pair_loss_actually_drops() -> None:
    """Check the every-3rd pattern does drop messages and retransmissions recover them."""
    pair, _, _ = _run_call(_every(3))
    dropped = [line for _, _, line, lost in pair.trace if lost]
    assert dropped == ["SIP/2.0 200 OK", "BYE sip:bob@192.0.2.2 SIP/2.0"]
    lines = [line for _, _, line, _ in pair.trace]
    assert lines.count("SIP/2.0 200 OK") == 3  # the lost 2xx was retransmitted by the UAS core
    assert lines.count("BYE sip:bob@192.0.2.2 SIP/2.0") == 2  # Timer E re-sent the BYE


def test_pair_reliable_transport() -> None:
    """Check the call over a reliable transport: no retransmissions, zero D/I/J/K timers."""
    pair, uac, uas = _run_call(lambda k: False, reliable=True)
    lines = [line for _, _, line, _ in pair.trace]
    assert lines[0].startswith("INVITE ")
    assert sum(line.startswith("INVITE ") for line in lines) == 1
    assert uac.bye_ok and uas.acked
    assert len(pair.client) == 0 and len(pair.server) == 0


def test_pair_every_other_message_lost_gives_up_cleanly() -> None:
    """Check a pathological pattern (every 2xx arrives, every ACK is lost) times out without leaking."""
    pair, uac, uas = _run_call(_every(2))
    assert not uas.acked
    assert len(pair.client) == 0 and len(pair.server) == 0


@settings(max_examples=60, deadline=None)
@given(
    drops=st.sets(st.integers(1, 40), max_size=15),
    method=st.sampled_from(["OPTIONS", "INVITE"]),
    status=st.sampled_from([200, 404, 486]),
)
def test_pair_any_loss_pattern_ends_cleanly(drops: set[int], method: str, status: int) -> None:
    """Check for any loss pattern a transaction either completes or times out, and both layers empty out."""
    pair = LayerPair(loss=lambda k: k in drops)
    outcome: list[Event] = []
    answered: list[int] = []

    class Client:
        def get_timer(self) -> float | None:
            return None

        def handle_timer(self, now: float) -> None:
            pass

        def on_event(self, event: Event, now: float) -> None:
            if isinstance(event, (ResponseReceived, TransactionTimedOut)):
                outcome.append(event)

    class Server:
        def get_timer(self) -> float | None:
            return None

        def handle_timer(self, now: float) -> None:
            pass

        def on_event(self, event: Event, now: float) -> None:
            if isinstance(event, RequestReceived) and event.transaction is not None:
                answered.append(1)
                response = event.request.create_response(status, to_tag="t")
                pair.server.send_response(event.transaction, response, now)

    pair.client_agent = Client()
    pair.server_agent = Server()
    request = make_request(method, branch=new_branch())
    pair.client.send_request(request, SERVER_ADDR, False, 0.0)
    pair.run()
    assert len(answered) <= 1
    finals = [e for e in outcome if isinstance(e, ResponseReceived) and e.response.status >= 200]
    timeouts = [e for e in outcome if isinstance(e, TransactionTimedOut)]
    assert (len(finals) >= 1) != (len(timeouts) == 1)
    if status >= 300:
        assert len(finals) <= 1  # non-2xx finals are passed up once
    assert len(pair.client) == 0 and len(pair.server) == 0
