"""The records a store returns: plain frozen dataclasses, without secrets.

They belong to no database: :class:`~engine.state.store.SqliteStore` builds
them from rows, and another implementation of
:class:`~engine.state.store.Store` would return the same.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["API_SCOPES", "ApiKey", "Delivery", "Invite", "Preset", "Room", "User", "Webhook"]


@dataclass(frozen=True)
class User:
    """A user account, without any secret.

    :param name: the login and SIP digest username.
    :param display_name: free text shown to others, or ``None``.
    :param created_at: creation time, seconds since the epoch.
    :param sip: whether the user may REGISTER (digest HA1 values are kept).
    """

    name: str
    display_name: str | None
    created_at: float
    sip: bool = False


@dataclass(frozen=True)
class Room:
    """A conference room; room ``ID`` is conference ``conf_<ID>``.

    :param room_id: 1-32 characters of ``A-Z a-z 0-9``.
    :param display_name: free text, or ``None``.
    :param created_at: creation time, seconds since the epoch.
    """

    room_id: str
    display_name: str | None
    created_at: float
    max_participants: int | None = None
    record_on_start: bool = False
    #: Keyed hashes of the PINs (never the PINs): see :mod:`engine.state.store.rooms`.
    pin_hash: str | None = None
    moderator_pin_hash: str | None = None
    end_when_empty_after: float | None = None
    starts_at: float | None = None
    duration: float | None = None
    ended_at: float | None = None
    locked: bool = False

    @property
    def has_pin(self) -> bool:
        """Whether phone callers need a PIN (else they join by the room's id)."""
        return self.pin_hash is not None

    @property
    def ends_at(self) -> float | None:
        """When the schedule ends the room (``None``: no end time)."""
        if self.duration is None:
            return None
        return (self.starts_at if self.starts_at is not None else self.created_at) + self.duration

    def state(self, now: float) -> str:
        """``"scheduled"`` before its start, ``"ended"`` once ended (by a
        call to :meth:`Store.end_room` or because its time is up), else ``"open"``."""
        if self.ended_at is not None:
            return "ended"
        ends_at = self.ends_at
        if ends_at is not None and now >= ends_at:
            return "ended"
        if self.starts_at is not None and now < self.starts_at:
            return "scheduled"
        return "open"


@dataclass(frozen=True)
class ApiKey:
    """A management API key (its secret is only kept hashed).

    :param key_id: the public half, ``cbk_`` and 16 hex digits.
    :param scopes: what it may do (``admin``, ``calls``, ``users``, ``metrics``).
    :param name: a label, or ``None``.
    :param created_at: creation time.
    """

    key_id: str
    scopes: tuple[str, ...]
    name: str | None
    created_at: float


#: What a management API key may be allowed to do: ``admin`` everything,
#: ``calls`` rooms, invites, sessions, rules and call records, ``users``
#: users, ``metrics`` only scrape ``/metrics`` (engine.web.metrics).
API_SCOPES = ("admin", "calls", "users", "metrics")


@dataclass(frozen=True)
class Invite:
    """A one-time invitation into a room; its code and link token are kept hashed.

    :param permissions: what the join token it redeems to may do.
    :param used_at: when it was redeemed, or ``None``.
    :param attempts: wrong codes tried against it (it locks at ``max_attempts``).
    """

    invite_id: str
    room_id: str
    invitee: str
    display_name: str | None
    role: str
    permissions: tuple[str, ...]
    created_at: float
    expires_at: float
    used_at: float | None
    attempts: int
    max_attempts: int

    def state(self, now: float) -> str:
        """``used``, ``locked``, ``expired`` or ``pending``."""
        if self.used_at is not None:
            return "used"
        if self.attempts >= self.max_attempts:
            return "locked"
        if now >= self.expires_at:
            return "expired"
        return "pending"


@dataclass(frozen=True)
class Webhook:
    """A URL subscribed to events; ``secret`` signs its deliveries."""

    webhook_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: float


@dataclass(frozen=True)
class Delivery:
    """One event POSTed (or to be POSTed) to one webhook.

    :param status: ``pending``, ``delivered`` or ``failed`` (attempts used up).
    :param seq: the order in which deliveries were queued.
    """

    delivery_id: str
    seq: int
    webhook_id: str
    event: str
    payload: str
    created_at: float
    status: str
    attempts: int
    next_attempt_at: float | None
    last_code: int | None
    last_error: str | None
    delivered_at: float | None


@dataclass(frozen=True)
class Preset:
    """A named permission set that join tokens and invites refer to by name.

    :param name: 1-32 characters of ``a-z 0-9 _ -``.
    :param permissions: permission names (``engine.runtime.tokens.PERMISSIONS``).
    :param created_at: creation time.
    """

    name: str
    permissions: tuple[str, ...]
    created_at: float
