"""Password guessing: failed logins per account and per source address, with
exponential lockouts.

:class:`LoginGuard` is the policy (:class:`LoginBackoff`) over the failure
counters of a :class:`~engine.state.directory.Directory` (``locked_for``,
``add_failure``, ``clear_failures``), used by the SIP registrar and the web
SDK's password login. The counters live in the directory so that nodes
sharing one share the lockouts; the thresholds live here.

Time is always an argument (``now``); nothing here reads a clock.

This module is a leaf: it imports nothing from ``engine``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FailureCounts", "LoginBackoff", "LoginGuard"]


class FailureCounts(Protocol):
    """The part of :class:`~engine.state.directory.Directory` a :class:`LoginGuard` uses."""

    def locked_for(self, key: str, now: float) -> float:
        """Seconds ``key`` stays locked out after failures (0.0: it may try)."""
        ...

    def add_failure(self, key: str, now: float, *, free: int, base: float, cap: float,
                    forget: float) -> float:
        """Count one failure of ``key``; return the lockout it now serves (0.0: none)."""
        ...

    def clear_failures(self, key: str) -> bool:
        """Forget the failures of ``key``; ``False`` when none were counted."""
        ...


@dataclass(frozen=True)
class LoginBackoff:
    """How failed logins lock an account, and a source address, out.

    After ``account_free`` failures for one account name (compared without
    case) every further failure locks that account for everyone for
    ``base`` seconds, doubling up to ``cap``; likewise after ``source_free``
    failures from one source address. Failures are forgotten ``forget``
    seconds after the last one.
    """

    account_free: int = 5
    source_free: int = 20
    base: float = 1.0
    cap: float = 300.0
    forget: float = 900.0

    def __post_init__(self) -> None:
        for field_, value in (("account_free", self.account_free), ("source_free", self.source_free)):
            if type(value) is not int or value < 1:
                raise ValueError(f"{field_} must be a positive integer, not {value!r}")
        for field_, number in (("base", self.base), ("cap", self.cap), ("forget", self.forget)):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
                raise ValueError(f"{field_} must be a finite number, not {number!r}")
            if not number > 0:
                raise ValueError(f"{field_} must be more than 0 seconds, not {number!r}")


class LoginGuard:
    """Per-account and per-source lockouts of password checks.

    The caller asks :meth:`refusal` before checking a password (while
    locked, it answers as for a wrong password *without* checking, so no
    hash is computed and the right password is refused too), then reports
    the outcome with :meth:`failed` or :meth:`succeeded`. An account that
    does not exist is treated exactly like one that does. The state lives
    in the :class:`~engine.state.directory.Directory`, so nodes sharing one
    share the lockouts.

    :param directory: where the failure counts are kept (a
        :class:`~engine.state.directory.Directory`).
    :param policy: the thresholds and delays.
    """

    def __init__(self, directory: FailureCounts, policy: LoginBackoff | None = None) -> None:
        self.directory = directory
        self.policy = policy or LoginBackoff()

    @staticmethod
    def _account(user: str) -> str:
        return "login:user:" + user.lower()

    @staticmethod
    def _source(src: str) -> str:
        return "login:src:" + src

    def refusal(self, user: str, src: str | None, now: float) -> str | None:
        """``"account"`` or ``"source"`` when that is locked out at ``now``, else ``None``."""
        if self.directory.locked_for(self._account(user), now) > 0:
            return "account"
        if src and self.directory.locked_for(self._source(src), now) > 0:
            return "source"
        return None

    def failed(self, user: str, src: str | None, now: float) -> float:
        """Count a wrong password; return the lockout it started (0.0: none)."""
        p = self.policy
        lock = self.directory.add_failure(self._account(user), now, free=p.account_free, base=p.base,
                                          cap=p.cap, forget=p.forget)
        if src:
            lock = max(lock, self.directory.add_failure(self._source(src), now, free=p.source_free,
                                                        base=p.base, cap=p.cap, forget=p.forget))
        return lock

    def succeeded(self, user: str) -> None:
        """A right password: the account's count starts again (the source's stays)."""
        self.directory.clear_failures(self._account(user))
