"""The sans-IO transfer core (engine/sip/refer.py): Refer-To and Replaces
parsing with exact errors (RFC 3515 §2.1, RFC 3891 §6.1), sipfrag (RFC
3420), the notifier's NOTIFYs and expiry on virtual time (RFC 3515 §2.4.4,
RFC 6665 §4.2.2), Refer-Sub: false (RFC 4488), the REFER sender's machine
and the per-dialog budget."""

from __future__ import annotations

import pytest

from engine.sip.dialog import Dialog
from engine.sip.errors import LocalProtocolError, RemoteProtocolError
from engine.sip.message import SipRequest
from engine.sip.refer import (
    DEFAULT_EXPIRES, ReferAccepted, ReferBudget, ReferClient, ReferFailed, ReferNotifier, ReferProgress,
    ReferState, ReferSucceeded, Replaces, format_sipfrag, parse_refer_to, parse_replaces, parse_sipfrag,
    refer_to_value,
)
from engine.sip.uri import SipUri

from sip_helpers import make_request, make_response


def dialog() -> Dialog:
    return Dialog.create_uas(make_request("INVITE"), "ourtag", "<sip:callbridge@127.0.0.1:5060>", local_seq=10)


def refer_request(d: Dialog, *extra: tuple[str, str]) -> SipRequest:
    """A REFER as the peer would send it in ``d`` (only its CSeq and headers matter here)."""
    return make_request("REFER", extra=[("Refer-To", "<sip:carol@example.com>"), *extra])  # type: ignore[arg-type]


def test_parse_replaces_and_round_trip() -> None:
    """Replaces: Call-ID, both tags, early-only; str() gives it back."""
    r = parse_replaces("abc@host;to-tag=t1;from-tag=f1;early-only")
    assert r == Replaces("abc@host", "t1", "f1", True)
    assert str(r) == "abc@host;to-tag=t1;from-tag=f1;early-only"
    assert r.dialog_id == ("abc@host", "t1", "f1")


@pytest.mark.parametrize("text, error", [
    ("", "Replaces has no valid Call-ID"),
    ("abc;to-tag=t1", "Replaces needs to-tag and from-tag"),
    ("abc;from-tag=f1", "Replaces needs to-tag and from-tag"),
    ("abc;to-tag=t1;from-tag=f1;=x", "bad parameter in Replaces"),
])
def test_parse_replaces_errors(text: str, error: str) -> None:
    """A Replaces without Call-ID or a tag is a 400 naming what is missing."""
    with pytest.raises(RemoteProtocolError) as exc:
        parse_replaces(text)
    assert str(exc.value) == error and exc.value.status == 400


def test_refer_to_with_embedded_replaces() -> None:
    """An attended transfer's Refer-To: the URI without headers, and the
    Replaces decoded from its escaped header; refer_to_value escapes it back."""
    t = parse_refer_to(["<sip:bob@h.example?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2>"])
    assert t.uri == SipUri(host="h.example", user="bob")
    assert t.replaces == Replaces("abc@h", "1", "2")
    assert refer_to_value(t.uri, t.replaces) == "<sip:bob@h.example?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2>"
    assert parse_refer_to([refer_to_value(t.uri, t.replaces)]) == t


@pytest.mark.parametrize("values, error", [
    ([], "REFER needs exactly one Refer-To"),
    (["<sip:a@h>", "<sip:b@h>"], "REFER needs exactly one Refer-To"),
    (["<http://evil.example/>"], "Refer-To must be a sip: or sips: URI"),
    (["<tel:+15551234>"], "Refer-To must be a sip: or sips: URI"),
    (["<sip:" + "a" * 1100 + "@h>"], "Refer-To too long"),
    (["<sip:b@h?Replaces=x>"], "Replaces needs to-tag and from-tag"),
])
def test_refer_to_refused(values: list[str], error: str) -> None:
    """Hostile Refer-Tos are 400s with a reason that names the fault."""
    with pytest.raises(RemoteProtocolError) as exc:
        parse_refer_to(values)
    assert str(exc.value) == error and exc.value.status == 400


def test_sipfrag() -> None:
    """Status lines both ways; anything else is refused."""
    assert format_sipfrag(180) == b"SIP/2.0 180 Ringing\r\n"
    assert parse_sipfrag(b"SIP/2.0 486 Busy Here\r\nFoo: bar\r\n") == (486, "Busy Here")
    for bad in (b"HTTP/1.1 200 OK", b"SIP/2.0 20 OK", b"SIP/2.0 999 X", b"x" * 2000):
        with pytest.raises(RemoteProtocolError):
            parse_sipfrag(bad)


def test_notifier_progress_final_and_event_id() -> None:
    """202; NOTIFY 100 active with the time left; 200 terminates
    (reason=noresource); nothing after the end; Event id is the REFER's CSeq."""
    d = dialog()
    ref = refer_request(d)
    n = ReferNotifier(d, ref, now=100.0)
    assert n.accept(ref).status == 202 and n.accept(ref).headers.get("Refer-Sub") is None
    first = n.notify(100, "Trying", now=110.0)
    assert first is not None and first.method == "NOTIFY"
    assert first.headers.get("Event") == f"refer;id={ref.cseq.number}"
    assert first.headers.get("Subscription-State") == f"active;expires={DEFAULT_EXPIRES - 10}"
    assert first.headers.get("Content-Type") == "message/sipfrag;version=2.0"
    assert first.body == b"SIP/2.0 100 Trying\r\n"
    assert n.get_timer() == 100.0 + DEFAULT_EXPIRES
    last = n.notify(200, None, now=111.0)
    assert last is not None and last.headers.get("Subscription-State") == "terminated;reason=noresource"
    assert n.get_timer() is None and n.notify(180, None, now=112.0) is None


def test_notifier_expiry_on_virtual_time() -> None:
    """No final status before the subscription expires: at the deadline one
    NOTIFY ``terminated;reason=timeout`` with the last status, then nothing."""
    d = dialog()
    n = ReferNotifier(d, refer_request(d), now=0.0, expires=30)
    n.notify(180, None, now=1.0)
    assert n.handle_timer(29.0) is None
    when = n.get_timer()
    assert when == 30.0
    req = n.handle_timer(when)
    assert req is not None and req.headers.get("Subscription-State") == "terminated;reason=timeout"
    assert req.body == b"SIP/2.0 180 Ringing\r\n"
    assert n.get_timer() is None and n.handle_timer(99.0) is None


def test_notifier_refer_sub_false() -> None:
    """RFC 4488: Refer-Sub: false is echoed in the 202 and no NOTIFY is built."""
    d = dialog()
    ref = refer_request(d, ("Refer-Sub", "false"))
    n = ReferNotifier(d, ref, now=0.0)
    assert n.accept(ref).headers.get("Refer-Sub") == "false"
    assert n.notify(100, None, now=0.0) is None and n.get_timer() is None


def notify(client: ReferClient, body: bytes, state: str = "active;expires=60", ident: int | None = None) -> SipRequest:
    return make_request("NOTIFY", body=body, extra=[  # type: ignore[arg-type]
        ("Event", f"refer;id={client.event_id if ident is None else ident}"), ("Subscription-State", state),
        ("Content-Type", "message/sipfrag")])


def client(timeout: float = 32.0, replaces: Replaces | None = None) -> tuple[ReferClient, SipRequest]:
    c = ReferClient(dialog(), SipUri(host="h.example", user="dave"), replaces, now=0.0, timeout=timeout)
    req = c.create_refer()
    req.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKrefer")  # the transport's part
    return c, req


def test_client_refer_request() -> None:
    """The REFER is in the dialog (its next CSeq) and carries Refer-To; it
    is built once."""
    c, req = client(replaces=Replaces("cid", "a", "b"))
    assert req.method == "REFER" and req.cseq.number == 11 and c.event_id == 11
    assert req.headers.get("Refer-To") == "<sip:dave@h.example?Replaces=cid%3Bto-tag%3Da%3Bfrom-tag%3Db>"
    with pytest.raises(LocalProtocolError):
        c.create_refer()


def test_client_success_path() -> None:
    """202, NOTIFY 100, NOTIFY 200: accepted, progress, succeeded; later
    NOTIFYs change nothing."""
    c, req = client()
    assert c.receive_response(make_response(req, 202)) == [ReferAccepted(202)]
    assert c.receive_notify(notify(c, b"SIP/2.0 100 Trying\r\n")) == [ReferProgress(100, "Trying")]
    assert c.receive_notify(notify(c, b"SIP/2.0 200 OK\r\n", "terminated")) == [ReferSucceeded(200, "OK")]
    assert c.state is ReferState.SUCCEEDED and c.get_timer() is None
    assert c.receive_notify(notify(c, b"SIP/2.0 200 OK\r\n")) == []


@pytest.mark.parametrize("status", [405, 501, 603])
def test_client_refused(status: int) -> None:
    """A non-2xx to the REFER: refused (the fallback may bridge)."""
    c, req = client()
    assert c.receive_response(make_response(req, status)) == [
        ReferFailed(status, make_response(req, status).reason or "", True)]


def test_client_failure_and_timeouts() -> None:
    """A sipfrag 486 fails (not refused); a subscription ended without a
    final status fails; no final NOTIFY by the deadline: refused 408;
    the transaction timing out: refused 408."""
    c, req = client()
    c.receive_response(make_response(req, 202))
    assert c.receive_notify(notify(c, b"SIP/2.0 486 Busy Here\r\n", "terminated")) == [
        ReferFailed(486, "Busy Here", False)]
    c, req = client()
    c.receive_response(make_response(req, 202))
    assert c.receive_notify(notify(c, b"SIP/2.0 100 Trying\r\n", "terminated;reason=timeout"))[0] == ReferFailed(
        487, "subscription terminated without a final status", False)
    c, req = client(timeout=5.0)
    c.receive_response(make_response(req, 202))
    assert c.get_timer() == 5.0 and c.handle_timer(4.0) == []
    assert c.handle_timer(5.0) == [ReferFailed(408, "no final NOTIFY in time", True)]
    c, _ = client()
    assert c.receive_response(None) == [ReferFailed(408, "Request Timeout", True)]


def test_client_refer_sub_false_response_and_matching() -> None:
    """A 2xx with Refer-Sub: false is all we learn: success at once. A
    NOTIFY of another event or id does not match."""
    c, req = client()
    resp = make_response(req, 202)
    resp.headers.add("Refer-Sub", "false")
    assert c.receive_response(resp) == [ReferAccepted(202), ReferSucceeded(202, "Accepted")]
    c, _ = client()
    assert c.matches(notify(c, b""))
    assert not c.matches(notify(c, b"", ident=999))
    other = make_request("NOTIFY", extra=[("Event", "presence")])  # type: ignore[arg-type]
    assert not c.matches(other)


def test_budget() -> None:
    """Three at once, then one per interval."""
    b = ReferBudget(burst=3, interval=10.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(5.0)
    assert b.take(15.0)


def test_replaces_of_dialog_is_the_peers_view() -> None:
    """Replaces for a third party to send our peer: to-tag is the peer's tag."""
    d = dialog()
    r = Replaces.of_dialog(d)
    assert (r.call_id, r.to_tag, r.from_tag) == (d.call_id, d.remote_tag, "ourtag")
