"""The harness's direct calls behave as the web layer's.

A direct call (``forward_call_to_user_direct``) is transport behaviour: in
``serve`` it lives in :class:`~engine.calls.web_call.WebCall`, in the harness
in :class:`~engine.testing.SimWebCall`. Each script below is played against
both: a pair of real ``WebCall`` legs, rung by the web layer's own
:class:`~engine.web.ws.WebUsers` over fake sockets (a direct call has no
media in the engine, so no WebRTC runs), and a caller of a harness
application whose scenario forwards it. The events each leg emits, how
each ends and the messages each browser receives must be the same; a
change to one that the other does not follow fails here. Last, a broken
copy of the shipped ``p2p`` shows the direct-call check failing readably.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, cast

import pytest

from engine.calls.call import Call, CallEvent, CallEvents, CallState
from engine.testing import Endpoint, Harness, VirtualTimeLoop
from engine.media.clock import MediaClock
from engine.calls.web_call import WebCall
from engine.web.ws import SdkConnection, WebUsers

ROOT = Path(__file__).parents[2]
INVITE_TIMEOUT = 60.0
OFFER = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
ANSWER = "v=0\r\no=bob 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
EVENTS = (CallEvents.Connected, CallEvents.Failed, CallEvents.Disconnected, CallEvents.MessageReceived)

#: What the people do, in order, after alice's browser called bob directly.
SCRIPTS = {
    "answered, messages, caller hangs up": ["bob answers", "alice says hi", "bob says hi", "alice hangs up"],
    "answered, callee hangs up": ["bob answers", "bob hangs up"],
    "callee declines": ["bob rejects 603"],
    "callee busy": ["bob rejects 486"],
    "nobody answers": ["time passes"],
    "caller gives up while it rings": ["alice hangs up"],
    "callee not logged in": [],
}

SCENARIO = """
    from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine

    def record(role, call):
        for name in (CallEvents.Connected, CallEvents.Failed, CallEvents.Disconnected,
                     CallEvents.MessageReceived):
            call.add_event_listener(name, lambda ev, role=role: Logger.write(
                f"{role} {ev.name}" + (f" {ev.code}" if ev.code else "") + (f" {ev.text}" if ev.text else "")))

    def on_alerting(e):
        record("alice", e.call)
        callee = e.call.forward_call_to_user_direct()
        if callee is not None:
            record("bob", callee)

    VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""


@dataclass
class Outcome:
    """What each person saw: events per leg, end state and code, messages received."""

    events: dict[str, list[str]]
    ends: dict[str, tuple[str, int | None]]
    messages: dict[str, list[str]]


def describe(role: str, ev: CallEvent) -> str:
    return f"{role} {ev.name}" + (f" {ev.code}" if ev.code else "") + (f" {ev.text}" if ev.text else "")


class FakeSocket:
    """What :class:`WebUsers` and :meth:`SdkConnection.ring` use of a browser's socket."""

    ring = SdkConnection.ring

    def __init__(self, user: str) -> None:
        self.user = user
        self.ws = SimpleNamespace(closed=False)
        self.logged_in_at = 0.0
        self.calls: dict[str, WebCall] = {}
        self.frames: list[dict[str, Any]] = []
        self.grant = None  # a password login: no join token, not listen-only

    def send_frame(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)


def play_real(script: list[str], logged_in: bool) -> Outcome:
    """``script`` against real ``WebCall`` legs (frames in as the socket handler hands them)."""
    alice_sock, bob_sock = FakeSocket("alice"), FakeSocket("bob")
    engine = SimpleNamespace(media_clock=None, tts=None, config=SimpleNamespace(invite_timeout=INVITE_TIMEOUT))
    users = WebUsers(cast(Any, {bob_sock} if logged_in else set()), engine)
    events: dict[str, list[str]] = {"alice": [], "bob": []}

    def record(role: str, call: Call) -> None:
        for name in EVENTS:
            call.add_event_listener(name, lambda ev, role=role: events[role].append(describe(role, ev)))

    async def main() -> dict[str, WebCall]:
        alice = WebCall(alice_sock, "d1", offer=OFFER, clock=cast(MediaClock, None), dialer=users,
                        direction="inbound", number="bob", callerid="alice", headers={"X-DirectCall": "true"})
        alice._set_state(CallState.ALERTING)
        record("alice", alice)
        bob = alice.forward_call_to_user_direct()
        legs = {"alice": alice}
        if bob is not None:
            record("bob", bob)
            legs["bob"] = bob
        for step in script:
            who, _, what = step.partition(" ")
            if step == "time passes":
                await asyncio.sleep(INVITE_TIMEOUT + 1)
                continue
            leg = legs[who]
            if what == "answers":
                await leg.on_remote_answer(ANSWER, {})
            elif what.startswith("rejects"):
                leg.on_remote_reject(int(what.split()[1]), {})
            elif what == "hangs up":
                leg.on_remote_hangup({})
            elif what == "says hi":
                leg.on_remote_message(f"hi from {who}", {})
            await asyncio.sleep(0)
        await asyncio.sleep(1)
        return legs

    loop = VirtualTimeLoop()
    try:
        legs = loop.run_until_complete(main())
    finally:
        loop.close()
    socks = {"alice": alice_sock, "bob": bob_sock}
    return Outcome(
        events=events,
        ends={role: (leg.state.value, leg.end_code) for role, leg in legs.items()},
        messages={role: [f["text"] for f in sock.frames if f["type"] == "message"] for role, sock in socks.items()},
    )


def play_harness(callbridge: Harness, script: list[str], logged_in: bool) -> Outcome:
    """``script`` against the harness: alice's browser calls bob, the scenario forwards it."""
    app = callbridge.load_text('rules:\n  - {name: P2P, pattern: ".*", scenarios: [p2p]}\n', {"p2p": SCENARIO})
    if logged_in:
        app.log_in_web_user("bob")
    alice = app.incoming_call("bob", callerid="alice", transport="web", headers={"X-DirectCall": "true"})
    people: dict[str, Endpoint] = {"alice": alice}
    if logged_in:
        people["bob"] = bob = app.callee("bob")
    actions: dict[str, Callable[[str, str], None]] = {
        "answers": lambda who, arg: bob.answer(),
        "rejects": lambda who, arg: bob.reject(int(arg)),
        "hangs": lambda who, arg: people[who].hang_up(),
        "says": lambda who, arg: people[who].send_message(f"hi from {who}"),
    }
    for step in script:
        if step == "time passes":
            app.wait(INVITE_TIMEOUT + 1)
            continue
        who, what, *rest = step.split()
        actions[what](who, rest[0] if rest else "")
    app.wait(1)
    events: dict[str, list[str]] = {"alice": [], "bob": []}
    for line in app.log:
        role = line.removeprefix("[P2P] ").split(" ", 1)[0]
        if role in events:
            events[role].append(line.removeprefix("[P2P] "))
    return Outcome(
        events=events,
        ends={role: (p.leg.state.value, p.leg.end_code) for role, p in people.items()},
        messages={role: [m.text for m in p.messages] for role, p in people.items()}
        | ({} if logged_in else {"bob": []}),
    )


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_harness_direct_calls_match_the_web_layer(callbridge: Harness, name: str) -> None:
    """Check a script played against real WebCall legs and against the
    harness gives the same events per leg, ends and relayed messages."""
    logged_in = name != "callee not logged in"
    real = play_real(SCRIPTS[name], logged_in)
    sim = play_harness(callbridge, SCRIPTS[name], logged_in)
    assert sim == real
    assert real.events["alice"], "the script should make something happen"


def test_a_p2p_that_bridges_direct_calls_fails_the_direct_check(callbridge: Harness, tmp_path: Path) -> None:
    """Check a deliberately broken copy of the shipped p2p (it bridges a
    browser's X-DirectCall call through the engine instead of forwarding
    it) fails the check a direct-call test makes, saying why."""
    source = (ROOT / "scenarios" / "p2p.py").read_text()
    assert "        direct(call, e)\n" in source
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "p2p.py").write_text(source.replace("        direct(call, e)\n",
                                                                  "        bridged(call, e)\n"))
    (tmp_path / "rules.yaml").write_text('rules:\n  - {name: P2P, pattern: ".*", scenarios: [p2p]}\n')
    app = callbridge.load(tmp_path)
    app.log_in_web_user("bob")
    alice = app.incoming_call("bob", callerid="alice", transport="web", headers={"X-DirectCall": "true"})
    bob = app.callee("bob")
    bob.answer()
    verdict = alice.connected_directly_to(bob)
    assert not verdict
    assert repr(verdict).startswith(
        "expected the call to be connected directly to bob; it is not a direct call; it is CONNECTED")
    assert app.flows.between(alice, bob)  # what it did instead: media through the engine
