"""The management HTTP API under ``/api/v1`` (README "HTTP API"; the
OpenAPI document at ``/api/v1/openapi.json`` is :mod:`engine.web.openapi`).

A sub-application of the engine's aiohttp app. Its middlewares, outermost
first: CORS (origins from ``--cors-origins``; none by default), errors
(every refusal is ``{"error": {"code", "message", "field"}}``), and
authentication (an API key from ``callbridge keys create``, sent as
``Authorization: Bearer KEYID.SECRET`` or HTTP Basic ``KEYID:SECRET``;
each route names the scope it needs, ``admin`` grants all). Handlers stay
thin: they check the request's fields, call the store, the rooms service
or the scenario runtime, and shape the answer.

Routes that need no key: the OpenAPI document, redeeming an invite (the
invitee has only the code), and a session's control URL (its secret is in
the path).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import yarl
from aiohttp import web

from engine.calls.grants import LISTEN_ONLY_ROLES
from engine.runtime.rooms import GENERATE, PIN_MIN_LENGTH, RoomRefused, create_room_with_pin
from engine.runtime.invites import redeem_invite as redeem_invite_once
from engine.runtime.scenario import AppEvents, Session, SessionLimitReached
from engine.state.store import (
    API_SCOPES,
    InvalidValue,
    InviteRefused,
    PresetExists,
    Room,
    RoomExists,
    StoreError,
    User,
    UserExists,
    UserNotFound,
)
from engine.runtime.router import KINDS, Caller
from engine.runtime.tokens import (
    DEFAULT_TTL,
    MAX_CUSTOM_ID,
    MAX_DATA,
    MAX_PICTURE,
    MAX_TTL,
    PERMISSIONS,
    PRESETS,
    TokenError,
    check_custom_id,
    check_picture,
    check_preset_name,
    permissions_for,
)
from engine.state.store.presets import PRESET_NAME_RE
from engine.web.errors import ApiError, error_response
from engine.web.webhooks import EVENTS, is_private_address

__all__ = ["API_ENGINE", "PREFIX", "create_api", "ROUTES"]

logger = logging.getLogger(__name__)

PREFIX = "/api/v1"

API_ENGINE: web.AppKey[Any] = web.AppKey("api_engine", object)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Invites live a week unless asked otherwise, and wrong codes lock them after 5.
INVITE_TTL = 7 * 86400.0
INVITE_MAX_TTL = 90 * 86400.0
INVITE_ATTEMPTS = 5
_ROOM_NAME_RE = re.compile(r"[A-Za-z0-9]{1,32}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    #: ``None``: no key needed.
    scope: str | None


# -- request helpers -------------------------------------------------------------------


def _engine(request: web.Request) -> Any:
    return request.config_dict[API_ENGINE]


def _store(request: web.Request) -> Any:
    store = _engine(request).store
    if store is None:
        raise ApiError(503, "unavailable", "the store is not open")
    return store


async def _body(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object; unknown fields are refused."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "missing_body", "send a JSON object as the body")
    try:
        import json

        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    for key in data:
        if key not in allowed:
            raise ApiError(400, "unknown_field", f"unknown field {key!r}; known: {', '.join(allowed)}", key)
    return data


def _missing(name: str) -> ApiError:
    return ApiError(400, "missing_field", f"{name} is required", name)


def _invalid(name: str, reason: str) -> ApiError:
    return ApiError(400, "invalid_field", f"{name} {reason}", name)


def _str(data: dict[str, Any], name: str, *, required: bool = False, max_len: int = 1024,
         nullable: bool = True, label: str | None = None) -> str | None:
    label = label or name
    value = data.get(name)
    if value is None:
        if required:
            raise _missing(label)
        if name in data and not nullable:
            raise _invalid(label, "must be a string")
        return None
    if not isinstance(value, str):
        raise _invalid(label, "must be a string")
    if len(value) > max_len:
        raise _invalid(label, f"must be at most {max_len} characters")
    return value


def _int(data: dict[str, Any], name: str, low: int, high: int, *, label: str | None = None) -> int | None:
    label = label or name
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(label, "must be an integer")
    if not low <= value <= high:
        raise _invalid(label, f"must be from {low} to {high}")
    return value


def _number(data: dict[str, Any], name: str, low: float, high: float, *, label: str | None = None,
            exclusive_low: bool = False) -> float | None:
    label = label or name
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(label, "must be a number")
    if value > high or value < low or (exclusive_low and value == low):
        raise _invalid(label, f"must be {'more than' if exclusive_low else 'at least'} {low:.0f}"
                              f" and at most {high:.0f}")
    return float(value)


def _bool(data: dict[str, Any], name: str) -> bool | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _invalid(name, "must be true or false")
    return value


def _str_list(data: dict[str, Any], name: str, choices: tuple[str, ...]) -> list[str] | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(name, "must be a list of strings")
    for item in value:
        if item not in choices:
            raise _invalid(name, f"has {item!r}: use {', '.join(choices)}")
    return value


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _invalid(name, "must be an integer") from None
    if not low <= value <= high:
        raise _invalid(name, f"must be from {low} to {high}")
    return value


def _time(value: Any, label: str) -> float:
    """Seconds since the epoch, from a number or an ISO 8601 text with a zone."""
    if isinstance(value, bool):
        raise _invalid(label, "must be seconds since the epoch or an ISO 8601 time")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or not 0 <= value < 1e11:
            raise _invalid(label, "must be seconds since the epoch (1970-5138)")
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _invalid(label, "is not an ISO 8601 time") from None
        if moment.tzinfo is None:
            raise _invalid(label, "needs a time zone (Z or +HH:MM)")
        return moment.timestamp()
    raise _invalid(label, "must be seconds since the epoch or an ISO 8601 time")


def _store_error(exc: StoreError, fields: dict[str, str] | None = None) -> ApiError:
    if isinstance(exc, InvalidValue):
        name = (fields or {}).get(exc.field, exc.field)
        return ApiError(400, "invalid_field", f"{name}: {exc.reason}", name)
    logger.error("store failed: %s", exc)
    return ApiError(503, "store_error", "the store failed; try again")


async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


# -- middlewares ---------------------------------------------------------------------------


def _cors_middleware(origins: tuple[str, ...]) -> Any:
    allow_any = "*" in origins

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and (allow_any or origin in origins)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not allowed:
                return error_response(403, "cors_forbidden", "this origin may not call the API")
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": origin or "",
                "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            })
        response = await handler(request)
        if allowed and origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return cors


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)
    except RoomRefused as exc:
        return error_response(409, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = (exc.reason or "error").lower().replace(" ", "_")
        return error_response(exc.status, code, exc.text or exc.reason)


def _credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        key_id, sep, secret = value.partition(".")
    elif scheme.lower() == "basic":
        try:
            text = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        key_id, sep, secret = text.partition(":")
    else:
        return None
    return (key_id, secret) if sep and key_id and secret else None


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="callbridge", Basic realm="callbridge"'}


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = getattr(request.match_info.route.handler, "__api_route__", None)
    scope = route.scope if isinstance(route, Route) else None
    if scope is None:
        return await handler(request)
    header = request.headers.get("Authorization")
    if not header:
        raise ApiError(401, "unauthorized", "send an API key: Authorization: Bearer KEYID.SECRET",
                       headers=_CHALLENGE)
    creds = _credentials(header)
    key = _store(request).verify_api_key(*creds) if creds is not None else None
    if key is None:
        raise ApiError(401, "invalid_credentials", "unknown API key or wrong secret", headers=_CHALLENGE)
    if scope not in key.scopes and "admin" not in key.scopes:
        raise ApiError(403, "forbidden", f"this API key lacks the {scope!r} scope")
    return await handler(request)


# -- users -------------------------------------------------------------------------------


def _user(user: User) -> dict[str, Any]:
    return {"name": user.name, "display_name": user.display_name, "created_at": user.created_at,
            "sip": user.sip}


async def list_users(request: web.Request) -> web.Response:
    offset = _query_int(request, "offset", 0, 0, 10**9)
    limit = _query_int(request, "limit", 100, 1, 1000)
    store = _store(request)
    users = await _in_thread(store.list_users, offset, limit)
    total = await _in_thread(store.count_users)
    return _json({"users": [_user(u) for u in users], "total": total, "offset": offset, "limit": limit})


async def create_user(request: web.Request) -> web.Response:
    data = await _body(request, ("name", "password", "display_name", "sip"))
    name = _str(data, "name", required=True, max_len=64)
    password = _str(data, "password", required=True, max_len=1024)
    display_name = _str(data, "display_name", max_len=128)
    sip = _bool(data, "sip") or False
    try:
        user = await _in_thread(_store(request).create_user, name, password, display_name, sip=sip)
    except UserExists:
        raise ApiError(409, "user_exists", f"user {name!r} already exists", "name") from None
    except StoreError as exc:
        raise _store_error(exc) from None
    return _json(_user(user), 201)


async def get_user(request: web.Request) -> web.Response:
    user = await _in_thread(_store(request).get_user, request.match_info["name"])
    if user is None:
        raise ApiError(404, "not_found", f"no user {request.match_info['name']!r}", "name")
    return _json(_user(user))


async def update_user(request: web.Request) -> web.Response:
    data = await _body(request, ("password", "display_name", "sip"))
    password = _str(data, "password", max_len=1024, nullable=False)
    sip = _bool(data, "sip")
    display_name = _str(data, "display_name", max_len=128)
    if "display_name" in data and display_name is None:
        display_name = ""  # null clears it
    name = request.match_info["name"]
    try:
        user = await _in_thread(_store(request).update_user, name, password=password,
                                display_name=display_name, sip=sip)
    except UserNotFound:
        raise ApiError(404, "not_found", f"no user {name!r}", "name") from None
    except StoreError as exc:
        raise _store_error(exc) from None
    return _json(_user(user))


#: Lifetime of a one-time SDK login token, by default and at most (seconds).
LOGIN_TOKEN_TTL = 300.0
LOGIN_TOKEN_MAX_TTL = 86400.0


async def create_login_token(request: web.Request) -> web.Response:
    """A one-time key with which the web SDK logs in as this user
    (``{"type": "login", "token": ...}``) without its password: an
    application server issues it to its own signed-in user's browser."""
    from engine.web.ws import TOKEN_NAMESPACE

    name = request.match_info["name"]
    data = await _body(request, ("ttl",)) if (await request.read()).strip() else {}
    ttl = _number(data, "ttl", 0, LOGIN_TOKEN_MAX_TTL, exclusive_low=True) or LOGIN_TOKEN_TTL
    store = _store(request)
    user = await _in_thread(store.get_user, name)
    if user is None:
        raise ApiError(404, "not_found", f"no user {name!r}", "name")
    keys = _engine(request).keys
    if keys is None:
        raise ApiError(503, "unavailable", "login tokens are not available")
    token = secrets.token_urlsafe(32)
    now = time.time()
    # Only a keyed hash is stored: the database alone logs nobody in.
    await _in_thread(store.kv_put, TOKEN_NAMESPACE, keys.login_token_hash(token), user.name, ttl, now)
    return _json({"token": token, "user": user.name, "expires_at": now + ttl}, 201)


async def delete_user(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await _in_thread(_store(request).delete_user, name):
        raise ApiError(404, "not_found", f"no user {name!r}", "name")
    return web.Response(status=204)


# -- rooms -------------------------------------------------------------------------------


def _rooms(request: web.Request) -> Any:
    rooms = _engine(request).rooms
    if rooms is None:
        raise ApiError(503, "unavailable", "rooms are not available")
    return rooms


def _room_or_404(request: web.Request) -> Room:
    room_id = request.match_info["room"]
    room: Room | None = _rooms(request).get(room_id) if _ROOM_NAME_RE.fullmatch(room_id) else None
    if room is None:
        raise ApiError(404, "not_found", f"no room {room_id!r}", "room")
    return room


def _room_view(request: web.Request, room: Room, participants: bool = False) -> dict[str, Any]:
    rooms = _rooms(request)
    view: dict[str, Any] = rooms.describe(room)
    if participants:
        view["participants"] = [p.as_dict() for p in rooms.list_participants(room.room_id)]
    return view


async def list_rooms(request: web.Request) -> web.Response:
    offset = _query_int(request, "offset", 0, 0, 10**9)
    limit = _query_int(request, "limit", 100, 1, 1000)
    store = _store(request)
    rooms = store.list_rooms(offset, limit)
    return _json({"rooms": [_room_view(request, r) for r in rooms], "total": store.count_rooms(),
                  "offset": offset, "limit": limit})


_ROOM_FIELDS = ("display_name", "max_participants", "record_on_start", "pin", "moderator_pin",
                "end_when_empty_after", "schedule")
_ROOM_STORE_FIELDS = {"room_id": "name", "starts_at": "schedule.start", "duration": "schedule.duration"}


def _schedule(data: dict[str, Any]) -> dict[str, float | None]:
    """``schedule`` ``{start, duration}`` as ``starts_at`` and ``duration``
    (only the keys given; ``null`` clears one)."""
    schedule = data.get("schedule")
    if schedule is None:
        return {}
    if not isinstance(schedule, dict):
        raise _invalid("schedule", "must be an object with start and duration")
    for key in schedule:
        if key not in ("start", "duration"):
            raise ApiError(400, "unknown_field", f"unknown field schedule.{key}", f"schedule.{key}")
    out: dict[str, float | None] = {}
    if "start" in schedule:
        out["starts_at"] = _time(schedule["start"], "schedule.start") if schedule["start"] is not None else None
    if "duration" in schedule:
        out["duration"] = _number(schedule, "duration", 0, 86400 * 365, label="schedule.duration",
                                  exclusive_low=True)
    return out


def _room_settings(data: dict[str, Any]) -> dict[str, Any]:
    """The settings of a new room from a request body (POST and PUT)."""
    pin: str | None | Any = _str(data, "pin", max_len=16) if "pin" in data else GENERATE
    return {
        "display_name": _str(data, "display_name", max_len=128),
        "max_participants": _int(data, "max_participants", 1, 10000),
        "record_on_start": _bool(data, "record_on_start") or False,
        # No "pin": the engine draws one; "pin": null: an open room (joined by its id).
        "pin": pin,
        "moderator_pin": _str(data, "moderator_pin", max_len=16),
        "end_when_empty_after": _number(data, "end_when_empty_after", 0, 86400 * 365),
        **_schedule(data),
    }


def _create(request: web.Request, name: str, settings: dict[str, Any]) -> tuple[Room, str | None]:
    min_length = int(getattr(_engine(request).config, "pin_min_length", PIN_MIN_LENGTH))
    try:
        room, clear_pin = create_room_with_pin(_store(request), name, min_length=min_length, **settings)
    except StoreError as exc:
        if isinstance(exc, RoomExists):
            raise
        raise _store_error(exc, _ROOM_STORE_FIELDS) from None
    return room, clear_pin


async def create_room(request: web.Request) -> web.Response:
    data = await _body(request, ("name", *_ROOM_FIELDS))
    name = _str(data, "name", max_len=32)
    if name is None:
        name = secrets.token_hex(6)
    elif not _ROOM_NAME_RE.fullmatch(name):
        raise _invalid("name", "must be 1 to 32 characters of A-Z a-z 0-9")
    settings = _room_settings(data)
    try:
        room, clear_pin = _create(request, name, settings)
    except RoomExists:
        raise ApiError(409, "room_exists", f"room {name!r} already exists", "name") from None
    view = _room_view(request, room, participants=True)
    # The PINs in clear, this once: only their keyed hashes are kept.
    view["pin"], view["moderator_pin"] = clear_pin, settings["moderator_pin"]
    return _json(view, 201)


async def put_room(request: web.Request) -> web.Response:
    """Create room ``{room}`` with these settings, or answer the existing
    one (idempotent: 201 the first time, 200 after, with the same body).
    ``pin`` is required (a PIN, or ``null`` for an open room) since the
    answer never shows a PIN; an existing room whose PIN is not the one
    given is a conflict, not a success."""
    name = request.match_info["room"]
    if not _ROOM_NAME_RE.fullmatch(name):
        raise _invalid("room", "must be 1 to 32 characters of A-Z a-z 0-9")
    data = await _body(request, _ROOM_FIELDS)
    if "pin" not in data:
        raise _missing("pin")
    settings = _room_settings(data)
    rooms = _rooms(request)
    existing = rooms.get(name)
    if existing is None:
        try:
            room, _ = _create(request, name, settings)
            return _json(_room_view(request, room, participants=True), 201)
        except RoomExists:  # created meanwhile: the same as finding it
            existing = rooms.get(name)
            if existing is None:
                raise ApiError(409, "room_exists", f"room {name!r} already exists", "room") from None
    pin = settings["pin"]
    same_pin = (not existing.has_pin) if pin is None else rooms.pin_role(name, pin) == "guest"
    if not same_pin:
        raise ApiError(409, "room_exists", f"room {name!r} exists with another PIN", "pin")
    return _json(_room_view(request, existing, participants=True), 200)


async def update_room(request: web.Request) -> web.Response:
    """Change a room's title, cap, schedule, recording or lock."""
    room = _room_or_404(request)
    data = await _body(request, ("display_name", "max_participants", "record_on_start", "locked",
                                 "end_when_empty_after", "schedule"))
    changes: dict[str, Any] = {}
    if "display_name" in data:
        changes["display_name"] = _str(data, "display_name", max_len=128)
    if "max_participants" in data:
        changes["max_participants"] = _int(data, "max_participants", 1, 10000)
    for flag in ("record_on_start", "locked"):
        if flag in data:
            value = _bool(data, flag)
            if value is None:
                raise _invalid(flag, "must be true or false")
            changes[flag] = value
    if "end_when_empty_after" in data:
        changes["end_when_empty_after"] = _number(data, "end_when_empty_after", 0, 86400 * 365)
    changes.update(_schedule(data))
    if room.ended_at is not None:
        raise ApiError(409, "room_ended", f"room {room.room_id} has ended", "room")
    try:
        updated = await _in_thread(_store(request).update_room, room.room_id, changes)
    except StoreError as exc:
        raise _store_error(exc, _ROOM_STORE_FIELDS) from None
    if updated is None:
        raise ApiError(404, "not_found", f"no room {room.room_id!r}", "room")
    return _json(_room_view(request, updated, participants=True))


async def get_room(request: web.Request) -> web.Response:
    return _json(_room_view(request, _room_or_404(request), participants=True))


async def end_room(request: web.Request) -> web.Response:
    room = _room_or_404(request)
    ended = _rooms(request).end(room.room_id, "api")
    return _json(_room_view(request, ended or room, participants=True))


async def delete_room(request: web.Request) -> web.Response:
    room = _room_or_404(request)
    _rooms(request).end(room.room_id, "api")
    _store(request).delete_room(room.room_id)
    return web.Response(status=204)


async def lock_room(request: web.Request) -> web.Response:
    room = _room_or_404(request)
    data = await _body(request, ("locked",))
    locked = _bool(data, "locked")
    if locked is None:
        raise _missing("locked")
    updated = _store(request).set_room_locked(room.room_id, locked)
    return _json(_room_view(request, updated or room, participants=True))


async def remove_participant(request: web.Request) -> web.Response:
    room = _room_or_404(request)
    rooms = _rooms(request)
    pid = request.match_info["participant"]
    person = rooms.participants.get(room.room_id, {}).get(pid)
    if person is None:
        raise ApiError(404, "not_found", f"no participant {pid!r} in room {room.room_id}", "participant")
    call = person.call
    rooms.leave(room.room_id, pid)
    if call is not None and not call.state.ended:
        try:
            call.hangup()
        except Exception as exc:  # already ending
            logger.debug("removing %s: %s", pid, exc)
    return web.Response(status=204)


async def mute_participant(request: web.Request) -> web.Response:
    room = _room_or_404(request)
    data = await _body(request, ("muted",))
    muted = _bool(data, "muted")
    if muted is None:
        raise _missing("muted")
    pid = request.match_info["participant"]
    try:
        person = _rooms(request).mute(room.room_id, pid, muted)
    except RoomRefused as refused:  # a subscriber (listen only) cannot be unmuted
        raise ApiError(409, refused.code, refused.message, "muted") from None
    if person is None:
        raise ApiError(404, "not_found", f"no participant {pid!r} in room {room.room_id}", "participant")
    return _json(person.as_dict())


async def mute_all(request: web.Request) -> web.Response:
    """Mute (or unmute) every participant of the room, but those of the
    identities in ``except`` (the moderators who asked, say)."""
    room = _room_or_404(request)
    data = await _body(request, ("muted", "except"))
    muted = _bool(data, "muted")
    if muted is None:
        raise _missing("muted")
    spared = data.get("except")
    if spared is not None and (not isinstance(spared, list) or len(spared) > 100
                               or not all(isinstance(i, str) and 0 < len(i) <= 256 for i in spared)):
        raise _invalid("except", "must be a list of at most 100 identities (1-256 characters)")
    rooms = _rooms(request)
    changed = []
    for person in rooms.list_participants(room.room_id):
        if person.identity is not None and person.identity in (spared or ()):
            continue
        if not muted and person.role in LISTEN_ONLY_ROLES:
            continue  # a subscriber listens only: it stays muted
        was = person.muted
        rooms.mute(room.room_id, person.participant_id, muted)
        if was != muted:
            changed.append(person.participant_id)
    return _json({"room": room.room_id, "muted": muted, "changed": changed,
                  "participants": [p.as_dict() for p in rooms.list_participants(room.room_id)]})


def _recording_view(room_id: str, rec: Any) -> dict[str, Any]:
    live = rec is not None and not rec.done()
    return {"room": room_id, "recording": live, "path": str(rec.path) if rec is not None else None,
            "duration": round(float(rec.duration), 3) if rec is not None else None}


async def room_recording(request: web.Request) -> web.Response:
    """``{"action": "start"}`` has the room's conference record (the one
    recording already running is answered as it is); ``"stop"`` stops it.
    Refusals are 409: ``no_conference``, ``not_recordable``, ``not_recording``."""
    room = _room_or_404(request)
    data = await _body(request, ("action",))
    action = _str(data, "action", required=True, max_len=16)
    if action not in ("start", "stop"):
        raise _invalid("action", "must be start or stop")
    if room.ended_at is not None:
        raise ApiError(409, "room_ended", f"room {room.room_id} has ended", "room")
    rooms = _rooms(request)
    rec = rooms.start_recording(room.room_id) if action == "start" else rooms.stop_recording(room.room_id)
    return _json(_recording_view(room.room_id, rec))


async def get_room_recording(request: web.Request) -> web.Response:
    room = _room_or_404(request)
    return _json(_recording_view(room.room_id, _rooms(request).recordings.get(room.room_id)))


# -- join tokens and invites ---------------------------------------------------------------


def _grant_fields(request: web.Request, data: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The role and permissions a token or invite body asks for: a ``preset``
    by name (built in or stored; the role is then its name), or ``role``
    and/or ``permissions``."""
    preset = _str(data, "preset", max_len=32)
    if preset is not None:
        if data.get("role") is not None or data.get("permissions") is not None:
            raise _invalid("preset", "replaces role and permissions: give one or the other")
        if preset in PRESETS:
            return preset, PRESETS[preset]
        stored = _store(request).get_preset(preset) if PRESET_NAME_RE.fullmatch(preset) else None
        if stored is None:
            raise _invalid("preset", f"names no preset: {preset!r} (GET /api/v1/presets lists them)")
        return stored.name, tuple(p for p in stored.permissions if p in PERMISSIONS)
    role = _str(data, "role", max_len=32)
    perms = _str_list(data, "permissions", PERMISSIONS)
    if role is None:
        role = "custom" if perms is not None else "guest"
    elif perms is None and role not in PRESETS:
        raise _invalid("role", f"must be one of {', '.join(PRESETS)} (or give permissions)")
    return role, permissions_for(role, perms)


def _token_answer(token: str, grant: Any) -> dict[str, Any]:
    return {"token": token, "room": grant.room, "identity": grant.identity,
            "display_name": grant.display_name, "role": grant.role,
            "permissions": list(grant.permissions), "expires_at": grant.expires_at, "data": grant.data,
            "custom_id": grant.custom_id, "picture": grant.picture}


def _checked(data: dict[str, Any], name: str, max_len: int, check: Callable[[str], str]) -> str | None:
    value = _str(data, name, max_len=max_len)
    if value is not None:
        try:
            check(value)
        except ValueError as exc:
            raise _invalid(name, str(exc)) from None
    return value


async def create_token(request: web.Request) -> web.Response:
    room = _room_or_404(request)
    data = await _body(request, ("identity", "display_name", "role", "permissions", "preset", "ttl", "data",
                                 "custom_id", "picture"))
    identity = _str(data, "identity", required=True, max_len=256)
    assert identity is not None
    if not identity:
        raise _invalid("identity", "must not be empty")
    display_name = _str(data, "display_name", max_len=128)
    role, perms = _grant_fields(request, data)
    ttl = _number(data, "ttl", 0, MAX_TTL, exclusive_low=True) or DEFAULT_TTL
    extra = _str(data, "data", max_len=MAX_DATA)
    if extra is not None and len(extra.encode("utf-8")) > MAX_DATA:
        raise _invalid("data", f"must be at most {MAX_DATA} bytes (UTF-8)")
    custom_id = _checked(data, "custom_id", MAX_CUSTOM_ID, check_custom_id)
    picture = _checked(data, "picture", MAX_PICTURE, check_picture)
    if room.state(time.time()) == "ended":
        raise ApiError(409, "room_ended", f"room {room.room_id} has ended", "room")
    token, grant = _engine(request).keys.issue_join_token(
        room=room.room_id, identity=identity, display_name=display_name, role=role,
        permissions=perms, ttl=ttl, now=time.time(), data=extra, custom_id=custom_id, picture=picture)
    return _json(_token_answer(token, grant), 201)


async def verify_token(request: web.Request) -> web.Response:
    data = await _body(request, ("token",))
    token = _str(data, "token", required=True, max_len=4096)
    try:
        grant = _engine(request).keys.verify_join_token(token, time.time())
    except TokenError as exc:
        raise ApiError(401, exc.code, exc.message, "token") from None
    answer = _token_answer(token or "", grant)
    del answer["token"]
    return _json(answer)


def _invite(invite: Any) -> dict[str, Any]:
    return {"id": invite.invite_id, "room": invite.room_id, "invitee": invite.invitee,
            "display_name": invite.display_name, "role": invite.role,
            "permissions": list(invite.permissions), "created_at": invite.created_at,
            "expires_at": invite.expires_at, "used_at": invite.used_at, "attempts": invite.attempts,
            "max_attempts": invite.max_attempts, "state": invite.state(time.time())}


async def create_invite(request: web.Request) -> web.Response:
    room = _room_or_404(request)
    data = await _body(request, ("invitee", "display_name", "role", "permissions", "preset", "ttl",
                                 "max_attempts"))
    invitee = _str(data, "invitee", required=True, max_len=256)
    if not invitee:
        raise _invalid("invitee", "must not be empty")
    display_name = _str(data, "display_name", max_len=128)
    role, perms = _grant_fields(request, data)
    ttl = _number(data, "ttl", 0, INVITE_MAX_TTL, exclusive_low=True) or INVITE_TTL
    max_attempts = _int(data, "max_attempts", 1, 100) or INVITE_ATTEMPTS
    if room.state(time.time()) == "ended":
        raise ApiError(409, "room_ended", f"room {room.room_id} has ended", "room")
    keys, store = _engine(request).keys, _store(request)
    now = time.time()
    for _ in range(8):  # a code collision (1 in 10**8 per live invite) draws again
        code, link = keys.new_invite_secrets()
        try:
            invite = store.create_invite(
                room.room_id, invitee, display_name=display_name, role=role, permissions=perms,
                code_hash=keys.code_hash(code), link_hash=keys.link_hash(link), expires_at=now + ttl,
                max_attempts=max_attempts, now=now)
        except InvalidValue as exc:
            if exc.field == "code_hash":
                continue
            raise _store_error(exc) from None
        return _json({**_invite(invite), "code": code, "link_token": link}, 201)
    raise ApiError(503, "try_again", "could not draw a unique code; try again")


async def list_invites(request: web.Request) -> web.Response:
    room = _room_or_404(request)
    return _json({"invites": [_invite(i) for i in _store(request).list_invites(room.room_id)]})


async def delete_invite(request: web.Request) -> web.Response:
    invite_id = request.match_info["invite"]
    if not _store(request).delete_invite(invite_id):
        raise ApiError(404, "not_found", f"no invite {invite_id!r}", "invite")
    return web.Response(status=204)


async def redeem_invite(request: web.Request) -> web.Response:
    data = await _body(request, ("code", "room", "link_token"))
    code = _str(data, "code", max_len=64)
    link = _str(data, "link_token", max_len=256)
    room_id = _str(data, "room", max_len=32)
    if (code is None) == (link is None):
        raise ApiError(400, "missing_field", "give code (with room) or link_token", "code")
    keys, store = _engine(request).keys, _store(request)
    engine = _engine(request)
    peer = request.remote or "?"
    if not engine.directory.hit(f"invite:{peer}", asyncio.get_running_loop().time(), rate=1.0, burst=20):
        raise ApiError(429, "too_many_attempts", "too many attempts; wait a minute")
    try:
        invite = redeem_invite_once(store, keys, code=code, link_token=link, room_id=room_id)
    except InviteRefused as exc:
        status = {"invalid_code": 403, "invite_locked": 423}.get(exc.code, 410)
        raise ApiError(status, exc.code, str(exc), "link_token" if link is not None else "code") from None
    room = store.get_room(invite.room_id)
    if room is None or room.state(time.time()) == "ended":
        raise ApiError(410, "room_ended", f"room {invite.room_id} has ended", "room")
    token, grant = keys.issue_join_token(
        room=invite.room_id, identity=invite.invitee, display_name=invite.display_name,
        role=invite.role, permissions=invite.permissions, ttl=DEFAULT_TTL, now=time.time())
    return _json({**_token_answer(token, grant), "conference": f"conf_{invite.room_id}"})


# -- named presets -------------------------------------------------------------------------


def _preset_view(name: str, permissions: tuple[str, ...], created_at: float | None) -> dict[str, Any]:
    return {"name": name, "permissions": list(permissions), "builtin": created_at is None,
            "created_at": created_at}


async def list_presets(request: web.Request) -> web.Response:
    builtin = [_preset_view(name, perms, None) for name, perms in PRESETS.items()]
    stored = [_preset_view(p.name, p.permissions, p.created_at) for p in _store(request).list_presets()]
    return _json({"presets": builtin + stored})


async def create_preset(request: web.Request) -> web.Response:
    data = await _body(request, ("name", "permissions"))
    name = _str(data, "name", required=True, max_len=32)
    assert name is not None
    try:
        check_preset_name(name)
    except ValueError as exc:
        raise ApiError(409, "builtin_preset", str(exc), "name") from None
    if not PRESET_NAME_RE.fullmatch(name):
        raise _invalid("name", "must be 1-32 characters of a-z 0-9 _ - starting with a letter")
    perms = _str_list(data, "permissions", PERMISSIONS)
    if perms is None:
        raise _missing("permissions")
    try:
        preset = _store(request).create_preset(name, perms)
    except PresetExists:
        raise ApiError(409, "preset_exists", f"preset {name!r} exists; delete it first", "name") from None
    except StoreError as exc:
        raise _store_error(exc) from None
    return _json(_preset_view(preset.name, preset.permissions, preset.created_at), 201)


async def get_preset(request: web.Request) -> web.Response:
    name = request.match_info["preset"]
    if name in PRESETS:
        return _json(_preset_view(name, PRESETS[name], None))
    preset = _store(request).get_preset(name)
    if preset is None:
        raise ApiError(404, "not_found", f"no preset {name!r}", "preset")
    return _json(_preset_view(preset.name, preset.permissions, preset.created_at))


async def delete_preset(request: web.Request) -> web.Response:
    name = request.match_info["preset"]
    if name in PRESETS:
        raise ApiError(409, "builtin_preset", f"{name!r} is a built-in preset and cannot be deleted", "preset")
    if not _store(request).delete_preset(name):
        raise ApiError(404, "not_found", f"no preset {name!r}", "preset")
    return web.Response(status=204)


# -- sessions ------------------------------------------------------------------------------


def _session_view(request: web.Request, session: Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "rule": session.rule.name,
        "scenarios": list(session.rule.scenarios),
        "started_at": session.started_at,
        "conferences": sorted(session.conferences),
        "calls": [
            {"id": c.id, "kind": c.kind, "direction": c.direction, "state": c.state.value,
             "number": c.number, "callerid": c.callerid}
            for c in list(session.calls)
        ],
    }


def _session_or_404(request: web.Request) -> Session:
    sid = request.match_info["session"]
    session: Session | None = _engine(request).runtime.sessions.get(sid)
    if session is None or session.terminated:
        raise ApiError(404, "not_found", f"no running session {sid!r}", "session")
    return session


async def list_sessions(request: web.Request) -> web.Response:
    sessions = list(_engine(request).runtime.sessions.values())
    return _json({"sessions": [_session_view(request, s) for s in sessions if not s.terminated]})


async def start_session(request: web.Request) -> web.Response:
    data = await _body(request, ("rule", "custom_data"))
    rule_name = _str(data, "rule", required=True, max_len=256)
    custom_data = _str(data, "custom_data", max_len=64 * 1024) or ""
    engine = _engine(request)
    rule = next((r for r in engine.runtime.rules.rules if r.name == rule_name), None)
    if rule is None:
        raise ApiError(404, "not_found", f"no rule {rule_name!r}", "rule")
    try:
        session = engine.runtime.start_session(rule, custom_data)
    except SessionLimitReached as exc:
        raise ApiError(503, "too_many_sessions", str(exc), headers={"Retry-After": "5"}) from None
    except Exception as exc:
        raise ApiError(422, "scenario_failed", f"the scenario failed to start: {exc}", "rule") from None
    url = request.url.with_path(f"{PREFIX}/control/{session.id}/{session.control_secret}").with_query(None)
    return _json({**_session_view(request, session), "control_url": str(url)}, 201)


async def get_session(request: web.Request) -> web.Response:
    return _json(_session_view(request, _session_or_404(request)))


async def session_log(request: web.Request) -> web.Response:
    sid = request.match_info["session"]
    try:
        lines = await _in_thread(_engine(request).runtime.read_log, sid)
    except KeyError:
        raise ApiError(404, "not_found", f"no session {sid!r}", "session") from None
    return _json({"id": sid, "lines": lines})


async def terminate_session(request: web.Request) -> web.Response:
    _session_or_404(request).terminate()
    return web.Response(status=204)


async def control_session(request: web.Request) -> web.Response:
    """Any method: deliver the request to the session as ``AppEvents.HttpRequest``."""
    import hmac

    sid = request.match_info["session"]
    session: Session | None = _engine(request).runtime.sessions.get(sid)
    secret = request.match_info["secret"]
    if session is None or session.terminated or not hmac.compare_digest(
            secret.encode(), session.control_secret.encode()):
        raise ApiError(404, "not_found", "no running session at this control URL")
    body = await request.text()
    session.emit(AppEvents.HttpRequest, method=request.method, path=request.match_info.get("tail", ""),
                 query=dict(request.query), headers=dict(request.headers), text=body)
    return _json({"session_id": sid, "delivered": True}, 202)


# -- rules -----------------------------------------------------------------------------------


def _rule(rule: Any) -> dict[str, Any]:
    return {"name": rule.name, "pattern": rule.pattern.pattern,
            "exclude": rule.exclude.pattern if rule.exclude is not None else None,
            "scenarios": list(rule.scenarios), "description": rule.description,
            "restrictions": rule.restrictions()}


async def list_rules(request: web.Request) -> web.Response:
    return _json({"rules": [_rule(r) for r in _engine(request).runtime.rules.rules]})


async def reload_rules(request: web.Request) -> web.Response:
    try:
        rules = _engine(request).reload_rules()
    except Exception as exc:  # StartupError or ScenarioError: file, line and reason
        raise ApiError(422, "invalid_rules", str(exc), "rules") from None
    return _json({"rules": [_rule(r) for r in rules.rules],
                  "warnings": [str(w) for w in rules.warnings]})


async def explain_rules(request: web.Request) -> web.Response:
    data = await _body(request, ("destination", "kind", "source", "authenticated"))
    destination = _str(data, "destination", required=True, max_len=256)
    kind = _str(data, "kind", max_len=16)
    if kind is not None and kind not in KINDS:
        raise ApiError(400, "invalid_field", f"kind must be one of {', '.join(KINDS)}", "kind")
    source = _str(data, "source", max_len=64)
    authenticated = data.get("authenticated", False)
    if not isinstance(authenticated, bool):
        raise ApiError(400, "invalid_field", "authenticated must be true or false", "authenticated")
    caller = Caller(kind, source, authenticated) if kind is not None else None
    rules = _engine(request).runtime.rules
    verdicts = rules.explain(destination, caller)
    match = rules.match(destination, caller)
    answer: dict[str, Any] = {"destination": destination, "match": match.name if match is not None else None,
                              "rules": [{"name": r.name, "verdict": v} for r, v in verdicts]}
    if match is None:
        answer["status"] = rules.refusal(destination, caller)[0] if caller is not None else 404
    return _json(answer)


# -- call records ------------------------------------------------------------------------------


async def list_calls(request: web.Request) -> web.Response:
    offset = _query_int(request, "offset", 0, 0, 10**9)
    limit = _query_int(request, "limit", 100, 1, 1000)
    session_id = request.query.get("session_id")
    store = _store(request)
    records = await _in_thread(store.list_call_records, limit, offset=offset, session_id=session_id)
    total = await _in_thread(store.count_call_records, session_id=session_id)
    return _json({"calls": records, "total": total, "offset": offset, "limit": limit})


# -- key-value storage ---------------------------------------------------------------------------

_KV = "app"


def _key(request: web.Request) -> str:
    key = request.match_info["key"]
    if not 1 <= len(key) <= 256:
        raise _invalid("key", "must be 1 to 256 characters")
    return key


async def list_keys(request: web.Request) -> web.Response:
    prefix = request.query.get("prefix", "")
    try:
        keys = _store(request).kv_keys(_KV, prefix, now=time.time())
    except StoreError as exc:
        raise _store_error(exc) from None
    return _json({"keys": keys})


async def get_value(request: web.Request) -> web.Response:
    key = _key(request)
    value = _store(request).kv_get(_KV, key, time.time())
    if value is None:
        raise ApiError(404, "not_found", f"no key {key!r}", "key")
    return _json({"key": key, "value": value})


async def put_value(request: web.Request) -> web.Response:
    key = _key(request)
    data = await _body(request, ("value", "ttl"))
    value = _str(data, "value", required=True, max_len=1024 * 1024)
    ttl = _number(data, "ttl", 0, 10 * 365 * 86400, exclusive_low=True)
    try:
        _store(request).kv_put(_KV, key, value, ttl, time.time())
    except StoreError as exc:
        raise _store_error(exc) from None
    return _json({"key": key, "value": value})


async def delete_value(request: web.Request) -> web.Response:
    key = _key(request)
    if not _store(request).kv_delete(_KV, key):
        raise ApiError(404, "not_found", f"no key {key!r}", "key")
    return web.Response(status=204)


# -- webhooks --------------------------------------------------------------------------------------


def _webhook(hook: Any, secret: bool = False) -> dict[str, Any]:
    view = {"id": hook.webhook_id, "url": hook.url, "events": list(hook.events),
            "created_at": hook.created_at}
    if secret:
        view["secret"] = hook.secret
    return view


def _delivery(d: Any) -> dict[str, Any]:
    return {"id": d.delivery_id, "webhook": d.webhook_id, "event": d.event, "status": d.status,
            "attempts": d.attempts, "created_at": d.created_at, "next_attempt_at": d.next_attempt_at,
            "last_code": d.last_code, "last_error": d.last_error, "delivered_at": d.delivered_at}


def _webhook_or_404(request: web.Request) -> Any:
    hook = _store(request).get_webhook(request.match_info["webhook"])
    if hook is None:
        raise ApiError(404, "not_found", f"no webhook {request.match_info['webhook']!r}", "webhook")
    return hook


async def list_webhooks(request: web.Request) -> web.Response:
    return _json({"webhooks": [_webhook(h) for h in _store(request).list_webhooks()]})


async def create_webhook(request: web.Request) -> web.Response:
    data = await _body(request, ("url", "events"))
    url = _str(data, "url", required=True, max_len=2048)
    assert url is not None
    if not re.match(r"https?://[^/\s]+", url) or any(ch.isspace() for ch in url):
        raise _invalid("url", "must be an http:// or https:// URL")
    try:
        host = yarl.URL(url).host or ""
    except ValueError:
        raise _invalid("url", "must be an http:// or https:// URL") from None
    if is_private_address(host) and not _engine(request).config.webhook_private_networks:
        raise _invalid("url", f"{host} is a private address; webhooks to private networks "
                              "are denied (--webhook-private-networks)")
    events = _str_list(data, "events", (*EVENTS, "*"))
    if not events:
        raise _missing("events") if events is None else _invalid("events", "must not be empty")
    hook = _store(request).create_webhook(url, events)
    _engine(request).webhooks.refresh()
    return _json(_webhook(hook, secret=True), 201)


async def get_webhook(request: web.Request) -> web.Response:
    return _json(_webhook(_webhook_or_404(request), secret=True))


async def delete_webhook(request: web.Request) -> web.Response:
    hook = _webhook_or_404(request)
    _store(request).delete_webhook(hook.webhook_id)
    _engine(request).webhooks.refresh()
    return web.Response(status=204)


async def list_deliveries(request: web.Request) -> web.Response:
    hook = _webhook_or_404(request)
    limit = _query_int(request, "limit", 100, 1, 1000)
    return _json({"deliveries": [_delivery(d) for d in _store(request).list_deliveries(hook.webhook_id, limit)]})


async def replay_delivery(request: web.Request) -> web.Response:
    hook = _webhook_or_404(request)
    store = _store(request)
    delivery = store.get_delivery(request.match_info["delivery"])
    if delivery is None or delivery.webhook_id != hook.webhook_id:
        raise ApiError(404, "not_found", f"no delivery {request.match_info['delivery']!r}", "delivery")
    replayed = store.replay_delivery(delivery.delivery_id, time.time())
    _engine(request).webhooks.wake()
    return _json(_delivery(replayed), 202)


# -- the document ------------------------------------------------------------------------------------


async def openapi(request: web.Request) -> web.Response:
    from engine.web.openapi import document

    return _json(document())


ROUTES: tuple[Route, ...] = (
    Route("GET", "/openapi.json", openapi, None),
    Route("GET", "/users", list_users, "users"),
    Route("POST", "/users", create_user, "users"),
    Route("GET", "/users/{name}", get_user, "users"),
    Route("PATCH", "/users/{name}", update_user, "users"),
    Route("DELETE", "/users/{name}", delete_user, "users"),
    Route("POST", "/users/{name}/login-tokens", create_login_token, "users"),
    Route("GET", "/rooms", list_rooms, "calls"),
    Route("POST", "/rooms", create_room, "calls"),
    Route("GET", "/rooms/{room}", get_room, "calls"),
    Route("PUT", "/rooms/{room}", put_room, "calls"),
    Route("PATCH", "/rooms/{room}", update_room, "calls"),
    Route("DELETE", "/rooms/{room}", delete_room, "calls"),
    Route("POST", "/rooms/{room}/end", end_room, "calls"),
    Route("POST", "/rooms/{room}/lock", lock_room, "calls"),
    Route("DELETE", "/rooms/{room}/participants/{participant}", remove_participant, "calls"),
    Route("POST", "/rooms/{room}/participants/{participant}/mute", mute_participant, "calls"),
    Route("POST", "/rooms/{room}/mute_all", mute_all, "calls"),
    Route("POST", "/rooms/{room}/recording", room_recording, "calls"),
    Route("GET", "/rooms/{room}/recording", get_room_recording, "calls"),
    Route("POST", "/rooms/{room}/tokens", create_token, "calls"),
    Route("POST", "/rooms/{room}/invites", create_invite, "calls"),
    Route("GET", "/rooms/{room}/invites", list_invites, "calls"),
    Route("DELETE", "/invites/{invite}", delete_invite, "calls"),
    Route("POST", "/invites/redeem", redeem_invite, None),
    Route("POST", "/tokens/verify", verify_token, "calls"),
    Route("GET", "/presets", list_presets, "admin"),
    Route("POST", "/presets", create_preset, "admin"),
    Route("GET", "/presets/{preset}", get_preset, "admin"),
    Route("DELETE", "/presets/{preset}", delete_preset, "admin"),
    Route("GET", "/sessions", list_sessions, "calls"),
    Route("POST", "/sessions", start_session, "calls"),
    Route("GET", "/sessions/{session}", get_session, "calls"),
    Route("DELETE", "/sessions/{session}", terminate_session, "calls"),
    Route("GET", "/sessions/{session}/log", session_log, "calls"),
    Route("*", "/control/{session}/{secret}{tail:(/.*)?}", control_session, None),
    Route("GET", "/rules", list_rules, "calls"),
    Route("POST", "/rules/explain", explain_rules, "calls"),
    Route("POST", "/rules/reload", reload_rules, "admin"),
    Route("GET", "/calls", list_calls, "calls"),
    Route("GET", "/storage", list_keys, "calls"),
    Route("GET", "/storage/{key}", get_value, "calls"),
    Route("PUT", "/storage/{key}", put_value, "calls"),
    Route("DELETE", "/storage/{key}", delete_value, "calls"),
    Route("GET", "/webhooks", list_webhooks, "admin"),
    Route("POST", "/webhooks", create_webhook, "admin"),
    Route("GET", "/webhooks/{webhook}", get_webhook, "admin"),
    Route("DELETE", "/webhooks/{webhook}", delete_webhook, "admin"),
    Route("GET", "/webhooks/{webhook}/deliveries", list_deliveries, "admin"),
    Route("POST", "/webhooks/{webhook}/deliveries/{delivery}/replay", replay_delivery, "admin"),
)


def _tagged(route: Route) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await route.handler(request)

    handler.__api_route__ = route  # type: ignore[attr-defined]
    handler.__name__ = route.handler.__name__
    return handler


def create_api(engine: Any, cors_origins: tuple[str, ...] = ()) -> web.Application:
    """The ``/api/v1`` sub-application over ``engine`` (its ``store``,
    ``rooms``, ``keys``, ``runtime``, ``webhooks``)."""
    api = web.Application(middlewares=[_cors_middleware(tuple(cors_origins)), _errors, _auth])
    api[API_ENGINE] = engine
    for route in ROUTES:
        api.router.add_route(route.method, route.path, _tagged(route))
    return api


assert all(r.scope in (None, *API_SCOPES) for r in ROUTES)
