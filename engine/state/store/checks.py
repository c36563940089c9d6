"""Argument checks shared by every kind of record, and the limits they apply.

Each check raises :class:`~engine.state.store.errors.InvalidValue` naming
the argument and what is wrong with it, and returns the value (normalised
where said).

.. rubric:: Names

User names are 1-64 characters of ``A-Z a-z 0-9 . _ -`` (not ``.`` or
``..``). Lookups are exact (a SIP digest username is case-sensitive), but
uniqueness is case-insensitive: ``Alice`` cannot be created next to ``alice``.
Room ids are 1-32 characters of ``A-Z a-z 0-9``, exact and case-sensitive
(room ``ID`` is conference ``conf_<ID>``).
"""

from __future__ import annotations

import math
import re

from engine.state.store.errors import InvalidValue

__all__ = [
    "CONTROL_RE",
    "MAX_DISPLAY_NAME",
    "MAX_KEY",
    "MAX_LIMIT",
    "MAX_NAMESPACE",
    "MAX_PASSWORD",
    "MAX_VALUE",
    "check_count",
    "check_display_name",
    "check_name",
    "check_password",
    "check_room_id",
    "check_text",
    "check_time",
]

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ROOM_RE = re.compile(r"[A-Za-z0-9]{1,32}")
#: Longest password, display name, key-value namespace, key and value.
MAX_PASSWORD = 1024
MAX_DISPLAY_NAME = 128
MAX_NAMESPACE = 128
MAX_KEY = 256
MAX_VALUE = 1024 * 1024
#: Most rows one listing returns.
MAX_LIMIT = 1000
#: Characters no display name (nor the SIP realm) may hold.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: object) -> str:
    """A user name: 1-64 characters of ``A-Z a-z 0-9 . _ -``, not ``.`` or ``..``."""
    if not isinstance(name, str):
        raise InvalidValue("name", "must be a string")
    if _NAME_RE.fullmatch(name) is None:
        raise InvalidValue(
            "name", f"must be 1 to 64 characters of A-Z a-z 0-9 . _ - (got {name!r})"
        )
    if name in (".", ".."):
        raise InvalidValue("name", f"must not be {name!r}")
    return name


def check_password(password: object) -> str:
    """A password of 1 to :data:`MAX_PASSWORD` characters."""
    if not isinstance(password, str):
        raise InvalidValue("password", "must be a string")
    if not 1 <= len(password) <= MAX_PASSWORD:
        raise InvalidValue("password", f"must be 1 to {MAX_PASSWORD} characters")
    return password


def check_display_name(display_name: object) -> str | None:
    """Validate a display name; ``""`` becomes ``None``."""
    if display_name is None:
        return None
    if not isinstance(display_name, str):
        raise InvalidValue("display_name", "must be a string or None")
    if len(display_name) > MAX_DISPLAY_NAME:
        raise InvalidValue("display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
    if CONTROL_RE.search(display_name):
        raise InvalidValue("display_name", "must not contain control characters")
    return display_name or None


def check_room_id(room_id: object) -> str:
    """A room id: 1-32 characters of ``A-Z a-z 0-9``."""
    if not isinstance(room_id, str):
        raise InvalidValue("room_id", "must be a string")
    if _ROOM_RE.fullmatch(room_id) is None:
        raise InvalidValue(
            "room_id", f"must be 1 to 32 characters of A-Z a-z 0-9 (got {room_id!r})"
        )
    return room_id


def check_text(field: str, value: object, low: int, high: int) -> str:
    """A string of ``low`` to ``high`` characters without NUL."""
    if not isinstance(value, str):
        raise InvalidValue(field, "must be a string")
    if not low <= len(value) <= high:
        raise InvalidValue(field, f"must be {low} to {high} characters")
    if "\x00" in value:
        raise InvalidValue(field, "must not contain NUL characters")
    return value


def check_time(field: str, value: object) -> float:
    """A finite number of seconds (a time or a duration)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidValue(field, "must be a finite number")
    return float(value)


def check_count(field: str, value: object, low: int, high: int | None) -> int:
    """An integer from ``low`` to ``high`` (``None``: no upper bound)."""
    if type(value) is not int or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidValue(field, f"must be an integer {span}")
    return value
