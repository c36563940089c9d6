"""Direct (browser-to-browser) calls through the shipped P2P rule and
scenario, over real SDK sockets: the engine relays offer, answer and ICE
candidates verbatim and carries no media, so the SDPs here are opaque
text. Checks the relay, the events the scenario sees (its log), messages
relayed both ways, and how each end's hangup, reject, no answer or lost
socket reaches the other."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from logs import wait_for_log
from sdk_peer import SdkSocket

from engine.server import Engine

from .conftest import EngineFactory

ROOT = Path(__file__).resolve().parents[2]

RULES = """
rules:
  - {name: P2P, pattern: ".*", scenarios: [p2p]}
"""

OFFER = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
ANSWER = "v=0\r\no=bob 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"


def candidate(port: int) -> dict[str, object]:
    return {"candidate": f"candidate:1 1 udp 2113937151 192.0.2.2 {port} typ host generation 0",
            "sdpMid": "0", "sdpMLineIndex": 0}


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Engine:
    engine = await make_engine(RULES, ROOT / "scenarios", invite_timeout=2.0)
    return engine


async def guest(engine: Engine, http: aiohttp.ClientSession, name: str) -> tuple[SdkSocket, str]:
    sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws"))
    await sock.hello()
    ok = await sock.request({"type": "login", "guest": name})
    assert ok["type"] == "login_ok" and ok["guest"] is True and ok["display_name"] == name
    return sock, str(ok["username"])


async def dial(alice: SdkSocket, bob_user: str, wire: str = "d1") -> None:
    await alice.send({"type": "call", "call": wire, "number": bob_user, "sdp": OFFER, "video": True,
                      "headers": {"X-DirectCall": "true", "X-Room": "7"}})
    await alice.send({"type": "ice", "call": wire, "candidate": candidate(40000)})


async def test_direct_call_relays_signalling_and_messages(engine: Engine) -> None:
    """Check the callee gets the caller's own offer and early candidate, the
    caller gets the callee's answer and candidates, both ends are
    Connected in the scenario, messages are relayed both ways, and the
    caller's hangup ends the callee's call (Disconnected)."""
    async with aiohttp.ClientSession() as http:
        alice, _ = await guest(engine, http, "Alice")
        bob, bob_user = await guest(engine, http, "Bob")
        await dial(alice, bob_user)
        incoming = await bob.recv("incoming", timeout=5)
        assert incoming["sdp"] == OFFER and incoming["direct"] is True and incoming["video"] is True
        assert incoming["display_name"] == "Alice" and incoming["headers"]["X-Room"] == "7"
        wire = incoming["call"]
        assert (await bob.recv("ice", call=wire))["candidate"] == candidate(40000)
        assert (await alice.recv("progress", call="d1"))["code"] == 180
        await alice.send({"type": "ice", "call": "d1", "candidate": candidate(40001)})  # trickled later
        assert (await bob.recv("ice", call=wire))["candidate"] == candidate(40001)

        await bob.send({"type": "answer", "call": wire, "sdp": ANSWER})
        await bob.send({"type": "ice", "call": wire, "candidate": candidate(50000)})
        connected = await alice.recv("connected", call="d1")
        assert connected["sdp"] == ANSWER
        assert (await alice.recv("ice", call="d1"))["candidate"] == candidate(50000)
        assert "direct call connected" in await wait_for_log(engine, "direct call connected")

        await alice.send({"type": "message", "call": "d1", "text": "hi bob"})
        assert (await bob.recv("message", call=wire))["text"] == "hi bob"
        await bob.send({"type": "message", "call": wire, "text": "hi alice"})
        assert (await alice.recv("message", call="d1"))["text"] == "hi alice"

        await alice.send({"type": "hangup", "call": "d1"})
        assert (await bob.recv("hangup", call=wire))["code"] == 200
        assert "direct call ended 200" in await wait_for_log(engine, "direct call ended")
        await alice.ws.close()
        await bob.ws.close()


@pytest.mark.parametrize("outcome", ["reject", "no answer", "socket lost"])
async def test_direct_call_callee_failures_reach_the_caller(engine: Engine, outcome: str) -> None:
    """Check a callee that rejects (603), does not answer in time (408) or
    loses its socket while ringing fails the caller's call with that code."""
    async with aiohttp.ClientSession() as http:
        alice, _ = await guest(engine, http, "Alice")
        bob, bob_user = await guest(engine, http, "Bob")
        await dial(alice, bob_user)
        wire = (await bob.recv("incoming", timeout=5))["call"]
        if outcome == "reject":
            await bob.send({"type": "reject", "call": wire, "code": 603})
            code = 603
        elif outcome == "socket lost":
            await bob.ws.close()
            code = 408
        else:
            code = 408  # invite_timeout is 2 s here
        failed = await alice.recv("failed", call="d1", timeout=10)
        assert failed["code"] == code
        assert f"direct call failed {code}" in await wait_for_log(engine, "direct call failed")
        await alice.ws.close()
        await bob.ws.close()


async def test_direct_call_to_someone_not_logged_in(engine: Engine) -> None:
    """Check a direct call to a user who is not logged in fails with 480."""
    async with aiohttp.ClientSession() as http:
        alice, _ = await guest(engine, http, "Alice")
        await dial(alice, "guest-nobody")
        assert (await alice.recv("failed", call="d1"))["code"] == 480
        assert "not logged in" in await wait_for_log(engine, "not logged in")
        await alice.ws.close()


async def test_guests_can_be_refused(make_engine: EngineFactory) -> None:
    """Check an engine with guest_login off answers a guest login with
    the error code guests_not_allowed."""
    engine = await make_engine(RULES, ROOT / "scenarios", guest_login=False)
    async with aiohttp.ClientSession() as http:
        sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws"))
        await sock.hello()
        reply = await sock.request({"type": "login", "guest": "Eve"})
        assert reply["type"] == "error" and reply["code"] == "guests_not_allowed"
        await sock.ws.close()


async def test_ice_failed_is_relayed_for_an_ice_restart(engine: Engine) -> None:
    """Check ICE_FAILED on a connected direct call: the callee's report
    (no SDP: "please restart") reaches the caller, the caller's ICE-restart
    offer reaches the callee and the callee's answer comes back, verbatim;
    before the answer (not a connected direct call) it is bad_state, a bad
    sdp_type is bad_frame, and a flood of restarts is refused."""
    restart_offer, restart_answer = OFFER.replace("1 1", "1 2"), ANSWER.replace("2 2", "2 3")
    async with aiohttp.ClientSession() as http:
        alice, _ = await guest(engine, http, "Alice")
        bob, bob_user = await guest(engine, http, "Bob")
        await dial(alice, bob_user)
        wire = (await bob.recv("incoming", timeout=5))["call"]
        early = await alice.request({"type": "ice_failed", "call": "d1"})
        assert (early["type"], early["code"]) == ("error", "bad_state")
        await bob.send({"type": "answer", "call": wire, "sdp": ANSWER})
        await alice.recv("connected", call="d1")
        await wait_for_log(engine, "direct call connected")

        await bob.send({"type": "ice_failed", "call": wire})
        assert await alice.recv("ice_failed", call="d1") == {"type": "ice_failed", "call": "d1"}
        await alice.send({"type": "ice_failed", "call": "d1", "sdp": restart_offer, "sdp_type": "offer"})
        got = await bob.recv("ice_failed", call=wire)
        assert (got["sdp"], got["sdp_type"]) == (restart_offer, "offer")
        await bob.send({"type": "ice_failed", "call": wire, "sdp": restart_answer, "sdp_type": "answer"})
        got = await alice.recv("ice_failed", call="d1")
        assert (got["sdp"], got["sdp_type"]) == (restart_answer, "answer")

        bad = await alice.request({"type": "ice_failed", "call": "d1", "sdp": OFFER, "sdp_type": "pranswer"})
        assert (bad["type"], bad["code"]) == ("error", "bad_frame")
        for _ in range(11):  # the offer above was the first of 12
            await alice.send({"type": "ice_failed", "call": "d1"})
        flood = await alice.request({"type": "ice_failed", "call": "d1", "ref": "13th"})
        assert (flood["type"], flood["code"]) == ("error", "bad_state")
        assert "at most 12 ICE restarts" in flood["message"]
        await alice.ws.close()
        await bob.ws.close()
