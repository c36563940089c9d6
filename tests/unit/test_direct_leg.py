"""Tests for :class:`engine.calls.direct.DirectCallLeg`, the direct-call rules
that the real browser leg and the harness's simulated one share: a minimal
leg supplies the hooks and records what they were asked, so each rule is
checked once here, with no WebRTC and no harness."""

from __future__ import annotations

from typing import Callable

import pytest

from engine.calls.call import CallError, CallEvent, CallEvents, CallState, _DirectDispatcher
from engine.calls.direct import DirectCallLeg
from engine.calls.web_call import WebCall
from engine.testing.calls import SimWebCall


class Leg(DirectCallLeg):
    """A leg that records signalling instead of sending it."""

    kind = "test"

    def __init__(self, direction: str, users: dict[str, Leg] | None = None) -> None:
        super().__init__(direction=direction, number="bob", callerid="alice", headers={"X-A": "1"},
                         dispatcher=_DirectDispatcher())
        self.users = users if users is not None else {}
        self.sent: list[tuple[object, ...]] = []
        self.early = False

    def _offer_answered(self) -> bool:
        return self.early

    def _direct_dialer(self) -> Callable[[dict[str, str]], DirectCallLeg | None]:
        def dial(headers: dict[str, str]) -> Leg | None:
            self.sent.append(("dial", headers))
            peer = self.users.get(self.number)
            if peer is not None:
                peer._set_state(CallState.PROGRESSING)
            return peer
        return dial

    def _forwarded(self, peer: DirectCallLeg) -> None:
        self.sent.append(("forwarded", peer))

    def _connect_direct(self, callee: DirectCallLeg, sdp: str | None, headers: dict[str, str]) -> None:
        self.sent.append(("connected", sdp, headers))

    def ring(self, headers: dict[str, str] | None = None) -> None:
        self.sent.append(("ring",))

    def reject(self, code: int = 486, headers: dict[str, str] | None = None) -> None:
        self.sent.append(("reject", code))
        self._finish(CallState.FAILED, CallEvents.Failed, code, "Rejected")

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        self.sent.append(("hangup",))
        self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup")

    def send_message(self, text: str, headers: dict[str, str] | None = None) -> None:
        self.sent.append(("message", text))


def caller_and_callee() -> tuple[Leg, Leg]:
    callee = Leg("outbound")
    caller = Leg("inbound", {"bob": callee})
    caller._set_state(CallState.ALERTING)
    return caller, callee


def test_both_kinds_of_browser_leg_use_the_shared_rules() -> None:
    """Check the real leg and the harness's simulated one both get the
    forwarding and relaying of :class:`DirectCallLeg` (neither has its own
    copy; WebCall adds to the callee's answer only what a socket needs)."""
    for cls in (WebCall, SimWebCall):
        assert issubclass(cls, DirectCallLeg)
        assert cls._relay_message is DirectCallLeg._relay_message
    assert SimWebCall._direct_answered is DirectCallLeg._direct_answered


def test_forward_rings_the_callee_and_links_both_ends() -> None:
    """Check forwarding dials with the caller's headers plus the given ones,
    links the two ends, runs the forwarded hook, then rings the caller."""
    caller, callee = caller_and_callee()
    assert caller.forward_call_to_user_direct({"X-B": "2"}) is callee
    assert caller.sent == [("dial", {"X-A": "1", "X-B": "2"}), ("forwarded", callee), ("ring",)]
    assert caller.direct and caller.direct_peer is callee and callee.direct_peer is caller


def test_forward_to_a_user_not_logged_in_rejects_480() -> None:
    """Check a callee nobody can reach gives None and a 480 reject."""
    caller = Leg("inbound")
    caller._set_state(CallState.ALERTING)
    assert caller.forward_call_to_user_direct() is None
    assert caller.sent[-1] == ("reject", 480) and caller.end_code == 480


def test_forward_refused_after_early_media_or_when_not_ringing() -> None:
    """Check the exact errors: early media already answered the offer, or
    the call is not an inbound one still ringing; nothing is dialed."""
    caller, _ = caller_and_callee()
    caller.early = True
    with pytest.raises(CallError) as info:
        caller.forward_call_to_user_direct()
    assert str(info.value) == "the engine already answered this call's offer (early media)"
    caller, _ = caller_and_callee()
    caller._answering = True
    with pytest.raises(CallError) as info:
        caller.forward_call_to_user_direct()
    assert str(info.value) == "forward_call_to_user_direct() needs a browser's call that still rings"
    assert caller.sent == [] and not caller.direct


def test_callee_answer_connects_the_caller_first() -> None:
    """Check the callee's answer connects the caller (hook, then Connected)
    before the callee's own Connected 200 with the answer headers."""
    caller, callee = caller_and_callee()
    caller.forward_call_to_user_direct()
    order: list[tuple[str, str]] = []
    caller.add_event_listener(CallEvents.Connected, lambda e: order.append(("caller", e.name)))

    def on_callee(e: CallEvent) -> None:
        order.append(("callee", f"{e.name} {e.code}"))

    callee.add_event_listener(CallEvents.Connected, on_callee)
    callee._direct_answered("v=0 answer", {"X-C": "3"})
    assert order == [("caller", "Connected"), ("callee", "Connected 200")]
    assert caller.sent[-1] == ("connected", "v=0 answer", {"X-C": "3"})
    assert (caller.state, callee.state) == (CallState.CONNECTED, CallState.CONNECTED)
    assert callee.headers["X-C"] == "3"


def test_end_of_either_end_ends_the_other_and_messages_cross() -> None:
    """Check a message is relayed once the other end is connected, and a
    hangup of the callee hangs up the connected caller."""
    caller, callee = caller_and_callee()
    caller.forward_call_to_user_direct()
    callee._relay_message("early", {})
    assert ("message", "early") not in caller.sent
    callee._direct_answered(None, {})
    callee._relay_message("hi", {})
    assert caller.sent[-1] == ("message", "hi")
    callee.hangup()
    assert caller.sent[-1:] == [("hangup",)] and caller.state == CallState.DISCONNECTED


def test_ringing_callee_failure_rejects_the_caller_with_its_code() -> None:
    """Check a callee failing while it rings rejects the caller with the
    callee's code (end_other_end)."""
    caller, callee = caller_and_callee()
    caller.forward_call_to_user_direct()
    callee._finish(CallState.FAILED, CallEvents.Failed, 486, "Busy Here")
    assert caller.sent[-1] == ("reject", 486) and caller.end_code == 486
