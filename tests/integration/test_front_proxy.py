"""Nodes behind a front proxy (``--sip-proxies``; Kamailio's dispatcher in
``deploy/kamailio``): a request a listed proxy forwards is the caller's, at
the address the proxy stamped on the caller's Via; the proxy itself is
trusted and gets the answers. Everyone else's Vias are not believed.

Real sockets: the test's UDP socket plays the proxy, writing its own Via
over the caller's, as a stateless proxy does (RFC 3261 §16.6 step 8)."""

from __future__ import annotations

import secrets
import time

from engine.transport.sip_endpoint import SecurityPolicy

from .conftest import EngineFactory, PeerFactory, wait_until
from .sip_peer import UdpPeer, request, sdp_offer

RULES = """
rules:
  - {name: Office, pattern: "office", networks: [192.0.2.0/24], scenarios: [answer_wait_hangup]}
"""


def forwarded(proxy: UdpPeer, data: bytes) -> bytes:
    """``data`` as the proxy forwards it: its own Via on top."""
    host, port = proxy.local
    via = f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)}\r\n".encode()
    return data.replace(b"\r\nVia: ", b"\r\n" + via + b"Via: ", 1)


def from_caller(method: str, port: int, caller: str, *, stamped: bool = True, **kw: object) -> bytes:
    """A request the caller at ``caller`` (``host:port``) sent, with the
    ``received`` and ``rport`` a proxy stamps on its Via when ``stamped``."""
    host, _, cport = caller.partition(":")
    data = request(method, f"sip:office@127.0.0.1:{port}", local=(host, int(cport)), **kw)  # type: ignore[arg-type]
    if stamped:
        data = data.replace(b";rport\r\n", f";received={host};rport={cport}\r\n".encode(), 1)
    return data


async def test_a_proxied_call_is_the_callers_and_matched_by_its_address(make_engine: EngineFactory,
                                                                        peers: PeerFactory) -> None:
    """Through the proxy, a caller in the rule's network is answered (to the
    proxy) and the call's source is the caller's address; one outside it
    gets 403, though both came from the same proxy socket."""
    engine = await make_engine(RULES, policy=SecurityPolicy(proxies=frozenset({"127.0.0.1"})))
    port = engine.ua.port
    proxy = await peers.udp(engine)
    proxy.send(forwarded(proxy, from_caller("INVITE", port, "192.0.2.7:5062", body=sdp_offer("192.0.2.7"))))
    answer = await proxy.expect(method="INVITE")
    assert answer.status == 200
    assert len(answer.headers.get_all("Via")) == 2  # the proxy's and the caller's, for the proxy to route back
    call = next(iter(engine.ua.calls))
    assert call.source == "192.0.2.7"
    proxy.send(forwarded(proxy, from_caller("INVITE", port, "198.51.100.9:5060", body=sdp_offer("198.51.100.9"))))
    assert (await proxy.expect(method="INVITE")).status == 403


async def test_vias_from_a_source_that_is_no_proxy_are_not_believed(make_engine: EngineFactory,
                                                                    peers: PeerFactory) -> None:
    """The same forwarded INVITE from an address that is not a listed proxy
    is its sender's own (127.0.0.1, outside the rule's network): 403."""
    engine = await make_engine(RULES, policy=SecurityPolicy(proxies=frozenset({"127.0.0.2"})))
    port = engine.ua.port
    stranger = await peers.udp(engine)
    stranger.send(forwarded(stranger, from_caller("INVITE", port, "192.0.2.7:5062", body=sdp_offer("192.0.2.7"))))
    assert (await stranger.expect(method="INVITE")).status == 403
    assert not engine.ua.calls


async def test_a_proxys_own_request_is_the_proxys(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A request with only the proxy's Via (its keep-alive OPTIONS, or an
    INVITE it made) comes from the proxy: outside the rule's network, 403."""
    engine = await make_engine(RULES, policy=SecurityPolicy(proxies=frozenset({"127.0.0.1"})))
    port = engine.ua.port
    proxy = await peers.udp(engine)
    proxy.send(request("INVITE", f"sip:office@127.0.0.1:{port}", local=proxy.local, body=sdp_offer("127.0.0.1")))
    assert (await proxy.expect(method="INVITE")).status == 403
    proxy.send(request("OPTIONS", f"sip:office@127.0.0.1:{port}", local=proxy.local))
    assert (await proxy.expect(method="OPTIONS")).status == 200


async def test_the_rate_limit_bans_the_caller_not_the_proxy(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A caller flooding through the proxy is banned by its own address
    (``burst`` 3: its fourth OPTIONS goes unanswered, and so does
    everything after); another caller through the same proxy is still
    answered, and the proxy is never banned."""
    policy = SecurityPolicy(rate=0.01, burst=3, ban_seconds=60, proxies=frozenset({"127.0.0.1"}),
                            trusted=frozenset())
    engine = await make_engine(RULES, policy=policy)
    port = engine.ua.port
    proxy = await peers.udp(engine)
    for _ in range(3):
        proxy.send(forwarded(proxy, from_caller("OPTIONS", port, "203.0.113.5:5060")))
        assert (await proxy.expect(method="OPTIONS")).status == 200
    proxy.send(forwarded(proxy, from_caller("OPTIONS", port, "203.0.113.5:5060")))
    await proxy.silence(0.2)
    now = time.monotonic()
    assert engine.directory.is_banned("203.0.113.5", now)
    assert not engine.directory.is_banned("127.0.0.1", now)
    proxy.send(forwarded(proxy, from_caller("OPTIONS", port, "203.0.113.5:5060")))
    await proxy.silence(0.2)
    proxy.send(forwarded(proxy, from_caller("OPTIONS", port, "203.0.113.6:5060")))
    assert (await proxy.expect(method="OPTIONS")).status == 200
    await wait_until(lambda: engine.ua.endpoint.stats["banned"] >= 2)


async def test_an_unstamped_via_gives_its_sent_by(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A proxy that stamped nothing on the caller's Via: the caller is its
    sent-by (here in the network: answered, the call's source that host)."""
    engine = await make_engine(RULES, policy=SecurityPolicy(proxies=frozenset({"127.0.0.1"})))
    port = engine.ua.port
    proxy = await peers.udp(engine)
    proxy.send(forwarded(proxy, from_caller("INVITE", port, "192.0.2.44:5070", stamped=False,
                                            body=sdp_offer("192.0.2.44"))))
    assert (await proxy.expect(method="INVITE")).status == 200
    assert next(iter(engine.ua.calls)).source == "192.0.2.44"


async def test_an_unreadable_via_below_the_proxys_is_refused(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A caller whose Via the proxy forwarded unreadable (``rport=x``) gets
    400 through the proxy, and no call: nobody can tell who sent it, and it
    is never taken for the trusted proxy's own request (the parser refuses
    the message first; ``proxied_origin`` raises too, unit-tested)."""
    engine = await make_engine(RULES, policy=SecurityPolicy(proxies=frozenset({"127.0.0.1"})))
    port = engine.ua.port
    proxy = await peers.udp(engine)
    data = from_caller("INVITE", port, "192.0.2.7:5062", stamped=False, body=sdp_offer("192.0.2.7"))
    proxy.send(forwarded(proxy, data.replace(b";rport\r\n", b";rport=x\r\n", 1)))
    refused = await proxy.recv_raw()  # raw: it echoes the Via our parser refuses too
    assert refused.startswith(b"SIP/2.0 400 ") and b"rport" in refused.split(b"\r\n")[0]
    assert not engine.ua.calls
