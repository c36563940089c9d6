"""Tests for :mod:`engine.calls.call`: events, listeners, state rules, internal pairs.

No sockets and no scenario runtime: listeners run through a recording
dispatcher or the default one, and internal calls are made in pairs with
:func:`engine.calls.call.new_call_pair`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import pytest

from engine.calls.call import (
    Call,
    CallError,
    CallEvent,
    CallEvents,
    CallState,
    InternalCall,
    new_call_pair,
)


class RecordingDispatcher:
    """Runs listeners in place, like a session, and remembers what ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[Callable[..., Any], Any]] = []

    def run_listener(self, handler: Callable[..., Any], event: Any) -> None:
        self.ran.append((handler, event))
        handler(event)


class PlainCall(Call):
    """A call whose actions only move its own state (for base-class tests)."""

    kind = "plain"

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup", headers)


def plain(direction: str = "inbound", state: CallState = CallState.CONNECTED) -> PlainCall:
    call = PlainCall(direction=direction, number="100", callerid="alice")
    call._set_state(state)
    return call


def record(call: Call, *names: CallEvents) -> list[CallEvent]:
    """Listen to ``names`` on ``call``; return the list the events land in."""
    seen: list[CallEvent] = []
    for name in names or tuple(CallEvents):
        call.add_event_listener(name, seen.append)
    return seen


def pair(**headers: str) -> tuple[InternalCall, InternalCall, RecordingDispatcher, RecordingDispatcher]:
    """An internal pair (caller's end, callee's end), each with its own dispatcher."""
    caller_side, callee_side = RecordingDispatcher(), RecordingDispatcher()
    out, inc = new_call_pair(
        number="conf_1", callerid="alice", display_name="Alice", headers=dict(headers),
        caller_dispatcher=caller_side,
    )
    inc.dispatcher = callee_side
    return out, inc, caller_side, callee_side


# -- CallEvent ---------------------------------------------------------------------


def test_event_extra_fields_read_as_attributes() -> None:
    """Check fields an event kind adds beyond the dataclass are attributes."""
    call = plain()
    seen = record(call, CallEvents.MessageReceived)
    call._emit(CallEvents.MessageReceived, text="hi", headers={"X-A": "1"}, digits="42", lang="en")
    (event,) = seen
    assert (event.name, event.call, event.text, event.headers) == (
        "MessageReceived", call, "hi", {"X-A": "1"},
    )
    assert (event.digits, event.lang) == ("42", "en")
    assert event.extra == {"digits": "42", "lang": "en"}
    with pytest.raises(AttributeError, match="nothing"):
        event.nothing  # noqa: B018


def test_event_defaults() -> None:
    """Check fields that an event does not carry keep their defaults."""
    event = CallEvent("Connected", plain())
    assert (event.code, event.reason, event.text, event.body, event.mime_type) == (None,) * 5
    assert event.headers == {} and event.extra == {}


# -- listeners -----------------------------------------------------------------------


def test_listeners_run_through_the_dispatcher() -> None:
    """Check a listener is run by the call's dispatcher with the event."""
    dispatcher = RecordingDispatcher()
    call = PlainCall(direction="inbound", number="1", callerid="a", dispatcher=dispatcher)
    seen = record(call, CallEvents.Ringing)
    call._emit(CallEvents.Ringing)
    assert [e.name for e in seen] == ["Ringing"]
    assert dispatcher.ran == [(seen.append, seen[0])]


def test_add_and_remove_listener_by_handler() -> None:
    """Check remove_event_listener(event, handler) removes that handler only,
    and without a handler removes every listener of the event."""
    call = plain()
    first: list[CallEvent] = []
    second: list[CallEvent] = []
    call.add_event_listener(CallEvents.MessageReceived, first.append)
    call.on(CallEvents.MessageReceived, second.append)  # the alias
    call.add_event_listener("InfoReceived", second.append)  # names as text work too
    call.remove_event_listener(CallEvents.MessageReceived, first.append)
    call._emit(CallEvents.MessageReceived, text="one")
    assert (len(first), len(second)) == (0, 1)
    call.remove_event_listener(CallEvents.MessageReceived)
    call._emit(CallEvents.MessageReceived, text="two")
    call._emit(CallEvents.InfoReceived, body=b"x")
    assert (len(first), [e.name for e in second]) == (0, ["MessageReceived", "InfoReceived"])


def test_remove_unknown_listener_is_harmless() -> None:
    """Check removing a handler that was never added changes nothing."""
    call = plain()
    seen = record(call, CallEvents.Connected)
    call.remove_event_listener(CallEvents.Connected, print)
    call.remove_event_listener(CallEvents.Failed)
    call._emit(CallEvents.Connected)
    assert len(seen) == 1


async def test_direct_dispatcher_logs_sync_listener_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Check a failing listener of a call outside any session is logged, does
    not propagate to the emitter, and does not stop the other listeners."""
    call = plain()

    def broken(ev: CallEvent) -> None:
        raise ValueError("listener bug")

    call.add_event_listener(CallEvents.Disconnected, broken)
    seen = record(call, CallEvents.Disconnected)
    with caplog.at_level(logging.ERROR, logger="engine.calls.call"):
        call.hangup()
    assert [e.name for e in seen] == ["Disconnected"]
    errors = [r for r in caplog.records if r.exc_info]
    assert len(errors) == 1 and "listener bug" in str(errors[0].exc_info[1])  # type: ignore[index]


async def test_direct_dispatcher_logs_coroutine_listener_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Check a coroutine listener of a call outside any session runs, and its
    exception is logged instead of being lost or raised."""
    call = plain()
    done = asyncio.Event()

    async def broken(ev: CallEvent) -> None:
        await asyncio.sleep(0)
        done.set()
        raise ValueError("async listener bug")

    call.add_event_listener(CallEvents.Disconnected, broken)
    with caplog.at_level(logging.ERROR, logger="engine.calls.call"):
        call.hangup()
        await done.wait()
        for _ in range(3):
            await asyncio.sleep(0)
    errors = [r for r in caplog.records if r.exc_info]
    assert len(errors) == 1 and "async listener bug" in str(errors[0].exc_info[1])  # type: ignore[index]


# -- wait_for ------------------------------------------------------------------------


async def test_wait_for_returns_the_next_event() -> None:
    """Check wait_for resolves with the event, even one emitted before the
    awaitable is first awaited (the listener is attached at the call)."""
    call = plain()
    waiting = call.wait_for(CallEvents.MessageReceived, timeout=5)
    call._emit(CallEvents.MessageReceived, text="early")
    event = await waiting
    assert (event.name, event.text) == ("MessageReceived", "early")
    assert call.emitter.listeners("MessageReceived") == []


async def test_wait_for_timeout_leaves_the_call_untouched() -> None:
    """Check a timed-out wait raises TimeoutError and changes nothing: the
    call's state stays, no listener is left behind, later events still reach
    the call's own listeners, and a new wait still works."""
    call = plain()
    seen = record(call, CallEvents.MessageReceived)
    with pytest.raises(asyncio.TimeoutError):
        await call.wait_for(CallEvents.MessageReceived, timeout=0.001)
    assert call.state == CallState.CONNECTED
    assert len(call.emitter.listeners("MessageReceived")) == 1  # only ``seen``
    waiting = call.wait_for(CallEvents.MessageReceived, timeout=5)
    call._emit(CallEvents.MessageReceived, text="later")
    assert (await waiting).text == "later"
    assert [e.text for e in seen] == ["later"]


async def test_cancelled_wait_for_removes_its_listener() -> None:
    """Check cancelling a waiting task detaches its listener."""
    call = plain()
    task = asyncio.ensure_future(call.wait_for(CallEvents.Connected))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.emitter.listeners("Connected") == []


# -- state ---------------------------------------------------------------------------


def test_call_ends_once() -> None:
    """Check a second hangup is a no-op: one Disconnected, one end callback,
    and the end code of the first."""
    call = plain()
    ended: list[Call] = []
    call.on_ended.append(ended.append)
    seen = record(call, CallEvents.Disconnected, CallEvents.Failed)
    call.hangup()
    call.hangup()
    call._finish(CallState.FAILED, CallEvents.Failed, 500, "late")
    assert [(e.name, e.code) for e in seen] == [("Disconnected", 200)]
    assert ended == [call]
    assert (call.state, call.end_code, call.end_reason) == (CallState.DISCONNECTED, 200, "Hangup")


def test_ended_call_keeps_its_state() -> None:
    """Check a state change after the end is ignored (no resurrection, no
    second end callback)."""
    call = plain()
    ended: list[Call] = []
    call.on_ended.append(ended.append)
    call.hangup()
    call._set_state(CallState.CONNECTED)
    call._set_state(CallState.FAILED)
    assert call.state == CallState.DISCONNECTED
    assert ended == [call]


def test_failing_end_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    """Check an end callback that raises is logged and the next one still runs."""
    call = plain()
    ran: list[str] = []

    def broken(c: Call) -> None:
        raise RuntimeError("end callback bug")

    call.on_ended.extend([broken, lambda c: ran.append("second")])
    with caplog.at_level(logging.ERROR, logger="engine.calls.call"):
        call.hangup()
    assert ran == ["second"]
    assert any("end callback" in r.getMessage() for r in caplog.records)


def test_state_names_and_ended() -> None:
    """Check which states count as ended."""
    assert {s for s in CallState if s.ended} == {CallState.DISCONNECTED, CallState.FAILED}
    assert str(CallEvents.Connected) == "Connected"


async def test_connected_future_raises_when_the_call_ends_first() -> None:
    """Check the future answer() returns fails with CallError and the end
    code when the call ends before connecting, resolves once it connects,
    and is already settled when made after either."""
    call = plain(state=CallState.ALERTING)
    waiting = call._connected_future()
    await asyncio.sleep(0)
    assert not waiting.done()
    call._finish(CallState.FAILED, CallEvents.Failed, 486, "Busy Here")
    with pytest.raises(CallError, match="486 Busy Here"):
        await waiting
    with pytest.raises(CallError, match="486 Busy Here"):
        await call._connected_future()
    other = plain(state=CallState.ALERTING)
    waiting = other._connected_future()
    await asyncio.sleep(0)
    other._set_state(CallState.CONNECTED)
    await waiting
    other._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup")
    await other._connected_future()


# -- internal calls ------------------------------------------------------------------


def test_new_call_pair() -> None:
    """Check the two ends: the caller's is outbound and progressing, the
    callee's inbound and alerting; both carry number, caller id, display
    name and headers, and point at each other."""
    out, inc, caller_side, _ = pair(**{"X-Room": "7"})
    assert (out.direction, out.state, inc.direction, inc.state) == (
        "outbound", CallState.PROGRESSING, "inbound", CallState.ALERTING,
    )
    for leg in (out, inc):
        assert (leg.number, leg.callerid, leg.display_name, leg.headers, leg.kind) == (
            "conf_1", "alice", "Alice", {"X-Room": "7"}, "internal",
        )
    assert out.peer is inc and inc.peer is out
    assert out.dispatcher is caller_side
    assert out.id != inc.id


async def test_answer_connects_both_ends() -> None:
    """Check answering the callee's end connects both ends (Connected on
    each, the caller's first, as a SIP caller sees 200 before the callee sees
    ACK), passes the answer headers to the caller, and the awaitable completes."""
    out, inc, _, _ = pair()
    order: list[tuple[str, str]] = []
    out.add_event_listener(CallEvents.Connected, lambda e: order.append(("out", e.name)))
    inc.add_event_listener(CallEvents.Connected, lambda e: order.append(("inc", e.name)))
    await inc.answer({"X-Answer": "yes"})
    assert order == [("out", "Connected"), ("inc", "Connected")]
    assert (out.state, inc.state) == (CallState.CONNECTED, CallState.CONNECTED)
    assert out.headers["X-Answer"] == "yes"
    await inc.answer()  # answering again is harmless


async def test_connected_listener_may_talk_to_the_other_end() -> None:
    """Check that when the callee's Connected listener runs, the caller's end
    is already connected, so a reply from the caller's side is allowed."""
    out, inc, _, _ = pair()
    replies: list[str | None] = []
    out.add_event_listener(CallEvents.MessageReceived, lambda e: out.send_message(f"re: {e.text}"))
    inc.add_event_listener(CallEvents.MessageReceived, lambda e: replies.append(e.text))
    inc.add_event_listener(CallEvents.Connected, lambda e: inc.send_message("welcome"))
    await inc.answer()
    assert replies == ["re: welcome"]


async def test_answer_result_after_a_quick_hangup(caplog: pytest.LogCaptureFixture) -> None:
    """Check answer() that connected still completes when the call is hung up
    before anyone awaits it, and an answer nobody awaits logs nothing."""
    out, inc, _, _ = pair()
    answered = inc.answer()
    out.hangup()
    await answered  # connected, then ended: the answer itself succeeded
    out2, inc2, _, _ = pair()
    with caplog.at_level(logging.ERROR):
        inc2.answer()  # VoxEngine style: not awaited
        inc2.hangup()
        for _ in range(3):
            await asyncio.sleep(0)
    assert caplog.records == []


async def test_answer_rules() -> None:
    """Check the caller's end cannot be answered and an ended call cannot be
    answered, each with a clear CallError."""
    out, inc, _, _ = pair()
    with pytest.raises(CallError, match="only an inbound call can be answered"):
        out.answer()
    inc.reject(486)
    with pytest.raises(CallError, match="already ended"):
        inc.answer()


def test_reject_gives_failed_with_the_code() -> None:
    """Check rejecting the callee's end fails both ends with the code, and
    the reject headers reach the caller's event."""
    out, inc, _, _ = pair()
    seen_out = record(out)
    seen_inc = record(inc)
    inc.reject(403, {"X-Why": "pin"})
    assert [(e.name, e.code, e.headers) for e in seen_out] == [("Failed", 403, {"X-Why": "pin"})]
    assert [(e.name, e.code) for e in seen_inc] == [("Failed", 403)]
    assert (out.state, inc.state) == (CallState.FAILED, CallState.FAILED)


async def test_reject_rules() -> None:
    """Check reject needs the callee's end, still alerting, and a 3xx-6xx code."""
    out, inc, _, _ = pair()
    with pytest.raises(CallError, match="only an inbound call can be rejected"):
        out.reject(486)
    with pytest.raises(CallError, match="300-699"):
        inc.reject(200)
    await inc.answer()
    with pytest.raises(CallError, match="cannot reject a call in state CONNECTED"):
        inc.reject(486)


@pytest.mark.parametrize("side", ["caller", "callee"])
async def test_hangup_after_answer_disconnects_the_other_end(side: str) -> None:
    """Check a hangup on either end of a connected pair gives Disconnected
    200 on both, with the hangup headers on the other end's event."""
    out, inc, _, _ = pair()
    await inc.answer()
    seen_out = record(out)
    seen_inc = record(inc)
    (out if side == "caller" else inc).hangup({"X-Bye": "1"})
    other = seen_inc if side == "caller" else seen_out
    assert [(e.name, e.code) for e in seen_out] == [("Disconnected", 200)]
    assert [(e.name, e.code) for e in seen_inc] == [("Disconnected", 200)]
    assert other[0].headers == {"X-Bye": "1"}
    assert (out.state, inc.state) == (CallState.DISCONNECTED, CallState.DISCONNECTED)


def test_callee_hangup_before_answer_fails_the_caller_with_480() -> None:
    """Check hanging up the callee's end before answering refuses the call:
    the caller gets Failed 480 and the callee Disconnected 480 (as a SIP
    call's hangup before answer)."""
    out, inc, _, _ = pair()
    seen_out = record(out)
    seen_inc = record(inc)
    inc.hangup()
    assert [(e.name, e.code) for e in seen_out] == [("Failed", 480)]
    assert [(e.name, e.code) for e in seen_inc] == [("Disconnected", 480)]


def test_caller_hangup_before_answer_cancels() -> None:
    """Check hanging up the caller's end while it rings cancels the call:
    Disconnected 487 on both ends."""
    out, inc, _, _ = pair()
    seen_out = record(out)
    seen_inc = record(inc)
    out.hangup()
    assert [(e.name, e.code, e.reason) for e in seen_out] == [("Disconnected", 487, "Cancelled")]
    assert [(e.name, e.code, e.reason) for e in seen_inc] == [("Disconnected", 487, "Cancelled")]
    out.hangup()
    inc.hangup()
    assert (len(seen_out), len(seen_inc)) == (1, 1)


def test_ring_and_early_media_reach_the_caller() -> None:
    """Check ring() gives the caller Ringing and start_early_media() Progress,
    with their headers."""
    out, inc, _, _ = pair()
    seen = record(out)
    inc.ring({"X-R": "1"})
    inc.start_early_media()
    assert [(e.name, e.headers) for e in seen] == [("Ringing", {"X-R": "1"}), ("Progress", {})]


async def test_ring_and_early_media_rules() -> None:
    """Check ring/start_early_media need the callee's end before it is answered."""
    out, inc, _, _ = pair()
    with pytest.raises(CallError, match=r"ring\(\) needs an inbound call not yet answered"):
        out.ring()
    with pytest.raises(CallError, match=r"start_early_media\(\) needs"):
        out.start_early_media()
    await inc.answer()
    with pytest.raises(CallError, match=r"ring\(\) needs"):
        inc.ring()
    with pytest.raises(CallError, match=r"start_early_media\(\) needs"):
        inc.start_early_media()


async def test_messages_and_info_cross_both_ways() -> None:
    """Check send_message gives MessageReceived (text, headers) and send_info
    InfoReceived (mime type, body as bytes) on the other end, both ways."""
    out, inc, caller_side, callee_side = pair()
    await inc.answer()
    seen_out = record(out, CallEvents.MessageReceived, CallEvents.InfoReceived)
    seen_inc = record(inc, CallEvents.MessageReceived, CallEvents.InfoReceived)
    out.send_message("hello", {"X-M": "1"})
    inc.send_message("hi back")
    out.send_info("application/json", '{"a": 1}')
    inc.send_info("application/dtmf-relay", b"Signal=5")
    assert [(e.name, e.text, e.headers) for e in seen_inc if e.name == "MessageReceived"] == [
        ("MessageReceived", "hello", {"X-M": "1"})
    ]
    assert [(e.name, e.mime_type, e.body) for e in seen_inc if e.name == "InfoReceived"] == [
        ("InfoReceived", "application/json", b'{"a": 1}')
    ]
    assert [(e.name, e.text) for e in seen_out if e.name == "MessageReceived"] == [
        ("MessageReceived", "hi back")
    ]
    assert [(e.mime_type, e.body) for e in seen_out if e.name == "InfoReceived"] == [
        ("application/dtmf-relay", b"Signal=5")
    ]
    # each end's listeners ran through that end's dispatcher
    assert all(ev.call is out for _, ev in caller_side.ran)
    assert all(ev.call is inc for _, ev in callee_side.ran)


async def test_messages_need_a_connected_call() -> None:
    """Check send_message and send_info before the answer and after the end
    raise CallError saying why."""
    out, inc, _, _ = pair()
    for leg in (out, inc):
        with pytest.raises(CallError, match="messages need a connected call"):
            leg.send_message("x")
        with pytest.raises(CallError, match="INFO needs a connected call"):
            leg.send_info("text/plain", "x")
    await inc.answer()
    out.hangup()
    with pytest.raises(CallError, match="messages need a connected call"):
        inc.send_message("x")


def test_internal_call_without_peer() -> None:
    """Check an internal call that lost its peer says so."""
    lone = InternalCall(direction="inbound", number="1", callerid="a")
    lone._set_state(CallState.ALERTING)
    with pytest.raises(CallError, match="no peer"):
        lone.answer()
    lone.hangup()
    assert lone.state.ended


def test_reentrant_hangup_in_a_listener() -> None:
    """Check a Disconnected listener that hangs up the other end while the
    first end is ending sees each end end exactly once."""
    out, inc, _, _ = pair()
    seen = record(out, CallEvents.Disconnected, CallEvents.Failed)
    inc.add_event_listener(CallEvents.Disconnected, lambda e: out.hangup())
    inc.add_event_listener(CallEvents.Disconnected, lambda e: inc.hangup())
    inc.hangup()
    assert [(e.name, e.code) for e in seen] == [("Failed", 480)]
