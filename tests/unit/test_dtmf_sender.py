"""engine.media.dtmf_sender: RFC 4733 digits out, frame by frame, with no
clock and no socket (the ticks are the test's)."""

from __future__ import annotations

import pytest

from engine.media.codecs.telephone_event import TelephoneEvent, TelephoneEventReceiver
from engine.media.dtmf_sender import DtmfSender, DtmfSenderError, validate_digits
from engine.media.rtp import RtpPacket, RtpSender


def run(dtmf: DtmfSender, sender: RtpSender) -> list[list[RtpPacket]]:
    """Tick until finished; the packets of each tick."""
    frames: list[list[RtpPacket]] = []
    while True:
        packets = dtmf.tick(sender)
        if packets is None:
            return frames
        frames.append(packets)
        assert len(frames) < 10_000


def new_sender() -> RtpSender:
    return RtpSender(ssrc=0x1234, sequence_number=65533, timestamp=0xFFFFFF00)


def test_one_digit_is_one_event_on_seven_ticks() -> None:
    """Check a 100 ms digit: four updates and three end packets on seven
    20 ms ticks, marker on the first only, one timestamp (the event start),
    the duration growing by 160, sequence numbers continuing the stream's
    (across the wrap), and the stream clock advanced by seven frames."""
    sender = new_sender()
    dtmf = DtmfSender("5", payload_type=101)
    frames = run(dtmf, sender)
    assert [len(f) for f in frames] == [1] * 7
    packets = [f[0] for f in frames]
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [e.event for e in events] == [5] * 7
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert {p.timestamp for p in packets} == {0xFFFFFF00}
    assert {(p.ssrc, p.payload_type) for p in packets} == {(0x1234, 101)}
    assert [p.sequence_number for p in packets] == [65533, 65534, 65535, 0, 1, 2, 3]
    assert sender.sequence_number == 4
    assert sender.timestamp == (0xFFFFFF00 + 7 * 160) & 0xFFFFFFFF
    assert dtmf.finished and not dtmf.stopped and dtmf.sent == "5"
    assert sender.packet_count == 7 and sender.octet_count == 28


def test_finished_sender_leaves_the_stream_alone() -> None:
    """Check tick() after the end returns None and moves nothing."""
    sender = new_sender()
    dtmf = DtmfSender("1", payload_type=101)
    run(dtmf, sender)
    before = (sender.sequence_number, sender.timestamp)
    assert dtmf.tick(sender) is None
    assert (sender.sequence_number, sender.timestamp) == before


def test_gap_between_digits() -> None:
    """Check the next event starts duration + gap after the previous one
    (170 ms: nine 20 ms frames), with its own marker and timestamp."""
    sender = new_sender()
    dtmf = DtmfSender("12", payload_type=101, duration=0.1, gap=0.07)
    assert dtmf.total_ticks == 9 + 7
    frames = run(dtmf, sender)
    assert len(frames) == 16
    assert [len(f) for f in frames] == [1] * 7 + [0, 0] + [1] * 7
    second = frames[9][0]
    assert second.marker and second.timestamp == (0xFFFFFF00 + 9 * 160) & 0xFFFFFFFF
    assert TelephoneEvent.parse(second.payload).event == 2
    assert dtmf.sent == "12"


def test_gap_never_overlaps_the_end_packets() -> None:
    """Check with gap 0 the next event still waits for the third end packet
    (a later event needs a later timestamp)."""
    dtmf = DtmfSender("12", payload_type=101, gap=0.0)
    frames = run(dtmf, new_sender())
    assert [len(f) for f in frames] == [1] * 14
    assert frames[7][0].marker


def test_comma_pauses_half_a_second() -> None:
    """Check ',' adds 25 empty frames, and a trailing ',' is waited out."""
    dtmf = DtmfSender("1,2,", payload_type=101)
    frames = run(dtmf, new_sender())
    assert len(frames) == 9 + 25 + 9 + 25
    assert [i for i, f in enumerate(frames) if f and f[0].marker] == [0, 34]


def test_short_duration_and_other_clock_rate() -> None:
    """Check a 50 ms digit at 16 kHz: frames of 320, one update, three ends."""
    sender = new_sender()
    dtmf = DtmfSender("#", payload_type=96, clock_rate=16000, duration=0.05)
    frames = run(dtmf, sender)
    events = [TelephoneEvent.parse(f[0].payload) for f in frames]
    assert [(e.event, e.end, e.duration) for e in events] == [
        (11, False, 320), (11, False, 640), (11, True, 800), (11, True, 800), (11, True, 800)]
    assert sender.timestamp == (0xFFFFFF00 + 5 * 320) & 0xFFFFFFFF


def test_receiver_hears_exactly_the_digits() -> None:
    """Check the packets, fed to our own RFC 4733 receiver, give each digit
    once with its duration."""
    sender = new_sender()
    dtmf = DtmfSender("1a*#0D", payload_type=101, duration=0.08, gap=0.05)
    receiver = TelephoneEventReceiver()
    heard = []
    for i, frame in enumerate(run(dtmf, sender)):
        for p in frame:
            heard += receiver.receive(p.payload, p.timestamp, i * 0.02)
    assert [d.digit for d in heard] == list("1A*#0D")
    assert {d.duration for d in heard} == {0.08} and all(d.ended for d in heard)


def test_stop_ends_the_open_event() -> None:
    """Check stop() two frames into an event: three end packets with the
    duration reached (320), then nothing; the digit counts as sent."""
    sender = new_sender()
    dtmf = DtmfSender("12", payload_type=101)
    first = [dtmf.tick(sender), dtmf.tick(sender)]
    dtmf.stop()
    assert dtmf.stopped and not dtmf.finished
    rest = run(dtmf, sender)
    events = [TelephoneEvent.parse(f[0].payload) for f in rest]
    assert [(e.event, e.end, e.duration) for e in events] == [(1, True, 320)] * 3
    assert not any(f[0].marker for f in rest)
    assert {f[0].timestamp for f in rest} == {first[0][0].timestamp}  # type: ignore[index]
    assert dtmf.finished and dtmf.sent == "1"


def test_stop_during_end_packets_lets_them_finish() -> None:
    """Check stop() after the first end packet: the other two follow."""
    sender = new_sender()
    dtmf = DtmfSender("12", payload_type=101)
    for _ in range(5):
        dtmf.tick(sender)
    dtmf.stop()
    rest = run(dtmf, sender)
    assert [TelephoneEvent.parse(f[0].payload).duration for f in rest] == [800, 800]
    assert dtmf.sent == "1"


def test_stop_between_events_or_before_start() -> None:
    """Check stop() in a gap, or before the first tick, finishes at once."""
    sender = new_sender()
    dtmf = DtmfSender("12", payload_type=101)
    for _ in range(8):
        dtmf.tick(sender)
    dtmf.stop()
    assert dtmf.finished and dtmf.tick(sender) is None and dtmf.sent == "1"
    fresh = DtmfSender("9", payload_type=101)
    fresh.stop()
    fresh.stop()  # again: harmless
    assert fresh.finished and fresh.tick(sender) is None and fresh.sent == ""


@pytest.mark.parametrize(
    ("digits", "message"),
    [
        ("12x4", "'x' at position 3 is not a DTMF digit (0-9 * # A-D, ',' pauses)"),
        ("1 2", "' ' at position 2 is not a DTMF digit (0-9 * # A-D, ',' pauses)"),
        ("E", "'E' at position 1 is not a DTMF digit (0-9 * # A-D, ',' pauses)"),
        ("", "no digits to send"),
        ("1" * 257, "too many digits: 257, at most 256"),
    ],
)
def test_bad_digits_are_named(digits: str, message: str) -> None:
    """Check the error names the bad character and its position."""
    with pytest.raises(DtmfSenderError) as info:
        validate_digits(digits)
    assert str(info.value) == message


def test_lower_case_letters_are_accepted() -> None:
    assert validate_digits("abcd,*#09") == "ABCD,*#09"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": 0.0}, "duration must be more than 0 and at most 5.0 s, got 0.0"),
        ({"duration": 6.0}, "duration must be more than 0 and at most 5.0 s, got 6.0"),
        ({"gap": -0.01}, "gap must be 0 to 5.0 s, got -0.01"),
    ],
)
def test_bad_timing(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(DtmfSenderError) as info:
        DtmfSender("1", payload_type=101, **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message
