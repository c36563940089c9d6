"""The back-off of a provider that failed: TTS and speech recognition both
fall back from a primary provider (a cloud service, a model) to the one
that always works, and try the primary again only after a while."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Outage"]


class Outage:
    """Whether a primary provider is backed off, thread-safe (the providers
    run in worker threads).

    :param retry_after: seconds after a failure before the primary is tried again.
    :param clock: seconds, monotonic (a parameter for tests).
    """

    def __init__(self, retry_after: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after = retry_after
        self.clock = clock
        self._lock = threading.Lock()
        self._retry_at: float | None = None  # set while the primary is down
        #: Failures of the primary recorded (logged or not).
        self.failures = 0

    @property
    def down(self) -> bool:
        """Whether the primary failed last time and its back-off runs."""
        with self._lock:
            return self._retry_at is not None and self.clock() < self._retry_at

    def failed(self) -> bool:
        """Record a failure of the primary (the back-off starts again);
        ``True`` when it starts an outage (the one failure worth a warning)."""
        with self._lock:
            self.failures += 1
            first = self._retry_at is None
            self._retry_at = self.clock() + self.retry_after
        return first

    def recovered(self) -> bool:
        """The primary worked (or is to be tried afresh): ``True`` when that
        ends an outage (worth a line in the log)."""
        with self._lock:
            was_down = self._retry_at is not None
            self._retry_at = None
        return was_down
