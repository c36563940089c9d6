"""Grants are call attributes only the engine sets: what a SIP peer can
and cannot make the engine believe about it (real sockets on 127.0.0.1)."""

from __future__ import annotations

import logging

import pytest

from logs import wait_for_log

from engine.sip.auth import ClientAuthSession

from .conftest import EngineFactory, PeerFactory
from .sip_peer import Dialog, sdp_offer

RULES = """
rules:
  - {name: Staff, pattern: "staff", kinds: [sip], authenticated: true, scenarios: [who]}
  - {name: Open, pattern: "open", scenarios: [who]}
  - {name: WebOnly, pattern: "web", kinds: [web], scenarios: [who]}
"""

SCENARIOS = {
    "who": """
        from engine.runtime.scenario import AppEvents, Logger, VoxEngine

        def on_alerting(e):
            grant = e.call.grant
            Logger.write(f"headers {sorted(e.headers)} grant "
                         f"{(grant.identity, grant.authenticated_by, grant.role) if grant else None} "
                         f"source {e.call.source}")
            e.call.reject(486)

        VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
    """,
}


async def test_forged_engine_headers_are_dropped(make_engine: EngineFactory, peers: PeerFactory,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Check an INVITE carrying X-Callbridge-Role/-Room/-Identity reaches the
    scenario without them and without a grant, and the forgery is logged as
    a security event with the source address."""
    engine = await make_engine(RULES, SCENARIOS)
    peer = await peers.udp(engine)
    dialog = Dialog(peer, f"sip:open@127.0.0.1:{engine.ua.port}")
    with caplog.at_level(logging.WARNING, logger="callbridge.security"):
        dialog.invite(body=sdp_offer("127.0.0.1"), headers=[
            ("X-Callbridge-Role", "moderator"), ("X-Callbridge-Room", "1234"),
            ("x-callbridge-identity", "admin"), ("X-Other", "kept")])
        assert (await peer.expect(486)).status == 486
    logs = await wait_for_log(engine, "grant")
    assert "headers ['X-Other'] grant None source 127.0.0.1" in logs
    assert any(m.startswith("security event=forged_header src=127.0.0.1") for m in caplog.messages)


async def test_a_rule_for_authenticated_callers_challenges_and_admits_a_sip_user(
        make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Check an anonymous INVITE to an ``authenticated: true`` rule gets a
    401 digest challenge and starts no session; answered with a SIP user's
    password it reaches the scenario with the user's identity; a web-only
    user's or a wrong password does not."""
    engine = await make_engine(RULES, SCENARIOS)
    assert engine.store is not None
    engine.store.create_user("alice", "wonderland", "Alice", sip=True)
    engine.store.create_user("webby", "webpass", "Web")
    peer = await peers.udp(engine)
    uri = f"sip:staff@127.0.0.1:{engine.ua.port}"

    async def attempt(user: str, password: str) -> int:
        before = len(engine.runtime.sessions) + len(engine.runtime.finished)
        dialog = Dialog(peer, uri)
        dialog.invite(body=sdp_offer("127.0.0.1"))
        challenge = await peer.expect(401)
        assert challenge.headers.get("WWW-Authenticate", "").startswith("Digest ")
        assert len(engine.runtime.sessions) + len(engine.runtime.finished) == before  # none started
        auth = ClientAuthSession(user, password)
        realm = auth.on_challenge(challenge.headers.get_all("WWW-Authenticate")).realm
        creds = auth.authorize(realm, method="INVITE", uri=uri)
        dialog.to_tag = challenge.to.tag  # RFC 3261 §17.1.1.3: ACK the non-2xx
        peer.send(dialog.build("ACK", cseq=dialog.cseq, branch=dialog.invite_branch))
        again = Dialog(peer, uri)  # RFC 3261 §22.2 (a new CSeq; a new Call-ID does as well)
        again.invite(body=sdp_offer("127.0.0.1"), headers=[("Authorization", creds.to_header())])
        return (await peer.expect()).status

    assert await attempt("alice", "wonderland") == 486
    logs = await wait_for_log(engine, "grant")
    assert "grant ('alice', 'sip-digest', 'guest')" in logs
    assert await attempt("alice", "wrong") == 401
    assert await attempt("webby", "webpass") == 401


async def test_a_web_only_rule_is_forbidden_to_phones(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Check a SIP INVITE to a rule that takes browsers only gets 403 and no session."""
    engine = await make_engine(RULES, SCENARIOS)
    peer = await peers.udp(engine)
    Dialog(peer, f"sip:web@127.0.0.1:{engine.ua.port}").invite(body=sdp_offer("127.0.0.1"))
    assert (await peer.expect(403)).status == 403
    assert not engine.runtime.sessions and not engine.runtime.finished
