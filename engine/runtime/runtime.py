"""The scenario runtime: starts sessions for rule matches, MESSAGEs and
conference calls, and holds what sessions share.

The parts it is made of live in their own modules: compiling scenarios
(:mod:`~engine.runtime.compiler`), sessions (:mod:`~engine.runtime.session`),
the API scenarios call (:mod:`~engine.runtime.scenario_api`), logs and call
records (:mod:`~engine.runtime.records`), conference ownership
(:mod:`~engine.runtime.conferences`), invites and PINs
(:mod:`~engine.runtime.invites`). What it calls out to (placing calls,
browsers, HTTP) is handed in at construction as the protocols of
:mod:`~engine.runtime.protocols`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, deque
from pathlib import Path
from types import CodeType
from typing import Any, Callable, Iterable

import aiohttp

from engine.calls.call import Call, CallError, CallState, InternalCall, new_call_pair
from engine.calls.conference import MediaGraph
from engine.calls.grants import Grant
from engine.media.clock import MediaClock
from engine.media.tts import TtsCache
from engine.runtime.compiler import ScenarioCompiler
from engine.runtime.conferences import ConferenceOwners
from engine.runtime.dialout import DialPolicy
from engine.runtime.histogram import INVITE_TO_ALERTING_BUCKETS, BucketHistogram
from engine.runtime.invites import PinAdmission, PinLimits
from engine.runtime.protocols import CallEventHook, Challengeable, Dialer, HttpSessionFactory, LogLineHook, WebUsers
from engine.runtime.records import CallRecords, SessionLogs
from engine.runtime.rooms import RoomService
from engine.runtime.router import Caller, Rule, RuleSet
from engine.runtime.session import AppEvents, Session, TaskFactory
from engine.runtime.tokens import Keys
from engine.security_log import security_event, security_event_throttled
from engine.sip.message import SipRequest
from engine.state.directory import Directory, DirectoryUnavailable
from engine.state.store import Store
from engine.transport.audio_fetch import AudioLoader

__all__ = ["ScenarioRuntime", "SessionLimitReached", "INTERNAL_CALLER", "caller_of"]

logger = logging.getLogger("engine.runtime.scenario")

#: What rules see of a scenario's own call into another session.
INTERNAL_CALLER = Caller("internal")


def caller_of(call: Call) -> Caller:
    """What the rules see of ``call``: its kind, source address and whether
    the engine authenticated it."""
    grant = call.grant
    return Caller(call.kind, call.source, grant is not None and grant.authenticated)


class SessionLimitReached(Exception):
    """``max_sessions`` sessions are running: no new one starts until one ends.

    :param limit: the cap.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"{limit} sessions are running, the most this engine starts (max_sessions)")


class ScenarioRuntime:
    """Starts sessions for rule matches and conference calls.

    :param rules: the rules sessions are started by.
    :param scenarios_dir: where the rules' scenarios are.
    :param ua: places outbound calls (the :class:`~engine.calls.sip_ua.UserAgent`),
        or ``None`` (then scenarios cannot place calls).
    :param directory: rate limits, lockouts and conference claims (the
        engine's one directory, shared with the SIP side).
    :param node_id: this engine node's id, for the directory.
    :param idle_timeout: seconds a session with no calls lives on.
    :param log_dir: where the sessions' logs are written (``sessions-YYYY-MM-DD.log``).
    :param graph: media routing for conferences and ``send_media_to`` (its
        own clock when not given).
    :param tts: speech for conferences' ``say`` (``None``: the default cache).
    :param audio: files and URLs for conferences' ``start_playback``
        (``None``: the default loader).
    :param store: the engine's store (rooms, users, call records, storage), or ``None``.
    :param max_sessions: most sessions running at once; a call or MESSAGE
        that would start one more is refused 503 (each session holds a
        scenario's namespace, timers and log for at least ``idle_timeout``).
    :param rooms: rooms' live participants and admission, or ``None``.
    :param keys: the engine's keys (invite codes), or ``None``.
    :param web_users: browsers logged in with the web SDK (``None``: only SIP phones).
    :param dial_policy: where and how much the trunk may be dialed (default
        closed: nothing is allowed).
    :param ad_hoc_conferences: whether a conference that is not a room may
        be joined (``--ad-hoc-conferences``).
    :param pin_limits: limits on PIN and invite-code attempts.
    :param trusted_sources: source addresses whose callers are told apart
        by caller id (``--trusted``), for PIN attempt limits.
    :param trunk_configured: whether ``call_pstn`` has a trunk to go through.
    :param on_call_event: hooks called with ``(event, data)`` for
        ``call.started`` / ``call.ended``.
    :param on_log_line: called with ``(session_id, line)`` for each session log line.
    :param on_conference_call: called with ``(caller session, name, caller's
        leg)`` for each ``call_conference``.
    :param http_session: hands out the HTTP client of ``Net.http_request``
        (``None``: one :class:`aiohttp.ClientSession` of this runtime).
    """

    #: Retry-After (seconds) of the 503 refusing a session over the cap.
    RETRY_AFTER = 5

    def __init__(
        self,
        rules: RuleSet,
        scenarios_dir: Path,
        *,
        ua: Dialer | None,
        directory: Directory,
        node_id: str | None = None,
        idle_timeout: float = 30.0,
        log_dir: Path | None = None,
        graph: MediaGraph | None = None,
        tts: TtsCache | None = None,
        audio: AudioLoader | None = None,
        store: Store | None = None,
        max_sessions: int = 5000,
        rooms: RoomService | None = None,
        keys: Keys | None = None,
        web_users: WebUsers | None = None,
        dial_policy: DialPolicy | None = None,
        ad_hoc_conferences: bool = True,
        pin_limits: PinLimits | None = None,
        trusted_sources: Iterable[str] = (),
        trunk_configured: bool = True,
        on_call_event: Iterable[CallEventHook] = (),
        on_log_line: LogLineHook | None = None,
        on_conference_call: Callable[[Session, str, InternalCall], None] | None = None,
        http_session: HttpSessionFactory | None = None,
    ) -> None:
        if type(max_sessions) is not int or max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive integer, not {max_sessions!r}")
        self.max_sessions = max_sessions
        self.rules = rules
        self.compiler = ScenarioCompiler(scenarios_dir)
        self.ua = ua
        self.trunk_configured = trunk_configured
        self.directory = directory
        self.node_id = node_id or secrets.token_hex(6)
        self.idle_timeout = idle_timeout
        self.graph = graph if graph is not None else MediaGraph(MediaClock())
        self.tts = tts
        self.audio = audio
        self.store = store
        self.rooms = rooms
        self.keys = keys
        self.web_users = web_users
        #: Where and how much the trunk may be dialed (closed: nothing is allowed).
        self.dial_policy = dial_policy if dial_policy is not None else DialPolicy()
        self.sessions: dict[str, Session] = {}
        #: ``(session id, rule, error)`` of the latest ended sessions.
        self.finished: deque[tuple[str, str, str | None]] = deque(maxlen=1000)
        #: Sessions started and ended since start, and those ended by a
        #: scenario error, by rule (the engine's metrics read these).
        self.sessions_started = 0
        self.sessions_ended = 0
        self.scenario_errors: Counter[str] = Counter()
        #: Seconds from a SIP INVITE read by the transport to its session's
        #: first ``CallAlerting`` listener entered (metrics read it).
        self.invite_to_alerting = BucketHistogram(INVITE_TO_ALERTING_BUCKETS)
        self.logs = SessionLogs(log_dir, on_line=on_log_line)
        self.records = CallRecords(store, on_call_event)
        self.conferences = ConferenceOwners(self.directory, self.node_id, self.sessions, store)
        self.pins = PinAdmission(self.directory, rooms, store, keys, limits=pin_limits,
                                 trusted_sources=frozenset(trusted_sources),
                                 ad_hoc_conferences=ad_hoc_conferences)
        self._on_conference_call = on_conference_call
        self._http_factory = http_session
        self._http: aiohttp.ClientSession | None = None

    # -- settings read by the API ------------------------------------------------------

    @property
    def scenarios_dir(self) -> Path:
        return self.compiler.scenarios_dir

    @property
    def scenario_files(self) -> set[str]:
        """File names of the compiled scenarios (a task made by their code
        belongs to its session)."""
        return self.compiler.files

    @property
    def log_dir(self) -> Path | None:
        return self.logs.log_dir

    @property
    def on_call_event(self) -> list[CallEventHook]:
        """Hooks called with ``(event, data)`` for ``call.started`` / ``call.ended``."""
        return self.records.hooks

    @property
    def ad_hoc_conferences(self) -> bool:
        """Whether a conference that is not a room may be opened and joined."""
        return self.pins.ad_hoc_conferences

    @ad_hoc_conferences.setter
    def ad_hoc_conferences(self, value: bool) -> None:
        self.pins.ad_hoc_conferences = value

    # -- scenarios -----------------------------------------------------------

    def compile_all(self) -> None:
        """Compile every scenario the rules name; raise
        :class:`~engine.runtime.compiler.ScenarioError` with file, line and
        reason for the first that does not compile."""
        self.compiler.compile_rules(self.rules)

    def code(self, name: str) -> CodeType:
        """The compiled scenario ``name`` (see :class:`ScenarioCompiler`)."""
        return self.compiler.code(name)

    def reload(self, rules: RuleSet) -> None:
        """Use new rules and re-read scenarios for sessions started from now
        on; if one does not compile, raise :class:`ScenarioError` and keep
        the old rules and code."""
        self.compiler.recompile(rules)
        self.rules = rules

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

    def _start(self, session: Session, call_follows: bool = False) -> Session:
        """Load ``session`` and emit ``Started``; then its idle countdown
        starts unless ``call_follows`` (:meth:`_alert` offers it a call at
        once, and arms the countdown itself if that call has ended)."""
        try:
            TaskFactory.install(asyncio.get_running_loop())
        except RuntimeError:  # no running loop: nothing asynchronous can start
            pass
        self.sessions[session.id] = session
        self.sessions_started += 1
        session.write_log(f"started by rule {session.rule.name} ({', '.join(session.rule.scenarios)})")
        try:
            session.load()
        except Exception as exc:
            session.fail(exc)
            raise
        session.emit(AppEvents.Started)
        if not call_follows and not session.calls and not session.terminated:
            session.arm_idle()
        return session

    def on_incoming_call(self, call: Call, request: object = None) -> None:
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
            if code == 401 and isinstance(call, Challengeable):
                call.challenge()
            else:
                call.reject(403)
            return
        if rule.srtp is not None:
            call.srtp = rule.srtp  # the leg's media follows its rule (engine.calls.sip_media)
        try:  # start_session's, without arming an idle timer the call cancels at once
            self._check_capacity()
            session = self._start(Session(self, rule), call_follows=True)
        except SessionLimitReached:
            self._session_cap_event(call.source, "call")
            if call.state == CallState.ALERTING:
                call.reject(503, {"Retry-After": str(self.RETRY_AFTER)})
            return
        except Exception:
            if call.state == CallState.ALERTING:
                call.reject(500)
            return
        self._alert(session, call, request.received_at if isinstance(request, SipRequest) else None)

    def _alert(self, session: Session, call: Call, received_at: float | None = None) -> None:
        """Offer ``call`` to ``session`` (``CallAlerting``). ``received_at``:
        when the transport read the call's INVITE; the session's first
        ``CallAlerting`` listener observes the time since in
        :attr:`invite_to_alerting`."""
        if call.state.ended:  # e.g. the caller hung up before the session saw the call
            session.write_log(f"call {call.id} ended before it was offered ({call.end_code})")
            if not session.calls and not session.terminated:
                session.arm_idle()
            return
        if session.terminated:
            self._refuse(call, 500)
            return
        session.adopt(call)
        session.write_log(
            f"call {call.id} from {call.callerid!r} to {call.number!r} ({call.kind})"
        )
        session.alerting_since = received_at
        session.emit(
            AppEvents.CallAlerting,
            call=call,
            headers=dict(call.headers),
            callerid=call.callerid,
            display_name=call.display_name,
            destination=call.number,
        )
        session.alerting_since = None
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
        if self._on_conference_call is not None:
            self._on_conference_call(caller, name, out)
        if session is None:
            loop.call_soon(self._refuse, inc, 500)
        else:
            loop.call_soon(self._alert, session, inc)
        return out

    def _conference_owner(self, name: str, rule: Rule) -> Session | None:
        """The live session owning ``name``, started (and claimed in the
        directory before its scenario runs) if there is none; ``None`` when
        the scenario fails to load."""
        live = self.conferences.live_owner(name)
        if live is not None:
            return live
        try:
            self._check_capacity()
        except SessionLimitReached as exc:
            raise CallError(f"conference {name!r} cannot start: {exc}") from None
        session = Session(self, rule)
        owner = self.conferences.claim(name, session)
        if owner is not session:  # someone else claimed it first
            return owner
        try:
            return self._start(session)
        except Exception:  # logged in the session; fail() released the name
            return None

    def conference_is_open(self, name: str) -> bool:
        """See ``VoxEngine.conference_is_open``."""
        return self.conferences.is_open(name)

    def conference_session(self, name: str) -> Session | None:
        """The session running conference ``name``, if any."""
        return self.conferences.session_of(name)

    # -- rooms, PINs, invites ----------------------------------------------------

    def admit_with_pin(self, call: Call, pin: str, room_name: str | None = None) -> dict[str, str]:
        """See ``VoxEngine.admit_with_pin``."""
        return self.pins.admit(call, pin, room_name, asyncio.get_running_loop().time())

    def redeem_invite_code(self, code: str) -> dict[str, Any]:
        """See ``VoxEngine.redeem_invite``."""
        return self.pins.redeem_code(code)

    def rate_limit(self, key: str, per_minute: float, burst: int) -> bool:
        """See ``VoxEngine.rate_limit``: a bucket the nodes share; a
        directory that cannot be asked refuses (it logged why)."""
        now = asyncio.get_running_loop().time()
        try:
            return self.directory.hit(f"app:{key}", now, rate=per_minute / 60.0, burst=burst, shared=True)
        except DirectoryUnavailable:
            return False

    # -- records and logs -----------------------------------------------------------

    def track_call(self, session: Session, call: Call) -> None:
        """Keep a call record of ``call`` (written when it ends) and report
        ``call.started`` / ``call.ended``. Internal legs (a gatekeeper's call
        into a conference) are not recorded: the outside leg is."""
        self.records.track(session.id, session.rule.name, call)

    def call_event(self, event: str, data: dict[str, Any]) -> None:
        self.records.publish(event, data)

    def append_log(self, session_id: str, line: str) -> None:
        """Append a session's log line (see :class:`SessionLogs`)."""
        self.logs.append(session_id, line)

    def read_log(self, session_id: str) -> list[str]:
        """A session's log lines: live, from memory for recently ended
        sessions, else from the daily log files (newest first)."""
        session = self.sessions.get(session_id)
        if session is not None:
            return list(session.log_lines)
        return self.logs.read(session_id)

    def session_ended(self, session: Session) -> None:
        """Called by a session as it terminates: forget it, release its
        conferences, keep its log lines and error."""
        self.sessions.pop(session.id, None)
        self.conferences.release(session)
        self.finished.append((session.id, session.rule.name, session.error))
        self.sessions_ended += 1
        if session.error is not None:
            self.scenario_errors[session.rule.name] += 1
        self.logs.ended(session.id, session.log_lines)

    # -- services ----------------------------------------------------------------

    async def http_session(self) -> aiohttp.ClientSession:
        """The HTTP client ``Net.http_request`` uses."""
        if self._http_factory is not None:
            return await self._http_factory()
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def stop(self) -> None:
        """Terminate every session and close the HTTP client."""
        for session in list(self.sessions.values()):
            session.terminate()
        await asyncio.sleep(0)
        if self._http is not None:
            await self._http.close()
            self._http = None
        self.logs.close()
