"""A virtual-time event loop: timers fire at once, in order, when nothing else can run.

Theory of operation
-------------------
:class:`VirtualTimeLoop` is a stock :class:`asyncio.SelectorEventLoop` with
two changes, both through public seams:

- :meth:`VirtualTimeLoop.time` returns a virtual clock (seconds, starting at
  0.0) instead of :func:`time.monotonic`; every ``call_later``,
  ``asyncio.sleep``, ``wait_for`` and ``collect_tones`` timeout reads it.
- the loop's selector is wrapped (:class:`_IdleSelector`). asyncio asks the
  selector to wait ``timeout`` seconds only when no callback is ready, i.e.
  when every task is blocked; ``timeout`` is then the distance to the next
  timer (``None``: there is none). Instead of sleeping, the wrapper moves the
  virtual clock forward by ``timeout`` and returns at once, so the loop pops
  that timer on the same turn. This is the classic "time-travel loop".

How far time may travel is a :class:`Plan` the driver sets for one run of
:meth:`VirtualTimeLoop.drive`: a deadline (``wait(10)`` moves the clock by
exactly 10 s), an optional ``keep_going`` predicate consulted whenever the
loop is idle (the harness uses "a prompt is still playing"), and whether to
settle at the deadline when no timer is due before it. The loop stops only
while idle, so a run never ends with ready callbacks stranded.

Real I/O still works: the wrapper first polls the real selector without
blocking, and while a job runs in an executor thread (``to_thread``,
``getaddrinfo``) it blocks for real instead of jumping, so a timeout cannot
fire just because a thread is slow. Scenario tests should need neither.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar, TypeVarTuple, Unpack

__all__ = ["VirtualTimeLoop", "Plan"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

#: A timer closer than this is treated as due: never stop with it pending.
_EPSILON = 1e-6


@dataclass
class Plan:
    """How far one :meth:`VirtualTimeLoop.drive` may move the clock.

    :param deadline: virtual time the clock never passes.
    :param keep_going: consulted when the loop is idle; ``False`` stops the
        run there (``None``: only the deadline counts).
    :param settle: when no timer is due before the deadline, move the clock
        to the deadline before stopping (``wait(seconds)``); otherwise stop
        where the last timer left it.
    """

    deadline: float
    keep_going: Callable[[], bool] | None = None
    settle: bool = False


class _IdleSelector(selectors.BaseSelector):
    """The real selector, except that waiting means moving the virtual clock."""

    def __init__(self) -> None:
        self.real = selectors.DefaultSelector()
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self.real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self.real.get_map()

    def close(self) -> None:
        self.real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self.real.select(0)
        if ready or (timeout is not None and timeout <= 0) or self.loop is None:
            return ready
        if self.loop.threads_busy:
            return self.real.select(timeout)
        self.loop._idle(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see the module docstring).

    Drive it with :meth:`drive`; ``run_until_complete`` works too and lets
    time run freely until the awaited future is done.
    """

    def __init__(self, start: float = 0.0) -> None:
        selector = _IdleSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = float(start)
        self._plan: Plan | None = None
        self._threads = 0

    def time(self) -> float:
        return self._now

    @property
    def threads_busy(self) -> bool:
        """Whether a job is running in an executor (time then runs for real)."""
        return self._threads > 0

    def run_in_executor(self, executor: concurrent.futures.Executor | None,
                        func: Callable[[Unpack[_Ts]], _T], *args: Unpack[_Ts]) -> asyncio.Future[_T]:
        fut = super().run_in_executor(executor, func, *args)
        self._threads += 1

        def done(_: asyncio.Future[_T] | concurrent.futures.Future[_T]) -> None:
            self._threads -= 1

        fut.add_done_callback(done)
        return fut

    def drive(self, plan: Plan) -> None:
        """Run callbacks, moving the clock as ``plan`` allows, until idle and
        ``plan`` says stop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "the virtual-time loop cannot run inside another running event loop: "
                "write harness tests as plain `def test_...`, not `async def`"
            )
        self._plan = plan
        try:
            self.run_forever()
        finally:
            self._plan = None

    def _idle(self, timeout: float | None) -> None:
        """Every task is blocked; the next timer is ``timeout`` seconds away."""
        now = self._now
        plan = self._plan
        if plan is None:  # run_until_complete and friends: time runs freely
            if timeout is None:
                self.stop()  # nothing can ever happen: let run_until_complete say so
            else:
                self._now = now + timeout
            return
        if timeout is not None and timeout < _EPSILON:
            self._now = now + timeout  # due now: asyncio pops it on this turn
            return
        if plan.keep_going is not None and not plan.keep_going():
            self.stop()
            return
        if timeout is not None and now + timeout <= plan.deadline:
            self._now = now + timeout
            return
        if plan.settle and now < plan.deadline:
            self._now = plan.deadline  # timers due exactly then run; the next idle stops
            return
        self.stop()
