"""The objects scenario code calls: ``VoxEngine``, ``Logger``, ``Net``,
``ApplicationStorage``, ``set_timeout`` and ``clear_timeout``.

Each acts on the session whose code calls it
(:func:`~engine.runtime.session.current_session`); :mod:`engine.scenario`
is the facade scenarios import them from::

    from engine.scenario import VoxEngine, AppEvents, CallEvents

    def on_alerting(e):
        call = e.call
        call.add_event_listener(CallEvents.Connected, lambda ev: call.say("Welcome"))
        call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
        call.answer()

    VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

from __future__ import annotations

import asyncio
import codecs
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from engine.calls.call import Call, CallError
from engine.calls.conference import Conference
from engine.calls.grants import Grant
from engine.runtime.dialout import DialRefused
from engine.runtime.rooms import RoomRefused
from engine.runtime.protocols import Dialer
from engine.runtime.session import AppEvents, Session, current_session
from engine.runtime.tokens import PRESETS
from engine.security_log import security_event
from engine.sip.errors import RemoteProtocolError
from engine.sip.invite_session import host_port, same_host_port
from engine.sip.uri import SipUri, TelUri, parse_uri
from engine.state.directory import DirectoryUnavailable
from engine.state.store import Store

__all__ = [
    "VoxEngine", "Logger", "Net", "ApplicationStorage", "HttpResponse", "HTTP_MAX_BODY",
    "set_timeout", "clear_timeout", "dial_transfer_target",
]

_session = current_session


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
        if runtime.ua is None or not runtime.trunk_configured:
            raise CallError("no SIP trunk is configured (--trunk)")
        now = asyncio.get_running_loop().time()

        def hit(key: str, per_hour: float, burst: int) -> bool:
            # shared: the hourly caps hold for the cluster, not per node
            try:
                return burst > 0 and runtime.directory.hit(key, now, rate=per_hour / 3600.0, burst=burst,
                                                           shared=True)
            except DirectoryUnavailable:  # the caps cannot be counted: refuse (the directory logged it)
                raise DialRefused(503, "the shared directory is unavailable") from None

        digits = runtime.dial_policy.check(number, requested_by=requested_by, hit=hit,
                                           src=requested_by.source if requested_by is not None else None)
        call = _outbound(lambda ua, me: ua.call_pstn(digits, callerid, display_name=display_name,
                                                     headers=headers, dispatcher=me,
                                                     **({"srtp": srtp} if srtp else {})))
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
        return _outbound(lambda ua, me: ua.call_sip(uri, callerid=callerid, display_name=display_name,
                                                    headers=headers, dispatcher=me,
                                                     **({"srtp": srtp} if srtp else {})))

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
        return _outbound(lambda ua, me: ua.call_registered(name, callerid=callerid, display_name=display_name,
                                                           headers=headers, dispatcher=me))

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
            room's PINs are locked after repeated failures), ``unavailable``
            (the shared directory, which counts failures, cannot be reached:
            try again later), or an invite's refusal (``invite_used``,
            ``invite_expired``...).
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

    def room_recording_started(self, name: str, recording: Any) -> None:
        """Report that room ``name``'s conference started ``recording`` (what
        ``Conference.record()`` returned): the API and moderators can stop
        it, webhooks get ``recording.started`` and ``recording.stopped``."""
        rooms = _session().runtime.rooms
        if rooms is not None and rooms.get(name) is not None:
            rooms.recording_started(name, recording)

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
        ``per_minute`` allows (a token bucket shared by all sessions, on
        every node sharing the directory; ``False`` too while that
        directory is unavailable)."""
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


def dial_transfer_target(target: str, callerid: str | None = None,
                         headers: dict[str, str] | None = None) -> Call:
    """Place the call a transfer leads to (a phone's REFER the scenario
    accepted, or ``call.transfer_to(uri)`` on a leg with no REFER) through
    the scenario's own verbs, so that it obeys their rules:

    * ``tel:NUMBER``, or a SIP URI on the trunk's host:port, goes through
      :meth:`VoxEngine.call_pstn`: the dial-out policy (allow and deny
      lists, caps) decides, exactly as for the scenario's own call;
    * any other ``sip:``/``sips:`` URI goes through :meth:`VoxEngine.call_sip`.

    :raises CallError: a URI of another scheme; :class:`DialRefused` from
        the policy.
    """
    try:
        uri = parse_uri(target)
    except RemoteProtocolError as exc:
        raise CallError(f"bad transfer target: {exc}") from None
    caller = callerid or "callbridge"
    if isinstance(uri, TelUri):
        return VoxEngine.call_pstn(uri.number, caller, headers=headers)
    if not isinstance(uri, SipUri):
        raise CallError(f"a transfer target must be a sip:, sips: or tel: URI, not {uri.scheme}:")
    trunk = getattr(getattr(_session().runtime.ua, "config", None), "trunk", None)
    if trunk is not None and uri.user and same_host_port(host_port(uri), (trunk.host, trunk.port)):
        return VoxEngine.call_pstn(uri.user, caller, headers=headers)
    return VoxEngine.call_sip(str(uri), caller, headers=headers)


def _outbound(place: Callable[[Dialer, Session], Call]) -> Call:
    """Place an outbound call through the runtime's :class:`Dialer`
    (``place(dialer, session)``), owned by this session."""
    session = _session()
    if session.terminated:
        raise CallError("this session has terminated: it cannot place calls")
    ua = session.runtime.ua
    if ua is None:
        raise CallError("outbound calls need a user agent, and this runtime has none")
    call = place(ua, session)
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

    def _store(self) -> Store:
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

