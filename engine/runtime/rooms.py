"""Rooms with a lifetime: who is in, who may join, and when a room ends.

A room (``callbridge rooms create ID``, ``POST /api/v1/rooms``) is
conference ``conf_<ID>`` with settings kept in the store. Its conference
scenario reports participants as they join and leave
(:meth:`RoomService.join` / :meth:`RoomService.leave`, reached through
``VoxEngine.room_join`` / ``VoxEngine.room_leave``), and the service
answers with a refusal when the room is full, locked, not started yet or
over. Participants are live state of this node (not stored): after a
restart, the calls are gone too.

A room ends when the API ends it, when its schedule is over (checked by
:meth:`RoomService.tick`, once a second), or ``end_when_empty_after``
seconds after its last participant left. Ending it marks it in the store,
forgets its participants (hanging up the calls still up), emits
``room.ended``, and then calls the ``on_room_ended`` hooks (the engine
terminates the conference session there, which finishes its recording: so
``recording.ready`` comes after ``room.ended``).

Events (``room.started``, ``room.ended``, ``participant.joined``,
``participant.left``, ``participant.updated`` when a participant is muted
or unmuted, ``recording.started`` and ``recording.stopped``) go to the ``on_event`` hooks as ``(name, data)``;
the engine turns them into webhook deliveries.

.. rubric:: Recording on request

The room's conference records (``record_on_start``, or when asked through
:meth:`RoomService.start_recording`: the API, a moderator's SDK) and
reports each recording with :meth:`RoomService.recording_started`
(``VoxEngine.room_recording_started``); :meth:`RoomService.stop_recording`
stops it. One recording per room at a time.

.. rubric:: PINs

A room created through the API or the CLI gets a random PIN of
:data:`PIN_MIN_LENGTH` digits (``secrets``) unless it is given one, or is
explicitly made an open room (API ``"pin": null``, CLI ``--no-pin``:
phone callers then type the room's id). A PIN given by the operator must
have at least the configured minimum of digits (:func:`check_pin`). The
store keeps only keyed hashes: the PIN is shown once, in the answer that
created the room; afterwards ``pin_set`` says whether there is one.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from engine.calls.grants import LISTEN_ONLY_ROLES
from engine.state.store import InvalidValue, Room, Store

__all__ = ["GENERATE", "PIN_MIN_LENGTH", "Participant", "RoomRefused", "RoomService", "check_pin",
           "create_room_with_pin", "new_pin", "room_id_of"]

#: Digits of a generated PIN, and the fewest an operator's PIN may have.
PIN_MIN_LENGTH = 6

class _Generate(enum.Enum):
    GENERATE = "generate"


#: Stands for "no pin argument given: draw one" in :func:`create_room_with_pin`.
GENERATE = _Generate.GENERATE


def new_pin(length: int = PIN_MIN_LENGTH) -> str:
    """A random PIN of ``length`` digits (:mod:`secrets`)."""
    return "".join(secrets.choice("0123456789") for _ in range(length))


def check_pin(field: str, pin: str | None, min_length: int = PIN_MIN_LENGTH) -> None:
    """Refuse an operator's PIN shorter than ``min_length`` digits (or not digits).

    :raises InvalidValue: naming ``field``.
    """
    if pin is not None and (not isinstance(pin, str) or not pin.isascii() or not pin.isdigit()
                            or not min_length <= len(pin) <= 16):
        raise InvalidValue(field, f"must be {min_length} to 16 digits")


def create_room_with_pin(
    store: Store, room_id: str, *, pin: str | None | _Generate = GENERATE, moderator_pin: str | None = None,
    min_length: int = PIN_MIN_LENGTH, **settings: Any,
) -> tuple[Room, str | None]:
    """Create a room as the API and the CLI do: with the PIN given (at
    least ``min_length`` digits), a fresh random one (``pin=GENERATE``, the
    default; redrawn while it collides with another room's), or none
    (``pin=None``: an open room, joined by its id).

    :returns: the room and its PIN in clear (to show once), or ``None``.
    :raises InvalidValue: a PIN too short, or in use by another room.
    """
    check_pin("moderator_pin", moderator_pin, min_length)
    if not isinstance(pin, _Generate):
        check_pin("pin", pin, min_length)
        return store.create_room(room_id, pin=pin, moderator_pin=moderator_pin, **settings), pin
    for attempt in range(20):
        drawn = new_pin(min_length + attempt // 10)  # longer if the space is crowded
        if drawn == moderator_pin:
            continue
        try:
            return store.create_room(room_id, pin=drawn, moderator_pin=moderator_pin, **settings), drawn
        except InvalidValue as exc:
            if exc.field != "pin" or "in use" not in exc.reason:
                raise
    raise InvalidValue("pin", "no free PIN was found: give one")

logger = logging.getLogger(__name__)

_PREFIX = "conf_"


class RoomRefused(Exception):
    """A join is refused. ``code``: ``room_not_found``, ``room_not_started``,
    ``room_ended``, ``room_locked`` or ``room_full``."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


@dataclass
class Participant:
    """Someone in a room: a browser (``web``) or a phone (``pstn``)."""

    participant_id: str
    kind: str
    display_name: str | None
    identity: str | None
    role: str
    joined_at: float
    call: Any = field(default=None, repr=False, compare=False)
    muted: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The roster entry; ``custom_id`` and ``picture`` come from the call's
        grant (a join token's claims), ``None`` without them."""
        grant = getattr(self.call, "grant", None)
        return {"id": self.participant_id, "kind": self.kind, "display_name": self.display_name,
                "identity": self.identity, "role": self.role, "joined_at": self.joined_at,
                "muted": self.muted, "custom_id": getattr(grant, "custom_id", None),
                "picture": getattr(grant, "picture", None)}


def room_id_of(name: str) -> str:
    """``conf_ID`` -> ``ID``; a bare id is returned as it is."""
    return name[len(_PREFIX):] if name.startswith(_PREFIX) else name


class RoomService:
    """Live participants of rooms and the rules of joining them.

    :param store: where the rooms are.
    :param clock: seconds since the epoch.
    :param muter: mutes a participant's call (``(call, muted)``: the media graph), or ``None``.
    :param on_event: hooks called with ``(name, data)`` for each room event.
    :param on_room_ended: hooks called with a room's id when it ends.
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time, *,
                 muter: Callable[[Any, bool], None] | None = None,
                 on_event: Iterable[Callable[[str, dict[str, Any]], None]] = (),
                 on_room_ended: Iterable[Callable[[str], None]] = ()) -> None:
        self.store = store
        self.clock = clock
        self.participants: dict[str, dict[str, Participant]] = {}
        self.on_event: list[Callable[[str, dict[str, Any]], None]] = list(on_event)
        self.on_room_ended: list[Callable[[str], None]] = list(on_room_ended)
        #: Mutes a participant's call (``(call, muted)``: the media graph).
        self.muter = muter
        #: Asks room ``id``'s conference to start recording (the engine
        #: tells the conference's session); ``None``: nothing records on request.
        self.recording_starter: Callable[[str], None] | None = None
        #: The live recording of each room that has one.
        self.recordings: dict[str, Any] = {}
        self._empty_timers: dict[str, asyncio.TimerHandle] = {}

    # -- reading -------------------------------------------------------------------

    def get(self, name: str) -> Room | None:
        """The room ``name`` (an id or ``conf_<id>``), or ``None``."""
        try:
            return self.store.get_room(room_id_of(name))
        except Exception as exc:  # a malformed id is simply not a room
            logger.debug("room lookup %r: %s", name, exc)
            return None

    def pin_role(self, room_id: str, pin: str) -> str | None:
        """``"guest"`` or ``"moderator"`` when ``pin`` is room ``room_id``'s
        PIN or moderator PIN (or its id, when it has no PIN), else ``None``;
        compared in constant time against the stored keyed hashes."""
        try:
            return self.store.room_pin_role(room_id_of(room_id), pin)
        except Exception as exc:  # a malformed id is simply not a room
            logger.debug("room pin check %r: %s", room_id, exc)
            return None

    def list_participants(self, room_id: str) -> list[Participant]:
        return sorted(self.participants.get(room_id, {}).values(), key=lambda p: p.joined_at)

    def count(self, room_id: str) -> int:
        return len(self.participants.get(room_id, {}))

    def describe(self, room: Room) -> dict[str, Any]:
        """A room as the API and scenarios see it."""
        now = self.clock()
        return {
            "id": room.room_id,
            "conference": _PREFIX + room.room_id,
            "display_name": room.display_name,
            "max_participants": room.max_participants,
            "record_on_start": room.record_on_start,
            # never the PINs themselves: they are shown once, at creation
            "pin_set": room.has_pin,
            "moderator_pin_set": room.moderator_pin_hash is not None,
            "end_when_empty_after": room.end_when_empty_after,
            "starts_at": room.starts_at,
            "ends_at": room.ends_at,
            "duration": room.duration,
            "ended_at": room.ended_at,
            "locked": room.locked,
            "state": room.state(now),
            "created_at": room.created_at,
            "participant_count": self.count(room.room_id),
        }

    def check_open(self, room: Room, role: str = "guest") -> None:
        """Refuse a newcomer to ``room`` (before counting heads).

        :raises RoomRefused: the room is over, not started, or locked (for non-moderators).
        """
        state = room.state(self.clock())
        if state == "ended":
            raise RoomRefused("room_ended", f"room {room.room_id} has ended")
        if state == "scheduled":
            raise RoomRefused("room_not_started", f"room {room.room_id} has not started yet")
        if room.locked and role != "moderator":
            raise RoomRefused("room_locked", f"room {room.room_id} is locked")

    # -- joining and leaving ------------------------------------------------------

    def join(
        self, name: str, participant_id: str, *, kind: str, display_name: str | None = None,
        identity: str | None = None, role: str = "guest", call: Any = None,
    ) -> Participant | None:
        """Admit a participant into room ``name``; ``None`` when there is no
        such room (an ad-hoc conference: nothing to enforce).

        :raises RoomRefused: the room is over, not started, locked, or full.
        """
        room = self.get(name)
        if room is None:
            return None
        self.check_open(room, role)
        people = self.participants.setdefault(room.room_id, {})
        if participant_id in people:
            return people[participant_id]
        if room.max_participants is not None and len(people) >= room.max_participants:
            raise RoomRefused("room_full", f"room {room.room_id} is full ({room.max_participants} participants)")
        first = not people
        person = Participant(participant_id, kind, display_name, identity, role, self.clock(), call)
        if role in LISTEN_ONLY_ROLES:
            # a subscriber listens only: its audio is muted from the start
            # (the media graph drops it anyway) and stays so
            person.muted = True
            if call is not None and self.muter is not None:
                self.muter(call, True)
        people[participant_id] = person
        timer = self._empty_timers.pop(room.room_id, None)
        if timer is not None:
            timer.cancel()
        if first:
            self._emit("room.started", {"room": room.room_id})
        self._emit("participant.joined", {"room": room.room_id, "participant": person.as_dict()})
        return person

    def mute(self, name: str, participant_id: str, muted: bool = True) -> Participant | None:
        """Mute or unmute a participant's audio for everyone (phone and
        browser alike); ``None`` when no such participant is in."""
        person = self.participants.get(room_id_of(name), {}).get(participant_id)
        if person is None:
            return None
        if not muted and person.role in LISTEN_ONLY_ROLES:
            raise RoomRefused("listen_only", f"participant {participant_id} listens only (role subscriber)")
        if person.call is not None and self.muter is not None:
            self.muter(person.call, muted)
        changed = person.muted != muted
        person.muted = muted
        if changed:
            self._emit("participant.updated", {"room": room_id_of(name), "participant": person.as_dict()})
        return person

    def mute_all(self, name: str, muted: bool = True, *, except_: str | None = None) -> int:
        """Mute or unmute every participant but ``except_`` (a moderator's
        ``*6``); return how many."""
        people = [pid for pid, person in self.participants.get(room_id_of(name), {}).items()
                  if pid != except_ and (muted or person.role not in LISTEN_ONLY_ROLES)]
        for pid in people:
            self.mute(name, pid, muted)
        return len(people)

    # -- recording --------------------------------------------------------------

    def recording_started(self, name: str, recording: Any) -> None:
        """The conference of room ``name`` started ``recording`` (a handle
        with ``path``, ``duration``, ``stop()`` and ``on_stopped``): kept
        until it stops; ``recording.started`` and, later, ``recording.stopped``."""
        room_id = room_id_of(name)
        self.recordings[room_id] = recording
        self._emit("recording.started", {"room": room_id, "path": str(recording.path)})

        def stopped(rec: Any) -> None:
            if self.recordings.get(room_id) is rec:
                del self.recordings[room_id]
            self._emit("recording.stopped", {"room": room_id, "path": str(rec.path),
                                             "duration": round(float(rec.duration), 3)})

        recording.on_stopped.append(stopped)

    def start_recording(self, name: str) -> Any:
        """Have room ``name``'s conference record; the recording (the one
        already running, if any).

        :raises RoomRefused: ``no_conference`` (nobody is in: no conference
            runs) or ``not_recordable`` (its conference does not record on
            request).
        """
        room_id = room_id_of(name)
        current = self.recordings.get(room_id)
        if current is not None:
            return current
        if not self.participants.get(room_id) or self.recording_starter is None:
            raise RoomRefused("no_conference", f"room {room_id} has no conference running: nobody is in")
        self.recording_starter(room_id)
        current = self.recordings.get(room_id)
        if current is None:
            raise RoomRefused("not_recordable", f"the conference of room {room_id} does not record on request")
        return current

    def stop_recording(self, name: str) -> Any:
        """Stop room ``name``'s recording; return it.

        :raises RoomRefused: ``not_recording``.
        """
        room_id = room_id_of(name)
        current = self.recordings.get(room_id)
        if current is None:
            raise RoomRefused("not_recording", f"room {room_id} is not recording")
        current.stop()
        return current

    def leave(self, name: str, participant_id: str) -> bool:
        """Forget a participant; arm ``end_when_empty_after`` when the room empties."""
        room_id = room_id_of(name)
        people = self.participants.get(room_id)
        if not people or participant_id not in people:
            return False
        person = people.pop(participant_id)
        self._emit("participant.left", {"room": room_id, "participant": person.as_dict()})
        if not people:
            del self.participants[room_id]
            room = self.get(room_id)
            if room is not None and room.end_when_empty_after is not None and room.ended_at is None:
                self._arm_empty(room_id, room.end_when_empty_after)
        return True

    def _arm_empty(self, room_id: str, after: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        old = self._empty_timers.pop(room_id, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._empty_timers.pop(room_id, None)
            if not self.participants.get(room_id):
                self.end(room_id, "empty")

        self._empty_timers[room_id] = loop.call_later(after, fire)

    # -- ending ---------------------------------------------------------------------

    def end(self, room_id: str, reason: str) -> Room | None:
        """End a room now: mark it, drop its participants, run the hooks.

        :param reason: ``api``, ``schedule`` or ``empty`` (in the event).
        :returns: the room, or ``None`` when there is none.
        """
        before = self.get(room_id)
        if before is None:
            return None
        room = self.store.end_room(room_id, self.clock())
        timer = self._empty_timers.pop(room_id, None)
        if timer is not None:
            timer.cancel()
        if before.ended_at is None:
            people = list(self.participants.get(room_id, {}).items())
            for pid, _ in people:
                self.leave(room_id, pid)
            self._emit("room.ended", {"room": room_id, "reason": reason})
            # Only now the calls and the conference, so that what ending them
            # causes (the recording's recording.ready) follows room.ended.
            for _, person in people:
                self._hang_up(person)
            for hook in list(self.on_room_ended):
                try:
                    hook(room_id)
                except Exception:
                    logger.exception("room %s: ending hook failed", room_id)
        return room

    @staticmethod
    def _hang_up(person: Participant) -> None:
        """End a participant's call (a room that ends takes its calls along,
        even those of a conference not run by one session)."""
        call = person.call
        if call is None or call.state.ended:
            return
        try:
            call.hangup()
        except Exception as exc:  # already ending
            logger.debug("hanging up %s: %s", person.participant_id, exc)

    def tick(self) -> None:
        """End the rooms whose scheduled time is up."""
        now = self.clock()
        offset = 0
        while True:
            rooms = self.store.list_rooms(offset, 1000)
            for room in rooms:
                if room.ended_at is None and room.ends_at is not None and now >= room.ends_at:
                    self.end(room.room_id, "schedule")
            if len(rooms) < 1000:
                return
            offset += 1000

    async def run(self, interval: float = 1.0) -> None:
        """Call :meth:`tick` every ``interval`` seconds until cancelled."""
        while True:
            try:
                self.tick()
            except Exception:
                logger.exception("room schedule check failed")
            await asyncio.sleep(interval)

    def close(self) -> None:
        for timer in self._empty_timers.values():
            timer.cancel()
        self._empty_timers.clear()

    def report(self, event: str, data: dict[str, Any]) -> None:
        """Send ``event`` to the event hooks (webhooks), as the room's own are."""
        self._emit(event, data)

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        for hook in list(self.on_event):
            try:
                hook(event, data)
            except Exception:
                logger.exception("room event hook failed for %s", event)
