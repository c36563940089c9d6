"""What the engine knows about a caller: call attributes a caller cannot write.

A :class:`Grant` is set on a call by the engine only, from something it
checked itself: a SIP digest it verified, a store user's password or
one-time login key, a join token it signed, a room PIN or invite code it
matched. No header, SDP line or WebSocket field is ever turned into a
grant (the user agent drops ``X-Callbridge-*`` headers from every request
it receives, and the web SDK's socket drops them from every call frame).

Scenarios read ``call.grant`` (``None``: the engine established nothing,
an anonymous caller) and hand it on when they bridge the caller into
another session (``VoxEngine.call_conference(..., grant=call.grant)``):
the conference session then sees the same grant on its own leg. Scenario
code is the operator's own and is trusted; callers are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["Grant", "AUTHENTICATED_BY", "ADMITTED_BY", "ENGINE_HEADER_PREFIX", "without_engine_headers"]

#: Headers only the engine may set (lower case prefix); whatever a caller
#: sends under it is dropped (design: "Nothing a caller sends is a grant").
ENGINE_HEADER_PREFIX = "x-callbridge-"


def without_engine_headers(headers: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """``headers`` without ``X-Callbridge-*`` (any case), and the names dropped."""
    clean: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in headers.items():
        if name.lower().startswith(ENGINE_HEADER_PREFIX):
            dropped.append(name)
        else:
            clean[name] = value
    return clean, dropped

#: Roles whose participants hear and see but send nothing (a join token's
#: ``subscriber``): the media graph never forwards their audio, they cannot
#: be unmuted, and their direct calls are refused.
LISTEN_ONLY_ROLES = frozenset({"subscriber"})

#: ``authenticated_by`` values that prove an identity (rules' ``authenticated: true``).
AUTHENTICATED_BY = frozenset({"sip-digest", "password", "login-token", "join-token"})
#: ``admitted_by`` values: how a caller was admitted to its ``room``.
ADMITTED_BY = frozenset({"join-token", "pin", "invite", "dial-out"})


@dataclass(frozen=True)
class Grant:
    """What a caller was granted, and on what ground.

    :param identity: who the caller is: a store user, a SIP user, a join
        token's subject, a guest's ``guest-…`` name; ``None`` when unknown.
    :param authenticated_by: how the engine established it: ``sip-digest``,
        ``password``, ``login-token``, ``join-token`` (a proven identity),
        ``guest`` (a name the browser chose), ``dial-out`` (a phone the
        engine called), or ``None``.
    :param room: the room (id, no ``conf_``) the caller was admitted to, if any.
    :param admitted_by: how: ``join-token``, ``pin``, ``invite``, ``dial-out``.
    :param role: ``guest``, ``moderator`` or ``subscriber`` (listen only) in that room.
    :param permissions: what the caller may ask for (``engine.runtime.tokens.PERMISSIONS``,
        ``dial_out`` among them).
    :param display_name: the name the grant carries (a join token's ``name``).
    :param data: a join token's free-form ``data`` (at most 1 KB), which the
        conference shows the other participants; ``None`` without one.
    :param custom_id: a join token's ``custom_id`` (the application's own id
        for the participant), shown in the roster; ``None`` without one.
    :param picture: a join token's ``picture`` (an http(s) URL the engine
        checked), shown in the roster; ``None`` without one.
    """

    identity: str | None = None
    authenticated_by: str | None = None
    room: str | None = None
    admitted_by: str | None = None
    role: str = "guest"
    permissions: frozenset[str] = field(default_factory=frozenset)
    display_name: str | None = None
    data: str | None = None
    custom_id: str | None = None
    picture: str | None = None

    @property
    def authenticated(self) -> bool:
        """Whether the grant proves an identity (not just a room's PIN)."""
        return self.authenticated_by in AUTHENTICATED_BY

    @property
    def guest(self) -> bool:
        """Whether the identity is a web guest's ``guest-…`` visit profile."""
        return self.authenticated_by == "guest"

    @property
    def listen_only(self) -> bool:
        """Whether the holder only listens (:data:`LISTEN_ONLY_ROLES`)."""
        return self.role in LISTEN_ONLY_ROLES

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    def admitted_to(self, room_id: str) -> bool:
        """Whether this grant admits its holder to room ``room_id``."""
        return self.room is not None and self.room == room_id

    def with_room(self, room: str | None, role: str, permissions: frozenset[str], by: str) -> Grant:
        """This grant, admitted to ``room`` as ``role`` (a PIN or invite
        checked by the engine; ``room`` ``None``: an ad-hoc conference)."""
        return replace(self, room=room, role=role, permissions=frozenset(permissions), admitted_by=by)
