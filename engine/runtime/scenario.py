"""The scenario runtime: sessions, and the VoxEngine-shaped API scenarios use.

A rule match starts a :class:`Session`: the rule's scenario modules are run,
in order, in one fresh module namespace (so a module-level ``calls = []`` is
per session), then ``AppEvents.Started`` and ``AppEvents.CallAlerting`` are
emitted. Scenario code reaches its own session through the module-level
:data:`VoxEngine`, :data:`Logger` and :data:`Net` objects: each session runs
its code in its own :class:`contextvars.Context`, and these objects look the
session up there, so two sessions of the same scenario never see each
other's state::

    from engine.scenario import VoxEngine, AppEvents, CallEvents

    def on_alerting(e):
        call = e.call
        call.add_event_listener(CallEvents.Connected, lambda ev: call.say("Welcome"))
        call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
        call.answer()

    VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)

Listeners may be functions or coroutine functions. An exception escaping a
listener, a ``set_timeout`` callback or a task the scenario started (with
``asyncio.create_task`` or ``ensure_future``) and did not collect itself is
logged with its traceback in the session log, the session's calls are ended
(500 before answer, BYE after) and the session terminates; the engine goes
on. A session with no calls (from its start, or once its calls ended) ends
after ``idle_timeout`` seconds, so nothing leaks.

Re-entrancy: events are delivered synchronously, so a listener of one
session may run inside another session's listener (a conference answering a
message from a caller's listener, which answers back). Listeners therefore
run in a *copy* of their session's context: a :class:`contextvars.Context`
can be entered only once at a time, and the session's own one may already be
entered further up the stack.
"""

from __future__ import annotations

import asyncio
import codecs
import contextvars
import enum
import functools
import inspect
import os
import logging
import secrets
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any, Callable

import aiohttp
from pyee.asyncio import AsyncIOEventEmitter

from engine.calls.call import Call, CallError, CallEvents, CallState, InternalCall, Listeners, new_call_pair
from engine.calls.conference import Conference, ConferenceError, MediaGraph
from engine.state.directory import MemoryDirectory
from engine.runtime.rooms import RoomRefused, RoomService
from engine.runtime.dialout import DialPolicy
from engine.calls.grants import Grant
from engine.runtime.router import Caller, Rule, RuleSet
from engine.runtime.tokens import PRESETS
from engine.security_log import escape_controls, security_event, security_event_throttled
from engine.media.clock import MediaClock

__all__ = [
    "AppEvents",
    "AppEvent",
    "CallEvents",
    "ScenarioError",
    "ScenarioRuntime",
    "SessionLimitReached",
    "Session",
    "VoxEngine",
    "Logger",
    "Net",
    "HttpResponse",
    "HTTP_MAX_BODY",
    "ApplicationStorage",
    "RoomRefused",
    "set_timeout",
    "clear_timeout",
]

logger = logging.getLogger(__name__)

_current: contextvars.ContextVar[Session] = contextvars.ContextVar("callbridge_session")


class AppEvents(str, enum.Enum):
    """Session-level events (VoxEngine's ``AppEvents``)."""

    Started = "Started"
    CallAlerting = "CallAlerting"
    MessageReceived = "MessageReceived"
    #: A request to the session's control URL (``POST /api/v1/sessions``).
    HttpRequest = "HttpRequest"
    Terminating = "Terminating"
    Terminated = "Terminated"

    def __str__(self) -> str:
        return self.value


@dataclass
class AppEvent:
    """What session-level listeners receive.

    For ``CallAlerting``: ``call``, ``headers`` (the ``X-`` headers),
    ``callerid``, ``display_name``, ``destination`` (the dialed number).
    For ``MessageReceived`` (an out-of-dialog SIP MESSAGE): ``text``,
    ``callerid``, ``destination``, ``headers``.
    For ``HttpRequest`` (the session's control URL): ``method``, ``path``
    (what follows the control URL), ``query``, ``headers``, ``text`` (the body).
    """

    name: str
    session_id: str
    call: Call | None = None
    headers: dict[str, str] = field(default_factory=dict)
    callerid: str | None = None
    display_name: str | None = None
    destination: str | None = None
    text: str | None = None
    method: str | None = None
    path: str | None = None
    query: dict[str, str] = field(default_factory=dict)


#: What rules see of a scenario's own call into another session.
INTERNAL_CALLER = Caller("internal")


def caller_of(call: Call) -> Caller:
    """What the rules see of ``call``: its kind, source address and whether
    the engine authenticated it."""
    grant = call.grant
    return Caller(call.kind, call.source, grant is not None and grant.authenticated)


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


class ScenarioError(Exception):
    """A scenario could not be loaded (file, line and reason in the text)."""


class SessionLimitReached(Exception):
    """``max_sessions`` sessions are running: no new one starts until one ends.

    :param limit: the cap.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"{limit} sessions are running, the most this engine starts (max_sessions)")


def _session() -> Session:
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "the scenario API is only available inside a running scenario session"
        ) from None


class _VoxEngine:
    """The scenario API; every method acts on the calling session."""

    def add_event_listener(self, event: str | AppEvents, handler: Callable[..., Any]) -> None:
        _session().add_event_listener(event, handler)

    def remove_event_listener(self, event: str | AppEvents, handler: Callable[..., Any] | None = None) -> None:
        _session().remove_event_listener(event, handler)

    def terminate(self) -> None:
        """End this session: its calls are hung up, timers cancelled."""
        _session().terminate()

    def custom_data(self) -> str:
        """Data the session was started with (empty for calls)."""
        return _session().custom_data

    @property
    def session_id(self) -> str:
        return _session().id

    def call_conference(
        self, name: str, callerid: str | None = None, display_name: str | None = None,
        headers: dict[str, str] | None = None, on_behalf_of: Call | None = None,
    ) -> Call:
        """Call the ONE session that owns conference ``name`` (started through
        the rules on first use). Returns this side's leg; the conference
        session gets ``CallAlerting`` with the other.

        :param on_behalf_of: the caller this leg carries (a gatekeeper's
            inbound call): its ``grant`` and ``source`` are set on the
            conference session's leg, so that the conference admits and
            limits the caller, not the gatekeeper (:meth:`admit_with_pin`
            sets the grant a PIN gives).
        """
        session = _session()
        grant, source = (on_behalf_of.grant, on_behalf_of.source) if on_behalf_of is not None else (None, None)
        return session.runtime.call_conference(session, name, callerid, display_name, headers,
                                               grant=grant, source=source)

    def call_pstn(self, number: str, callerid: str, headers: dict[str, str] | None = None,
                  display_name: str | None = None, requested_by: Call | None = None,
                  srtp: str | None = None) -> Call:
        """Call a phone number through the configured SIP trunk, if the
        engine's dial-out policy allows it (:mod:`engine.runtime.dialout`: the
        allow and deny lists, the engine's caps).

        :param requested_by: the participant who asked for this call (a
            browser's ``CALL_PARTICIPANT``): their grant must hold
            ``dial_out``, their own caps apply, and the call is hung up when
            they leave. A guest never holds ``dial_out``.
        :param srtp: ``mandatory``/``optional`` offer SRTP (SDES keys; needs
            TLS to the trunk), ``off``/``None`` plain RTP.
        :raises DialRefused: (a :class:`CallError`) the policy refuses, with
            ``code`` and ``reason``.
        """
        session = _session()
        runtime = session.runtime
        if session.terminated:
            raise CallError("this session has terminated: it cannot place calls")
        if runtime.ua is None or getattr(getattr(runtime.ua, "config", None), "trunk", True) is None:
            raise CallError("no SIP trunk is configured (--trunk)")
        now = asyncio.get_running_loop().time()

        def hit(key: str, per_hour: float, burst: int) -> bool:
            return burst > 0 and runtime.directory.hit(key, now, rate=per_hour / 3600.0, burst=burst)

        digits = runtime.dial_policy.check(number, requested_by=requested_by, hit=hit,
                                           src=requested_by.source if requested_by is not None else None)
        call = _outbound("call_pstn", digits, callerid, display_name=display_name, headers=headers,
                         **({"srtp": srtp} if srtp is not None else {}))
        runtime.dial_policy.started(call, requested_by)
        if requested_by is not None and requested_by.grant is not None:
            call.grant = Grant(identity=digits, authenticated_by="dial-out", room=requested_by.grant.room,
                               admitted_by="dial-out", role="guest", permissions=frozenset(PRESETS["guest"]))
        return call

    def call_sip(self, uri: str, callerid: str = "callbridge", headers: dict[str, str] | None = None,
                 display_name: str | None = None, srtp: str | None = None) -> Call:
        """Call a SIP URI directly.

        :param srtp: ``mandatory``/``optional`` offer SRTP (SDES keys; only
            over TLS, ``sip:...;transport=tls``), ``off``/``None`` plain RTP.
        """
        return _outbound("call_sip", uri, callerid=callerid, display_name=display_name, headers=headers,
                         **({"srtp": srtp} if srtp is not None else {}))

    def call_user(self, name: str, callerid: str = "callbridge", headers: dict[str, str] | None = None,
                  display_name: str | None = None) -> Call:
        """Call a user: the browser where ``name`` is logged in with the web
        SDK, else the SIP phone registered under ``name``."""
        session = _session()
        web = session.runtime.web_users
        if web is not None and not session.terminated:
            call: Call | None = web.call_user(name, callerid=callerid, display_name=display_name,
                                              headers=headers, dispatcher=session)
            if call is not None:
                session.adopt(call)
                return call
        return _outbound("call_registered", name, callerid=callerid, display_name=display_name,
                         headers=headers)

    def create_conference(self, name: str | None = None) -> Conference:
        """A new conference owned by this session (stopped when it ends):
        join calls with ``conference.add(call)`` or ``call.send_media_to(conference)``."""
        return _session().create_conference(name)

    def conference_is_open(self, name: str) -> bool:
        """Whether conference ``name`` exists: a session runs it, or a room
        ``ID`` was created for ``conf_ID`` (``callbridge rooms create``, the
        API). A gatekeeper checks this before ``call_conference`` so a phone
        caller cannot open a conference by guessing a PIN."""
        return _session().runtime.conference_is_open(name)

    # -- rooms (see engine.runtime.rooms and the README's "HTTP API") ---------------------

    def room(self, name: str) -> dict[str, Any] | None:
        """The settings of room ``name`` (an id or ``conf_<id>``) as a dict
        (``id``, ``conference``, ``display_name``, ``max_participants``,
        ``record_on_start``, ``end_when_empty_after``, ``starts_at``,
        ``ends_at``, ``locked``, ``state`` (``scheduled``, ``open``,
        ``ended``), ``participant_count``, ...), or ``None`` when no room
        has that id (an ad-hoc conference)."""
        rooms = _session().runtime.rooms
        room = rooms.get(name) if rooms is not None else None
        return rooms.describe(room) if rooms is not None and room is not None else None

    def room_for_pin(self, pin: str) -> dict[str, str] | None:
        """What a phone caller's PIN opens: ``{"room", "conference", "role"}``
        (``role`` is ``guest`` or ``moderator``: a room's ``pin`` and
        ``moderator_pin``; a room without a ``pin`` is opened by its id), or
        ``None``. Rate-limit the caller's attempts (:meth:`rate_limit`)."""
        rooms = _session().runtime.rooms
        found = rooms.store.find_room_by_pin(pin) if rooms is not None else None
        if found is None:
            return None
        room, role = found
        return {"room": room.room_id, "conference": f"conf_{room.room_id}", "role": role}

    def admit_with_pin(self, call: Call, pin: str, room: str | None = None) -> dict[str, str]:
        """Admit ``call`` by a PIN it typed or sent: a room's PIN or moderator
        PIN, an invite's one-time code, or (ad-hoc conferences allowed) the
        id of a conference a browser opened. With ``room`` (an id or
        ``conf_<id>``: a browser naming its room) only that room's PINs
        count. On success the call's :attr:`~engine.calls.call.Call.grant`
        admits it to the room (hand it on with ``call_conference(...,
        on_behalf_of=call)``) and ``{"room", "conference", "role"}`` is
        returned (``room`` is ``""`` for an ad-hoc conference).

        Wrong attempts are limited by the call's source address, the room
        and the engine as a whole (:class:`PinLimits`), never by caller id.

        :raises RoomRefused: ``wrong_pin``, ``too_many_attempts`` (the
            source or the engine is cooling down), ``pin_locked`` (the
            room's PINs are locked after repeated failures), or an invite's
            refusal (``invite_used``, ``invite_expired``...).
        """
        return _session().runtime.admit_with_pin(call, pin, room)

    def redeem_invite(self, code: str) -> dict[str, Any]:
        """Use up an invite's code typed on a phone keypad: returns
        ``{"room", "conference", "role", "permissions", "identity",
        "display_name"}``.

        :raises RoomRefused: ``invalid_code``, ``invite_used``,
            ``invite_expired``, ``invite_locked`` (or ``room_not_found``).
        """
        return _session().runtime.redeem_invite_code(code)

    def room_join(
        self, name: str, call: Call, *, kind: str, display_name: str | None = None,
        identity: str | None = None, role: str | None = None,
    ) -> None:
        """Admit ``call`` into room ``name`` (``conf_<id>``) as a participant
        of ``kind`` ``"web"`` or ``"pstn"``; it then shows in
        ``GET /api/v1/rooms/{id}``. Call :meth:`room_leave` when the call
        leaves (the runtime also does when the call ends).

        A room admits only a call whose :attr:`~engine.calls.call.Call.grant` is
        for it (a join token for the room, its PIN, an invite, a dial-out
        of a participant); ``identity`` and ``role`` default to the grant's.
        A conference that is not a room admits anyone, unless ad-hoc
        conferences are switched off (``--ad-hoc-conferences off``).

        :raises RoomRefused: ``code`` ``not_admitted``, ``room_not_found``,
            ``room_full``, ``room_locked``, ``room_not_started`` or
            ``room_ended``, with a message to say or send before hanging up.
        """
        session = _session()
        runtime = session.runtime
        rooms = runtime.rooms
        room = rooms.get(name) if rooms is not None else None
        grant = call.grant
        if room is None:
            if not runtime.ad_hoc_conferences:
                security_event("forbidden", call.source, reason="ad_hoc_conferences_off", conference=name)
                raise RoomRefused("room_not_found", "There is no such conference.")
            if rooms is None:
                return
        elif grant is None or not grant.admitted_to(room.room_id):
            security_event("forbidden", call.source, reason="not_admitted", room=room.room_id,
                           identity=grant.identity if grant else None)
            raise RoomRefused("not_admitted", "This conference needs its PIN or an invitation.")
        assert rooms is not None
        if grant is not None:
            identity = identity if identity is not None else grant.identity
            role = role if role is not None else grant.role
        joined = rooms.join(name, call.id, kind=kind, display_name=display_name, identity=identity,
                            role=role or "guest", call=call)
        if joined is not None:
            def left(ended: Call) -> None:
                rooms.leave(name, ended.id)

            call.on_ended.append(left)

    def room_has(self, name: str, identity: str | None) -> bool:
        """Whether someone of ``identity`` (a web user, a join token's
        subject) is in room ``name`` now."""
        rooms = _session().runtime.rooms
        if rooms is None or identity is None:
            return False
        room = rooms.get(name)
        return room is not None and any(p.identity == identity for p in rooms.list_participants(room.room_id))

    def room_mute(self, name: str, call: Call, muted: bool = True) -> bool:
        """Mute (``muted=False``: unmute) ``call``'s audio for everyone in
        room ``name``: the media graph drops it, so a phone leg and a
        browser leg are muted alike, and ``GET /rooms/{id}`` shows it.
        ``False`` when ``call`` is not a participant."""
        rooms = _session().runtime.rooms
        return rooms is not None and rooms.mute(name, call.id, muted) is not None

    def room_mute_all(self, name: str, muted: bool = True, except_call: Call | None = None) -> int:
        """Mute (or unmute) every participant of room ``name`` but
        ``except_call`` (a phone moderator's ``*6``); returns how many."""
        rooms = _session().runtime.rooms
        if rooms is None:
            return 0
        return rooms.mute_all(name, muted, except_=except_call.id if except_call is not None else None)

    def room_leave(self, name: str, call: Call) -> None:
        """Report that ``call`` left room ``name`` (no error when it was not in)."""
        rooms = _session().runtime.rooms
        if rooms is not None:
            rooms.leave(name, call.id)

    def delete_user(self, name: str) -> bool:
        """Delete web user ``name``'s profile from the store (as
        ``DELETE /api/v1/users/{name}`` does): the conference deletes a
        guest's when it leaves. ``False`` when there was none."""
        store = _session().runtime.store
        if store is None:
            return False
        deleted = bool(store.delete_user(name))
        if deleted:
            _session().write_log(f"deleted web user {name}")
        return deleted

    def rate_limit(self, key: str, per_minute: float, burst: int) -> bool:
        """Take one attempt for ``key`` (e.g. ``"pin:" + callerid``):
        ``False`` once more than ``burst`` were made faster than
        ``per_minute`` allows (a token bucket shared by all sessions)."""
        return _session().runtime.rate_limit(key, per_minute, burst)

    def send_media_between(self, a: Call | Conference, b: Call | Conference) -> None:
        """Join ``a`` and ``b`` both ways (a bridge, or a call into a conference)."""
        graph = _session().runtime.graph
        graph.connect(a, b)
        graph.connect(b, a)

    def stop_media_between(self, a: Call | Conference, b: Call | Conference) -> None:
        """Undo :meth:`send_media_between`."""
        graph = _session().runtime.graph
        graph.disconnect(a, b)
        graph.disconnect(b, a)

    def set_timeout(self, callback: Callable[[], Any], ms: float) -> asyncio.TimerHandle:
        return _session().set_timeout(callback, ms)

    def clear_timeout(self, handle: asyncio.TimerHandle) -> None:
        _session().clear_timeout(handle)


def _outbound(method: str, *args: Any, **kwargs: Any) -> Call:
    """Place an outbound call through the user agent, owned by this session."""
    session = _session()
    if session.terminated:
        raise CallError("this session has terminated: it cannot place calls")
    ua = session.runtime.ua
    if ua is None:
        raise CallError("outbound calls need a user agent, and this runtime has none")
    call: Call = getattr(ua, method)(*args, dispatcher=session, **kwargs)
    session.adopt(call)
    return call


class _Logger:
    def write(self, text: str) -> None:
        """Append a line to this session's log (tagged with the session id)."""
        _session().write_log(str(text))


@dataclass
class HttpResponse:
    """The result of :meth:`_Net.http_request`: ``code`` is 0 on a network
    error or timeout, with ``error`` saying which."""

    code: int
    text: str
    headers: dict[str, str]
    error: str | None = None

    def json(self) -> Any:
        import json

        return json.loads(self.text)


#: The most of an answer's body :meth:`_Net.http_request` reads.
HTTP_MAX_BODY = 8 * 2**20


class _Net:
    async def http_request(
        self, url: str, method: str = "GET", headers: dict[str, str] | None = None,
        body: str | bytes | None = None, timeout: float = 10.0,
    ) -> HttpResponse:
        """Make an HTTP request (aiohttp) from a scenario. It never raises
        (except outside a session): a network error, a bad URL or a timeout
        returns ``code=0`` and ``error`` (``"timeout"`` for a timeout). At
        most :data:`HTTP_MAX_BODY` bytes of the answer are read: a longer
        body keeps its ``code`` and is cut, ``error`` saying so."""
        session = _session()
        try:
            http = await session.runtime.http_session()
            async with http.request(
                method, url, headers=headers, data=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = bytearray()
                while len(raw) <= HTTP_MAX_BODY:
                    chunk = await resp.content.read(HTTP_MAX_BODY + 1 - len(raw))
                    if not chunk:
                        break
                    raw += chunk
                try:
                    encoding = codecs.lookup(resp.charset or "utf-8").name
                except LookupError:
                    encoding = "utf-8"
                text = bytes(raw[:HTTP_MAX_BODY]).decode(encoding, errors="replace")
                cut = f"body over {HTTP_MAX_BODY} bytes: cut" if len(raw) > HTTP_MAX_BODY else None
                if cut is not None:
                    session.write_log(f"http_request {method} {url}: {cut}")
                return HttpResponse(resp.status, text, dict(resp.headers), cut)
        except asyncio.TimeoutError:
            session.write_log(f"http_request {method} {url}: timeout after {timeout} s")
            return HttpResponse(0, "", {}, "timeout")
        except Exception as exc:  # ClientError, OSError, ValueError (bad URL), ...
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            session.write_log(f"http_request {method} {url}: {error}")
            return HttpResponse(0, "", {}, error)


class _ApplicationStorage:
    """Key-value storage shared by every session of the application and
    persisted in the store (VoxEngine's ``ApplicationStorage``). Keys are
    1-256 characters, values text up to 1 MiB; ``ttl`` is in seconds
    (``None``: kept until removed). Also reachable through
    ``/api/v1/storage``."""

    NAMESPACE = "app"

    def _store(self) -> Any:
        store = _session().runtime.store
        if store is None:
            raise RuntimeError("ApplicationStorage needs the engine's store, and this runtime has none")
        return store

    async def get(self, key: str) -> str | None:
        """The value of ``key``, or ``None`` when absent or expired."""
        store = self._store()
        return await asyncio.to_thread(store.kv_get, self.NAMESPACE, key, time.time())

    async def put(self, key: str, value: str, ttl: float | None = None) -> None:
        """Set ``key`` to ``value`` for ``ttl`` seconds (``None``: for ever)."""
        store = self._store()
        await asyncio.to_thread(store.kv_put, self.NAMESPACE, key, value, ttl, time.time())

    async def keys(self, prefix: str = "") -> list[str]:
        """The live keys starting with ``prefix``, sorted."""
        store = self._store()
        return await asyncio.to_thread(store.kv_keys, self.NAMESPACE, prefix, now=time.time())

    async def remove(self, key: str) -> bool:
        """Delete ``key``; ``False`` when there was none."""
        store = self._store()
        return await asyncio.to_thread(store.kv_delete, self.NAMESPACE, key)


VoxEngine = _VoxEngine()
Logger = _Logger()
Net = _Net()
ApplicationStorage = _ApplicationStorage()


def set_timeout(callback: Callable[[], Any], ms: float) -> asyncio.TimerHandle:
    """Run ``callback`` (function or coroutine function) after ``ms`` milliseconds."""
    return _session().set_timeout(callback, ms)


def clear_timeout(handle: asyncio.TimerHandle) -> None:
    _session().clear_timeout(handle)


class Session(Listeners):
    """One running scenario: its namespace, calls, timers, tasks and log."""

    def __init__(self, runtime: ScenarioRuntime, rule: Rule, custom_data: str = "") -> None:
        self.id = secrets.token_hex(12)
        #: The secret part of the session's control URL (``/api/v1/control/{id}/{secret}``).
        self.control_secret = secrets.token_urlsafe(16)
        self.runtime = runtime
        self.rule = rule
        self.custom_data = custom_data
        self.ctx = contextvars.copy_context()
        self.ctx.run(_current.set, self)
        self.emitter = AsyncIOEventEmitter()
        self.calls: set[Call] = set()
        #: Conferences this session created (stopped when it ends).
        self.mixers: list[Conference] = []
        self.timers: set[asyncio.TimerHandle] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.log_lines: deque[str] = deque(maxlen=2000)
        self.started_at = time.time()
        self.terminated = False
        self._terminating = False
        self.error: str | None = None
        self.namespace: dict[str, Any] = {}
        self.conferences: set[str] = set()
        self._idle: asyncio.TimerHandle | None = None

    @functools.cached_property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger tagged with the session id, made on first use (most
        sessions never log: a thousand live ones would each carry an
        adapter and its dict)."""
        return logging.LoggerAdapter(logger, {"session_id": self.id})

    def __repr__(self) -> str:
        return f"<Session {self.id[:8]} {self.rule.name} calls={len(self.calls)}>"

    # -- loading ---------------------------------------------------------------

    def load(self) -> None:
        """Run the rule's scenarios, in order, in one fresh namespace."""
        self.namespace = {"__name__": f"scenario_{self.id}", "__builtins__": __builtins__}
        for name in self.rule.scenarios:
            code = self.runtime.code(name)
            self.namespace["__file__"] = code.co_filename
            self._run(exec, code, self.namespace)

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn`` with this session as the current one. In the session's
        own context (a timer or task of the session) it is a plain call;
        elsewhere it runs in a copy of the session's context, which may be
        entered even while the session's context is entered further up."""
        if _current.get(None) is self:
            return fn(*args)
        return self.ctx.copy().run(fn, *args)

    # -- events ------------------------------------------------------------------

    # add_event_listener / remove_event_listener: Listeners; the session runs
    # its own listeners (in its context; failures end it)

    def _dispatch(self, handler: Callable[..., Any], event: Any) -> None:
        self.run_listener(handler, event)

    def emit(self, event: AppEvents, **fields: Any) -> None:
        self.emitter.emit(str(event), AppEvent(str(event), self.id, **fields))

    def run_listener(self, handler: Callable[..., Any], event: Any) -> None:
        """Run a listener in this session's context; failures end the session."""
        if self.terminated and getattr(event, "name", None) not in _AFTER_END:
            return
        try:
            result = self._run(handler, event)
        except Exception as exc:
            self.fail(exc)
            return
        if inspect.isawaitable(result):
            self.spawn(result)

    def spawn(self, awaitable: Any) -> asyncio.Task[Any]:
        """Run an awaitable as part of this session: cancelled at termination,
        and an exception escaping it ends the session."""
        task = asyncio.get_running_loop().create_task(_as_coroutine(awaitable), context=self.ctx)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc)

    def _adopt_task(self, task: asyncio.Task[Any]) -> None:
        """A task the scenario created itself (``asyncio.create_task``):
        cancelled at termination; an exception nobody collected ends the
        session. Whoever awaits the task (directly, through ``gather`` or
        ``wait_for``) collects its exception within a few turns of the loop,
        so the check waits that long before looking."""
        self.tasks.add(task)
        loop = task.get_loop()

        def check(hops: int) -> None:
            if hops:
                loop.call_soon(check, hops - 1)
                return
            if task.cancelled() or not getattr(task, "_log_traceback", False):
                return  # succeeded, or its exception was collected
            exc = task.exception()
            if exc is not None:
                self.fail(exc)

        def done(task: asyncio.Task[Any]) -> None:
            self.tasks.discard(task)
            if not task.cancelled():
                check(_COLLECT_HOPS)

        task.add_done_callback(done)

    def fail(self, exc: BaseException) -> None:
        """A scenario error: log the traceback, end the calls, terminate."""
        text = "".join(traceback.format_exception(exc))
        if self.error is None:
            self.error = f"{type(exc).__name__}: {exc}"
        # One log line per traceback line, each with the same prefix: the
        # log stays one entry a line (an exception message may carry what a
        # caller sent) and a grep for "scenario error:" finds all of it.
        for line in text.rstrip().splitlines():
            self.write_log(f"scenario error: {line}")
        self.log.error("scenario %s failed: %s: %s", self.rule.name, type(exc).__name__, exc)
        if self.terminated or self._terminating:
            return
        for call in list(self.calls):
            self._end_call(call, 500)
        self.terminate()

    # -- calls ---------------------------------------------------------------

    def adopt(self, call: Call) -> None:
        """Make ``call`` part of this session: its listeners run here."""
        call.dispatcher = self
        if call.graph is None:
            call.graph = self.runtime.graph
        if isinstance(call, InternalCall):  # plays through the engine's speech and files
            call.tts = call.tts or self.runtime.tts
            call.audio = call.audio or self.runtime.audio
        if call in self.calls or call.state.ended:
            return
        self.calls.add(call)
        call.on_ended.append(self._call_ended)
        if call.kind != "internal" and not getattr(call, "_recorded", False):
            self.runtime.track_call(self, call)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def create_conference(self, name: str | None = None) -> Conference:
        if self.terminated:
            raise ConferenceError("this session has terminated: it cannot create conferences")
        conf = self.runtime.graph.create_conference(name, dispatcher=self, tts=self.runtime.tts,
                                                   audio=self.runtime.audio)
        self.mixers.append(conf)
        return conf

    def _call_ended(self, call: Call) -> None:
        self.calls.discard(call)
        if not self.calls and not self.terminated:
            self._arm_idle()

    def _arm_idle(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # used without an event loop (tools, tests)
            return
        if self._idle is not None:
            self._idle.cancel()
        self._idle = loop.call_later(self.runtime.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if not self.calls and not self.terminated:
            self.write_log(f"no calls for {self.runtime.idle_timeout:g} s: terminating")
            self.terminate()

    @staticmethod
    def _end_call(call: Call, code: int) -> None:
        try:
            if call.state == CallState.ALERTING and call.direction == "inbound":
                call.reject(code)
            else:
                call.hangup()
        except CallError:
            pass
        except Exception:
            logger.exception("ending %r failed", call)

    # -- timers and log ------------------------------------------------------

    def set_timeout(self, callback: Callable[[], Any], ms: float) -> asyncio.TimerHandle:
        """Run ``callback`` (a function or coroutine function) in this
        session after ``ms`` milliseconds, unless cleared or terminated first."""
        timeout = _Timeout(self, callback)
        handle = asyncio.get_running_loop().call_later(max(ms, 0) / 1000.0, timeout, context=self.ctx)
        timeout.handle = handle
        self.timers.add(handle)
        return handle

    def clear_timeout(self, handle: asyncio.TimerHandle) -> None:
        handle.cancel()
        self.timers.discard(handle)

    def write_log(self, text: str) -> None:
        """Append ``<stamp> session=<id> <text>`` to this session's log.

        ``text`` may carry what a caller chose (a caller id, a display name,
        message text): its control characters are escaped here, at the one
        sink, so it stays on its one line (see
        :func:`~engine.security_log.escape_controls`)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = f"{stamp} session={self.id} {escape_controls(text)}"
        self.log_lines.append(line)
        self.runtime.append_log(self.id, line)

    # -- ending ----------------------------------------------------------------

    def terminate(self) -> None:
        """End the session once: Terminating, its calls ended (480 before
        answer, hang-up after), timers and tasks cancelled, Terminated.
        Calling it again, from anywhere (a Terminating listener too), does
        nothing."""
        if self._terminating:
            return
        self._terminating = True
        self.emit(AppEvents.Terminating)
        self.terminated = True
        for call in list(self.calls):
            self._end_call(call, 480)
        for conf in self.mixers:
            try:
                conf.stop()
            except Exception:
                logger.exception("stopping %r failed", conf)
        self.mixers.clear()
        for handle in list(self.timers):
            handle.cancel()
        self.timers.clear()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            current = asyncio.current_task()
        except RuntimeError:  # no running loop
            current = None
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        self.emit(AppEvents.Terminated)
        self.write_log("terminated")
        self.runtime._session_ended(self)
        try:
            asyncio.get_running_loop().call_later(RELEASE_AFTER, self._release)
        except RuntimeError:
            self._release()

    def _release(self) -> None:
        """Break the reference cycles a finished session is made of (its
        namespace holds functions whose globals are the namespace, its
        context holds the session) so that reference counting frees it at
        once instead of a full garbage collection much later: at hundreds
        of calls a second, waiting for the collector costs hundreds of MB.
        Runs ``RELEASE_AFTER`` seconds after termination, when cancelled
        tasks have unwound; scenario code that still runs then finds no
        session (a clear RuntimeError from the API)."""
        self.emitter.remove_all_listeners()
        self.namespace.clear()
        self.calls.clear()
        self.tasks.clear()
        self.ctx = contextvars.Context()


class _Timeout:
    """A pending ``set_timeout``. A plain closure that knows its own timer
    handle would be a reference cycle (handle -> closure -> handle) keeping
    the session alive after it ran; this object drops the handle when it
    fires."""

    __slots__ = ("session", "callback", "handle")

    def __init__(self, session: Session, callback: Callable[[], Any]) -> None:
        self.session = session
        self.callback = callback
        self.handle: asyncio.TimerHandle | None = None

    def __call__(self) -> None:
        session, callback, handle = self.session, self.callback, self.handle
        self.handle = None
        if handle is not None:
            session.timers.discard(handle)
        session.run_listener(lambda _ev: callback(), None)


#: Seconds after termination when a session's cycles are broken.
RELEASE_AFTER = 0.5

#: Events still delivered after a session terminated.
_AFTER_END = frozenset({"Terminating", "Terminated", "Disconnected", "Failed"})

#: Loop turns given to the awaiter of a scenario's task to collect its exception.
_COLLECT_HOPS = 3


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable


class _TaskFactory:
    """The event loop's task factory while scenarios run: a task created
    from scenario code (its coroutine was compiled from a scenario file)
    inside a session belongs to that session (see :meth:`Session._adopt_task`).
    Other tasks, the engine's own, are left alone. It wraps the factory that
    was installed before, if any."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        if self.previous is not None:
            task = self.previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        context = kwargs.get("context")
        session = context.get(_current) if context is not None else _current.get(None)
        if session is not None and isinstance(task, asyncio.Task):
            code = getattr(coro, "cr_code", None)
            if code is not None and code.co_filename in session.runtime.scenario_files:
                session._adopt_task(task)
        return task

    @staticmethod
    def install(loop: asyncio.AbstractEventLoop) -> None:
        current = loop.get_task_factory()
        if not isinstance(current, _TaskFactory):
            loop.set_task_factory(_TaskFactory(current))


class ScenarioRuntime:
    """Starts sessions for rule matches and conference calls.

    :param ua: the :class:`~engine.calls.sip_ua.UserAgent` (anything with
        ``call_sip``, ``call_pstn`` and ``call_registered``), or ``None``
        (then scenarios cannot place calls).
    :param node_id: this engine node's id, for the directory.
    :param idle_timeout: seconds a session with no calls lives on.
    :param log_dir: where the sessions' logs are written (``sessions-YYYY-MM-DD.log``).
    :param max_sessions: most sessions running at once; a call or MESSAGE
        that would start one more is refused 503 (each session holds a
        scenario's namespace, timers and log for at least ``idle_timeout``).
    """

    #: Retry-After (seconds) of the 503 refusing a session over the cap.
    RETRY_AFTER = 5

    #: Ended sessions whose log lines are kept in memory (for read_log
    #: without a log_dir).
    ENDED_LOGS_KEPT = 1000

    def __init__(
        self,
        rules: RuleSet,
        scenarios_dir: Path,
        *,
        ua: Any,
        directory: MemoryDirectory | None = None,
        node_id: str | None = None,
        idle_timeout: float = 30.0,
        log_dir: Path | None = None,
        graph: MediaGraph | None = None,
        tts: Any = None,
        audio: Any = None,
        store: Any = None,
        max_sessions: int = 5000,
    ) -> None:
        if type(max_sessions) is not int or max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive integer, not {max_sessions!r}")
        self.max_sessions = max_sessions
        self.rules = rules
        self.scenarios_dir = Path(scenarios_dir)
        self.ua = ua
        self.directory = directory or MemoryDirectory()
        self.node_id = node_id or secrets.token_hex(6)
        self.idle_timeout = idle_timeout
        self.log_dir = log_dir
        #: Media routing for conferences and ``send_media_to`` (its own clock when not given).
        self.graph = graph if graph is not None else MediaGraph(MediaClock())
        #: Speech for conferences' ``say`` (``None``: the default cache).
        self.tts = tts
        #: Files and URLs for conferences' ``start_playback`` (``None``: the default loader).
        self.audio = audio
        #: The engine's store (rooms), or ``None``.
        self.store = store
        #: Rooms' live participants and admission (set by the engine), or ``None``.
        self.rooms: RoomService | None = None
        #: The engine's keys (:class:`engine.runtime.tokens.Keys`), for invite codes, or ``None``.
        self.keys: Any = None
        #: Where and how much the trunk may be dialed (closed: nothing is allowed).
        self.dial_policy = DialPolicy()
        #: Whether a conference that is not a room (opened by whoever names
        #: it first) may be joined (``--ad-hoc-conferences``).
        self.ad_hoc_conferences = True
        #: Limits on PIN and invite-code attempts.
        self.pin_limits = PinLimits()
        #: Source addresses whose callers are told apart by caller id (a
        #: trunk or load balancer: ``--trusted``), for PIN attempt limits.
        self.trusted_sources: frozenset[str] = frozenset()
        #: Hooks called with ``(event, data)`` for ``call.started`` / ``call.ended``.
        self.on_call_event: list[Callable[[str, dict[str, Any]], None]] = []
        self.sessions: dict[str, Session] = {}
        #: Logged-in web SDK users (``call_user(name, ...) -> Call | None``),
        #: set by the engine's web layer; ``None``: only SIP phones.
        self.web_users: Any = None
        self.scenario_files: set[str] = set()
        self._code: dict[str, CodeType] = {}
        self._http: aiohttp.ClientSession | None = None
        self._ended_logs: OrderedDict[str, list[str]] = OrderedDict()
        self._log_file: Any = None
        self._log_day = ""
        self.finished: deque[tuple[str, str, str | None]] = deque(maxlen=1000)
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    # -- scenarios -----------------------------------------------------------

    def compile_all(self) -> None:
        """Compile every scenario the rules name; raise :class:`ScenarioError`
        with file, line and reason for the first that does not compile."""
        for rule in self.rules.rules:
            for name in rule.scenarios:
                self.code(name)

    def code(self, name: str) -> CodeType:
        """The compiled scenario ``name``, read and compiled once (until
        :meth:`reload`); :class:`ScenarioError` says why it cannot be."""
        code = self._code.get(name)
        if code is None:
            path = self.scenarios_dir / f"{name}.py"
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ScenarioError(f"{path}: cannot read the scenario: {exc.strerror or exc}") from None
            try:
                source = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data.count(b"\n", 0, exc.start) + 1
                raise ScenarioError(f"{path}:{line}: not valid UTF-8: {exc.reason}") from None
            try:
                code = compile(source, str(path), "exec")
            except SyntaxError as exc:
                where = f"{path}:{exc.lineno}" if exc.lineno else str(path)
                raise ScenarioError(f"{where}: {exc.msg}") from None
            except ValueError as exc:  # e.g. null bytes, on some Python versions
                raise ScenarioError(f"{path}: {exc}") from None
            self._code[name] = code
            self.scenario_files.add(code.co_filename)
        return code

    def reload(self, rules: RuleSet) -> None:
        """Use new rules and re-read scenarios for sessions started from now
        on; if one does not compile, raise :class:`ScenarioError` and keep
        the old rules and code."""
        old_rules, old_code = self.rules, self._code
        self.rules, self._code = rules, {}
        try:
            self.compile_all()
        except ScenarioError:
            self.rules, self._code = old_rules, old_code
            raise

    # -- starting sessions -----------------------------------------------------

    def start_session(self, rule: Rule, custom_data: str = "") -> Session:
        """Create and load a session; a load error fails it (and raises).
        A session that has no call once started ends after ``idle_timeout``
        unless it places or receives one.

        :raises SessionLimitReached: ``max_sessions`` are running.
        """
        self._check_capacity()
        return self._start(Session(self, rule, custom_data))

    def _check_capacity(self) -> None:
        if len(self.sessions) >= self.max_sessions:
            raise SessionLimitReached(self.max_sessions)

    def _session_cap_event(self, src: str | None, what: str) -> None:
        """Report a refusal for the session cap: at most one line per
        source and kind every 10 s (a flood must not become a log flood)."""
        security_event_throttled(self.directory, time.monotonic(), "cap_reached", src, cap="sessions",
                                 what=what, limit=self.max_sessions)

    def _start(self, session: Session) -> Session:
        try:
            _TaskFactory.install(asyncio.get_running_loop())
        except RuntimeError:  # no running loop: nothing asynchronous can start
            pass
        self.sessions[session.id] = session
        session.write_log(f"started by rule {session.rule.name} ({', '.join(session.rule.scenarios)})")
        try:
            session.load()
        except Exception as exc:
            session.fail(exc)
            raise
        session.emit(AppEvents.Started)
        if not session.calls and not session.terminated:
            session._arm_idle()
        return session

    def on_incoming_call(self, call: Call, request: Any = None) -> None:
        """Route an inbound call by its dialed number and who calls (a rule's
        ``kinds``, ``networks``, ``authenticated``). A number no rule takes
        is refused before any session starts: 404 when no pattern matches,
        403 when the matching rules refuse this caller, a digest challenge
        (401) to a SIP caller that only lacks authentication."""
        caller = caller_of(call)
        rule = self.rules.match(call.number, caller)
        if rule is None:
            code, why = self.rules.refusal(call.number, caller)
            if code == 404:
                logger.info("no rule matches %r: 404", call.number)
                call.reject(404)
                return
            security_event("forbidden", call.source, kind=call.kind, number=call.number, reason=why)
            challenge = getattr(call, "challenge", None)
            if code == 401 and challenge is not None:
                challenge()
            else:
                call.reject(403)
            return
        if rule.srtp is not None:
            call.srtp = rule.srtp  # the leg's media follows its rule (engine.calls.sdp_media)
        try:
            session = self.start_session(rule)
        except SessionLimitReached:
            self._session_cap_event(call.source, "call")
            if call.state == CallState.ALERTING:
                call.reject(503, {"Retry-After": str(self.RETRY_AFTER)})
            return
        except Exception:
            if call.state == CallState.ALERTING:
                call.reject(500)
            return
        self._alert(session, call)

    def _alert(self, session: Session, call: Call) -> None:
        if call.state.ended:  # e.g. the caller hung up before the session saw the call
            session.write_log(f"call {call.id} ended before it was offered ({call.end_code})")
            if not session.calls and not session.terminated:
                session._arm_idle()
            return
        if session.terminated:
            self._refuse(call, 500)
            return
        session.adopt(call)
        session.write_log(
            f"call {call.id} from {call.callerid!r} to {call.number!r} ({call.kind})"
        )
        session.emit(
            AppEvents.CallAlerting,
            call=call,
            headers=dict(call.headers),
            callerid=call.callerid,
            display_name=call.display_name,
            destination=call.number,
        )
        if session.terminated:
            self._refuse(call, 500)

    @staticmethod
    def _refuse(call: Call, code: int) -> None:
        if call.state == CallState.ALERTING and call.direction == "inbound":
            try:
                call.reject(code)
            except CallError:
                pass

    def on_message(self, text: str, callerid: str, destination: str, headers: dict[str, str],
                   source: str | None = None) -> int:
        """An out-of-dialog SIP MESSAGE from ``source``: start a session for
        it (through the rules, as a ``sip`` caller); return the status (503
        when ``max_sessions`` are running)."""
        caller = Caller("sip", source)
        rule = self.rules.match(destination, caller)
        if rule is None:
            code, why = self.rules.refusal(destination, caller)
            if code != 404:
                security_event("forbidden", source, kind="sip", method="MESSAGE", number=destination, reason=why)
                return 403
            return 404
        try:
            session = self.start_session(rule)
        except SessionLimitReached:
            self._session_cap_event(source, "MESSAGE")
            return 503
        except Exception:
            return 500
        session.emit(AppEvents.MessageReceived, text=text, callerid=callerid,
                     destination=destination, headers=headers)
        return 200

    def call_conference(
        self, caller: Session, name: str, callerid: str | None, display_name: str | None,
        headers: dict[str, str] | None, grant: Grant | None = None, source: str | None = None,
    ) -> InternalCall:
        """Connect ``caller`` to the ONE session owning conference ``name``,
        started through the rules on first use. Returns the caller's leg; the
        conference session gets ``CallAlerting`` with the other leg on the
        next turn of the loop (so the caller can add listeners first). A
        conference that fails to start fails the caller's leg with 500.

        :raises CallError: no rule matches ``name``, or another node owns it
            (calls between nodes are not built yet).
        """
        rule = self.rules.match(name, INTERNAL_CALLER)
        if rule is None:
            raise CallError(f"no rule matches conference {name!r}")
        if caller.terminated:
            raise CallError("this session has terminated: it cannot place calls")
        loop = asyncio.get_running_loop()
        session = self._conference_owner(name, rule)
        out, inc = new_call_pair(
            number=name, callerid=callerid or "", display_name=display_name, headers=headers,
            caller_dispatcher=caller, grant=grant, source=source,
        )
        caller.adopt(out)
        if session is None:
            loop.call_soon(self._refuse, inc, 500)
        else:
            loop.call_soon(self._alert, session, inc)
        return out

    def _conference_owner(self, name: str, rule: Rule) -> Session | None:
        """The live session owning ``name``, started (and claimed in the
        directory before its scenario runs) if there is none; ``None`` when
        the scenario fails to load."""
        owner = self.directory.conference_owner(name)
        if owner is not None:
            node, sid = owner
            live = self.sessions.get(sid)
            if live is not None and not live.terminated:
                return live
            if node != self.node_id:
                raise CallError(
                    f"conference {name!r} is run by node {node}: calls between nodes are not supported yet"
                )
            self.directory.release_conference(name, sid)  # a stale claim of this node
        try:
            self._check_capacity()
        except SessionLimitReached as exc:
            raise CallError(f"conference {name!r} cannot start: {exc}") from None
        session = Session(self, rule)
        node, sid = self.directory.claim_conference(name, self.node_id, session.id)
        if sid != session.id:  # someone else claimed it first
            live = self.sessions.get(sid)
            if live is not None and not live.terminated:
                return live
            raise CallError(f"conference {name!r} is run by node {node}")
        session.conferences.add(name)
        try:
            return self._start(session)
        except Exception:  # logged in the session; fail() released the name
            return None

    def conference_is_open(self, name: str) -> bool:
        if self.directory.conference_owner(name) is not None:
            return True
        if self.store is not None and name.startswith("conf_"):
            try:
                room = self.store.get_room(name[len("conf_"):])
            except Exception as exc:  # a malformed id is simply not a room
                logger.debug("room lookup %r: %s", name, exc)
                return False
            return room is not None and room.state(time.time()) != "ended"
        return False

    def admit_with_pin(self, call: Call, pin: str, room_name: str | None = None) -> dict[str, str]:
        """See ``VoxEngine.admit_with_pin``."""
        rooms = self.rooms
        room = rooms.get(room_name) if rooms is not None and room_name is not None else None
        if room_name is not None and room is None:
            raise RoomRefused("room_not_found", "There is no such conference.")
        room_id = room.room_id if room is not None else None
        now = asyncio.get_running_loop().time()
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

    def _find_pin(self, pin: str, room: Any) -> tuple[str, str, tuple[str, ...], str] | RoomRefused | None:
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
                invite = self.redeem_invite_code(pin)
            except RoomRefused as refused:
                return None if refused.code == "invalid_code" else refused
            return invite["room"], invite["role"], tuple(invite["permissions"]), "invite"
        return None

    def _pin_keys(self, call: Call, room_id: str | None) -> list[tuple[str, str, int, float, float]]:
        """``(scope, key, free, base, cap)`` of each failure counter for ``call``."""
        limits = self.pin_limits
        source = call.source or "internal"
        if source in self.trusted_sources:  # a trunk: its callers share the address
            source = f"{source}/{call.callerid}"
        keys = [("source", f"pin:src:{source}", limits.source_free, limits.source_base, limits.source_cap),
                ("global", "pin:all", limits.global_free, limits.global_base, limits.global_cap)]
        if room_id is not None:
            keys.append(("room", f"pin:room:{room_id}", limits.room_free, limits.room_base, limits.room_cap))
        return keys

    def _pin_blocked(self, keys: list[tuple[str, str, int, float, float]], now: float) -> RoomRefused | None:
        for scope, key, _, _, _ in keys:
            if self.directory.locked_for(key, now) > 0:
                if scope == "room":
                    return RoomRefused("pin_locked", "This conference's PIN is locked. Please try again later.")
                return RoomRefused("too_many_attempts", "Too many attempts. Please try again later.")
        return None

    def _pin_failed(self, keys: list[tuple[str, str, int, float, float]], now: float, call: Call,
                    room_id: str | None) -> None:
        security_event("pin_failed", call.source, room=room_id, caller=call.callerid)
        for scope, key, free, base, cap in keys:
            lock = self.directory.add_failure(key, now, free=free, base=base, cap=cap,
                                              forget=self.pin_limits.forget)
            if lock > 0:
                security_event("pin_lockout", call.source, scope=scope, room=room_id, seconds=lock)
                if scope == "room" and self.rooms is not None and room_id is not None:
                    self.rooms.report("room.pin_locked", {"room": room_id, "seconds": lock})

    def redeem_invite_code(self, code: str) -> dict[str, Any]:
        """Use up an invite by its code (a phone keypad's digits); see
        ``VoxEngine.redeem_invite``."""
        from engine.state.store import InviteRefused

        if self.store is None or self.keys is None:
            raise RoomRefused("room_not_found", "rooms are not available")
        if not isinstance(code, str) or not code.isdigit():
            raise RoomRefused("invalid_code", "no invite has this code")
        try:
            invite = self.store.redeem_invite(code_hash=self.keys.code_hash(code), now=time.time())
        except InviteRefused as exc:
            raise RoomRefused(exc.code, str(exc)) from None
        return {"room": invite.room_id, "conference": f"conf_{invite.room_id}", "role": invite.role,
                "permissions": list(invite.permissions), "identity": invite.invitee,
                "display_name": invite.display_name}

    def track_call(self, session: Session, call: Call) -> None:
        """Keep a call record of ``call`` (written when it ends) and report
        ``call.started`` / ``call.ended``. Internal legs (a gatekeeper's call
        into a conference) are not recorded: the outside leg is."""
        call._recorded = True  # type: ignore[attr-defined]
        started = time.time()
        base = {"call_id": call.id, "session_id": session.id, "rule": session.rule.name,
                "kind": call.kind, "direction": call.direction, "number": call.number,
                "callerid": call.callerid}
        if self.on_call_event:
            self.call_event("call.started", {**base, "start": started})

        def ended(call: Call) -> None:
            end = time.time()
            answer = call.connected_at
            record = {
                **base, "start": started, "answer": answer, "end": end,
                "duration": round(end - answer, 3) if answer is not None else 0.0,
                "status": "answered" if answer is not None else "unanswered",
                "end_code": call.end_code, "end_reason": call.end_reason,
            }
            if self.store is not None:
                try:
                    self.store.add_call_record(record)
                except Exception:
                    logger.exception("cannot write the call record of %s", call.id)
            if self.on_call_event:
                self.call_event("call.ended", record)

        call.on_ended.append(ended)

    def call_event(self, event: str, data: dict[str, Any]) -> None:
        for hook in list(self.on_call_event):
            try:
                hook(event, data)
            except Exception:
                logger.exception("call event hook failed for %s", event)

    def rate_limit(self, key: str, per_minute: float, burst: int) -> bool:
        now = asyncio.get_running_loop().time()
        return self.directory.hit(f"app:{key}", now, rate=per_minute / 60.0, burst=burst)

    def conference_session(self, name: str) -> Session | None:
        owner = self.directory.conference_owner(name)
        return self.sessions.get(owner[1]) if owner else None

    def _session_ended(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        for name in session.conferences:
            self.directory.release_conference(name, session.id)
        self.finished.append((session.id, session.rule.name, session.error))
        self._ended_logs[session.id] = list(session.log_lines)
        while len(self._ended_logs) > self.ENDED_LOGS_KEPT:
            self._ended_logs.popitem(last=False)

    # -- services ----------------------------------------------------------------

    async def http_session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    def append_log(self, session_id: str, line: str) -> None:
        """Append a session's log line to today's ``sessions-YYYY-MM-DD.log``.

        One file a day for all sessions (each line carries ``session=<id>``),
        not one file a session: at hundreds of calls a second, a file per
        session would fill a directory with millions of files.
        """
        if session_id in self._ended_logs:  # a line after the end (a late error)
            self._ended_logs[session_id].append(line)
        if self.log_dir is None:
            return
        day = time.strftime("%Y-%m-%d", time.gmtime())
        try:
            if self._log_day != day or self._log_file is None:
                if self._log_file is not None:
                    self._log_file.close()
                # Session logs name callers and numbers: private (0600).
                fd = os.open(self.log_dir / f"sessions-{day}.log",
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._log_file = open(fd, "a", encoding="utf-8", buffering=1)
                self._log_day = day
            self._log_file.write(line + "\n")
        except OSError:
            logger.exception("cannot write session log")

    def read_log(self, session_id: str) -> list[str]:
        """A session's log lines: live, from memory for recently ended
        sessions, else from the daily log files (newest first)."""
        session = self.sessions.get(session_id)
        if session is not None:
            return list(session.log_lines)
        if session_id in self._ended_logs:
            return list(self._ended_logs[session_id])
        if self.log_dir is not None:
            # The session field is the second one of a line: a ``session=``
            # further on is text a scenario or a caller wrote, never a match.
            marker = f"session={session_id}"
            for path in sorted(self.log_dir.glob("sessions-*.log"), reverse=True):
                with open(path, encoding="utf-8", errors="replace") as fh:
                    lines = [ln.rstrip("\n") for ln in fh if ln.split(" ", 2)[1:2] == [marker]]
                if lines:
                    return lines
        raise KeyError(session_id)

    async def stop(self) -> None:
        """Terminate every session and close the HTTP client."""
        for session in list(self.sessions.values()):
            session.terminate()
        await asyncio.sleep(0)
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
