"""The errors every store raises: :class:`StoreError` and its kinds."""

from __future__ import annotations

__all__ = ["InvalidValue", "InviteRefused", "RoomExists", "StoreError", "UserExists", "UserNotFound"]


class StoreError(Exception):
    """Base class of every error raised by a store."""


class InvalidValue(StoreError):
    """An argument is not acceptable.

    ``str()`` reads ``invalid FIELD: REASON``.

    :param field: the name of the argument (or record field) at fault.
    :param reason: what is wrong with it.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"invalid {field}: {reason}")


class UserExists(StoreError):
    """A user of that name (compared case-insensitively) exists already.

    :param name: the name asked for.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"user {name!r} already exists")


class UserNotFound(StoreError):
    """No user has that name.

    :param name: the name asked for.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"user {name!r} does not exist")


class RoomExists(StoreError):
    """A room with that id exists already.

    :param room_id: the id asked for.
    """

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        super().__init__(f"room {room_id!r} already exists")


class PresetExists(StoreError):
    """A preset of that name exists already.

    :param name: the name asked for.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"preset {name!r} already exists")


class InviteRefused(StoreError):
    """An invite cannot be redeemed: ``code`` is ``invalid_code``,
    ``invite_used``, ``invite_expired`` or ``invite_locked``."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)
