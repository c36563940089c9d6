"""Call.send_digits at the call level (engine.calls): validation, modes,
pacing, queueing, stop, the end of the call; on internal call pairs, with
the pacing sleep replaced by virtual time (no real waiting).

The SIP paths (RFC 4733 in RTP, SIP INFO) are checked on real sockets in
tests/integration/test_call_media.py and against sipp in tests/e2e/test_send_digits.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterator

import pytest

import engine.calls.call
from engine.calls.call import Call, CallError, CallEvent, CallEvents, CallState, InternalCall, MediaStats, new_call_pair


class RecordingDispatcher:
    """Runs listeners in place, like a session."""

    def run_listener(self, handler: Callable[..., Any], event: Any) -> None:
        handler(event)


class PlainCall(Call):
    """The base call, which has no way to send digits."""


class VirtualSleep:
    """Stands in for the pacing sleep: records each delay; ``hold()`` makes
    sleeps wait until ``release()``."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, delay: float) -> None:
        self.delays.append(round(delay, 6))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()


@pytest.fixture
def sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[VirtualSleep]:
    fake = VirtualSleep()
    monkeypatch.setattr(engine.calls.call, "_sleep", fake)
    yield fake


async def connected_pair() -> tuple[InternalCall, InternalCall, list[CallEvent]]:
    """A connected pair; the callee handles tones; its ToneReceived and
    InfoReceived events are returned as they come."""
    out, inc = new_call_pair(number="1", callerid="a", display_name=None, headers=None,
                             caller_dispatcher=RecordingDispatcher())
    inc.dispatcher = RecordingDispatcher()
    await inc.answer()
    inc.handle_tones(True)
    seen: list[CallEvent] = []
    inc.add_event_listener(CallEvents.ToneReceived, seen.append)
    inc.add_event_listener(CallEvents.InfoReceived, seen.append)
    return out, inc, seen


def tones(seen: list[CallEvent]) -> list[tuple[str, str]]:
    return [(e.tone, e.mode) for e in seen if e.name == "ToneReceived"]


async def test_digits_reach_the_peer_paced(sleep: VirtualSleep) -> None:
    """Check each digit arrives as ToneReceived (mode rfc4733 for auto),
    one every duration + gap, a ',' pausing 0.5 s, and the handle gives True."""
    out, inc, seen = await connected_pair()
    action = out.send_digits("1,2b#")
    assert action.mode == "rfc4733" and action.digits == "1,2B#"
    assert await action is True and action.completed is True and action.done()
    assert tones(seen) == [("1", "rfc4733"), ("2", "rfc4733"), ("B", "rfc4733"), ("#", "rfc4733")]
    assert sleep.delays == [0.17, 0.5, 0.17, 0.17]
    assert "".join(inc.typeahead) == "12B#"  # nothing collected them: type-ahead for collect_tones
    assert "SendDigitsAction '1,2B#' rfc4733" in repr(action)


async def test_info_mode_gives_info_then_tone(sleep: VirtualSleep) -> None:
    """Check mode='info' delivers an application/dtmf-relay INFO per digit
    (Signal, Duration in ms), which the peer also reports as a tone (mode info)."""
    out, inc, seen = await connected_pair()
    assert await out.send_digits("4*", mode="info", duration=0.25, gap=0.05) is True
    assert [(e.name, e.mime_type, e.body) for e in seen if e.name == "InfoReceived"] == [
        ("InfoReceived", "application/dtmf-relay", b"Signal=4\r\nDuration=250\r\n"),
        ("InfoReceived", "application/dtmf-relay", b"Signal=*\r\nDuration=250\r\n"),
    ]
    assert tones(seen) == [("4", "info"), ("*", "info")]
    assert sleep.delays == [0.3]


async def test_digits_sent_meanwhile_follow(sleep: VirtualSleep) -> None:
    """Check a second send_digits waits for the first one to finish."""
    out, inc, seen = await connected_pair()
    sleep.hold()
    first = out.send_digits("12")
    second = out.send_digits("3")
    await asyncio.sleep(0)
    assert tones(seen) == [("1", "rfc4733")]
    sleep.release()
    assert await second is True and await first is True
    assert tones(seen) == [("1", "rfc4733"), ("2", "rfc4733"), ("3", "rfc4733")]


async def test_stop_drops_the_rest(sleep: VirtualSleep) -> None:
    """Check stop() ends one handle (False) and the next queued one runs."""
    out, inc, seen = await connected_pair()
    sleep.hold()
    first = out.send_digits("12")
    second = out.send_digits("9")
    await asyncio.sleep(0)
    first.stop()
    first.stop()  # again: harmless
    sleep.release()
    assert await first is False and first.completed is False
    assert await second is True
    assert tones(seen) == [("1", "rfc4733"), ("9", "rfc4733")]


async def test_hangup_ends_sending_and_waiting_digits(sleep: VirtualSleep) -> None:
    """Check the end of the call resolves the handle sending and the one
    waiting with False, and sends nothing more."""
    out, inc, seen = await connected_pair()
    sleep.hold()
    first = out.send_digits("12")
    second = out.send_digits("3")
    await asyncio.sleep(0)
    inc.hangup()
    assert await first is False and await second is False
    assert tones(seen) == [("1", "rfc4733")]
    with pytest.raises(CallError, match="call already ended"):
        out.send_digits("1")


async def test_peer_gone_mid_way_fails_the_handle(sleep: VirtualSleep) -> None:
    """Check a digit that can no longer be delivered ends the handle with False."""
    out, inc, seen = await connected_pair()
    sleep.hold()
    action = out.send_digits("12")
    await asyncio.sleep(0)
    out.state = CallState.PROGRESSING  # as if no longer connected, without the end callbacks
    sleep.release()
    assert await action is False
    assert tones(seen) == [("1", "rfc4733")]


@pytest.mark.parametrize(
    ("digits", "kwargs", "message"),
    [
        ("12x", {}, "send_digits: 'x' at position 3 is not a DTMF digit (0-9 * # A-D, ',' pauses)"),
        ("", {}, "send_digits: no digits to send"),
        ("1", {"mode": "sms"}, "send_digits: mode must be one of auto, rfc4733, info, inband, not 'sms'"),
        ("1", {"duration": 0.01}, "send_digits: duration must be 0.04 to 5.0 s, not 0.01"),
        ("1", {"gap": -1.0}, "send_digits: gap must be 0 to 5.0 s, not -1.0"),
    ],
)
async def test_bad_requests_are_refused(digits: str, kwargs: dict[str, object], message: str) -> None:
    """Check validation errors are CallErrors that say what is wrong."""
    out, inc, seen = await connected_pair()
    with pytest.raises(CallError) as info:
        out.send_digits(digits, **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


async def test_digits_need_a_connected_call() -> None:
    """Check an internal call sends digits only once connected, and a call
    kind without digit support refuses them."""
    out, inc = new_call_pair(number="1", callerid="a", display_name=None, headers=None,
                             caller_dispatcher=RecordingDispatcher())
    with pytest.raises(CallError, match="send_digits needs a connected call, not PROGRESSING"):
        out.send_digits("1")
    plain = PlainCall(direction="inbound", number="1", callerid="a")
    plain._set_state(CallState.CONNECTED)
    with pytest.raises(CallError, match="this call cannot send digits"):
        plain.send_digits("1")


async def test_media_stats_without_media_are_zero() -> None:
    out, inc, seen = await connected_pair()
    assert out.media_stats() == MediaStats() and out.media_stats().rtt_ms is None
