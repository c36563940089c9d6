"""Invites and PINs: the one redemption of an invite's code or link, and
admission of a call by the PIN it typed.

:func:`redeem_invite` is what both ``POST /api/v1/invites/redeem`` (a
browser's code or link) and ``VoxEngine.redeem_invite`` /
``VoxEngine.admit_with_pin`` (a phone keypad's code) use: the secret is
hashed with the engine's keys and the store uses the invite up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from engine.calls.call import Call
from engine.calls.grants import Grant
from engine.runtime.rooms import RoomRefused, RoomService
from engine.runtime.tokens import PRESETS, Keys
from engine.security_log import security_event
from engine.state.directory import Directory, DirectoryUnavailable
from engine.state.store import Invite, InviteRefused, Room, Store

__all__ = ["PinLimits", "PinAdmission", "redeem_invite"]


def redeem_invite(store: Store, keys: Keys, *, code: str | None = None, link_token: str | None = None,
                  room_id: str | None = None, now: float | None = None) -> Invite:
    """Use up the invite whose one-time ``code`` (in ``room_id``, when
    given) or ``link_token`` this is.

    :raises InviteRefused: ``invalid_code``, ``invite_used``,
        ``invite_expired``, ``invite_locked`` (the store's refusal).
    """
    when = time.time() if now is None else now
    if code is not None:
        return store.redeem_invite(code_hash=keys.code_hash(code), room_id=room_id, now=when)
    return store.redeem_invite(link_hash=keys.link_hash(link_token or ""), now=when)


@dataclass
class PinLimits:
    """How many wrong PINs and invite codes are tolerated, and where.

    Failures are counted per source address (per source and caller id for
    ``--trusted`` sources, whose callers share one address), per room (when
    the room is known: a browser giving a room's PIN), and engine-wide, in
    the directory's failure counters (``Directory.add_failure``, as password
    lockouts are). The ``*_free``-th failure locks that key out for
    ``*_base`` seconds, each further one doubles that up to ``*_cap``; counts are
    forgotten ``forget`` seconds after the last failure. A locked source or
    engine refuses every PIN (``too_many_attempts``); a locked room refuses
    its PINs (``pin_locked``; join tokens still work, ``room.pin_locked`` is
    reported).
    """

    source_free: int = 5
    source_base: float = 60.0
    source_cap: float = 3600.0
    room_free: int = 10
    room_base: float = 300.0
    room_cap: float = 3600.0
    global_free: int = 100
    global_base: float = 30.0
    global_cap: float = 600.0
    forget: float = 3600.0



#: ``(scope, key, free, base, cap)`` of one failure counter.
_Counter = tuple[str, str, int, float, float]


class PinAdmission:
    """Admits calls by a PIN or an invite's code, with :class:`PinLimits`
    on wrong attempts (see ``VoxEngine.admit_with_pin``).

    :param directory: the failure counters and who owns which conference.
    :param rooms: the rooms (``None``: only ad-hoc conferences).
    :param store: where invites are (``None``: no invites).
    :param keys: the engine's keys, which hash invite codes (``None``: no invites).
    :param limits: how many wrong attempts are tolerated.
    :param trusted_sources: source addresses whose callers are told apart by
        caller id (a trunk or load balancer: ``--trusted``).
    :param ad_hoc_conferences: whether a conference a browser opened (not a
        room) is opened by its id.
    """

    def __init__(self, directory: Directory, rooms: RoomService | None, store: Store | None,
                 keys: Keys | None, *, limits: PinLimits | None = None,
                 trusted_sources: frozenset[str] = frozenset(), ad_hoc_conferences: bool = True) -> None:
        self.directory = directory
        self.rooms = rooms
        self.store = store
        self.keys = keys
        self.limits = limits or PinLimits()
        self.trusted_sources = trusted_sources
        self.ad_hoc_conferences = ad_hoc_conferences

    def admit(self, call: Call, pin: str, room_name: str | None, now: float) -> dict[str, str]:
        """See ``VoxEngine.admit_with_pin``; ``now`` is the loop's clock.

        While the directory is unavailable (the failure counters cannot be
        read or counted) every PIN is refused with ``unavailable``.
        """
        try:
            return self._admit(call, pin, room_name, now)
        except DirectoryUnavailable:  # the directory logged the outage
            security_event("pin_refused", call.source, reason="unavailable", room=room_name)
            raise RoomRefused("unavailable", "PIN entry is not available right now. Please try again later.") from None

    def _admit(self, call: Call, pin: str, room_name: str | None, now: float) -> dict[str, str]:
        rooms = self.rooms
        room = rooms.get(room_name) if rooms is not None and room_name is not None else None
        if room_name is not None and room is None:
            raise RoomRefused("room_not_found", "There is no such conference.")
        room_id = room.room_id if room is not None else None
        keys = self._pin_keys(call, room_id)
        refused = self._pin_blocked(keys, now)
        if refused is not None:
            security_event("pin_refused", call.source, reason=refused.code, room=room_id)
            raise refused
        found = self._find_pin(pin, room) if isinstance(pin, str) and pin.isalnum() and len(pin) <= 32 else None
        if isinstance(found, RoomRefused):  # an invite's own refusal (used, expired): a failure too
            self._pin_failed(keys, now, call, room_id)
            raise found
        if found is None:
            self._pin_failed(keys, now, call, room_id)
            raise RoomRefused("wrong_pin", "That PIN is not valid.")
        found_room, role, permissions, by = found
        base = call.grant or Grant(identity=call.callerid or None, display_name=call.display_name)
        call.grant = base.with_room(found_room or None, role, frozenset(permissions), by)
        return {"room": found_room, "conference": f"conf_{found_room or pin}", "role": role}

    def _find_pin(self, pin: str, room: Room | None) -> tuple[str, str, tuple[str, ...], str] | RoomRefused | None:
        """``(room id, role, permissions, how)`` a PIN opens, the refusal of
        an invite it names, or ``None``."""
        rooms = self.rooms
        if room is not None:
            assert rooms is not None
            role = rooms.pin_role(room.room_id, pin)
            return (room.room_id, role, PRESETS[role], "pin") if role is not None else None
        if rooms is not None:
            found = rooms.store.find_room_by_pin(pin)
            if found is not None:
                hit, role = found
                if hit.state(time.time()) != "ended":
                    return hit.room_id, role, PRESETS[role], "pin"
        if (self.ad_hoc_conferences and (rooms is None or rooms.get(pin) is None)
                and self.directory.conference_owner("conf_" + pin) is not None):
            return "", "guest", PRESETS["guest"], "pin"  # opened by a browser, not a room
        if pin.isdigit():
            try:
                invite = self.redeem_code(pin)
            except RoomRefused as refused:
                return None if refused.code == "invalid_code" else refused
            return invite["room"], invite["role"], tuple(invite["permissions"]), "invite"
        return None

    def _pin_keys(self, call: Call, room_id: str | None) -> list[_Counter]:
        """``(scope, key, free, base, cap)`` of each failure counter for ``call``."""
        limits = self.limits
        source = call.source or "internal"
        if source in self.trusted_sources:  # a trunk: its callers share the address
            source = f"{source}/{call.callerid}"
        keys = [("source", f"pin:src:{source}", limits.source_free, limits.source_base, limits.source_cap),
                ("global", "pin:all", limits.global_free, limits.global_base, limits.global_cap)]
        if room_id is not None:
            keys.append(("room", f"pin:room:{room_id}", limits.room_free, limits.room_base, limits.room_cap))
        return keys

    def _pin_blocked(self, keys: list[_Counter], now: float) -> RoomRefused | None:
        for scope, key, _, _, _ in keys:
            if self.directory.locked_for(key, now) > 0:
                if scope == "room":
                    return RoomRefused("pin_locked", "This conference's PIN is locked. Please try again later.")
                return RoomRefused("too_many_attempts", "Too many attempts. Please try again later.")
        return None

    def _pin_failed(self, keys: list[_Counter], now: float, call: Call, room_id: str | None) -> None:
        security_event("pin_failed", call.source, room=room_id, caller=call.callerid)
        for scope, key, free, base, cap in keys:
            lock = self.directory.add_failure(key, now, free=free, base=base, cap=cap,
                                              forget=self.limits.forget)
            if lock > 0:
                security_event("pin_lockout", call.source, scope=scope, room=room_id, seconds=lock)
                if scope == "room" and self.rooms is not None and room_id is not None:
                    self.rooms.report("room.pin_locked", {"room": room_id, "seconds": lock})

    def redeem_code(self, code: str) -> dict[str, Any]:
        """Use up an invite by its code (a phone keypad's digits); see
        ``VoxEngine.redeem_invite``."""
        if self.store is None or self.keys is None:
            raise RoomRefused("room_not_found", "rooms are not available")
        if not isinstance(code, str) or not code.isdigit():
            raise RoomRefused("invalid_code", "no invite has this code")
        try:
            invite = redeem_invite(self.store, self.keys, code=code)
        except InviteRefused as exc:
            raise RoomRefused(exc.code, str(exc)) from None
        return {"room": invite.room_id, "conference": f"conf_{invite.room_id}", "role": invite.role,
                "permissions": list(invite.permissions), "identity": invite.invitee,
                "display_name": invite.display_name}
