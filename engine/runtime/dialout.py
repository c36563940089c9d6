"""Who may make the engine dial the trunk, where to, and how much.

Every call through the trunk (``VoxEngine.call_pstn``) passes
:meth:`DialPolicy.check` first. The policy is closed by default:

- a destination must fully match one ``allow`` pattern (none are set by
  default: an operator who configures a trunk also says where it may go,
  ``--dial-allow '\\+1[2-9][0-9]{9}'``), and no ``deny`` pattern (emergency
  short codes and premium or international-network ranges by default);
- at most ``max_concurrent`` trunk calls are up at once, and
  ``max_per_hour`` are placed an hour, engine-wide;
- a call asked for by a participant (``requested_by``: a browser's
  ``CALL_PARTICIPANT``) needs that participant's grant to hold the
  ``dial_out`` permission (never a guest's), counts against the
  participant's own caps (``max_per_identity`` at once,
  ``max_per_identity_hour``), and is hung up when the participant leaves.

The counters an attacker would want to reset are keyed by what the engine
established (the grant's identity, the engine as a whole), never by a caller
id. Hourly counts are token buckets in the directory (so a cluster shares
them); concurrent calls are counted on this node.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from engine.calls.call import CallError
from engine.security_log import security_event

if TYPE_CHECKING:
    from engine.calls.call import Call

__all__ = ["DialPolicy", "DialRefused", "DEFAULT_DENY", "normalize_number"]

#: Refused whatever the allow-list says: emergency short codes (a test call to
#: them is a crime in many places, and callbridge is no emergency service),
#: NANP premium (900, 976), international premium (979), shared-cost and
#: international networks and satellite (+808, +870, +878, +881, +882, +883).
DEFAULT_DENY = (
    r"\+?(911|112|999|000|110|118|119|100|101|102|103|108|933)",
    r"\+?1?(900|976)[0-9]*",
    r"\+(979|808|870|878|881|882|883)[0-9]*",
)

_SEPARATORS = re.compile(r"[\s().-]")


def normalize_number(number: str) -> str:
    """``number`` without spaces, dots, dashes and brackets (``+1 (555) 010-0``
    is ``+15550100``): what the patterns are matched against."""
    return _SEPARATORS.sub("", number)


class DialRefused(CallError):
    """The policy refuses a trunk call. ``code`` is a SIP-like status (403
    forbidden destination or permission, 484 not a number, 486 a cap
    reached) and ``reason`` a short text to show the requester. A
    :class:`~engine.calls.call.CallError`, so scenarios catching that see it."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code} {reason}")


@dataclass
class DialPolicy:
    """Limits on trunk calls (see the module docstring).

    :param allow: destination patterns that may be dialed (full match).
    :param deny: destination patterns never dialed (full match).
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = DEFAULT_DENY
    max_concurrent: int = 10
    max_per_hour: int = 100
    max_per_identity: int = 2
    max_per_identity_hour: int = 20
    _allow: list[re.Pattern[str]] = field(init=False, repr=False)
    _deny: list[re.Pattern[str]] = field(init=False, repr=False)
    _live: Counter[str] = field(init=False, repr=False, default_factory=Counter)

    def __post_init__(self) -> None:
        self._allow = [self._compile("allow", p) for p in self.allow]
        self._deny = [self._compile("deny", p) for p in self.deny]
        for name in ("max_concurrent", "max_per_hour", "max_per_identity", "max_per_identity_hour"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"dial-out {name.replace('_', '-')} must be a whole number ≥ 0, not {value!r}")

    @staticmethod
    def _compile(kind: str, pattern: str) -> re.Pattern[str]:
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"dial-out {kind} pattern {pattern!r} is not a valid regular expression: {exc}") from None

    def check_destination(self, number: str) -> str:
        """The normalized ``number`` if the lists let it be dialed.

        :raises DialRefused: 403 when it is denied or not allowed.
        """
        digits = normalize_number(number)
        if not re.fullmatch(r"\+?[0-9]{3,15}", digits):
            raise DialRefused(484, "not a phone number")
        if any(p.fullmatch(digits) for p in self._deny):
            raise DialRefused(403, "destination not allowed")
        if not any(p.fullmatch(digits) for p in self._allow):
            raise DialRefused(403, "destination not allowed")
        return digits

    def check(self, number: str, *, requested_by: Call | None, hit: Callable[[str, float, int], bool],
              src: str | None = None) -> str:
        """Decide a trunk call to ``number``; return the number to dial.

        :param requested_by: the participant who asked for it, or ``None``
            for a call the scenario places on its own.
        :param hit: takes one token from an hourly bucket ``(key, per_hour, burst)``.
        :raises DialRefused: with why.
        """
        identity: str | None = None
        try:
            if requested_by is not None:
                grant = requested_by.grant
                if grant is None or not grant.can("dial_out"):
                    raise DialRefused(403, "not allowed to dial out")
                identity = f"{grant.authenticated_by}:{grant.identity}"
            digits = self.check_destination(number)
            if self._live["*"] >= self.max_concurrent:
                raise DialRefused(486, "too many calls out")
            if identity is not None and self._live[identity] >= self.max_per_identity:
                raise DialRefused(486, "too many calls out for this participant")
            if not hit("dialout:*", float(self.max_per_hour), self.max_per_hour):
                raise DialRefused(486, "hourly limit of calls out reached")
            if identity is not None and not hit(f"dialout:{identity}", float(self.max_per_identity_hour),
                                                self.max_per_identity_hour):
                raise DialRefused(486, "hourly limit of calls out reached for this participant")
        except DialRefused as refused:
            security_event("dial_refused", src, number=normalize_number(number)[:6] + "…",
                           identity=identity, reason=refused.reason)
            raise
        return digits

    def started(self, call: Any, requested_by: Call | None) -> None:
        """Count ``call`` until it ends (and end it when ``requested_by`` does)."""
        keys = ["*"]
        grant = requested_by.grant if requested_by is not None else None
        if grant is not None:
            keys.append(f"{grant.authenticated_by}:{grant.identity}")
        for key in keys:
            self._live[key] += 1

        def ended(_: Any) -> None:
            for key in keys:
                self._live[key] -= 1
                if self._live[key] <= 0:
                    del self._live[key]

        call.on_ended.append(ended)
        if requested_by is not None:
            def requester_left(_: Any) -> None:
                if not call.state.ended:
                    call.hangup()

            if requested_by.state.ended:
                requester_left(requested_by)
            else:
                requested_by.on_ended.append(requester_left)

    def live(self, key: str = "*") -> int:
        return self._live[key]
