"""Tests for :mod:`engine.testing.clock`: the virtual-time event loop."""

from __future__ import annotations

import asyncio
import time
from typing import Iterator

import pytest

from engine.testing import Plan, VirtualTimeLoop


@pytest.fixture
def loop() -> Iterator[VirtualTimeLoop]:
    loop = VirtualTimeLoop()
    yield loop
    loop.close()


def test_sleeps_and_timeouts_take_no_real_time(loop: VirtualTimeLoop) -> None:
    """Check an hour of sleeping and a wait_for timeout complete at once,
    with the clock showing the virtual time they took."""
    seen: list[tuple[str, float]] = []

    async def main() -> None:
        await asyncio.sleep(3600)
        seen.append(("slept", loop.time()))
        try:
            await asyncio.wait_for(asyncio.sleep(50), 10)
        except asyncio.TimeoutError:
            seen.append(("timed out", loop.time()))

    started = time.monotonic()
    loop.run_until_complete(main())
    assert seen == [("slept", 3600.0), ("timed out", 3610.0)]
    assert time.monotonic() - started < 2.0  # a safety net, not a benchmark


def test_wait_fires_due_timers_in_order_and_settles_at_the_deadline(loop: VirtualTimeLoop) -> None:
    """Check a drive with a deadline fires the timers due before it, in
    time order, moves the clock exactly to the deadline, and leaves later
    timers pending."""
    fired: list[float] = []
    for delay in (7.0, 2.0, 12.0):
        loop.call_later(delay, lambda: fired.append(loop.time()))
    loop.drive(Plan(deadline=10.0, settle=True))
    assert fired == [2.0, 7.0]
    assert loop.time() == 10.0
    loop.drive(Plan(deadline=100.0))
    assert fired == [2.0, 7.0, 12.0]
    assert loop.time() == 12.0  # without settle, it stops at the last timer


def test_a_timer_at_the_deadline_runs_with_its_follow_ups(loop: VirtualTimeLoop) -> None:
    """Check work a timer due exactly at the deadline schedules (a task
    woken by it) runs before the drive returns, not on the next one."""
    done: list[str] = []

    async def sleeper() -> None:
        await asyncio.sleep(5)
        await asyncio.sleep(0)
        done.append("woke")

    task = loop.create_task(sleeper())
    loop.drive(Plan(deadline=5.0, settle=True))
    assert done == ["woke"] and task.done()


def test_keep_going_stops_while_idle(loop: VirtualTimeLoop) -> None:
    """Check ``keep_going`` is asked when idle: time moves while it holds
    and the drive stops as soon as it does not."""
    playing = [True]
    loop.call_later(3.0, lambda: playing.__setitem__(0, False))
    loop.call_later(8.0, lambda: None)
    loop.drive(Plan(deadline=100.0, keep_going=lambda: playing[0]))
    assert loop.time() == 3.0


def test_time_does_not_jump_while_a_thread_works(loop: VirtualTimeLoop) -> None:
    """Check a job in an executor thread is waited for in real time: a
    timeout running meanwhile does not fire just because the loop is idle."""

    async def main() -> str:
        await asyncio.wait_for(asyncio.to_thread(time.sleep, 0.02), timeout=1.0)
        return "done"

    assert loop.run_until_complete(main()) == "done"
    assert loop.time() == 0.0
    assert not loop.threads_busy


def test_drive_inside_another_loop_says_what_to_do(loop: VirtualTimeLoop) -> None:
    """Check driving the virtual loop from a running loop (an ``async def``
    test) fails with advice rather than asyncio's bare RuntimeError."""

    async def inner() -> None:
        loop.drive(Plan(deadline=1.0))

    with pytest.raises(RuntimeError, match="plain `def test_"):
        asyncio.run(inner())
