"""The media clock: drift-free ticks on a timer, started early by a busy
reader (:func:`engine.media.clock.run_due`), skipping ahead after a stall."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.media import clock as clock_module
from engine.media.clock import MediaClock, next_tick_at, run_due
from tests.clock_fakes import LeadDispatch


class _Sink:
    def __init__(self, clock: MediaClock, ticks: int = 5) -> None:
        self.clock = clock
        self.ticks = ticks
        self.at: list[float] = []

    def tick(self, now: float) -> bool:
        self.at.append(time.monotonic())
        return len(self.at) < self.ticks


async def _until_stopped(clock: MediaClock, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while clock.running and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert not clock.running


async def test_ticks_follow_the_grid_and_the_timer_stops_with_the_last_sink() -> None:
    clock = MediaClock()
    sink = _Sink(clock)
    clock.add(sink)
    assert clock.running and clock.next_at < float("inf")
    await _until_stopped(clock)
    assert clock.ticks == 5 and len(sink.at) == 5
    origin = clock.origin
    assert origin is not None
    for n, at in enumerate(sink.at, start=1):
        assert at >= origin + n * clock.interval - 0.002  # uvloop may wake up to 1 ms early
    assert clock.next_at == float("inf") and next_tick_at[0] == float("inf")
    assert clock not in clock_module._running


async def test_a_reader_starts_a_due_tick_before_the_timer_would() -> None:
    """A loop busy with readers (here: one callback blocking past the due
    time) reaches the timer late; run_due, called by the reader, starts the
    tick at once, and the timer does not start it a second time."""
    clock = MediaClock()
    clock.dispatch = LeadDispatch()
    sink = _Sink(clock, ticks=2)
    clock.add(sink)
    due = clock.next_at
    started: list[float] = []

    def busy_reader() -> None:
        while time.monotonic() < due + 0.005:
            pass
        started.append(time.monotonic())
        if time.monotonic() >= next_tick_at[0]:
            run_due()

    asyncio.get_running_loop().call_soon(busy_reader)
    await asyncio.sleep(0.001)
    assert len(sink.at) == 1 and clock.ticks_inline == 1
    assert sink.at[0] - started[0] < 0.002  # in the reader's callback, not after it
    # the next tick is planned its lead early; absolute tolerance (a relative one
    # grows with the machine's uptime, which monotonic() counts from)
    assert clock.next_at == pytest.approx(clock.origin + 2 * clock.interval - LeadDispatch.lead, abs=1e-6)
    await _until_stopped(clock)
    assert len(sink.at) == 2 and clock.ticks == 2


async def test_run_due_before_the_due_time_does_nothing() -> None:
    clock = MediaClock()
    clock.dispatch = LeadDispatch()
    sink = _Sink(clock, ticks=1)
    clock.add(sink)
    run_due()
    assert sink.at == [] and clock.ticks == 0
    await _until_stopped(clock)
    assert len(sink.at) == 1 and clock.ticks_inline == 0


async def test_a_clock_that_sends_as_it_ticks_is_left_to_its_timer() -> None:
    """Without a dispatch the tick sends its frames itself: readers do not
    start it (the timer runs after them), and next_tick_at does not ask them to."""
    clock = MediaClock()
    sink = _Sink(clock, ticks=1)
    clock.add(sink)
    assert clock.next_at < float("inf") and next_tick_at[0] == float("inf")
    while time.monotonic() < clock.next_at + 0.002:
        pass
    run_due()
    assert sink.at == []
    await _until_stopped(clock)
    assert len(sink.at) == 1 and clock.ticks_inline == 0


async def test_send_workers_given_up_leave_the_tick_to_its_timer() -> None:
    """Send workers that were given up have no lead and send during the
    tick: readers then leave it to the timer, as without workers."""
    clock = MediaClock()
    dispatch = LeadDispatch()
    clock.dispatch = dispatch
    sink = _Sink(clock, ticks=3)
    clock.add(sink)
    assert next_tick_at[0] == clock.next_at
    dispatch.lead = 0.0  # what SendWorkers does on giving up, at the end of a tick
    await asyncio.sleep(0.025)  # the next tick re-arms the clock
    assert next_tick_at[0] == float("inf")
    while time.monotonic() < clock.next_at + 0.002:
        pass
    before = clock.ticks
    run_due()
    assert clock.ticks == before and clock.ticks_inline == 0
    await _until_stopped(clock)


async def test_a_blocked_loop_skips_ahead_instead_of_bursting() -> None:
    clock = MediaClock(max_catch_up=2)
    sink = _Sink(clock, ticks=3)
    clock.add(sink)
    time.sleep(0.2)  # ten ticks' worth
    await _until_stopped(clock)
    assert clock.skipped >= 7
    assert len(sink.at) == 3
    assert sink.at[2] - sink.at[1] > 0.015  # after the skip, back on the grid: no burst


async def test_a_failing_sink_is_dropped_and_the_others_keep_ticking(caplog) -> None:
    clock = MediaClock()

    class Broken:
        def tick(self, now: float) -> bool:
            raise RuntimeError("boom")

    good = _Sink(clock, ticks=3)
    clock.add(Broken())
    clock.add(good)
    await _until_stopped(clock)
    assert len(good.at) == 3 and "failed; dropped" in caplog.text


async def test_a_sink_added_during_a_tick_keeps_the_grid() -> None:
    """A sink that adds another from its tick does not restart the clock on
    a new origin."""
    clock = MediaClock()
    late = _Sink(clock, ticks=2)

    class Adder(_Sink):
        def tick(self, now: float) -> bool:
            self.clock.add(late)
            return super().tick(now)

    clock.add(Adder(clock, ticks=1))
    origin = clock.origin
    await _until_stopped(clock)
    assert clock.origin == origin and len(late.at) == 2
    assert late.at[1] >= origin + 2 * clock.interval - 0.002


async def test_a_dispatch_that_fails_to_begin_does_not_stop_the_clock() -> None:
    clock = MediaClock()

    class Flaky:
        lead = 0.0
        held_until = float("inf")  # holds nothing in this process

        def release(self) -> None:
            pass

        ends = 0

        def begin(self, planned: float) -> None:
            if clock.ticks == 1:
                raise OSError("pair broken")

        def end(self, due: float) -> None:
            Flaky.ends += 1

    clock.dispatch = Flaky()
    sink = _Sink(clock, ticks=2)
    clock.add(sink)
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        await _until_stopped(clock)
    finally:
        loop.set_exception_handler(None)
    assert len(errors) == 1 and "pair broken" in str(errors[0].get("exception"))
    assert len(sink.at) == 2 and Flaky.ends == 3


async def test_stop_cancels_the_next_tick() -> None:
    clock = MediaClock()
    sink = _Sink(clock, ticks=100)
    clock.add(sink)
    await asyncio.sleep(0.05)
    await clock.stop()
    n = len(sink.at)
    await asyncio.sleep(0.06)
    assert len(sink.at) == n and not clock.running and next_tick_at[0] == float("inf")


def test_a_clock_left_on_a_closed_loop_is_forgotten() -> None:
    """A loop closed without MediaClock.stop (a test that forgot) must not
    leave the readers of other loops calling run_due for ever."""
    loop = asyncio.new_event_loop()
    clock = MediaClock()
    clock.dispatch = LeadDispatch()

    async def start() -> None:
        clock.add(_Sink(clock, ticks=100))

    loop.run_until_complete(start())
    loop.close()
    assert clock in clock_module._running

    async def other() -> None:
        run_due()

    asyncio.run(other())
    assert clock not in clock_module._running and next_tick_at[0] == float("inf")
