"""How many datagrams one wake-up of RtpTransport reads (engine.transport.rtp_transport), on a real socket."""

from __future__ import annotations

import socket

import pytest

from engine.transport.rtp_transport import MAX_READS_PER_WAKEUP, RtpTransport


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
    import asyncio
    import time

    from engine.media.clock import MediaClock

    order: list[str] = []

    class Sink:
        def tick(self, now: float) -> bool:
            order.append("tick")
            return False

    class Dispatch:  # send workers' stand-in: the clock then lets readers start its ticks
        lead = 0.001
        held_until = float("inf")  # holds nothing in this process

        def release(self) -> None:
            pass

        def begin(self, planned: float) -> None:
            pass

        def end(self, due: float) -> None:
            pass

    clock = MediaClock()
    clock.dispatch = Dispatch()
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


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_after_a_stall_no_catch_up_tick_starts_before_its_frames_are_read(loop_name: str) -> None:
    """The loop stalls for three tick intervals while every leg's phone
    keeps sending: each socket holds the frames of the ticks now overdue.
    Tick j plays frame j, so it may start only once every socket gave up
    at least j datagrams. A reader must not start the overdue ticks one
    after another from inside the same read-out (each after one more
    datagram): the frames not yet read would be late, the jitter buffers
    grow, and audio is concealed (measured: a 90 ms stall concealed about
    12,000 frames of 800 legs with that, none without)."""
    import asyncio
    import time

    from engine.media.clock import MediaClock

    legs, stalled_ticks = 5, 3

    class Dispatch:  # a pacer's stand-in: a lead, so readers may start its ticks
        lead = 0.001
        held_until = float("inf")

        def release(self) -> None:
            pass

        def begin(self, planned: float) -> None:
            pass

        def end(self, due: float) -> None:
            pass

    async def main() -> list[list[int]]:
        reads = [0] * legs
        seen_at_tick: list[list[int]] = []

        class Sink:
            def tick(self, now: float) -> bool:
                seen_at_tick.append(list(reads))
                return len(seen_at_tick) < stalled_ticks + 1

        pairs = [_queued(0) for _ in range(legs)]
        transports = []
        for i, (rx, _tx) in enumerate(pairs):
            def handler(data: bytes, addr: object, i: int = i) -> None:
                reads[i] += 1
            transports.append(RtpTransport(rx, handler))
        clock = MediaClock()
        clock.dispatch = Dispatch()
        clock.add(Sink())
        for t in transports:
            t.attach()
        try:
            first_due = clock.next_at
            for frame in range(stalled_ticks + 1):  # the phones keep sending while the loop is stuck
                for rx, tx in pairs:
                    tx.sendto(b"%d" % frame, rx.getsockname())
            while time.monotonic() < first_due + stalled_ticks * clock.interval + 0.003:
                pass
            for _ in range(200):
                if len(seen_at_tick) > stalled_ticks:
                    break
                await asyncio.sleep(0.001)
            return seen_at_tick
        finally:
            await clock.stop()
            for t in transports:
                t.detach()
            for rx, tx in pairs:
                rx.close()
                tx.close()

    if loop_name == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        seen = runner.run(main())
    assert len(seen) == stalled_ticks + 1
    for j, counts in enumerate(seen, start=1):
        assert min(counts) >= j, f"tick {j} started with only {counts} datagrams read per leg"


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_stall_inside_a_reader_does_not_start_the_overdue_tick_before_the_others_are_read(
        loop_name: str) -> None:
    """The stall happens in one leg's read (a collector pass, the machine
    taking the core away), while the other legs' frames arrive. The first
    overdue tick then waits for the loop to read them, rather than run
    from its timer with all of them still queued."""
    import asyncio
    import time

    from engine.media.clock import MediaClock

    legs, stalled_ticks = 5, 3

    class Dispatch:
        lead = 0.001
        held_until = float("inf")

        def release(self) -> None:
            pass

        def begin(self, planned: float) -> None:
            pass

        def end(self, due: float) -> None:
            pass

    async def main() -> list[list[int]]:
        reads = [0] * legs
        seen_at_tick: list[list[int]] = []
        clock = MediaClock()
        pairs = [_queued(0) for _ in range(legs)]

        def stall() -> None:  # the other phones send on while leg 0's read is stuck
            for frame in range(1, stalled_ticks + 2):
                for k, (rx, tx) in enumerate(pairs):
                    if k or frame > 1:
                        tx.sendto(b"%d" % frame, rx.getsockname())
            while time.monotonic() < clock.next_at + stalled_ticks * clock.interval + 0.003:
                pass

        class Sink:
            def tick(self, now: float) -> bool:
                seen_at_tick.append(list(reads))
                return len(seen_at_tick) < stalled_ticks + 1

        transports = []
        for i, (rx, _tx) in enumerate(pairs):
            def handler(data: bytes, addr: object, i: int = i) -> None:
                reads[i] += 1
                if i == 0 and data == b"1":
                    stall()
            transports.append(RtpTransport(rx, handler))
        clock.dispatch = Dispatch()
        clock.add(Sink())
        for t in transports:
            t.attach()
        try:
            rx0, tx0 = pairs[0]
            tx0.sendto(b"1", rx0.getsockname())  # leg 0's frame 1, read before the tick: the stall
            for _ in range(300):
                if len(seen_at_tick) > stalled_ticks:
                    break
                await asyncio.sleep(0.001)
            return seen_at_tick
        finally:
            await clock.stop()
            for t in transports:
                t.detach()
            for rx, tx in pairs:
                rx.close()
                tx.close()

    if loop_name == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        seen = runner.run(main())
    assert len(seen) == stalled_ticks + 1
    for j, counts in enumerate(seen, start=1):
        assert min(counts) >= j, f"tick {j} started with only {counts} datagrams read per leg"
