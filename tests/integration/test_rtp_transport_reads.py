"""How many datagrams one wake-up of RtpTransport reads (engine.transport.rtp_transport), on a real socket."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Callable

import pytest
import uvloop

from engine.media.clock import MediaClock
from engine.transport.rtp_transport import MAX_READS_PER_WAKEUP, RtpTransport, rtp_backlog
from tests.clock_fakes import LeadDispatch


def _queued(count: int) -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        tx.sendto(b"%d" % i, rx.getsockname())
    # loopback queues each datagram before sendto returns
    return rx, tx


def test_one_read_at_a_call_pace_then_a_bounded_drain_in_a_burst() -> None:
    """A wake-up after a quiet spell reads one datagram (a phone's steady
    pace); one that comes within the burst gap drains what is queued, in
    order, but at most MAX_READS_PER_WAKEUP, so a flooded port cannot hold
    the loop; an empty socket reads nothing and raises nothing."""
    rx, tx = _queued(3 * MAX_READS_PER_WAKEUP)
    got: list[bytes] = []
    transport = RtpTransport(rx, lambda data, addr: got.append(data))
    transport._on_readable()
    assert got == [b"0"]
    transport._on_readable()  # right after the last read: a burst
    assert len(got) == 1 + MAX_READS_PER_WAKEUP
    assert got == [b"%d" % i for i in range(len(got))]
    assert transport.received == len(got)
    transport._on_readable()
    transport._on_readable()
    assert len(got) == 3 * MAX_READS_PER_WAKEUP
    transport._on_readable()
    assert len(got) == 3 * MAX_READS_PER_WAKEUP
    rx.close()
    tx.close()


def test_a_failing_handler_does_not_stop_the_reading() -> None:
    """A handler that raises is logged; the next datagrams are still read."""
    rx, tx = _queued(3)
    seen: list[bytes] = []

    def handler(data: bytes, addr: object) -> None:
        seen.append(data)
        if data == b"0":
            raise RuntimeError("boom")

    transport = RtpTransport(rx, handler)
    transport._on_readable()
    transport._on_readable()
    assert seen == [b"0", b"1", b"2"]
    rx.close()
    tx.close()


async def test_a_due_media_tick_starts_in_the_reader_not_after_the_other_readers() -> None:
    """With send workers and the loop behind (here: blocked past the tick's
    due time, then one datagram ready), the reader that notices the tick is due starts it
    right after its own datagram, before the loop's timers run."""
    order: list[str] = []

    class Sink:
        def tick(self, now: float) -> bool:
            order.append("tick")
            return False

    clock = MediaClock()
    clock.dispatch = LeadDispatch()  # as send workers: readers may start its ticks
    clock.add(Sink())
    rx, tx = _queued(0)
    transport = RtpTransport(rx, lambda data, addr: order.append("read"))
    transport.attach()
    try:
        tx.sendto(b"x", rx.getsockname())
        while time.monotonic() < clock.next_at + 0.003:  # the loop is busy elsewhere
            pass
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert order == ["read", "tick"]
        assert clock.ticks == 1 and clock.ticks_inline == 1
    finally:
        await clock.stop()
        transport.detach()
        rx.close()
        tx.close()


LEGS, STALLED_TICKS = 5, 3


def _catch_up(loop_name: str, start: Callable[[MediaClock, list[tuple[socket.socket, socket.socket]]], None],
              stall_on: bytes | None = None) -> list[list[int]]:
    """Five legs read by RtpTransports and a clock with a lead (readers may
    start its ticks) on a fresh ``loop_name`` loop; ``start(clock, pairs)``
    sets the stall going (and sends what the phones send meanwhile); with
    ``stall_on``, leg 0's handler runs :func:`_stall` on that datagram.
    Returns, for each of the first STALLED_TICKS + 1 ticks, how many
    datagrams each leg had read when it started."""

    async def main() -> list[list[int]]:
        reads = [0] * LEGS
        seen: list[list[int]] = []
        clock = MediaClock()
        pairs = [_queued(0) for _ in range(LEGS)]

        class Sink:
            def tick(self, now: float) -> bool:
                seen.append(list(reads))
                return len(seen) <= STALLED_TICKS

        transports = []
        for i, (rx, _tx) in enumerate(pairs):
            def handler(data: bytes, addr: object, i: int = i) -> None:
                reads[i] += 1
                if i == 0 and data == stall_on:
                    _stall(clock, pairs, skip_leg=0)
            transports.append(RtpTransport(rx, handler))
        clock.dispatch = LeadDispatch()
        clock.add(Sink())
        for t in transports:
            t.attach()
        try:
            start(clock, pairs)
            for _ in range(300):
                if len(seen) > STALLED_TICKS:
                    break
                await asyncio.sleep(0.001)
            return seen
        finally:
            await clock.stop()
            for t in transports:
                t.detach()
            for rx, tx in pairs:
                rx.close()
                tx.close()

    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        seen = runner.run(main())
    assert len(seen) == STALLED_TICKS + 1
    return seen


def _stall(clock: MediaClock, pairs: list[tuple[socket.socket, socket.socket]], skip_leg: int | None = None) -> None:
    """The phones send frames 1 to STALLED_TICKS + 1 (``skip_leg``: its
    frame 1 is already read) while the loop is stuck past STALLED_TICKS
    intervals after the first tick's planned start."""
    for frame in range(1, STALLED_TICKS + 2):
        for k, (rx, tx) in enumerate(pairs):
            if k != skip_leg or frame > 1:
                tx.sendto(b"%d" % frame, rx.getsockname())
    while time.monotonic() < clock.next_at + STALLED_TICKS * clock.interval + 0.003:
        pass


def _assert_each_tick_had_its_frames(seen: list[list[int]]) -> None:
    # tick j plays frame j: by then every leg must have read j datagrams
    for j, counts in enumerate(seen, start=1):
        assert min(counts) >= j, f"tick {j} started with only {counts} datagrams read per leg"


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_after_a_stall_no_catch_up_tick_starts_before_its_frames_are_read(loop_name: str) -> None:
    """The loop stalls for three tick intervals while every leg's phone
    keeps sending: each socket holds the frames of the ticks now overdue.
    A reader must not start the overdue ticks one after another from
    inside the same read-out (each after one more datagram): the frames not
    yet read would be late, the jitter buffers grow, and audio is concealed
    (measured: a 90 ms stall concealed about 12,000 frames of 800 legs with
    that, none without)."""
    seen = _catch_up(loop_name, lambda clock, pairs: _stall(clock, pairs))
    _assert_each_tick_had_its_frames(seen)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_stall_inside_a_reader_does_not_start_the_overdue_tick_before_the_others_are_read(
        loop_name: str) -> None:
    """The stall happens in one leg's read (a collector pass, the machine
    taking the core away), while the other legs' frames arrive. The first
    overdue tick then waits for the loop to read them, rather than run
    from its timer with all of them still queued."""

    def start(clock: MediaClock, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
        rx0, tx0 = pairs[0]
        tx0.sendto(b"1", rx0.getsockname())  # leg 0's frame 1, read before the tick: the stall

    seen = _catch_up(loop_name, start, stall_on=b"1")
    _assert_each_tick_had_its_frames(seen)


async def test_backlog_is_the_median_of_the_attached_media_sockets() -> None:
    """``rtp_backlog`` reads the kernel's queues of the attached media
    transports: 0 when every reader kept up, the median queue when most
    fell behind, not moved by one flooded socket among quiet ones; an RTCP
    transport (``watched=False``) and a detached one are not sampled, and
    with none attached there is no figure."""
    assert rtp_backlog() is None
    rigs = [_queued(0) for _ in range(5)]
    media = [RtpTransport(rx, lambda data, addr: None) for rx, _ in rigs]
    rtcp_rx, rtcp_tx = _queued(0)
    rtcp = RtpTransport(rtcp_rx, lambda data, addr: None, watched=False)
    for transport in (*media, rtcp):
        transport.attach()
    try:
        assert rtp_backlog() == 0
        loop = asyncio.get_running_loop()
        for transport in media:
            loop.remove_reader(transport.sock.fileno())  # a saturated loop reaches no reader
        flooded, tx = rigs[0]
        for _ in range(200):
            tx.sendto(b"\x80" * 172, flooded.getsockname())
        assert rtp_backlog() == 0  # one socket of five: the median stays quiet

        def fall_behind(rig: tuple[socket.socket, socket.socket]) -> None:
            for _ in range(10):
                rig[1].sendto(b"\x80" * 172, rig[0].getsockname())

        fall_behind(rigs[1])
        assert rtp_backlog() == 0  # two of five
        fall_behind(rigs[2])
        behind = rtp_backlog()
        assert behind is not None and behind >= 10 * 172  # the kernel charges more than the payload
        assert rtp_backlog(sample=5) == behind
        for _ in range(300):
            rtcp_tx.sendto(b"\x81" * 60, rtcp_rx.getsockname())
        media[1].detach()  # left: flooded, behind, quiet, quiet
        assert rtp_backlog() == 0  # median_low of four
        fall_behind(rigs[3])
        assert rtp_backlog() == behind
        media[1].attach()
        for transport in media:
            if transport is not media[1]:
                loop.add_reader(transport.sock.fileno(), transport._on_readable)
        await asyncio.sleep(0.1)  # the readers drain every queue
        assert rtp_backlog() == 0
    finally:
        for transport in (*media, rtcp):
            transport.detach()
        for rx, tx in (*rigs, (rtcp_rx, rtcp_tx)):
            rx.close()
            tx.close()
    assert rtp_backlog() is None
