"""The web SDK's signalling (``/ws``) against a real engine, through
pytest-aiohttp's ``aiohttp_client`` on the engine's own application, with
an aiortc peer connection standing in for the browser's media.

Checks bad frames each get an error frame with a code and leave the socket
up; login by password and by one-time token; a call is routed by the rules
like a SIP INVITE (no rule: 404); the scenario sees an ordinary call
(caller id, headers, Connected, messages both ways, DTMF as ToneReceived
mode "signalling"); the browser's hangup and a dropped socket end the call
with Disconnected; and audio flows both ways through the aiortc leg.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiortc import RTCSessionDescription

from logs import session_logs, wait_for_log
from sdk_peer import BrowserPeer, SdkSocket, goertzel_power

from engine.server import Engine
from engine.web.app import CONNECTIONS, create_app
from engine.web.ws import TOKEN_NAMESPACE

from .conftest import EngineFactory, wait_until

RULES = """
rules:
  - {name: Web, pattern: "echo|early", scenarios: [web_echo]}
"""

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Engine:
    engine = await make_engine(RULES, scenarios=None)
    assert engine.store is not None
    engine.store.create_user("alice", "wonderland", "Alice Liddell")
    return engine


@pytest.fixture
def app(engine: Engine) -> web.Application:
    """The engine's web application, served by pytest-aiohttp's test server."""
    return create_app(engine)


@pytest.fixture
async def sdk(app: web.Application, aiohttp_client: ClientFactory) -> AsyncIterator[Callable[[], Awaitable[SdkSocket]]]:
    """Open SDK sockets to the engine (closed at teardown)."""
    client = await aiohttp_client(app)
    sockets: list[SdkSocket] = []

    async def open_socket() -> SdkSocket:
        sock = SdkSocket(await client.ws_connect("/ws"))
        sockets.append(sock)
        return sock

    yield open_socket
    for sock in sockets:
        await sock.ws.close()


async def logged_in(sdk: Callable[[], Awaitable[SdkSocket]]) -> SdkSocket:
    sock = await sdk()
    assert (await sock.hello())["type"] == "hello"
    assert (await sock.login("alice", "wonderland"))["type"] == "login_ok"
    return sock


async def start_call(sock: SdkSocket, number: str = "echo", wire: str = "c1",
                     headers: dict[str, str] | None = None) -> BrowserPeer:
    peer = BrowserPeer()
    await sock.send({"type": "call", "call": wire, "number": number, "sdp": await peer.offer(),
                     "headers": headers or {}, "audio": True, "video": False})
    return peer


async def test_bad_frames_get_error_codes_and_the_socket_stays(sdk: Callable[[], Awaitable[SdkSocket]]) -> None:
    """Check malformed JSON, non-objects, unknown types, missing and mistyped
    fields, binary frames, frames before hello, an unsupported version and
    calls before login are each answered with an error frame whose code says
    which; the socket still answers ping afterwards."""
    sock = await sdk()
    cases: list[tuple[str | dict[str, Any], str]] = [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ({"type": "login", "username": "alice", "password": "x"}, "hello_required"),
        ({"type": "hello", "version": 99}, "unsupported_version"),
        ({"no_type": 1}, "bad_frame"),
        ({"type": "teleport"}, "unknown_type"),
    ]
    for frame, code in cases:
        await sock.send(frame)
        error = await sock.recv("error")
        assert error["code"] == code, (frame, error)
    await sock.ws.send_bytes(b"\x00\x01")
    assert (await sock.recv("error"))["code"] == "bad_json"
    await sock.hello()
    more: list[tuple[dict[str, Any], str]] = [
        ({"type": "call", "call": "c1", "number": "echo", "sdp": "v=0"}, "not_logged_in"),
        ({"type": "call", "call": "c1", "number": "echo"}, "bad_frame"),
        ({"type": "call", "call": "c 1", "number": "echo", "sdp": "v=0"}, "bad_frame"),
        ({"type": "call", "call": "c1", "number": 5, "sdp": "v=0"}, "bad_frame"),
        ({"type": "hello", "version": "1"}, "bad_frame"),
        ({"type": "login", "username": "alice"}, "bad_frame"),
        ({"type": "dtmf", "call": "c1", "tones": "5x"}, "bad_frame"),
        ({"type": "message", "call": "nope", "text": "hi"}, "unknown_call"),
        ({"type": "hangup", "call": "nope"}, "unknown_call"),
        ({"type": "message", "call": "c1", "text": "hi", "headers": {"Via": "x"}}, "bad_frame"),
        ({"type": "ping", "ts": "soon"}, "bad_frame"),
    ]
    for frame, code in more:
        error = await sock.request(frame)
        assert error["type"] == "error" and error["code"] == code, (frame, error)
    huge = json.dumps({"type": "ping", "pad": "x" * 70000})
    await sock.send(huge)
    assert (await sock.recv("error"))["code"] == "frame_too_large"
    pong = await sock.request({"type": "ping", "ts": 12})
    assert pong == {"type": "pong", "ts": 12, "ref": pong["ref"]}


async def test_login_by_password_and_by_one_time_token(
    engine: Engine, sdk: Callable[[], Awaitable[SdkSocket]]
) -> None:
    """Check a wrong password and an unknown user fail with login_failed,
    the right one logs in (with the display name), a second login is
    refused, and a one-time token logs in once only; the store keeps only
    a keyed hash of the token, and that hash itself logs nobody in."""
    sock = await sdk()
    await sock.hello()
    assert (await sock.login("alice", "wrong"))["code"] == "login_failed"
    assert (await sock.login("bob", "wonderland"))["code"] == "login_failed"
    ok = await sock.login("alice", "wonderland")
    assert ok["type"] == "login_ok" and ok["username"] == "alice" and ok["display_name"] == "Alice Liddell"
    assert (await sock.login("alice", "wonderland"))["code"] == "already_logged_in"

    assert engine.store is not None
    assert engine.keys is not None
    stored = engine.keys.login_token_hash("t" * 32)
    engine.store.kv_put(TOKEN_NAMESPACE, stored, "alice", 60, time.time())
    assert "t" * 32 not in stored
    forged = await sdk()
    await forged.hello()
    assert (await forged.request({"type": "login", "token": stored}))["code"] == "login_failed"
    first = await sdk()
    await first.hello()
    ok = await first.request({"type": "login", "token": "t" * 32})
    assert ok["type"] == "login_ok" and ok["username"] == "alice"
    again = await sdk()
    await again.hello()
    assert (await again.request({"type": "login", "token": "t" * 32}))["code"] == "login_failed"


async def test_password_guessing_locks_the_account_with_backoff(
    engine: Engine, sdk: Callable[[], Awaitable[SdkSocket]], caplog: pytest.LogCaptureFixture,
) -> None:
    """Check five wrong passwords for one account (any case of its name)
    lock it: then even the right password is refused with "try again
    later" without being checked, an unknown account is treated the same
    way, and the lockout lapses after its backoff (virtual clock, no
    sleep); security events name the source and the user, never the
    password."""
    now = [1000.0]
    engine.clock = lambda: now[0]
    checked: list[str] = []
    assert engine.store is not None
    verify = engine.store.verify_password

    def counting(name: str, password: str) -> bool:
        checked.append(name)
        return verify(name, password)

    engine.store.verify_password = counting  # type: ignore[method-assign]
    sock = await sdk()
    await sock.hello()
    for name in ("alice", "ALICE", "alice", "Alice", "alice"):
        failed = await sock.login(name, "guess")
        assert failed["code"] == "login_failed" and "later" not in failed["message"]
    locked = await sock.login("alice", "wonderland")
    assert locked["code"] == "login_failed" and "try again later" in locked["message"]
    assert len(checked) == 5  # the locked attempt computed no hash
    for _ in range(5):
        await sock.login("nobody", "guess")
    assert "try again later" in (await sock.login("nobody", "guess"))["message"]
    now[0] += 1.5  # the first lockout is 1 s
    ok = await sock.login("alice", "wonderland")
    assert ok["type"] == "login_ok"
    assert "event=auth_failed src=127.0.0.1 method=ws-login user=alice" in caplog.text
    assert "event=auth_locked src=127.0.0.1 method=ws-login user=alice" in caplog.text
    assert "guess" not in caplog.text and "wonderland" not in caplog.text


async def test_a_number_no_rule_matches_fails_with_404(sdk: Callable[[], Awaitable[SdkSocket]]) -> None:
    """Check a call to a number no rule matches gets ``failed`` 404, as a
    SIP INVITE would, and the socket can call again with the same id."""
    sock = await logged_in(sdk)
    peer = await start_call(sock, number="nobody")
    failed = await sock.recv("failed", call="c1")
    assert failed["code"] == 404
    await peer.close()


async def test_scenario_rejects_with_its_code(
    engine: Engine, make_engine: EngineFactory, aiohttp_client: ClientFactory
) -> None:
    """Check a scenario's ``reject(486)`` reaches the browser as ``failed`` 486."""
    busy = await make_engine(
        "rules:\n  - {name: Busy, pattern: busy, scenarios: [busy]}\n",
        scenarios={"busy": """
            from engine.runtime.scenario import AppEvents, VoxEngine
            VoxEngine.add_event_listener(AppEvents.CallAlerting, lambda e: e.call.reject(486))
        """},
    )
    assert busy.store is not None
    busy.store.create_user("alice", "wonderland")
    client = await aiohttp_client(create_app(busy))
    sock = SdkSocket(await client.ws_connect("/ws"))
    await sock.hello()
    await sock.login("alice", "wonderland")
    peer = await start_call(sock, number="busy")
    assert (await sock.recv("failed", call="c1"))["code"] == 486
    await peer.close()
    await sock.ws.close()


async def test_call_messages_tones_and_hangup(engine: Engine, sdk: Callable[[], Awaitable[SdkSocket]]) -> None:
    """Check a web call reaches its scenario as an ordinary call (kind, caller
    id, display name, X- headers), connects, messages go both ways, DTMF
    arrives as ToneReceived mode "signalling", and the browser's hangup ends
    it with Disconnected 200."""
    sock = await logged_in(sdk)
    peer = await start_call(sock, headers={"X-Conference-Id": "42"})
    connected = await sock.recv("connected", call="c1", timeout=10)
    await peer.accept(connected["sdp"])
    logs = await wait_for_log(engine, "connected")
    assert "alerting web from alice (Alice Liddell) to echo [X-Conference-Id=42]" in logs
    assert (await sock.recv("message", call="c1"))["text"] == "welcome"
    await sock.send({"type": "message", "call": "c1", "text": "hi there", "headers": {"X-Note": "n1"}})
    echo = await sock.recv("message", call="c1", text="echo: hi there")
    assert echo["headers"] == {"X-Echo": "1"}
    assert "message hi there [n1]" in session_logs(engine)
    await sock.send({"type": "dtmf", "call": "c1", "tones": "5#"})
    logs = await wait_for_log(engine, "tone # signalling")
    assert "tone 5 signalling" in logs
    await sock.send({"type": "hangup", "call": "c1"})
    assert "ended Disconnected 200 Hangup" in await wait_for_log(engine, "ended")
    error = await sock.request({"type": "message", "call": "c1", "text": "late"})
    assert error["code"] == "unknown_call"
    await peer.close()


async def test_dropped_socket_ends_the_call(engine: Engine, sdk: Callable[[], Awaitable[SdkSocket]]) -> None:
    """Check a socket that closes mid-call ends the call: the scenario sees
    Disconnected 408 "Connection Lost" and the media leg is closed."""
    sock = await logged_in(sdk)
    peer = await start_call(sock)
    connected = await sock.recv("connected", call="c1", timeout=10)
    await peer.accept(connected["sdp"])
    await wait_for_log(engine, "connected")
    await sock.ws.close()
    logs = await wait_for_log(engine, "ended")
    assert "ended Disconnected 408 Connection Lost" in logs
    await peer.close()


async def test_audio_flows_both_ways(
    engine: Engine, app: web.Application, sdk: Callable[[], Awaitable[SdkSocket]]
) -> None:
    """Check the scenario's 440 Hz tone reaches the browser's peer connection
    (Opus through aiortc), and the browser's 1 kHz microphone tone arrives
    at the call's audio port as 8 kHz frames."""
    sock = await logged_in(sdk)
    peer = await start_call(sock)
    connected = await sock.recv("connected", call="c1", timeout=10)
    await peer.accept(connected["sdp"])
    assert await wait_until(lambda: len(peer.heard_pcm()) > 8000, timeout=10), "no audio heard"
    heard = peer.heard_pcm()[-4000:]
    assert goertzel_power(heard, 440) > 0.5
    calls = [c for conn in app[CONNECTIONS] for c in conn.calls.values()]
    assert len(calls) == 1 and calls[0].audio_port is not None
    port = calls[0].audio_port
    assert await wait_until(lambda: port.available >= 10, timeout=10), "no audio from the browser"
    pcm = np.concatenate([port.read_frame() for _ in range(10)])
    assert goertzel_power(pcm, 1000) > 0.5
    await sock.send({"type": "hangup", "call": "c1"})
    await wait_for_log(engine, "ended")
    await peer.close()


async def test_early_media_then_answer(engine: Engine, sdk: Callable[[], Awaitable[SdkSocket]]) -> None:
    """Check ``start_early_media()`` sends our SDP in ``progress`` 183 and the
    tone plays before the answer, which then comes without SDP."""
    sock = await logged_in(sdk)
    peer = await start_call(sock, number="early")
    progress = await sock.recv("progress", call="c1", timeout=10)
    assert progress["code"] == 183 and progress["sdp"].startswith("v=0")
    await peer.accept(progress["sdp"])
    connected = await sock.recv("connected", call="c1", timeout=5)
    assert "sdp" not in connected
    assert await wait_until(lambda: len(peer.heard_pcm()) > 4000, timeout=10)
    await sock.send({"type": "hangup", "call": "c1"})
    await wait_for_log(engine, "ended")
    await peer.close()


async def test_ice_candidates_are_accepted_before_and_after_the_answer(
    engine: Engine, sdk: Callable[[], Awaitable[SdkSocket]]
) -> None:
    """Check trickled candidates (and the end-of-candidates null) are taken
    before the scenario answers and after; a malformed one is a bad_frame."""
    sock = await logged_in(sdk)
    peer = await start_call(sock)
    cand = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0",
            "sdpMLineIndex": 0}
    await sock.send({"type": "ice", "call": "c1", "candidate": cand})
    connected = await sock.recv("connected", call="c1", timeout=10)
    await peer.accept(connected["sdp"])
    error = await sock.request({"type": "ice", "call": "c1", "candidate": {"candidate": "candidate:garbage"}})
    assert error["code"] == "bad_frame"
    await sock.send({"type": "ice", "call": "c1", "candidate": None})
    pong = await sock.request({"type": "ping"})
    assert pong["type"] == "pong"
    await sock.send({"type": "hangup", "call": "c1"})
    await wait_for_log(engine, "ended")
    await peer.close()
    await asyncio.sleep(0)


async def test_silent_socket_is_closed_by_the_heartbeat(
    make_engine: EngineFactory, aiohttp_client: ClientFactory
) -> None:
    """Check a browser that stops answering (no pong to the WebSocket pings,
    as when its machine sleeps or its network drops without a FIN) loses
    its call within the heartbeat: the scenario sees Disconnected 408."""
    engine = await make_engine(RULES, ws_heartbeat=0.4)
    assert engine.store is not None
    engine.store.create_user("alice", "wonderland")
    client = await aiohttp_client(create_app(engine))
    sock = SdkSocket(await client.ws_connect("/ws", autoping=False))
    hello = await sock.hello()
    assert hello["heartbeat"] == 0.4
    await sock.login("alice", "wonderland")
    peer = await start_call(sock)
    connected = await sock.recv("connected", call="c1", timeout=10)
    await peer.accept(connected["sdp"])
    await wait_for_log(engine, "connected")
    started = asyncio.get_running_loop().time()
    logs = await wait_for_log(engine, "ended", timeout=5)  # nobody reads the pings
    assert "ended Disconnected 408 Connection Lost" in logs
    assert asyncio.get_running_loop().time() - started < 2.0
    await peer.close()
    await sock.ws.close()


RING_RULES = """
rules:
  - {name: Ring, pattern: "ring_[a-z]+", scenarios: [ring]}
"""

#: Alice's call to ring_<user> is answered, then the scenario rings <user>
#: with call_user and logs what happens; messages from the callee are echoed.
RING_SCENARIO = """
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    await e.call.answer()
    callee = VoxEngine.call_user(e.destination[5:], callerid=e.callerid, headers={"X-From": "ring"})
    Logger.write(f"ringing {callee.kind} {callee.direction}")

    def connected(ev):
        Logger.write(f"callee connected {ev.headers}")
        callee.send_message("hello callee")

    callee.add_event_listener(CallEvents.Connected, connected)
    callee.add_event_listener(CallEvents.MessageReceived, lambda ev: Logger.write(f"callee says {ev.text}"))
    callee.add_event_listener(CallEvents.Failed, lambda ev: Logger.write(f"callee failed {ev.code}"))
    callee.add_event_listener(CallEvents.Disconnected, lambda ev: Logger.write(f"callee ended {ev.code}"))


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""


async def _socket_to(engine: Engine, session: Any, user: str) -> SdkSocket:
    sock = SdkSocket(await session.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws"))
    await sock.hello()
    assert (await sock.login(user, "pw"))["type"] == "login_ok"
    return sock


@pytest.mark.parametrize("outcome", ["answer", "reject"])
async def test_call_user_rings_a_logged_in_browser(make_engine: EngineFactory, outcome: str) -> None:
    """Check ``VoxEngine.call_user`` rings a logged-in web user: ``incoming``
    with the engine's offer and headers; an answer connects it (Connected
    with the answer's headers, messages both ways, the browser's hangup
    ends it with Disconnected 200); a reject
    fails it with the browser's code."""
    import aiohttp

    engine = await make_engine(RING_RULES, scenarios={"ring": RING_SCENARIO})
    assert engine.store is not None
    engine.store.create_user("alice", "pw")
    engine.store.create_user("bob", "pw")
    async with aiohttp.ClientSession() as http:
        bob = await _socket_to(engine, http, "bob")
        alice = await _socket_to(engine, http, "alice")
        caller = await start_call(alice, number="ring_bob")
        await caller.accept((await alice.recv("connected", call="c1", timeout=10))["sdp"])
        incoming = await bob.recv("incoming", timeout=10)
        assert incoming["callerid"] == "alice" and incoming["headers"] == {"X-From": "ring"}
        assert "ringing web outbound" in session_logs(engine)
        wire = incoming["call"]
        callee = BrowserPeer(tone=600)
        if outcome == "reject":
            await bob.send({"type": "reject", "call": wire, "code": 603})
            assert "callee failed 603" in await wait_for_log(engine, "callee failed")
        else:
            await callee.pc.setRemoteDescription(RTCSessionDescription(incoming["sdp"], "offer"))
            await callee.pc.setLocalDescription(await callee.pc.createAnswer())
            await bob.send({"type": "answer", "call": wire, "sdp": callee.pc.localDescription.sdp,
                            "headers": {"X-Answered": "yes"}})
            assert "callee connected {'X-Answered': 'yes'}" in await wait_for_log(engine, "callee connected")
            assert (await bob.recv("message", call=wire))["text"] == "hello callee"
            await bob.send({"type": "message", "call": wire, "text": "hi scenario"})
            assert "callee says hi scenario" in await wait_for_log(engine, "callee says")
            await bob.send({"type": "hangup", "call": wire})
            assert "callee ended 200" in await wait_for_log(engine, "callee ended")
        await callee.close()
        await caller.close()
        await alice.ws.close()
        await bob.ws.close()


async def test_offer_without_dtls_fingerprint_fails_488(sdk: Callable[[], Awaitable[SdkSocket]]) -> None:
    """Check an offer stripped of its DTLS fingerprint (found by the fuzz
    run: aiortc asserted in a task nobody awaited) fails the call with 488
    and the socket goes on."""
    sock = await sdk()
    assert (await sock.hello())["type"] == "hello"
    assert (await sock.request({"type": "login", "guest": "Fuzz"}))["type"] == "login_ok"
    peer = BrowserPeer()
    offer = "".join(line for line in (await peer.offer()).splitlines(keepends=True)
                    if not line.startswith("a=fingerprint:"))
    await sock.send({"type": "call", "call": "c1", "number": "echo", "sdp": offer, "audio": True, "video": False})
    failed = await sock.recv("failed", call="c1", timeout=10)
    assert failed["code"] == 488
    assert (await sock.request({"type": "ping", "ts": 1}))["type"] == "pong"
    await peer.close()
