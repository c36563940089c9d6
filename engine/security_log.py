"""One line per security event, in one format, for fail2ban and auditors.

Every refusal an attacker can provoke (a wrong password, a wrong PIN, a
forged grant, a rate limit hit, a ban, a cap reached, a dial-out refused)
is reported through :func:`security_event` to the ``callbridge.security``
logger. The line is logfmt like the rest of the engine's logs and always
starts with the same two fields, so that one fail2ban filter matches them
all::

    security event=auth_failed src=203.0.113.7 method=REGISTER user="alice"

``src`` is the address the engine saw the request come from (the one thing
an attacker cannot choose freely), or ``-`` when there is none (an API
key's request through a proxy, an internal call). Values are quoted and
control characters escaped, so a caller-chosen value (a user name, a
caller id) can never start a line of its own or forge another field.
Nothing secret goes in: no password, PIN, token or digit typed.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Protocol

__all__ = ["security_event", "quote", "escape_controls", "EVENT_COUNTS"]

logger = logging.getLogger("callbridge.security")

#: Security events since start, by event name, each counted whether or not
#: its line was logged (throttled or the logger off): the engine's metrics
#: read this. Event names are the engine's own, a bounded set.
EVENT_COUNTS: collections.Counter[str] = collections.Counter()

#: Longest value written (a caller id or user name an attacker chose).
MAX_VALUE = 80
#: Seconds between two lines of one throttled event, source and fields.
THROTTLE_PERIOD = 10.0


def escape_controls(text: str) -> str:
    """``text`` with every character that is not printable (controls, line
    and paragraph separators, NEL) written as its Python escape, so that a
    value a caller chose (a caller id, a display name, a message excerpt)
    can never end a log line and start a forged one.

    Log sinks call this on the whole line they write, not each call site on
    its fields: one place to get right."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def quote(value: Any) -> str:
    """``value`` as one safe logfmt token: bare when it is plain, else in
    double quotes with ``"``, ``\\`` and control characters escaped."""
    text = str(value)[:MAX_VALUE]
    if text and all(c.isalnum() or c in "-_.:/@+[]" for c in text):
        return text
    escaped = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{escaped}"'


def security_event(event: str, src: str | None, **fields: Any) -> None:
    """Log security event ``event`` (``auth_failed``, ``pin_failed``,
    ``rate_limited``, ``banned``, ``forbidden``, ``cap_reached``,
    ``dial_refused``, ...) from source address ``src``, with ``fields``."""
    EVENT_COUNTS[event] += 1
    _log(event, src, fields)


def _log(event: str, src: str | None, fields: dict[str, Any]) -> None:
    if not logger.isEnabledFor(logging.WARNING):
        return
    parts = [f"security event={quote(event)} src={quote(src) if src else '-'}"]
    parts.extend(f"{key}={quote(value)}" for key, value in fields.items() if value is not None)
    logger.warning(" ".join(parts))


class _Buckets(Protocol):
    def hit(self, key: str, now: float, *, rate: float, burst: int) -> bool: ...


def security_event_throttled(buckets: _Buckets, now: float, event: str, src: str | None,
                             **fields: Any) -> None:
    """:func:`security_event`, at most once per :data:`THROTTLE_PERIOD` for
    one event, source and fields, so that a flood of refusals (caps, rate
    limits) does not become a flood of log lines. ``buckets`` is the
    engine's directory, whose rate buckets are bounded."""
    EVENT_COUNTS[event] += 1
    key = "log:" + event + ":" + ":".join(str(v) for v in fields.values()) + ":" + (src or "-")
    if buckets.hit(key, now, rate=1.0 / THROTTLE_PERIOD, burst=1):
        _log(event, src, fields)
