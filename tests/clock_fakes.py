"""A stand-in for a media clock's dispatch (engine.media.clock.TickDispatch),
shared by the clock's unit tests and the RTP readers' integration tests."""

from __future__ import annotations


class LeadDispatch:
    """A dispatch that sends nothing; the clock starts its ticks ``lead``
    early and lets RTP readers start them (as with the pacer or send workers)."""

    lead = 0.001
    held_until = float("inf")  # holds nothing in this process

    def release(self) -> None:
        pass

    def begin(self, planned: float) -> None:
        pass

    def end(self, due: float) -> None:
        pass
