"""Tests for the one table of call-state rules (:data:`engine.calls.call.ACTION_RULES`
and :func:`engine.calls.call.check_action`), which every kind of call checks.

The expected outcome of every action in every state and direction is
written out here by hand, so that a change to the table shows up as a
failing row: ``True`` (the action is done), ``False`` (it does nothing)
or the exact :class:`~engine.calls.call.CallError` text.
"""

from __future__ import annotations

from typing import Callable

import pytest

from engine.calls.call import (
    ACTION_RULES,
    Call,
    CallAction,
    CallError,
    CallState,
    check_action,
    new_call_pair,
)
from engine.calls.call import _DirectDispatcher

NEW, ALERTING, PROGRESSING, CONNECTED, DISCONNECTED, FAILED = (
    CallState.NEW, CallState.ALERTING, CallState.PROGRESSING, CallState.CONNECTED,
    CallState.DISCONNECTED, CallState.FAILED,
)

Outcome = bool | str

NOT_ANSWERED = "{}() needs an inbound call not yet answered"
FORWARD = "forward_call_to_user_direct() needs a browser's call that still rings"


def _inbound_only(message: str, inbound: dict[CallState, Outcome]) -> dict[tuple[str, CallState], Outcome]:
    rows = {("inbound", state): outcome for state, outcome in inbound.items()}
    rows.update({("outbound", state): message for state in CallState})
    return rows


def _either(outcomes: dict[CallState, Outcome]) -> dict[tuple[str, CallState], Outcome]:
    return {(direction, state): outcome for direction in ("inbound", "outbound")
            for state, outcome in outcomes.items()}


def _only_alerting(message: str) -> dict[tuple[str, CallState], Outcome]:
    return _inbound_only(message, {state: True if state == ALERTING else message for state in CallState})


def _only_connected(message: str) -> dict[tuple[str, CallState], Outcome]:
    return _either({state: True if state == CONNECTED else message for state in CallState})


EXPECTED: dict[CallAction, dict[tuple[str, CallState], Outcome]] = {
    CallAction.ANSWER: _inbound_only("only an inbound call can be answered", {
        NEW: False, ALERTING: True, PROGRESSING: False, CONNECTED: False,
        DISCONNECTED: "call already ended", FAILED: "call already ended",
    }),
    CallAction.REJECT: _inbound_only("only an inbound call can be rejected", {
        NEW: "cannot reject a call in state NEW", ALERTING: True,
        PROGRESSING: "cannot reject a call in state PROGRESSING",
        CONNECTED: "cannot reject a call in state CONNECTED",
        DISCONNECTED: "cannot reject a call in state DISCONNECTED",
        FAILED: "cannot reject a call in state FAILED",
    }),
    CallAction.HANGUP: _either({
        NEW: True, ALERTING: True, PROGRESSING: True, CONNECTED: True, DISCONNECTED: False, FAILED: False,
    }),
    CallAction.RING: _only_alerting(NOT_ANSWERED.format("ring")),
    CallAction.START_EARLY_MEDIA: _only_alerting(NOT_ANSWERED.format("start_early_media")),
    CallAction.FORWARD_DIRECT: _only_alerting(FORWARD),
    CallAction.SEND_MESSAGE: _only_connected("messages need a connected call"),
    CallAction.SEND_INFO: _only_connected("INFO needs a connected call"),
}


class StateOnly(Call):
    """A call whose state the test sets directly (even after an end)."""

    kind = "state-only"


def call_in(direction: str, state: CallState) -> StateOnly:
    call = StateOnly(direction=direction, number="100", callerid="alice", dispatcher=_DirectDispatcher())
    call.state = state
    return call


def outcome(call: Call, action: CallAction, **kwargs: object) -> Outcome:
    try:
        return check_action(call, action, **kwargs)  # type: ignore[arg-type]
    except CallError as exc:
        return str(exc)


def test_every_action_has_a_rule_and_a_row_for_every_state() -> None:
    """Check the table covers every action, and this test every action in
    every state and direction (a new action or state fails here first)."""
    assert set(ACTION_RULES) == set(CallAction) == set(EXPECTED)
    for action, rows in EXPECTED.items():
        assert set(rows) == {(d, s) for d in ("inbound", "outbound") for s in CallState}, action


@pytest.mark.parametrize("action", list(CallAction), ids=str)
@pytest.mark.parametrize("direction", ["inbound", "outbound"])
@pytest.mark.parametrize("state", list(CallState), ids=lambda s: s.value)
def test_action_in_state(action: CallAction, direction: str, state: CallState) -> None:
    """Check ``action`` on a ``direction`` call in ``state``: done, ignored,
    or refused with the exact message the calls gave before the table."""
    assert outcome(call_in(direction, state), action) == EXPECTED[action][(direction, state)]


@pytest.mark.parametrize("action", list(CallAction), ids=str)
@pytest.mark.parametrize("direction", ["inbound", "outbound"])
@pytest.mark.parametrize("state", list(CallState), ids=lambda s: s.value)
def test_an_answer_on_its_way_counts_as_connected(action: CallAction, direction: str, state: CallState) -> None:
    """Check a call still ALERTING whose answer was sent is treated as
    CONNECTED (answer does nothing, reject is refused) while errors name
    its real state; in any other state the flag changes nothing."""
    got = outcome(call_in(direction, state), action, answered=True)
    if state != ALERTING:
        assert got == EXPECTED[action][(direction, state)]
        return
    as_connected = EXPECTED[action][(direction, CONNECTED)]
    if isinstance(as_connected, str):
        as_connected = as_connected.replace("CONNECTED", "ALERTING")
    assert got == as_connected


def test_answered_alerting_call_cannot_be_rejected_and_answer_does_nothing() -> None:
    """Check the two cases the flag exists for, spelled out: a second answer
    is a no-op and a reject names the state the call is really in."""
    call = call_in("inbound", ALERTING)
    assert check_action(call, CallAction.ANSWER, answered=True) is False
    with pytest.raises(CallError) as info:
        check_action(call, CallAction.REJECT, answered=True, code=486)
    assert str(info.value) == "cannot reject a call in state ALERTING"


@pytest.mark.parametrize("code", [0, 200, 299, 700, -486])
def test_reject_code_checked_after_direction_before_state(code: int) -> None:
    """Check a bad reject code is refused with its own message on an inbound
    call in any state, and that an outbound call gets the direction's message
    first (the order every kind of call used)."""
    for state in CallState:
        with pytest.raises(CallError) as info:
            check_action(call_in("inbound", state), CallAction.REJECT, code=code)
        assert str(info.value) == f"reject code must be 300-699, not {code}"
    with pytest.raises(CallError) as info:
        check_action(call_in("outbound", ALERTING), CallAction.REJECT, code=code)
    assert str(info.value) == "only an inbound call can be rejected"


@pytest.mark.parametrize("code", [300, 486, 603, 699])
def test_good_reject_codes_pass(code: int) -> None:
    """Check the bounds of the reject code range (300 and 699 included)."""
    assert check_action(call_in("inbound", ALERTING), CallAction.REJECT, code=code) is True


def test_internal_call_follows_the_table() -> None:
    """Check a kind of call raises the table's messages through its own
    methods: the caller's end of an internal pair cannot answer, reject, ring
    or start early media; the callee's end cannot message before the answer."""
    out, inc = new_call_pair(number="100", callerid="alice", display_name=None, headers=None,
                             caller_dispatcher=_DirectDispatcher())
    inc.dispatcher = _DirectDispatcher()
    calls: dict[CallAction, Callable[[], object]] = {
        CallAction.ANSWER: out.answer,
        CallAction.REJECT: lambda: out.reject(486),
        CallAction.RING: out.ring,
        CallAction.START_EARLY_MEDIA: out.start_early_media,
    }
    for action, act in calls.items():
        with pytest.raises(CallError) as info:
            act()
        assert str(info.value) == EXPECTED[action][("outbound", PROGRESSING)]
    with pytest.raises(CallError) as info:
        inc.send_message("hi")
    assert str(info.value) == EXPECTED[CallAction.SEND_MESSAGE][("inbound", ALERTING)]
    with pytest.raises(CallError) as info:
        inc.send_info("text/plain", "hi")
    assert str(info.value) == EXPECTED[CallAction.SEND_INFO][("inbound", ALERTING)]
