"""Call transfer against a real engine over loopback UDP: a phone's REFER
(RFC 3515) accepted, refused by default, malformed, too frequent or outside
a dialog; NOTIFY sipfrag progress and the BYE after it; ``Refer-Sub:
false`` (RFC 4488); ``call.transfer_to`` sending REFER (blind, refused, with
the bridge fallback); an INVITE with Replaces (RFC 3891); and a browser
leg moved by ``transfer_to`` told so on its SDK socket (``transferred``)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient

from engine.server import Engine
from engine.web.app import create_app
from engine.sip.message import SipRequest, SipResponse
from engine.sip.refer import parse_sipfrag

from .conftest import EngineFactory, PeerFactory, wait_for_log
from .sip_peer import Dialog, UdpPeer, request, sdp_offer
from sdk_peer import BrowserPeer, SdkSocket

RULES = """
rules:
  - {name: Transfer, pattern: "xfer", scenarios: [xfer]}
  - {name: Plain, pattern: "plain", scenarios: [plain]}
"""

XFER = '''
from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call

    def requested(ev):
        Logger.write(f"transfer requested {ev.target} replaces={ev.replaces}")
        if "nobody" in ev.target:
            ev.reject(486)
        else:
            ev.accept()

    def message(ev):
        kind, _, where = ev.text.partition(" ")
        call.transfer_to(where, fallback="bridge" if kind == "bridge" else None)

    call.add_event_listener(CallEvents.TransferRequested, requested)
    call.add_event_listener(CallEvents.MessageReceived, message)
    call.add_event_listener(CallEvents.TransferComplete, lambda ev: Logger.write(f"transfer complete {ev.code}"))
    call.add_event_listener(
        CallEvents.TransferFailed,
        lambda ev: Logger.write(f"transfer failed {ev.code} refused={ev.refused} fallback={ev.new_call is not None}"))
    call.add_event_listener(CallEvents.Disconnected, lambda ev: Logger.write(f"ended {ev.code} {ev.reason}"))
    await call.answer()
    Logger.write("connected")


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
'''

PLAIN = '''
from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    e.call.add_event_listener(CallEvents.Disconnected, lambda ev: Logger.write(f"ended {ev.code} {ev.reason}"))
    await e.call.answer()
    Logger.write("connected")


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
'''

SCENARIOS = {"xfer": XFER, "plain": PLAIN}


def target(engine: Engine, number: str) -> str:
    return f"sip:{number}@127.0.0.1:{engine.ua.port}"


async def next_request(peer: UdpPeer, method: str, seen: list[SipRequest]) -> SipRequest:
    """The next ``method`` request; other requests on the way are answered
    200 and kept in ``seen``."""
    while True:
        msg = await peer.recv()
        if isinstance(msg, SipRequest):
            if msg.method == method:
                return msg
            seen.append(msg)
            if msg.method != "ACK":
                peer.send(msg.create_response(200).to_bytes())


async def answer_invite(peer: UdpPeer, status: int = 200) -> SipRequest:
    """Act as the transfer target: take the engine's INVITE, ring, then
    answer ``status`` (with SDP for a 200)."""
    invite = await peer.recv_request("INVITE")
    ringing = invite.create_response(180, to_tag="target")
    peer.send(ringing.to_bytes())
    final = invite.create_response(status, to_tag="target")
    if status == 200:
        final.headers.add("Contact", f"<sip:target@127.0.0.1:{peer.local[1]}>")
        final.headers.add("Content-Type", "application/sdp")
        final.body = sdp_offer("127.0.0.1", 41000)
    peer.send(final.to_bytes())
    if status == 200:
        await peer.recv_request("ACK")
    return invite


def refer(dialog: Dialog, refer_to: str, *extra: tuple[str, str]) -> None:
    dialog.send("REFER", headers=[("Refer-To", refer_to), *extra])


async def connected_call(engine: Engine, peers: PeerFactory, number: str = "xfer") -> tuple[UdpPeer, Dialog]:
    phone = await peers.udp(engine)
    dialog = Dialog(phone, target(engine, number))
    await dialog.call()
    await wait_for_log(engine, "connected")
    return phone, dialog


async def test_refer_accepted_notifies_progress_then_bye(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A phone's REFER the scenario accepts: 202, NOTIFY 100 Trying, the
    engine calls the Refer-To target, NOTIFY 180 Ringing and 200 OK
    (``Event: refer;id=<REFER CSeq>``, the last one terminating the
    subscription), then BYE to the transferor."""
    engine = await make_engine(RULES, SCENARIOS)
    phone, dialog = await connected_call(engine, peers)
    c = await peers.udp(engine)
    refer(dialog, f"<sip:carol@127.0.0.1:{c.local[1]}>")
    refer_cseq = dialog.cseq
    assert (await phone.expect(method="REFER")).status == 202
    seen: list[SipRequest] = []
    trying = await next_request(phone, "NOTIFY", seen)
    assert trying.headers.get("Event") == f"refer;id={refer_cseq}"
    assert trying.content_type == "message/sipfrag"
    assert parse_sipfrag(trying.body) == (100, "Trying")
    assert (trying.headers.get("Subscription-State") or "").startswith("active;expires=")
    phone.send(trying.create_response(200).to_bytes())
    invite = await answer_invite(c)
    assert invite.uri_text == f"sip:carol@127.0.0.1:{c.local[1]}"
    statuses = []
    for _ in range(2):
        notify = await next_request(phone, "NOTIFY", seen)
        phone.send(notify.create_response(200).to_bytes())
        statuses.append((parse_sipfrag(notify.body)[0], notify.headers.get("Subscription-State")))
    assert statuses == [(180, statuses[0][1]), (200, "terminated;reason=noresource")]
    assert (statuses[0][1] or "").startswith("active")
    bye = await next_request(phone, "BYE", seen)
    phone.send(bye.create_response(200).to_bytes())
    logs = await wait_for_log(engine, "ended 200 Transferred")
    assert f"transfer requested sip:carol@127.0.0.1:{c.local[1]} replaces=None" in logs
    assert "transfer complete 200" in logs
    assert "ended 200 Transferred" in logs


async def test_refer_target_fails_notify_carries_failure(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """The target answers 486: the final NOTIFY says ``SIP/2.0 486`` and the
    transferor's call goes on (RFC 3515: only success ends it)."""
    engine = await make_engine(RULES, SCENARIOS)
    phone, dialog = await connected_call(engine, peers)
    c = await peers.udp(engine)
    refer(dialog, f"<sip:carol@127.0.0.1:{c.local[1]}>")
    assert (await phone.expect(method="REFER")).status == 202
    await answer_invite(c, 486)
    seen: list[SipRequest] = []
    while True:
        notify = await next_request(phone, "NOTIFY", seen)
        phone.send(notify.create_response(200).to_bytes())
        if parse_sipfrag(notify.body)[0] >= 200:
            break
    assert parse_sipfrag(notify.body)[0] == 486
    assert notify.headers.get("Subscription-State") == "terminated;reason=noresource"
    logs = await wait_for_log(engine, "transfer failed 486")
    assert "transfer failed 486 refused=False" in logs
    dialog.send("BYE")
    assert (await phone.expect(method="BYE")).status == 200  # the call was still up


async def test_refer_sub_false_no_notify(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """``Refer-Sub: false`` (RFC 4488): the 202 says ``Refer-Sub: false``
    and no NOTIFY comes; the transfer still completes with a BYE."""
    engine = await make_engine(RULES, SCENARIOS)
    phone, dialog = await connected_call(engine, peers)
    c = await peers.udp(engine)
    refer(dialog, f"<sip:carol@127.0.0.1:{c.local[1]}>", ("Refer-Sub", "false"))
    accepted = await phone.expect(method="REFER")
    assert accepted.status == 202 and accepted.headers.get("Refer-Sub") == "false"
    await answer_invite(c)
    seen: list[SipRequest] = []
    await next_request(phone, "BYE", seen)
    assert [r.method for r in seen] == []


async def test_refer_without_listener_gets_603(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Closed by default: a REFER to a call whose scenario does not listen
    for TransferRequested gets 603 and nothing is dialed."""
    engine = await make_engine(RULES, SCENARIOS)
    phone, dialog = await connected_call(engine, peers, "plain")
    c = await peers.udp(engine)
    refer(dialog, f"<sip:carol@127.0.0.1:{c.local[1]}>")
    assert (await phone.expect(method="REFER")).status == 603
    await c.silence(0.3)


async def test_refer_rejected_by_scenario(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """``e.reject(486)`` answers the REFER 486."""
    engine = await make_engine(RULES, SCENARIOS)
    phone, dialog = await connected_call(engine, peers)
    refer(dialog, "<sip:nobody@127.0.0.1:9>")
    assert (await phone.expect(method="REFER")).status == 486


@pytest.mark.parametrize("refer_to", [
    "<http://evil.example/x>",
    "<tel:+15551234>",
    "<sip:" + "a" * 1100 + "@127.0.0.1>",
    "<sip:bob@127.0.0.1?Replaces=nonsense>",
])
async def test_bad_refer_to_gets_400(make_engine: EngineFactory, peers: PeerFactory, refer_to: str) -> None:
    """A Refer-To that is not sip:/sips:, is huge, or carries a broken
    Replaces gets 400 and a ``bad_refer`` security event."""
    engine = await make_engine(RULES, SCENARIOS)
    phone, dialog = await connected_call(engine, peers)
    refer(dialog, refer_to)
    assert (await phone.expect(method="REFER")).status == 400


async def test_refer_rate_bounded(make_engine: EngineFactory, peers: PeerFactory,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """Three REFERs in a row are heard (each rejected by the scenario), the
    fourth gets 403 and a ``refer_rate`` security event."""
    engine = await make_engine(RULES, SCENARIOS)
    phone, dialog = await connected_call(engine, peers)
    codes = []
    for _ in range(4):
        refer(dialog, "<sip:nobody@127.0.0.1:9>")
        codes.append((await phone.expect(method="REFER")).status)
    assert codes == [486, 486, 486, 403]
    assert "event=refer_rate" in caplog.text


async def test_refer_outside_dialog(make_engine: EngineFactory, peers: PeerFactory,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """A REFER with no To tag gets 403 (``refer_outside_dialog``); one for
    an unknown dialog 481 (``refer_unknown_dialog``); a NOTIFY outside a
    subscription 481."""
    engine = await make_engine(RULES, SCENARIOS)
    peer = await peers.udp(engine)
    peer.send(request("REFER", target(engine, "xfer"), local=peer.local,
                      headers=[("Refer-To", "<sip:x@127.0.0.1>")]))
    assert (await peer.expect()).status == 403
    peer.send(request("REFER", target(engine, "xfer"), local=peer.local, to_tag="nosuch",
                      headers=[("Refer-To", "<sip:x@127.0.0.1>")]))
    assert (await peer.expect()).status == 481
    peer.send(request("NOTIFY", target(engine, "xfer"), local=peer.local, to_tag="nosuch",
                      headers=[("Event", "refer")]))
    assert (await peer.expect()).status == 481
    assert "event=refer_outside_dialog" in caplog.text
    assert "event=refer_unknown_dialog" in caplog.text


async def test_transfer_to_sends_refer_and_completes(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """``call.transfer_to(uri)``: the phone gets a REFER with that Refer-To;
    202, NOTIFY 100 then 200 (each answered 200 by the engine) give
    TransferComplete 200 and a BYE to the phone."""
    engine = await make_engine(RULES, SCENARIOS)
    phone, dialog = await connected_call(engine, peers)
    dialog.send("MESSAGE", body=b"blind sip:dave@127.0.0.1:5999", content_type="text/plain")
    seen: list[SipRequest] = []
    ref = await next_request(phone, "REFER", seen)
    assert ref.headers.get("Refer-To") == "<sip:dave@127.0.0.1:5999>"
    phone.send(ref.create_response(202).to_bytes())
    answers: list[int] = []
    for frag, state in ((b"SIP/2.0 100 Trying\r\n", "active;expires=60"),
                        (b"SIP/2.0 200 OK\r\n", "terminated;reason=noresource")):
        dialog.send("NOTIFY", body=frag, content_type="message/sipfrag",
                    headers=[("Event", f"refer;id={ref.cseq.number}"), ("Subscription-State", state)])
        answers.append((await phone.expect(method="NOTIFY")).status)
    assert answers == [200, 200]
    await next_request(phone, "BYE", seen)
    logs = await wait_for_log(engine, "ended 200 Transferred")
    assert "transfer complete 200" in logs


async def test_transfer_refused_fails_then_bridge_fallback(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A phone answering REFER 405 gives TransferFailed 405 (refused); with
    ``fallback="bridge"`` the engine calls the target itself."""
    engine = await make_engine(RULES, SCENARIOS)
    phone, dialog = await connected_call(engine, peers)
    dialog.send("MESSAGE", body=b"blind sip:dave@127.0.0.1:5999", content_type="text/plain")
    seen: list[SipRequest] = []
    ref = await next_request(phone, "REFER", seen)
    phone.send(ref.create_response(405).to_bytes())
    logs = await wait_for_log(engine, "transfer failed 405")
    assert "transfer failed 405 refused=True fallback=False" in logs
    c = await peers.udp(engine)
    dialog.send("MESSAGE", body=f"bridge sip:dave@127.0.0.1:{c.local[1]}".encode(), content_type="text/plain")
    ref = await next_request(phone, "REFER", seen)
    phone.send(ref.create_response(501).to_bytes())
    invite = await answer_invite(c)
    assert invite.uri_text == f"sip:dave@127.0.0.1:{c.local[1]}"
    logs = await wait_for_log(engine, "transfer failed 501")
    assert "transfer failed 501 refused=True fallback=True" in logs
    assert "ended" not in logs  # the phone stays, bridged to the new call


async def test_invite_with_replaces(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """An INVITE whose Replaces names our connected call is answered, and
    the old call gets BYE (reason Replaced); an unknown dialog gets 481."""
    engine = await make_engine(RULES, SCENARIOS)
    phone, dialog = await connected_call(engine, peers, "plain")
    newcomer = await peers.udp(engine)
    unknown = Dialog(newcomer, target(engine, "plain"))
    unknown.invite(headers=[("Replaces", "nosuch;to-tag=a;from-tag=b")])
    assert (await newcomer.expect(method="INVITE")).status == 481
    assert dialog.to_tag is not None
    replacing = Dialog(newcomer, target(engine, "plain"))
    replacing.invite(headers=[("Replaces", f"{dialog.call_id};to-tag={dialog.to_tag};from-tag={dialog.from_tag}"),
                              ("Require", "replaces")])
    ok = await newcomer.expect(200, method="INVITE")
    replacing.learn(ok)
    replacing.ack()
    seen: list[SipRequest] = []
    bye = await next_request(phone, "BYE", seen)
    assert "Call replaced" in (bye.headers.get("Reason") or "")
    logs = await wait_for_log(engine, "ended 200 Replaced")
    assert "ended 200 Replaced" in logs
    replacing.send("BYE")
    resp: SipResponse = await newcomer.expect(method="BYE")
    assert resp.status == 200


async def test_browser_leg_is_told_of_its_transfer(
        make_engine: EngineFactory, peers: PeerFactory,
        aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]) -> None:
    """A browser's call whose scenario ``transfer_to``s it (a re-bridge:
    browsers get no REFER): once the target answers, the browser gets a
    ``transferred`` frame for that call (and nothing else ends it), and the
    scenario ``TransferComplete`` 200."""
    engine = await make_engine(RULES, SCENARIOS)
    assert engine.store is not None
    engine.store.create_user("alice", "wonderland", "Alice")
    client = await aiohttp_client(create_app(engine))
    sock = SdkSocket(await client.ws_connect("/ws"))
    browser = BrowserPeer()
    try:
        await sock.hello()
        assert (await sock.login("alice", "wonderland"))["type"] == "login_ok"
        await sock.send({"type": "call", "call": "c1", "number": "xfer", "sdp": await browser.offer(),
                         "audio": True, "video": False})
        connected = await sock.recv("connected", timeout=10)
        await browser.accept(connected["sdp"])
        c = await peers.udp(engine)
        await sock.send({"type": "message", "call": "c1", "text": f"blind sip:dave@127.0.0.1:{c.local[1]}"})
        invite = await answer_invite(c)
        assert invite.uri_text == f"sip:dave@127.0.0.1:{c.local[1]}"
        frame = await sock.recv("transferred", timeout=5)
        assert frame == {"type": "transferred", "call": "c1"}
        logs = await wait_for_log(engine, "transfer complete 200")
        assert "transfer complete 200" in logs
        assert not [f for f in sock.frames if f.get("type") in ("hangup", "failed", "error")], sock.frames
        await sock.send({"type": "hangup", "call": "c1"})
        await wait_for_log(engine, "ended 200")
    finally:
        await browser.close()
        await sock.ws.close()
