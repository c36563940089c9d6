"""The shipped rules.yaml and scenarios/ against SIP callers, for what the
last rule (P2P, ``.*``) changes: a number that reaches no user still gets
404, and a phone cannot dial a conference (``conf_<id>``) straight, around
the PIN check of the conference number."""

from __future__ import annotations

from pathlib import Path

import pytest

from logs import wait_for_log

from .conftest import EngineFactory, PeerFactory
from .sip_peer import Dialog, sdp_offer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("number", "log"), [
    ("nobody", "is not registered"),
    ("conf_77", "refused a sip call dialed straight to conf_77"),
])
async def test_unreachable_numbers_get_404(make_engine: EngineFactory, peers: PeerFactory,
                                           number: str, log: str) -> None:
    """Check an INVITE for a user nobody can reach (P2P) and one straight
    to a conference (refused by the conference scenario) both get 404."""
    engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios")
    peer = await peers.udp(engine)
    dialog = Dialog(peer, f"sip:{number}@127.0.0.1:{engine.ua.port}")
    dialog.invite(body=sdp_offer("127.0.0.1"))
    final = await peer.expect(404)
    assert final.status == 404
    dialog.to_tag = final.to.tag  # RFC 3261 §17.1.1.3: ACK the non-2xx
    peer.send(dialog.build("ACK", cseq=1, branch=dialog.invite_branch))
    assert log in await wait_for_log(engine, log)
