"""SIP methods against a real engine (over UDP unless said): CANCEL, BYE, INFO, MESSAGE,
re-INVITE (hold and resume), 404 routing, scenario failures, the 2xx
retransmission when the ACK is missing, and 405/501."""

from __future__ import annotations

import pytest

from engine.server import Engine
from engine.sip.message import SipRequest
from engine.sip.sdp import media_direction, parse_sdp

from .conftest import EngineFactory, FAST_TIMERS, PeerFactory, use_timers, wait_for_log, wait_until
from .sip_peer import Dialog, request, sdp_offer

RULES = """
rules:
  - {name: Hangup, pattern: "echo", scenarios: [answer_wait_hangup]}
  - {name: Ring, pattern: "ring", scenarios: [ring_only]}
  - {name: Raise, pattern: "raise", scenarios: [raises]}
  - {name: InDialog, pattern: "talk", scenarios: [in_dialog]}
"""


def target(engine: Engine, number: str) -> str:
    return f"sip:{number}@127.0.0.1:{engine.ua.port}"


def direction(body: bytes) -> str:
    """The effective direction of the first stream of an SDP body."""
    sdp = parse_sdp(body)
    return media_direction(sdp.media[0], sdp)


async def test_cancel_before_answer(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """ring_only: 100 and 180, then CANCEL gets 200 and the INVITE 487; the
    ACK for the 487 completes it and the session log says 'ended
    Disconnected 487'."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    dialog = Dialog(peer, target(engine, "ring"))
    dialog.invite()
    ringing = await peer.expect(180)
    assert ringing.to.tag
    cancel = request("CANCEL", dialog.uri, local=peer.local, branch=dialog.invite_branch,
                     call_id=dialog.call_id, from_tag=dialog.from_tag, cseq=1, contact=False)
    peer.send(cancel)
    got = {}
    for _ in range(2):
        resp = await peer.expect()
        got[resp.cseq.method] = resp
    assert got["CANCEL"].status == 200
    terminated = got["INVITE"]
    assert terminated.status == 487
    assert terminated.to.tag == ringing.to.tag
    # RFC 3261 §17.1.1.3: the ACK to a non-2xx has the INVITE's branch.
    dialog.to_tag = terminated.to.tag
    peer.send(dialog.build("ACK", cseq=1, branch=dialog.invite_branch))
    logs = await wait_for_log(engine, "ended Disconnected 487")
    assert "ended Disconnected 487" in logs
    await peer.silence(0.2)  # the ACK stopped the 487 retransmissions
    assert not engine.ua.calls


async def test_cancel_unknown_transaction_gets_481(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A CANCEL matching no INVITE transaction gets 481."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    peer.send(request("CANCEL", target(engine, "ring"), local=peer.local, contact=False))
    resp = await peer.expect()
    assert resp.status == 481 and resp.cseq.method == "CANCEL"


async def test_bye_unknown_dialog_gets_481(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A BYE for no dialog (with and without a To tag) gets 481."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    peer.send(request("BYE", target(engine, "talk"), local=peer.local, to_tag="nosuch", cseq=2))
    assert (await peer.expect()).status == 481
    peer.send(request("BYE", target(engine, "talk"), local=peer.local, cseq=2))
    assert (await peer.expect()).status == 481


async def test_info_and_message_in_dialog_reach_scenario(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """INFO (dtmf-relay) and MESSAGE (with an X- header) inside a call get
    200 and reach the scenario's listeners (in_dialog.py logs them); the
    caller's BYE ends the call."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    dialog = Dialog(peer, target(engine, "talk"))
    await dialog.call()
    await wait_for_log(engine, "connected")
    dialog.send("INFO", body=b"Signal=5\r\nDuration=160\r\n", content_type="application/dtmf-relay")
    assert (await peer.expect(method="INFO")).status == 200
    dialog.send("MESSAGE", body=b"hello engine", content_type="text/plain",
                headers=[("X-Room", "blue")])
    assert (await peer.expect(method="MESSAGE")).status == 200
    dialog.send("BYE")
    assert (await peer.expect(method="BYE")).status == 200
    logs = await wait_for_log(engine, "ended Disconnected 200")
    assert "info application/dtmf-relay b'Signal=5\\r\\nDuration=160\\r\\n'" in logs, logs
    assert "message 'hello engine' room=blue" in logs, logs
    assert "ended Disconnected 200" in logs


async def test_reinvite_hold_and_resume(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A re-INVITE with a=sendonly (hold) gets a 200 whose SDP says
    recvonly; a second re-INVITE with sendrecv gets sendrecv. Each is
    ACKed, the scenario sees both, and the dialog survives."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    host = peer.local[0]
    dialog = Dialog(peer, target(engine, "talk"))
    first = await dialog.call()
    assert direction(first.body) == "sendrecv"
    dialog.invite(sdp_offer(host, direction="sendonly", version=2))
    held = await peer.expect(200, method="INVITE")
    assert held.cseq.number == dialog.last_invite_cseq
    assert direction(held.body) == "recvonly"
    dialog.ack()
    dialog.invite(sdp_offer(host, direction="sendrecv", version=3))
    resumed = await peer.expect(200, method="INVITE")
    assert direction(resumed.body) == "sendrecv"
    dialog.ack()
    await peer.silence(0.2)  # both 200s were ACKed: no retransmission
    logs = await wait_for_log(engine, "reinvite")
    assert logs.count("reinvite") == 2
    dialog.send("BYE")
    assert (await peer.expect(method="BYE")).status == 200


async def test_out_of_dialog_message_without_rule_gets_404(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """An out-of-dialog MESSAGE to a number no rule matches gets 404."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    peer.send(request("MESSAGE", target(engine, "nobody"), local=peer.local,
                      body=b"hi", content_type="text/plain"))
    assert (await peer.expect()).status == 404


async def test_invite_to_unknown_number_gets_404(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """With rules that have no catch-all, an INVITE to another number gets
    100 then 404 (and the ACK ends it)."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    dialog = Dialog(peer, target(engine, "5551234"))
    dialog.invite()
    resp = await peer.expect()
    assert resp.status == 404
    dialog.to_tag = resp.to.tag
    peer.send(dialog.build("ACK", cseq=1, branch=dialog.invite_branch))
    assert not engine.ua.calls


async def test_scenario_that_raises_gets_500_and_engine_goes_on(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A scenario raising in its CallAlerting handler ends the call with 500
    (the traceback goes to the session log), and the next call to another
    scenario connects."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    dialog = Dialog(peer, target(engine, "raise"))
    dialog.invite()
    resp = await peer.expect()
    assert resp.status == 500
    dialog.to_tag = resp.to.tag
    peer.send(dialog.build("ACK", cseq=1, branch=dialog.invite_branch))
    logs = await wait_for_log(engine, "scenario bug on purpose")
    assert "RuntimeError: scenario bug on purpose" in logs
    second = Dialog(peer, target(engine, "talk"))
    await second.call()
    second.send("BYE")
    assert (await peer.expect(method="BYE")).status == 200


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_200_retransmitted_until_ack_then_bye(make_engine: EngineFactory, peers: PeerFactory, transport: str) -> None:
    """Without an ACK the 200 OK is retransmitted over UDP (T1 doubling;
    sent once over TCP), and after 64*T1 the engine ends the call with a
    BYE (Reason 408); the scenario sees Disconnected 408."""
    engine = await make_engine(RULES)
    use_timers(engine, FAST_TIMERS)
    peer = await peers(engine, transport=transport)
    dialog = Dialog(peer, target(engine, "talk"))
    dialog.invite()
    oks = 0
    while True:
        msg = await peer.recv(3.0)
        if isinstance(msg, SipRequest):
            break
        if msg.status == 200:
            oks += 1
    assert msg.method == "BYE", msg
    assert "408" in (msg.headers.get("Reason") or "")
    if transport == "UDP":
        assert oks >= 4, oks  # the first 200 and its retransmissions
    else:
        assert oks == 1
    peer.send(msg.create_response(200).to_bytes())
    logs = await wait_for_log(engine, "ended Disconnected 408")
    assert "ended Disconnected 408" in logs
    assert await wait_until(lambda: not engine.ua.calls, 2.0)


async def test_update_subscribe_405_unknown_method_501(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """UPDATE and SUBSCRIBE get 405 with Allow (out of dialog and in a
    call); an unknown method gets 501."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    for method in ("UPDATE", "SUBSCRIBE"):
        peer.send(request(method, target(engine, "talk"), local=peer.local,
                          headers=[("Event", "presence")] if method == "SUBSCRIBE" else []))
        resp = await peer.expect()
        assert resp.status == 405, (method, resp.status)
        assert "INVITE" in (resp.headers.get("Allow") or "")
    peer.send(request("FROBNICATE", target(engine, "talk"), local=peer.local))
    assert (await peer.expect()).status == 501
    dialog = Dialog(peer, target(engine, "talk"))
    await dialog.call()
    dialog.send("UPDATE")
    resp = await peer.expect(method="UPDATE")
    assert resp.status == 405 and resp.headers.get("Allow")
    dialog.send("BYE")
    assert (await peer.expect(method="BYE")).status == 200


async def test_invite_without_offer_gets_offer_in_200(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """An INVITE without SDP gets the engine's offer in the 200 (RFC 3264
    §3); the caller's answer in the ACK connects the call."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    dialog = Dialog(peer, target(engine, "talk"))
    dialog.peer.send(dialog.build("INVITE", branch=dialog.invite_branch))
    ok = await peer.expect(200, method="INVITE")
    assert ok.body and direction(ok.body) == "sendrecv"
    dialog.learn(ok)
    peer.send(dialog.build("ACK", cseq=1, body=sdp_offer(peer.local[0])))
    logs = await wait_for_log(engine, "connected")
    assert "connected" in logs
    dialog.send("BYE")
    assert (await peer.expect(method="BYE")).status == 200
