"""Tests for DTMF on calls: ``handle_tones``, ``ToneReceived``, INFO bodies
as tones, type-ahead and every way ``collect_tones`` ends.

A fake call (a bare :class:`~engine.calls.call.Call`) gets digits the way the
media session and the SIP layer deliver them, through ``_tone_received``;
timeouts are short real delays on the test's loop.
"""

from __future__ import annotations

import asyncio

import pytest

from engine.calls.call import Call, CallEvent, CallEvents, CallState, new_call_pair
from engine.media.codecs.telephone_event import ONSET_MODE


class FakeCall(Call):
    """A connected call that records tone-handling changes."""

    kind = "fake"

    def __init__(self) -> None:
        super().__init__(direction="inbound", number="100", callerid="alice")
        self._set_state(CallState.CONNECTED)
        self.handling: list[bool] = []

    def _tone_handling_changed(self, enabled: bool) -> None:
        self.handling.append(enabled)

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup")


def tones_of(call: Call) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    call.add_event_listener(CallEvents.ToneReceived, lambda ev: seen.append((ev.tone, ev.mode)))
    return seen


async def feed(call: Call, digits: str, mode: str = "rfc4733", gap: float = 0.0) -> None:
    for d in digits:
        await asyncio.sleep(gap)
        call._tone_received(d, mode)


def test_tones_are_off_by_default() -> None:
    """Check no ToneReceived is emitted before handle_tones(True)."""
    call = FakeCall()
    seen = tones_of(call)
    call._tone_received("1", "rfc4733")
    assert seen == []
    assert not call.typeahead


def test_handle_tones_emits_tone_and_mode() -> None:
    """Check ToneReceived carries the digit and its mode, and the media hook
    is told once per change."""
    call = FakeCall()
    seen = tones_of(call)
    call.handle_tones(True)
    call.handle_tones(True)
    call._tone_received("5", "inband")
    call.handle_tones(False)
    call._tone_received("6", "inband")
    assert seen == [("5", "inband")]
    assert call.handling == [True, False]


async def test_info_bodies_become_tones() -> None:
    """Check application/dtmf-relay and application/dtmf INFO become tones in
    mode 'info' after InfoReceived; other and bad bodies only InfoReceived."""
    out, inc = new_call_pair(number="x", callerid="y", display_name=None, headers=None,
                             caller_dispatcher=FakeCall().dispatcher)
    await inc.answer()
    names: list[str] = []
    inc.add_event_listener(CallEvents.InfoReceived, lambda ev: names.append("info"))
    seen = tones_of(inc)
    inc.handle_tones(True)
    out.send_info("application/dtmf-relay", "Signal=7\r\nDuration=160\r\n")
    out.send_info("application/dtmf; charset=x", "*")
    out.send_info("text/plain", "8")
    out.send_info("application/dtmf", "nonsense")
    assert seen == [("7", "info"), ("*", "info")]
    assert names == ["info"] * 4


async def test_collect_until_terminator() -> None:
    """Check the terminator ends collection and is left out of the result."""
    call = FakeCall()
    task = asyncio.ensure_future(call.collect_tones(terminator="#"))
    await asyncio.sleep(0)
    assert call.handling == [True]
    await feed(call, "12#3")
    assert await task == "12"
    assert call.handling == [True, False]


async def test_collect_any_of_several_terminators() -> None:
    """Check ``terminator`` may name several keys."""
    call = FakeCall()
    task = asyncio.ensure_future(call.collect_tones(terminator="*#"))
    await asyncio.sleep(0)
    await feed(call, "9*")
    assert await task == "9"


async def test_collect_until_max_digits() -> None:
    """Check collection ends at max_digits and later digits are not taken."""
    call = FakeCall()
    call.handle_tones(True)
    task = asyncio.ensure_future(call.collect_tones(max_digits=3))
    await asyncio.sleep(0)
    await feed(call, "4567")
    assert await task == "456"
    assert call.handling == [True]  # handle_tones(True) keeps it on
    assert list(call.typeahead) == ["7"]


async def test_collect_overall_timeout_returns_what_came() -> None:
    """Check the overall timeout returns the digits so far, without raising."""
    call = FakeCall()
    task = asyncio.ensure_future(call.collect_tones(terminator="#", timeout=0.1))
    await asyncio.sleep(0)
    await feed(call, "12")
    assert await task == "12"


async def test_collect_timeout_with_nothing_returns_empty() -> None:
    """Check a timeout with no digit returns ''."""
    call = FakeCall()
    assert await call.collect_tones(timeout=0.02) == ""
    assert call.handling == [True, False]


async def test_inter_digit_timeout_counts_from_the_first_digit() -> None:
    """Check the inter-digit timeout does not run before the first digit and
    ends collection after a pause between digits."""
    call = FakeCall()
    task = asyncio.ensure_future(call.collect_tones(inter_digit_timeout=0.05, timeout=2))
    await asyncio.sleep(0.1)  # longer than the inter-digit timeout, before any digit
    assert not task.done()
    await feed(call, "12", gap=0.01)
    await asyncio.sleep(0.15)
    await feed(call, "3")
    assert await task == "12"


async def test_call_end_returns_the_digits() -> None:
    """Check a hangup during collection returns what was collected."""
    call = FakeCall()
    task = asyncio.ensure_future(call.collect_tones(terminator="#"))
    await asyncio.sleep(0)
    await feed(call, "8")
    call.hangup()
    assert await task == "8"
    assert await call.collect_tones() == ""


async def test_typeahead_counts_first() -> None:
    """Check digits received while tones were handled and no collection ran
    (typed during a prompt) start the next collection."""
    call = FakeCall()
    call.handle_tones(True)
    await feed(call, "12")
    task = asyncio.ensure_future(call.collect_tones(terminator="#", timeout=1))
    await asyncio.sleep(0)
    await feed(call, "3#")
    assert await task == "123"
    assert not call.typeahead


async def test_typeahead_alone_can_finish() -> None:
    """Check a terminator already typed ahead finishes at once."""
    call = FakeCall()
    call.handle_tones(True)
    await feed(call, "42#9")
    assert await call.collect_tones(terminator="#") == "42"
    assert list(call.typeahead) == ["9"]


async def test_collect_listener_is_removed() -> None:
    """Check collect_tones leaves no listener behind."""
    call = FakeCall()
    task = asyncio.ensure_future(call.collect_tones(max_digits=1))
    await asyncio.sleep(0)
    await feed(call, "1")
    await task
    assert call.emitter.listeners(str(CallEvents.ToneReceived)) == []


async def test_bad_max_digits() -> None:
    """Check max_digits below 1 is refused."""
    with pytest.raises(ValueError):
        await FakeCall().collect_tones(max_digits=0)


def test_tone_event_fields() -> None:
    """Check ``e.tone`` and ``e.mode`` read from the event."""
    call = FakeCall()
    events: list[CallEvent] = []
    call.add_event_listener(CallEvents.ToneReceived, events.append)
    call.handle_tones()
    call._tone_received("A", "rfc4733")
    assert (events[0].tone, events[0].mode, events[0].name) == ("A", "rfc4733", "ToneReceived")


class PromptedCall(FakeCall):
    """A :class:`FakeCall` whose playback stops are counted."""

    def __init__(self) -> None:
        super().__init__()
        self.stops = 0

    def stop_playback(self) -> None:
        self.stops += 1


async def test_barge_in_stops_the_prompt_at_a_digits_start() -> None:
    """Check ``collect_tones(stop_playback=True)`` stops the prompt when an
    RFC 4733 digit starts (its first packet: ``ONSET_MODE``), before the
    digit is reported at its end; the start is not a tone of its own, and
    without ``stop_playback`` a start stops nothing."""
    call = PromptedCall()
    seen = tones_of(call)
    task = asyncio.ensure_future(call.collect_tones(terminator="#", timeout=5.0, stop_playback=True))
    await asyncio.sleep(0)
    call._tone_received("4", ONSET_MODE)
    assert call.stops == 1 and seen == []
    call._tone_received("4", ONSET_MODE)  # repeated start packets: one barge-in
    await feed(call, "4#")
    assert await task == "4"
    assert call.stops == 1
    assert seen == [("4", "rfc4733"), ("#", "rfc4733")]
    quiet = PromptedCall()
    task = asyncio.ensure_future(quiet.collect_tones(terminator="#", timeout=5.0))
    await asyncio.sleep(0)
    quiet._tone_received("7", ONSET_MODE)
    await feed(quiet, "7#")
    assert await task == "7" and quiet.stops == 0


async def test_typeahead_first_digit_after_an_idle_period() -> None:
    """Check the type-ahead buffer (made by the first digit since
    bench/memory showed a deque per call) works when the first digit comes
    late: kept, picked up by collect_tones, and clear() from a scenario
    still empties it."""
    call = FakeCall()
    call.handle_tones(True)
    await asyncio.sleep(0.05)
    await feed(call, "5")
    assert list(call.typeahead) == ["5"]
    assert await call.collect_tones(max_digits=1) == "5"
    await feed(call, "67")
    call.typeahead.clear()
    await feed(call, "8")
    assert list(call.typeahead) == ["8"]
