"""Tests for :mod:`engine.media.codecs.telephone_event` (RFC 4733)."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

import pytest

from engine.media.codecs.telephone_event import (
    DIGIT_TO_EVENT,
    EVENT_TO_DIGIT,
    DigitReceived,
    DigitStarted,
    TelephoneEvent,
    TelephoneEventError,
    TelephoneEventReceiver,
    generate_event_packets,
)


def test_payload_bytes() -> None:
    """Check payloads against hand-made bytes: digit 5 at -10 dBm0, 800
    units, and an end packet for # at -63 dBm0 with 65535 units."""
    assert TelephoneEvent(5, False, 10, 800).serialize() == b"\x05\x0a\x03\x20"
    assert TelephoneEvent(11, True, 63, 65535).serialize() == b"\x0b\xbf\xff\xff"
    assert TelephoneEvent.parse(b"\x05\x0a\x03\x20") == TelephoneEvent(5, False, 10, 800)
    # the R bit is ignored, trailing redundant blocks too
    assert TelephoneEvent.parse(b"\x0b\xff\x00\xa0\x01\x02\x03\x04") == TelephoneEvent(11, True, 63, 160)
    assert TelephoneEvent(11).digit == "#"
    assert TelephoneEvent(16).digit is None


def test_payload_errors() -> None:
    """Check short payloads and out-of-range fields give clear errors."""
    with pytest.raises(TelephoneEventError, match="payload too short: 3 bytes, need 4"):
        TelephoneEvent.parse(b"\x01\x02\x03")
    with pytest.raises(TelephoneEventError, match="event out of range 0-255: 256"):
        TelephoneEvent(256)
    with pytest.raises(TelephoneEventError, match="volume out of range 0-63: 64"):
        TelephoneEvent(1, volume=64)
    with pytest.raises(TelephoneEventError, match="duration out of range 0-65535: -1"):
        TelephoneEvent(1, duration=-1)


def test_event_code_mapping() -> None:
    """Check the RFC 4733 section 3.2 codes 0-15 for 0-9 * # A-D."""
    assert "".join(EVENT_TO_DIGIT[i] for i in range(16)) == "0123456789*#ABCD"
    assert DIGIT_TO_EVENT["*"] == 10 and DIGIT_TO_EVENT["D"] == 15


def test_sender_sequence() -> None:
    """Check the packets for a 100 ms digit: marker first, an update every
    20 ms with growing duration, three end packets with the final duration."""
    packets = generate_event_packets("5", duration=0.1)
    assert [(p.marker, p.payload.end, p.payload.duration, p.send_offset) for p in packets] == [
        (True, False, 160, 0),
        (False, False, 320, 160),
        (False, False, 480, 320),
        (False, False, 640, 480),
        (False, True, 800, 640),
        (False, True, 800, 800),
        (False, True, 800, 960),
    ]
    assert {p.payload.event for p in packets} == {5}
    assert packets[0].payload.serialize() == b"\x05\x0a\x00\xa0"
    assert packets[-1].payload.serialize() == b"\x05\x8a\x03\x20"
    short = generate_event_packets("a", duration=0.02)
    assert [(p.marker, p.payload.end, p.payload.event) for p in short] == [(True, True, 12)] + [(False, True, 12)] * 2


def test_sender_errors() -> None:
    """Check bad digits and durations are refused."""
    with pytest.raises(TelephoneEventError, match="not a DTMF digit: 'x'"):
        generate_event_packets("x")
    with pytest.raises(TelephoneEventError, match="too long for one event: 80000 > 65535"):
        generate_event_packets("1", duration=10)
    with pytest.raises(TelephoneEventError, match="must be positive"):
        generate_event_packets("1", duration=0)
    with pytest.raises(TelephoneEventError, match="end_repeats must be at least 1"):
        generate_event_packets("1", end_repeats=0)


def feed(rx: TelephoneEventReceiver, digits: str, *, drop: AbstractSet[tuple[int, int]] = frozenset(),
         repeat_updates: bool = False) -> list[DigitReceived]:
    """Send ``digits`` through ``rx`` 200 ms apart; ``drop`` holds (digit index, packet index)."""
    out: list[DigitReceived] = []
    for i, digit in enumerate(digits):
        ts = 1000 + i * 1600
        for j, p in enumerate(generate_event_packets(digit, duration=0.1)):
            if (i, j) in drop:
                continue
            now = i * 0.2 + p.send_offset / 8000
            out += rx.receive(p.payload.serialize(), ts, now)
            if repeat_updates:
                out += rx.receive(p.payload.serialize(), ts, now + 0.001)
        out += rx.handle_timer(i * 0.2 + 0.15)  # not yet timed out
    return out


def test_receiver_each_digit_once() -> None:
    """Check '1234#' gives five digits, once each, despite three end packets
    and every packet duplicated, with their durations."""
    for repeat in (False, True):
        rx = TelephoneEventReceiver()
        got = feed(rx, "1234#", repeat_updates=repeat)
        assert [d.digit for d in got] == list("1234#")
        assert all(d.duration == 0.1 and d.ended for d in got)
        assert [d.timestamp for d in got] == [1000, 2600, 4200, 5800, 7400]
        assert rx.get_timer() is None


def test_receiver_lost_start_packet() -> None:
    """Check a digit whose marker packet was lost is still reported once."""
    rx = TelephoneEventReceiver()
    got = feed(rx, "12", drop={(0, 0), (1, 0), (1, 1)})
    assert [(d.digit, d.duration) for d in got] == [("1", 0.1), ("2", 0.1)]


def test_receiver_lost_end_packets_next_event() -> None:
    """Check a digit whose end packets were all lost is reported when the
    next event starts, with the last duration seen."""
    rx = TelephoneEventReceiver()
    got = feed(rx, "78", drop={(0, 4), (0, 5), (0, 6)})
    assert [(d.digit, d.duration, d.ended) for d in got] == [("7", 0.08, False), ("8", 0.1, True)]


def test_receiver_lost_end_packets_timeout() -> None:
    """Check a digit without end packets is reported at the timeout, once,
    and a late end packet of it is then ignored."""
    rx = TelephoneEventReceiver(timeout=0.25)
    packets = generate_event_packets("9", duration=0.1)
    for p in packets[:4]:
        assert rx.receive(p.payload.serialize(), 500, p.send_offset / 8000) == []
    timer = rx.get_timer()
    assert timer is not None and timer == pytest.approx(0.06 + 0.25)
    assert rx.handle_timer(timer - 0.01) == []
    assert rx.handle_timer(timer) == [DigitReceived("9", 0.08, 500, False)]
    assert rx.get_timer() is None and rx.handle_timer(10.0) == []
    assert rx.receive(packets[-1].payload.serialize(), 500, 0.4) == []


def test_receiver_ignores_non_dtmf_and_rejects_bad_payload() -> None:
    """Check event 16 (flash) is ignored and a short payload raises."""
    rx = TelephoneEventReceiver()
    assert rx.receive(TelephoneEvent(16, True).serialize(), 1, 0.0) == []
    with pytest.raises(TelephoneEventError):
        rx.receive(b"\x01", 2, 0.0)


def test_receiver_reports_a_digit_start_at_its_first_packet() -> None:
    """Check ``receive_events`` reports a :class:`DigitStarted` on an event's
    first packet (barge-in acts on it), once despite repeats, and the digit
    itself only at the event's end; ``receive`` never returns a start."""
    rx = TelephoneEventReceiver()
    packets = [p.payload.serialize() for p in generate_event_packets("5", duration=0.1)]
    first = rx.receive_events(packets[0], 1000, 0.0)
    assert first == [DigitStarted("5", 1000)]
    assert rx.receive_events(packets[0], 1000, 0.001) == []
    rest = [(i, e) for i, p in enumerate(packets[1:], 1) for e in rx.receive_events(p, 1000, i * 0.02)]
    first_end = next(i for i, p in enumerate(packets) if TelephoneEvent.parse(p).end)
    assert [(i, type(e)) for i, e in rest] == [(first_end, DigitReceived)]
    assert rest[0][1].digit == "5"
    plain = TelephoneEventReceiver()
    got = [e for i, p in enumerate(packets) for e in plain.receive(p, 2600, i * 0.02)]
    assert [type(e) for e in got] == [DigitReceived]


def test_receiver_first_digit_after_a_long_idle_period() -> None:
    """Check a receiver that saw nothing for ten minutes (its list of
    reported events is made by the first digit, not up front) reports
    each digit once, with repeated end packets and late updates ignored."""
    rx = TelephoneEventReceiver()
    assert rx.get_timer() is None and rx.handle_timer(600.0) == []
    got: list[DigitReceived] = []
    for ts, digit in ((160_000, "7"), (161_600, "#")):
        for duration, end in ((160, False), (480, False), (800, True), (800, True), (800, True)):
            got += rx.receive(TelephoneEvent(DIGIT_TO_EVENT[digit], end, 10, duration).serialize(), ts, 600.0)
        got += rx.receive(TelephoneEvent(DIGIT_TO_EVENT[digit], False, 10, 640).serialize(), ts, 600.1)
    assert [(d.digit, d.timestamp, d.ended) for d in got] == [("7", 160_000, True), ("#", 161_600, True)]
    assert rx.get_timer() is None
