"""The shipped rules.yaml and scenarios/ against SIP callers, for what the
last rules (P2P, ``.*``) change: an anonymous phone reaches no user and
cannot dial a conference (``conf_<id>``) straight, around the PIN check of
the conference number."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import EngineFactory, PeerFactory
from .sip_peer import Dialog, sdp_offer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("number", ["nobody", "conf_77", "joinconf"])
async def test_anonymous_phones_reach_no_user_and_no_conference(make_engine: EngineFactory, peers: PeerFactory,
                                                                number: str) -> None:
    """Check an anonymous INVITE for a user name (P2P takes phones only with
    a SIP user's digest), for a conference straight (Fwd takes internal calls
    only) and for joinconf (browsers only) gets a 401 digest challenge and
    starts no session."""
    engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios")
    peer = await peers.udp(engine)
    dialog = Dialog(peer, f"sip:{number}@127.0.0.1:{engine.ua.port}")
    dialog.invite(body=sdp_offer("127.0.0.1"))
    final = await peer.expect(401)
    assert final.status == 401 and final.headers.get("WWW-Authenticate", "").startswith("Digest ")
    dialog.to_tag = final.to.tag  # RFC 3261 §17.1.1.3: ACK the non-2xx
    peer.send(dialog.build("ACK", cseq=1, branch=dialog.invite_branch))
    assert engine.runtime.sessions == {} and not engine.runtime.finished
