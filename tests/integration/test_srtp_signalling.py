"""SRTP policy through the engine's SIP path over real UDP: a rule's
``srtp: mandatory`` refuses a plain offer with 488, an SDES offer over
plain UDP is refused with 488 and a security event unless
``srtp_allow_plain_signalling`` is on, and then it is answered RTP/SAVP
with our own key under the offer's tag."""

from __future__ import annotations

import base64
import logging

import pytest

from engine.sip.sdp import parse_sdp

from .conftest import EngineFactory, PeerFactory
from .sip_peer import request, sdp_offer

RULES = """
rules:
  - {name: Secure, pattern: "secure", scenarios: [answer_wait_hangup], srtp: mandatory}
  - {name: Echo, pattern: "echo", scenarios: [answer_wait_hangup]}
"""
KEY = base64.b64encode(bytes(range(30))).decode()


def savp_offer(port: int = 40000) -> bytes:
    text = sdp_offer("127.0.0.1", port).decode().replace("RTP/AVP", "RTP/SAVP")
    return (text + f"a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n").encode()


async def test_mandatory_rule_refuses_plain_offer(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Check a plain RTP/AVP offer to a rule with ``srtp: mandatory`` is answered 488."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    peer.send(request("INVITE", f"sip:secure@127.0.0.1:{engine.ua.port}", local=peer.local,
                      body=sdp_offer("127.0.0.1")))
    assert (await peer.expect(method="INVITE")).status == 488


async def test_sdes_over_plain_udp_refused(make_engine: EngineFactory, peers: PeerFactory,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Check SDES keys offered over plain UDP get 488 and a security event
    naming the source, without the key."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    with caplog.at_level(logging.INFO):
        peer.send(request("INVITE", f"sip:echo@127.0.0.1:{engine.ua.port}", local=peer.local,
                          body=savp_offer()))
        assert (await peer.expect(method="INVITE")).status == 488
    assert "sdes_over_plain" in caplog.text and "127.0.0.1" in caplog.text
    assert KEY not in caplog.text


async def test_sdes_answered_when_plain_signalling_allowed(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Check with the flag on an SDES offer is answered RTP/SAVP under the
    same tag and suite with a fresh key of our own."""
    engine = await make_engine(RULES, srtp_allow_plain_signalling=True)
    peer = await peers.udp(engine)
    peer.send(request("INVITE", f"sip:secure@127.0.0.1:{engine.ua.port}", local=peer.local,
                      body=savp_offer()))
    ok = await peer.expect(200, method="INVITE")
    media = parse_sdp(ok.body).media[0]
    assert media.proto == "RTP/SAVP"
    (crypto,) = media.crypto
    assert (crypto.tag, crypto.suite) == (7, "AES_CM_128_HMAC_SHA1_80")
    assert crypto.key != bytes(range(30)) and len(crypto.key) == 30
