"""The web SDK's WebSocket endpoint (``GET /ws``): one :class:`SdkConnection`
per browser.

Handlers stay thin: :func:`~engine.web.protocol.parse_frame` checks each
frame, a handler per ``type`` acts on the engine (the store for ``login``,
the scenario runtime for ``call``, a :class:`~engine.calls.web_call.WebCall`
for everything in a call), and any :class:`~engine.web.protocol.ProtocolError`
or :class:`~engine.calls.call.CallError` becomes an ``error`` frame with a code.
An unexpected exception is logged and answered ``internal``; the socket and
the engine go on. Frames out are queued and written by one task, in order,
so that a call's events (sent synchronously from scenario code) never
interleave.

A socket that closes, or stops answering the heartbeat (aiohttp sends a
WebSocket ping every ``heartbeat`` seconds and closes the socket when no
pong comes within half of that), ends its calls: their scenarios see
``Disconnected`` (408 "Connection Lost").
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from engine.calls.call import CallError, CallState
from engine.calls.direct import CalleeListensOnly
from engine.state.directory import DirectoryUnavailable, LoginBackoff, LoginGuard
from engine.calls.grants import LISTEN_ONLY_ROLES, Grant, without_engine_headers
from engine.security_log import security_event, security_event_throttled
from engine.runtime.rooms import RoomRefused
from engine.runtime.tokens import JoinGrant, TokenError
from engine.web.protocol import (
    MAX_FRAME_BYTES,
    MODERATE_ACTIONS,
    PROTOCOL_VERSION,
    ErrorCode,
    ProtocolError,
    error_frame,
    parse_frame,
)
from engine.security_log import security_event
from engine.calls.web_call import WebCall
from engine.media.clock import MediaClock
from engine.media.tts import TtsCache

__all__ = ["SdkConnection", "WebUsers", "WebUsersEngine", "serve_socket", "TOKEN_NAMESPACE", "MAX_CALLS_PER_SOCKET",
           "verify_join_token"]

logger = logging.getLogger(__name__)

#: Store key-value namespace of one-time login tokens (key: token, value: user name).
TOKEN_NAMESPACE = "sdk-login-token"

#: Live calls one socket may hold.
MAX_CALLS_PER_SOCKET = 8

SERVER_NAME = "callbridge/0.1"


class SdkConnection:
    """One browser's socket: its login, its calls and the frames in and out."""

    def __init__(self, ws: web.WebSocketResponse, engine: Any, heartbeat: float,
                 remote: str | None = None) -> None:
        self.ws = ws
        self.engine = engine
        #: The address the socket came from, as the HTTP server saw it
        #: (per-address cap, lockouts, security events, calls' source).
        self.remote = remote
        self.heartbeat = heartbeat
        self.hello = False
        self.user: str | None = None
        #: The stored profile of a guest login (deleted at the latest at close).
        self.guest_user: str | None = None
        self.display_name: str | None = None
        #: What the join token this socket logged in with grants (``None``: a user login).
        self.grant: JoinGrant | None = None
        #: How the socket logged in (``guest``, ``password``, ``login-token``, ``join-token``).
        self.login_method: str | None = None
        self.logged_in_at = 0.0
        self.calls: dict[str, WebCall] = {}
        self._out: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "hello": self.on_hello, "ping": self.on_ping, "login": self.on_login,
            "call": self.on_call, "answer": self.on_answer, "reject": self.on_reject,
            "hangup": self.on_hangup, "ice": self.on_ice, "message": self.on_message,
            "ice_failed": self.on_ice_failed,
            "dtmf": self.on_dtmf, "moderate": self.on_moderate,
        }

    def __repr__(self) -> str:
        return f"<SdkConnection user={self.user} calls={len(self.calls)}>"

    # -- frames out ----------------------------------------------------------------

    def send_frame(self, frame: dict[str, Any]) -> None:
        """Queue ``frame`` for the browser (dropped once the socket closed)."""
        if self._writer is None or self._writer.done():
            return
        self._out.put_nowait(json.dumps(frame, separators=(",", ":")))

    async def _write(self) -> None:
        while True:
            text = await self._out.get()
            if text is None:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return  # closing: the reader sees it too

    # -- the socket's life ---------------------------------------------------------

    async def run(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write(), name="sdk-ws-writer")
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self.handle_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.send_frame(error_frame(ErrorCode.BAD_JSON, "frames are JSON text, not binary"))
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.connection_lost()
            self._delete_guest()
            self._out.put_nowait(None)
            try:
                await asyncio.wait_for(self._writer, 1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._writer.cancel()

    def _delete_guest(self) -> None:
        """Delete this socket's guest profile if the scenario did not."""
        name, self.guest_user = self.guest_user, None
        store = self.engine.store
        if name is not None and store is not None:
            try:
                if store.delete_user(name):
                    logger.info("deleted web guest %s at socket close", name)
            except Exception:
                logger.exception("deleting web guest %s failed", name)

    def connection_lost(self) -> None:
        """End every call of this socket (their scenarios see Disconnected)."""
        calls, self.calls = list(self.calls.values()), {}
        for call in calls:
            try:
                call.on_connection_lost()
            except Exception:
                logger.exception("ending %r after the socket closed failed", call)
        if calls:
            logger.info("socket of %s closed: %d call(s) ended", self.user, len(calls))

    async def handle_text(self, text: str) -> None:
        """Check and act on one frame; answer problems with an ``error`` frame."""
        ref: Any = None
        call: str | None = None
        try:
            frame = parse_frame(text)
            ref = frame.get("ref")
            call = frame.get("call")
            kind = frame["type"]
            if not self.hello and kind not in ("hello", "ping"):
                raise ProtocolError(ErrorCode.HELLO_REQUIRED, "send hello first")
            await self._handlers[kind](frame)
        except ProtocolError as exc:
            self.send_frame(error_frame(exc.code, exc.message, ref=exc.ref if exc.ref is not None else ref,
                                        call=exc.call if exc.call is not None else call))
        except CallError as exc:
            self.send_frame(error_frame(ErrorCode.BAD_STATE, str(exc), ref=ref, call=call))
        except Exception:
            logger.exception("SDK frame handling failed")
            self.send_frame(error_frame(ErrorCode.INTERNAL, "the engine failed to handle this frame",
                                        ref=ref, call=call))

    # -- session -------------------------------------------------------------------

    async def on_hello(self, frame: dict[str, Any]) -> None:
        if frame["version"] != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"this engine speaks version {PROTOCOL_VERSION}", ref=frame.get("ref"))
        self.hello = True
        self.send_frame({"type": "hello", "version": PROTOCOL_VERSION, "server": SERVER_NAME,
                         "heartbeat": self.heartbeat, **_ref(frame)})

    async def on_ping(self, frame: dict[str, Any]) -> None:
        pong: dict[str, Any] = {"type": "pong", **_ref(frame)}
        if "ts" in frame:
            pong["ts"] = frame["ts"]
        self.send_frame(pong)

    async def on_login(self, frame: dict[str, Any]) -> None:
        if self.user is not None:
            raise ProtocolError(ErrorCode.ALREADY_LOGGED_IN, f"already logged in as {self.user}")
        guest = frame.get("guest")
        if guest is not None:
            if not getattr(self.engine.config, "guest_login", True):
                raise ProtocolError(ErrorCode.GUESTS_NOT_ALLOWED, "this engine does not take guests")
            guest_name = f"guest-{secrets.token_hex(5)}"
            guest_store = self.engine.store
            if guest_store is not None:
                # a web user profile for the conference's life, like the
                # users an application creates through the API: listed by
                # GET /api/v1/users while it is in, deleted by the
                # conference scenario when it leaves (and here, at the
                # latest, when the socket closes). It has no password
                # (no scrypt, no SIP digest: a guest login costs a row):
                # nobody logs in with it.
                await asyncio.to_thread(guest_store.create_guest, guest_name, guest)
                self.guest_user = guest_name
            self.user, self.display_name = guest_name, guest
            self.login_method = "guest"
            self.logged_in_at = time.monotonic()
            logger.info("web guest %s (%s) logged in", self.user, guest)
            self.send_frame({"type": "login_ok", "username": self.user, "display_name": guest, "guest": True,
                             **_ref(frame)})
            return
        store = self.engine.store
        if store is None:
            raise ProtocolError(ErrorCode.INTERNAL, "the store is not open")
        token = frame.get("token")
        name: str | None
        if token is not None and token.count(".") == 2:  # a join token (JWT) from /api/v1
            self._login_with_join_token(token)
            self.send_frame({"type": "login_ok", "username": self.user, "display_name": self.display_name,
                             "room": self.grant.room if self.grant else None,
                             "role": self.grant.role if self.grant else None,
                             "permissions": list(self.grant.permissions) if self.grant else [],
                             **_ref(frame)})
            return
        if token is not None:
            self.login_method = "login-token"
            name = await asyncio.to_thread(_redeem_token, store, getattr(self.engine, "keys", None), token)
        else:
            self.login_method = "password"
            name = await self._check_password(store, frame["username"], frame["password"])
        user = await asyncio.to_thread(store.get_user, name) if name is not None else None
        if user is None:
            if self.login_method == "login-token":  # a wrong password was reported by _check_password
                security_event("auth_failed", self.remote, method="ws-login-token")
            self.login_method = None
            raise ProtocolError(ErrorCode.LOGIN_FAILED, "wrong user name, password or token")
        self.user, self.display_name = user.name, user.display_name
        self.logged_in_at = time.monotonic()
        logger.info("web user %s logged in", user.name)
        self.send_frame({"type": "login_ok", "username": user.name, "display_name": user.display_name,
                         **_ref(frame)})

    async def _check_password(self, store: Any, name: str, password: str) -> str | None:
        """``name`` when ``password`` is right, else ``None``; a locked-out
        account or source is refused without checking (no hash computed).

        :raises ProtocolError: ``login_failed`` "try again later" while locked
            out, or while the shared directory holding the lockouts is unavailable.
        """
        try:
            return await self._check_password_guarded(store, name, password)
        except DirectoryUnavailable:  # the directory logged the outage
            raise ProtocolError(ErrorCode.LOGIN_FAILED,
                                "password logins are not available right now: try again later") from None

    async def _check_password_guarded(self, store: Any, name: str, password: str) -> str | None:
        directory = getattr(self.engine, "directory", None)
        guard = None
        if directory is not None:
            policy = getattr(getattr(self.engine, "config", None), "login_backoff", None)
            guard = LoginGuard(directory, policy if isinstance(policy, LoginBackoff) else None)
        clock = getattr(self.engine, "clock", time.monotonic)
        if guard is not None:
            refusal = guard.refusal(name, self.remote, clock())
            if refusal is not None:
                security_event("auth_locked", self.remote, method="ws-login", user=name, scope=refusal)
                raise ProtocolError(ErrorCode.LOGIN_FAILED,
                                    "too many failed logins: try again later")
        if await asyncio.to_thread(store.verify_password, name, password):
            if guard is not None:
                guard.succeeded(name)
            return name
        security_event("auth_failed", self.remote, method="ws-login", user=name)
        if guard is not None:
            lock = guard.failed(name, self.remote, clock())
            if lock:
                security_event("auth_locked", self.remote, method="ws-login", user=name, seconds=lock)
        return None

    def _login_with_join_token(self, token: str) -> None:
        """Log in as a join token's identity (not a stored user): the token
        names the room, display name and permissions (engine.tokens)."""
        grant = verify_join_token(self.engine, token)
        self.user, self.display_name, self.grant = grant.identity, grant.display_name, grant
        self.login_method = "join-token"
        self.logged_in_at = time.monotonic()
        logger.info("web participant %s logged in for room %s (%s)", grant.identity, grant.room, grant.role)

    # -- calls ---------------------------------------------------------------------

    def _call(self, frame: dict[str, Any]) -> WebCall:
        call = self.calls.get(frame["call"])
        if call is None:
            raise ProtocolError(ErrorCode.UNKNOWN_CALL, f"no call {frame['call']!r} on this socket")
        return call

    async def on_call(self, frame: dict[str, Any]) -> None:
        if self.user is None:
            raise ProtocolError(ErrorCode.NOT_LOGGED_IN, "log in before calling")
        wire = frame["call"]
        if wire in self.calls:
            raise ProtocolError(ErrorCode.CALL_EXISTS, f"call {wire!r} is live on this socket")
        if len(self.calls) >= MAX_CALLS_PER_SOCKET:
            raise ProtocolError(ErrorCode.TOO_MANY_CALLS, f"at most {MAX_CALLS_PER_SOCKET} calls a socket")
        engine = self.engine
        call = WebCall(
            self, wire, offer=frame["sdp"], clock=engine.media_clock, tts=engine.tts,
            audio=frame.get("audio", True), video=frame.get("video", False),
            direction="inbound", number=frame["number"], callerid=self.user,
            display_name=frame.get("display_name") or self.display_name,
            headers=self._call_headers(frame.get("headers") or {}), dialer=engine.runtime.web_users,
        )
        call.grant, call.source = self.call_grant(), self.remote
        call._set_state(CallState.ALERTING)
        self.calls[wire] = call

        def forget(ended: Any) -> None:
            if self.calls.get(wire) is ended:
                del self.calls[wire]

        call.on_ended.append(forget)
        call.log.info("web call from %s to %r", self.user, call.number)
        try:
            engine.runtime.on_incoming_call(call, None)
        except Exception:
            logger.exception("incoming web call handler failed")
            if call.state == CallState.ALERTING:
                call.reject(500)

    def _call_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """The client's headers without ``X-Callbridge-*`` ones: what the
        engine grants travels as the call's :attr:`~engine.calls.call.Call.grant`."""
        clean, forged = without_engine_headers(headers)
        if forged:
            security_event("forged_header", self.remote, user=self.user)
        return clean

    def call_grant(self) -> Grant:
        """What this socket's login established, for its calls."""
        token = self.grant
        if token is not None:
            return Grant(identity=token.identity, authenticated_by="join-token", room=token.room,
                         admitted_by="join-token", role=token.role, permissions=frozenset(token.permissions),
                         display_name=token.display_name, data=token.data, custom_id=token.custom_id,
                         picture=token.picture)
        return Grant(identity=self.user, authenticated_by=self.login_method, display_name=self.display_name)

    def ring(self, call: WebCall, timeout: float) -> None:
        """Offer ``call`` (one the engine places) to this browser."""
        self.calls[call.wire_id] = call

        def forget(ended: Any) -> None:
            if self.calls.get(call.wire_id) is ended:
                del self.calls[call.wire_id]

        call.on_ended.append(forget)
        call.start_outgoing(timeout)

    async def on_answer(self, frame: dict[str, Any]) -> None:
        await self._call(frame).on_remote_answer(frame["sdp"], frame.get("headers") or {})

    async def on_reject(self, frame: dict[str, Any]) -> None:
        self._call(frame).on_remote_reject(frame.get("code") or 486, frame.get("headers") or {})

    async def on_hangup(self, frame: dict[str, Any]) -> None:
        self._call(frame).on_remote_hangup(frame.get("headers") or {})

    async def on_ice(self, frame: dict[str, Any]) -> None:
        call = self._call(frame)
        try:
            await call.on_remote_candidate(frame["candidate"])
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"ice: bad candidate: {exc}") from None

    async def on_message(self, frame: dict[str, Any]) -> None:
        self._call(frame).on_remote_message(frame["text"], frame.get("headers") or {})

    async def on_ice_failed(self, frame: dict[str, Any]) -> None:
        self._call(frame).on_remote_ice_failed(frame.get("sdp"), frame.get("sdp_type"))

    async def on_dtmf(self, frame: dict[str, Any]) -> None:
        self._call(frame).on_remote_tones(frame["tones"])


    async def on_moderate(self, frame: dict[str, Any]) -> None:
        """Moderation in the join token's room, each action checked against
        the token's permissions on the server (a guest may only mute and
        unmute itself)."""
        grant, rooms = self.grant, getattr(self.engine, "rooms", None)
        action, pid = frame["action"], frame.get("participant")
        if grant is None or rooms is None:
            self._moderation_refused(reason="moderate_without_token", user=self.user, action=action)
            raise ProtocolError(ErrorCode.FORBIDDEN, "moderation needs a login with a join token")
        if action in ("mute_all", "unmute_all", "start_recording", "stop_recording"):
            pid = None  # the whole room
        person = rooms.participants.get(grant.room, {}).get(pid) if pid is not None else None
        if pid is not None and person is None:
            raise ProtocolError(ErrorCode.UNKNOWN_PARTICIPANT, f"no participant {pid!r} in room {grant.room}")
        own = person is not None and person.identity == grant.identity
        needed = "mute_self" if own and action in ("mute", "unmute") else MODERATE_ACTIONS[action]
        if not grant.may(needed):
            self._moderation_refused(reason="moderate_not_permitted", user=self.user, room=grant.room,
                                     action=action, permission=needed)
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{action} needs the {needed!r} permission")
        if action in ("mute", "unmute"):
            try:
                rooms.mute(grant.room, pid, action == "mute")
            except RoomRefused as refused:  # a subscriber (listen only) cannot be unmuted
                raise ProtocolError(ErrorCode.LISTEN_ONLY, refused.message) from None
        elif action in ("mute_all", "unmute_all"):
            mine = [p.participant_id for p in rooms.list_participants(grant.room)
                    if p.identity == grant.identity]
            # everyone but the moderator (all of its own legs), as a phone's *6 does;
            # a subscriber (listen only) stays muted
            for other in rooms.list_participants(grant.room):
                if other.participant_id not in mine and (action == "mute_all"
                                                         or other.role not in LISTEN_ONLY_ROLES):
                    rooms.mute(grant.room, other.participant_id, action == "mute_all")
        elif action == "remove":
            call = person.call if person is not None else None
            rooms.leave(grant.room, pid)
            if call is not None and not call.state.ended:
                call.hangup()
        elif action in ("lock", "unlock"):
            await asyncio.to_thread(rooms.store.set_room_locked, grant.room, action == "lock")
        elif action in ("start_recording", "stop_recording"):
            try:
                if action == "start_recording":
                    rooms.start_recording(grant.room)
                else:
                    rooms.stop_recording(grant.room)
            except RoomRefused as refused:
                raise ProtocolError(ErrorCode.BAD_STATE, f"{refused.code}: {refused.message}") from None
        else:
            rooms.end(grant.room, f"moderator {grant.identity}")
        logger.info("room %s: %s %s by %s", grant.room, action, pid or "", grant.identity)
        self.send_frame({"type": "moderated", "action": action, "participant": pid, **_ref(frame)})


    def _moderation_refused(self, **fields: Any) -> None:
        """Log a refused ``moderate`` (throttled: a socket repeating it
        writes one line per period, not one per frame)."""
        directory = getattr(self.engine, "directory", None)
        if directory is None:
            security_event("forbidden", self.remote, **fields)
        else:
            security_event_throttled(directory, time.monotonic(), "forbidden", self.remote, **fields)


class _RingSettings(Protocol):
    @property
    def invite_timeout(self) -> float: ...


class WebUsersEngine(Protocol):
    """What :class:`WebUsers` needs of the engine
    (:class:`~engine.server.Engine`): the media clock and speech of the
    calls it makes, and how long they ring (``config.invite_timeout``)."""

    @property
    def media_clock(self) -> MediaClock: ...
    @property
    def tts(self) -> TtsCache | None: ...
    @property
    def config(self) -> _RingSettings: ...


class WebUsers:
    """Who is logged in with the web SDK on this node, and how to ring them
    (the scenario runtime's ``web_users``). Per node for now: with several
    nodes, the directory will say which node holds a user's socket."""

    def __init__(self, connections: set[SdkConnection], engine: WebUsersEngine) -> None:
        self.connections = connections
        self.engine = engine

    def connection_of(self, name: str) -> SdkConnection | None:
        """The socket ``name`` logged in on most recently, if any."""
        mine = [c for c in self.connections if c.user == name and not c.ws.closed]
        return max(mine, key=lambda c: c.logged_in_at) if mine else None

    def call_user(self, name: str, *, callerid: str, display_name: str | None,
                  headers: dict[str, str] | None, dispatcher: Any) -> WebCall | None:
        """Ring ``name``'s browser; ``None`` when the user is not logged in."""
        conn = self.connection_of(name)
        if conn is None:
            return None
        if len(conn.calls) >= MAX_CALLS_PER_SOCKET:
            raise CallError(f"user {name!r} has too many calls")
        engine = self.engine
        call = WebCall(
            conn, "", offer="", clock=engine.media_clock, tts=engine.tts, direction="outbound",
            number=name, callerid=callerid, display_name=display_name, headers=headers,
            dispatcher=dispatcher,
        )
        call.wire_id = call.id
        call._set_state(CallState.PROGRESSING)
        conn.ring(call, float(engine.config.invite_timeout))
        return call


    def call_user_direct(self, name: str, caller: WebCall, headers: dict[str, str]) -> WebCall | None:
        """Ring ``name``'s browser with ``caller``'s own offer (a direct call:
        the engine relays signalling only); ``None`` when not logged in.

        :raises CalleeListensOnly: ``name`` logged in with a listen-only
            join token (``subscriber``); its browser is not rung.
        """
        conn = self.connection_of(name)
        if conn is None:
            return None
        if conn.grant is not None and conn.grant.role in LISTEN_ONLY_ROLES:
            raise CalleeListensOnly(name)
        if len(conn.calls) >= MAX_CALLS_PER_SOCKET:
            raise CallError(f"user {name!r} has too many calls")
        engine = self.engine
        call = WebCall(
            conn, "", offer=caller.offer, clock=engine.media_clock, tts=engine.tts, direction="outbound",
            number=name, callerid=caller.callerid, display_name=caller.display_name, headers=headers,
            dispatcher=caller.dispatcher, direct=True, audio=caller.audio, video=caller.video,
        )
        call.wire_id = call.id
        call._set_state(CallState.PROGRESSING)
        conn.ring(call, float(engine.config.invite_timeout))
        return call


def _ref(frame: dict[str, Any]) -> dict[str, Any]:
    return {"ref": frame["ref"]} if frame.get("ref") is not None else {}


def verify_join_token(engine: Any, token: str) -> JoinGrant:
    """Check a join token for the web SDK's login: signature, expiry, and a
    room that exists and is not over.

    :raises ProtocolError: ``login_failed`` saying why (expired, invalid, room ended).
    """
    keys = getattr(engine, "keys", None)
    if keys is None:
        raise ProtocolError(ErrorCode.LOGIN_FAILED, "join tokens are not available")
    try:
        grant: JoinGrant = keys.verify_join_token(token, time.time())
    except TokenError as exc:
        raise ProtocolError(ErrorCode.LOGIN_FAILED, f"{exc.code}: {exc.message}") from None
    rooms = getattr(engine, "rooms", None)
    room = rooms.get(grant.room) if rooms is not None else None
    if room is None:
        raise ProtocolError(ErrorCode.LOGIN_FAILED, f"room_not_found: no room {grant.room!r}")
    if room.state(time.time()) == "ended":
        raise ProtocolError(ErrorCode.LOGIN_FAILED, f"room_ended: room {grant.room} has ended")
    return grant


def _redeem_token(store: Any, keys: Any, token: str) -> str | None:
    """The user of a one-time login token, which is used up (the management
    API issues them: ``POST /api/v1/users/{name}/login-tokens``; the store
    keeps only :meth:`engine.runtime.tokens.Keys.login_token_hash` of it)."""
    if keys is None or not isinstance(token, str) or not 16 <= len(token) <= 128:
        return None
    key = keys.login_token_hash(token)
    name = store.kv_get(TOKEN_NAMESPACE, key, time.time())
    if name is None or not store.kv_delete(TOKEN_NAMESPACE, key):
        return None  # unknown, expired, or redeemed concurrently
    return str(name)


async def serve_socket(request: web.Request, engine: Any, connections: set[SdkConnection]) -> web.WebSocketResponse:
    """Upgrade ``request`` and serve one :class:`SdkConnection` until the
    socket closes (``connections`` holds the live ones, for shutdown).

    Before the upgrade, the caps (``ws_max_per_source`` sockets from one
    address, ``ws_max_connections`` in all) refuse with HTTP 429 or 503 and
    Retry-After; each socket holds a writer task, a queue and its calls.
    The address is ``request.remote``, the TCP peer: behind a reverse proxy
    that is the proxy, and every client shares its cap, so raise
    ``ws_max_per_source`` there (the engine does not trust
    X-Forwarded-For: a client can write it).
    """
    config = engine.config
    remote = request.remote
    per_source = int(getattr(config, "ws_max_per_source", 10))
    in_all = int(getattr(config, "ws_max_connections", 2000))
    if len(connections) >= in_all:
        _ws_refused(remote, "ws_connections", in_all)
        raise web.HTTPServiceUnavailable(text="too many WebSocket connections: try again later",
                                         headers={"Retry-After": "5"})
    if sum(1 for c in connections if c.remote == remote) >= per_source:
        _ws_refused(remote, "ws_per_source", per_source)
        raise web.HTTPTooManyRequests(text=f"at most {per_source} WebSocket connections from one address",
                                      headers={"Retry-After": "5"})
    heartbeat = float(getattr(config, "ws_heartbeat", 10.0))
    ws = web.WebSocketResponse(heartbeat=heartbeat, max_msg_size=4 * MAX_FRAME_BYTES)
    conn = SdkConnection(ws, engine, heartbeat, remote)
    connections.add(conn)  # counted from here: the upgrade below may wait
    try:
        await ws.prepare(request)
        await conn.run()
    finally:
        connections.discard(conn)
        if ws.prepared and not ws.closed:
            await ws.close(code=WSCloseCode.GOING_AWAY)
    return ws


def _ws_refused(remote: str | None, cap: str, limit: int) -> None:
    security_event("cap_reached", remote, cap=cap, limit=limit)
