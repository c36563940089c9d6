"""Dialogs (RFC 3261 §12): creation, request building, routing, CSeq checks."""

from __future__ import annotations

import pytest

from engine.sip.dialog import (
    Dialog,
    DialogState,
    TARGET_REFRESH_METHODS,
    dialog_id_of,
    request_destination,
)
from engine.sip.errors import LocalProtocolError, RemoteProtocolError
from engine.sip.headers import parse_name_addr
from engine.sip.message import SipRequest
from engine.sip.parser import parse_message
from engine.sip.uri import SipUri, parse_uri

from sip_helpers import make_request, make_response

RR = [("Record-Route", "<sip:p1.example.com;lr>"), ("Record-Route", "<sip:p2.example.com;lr>")]
BOB_CONTACT = "<sip:bob@192.0.2.4:5062;transport=tcp>"
ALICE_CONTACT = "<sip:alice@pc33.atlanta.example.com>"


def invite(**kw: object) -> SipRequest:
    return make_request("INVITE", **kw)  # type: ignore[arg-type]


def uas_dialog(extra: list[tuple[str, str]] | None = None, **kw: object) -> Dialog:
    return Dialog.create_uas(invite(extra=extra or [], **kw), "bobtag", BOB_CONTACT, local_seq=100)


def uac_dialog(status: int = 200, rr: list[tuple[str, str]] | None = None) -> tuple[SipRequest, Dialog]:
    request = invite()
    response = make_response(request, status, to_tag="bobtag", contact=BOB_CONTACT, extra=rr or [])
    return request, Dialog.create_uac(request, response)


def reparse(request: SipRequest) -> SipRequest:
    """Send through bytes and the validating parser, as the wire would."""
    request.headers.prepend("Via", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnew")
    msg = parse_message(request.to_bytes())
    assert isinstance(msg, SipRequest)
    return msg


# ================================================================= creation


class TestCreateUas:
    def test_fields(self) -> None:
        """Check §12.1.1: ids, sequence numbers, URIs, remote target, route set in order."""
        d = uas_dialog(extra=RR)
        assert d.id == ("a84b4c76e66710", "bobtag", "1928301774")
        assert d.call_id == "a84b4c76e66710"
        assert d.remote_seq == 314159
        assert d.local_seq == 100
        assert d.remote_target == parse_uri("sip:alice@pc33.atlanta.example.com")
        assert [str(r.uri) for r in d.route_set] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
        assert str(d.local_uri.uri) == "sip:bob@biloxi.example.com" and d.local_uri.tag is None
        assert str(d.remote_uri.uri) == "sip:alice@atlanta.example.com" and d.remote_uri.tag is None
        assert d.state is DialogState.CONFIRMED
        assert d.secure is False
        assert d.local_contact == BOB_CONTACT

    def test_early(self) -> None:
        """Check early=True creates an EARLY dialog."""
        d = Dialog.create_uas(invite(), "t", BOB_CONTACT, early=True)
        assert d.state is DialogState.EARLY

    def test_random_local_seq(self) -> None:
        """Check the initial local sequence number is below 2**31."""
        for _ in range(20):
            d = Dialog.create_uas(invite(), "t", BOB_CONTACT)
            assert 0 <= d.local_seq < 2**30

    def test_sips_is_secure(self) -> None:
        """Check a SIPS Request-URI sets the secure flag."""
        d = Dialog.create_uas(invite(uri="sips:bob@biloxi.example.com"), "t", BOB_CONTACT)
        assert d.secure is True

    def test_needs_contact(self) -> None:
        """Check a dialog-creating request without Contact is refused with 400."""
        with pytest.raises(RemoteProtocolError) as info:
            Dialog.create_uas(invite(contact=None), "t", BOB_CONTACT)
        assert info.value.status == 400

    def test_contact_must_be_sip(self) -> None:
        """Check a tel: Contact cannot be a remote target."""
        with pytest.raises(RemoteProtocolError, match="Contact"):
            Dialog.create_uas(invite(contact="<tel:+15551234>"), "t", BOB_CONTACT)

    def test_rfc2543_peer_without_from_tag(self) -> None:
        """Check a request without From tag gives an empty remote tag."""
        d = Dialog.create_uas(invite(from_tag=None), "t", BOB_CONTACT)
        assert d.remote_tag == ""
        request = d.create_request("BYE")
        assert request.to.tag is None


class TestCreateUac:
    def test_confirmed_from_2xx(self) -> None:
        """Check §12.1.2: CONFIRMED from a 2xx, route set reversed, remote seq empty."""
        request, d = uac_dialog(rr=RR)
        assert d.state is DialogState.CONFIRMED
        assert d.id == ("a84b4c76e66710", "1928301774", "bobtag")
        assert [str(r.uri) for r in d.route_set] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
        assert d.remote_target == parse_uri("sip:bob@192.0.2.4:5062;transport=tcp")
        assert d.local_seq == 314159
        assert d.remote_seq is None
        assert d.local_contact == ALICE_CONTACT

    def test_early_from_1xx_with_tag(self) -> None:
        """Check a 180 with To tag creates an EARLY dialog."""
        _, d = uac_dialog(180)
        assert d.state is DialogState.EARLY

    @pytest.mark.parametrize("status", [100, 486, 302])
    def test_no_dialog_from_100_or_failure(self, status: int) -> None:
        """Check 100 and 300-699 create no dialog."""
        request = invite()
        with pytest.raises(LocalProtocolError):
            Dialog.create_uac(request, make_response(request, status, to_tag="x"))

    def test_no_dialog_from_1xx_without_tag(self) -> None:
        """Check a provisional response without To tag creates no dialog."""
        request = invite()
        with pytest.raises(LocalProtocolError, match="tag"):
            Dialog.create_uac(request, make_response(request, 180, to_tag=None))

    def test_request_needs_from_tag(self) -> None:
        """Check our request must carry a From tag."""
        request = invite(from_tag=None)
        with pytest.raises(LocalProtocolError, match="From tag"):
            Dialog.create_uac(request, make_response(request, 200))

    def test_missing_contact_falls_back_to_request_uri(self) -> None:
        """Check a response without Contact uses the Request-URI as remote target (leniency)."""
        request = invite()
        d = Dialog.create_uac(request, make_response(request, 180))
        assert d.remote_target == request.uri

    def test_2xx_without_to_tag(self) -> None:
        """Check a 2xx without To tag (RFC 2543) gives an empty remote tag."""
        request = invite()
        d = Dialog.create_uac(request, make_response(request, 200, to_tag=None))
        assert d.remote_tag == ""


# ================================================================ requests


class TestCreateRequest:
    def test_loose_routing(self) -> None:
        """Check loose routing: R-URI = remote target, Route = route set in order (§12.2.1.1)."""
        _, d = uac_dialog(rr=RR)
        bye = d.create_request("BYE")
        assert bye.uri == d.remote_target
        assert bye.headers.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
        assert d.request_destination(bye) == parse_uri("sip:p2.example.com;lr")
        assert request_destination(bye) == parse_uri("sip:p2.example.com;lr")

    def test_no_route_set(self) -> None:
        """Check without a route set the request goes to the remote target, with no Route."""
        _, d = uac_dialog()
        bye = d.create_request("BYE")
        assert bye.uri == d.remote_target
        assert "Route" not in bye.headers
        assert d.request_destination(bye) == d.remote_target

    def test_strict_routing(self) -> None:
        """Check strict routing: R-URI = first route (params a R-URI can't carry stripped), Route = rest + remote target."""
        rr = [
            ("Record-Route", "<sip:p1.example.com;lr>"),
            ("Record-Route", "<sip:strict.example.com;method=INVITE;transport=udp>"),
        ]
        _, d = uac_dialog(rr=rr)  # reversed: strict router first
        bye = d.create_request("BYE")
        assert str(bye.uri) == "sip:strict.example.com;transport=udp"
        assert bye.headers.get_all("Route") == [
            "<sip:p1.example.com;lr>",
            "<sip:bob@192.0.2.4:5062;transport=tcp>",
        ]
        # §8.1.2: with a strict router first, the request goes to the R-URI.
        assert d.request_destination(bye) == parse_uri("sip:strict.example.com;transport=udp")
        reparse(bye)

    def test_headers_and_cseq(self) -> None:
        """Check From/To tags, Call-ID, CSeq increments, Max-Forwards, and no Via."""
        _, d = uac_dialog()
        first = d.create_request("INFO")
        second = d.create_request("BYE")
        assert first.cseq.number == 314160 and first.cseq.method == "INFO"
        assert second.cseq.number == 314161
        assert d.local_seq == 314161
        assert first.from_.tag == "1928301774"
        assert first.to.tag == "bobtag"
        assert first.call_id == d.call_id
        assert first.headers.get("Max-Forwards") == "70"
        assert "Via" not in first.headers
        assert first.headers.get("From") == "Alice <sip:alice@atlanta.example.com>;tag=1928301774"

    def test_uas_side_from_and_to(self) -> None:
        """Check a UAS-built request has our To (with our tag) as From, and the peer's From as To."""
        d = uas_dialog()
        bye = d.create_request("BYE")
        assert bye.headers.get("From") == "Bob <sip:bob@biloxi.example.com>;tag=bobtag"
        assert bye.headers.get("To") == "Alice <sip:alice@atlanta.example.com>;tag=1928301774"
        assert bye.cseq.number == 101
        assert bye.uri == parse_uri("sip:alice@pc33.atlanta.example.com")

    @pytest.mark.parametrize("method", sorted(TARGET_REFRESH_METHODS | {"REFER"}))
    def test_contact_in_target_refresh(self, method: str) -> None:
        """Check Contact is added to target-refresh requests (and REFER)."""
        _, d = uac_dialog()
        assert d.create_request(method).headers.get("Contact") == ALICE_CONTACT

    @pytest.mark.parametrize("method", ["BYE", "INFO", "MESSAGE", "OPTIONS", "PRACK"])
    def test_no_contact_otherwise(self, method: str) -> None:
        """Check other requests carry no Contact."""
        _, d = uac_dialog()
        assert "Contact" not in d.create_request(method).headers

    def test_extra_headers_and_body(self) -> None:
        """Check extra headers (dict or pairs, compact names expanded) and body with Content-Type."""
        _, d = uac_dialog()
        sdp = b"v=0\r\n"
        req = d.create_request("INVITE", {"X-Call": "1", "k": "timer"}, sdp, "application/sdp")
        assert req.headers.get("X-Call") == "1"
        assert req.headers.get("Supported") == "timer"
        assert req.headers.get("Content-Type") == "application/sdp"
        assert req.body == sdp
        req2 = d.create_request("INFO", [("X-A", "1"), ("X-A", "2")])
        assert req2.headers.get_all("X-A") == ["1", "2"]
        parsed = reparse(req)
        assert parsed.body == sdp

    @pytest.mark.parametrize("method", ["ACK", "CANCEL"])
    def test_ack_and_cancel_refused(self, method: str) -> None:
        """Check ACK and CANCEL are not built with create_request."""
        _, d = uac_dialog()
        with pytest.raises(LocalProtocolError):
            d.create_request(method)

    def test_bye_terminates(self) -> None:
        """Check sending BYE terminates the dialog (§15.1.1) and a new BYE can still be built."""
        _, d = uac_dialog()
        d.create_request("BYE")
        assert d.state is DialogState.TERMINATED
        again = d.create_request("BYE", {"Authorization": "Digest x"})
        assert again.cseq.number == 314161

    def test_create_ack(self) -> None:
        """Check the ACK for a 2xx: INVITE's CSeq number, method ACK, routes, local_seq unchanged (§13.2.2.4)."""
        request, d = uac_dialog(rr=RR)
        ack = d.create_ack(request.cseq.number)
        assert str(ack.cseq) == "314159 ACK"
        assert d.local_seq == 314159
        assert ack.uri == d.remote_target
        assert ack.headers.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
        assert "Contact" not in ack.headers
        assert ack.to.tag == "bobtag"
        ack2 = d.create_ack(314160, b"v=0\r\n", "application/sdp", {"Proxy-Authorization": "Digest y"})
        assert ack2.headers.get("Proxy-Authorization") == "Digest y"
        assert reparse(ack2).cseq.number == 314160

    def test_route_set_reassignment(self) -> None:
        """Check assigning a new route set and remote target changes the next request."""
        _, d = uac_dialog(rr=RR)
        d.route_set = [parse_name_addr("<sip:edge.example.com;lr>")]
        d.remote_target = SipUri("192.0.2.99", user="bob")
        req = d.create_request("INFO")
        assert req.headers.get_all("Route") == ["<sip:edge.example.com;lr>"]
        assert str(req.uri) == "sip:bob@192.0.2.99"

    def test_direct_construction(self) -> None:
        """Check a Dialog built field by field formats From/To/Route itself."""
        d = Dialog(
            call_id="cid",
            local_tag="lt",
            remote_tag="rt",
            local_seq=5,
            remote_seq=None,
            local_uri=parse_name_addr('"Me" <sip:me@example.com>'),
            remote_uri=parse_name_addr("<sip:you@example.com>;tag=old"),
            remote_target=SipUri("192.0.2.5", user="you"),
            route_set=[parse_name_addr("<sip:p.example.com;lr>")],
            local_contact="<sip:me@192.0.2.1>",
        )
        req = d.create_request("UPDATE")
        assert req.headers.get("From") == '"Me" <sip:me@example.com>;tag=lt'
        assert req.headers.get("To") == "<sip:you@example.com>;tag=rt"
        assert req.headers.get_all("Route") == ["<sip:p.example.com;lr>"]
        assert req.cseq.number == 6
        assert repr(d) == "<Dialog cid lt/rt CONFIRMED>"
        d.remote_tag = ""
        assert d.create_request("INFO").headers.get("To") == "<sip:you@example.com>"


# =================================================================== input


class TestReceiveRequest:
    def test_in_order_updates_remote_seq(self) -> None:
        """Check a higher CSeq is accepted and becomes the remote sequence number (§12.2.2)."""
        d = uas_dialog()
        d.receive_request(make_request("INFO", to_tag="bobtag", cseq=314160))
        assert d.remote_seq == 314160

    @pytest.mark.parametrize("cseq", [314158, 314159])
    def test_out_of_order_is_500(self, cseq: int) -> None:
        """Check a lower or equal CSeq is rejected with 500 and changes nothing."""
        d = uas_dialog()
        with pytest.raises(RemoteProtocolError) as info:
            d.receive_request(make_request("INFO", to_tag="bobtag", cseq=cseq))
        assert info.value.status == 500
        assert d.remote_seq == 314159

    @pytest.mark.parametrize("method", ["ACK", "CANCEL"])
    def test_ack_and_cancel_exempt(self, method: str) -> None:
        """Check ACK and CANCEL reuse the INVITE's CSeq and pass."""
        d = uas_dialog()
        d.receive_request(make_request(method, to_tag="bobtag", cseq=314159))
        assert d.remote_seq == 314159

    def test_first_request_on_uac_side(self) -> None:
        """Check an empty remote sequence number takes the first request's CSeq."""
        _, d = uac_dialog()
        d.receive_request(make_request("INFO", cseq=7))
        assert d.remote_seq == 7

    @pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
    def test_target_refresh(self, method: str) -> None:
        """Check re-INVITE and UPDATE replace the remote target with their Contact."""
        d = uas_dialog()
        d.receive_request(make_request(method, cseq=314160, contact="<sip:alice@192.0.2.77:5070>"))
        assert d.remote_target == parse_uri("sip:alice@192.0.2.77:5070")
        assert str(d.create_request("INFO").uri) == "sip:alice@192.0.2.77:5070"

    def test_refresh_without_contact_keeps_target(self) -> None:
        """Check an UPDATE without Contact leaves the remote target."""
        d = uas_dialog()
        before = d.remote_target
        d.receive_request(make_request("UPDATE", cseq=314160, contact=None))
        assert d.remote_target == before

    def test_non_refresh_keeps_target(self) -> None:
        """Check a Contact in a non-target-refresh request is ignored."""
        d = uas_dialog()
        before = d.remote_target
        d.receive_request(make_request("INFO", cseq=314160, contact="<sip:alice@192.0.2.77>"))
        assert d.remote_target == before

    def test_bye_terminates_then_481(self) -> None:
        """Check a received BYE terminates the dialog and later requests get 481."""
        d = uas_dialog()
        d.receive_request(make_request("BYE", cseq=314160))
        assert d.state is DialogState.TERMINATED
        with pytest.raises(RemoteProtocolError) as info:
            d.receive_request(make_request("INFO", cseq=314161))
        assert info.value.status == 481
        d.receive_request(make_request("ACK", cseq=314159))  # ACK is never answered


class TestReceiveResponse:
    def test_early_to_confirmed_recomputes_route_set(self) -> None:
        """Check a 2xx confirms the early dialog and the route set comes from the 2xx (§13.2.2.4)."""
        request = invite()
        early = make_response(request, 183, contact=BOB_CONTACT, extra=[("Record-Route", "<sip:old.example.com;lr>")])
        d = Dialog.create_uac(request, early)
        initial = d.state
        assert initial is DialogState.EARLY
        ok = make_response(request, 200, contact="<sip:bob@192.0.2.44>", extra=RR)
        d.receive_response(ok)
        assert d.state is DialogState.CONFIRMED
        assert [str(r.uri) for r in d.route_set] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
        assert d.remote_target == parse_uri("sip:bob@192.0.2.44")
        assert d.create_request("BYE").headers.get_all("Route") == [
            "<sip:p2.example.com;lr>",
            "<sip:p1.example.com;lr>",
        ]

    def test_early_failure_terminates(self) -> None:
        """Check a 300-699 to the INVITE ends the early dialog."""
        _, d = uac_dialog(180)
        d.receive_response(make_response(invite(), 486))
        assert d.state is DialogState.TERMINATED

    def test_reinvite_2xx_refreshes_target(self) -> None:
        """Check a 2xx to a re-INVITE replaces the remote target (§12.2.1.2)."""
        _, d = uac_dialog()
        reinvite = d.create_request("INVITE")
        reinvite.headers.prepend("Via", "SIP/2.0/UDP h;branch=z9hG4bKr")
        ok = reinvite.create_response(200)
        ok.headers.add("Contact", "<sip:bob@192.0.2.55>")
        d.receive_response(ok)
        assert d.remote_target == parse_uri("sip:bob@192.0.2.55")
        assert d.state is DialogState.CONFIRMED

    def test_reinvite_failure_keeps_dialog(self) -> None:
        """Check a 488 to a re-INVITE leaves a confirmed dialog alone."""
        _, d = uac_dialog()
        reinvite = d.create_request("INVITE")
        reinvite.headers.prepend("Via", "SIP/2.0/UDP h;branch=z9hG4bKr")
        d.receive_response(reinvite.create_response(488))
        assert d.state is DialogState.CONFIRMED

    def test_non_refresh_2xx_keeps_target(self) -> None:
        """Check a 2xx to INFO with a Contact does not move the target."""
        _, d = uac_dialog()
        before = d.remote_target
        info = d.create_request("INFO")
        info.headers.prepend("Via", "SIP/2.0/UDP h;branch=z9hG4bKi")
        ok = info.create_response(200)
        ok.headers.add("Contact", "<sip:elsewhere@192.0.2.9>")
        d.receive_response(ok)
        assert d.remote_target == before

    @pytest.mark.parametrize("status", [408, 481])
    def test_408_481_terminate(self, status: int) -> None:
        """Check 408 and 481 to a request in the dialog terminate it (§12.2.1.2)."""
        _, d = uac_dialog()
        info = d.create_request("INFO")
        info.headers.prepend("Via", "SIP/2.0/UDP h;branch=z9hG4bKi")
        d.receive_response(info.create_response(status))
        assert d.state is DialogState.TERMINATED
        d.receive_response(info.create_response(200))  # ignored once terminated
        assert d.state is DialogState.TERMINATED

    def test_remote_tag_learned(self) -> None:
        """Check an empty remote tag is filled from the next response's To tag."""
        request = invite()
        d = Dialog.create_uac(request, make_response(request, 200, to_tag=None))
        d.receive_response(make_response(request, 200, to_tag=None))
        assert d.remote_tag == ""
        d.receive_response(make_response(request, 200, to_tag="late"))
        assert d.remote_tag == "late"
        assert d.id[2] == "late"
        assert d.create_request("BYE").to.tag == "late"


class TestSendResponse:
    @pytest.mark.parametrize(("status", "state"), [(180, DialogState.EARLY), (200, DialogState.CONFIRMED), (486, DialogState.TERMINATED)])
    def test_early_uas(self, status: int, state: DialogState) -> None:
        """Check a UAS early dialog follows the responses it sends to the INVITE."""
        request = invite()
        d = Dialog.create_uas(request, "bobtag", BOB_CONTACT, early=True)
        d.send_response(request.create_response(status, to_tag="bobtag"))
        assert d.state is state

    def test_confirmed_unchanged_by_reinvite_failure(self) -> None:
        """Check rejecting a re-INVITE keeps the dialog confirmed."""
        d = uas_dialog()
        d.send_response(make_request(cseq=314160, to_tag="bobtag").create_response(491))
        assert d.state is DialogState.CONFIRMED


# ===================================================================== ids


def test_dialog_id_of_matches_both_sides() -> None:
    """Check dialog_id_of finds the dialog from incoming requests and responses on both sides."""
    request = invite()
    ok = make_response(request, 200, to_tag="bobtag", contact=BOB_CONTACT)
    uac = Dialog.create_uac(request, ok)
    uas = Dialog.create_uas(request, "bobtag", BOB_CONTACT)
    assert dialog_id_of(ok) == uac.id  # response received by the UAC
    bye_from_uas = uas.create_request("BYE")
    assert dialog_id_of(bye_from_uas) == uac.id  # request received by the UAC
    bye_from_uac = uac.create_request("BYE")
    assert dialog_id_of(bye_from_uac) == uas.id  # request received by the UAS
    assert dialog_id_of(bye_from_uac, is_uas_side=False) == uac.id  # our own outgoing request
    assert dialog_id_of(ok, is_uas_side=True) == uas.id  # our own outgoing response


def test_requests_round_trip_between_dialogs() -> None:
    """Check requests built by one side are accepted by the other, in order, through the parser."""
    request = invite(extra=RR)
    ok = make_response(request, 200, to_tag="bobtag", contact=BOB_CONTACT, extra=RR)
    uac = Dialog.create_uac(request, ok)
    uas = Dialog.create_uas(request, "bobtag", BOB_CONTACT)
    uas.receive_request(reparse(uac.create_ack(314159)))
    uas.receive_request(reparse(uac.create_request("INFO")))
    reinvite = reparse(uas.create_request("INVITE"))
    assert reinvite.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    uac.receive_request(reinvite)
    assert uac.remote_seq == uas.local_seq
    uas.receive_request(reparse(uac.create_request("BYE")))
    assert uas.state is DialogState.TERMINATED and uac.state is DialogState.TERMINATED


def test_request_destination_needs_sip_uri() -> None:
    """Check a non-SIP next hop is refused."""
    request = make_request("MESSAGE", uri="sip:x@example.com", extra=[("Route", "<tel:+1555>")])
    with pytest.raises(LocalProtocolError):
        request_destination(request)
