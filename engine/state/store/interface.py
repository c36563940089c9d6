"""The interface the rest of the engine sees: :class:`Store`.

:class:`~engine.state.store.SqliteStore` implements it on SQLite; a server
database (PostgreSQL) will implement the same when one machine is outgrown
(design.md, "Beyond one machine").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from engine.state.store.records import ApiKey, Delivery, Invite, Preset, Room, User, Webhook

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    """Everything the engine keeps on disk, behind one small interface.

    Implementations: :class:`SqliteStore` (now), a PostgreSQL store (later).
    Every method raises :class:`InvalidValue` for a malformed argument and
    :class:`StoreError` when the database fails or the store is closed.
    Times are seconds since the epoch; ``now`` arguments are supplied by the
    caller so that expiry is testable without a clock.
    """

    sip_realm: str

    def close(self) -> None:
        """Release the database; later calls raise :class:`StoreError`."""
        ...

    # users

    def create_user(self, name: str, password: str, display_name: str | None = None, *,
                    sip: bool = False) -> User:
        """Create a user (``sip``: may REGISTER). :raises UserExists: the name is taken (any case)."""
        ...

    def create_guest(self, name: str, display_name: str | None = None) -> User:
        """Create a user that has no password (a web guest): no login by
        password or SIP digest. :raises UserExists: the name is taken."""
        ...

    def get_user(self, name: str) -> User | None:
        """Return the user of exactly that name, or ``None``."""
        ...

    def list_users(self, offset: int = 0, limit: int = 100) -> list[User]:
        """Return users ordered by name, ``limit`` (1-1000) from ``offset``."""
        ...

    def count_users(self) -> int:
        """Return the number of users."""
        ...

    def update_user(
        self, name: str, *, password: str | None = None, display_name: str | None = None,
        sip: bool | None = None,
    ) -> User:
        """Change what is given (``display_name=""`` clears it; enabling
        ``sip`` needs the ``password``).

        :raises UserNotFound: no such user.
        """
        ...

    def delete_user(self, name: str) -> bool:
        """Delete a user; ``False`` when there was none."""
        ...

    def verify_password(self, name: str, password: str) -> bool:
        """Check a password in constant time; ``False`` for unknown users."""
        ...

    def sip_ha1(self, name: str, realm: str, algorithm: str) -> str | None:
        """Return hex ``H(name:realm:password)`` or ``None`` (unknown user or realm)."""
        ...

    # key-value (scenarios' ApplicationStorage)

    def kv_put(
        self, namespace: str, key: str, value: str, ttl: float | None, now: float
    ) -> None:
        """Set a value that lives ``ttl`` seconds from ``now`` (``None``: forever)."""
        ...

    def kv_get(self, namespace: str, key: str, now: float) -> str | None:
        """Return the value, or ``None`` when absent or expired at ``now``."""
        ...

    def kv_keys(self, namespace: str, prefix: str = "", *, now: float) -> list[str]:
        """Return the sorted keys alive at ``now`` that start with ``prefix``."""
        ...

    def kv_delete(self, namespace: str, key: str) -> bool:
        """Delete a key; ``False`` when there was no row (live or expired)."""
        ...

    def kv_purge_expired(self, now: float) -> int:
        """Delete every row expired at ``now``; return how many."""
        ...

    # rooms

    def create_room(
        self, room_id: str, *, display_name: str | None = None,
        max_participants: int | None = None, record_on_start: bool = False,
        pin: str | None = None, moderator_pin: str | None = None,
        end_when_empty_after: float | None = None, starts_at: float | None = None,
        duration: float | None = None,
    ) -> Room:
        """Create a room. :raises RoomExists: the id is taken."""
        ...

    def get_room(self, room_id: str) -> Room | None:
        """Return the room, or ``None``."""
        ...

    def list_rooms(self, offset: int = 0, limit: int = 1000) -> list[Room]:
        """Return rooms ordered by id, ``limit`` (1-1000) from ``offset``."""
        ...

    def count_rooms(self) -> int:
        """Return the number of rooms."""
        ...

    def end_room(self, room_id: str, now: float) -> Room | None:
        """Mark a room ended at ``now`` (kept if it was already); ``None``: no such room."""
        ...

    def set_room_locked(self, room_id: str, locked: bool) -> Room | None:
        """Lock (no one new joins) or unlock a room; ``None``: no such room."""
        ...

    def update_room(self, room_id: str, changes: dict[str, Any]) -> Room | None:
        """Change some of a room's settings; ``None``: no such room."""
        ...

    def find_room_by_pin(self, pin: str) -> tuple[Room, str] | None:
        """The room a phone PIN opens and the role it gives (``guest`` or ``moderator``)."""
        ...

    def room_pin_role(self, room_id: str, pin: str) -> str | None:
        """The role ``pin`` gives in room ``room_id`` (constant-time), or ``None``."""
        ...

    def delete_room(self, room_id: str) -> bool:
        """Delete a room and its invites; ``False`` when there was none."""
        ...

    # management API keys

    def create_api_key(self, scopes: tuple[str, ...] | list[str], name: str | None = None) -> tuple[ApiKey, str]:
        """Create a key; return it and its secret (shown once, kept hashed)."""
        ...

    def verify_api_key(self, key_id: str, secret: str) -> ApiKey | None:
        """The key when ``secret`` is its secret, else ``None`` (constant time)."""
        ...

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, oldest first."""
        ...

    def delete_api_key(self, key_id: str) -> bool:
        """Revoke a key; ``False`` when there was none."""
        ...

    # invites

    def create_invite(
        self, room_id: str, invitee: str, *, display_name: str | None, role: str,
        permissions: tuple[str, ...] | list[str], code_hash: str, link_hash: str,
        expires_at: float, max_attempts: int, now: float,
    ) -> Invite:
        """Store an invite (its code and link token already hashed by the caller).

        :raises InvalidValue: ``code_hash`` or ``link_hash`` is taken (draw another code).
        """
        ...

    def get_invite(self, invite_id: str) -> Invite | None:
        """Return the invite, or ``None``."""
        ...

    def list_invites(self, room_id: str) -> list[Invite]:
        """A room's invites, oldest first."""
        ...

    def delete_invite(self, invite_id: str) -> bool:
        """Revoke an invite; ``False`` when there was none."""
        ...

    def redeem_invite(
        self, *, code_hash: str | None = None, link_hash: str | None = None,
        room_id: str | None = None, now: float,
    ) -> Invite:
        """Use an invite up. A wrong code for ``room_id`` counts as one failed
        attempt against each of the room's pending invites.

        :raises InviteRefused: with ``code`` saying why.
        """
        ...

    # named presets

    def create_preset(self, name: str, permissions: tuple[str, ...] | list[str]) -> Preset:
        """Store a named permission set. :raises PresetExists: the name is taken."""
        ...

    def get_preset(self, name: str) -> Preset | None:
        """Return the preset, or ``None``."""
        ...

    def list_presets(self) -> list[Preset]:
        """Every stored preset, by name."""
        ...

    def delete_preset(self, name: str) -> bool:
        """Delete a preset; ``False`` when there was none."""
        ...

    # webhooks

    def create_webhook(self, url: str, events: tuple[str, ...] | list[str]) -> Webhook:
        """Subscribe ``url`` to ``events`` (``*``: all) with a new signing secret."""
        ...

    def get_webhook(self, webhook_id: str) -> Webhook | None:
        """Return the webhook, or ``None``."""
        ...

    def list_webhooks(self) -> list[Webhook]:
        """Every webhook, oldest first."""
        ...

    def delete_webhook(self, webhook_id: str) -> bool:
        """Unsubscribe (its deliveries go too); ``False`` when there was none."""
        ...

    def enqueue_event(self, event: str, payload: str, now: float) -> list[Delivery]:
        """Queue one pending delivery of ``payload`` (JSON text) per subscribed webhook."""
        ...

    def pending_deliveries(self, limit: int = 100) -> list[Delivery]:
        """Pending deliveries in the order they were queued."""
        ...

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        """Return the delivery, or ``None``."""
        ...

    def list_deliveries(self, webhook_id: str, limit: int = 100) -> list[Delivery]:
        """A webhook's deliveries, newest first."""
        ...

    def record_delivery_attempt(
        self, delivery_id: str, *, delivered: bool, code: int | None, error: str | None,
        next_attempt_at: float | None, now: float,
    ) -> Delivery | None:
        """Count one attempt: delivered, pending again at ``next_attempt_at``, or
        failed for good (``next_attempt_at=None``)."""
        ...

    def replay_delivery(self, delivery_id: str, now: float) -> Delivery | None:
        """Make a delivery pending again, due at ``now``, with its attempts reset."""
        ...

    # call records

    def add_call_record(self, record: Mapping[str, Any]) -> None:
        """Append a call record (a JSON object: call_id, session_id, direction,
        number, caller, start, answer, end, status, reason, ...)."""
        ...

    def flush_call_records(self) -> None:
        """Write call records still queued by :meth:`add_call_record`."""
        ...

    def list_call_records(
        self, limit: int = 100, *, offset: int = 0, session_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the newest ``limit`` (1-1000) records from ``offset``, newest
        first, only those of ``session_id`` when given."""
        ...

    def count_call_records(self, *, session_id: str | None = None) -> int:
        """Return the number of call records (of ``session_id`` when given)."""
        ...
