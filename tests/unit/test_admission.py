"""The admission policy on its own: verdicts for requests and stream
connections, kept in the directory it is handed (no sockets, virtual time)."""

from __future__ import annotations

from engine.state.directory import MemoryDirectory
from engine.transport.admission import Admission, SecurityPolicy, Verdict
from tests.unit.sip_helpers import make_request


def never(_request: object) -> bool:
    return False


def test_scanner_dropped_even_when_trusted() -> None:
    """A scanner's User-Agent is dropped before anything else, trusted or not."""
    adm = Admission(SecurityPolicy(trusted=frozenset({"192.0.2.9"})), MemoryDirectory())
    req = make_request("OPTIONS", extra=[("User-Agent", "friendly-scanner")])
    assert adm.check_request(req, "192.0.2.9", 0.0, never) is Verdict.DROP
    assert adm.check_request(make_request("OPTIONS"), "192.0.2.9", 0.0, never) is Verdict.ADMIT


def test_flood_bans_in_the_directory_it_was_handed() -> None:
    """Over the burst the source is banned, and the ban is in the shared
    directory (another node's Admission on it sees it)."""
    directory = MemoryDirectory()
    adm = Admission(SecurityPolicy(rate=0.01, burst=3, ban_seconds=60), directory)
    verdicts = [adm.check_request(make_request("INVITE"), "192.0.2.5", 0.0, never) for _ in range(4)]
    assert verdicts == [Verdict.ADMIT] * 3 + [Verdict.BAN]
    other = Admission(SecurityPolicy(), directory)
    assert other.is_banned("192.0.2.5", 1.0) and not other.is_banned("192.0.2.5", 61.0)


def test_in_dialog_and_ack_not_counted() -> None:
    """ACKs and requests that belong to a dialog take no token; a made-up
    To tag does."""
    adm = Admission(SecurityPolicy(rate=0.01, burst=1), MemoryDirectory())
    for _ in range(5):
        assert adm.check_request(make_request("ACK"), "192.0.2.5", 0.0, never) is Verdict.ADMIT
        bye = make_request("BYE", to_tag="t1")
        assert adm.check_request(bye, "192.0.2.5", 0.0, lambda r: True) is Verdict.ADMIT
    assert adm.check_request(make_request("BYE", to_tag="x"), "192.0.2.5", 0.0, never) is Verdict.ADMIT
    assert adm.check_request(make_request("BYE", to_tag="y"), "192.0.2.5", 0.0, never) is Verdict.BAN


def test_message_bucket_refuses() -> None:
    """Out-of-dialog MESSAGEs over their own rate are refused (503), not banned."""
    adm = Admission(SecurityPolicy(message_rate=0.01, message_burst=2), MemoryDirectory())
    verdicts = [adm.check_request(make_request("MESSAGE"), "192.0.2.5", 0.0, never) for _ in range(3)]
    assert verdicts == [Verdict.ADMIT, Verdict.ADMIT, Verdict.REFUSE]


def test_connections_per_source_and_in_all() -> None:
    """Inbound stream connections are capped per untrusted source and in
    all; closing one frees its slot."""
    adm = Admission(SecurityPolicy(max_tcp_per_source=2, max_tcp_connections=10), MemoryDirectory())
    assert adm.open_connection("192.0.2.5", 0.0, inbound=True, open_now=0)
    assert adm.open_connection("192.0.2.5", 0.0, inbound=True, open_now=1, transport="TLS")
    assert not adm.open_connection("192.0.2.5", 0.0, inbound=True, open_now=2)
    assert adm.open_connection("192.0.2.5", 0.0, inbound=False, open_now=2)  # ours: not counted
    assert not adm.open_connection("192.0.2.6", 0.0, inbound=True, open_now=10)
    adm.close_connection("192.0.2.5")
    assert adm.connections_from("192.0.2.5") == 1
    assert adm.open_connection("192.0.2.5", 0.0, inbound=True, open_now=2)
