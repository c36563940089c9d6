"""Who sent a request a front proxy forwarded (``proxied_origin``), and
the registrar counting password failures against that sender."""

from __future__ import annotations

import pytest

from engine.sip.auth import DigestServer, compute_ha1
from engine.sip.errors import RemoteProtocolError
from engine.sip.message import Headers, SipRequest
from engine.sip.registrar import Registrar, RegisterAnswered
from engine.state.directory import LoginBackoff, LoginGuard, MemoryDirectory
from engine.transport.sip_endpoint import Peer, proxied_origin, request_source

PROXY_VIA = "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKproxy"


def with_vias(*vias: str) -> SipRequest:
    return SipRequest("OPTIONS", "sip:x@10.0.0.2", Headers([("Via", v) for v in vias]))


@pytest.mark.parametrize(("caller_via", "origin"), [
    ("SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKa;received=198.51.100.1;rport=40000",
     ("UDP", "198.51.100.1", 40000)),
    ("SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKa", ("UDP", "192.0.2.7", 5062)),
    ("SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKa", ("UDP", "192.0.2.7", 5060)),
    ("SIP/2.0/TLS [2001:db8::7];branch=z9hG4bKa", ("TLS", "2001:db8::7", 5061)),
    ("SIP/2.0/tcp 192.0.2.7:5070;branch=z9hG4bKa;rport", ("TCP", "192.0.2.7", 5070)),
])
def test_the_caller_is_the_second_via_as_the_proxy_stamped_it(caller_via: str,
                                                              origin: tuple[str, str, int]) -> None:
    """``received`` and ``rport`` win over the sent-by; the port defaults
    by transport."""
    assert proxied_origin(with_vias(PROXY_VIA, caller_via)) == origin


def test_vias_combined_in_one_header_count_one_by_one() -> None:
    request = with_vias(f"{PROXY_VIA}, SIP/2.0/UDP 192.0.2.9:5080;branch=z9hG4bKb")
    assert proxied_origin(request) == ("UDP", "192.0.2.9", 5080)


def test_no_caller_when_the_proxy_made_the_request() -> None:
    assert proxied_origin(with_vias(PROXY_VIA)) is None


@pytest.mark.parametrize("caller_via", [
    "not a via at all",
    "SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKa;rport=99999",
    "SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKa;rport=x1",
])
def test_a_second_via_that_cannot_be_read_is_an_error_not_the_proxys_request(caller_via: str) -> None:
    """Were it taken for the proxy's own request, a caller could make its
    Via unreadable and be trusted as the proxy."""
    with pytest.raises(RemoteProtocolError):
        proxied_origin(with_vias(PROXY_VIA, caller_via))


def test_request_source_is_the_origin_else_the_transport_peer() -> None:
    peer = Peer("UDP", "10.0.0.1", 5060)
    request = with_vias(PROXY_VIA)
    assert request_source(request, peer) is peer
    request.origin = ("UDP", "192.0.2.7", 5062)
    assert request_source(request, peer) == Peer("UDP", "192.0.2.7", 5062)


def test_password_failures_through_a_proxy_count_against_the_caller() -> None:
    """A REGISTER with a wrong password from ``origin`` through the proxy:
    the lockout falls on the caller's address, never on the proxy's, which
    every other phone shares."""
    users = {"bob": "pw"}
    guard = LoginGuard(MemoryDirectory(), LoginBackoff(account_free=100, source_free=2))
    reg = Registrar(DigestServer("callbridge", secret=b"s" * 32), guard,
                    lambda u, r, a: compute_ha1(u, r, users[u], a) if u in users else None)
    from test_registrar import register_with  # the two-step REGISTER, a wrong password
    for _ in range(3):
        decision = register_with(reg, ("UDP", "10.0.0.1", 5060), origin="203.0.113.5", password="nope")
        assert isinstance(decision, RegisterAnswered) and decision.response.status == 403
    assert guard.refusal("carol", "203.0.113.5", 1.5) == "source"
    assert guard.refusal("carol", "10.0.0.1", 1.5) is None
