"""The harness: an application (rules + scenarios) on a virtual-time loop.

:class:`Harness` owns one :class:`~engine.testing.clock.VirtualTimeLoop` and
the applications a test loads on it (:meth:`Harness.load`). An
:class:`App` is the real :class:`~engine.runtime.runtime.ScenarioRuntime` over the
application's rules and scenarios, given a simulated user agent
(:class:`~engine.testing.calls.SimUserAgent`), canned HTTP
(:class:`~engine.testing.http.HttpMock`), an in-memory store and the
engine's media graph on a stepped clock
(:class:`~engine.testing.media.HarnessGraph`): sessions, rule matching,
``call_conference``, conferences and media routing, timers and session
logs are the engine's own.

Driving model: the test is the only thing that happens from outside, so
each of its actions (a call arriving, a digit, a hang-up) runs the loop
until the scenario waits for the outside again: every ready callback runs,
and virtual time moves only while a prompt or finite playback plays to one
of the test's endpoints (said to the call, or in a conference it hears),
as if the person listened to it (timers due meanwhile fire, in order).
Timeouts beyond that happen only when the test waits: :meth:`App.wait`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import secrets
import tempfile
import textwrap
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar, cast

import aiohttp

from engine.calls.call import Call, CallState, Dispatcher, InternalCall
from engine.calls.conference import Conference
from engine.runtime.dialout import DialPolicy
from engine.calls.grants import Grant, without_engine_headers
from engine.server import EngineConfig, build_engine
from engine.runtime.router import load_rules
from engine.runtime.scenario import ScenarioRuntime, Session
from engine.state.directory import MemoryDirectory
from engine.state.store import SqliteStore
from engine.runtime.tokens import Keys
from engine.testing.calls import Callee, Caller, Endpoint, RecordingTts, SimCall, SimUserAgent, Verdict
from engine.testing.media import HarnessGraph, graph_edges, reach, targets
from engine.testing.clock import Plan, VirtualTimeLoop
from engine.testing.http import HttpMock

__all__ = ["Harness", "App", "MediaFlows", "Flow", "ConferenceView", "LogLine"]

_T = TypeVar("_T")

#: Virtual seconds an action may spend listening to prompts, and the
#: longest ``wait()`` without a duration: an endless chain of timers stops there.
LIMIT = 3600.0

_STAMP = re.compile(r"^\S+ session=\S+ ")


@dataclass(frozen=True)
class LogLine:
    """One session log line, stamped with virtual time."""

    at: float
    session_id: str
    rule: str
    text: str

    def __str__(self) -> str:
        return f"{self.at:8.2f} [{self.rule}] {self.text}"


@dataclass
class _ConferenceCall:
    """A ``call_conference`` a session made: its side of the internal pair."""

    session_id: str
    name: str
    leg: InternalCall


@dataclass(frozen=True)
class Flow:
    """Audio going from ``source`` to ``target`` (endpoint or conference
    names), and how (``via``: ``"direct"``, or the ``call_conference``
    calls it passes through, which are wires)."""

    source: str
    target: str
    via: str

    def __str__(self) -> str:
        via = "" if self.via == "direct" else f" ({self.via})"
        return f"{self.source} -> {self.target}{via}"


def _names(label: str, name: str) -> bool:
    """Whether flow label ``label`` is ``name``, or one of the mixers of
    conference ``name`` (``conf_1234/everyone`` for ``conf_1234``)."""
    return label == name or label.startswith(name + "/")


class MediaFlows:
    """Which audio flows between which calls and conferences, now, read
    from the engine's media graph (:meth:`~engine.calls.conference.MediaGraph.flows`).

    Endpoints are named as the test named them, conferences (the
    scenario's ``create_conference`` mixers) as ``<conference>/<mixer>``
    when a conference session made them (``conf_1234/everyone``), else by
    their own name. Calls between sessions (``call_conference``) are wires,
    as in the graph: a phone sending to its call to ``conf_1234``, whose
    other end is in a mixer, sends to that mixer. Muted and deaf members'
    flows carry no audio and are left out. A check naming ``conf_1234``
    matches any of its mixers.
    """

    def __init__(self, app: App) -> None:
        self.app = app

    def __iter__(self) -> Iterator[Flow]:
        app = self.app
        edges = graph_edges(app.graph)
        seen: set[tuple[str, str]] = set()
        for src in list(edges):
            if isinstance(src, InternalCall):
                continue
            for dst, wires in targets(edges, src):
                flow = Flow(app.label(src), app.label(dst),
                            " + ".join(f"call to {w.number}" for w in wires) or "direct")
                if (flow.source, flow.target) not in seen:
                    seen.add((flow.source, flow.target))
                    yield flow

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def between(self, a: object, b: object) -> Verdict:
        """Whether audio flows both ways between ``a`` and ``b``."""
        la, lb = self.app.label(a), self.app.label(b)
        flows = list(self)
        there = any(_names(f.source, la) and _names(f.target, lb) for f in flows)
        back = any(_names(f.source, lb) and _names(f.target, la) for f in flows)
        if there and back:
            return Verdict(True, f"media flows both ways between {la} and {lb}")
        return Verdict(False, f"expected media both ways between {la} and {lb}; flows: {self.describe()}")

    def sends(self, source: object, target: object) -> Verdict:
        """Whether audio flows from ``source`` to ``target``."""
        ls, lt = self.app.label(source), self.app.label(target)
        if any(_names(f.source, ls) and _names(f.target, lt) for f in self):
            return Verdict(True, f"media flows from {ls} to {lt}")
        return Verdict(False, f"expected media from {ls} to {lt}; flows: {self.describe()}")

    def describe(self) -> str:
        flows = [str(f) for f in self]
        return "; ".join(flows) if flows else "none"


class ConferenceView:
    """What a test sees of one conference: its session and who is in it."""

    def __init__(self, app: App, name: str) -> None:
        self.app = app
        self.name = name

    def __repr__(self) -> str:
        return f"<Conference {self.name} participants={self.participants}>"

    @property
    def session(self) -> Session | None:
        """The live session running the conference (``None``: none runs)."""
        return self.app.runtime.conference_session(self.name)

    @property
    def legs(self) -> list[InternalCall]:
        """The conference session's ends of the calls made to it, in order."""
        return [c.leg.peer for c in self.app._conference_calls
                if c.name == self.name and c.leg.peer is not None]

    @property
    def participants(self) -> list[str]:
        """Names of the endpoints that hear one of its mixers now."""
        names = {ep.name for ep in self.app.endpoints}
        return list(dict.fromkeys(f.target for f in self.app.flows
                                  if _names(f.source, self.name) and f.target in names))

    def terminate(self) -> None:
        """End the conference's session from outside (as an operator, or a
        crash, would): its calls are hung up, its mixers stopped."""
        session = self.session
        if session is None:
            raise AssertionError(f"no session runs {self.name}")
        self.app.act(session.terminate)

    @property
    def mixers(self) -> list[Conference]:
        """The conferences (``create_conference``) its session has now."""
        session = self.session
        return list(session.mixers) if session is not None else []

    @property
    def log(self) -> list[str]:
        ids = {c.leg.peer.dispatcher.id for c in self.app._conference_calls
               if c.name == self.name and c.leg.peer is not None
               and isinstance(c.leg.peer.dispatcher, Session)}
        return [ln.text for ln in self.app.log_lines if ln.session_id in ids]


class _WebUsers:
    """The runtime's ``web_users`` seam (:class:`engine.web.ws.WebUsers` in
    ``serve``): browsers logged in with :meth:`App.log_in_web_user`."""

    def __init__(self, ua: SimUserAgent) -> None:
        self.ua = ua

    def call_user(self, name: str, *, callerid: str, display_name: str | None,
                  headers: dict[str, str] | None, dispatcher: Dispatcher | None) -> SimCall | None:
        return self.ua.call_web_user(name, callerid=callerid, display_name=display_name,
                                     headers=headers, dispatcher=dispatcher)


@dataclass
class _Failure:
    session_id: str
    rule: str
    error: str


class App:
    """One application (rules + scenarios) under test; see :meth:`Harness.load`.

    :ivar runtime: the engine's scenario runtime running it.
    :ivar ua: the simulated user agent (``ua.registered``, ``ua.trunk``,
        ``ua.invite_timeout`` shape what outbound calls meet).
    :ivar http: canned HTTP responses for ``Net.http_request``.
    :ivar flows: the media flows view.
    :ivar graph: the engine's media graph the scenarios route audio in.
    :ivar store: the engine's store (an in-memory SQLite database): rooms
        (:meth:`open_room`), users.
    :ivar directory: the engine's directory (conference claims, PIN lockouts).
    :ivar recordings_dir: where recordings made without a path go (a
        temporary folder; the engine's is ``data/recordings``).
    :ivar listen_to_prompts: whether actions let prompts play to the end
        (default); ``False`` returns as soon as the scenario is idle, so the
        test can act mid-prompt (barge-in).
    """

    def __init__(self, harness: Harness, rules: Path, scenarios: Path, *, idle_timeout: float = 30.0) -> None:
        self.harness = harness
        self.ua = SimUserAgent(self)
        self.http = HttpMock(lambda: self.harness.now)
        self.flows = MediaFlows(self)
        self.listen_to_prompts = True
        self.callers: list[Caller] = []
        self.dialed: list[Callee] = []
        self.log_lines: list[LogLine] = []
        self._conference_calls: list[_ConferenceCall] = []
        self._rules_of: dict[str, str] = {}
        self._seen_errors: set[str] = set()
        self._joined: dict[Endpoint, list[str]] = {}
        self.graph = HarnessGraph(on_step=self._media_step)
        # recordings without a path (``record()``, a room's record_on_start)
        # go to the test's temporary folder, not ./data/recordings
        self.graph.recordings_dir = harness.recordings_dir
        self.store = SqliteStore(":memory:")
        #: The engine's one directory (conference claims, PIN lockouts).
        self.directory = MemoryDirectory()
        self.keys = Keys(secrets.token_bytes(32))
        # ``serve`` dials nothing until ``--dial-allow`` says where; a
        # scenario under test may dial any number the default deny-list
        # (emergency, premium) lets through. Set ``app.runtime.dial_policy``
        # to test against your own.
        config = EngineConfig(rules=rules, scenarios=scenarios, session_idle_timeout=idle_timeout,
                              dial_policy=DialPolicy(allow=(r"\+?[0-9]+",)))
        try:
            # the engine's own wiring: rooms (admission, participants, mutes
            # through the media graph), invites hashed with a fresh key
            parts = build_engine(
                config, rules=load_rules(rules, scenarios), dialer=self.ua, store=self.store,
                keys=self.keys, graph=self.graph, tts=RecordingTts(), audio=None,
                web_users=_WebUsers(self.ua), directory=self.directory, node_id="harness",
                on_log_line=self._log,
                on_conference_call=self._conference_called, http_session=self._http_session,
            )
        except BaseException:
            self.store.close()
            raise
        self.runtime: ScenarioRuntime = parts.runtime
        self.rooms = parts.rooms

    async def _http_session(self) -> aiohttp.ClientSession:
        """``Net.http_request``'s client: the canned responses of :attr:`http`."""
        return cast(aiohttp.ClientSession, self.http)

    def _conference_called(self, caller: Session, name: str, leg: InternalCall) -> None:
        self._conference_calls.append(_ConferenceCall(caller.id, name, leg))

    def __repr__(self) -> str:
        return f"<App {self.runtime.scenarios_dir} sessions={len(self.runtime.sessions)}>"

    @property
    def recordings_dir(self) -> Path:
        return self.graph.recordings_dir

    # -- time --------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Virtual seconds since the harness started."""
        return self.harness.now

    def wait(self, seconds: float | None = None) -> None:
        """Let ``seconds`` of virtual time pass, firing every timer due
        (timeouts, ``set_timeout``, session idle ends); ``None``: until no
        timer is left (at most an hour)."""
        self.harness.wait(seconds)

    # -- calls in ----------------------------------------------------------------------------

    def incoming_call(
        self,
        number: str,
        callerid: str | None = None,
        *,
        display_name: str | None = None,
        headers: dict[str, str] | None = None,
        transport: str = "pstn",
        name: str | None = None,
        grant: Grant | None = None,
        source: str = "192.0.2.10",
    ) -> Caller:
        """A call to ``number`` arrives, as the user agent (``"pstn"``: a
        phone or trunk) or the web SDK (``"web"``) would offer it; the rules
        pick the scenario (their ``kinds``, ``networks`` and
        ``authenticated`` apply). Returns once the scenario waits for the caller.

        :param callerid: the caller's number or user name (default
            ``"+15557654321"``, or ``"web-user"`` on the web).
        :param headers: ``X-`` headers of the call (``X-Conference-Id``...);
            ``X-Callbridge-*`` ones are dropped, as the engine does.
        :param name: what messages and flows call this caller (default: the caller id).
        :param grant: what the engine established about the caller (a join
            token's room and role: ``Grant(identity=..., authenticated_by=
            "join-token", room=..., admitted_by="join-token", role=...)``);
            by default a web caller is a guest (``authenticated_by="guest"``)
            and a phone caller anonymous (``None``).
        :param source: the caller's address (for rules' ``networks``).
        """
        if transport not in ("pstn", "web"):
            raise ValueError(f"transport must be 'pstn' or 'web', not {transport!r}")
        cid = callerid or ("web-user" if transport == "web" else "+15557654321")
        headers = without_engine_headers(headers or {})[0] or None
        caller = Caller(self, name=name or cid, transport=transport, direction="inbound", number=number,
                        callerid=cid, display_name=display_name, headers=headers)
        if grant is None and transport == "web":
            grant = Grant(identity=cid, authenticated_by="guest", display_name=display_name)
        caller.leg.grant, caller.leg.source = grant, source
        caller.leg.remote_offer()
        caller._note(f"called {number!r} from {cid!r} ({transport})" + (f" with headers {headers}" if headers else ""))
        self.callers.append(caller)
        self.harness._endpoints.append(caller)
        self.act(self.runtime.on_incoming_call, caller.leg, None)
        return caller

    def send_message(self, destination: str, text: str, callerid: str = "+15557654321",
                     headers: dict[str, str] | None = None) -> int:
        """An out-of-dialog SIP MESSAGE to ``destination``; returns the status
        the engine answers (200, 404 when no rule matches, 500)."""
        return self.act(self.runtime.on_message, text, callerid, destination, dict(headers or {}))

    def start(self, rule: str, custom_data: str = "") -> Session:
        """Start a session of rule ``rule`` without a call (as the management
        API does), with ``custom_data``."""
        for r in self.runtime.rules.rules:
            if r.name == rule:
                return self.act(self.runtime.start_session, r, custom_data)
        names = ", ".join(r.name for r in self.runtime.rules.rules)
        raise ValueError(f"no rule named {rule!r} (rules: {names})")

    def register_user(self, user: str) -> None:
        """Let ``VoxEngine.call_user(user)`` reach a phone registered as ``user``."""
        self.ua.registered.add(user)

    def log_in_web_user(self, user: str) -> None:
        """Log ``user`` in with the web SDK: ``VoxEngine.call_user(user)``
        rings this browser (``app.callee(user)``, ``how == "web"``) rather
        than a phone, as in ``serve``, and a browser's
        ``call.forward_call_to_user_direct()`` to ``user`` rings it for a
        direct call (``app.callee(user).direct``)."""
        self.ua.web_users.add(user)

    # -- calls out ---------------------------------------------------------------------------

    def callee(self, target: str | None = None) -> Callee:
        """The latest outbound call the scenario placed to ``target`` (a
        number, URI or user name; ``None``: the latest of all)."""
        for callee in reversed(self.dialed):
            if target is None or target in (callee.target, callee.leg.number):
                return callee
        dialed = ", ".join(f"{c.target} ({c.how})" for c in self.dialed) or "nobody"
        what = "a call" if target is None else f"a call to {target}"
        raise AssertionError(f"expected the scenario to place {what}; it dialed {dialed}" + self._errors_text())

    def _dialed(self, callee: Callee) -> None:
        self.dialed.append(callee)
        self.harness._endpoints.append(callee)

    # -- conferences --------------------------------------------------------------------------

    def conference(self, name: str) -> ConferenceView:
        return ConferenceView(self, name)

    def open_room(self, room_id: str, display_name: str | None = None, **settings: Any) -> None:
        """Create room ``room_id`` in the store, as ``callbridge rooms
        create`` or the API would: conference ``conf_<room_id>`` is then
        open (``VoxEngine.conference_is_open``) before anyone is in it.
        ``settings``: those of :meth:`SqliteStore.create_room`
        (``max_participants``, ``pin``, ``moderator_pin``, ``record_on_start``...)."""
        self.store.create_room(room_id, display_name=display_name, **settings)

    def invite(self, room_id: str, invitee: str, role: str = "guest", ttl: float = 3600.0) -> str:
        """Invite ``invitee`` to room ``room_id`` as the API does; returns
        the one-time code to type on a phone keypad."""
        code, link = self.keys.new_invite_secrets()
        now = time.time()
        self.store.create_invite(room_id, invitee, display_name=None, role=role, permissions=(),
                                 code_hash=self.keys.code_hash(code), link_hash=self.keys.link_hash(link),
                                 expires_at=now + ttl, max_attempts=5, now=now)
        return code

    def participants(self, room_id: str) -> list[dict[str, Any]]:
        """The room's live participants, as ``GET /api/v1/rooms/{id}`` lists them."""
        return [p.as_dict() for p in self.rooms.list_participants(room_id)]

    def close_room(self, room_id: str) -> None:
        """Delete room ``room_id`` from the store."""
        self.store.delete_room(room_id)

    def _media_step(self) -> None:
        """After each step of the media graph: note which conferences each
        endpoint's audio reaches, and which endpoints hear each playback."""
        edges = graph_edges(self.graph)
        for ep in self.endpoints:
            if ep.leg.state.ended:
                continue
            joined = self._joined.setdefault(ep, [])
            for node in reach(edges, ep.leg):
                if isinstance(node, Conference):
                    for name in self._owner_names(node):
                        if name not in joined:
                            joined.append(name)
                            ep._note(f"joined {name} ({self.label(node)})")
        by_leg = {ep.leg: ep for ep in self.endpoints}
        for player in self.graph.players:
            if not player.active:
                continue
            heard = [by_leg[n] for n in reach(edges, player.node) if isinstance(n, SimCall) and n in by_leg]
            player.audible = bool(heard)
            for ep in heard:
                if ep.leg not in player.heard_by:
                    player.heard_by.append(ep.leg)
                    ep._heard(player, self.label(player.node))

    @staticmethod
    def _owner_names(conf: Conference) -> list[str]:
        """The conference names (``conf_1234``) of the session that made ``conf``."""
        session = conf.dispatcher
        return sorted(session.conferences) if isinstance(session, Session) else []

    @property
    def endpoints(self) -> list[Endpoint]:
        return [*self.callers, *self.dialed]

    def label(self, obj: object) -> str:
        """The name flows use for a call, endpoint, conference or name."""
        if isinstance(obj, str):
            return obj
        if isinstance(obj, Endpoint):
            return obj.name
        if isinstance(obj, SimCall):
            return obj.endpoint.name
        if isinstance(obj, InternalCall):
            for conf in self._conference_calls:
                if obj is conf.leg:
                    names = self._session_labels(conf.session_id)
                    return names[0] if names else f"session {conf.session_id[:8]}"
                if obj is conf.leg.peer:
                    return conf.name
        if isinstance(obj, Call):
            return f"call {obj.id[:8]}"
        if isinstance(obj, Conference):
            owners = self._owner_names(obj)
            return f"{owners[0]}/{obj.name}" if owners else obj.name
        name = getattr(obj, "name", None)
        return str(name) if name is not None else repr(obj)

    def _session_labels(self, session_id: str) -> list[str]:
        """Endpoints whose legs a session holds (or the session's rule)."""
        names = [ep.name for ep in self.endpoints
                 if isinstance(ep.session, Session) and ep.session.id == session_id]
        return names or [f"session {self._rules_of.get(session_id, session_id[:8])}"]

    def _conferences_of(self, ep: Endpoint) -> list[str]:
        return list(self._joined.get(ep, ()))

    def _conference_attempts(self, ep: Endpoint) -> list[tuple[str, str, bool]]:
        """The session's ``call_conference`` calls: name, state, whether connected."""
        session = ep.session
        out = []
        for conf in self._conference_calls:
            if session is not None and conf.session_id == session.id:
                leg = conf.leg
                st = f"{leg.state.value} {leg.end_code}" if leg.state.ended else leg.state.value
                out.append((conf.name, st, leg.was_connected))
        return out

    # -- logs and errors --------------------------------------------------------------------------

    def _log(self, session_id: str, line: str) -> None:
        rule = self._rules_of.get(session_id)
        if rule is None:
            session = self.runtime.sessions.get(session_id)
            rule = session.rule.name if session is not None else "?"
            self._rules_of[session_id] = rule
        self.log_lines.append(LogLine(self.harness.now, session_id, rule, _STAMP.sub("", line, count=1)))

    @property
    def log(self) -> list[str]:
        """Every session's log lines, in order, as ``[Rule] text``."""
        return [f"[{ln.rule}] {ln.text}" for ln in self.log_lines]

    def log_of(self, session_id: str) -> list[str]:
        return [ln.text for ln in self.log_lines if ln.session_id == session_id]

    def _failures(self) -> list[_Failure]:
        found = [_Failure(sid, rule, err) for sid, rule, err in self.runtime.finished if err]
        found += [_Failure(s.id, s.rule.name, s.error) for s in self.runtime.sessions.values() if s.error]
        return found

    @property
    def errors(self) -> list[str]:
        """The scenario errors so far (``"RuntimeError: ..."``). Reading
        them acknowledges them: unread ones fail the test at its end."""
        failures = self._failures()
        self._seen_errors.update(f.session_id for f in failures)
        return [f.error for f in failures]

    def _unseen_failures(self) -> list[_Failure]:
        return [f for f in self._failures() if f.session_id not in self._seen_errors]

    def _traceback(self, session_id: str) -> str:
        prefix = "scenario error: "
        lines = [ln.text for ln in self.log_lines
                 if ln.session_id == session_id and ln.text.startswith(prefix)]
        # The session log has one "scenario error: " line per traceback line.
        return "\n".join(lines[:1] + [text[len(prefix):] for text in lines[1:]])

    def _errors_text(self) -> str:
        failures = self._failures()
        if not failures:
            return ""
        return "; the scenario failed: " + ", ".join(f"[{f.rule}] {f.error}" for f in failures)

    # -- driving ------------------------------------------------------------------------------

    def act(self, fn: Callable[..., _T], *args: Any, listen: bool = True) -> _T:
        """Do one thing from outside (``fn(*args)``), as a test action does,
        and run the loop until the scenario waits again (see
        :meth:`Harness.act`); prompts play to the end unless
        :attr:`listen_to_prompts` is off. Returns what ``fn`` returned."""
        return self.harness.act(fn, *args, listen=listen and self.listen_to_prompts)

    def problems(self) -> list[str]:
        """What should fail the test at its end: scenario errors nobody read
        (:attr:`errors`), requests with no canned response."""
        out = []
        for f in self._unseen_failures():
            tb = self._traceback(f.session_id)
            out.append(f"scenario of rule {f.rule} failed: {f.error}"
                       + ("\n" + textwrap.indent(tb, "    ") if tb else "")
                       + "\n    (read app.errors in the test if this is expected)")
        for ex in self.http.unmatched:
            out.append(f"the scenario requested {ex.method} {ex.url}, which the test did not register "
                       f"(app.http.respond({ex.url!r}, ...))")
        return out


class Harness:
    """A virtual-time loop and the applications loaded on it (the
    ``callbridge`` fixture). Call :meth:`close` at the end (the fixture
    does); outside pytest, ``with Harness() as harness:`` does.

    :param tmp_dir: where :meth:`load_text` writes applications.
    """

    def __init__(self, tmp_dir: Callable[[], Path] | None = None) -> None:
        self.loop = VirtualTimeLoop()
        self.loop.set_exception_handler(self._loop_error)
        self.apps: list[App] = []
        self._endpoints: list[Endpoint] = []
        self._loop_errors: list[str] = []
        self._tmp_dir = tmp_dir
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        self._closed = False

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def now(self) -> float:
        """Virtual seconds since the harness started."""
        return self.loop.time()

    @functools.cached_property
    def recordings_dir(self) -> Path:
        """Where the applications' recordings without a path go: under the
        test's ``tmp_path`` (the fixture), else a temporary folder removed
        at :meth:`close`."""
        if self._tmp_dir is not None:
            return self._tmp_dir() / "recordings"
        self._own_tmp = tempfile.TemporaryDirectory(prefix="callbridge-harness-")
        return Path(self._own_tmp.name) / "recordings"

    def load(self, path: str | os.PathLike[str] | None = None, *, rules: str | os.PathLike[str] | None = None,
             scenarios: str | os.PathLike[str] | None = None, idle_timeout: float = 30.0) -> App:
        """Load an application: ``path/rules.yaml`` and ``path/scenarios/``
        (``rules`` and ``scenarios`` name them otherwise). A bad rules file
        or scenario raises here with file, line and reason, as ``serve`` would
        stop."""
        base = Path(path) if path is not None else Path.cwd()
        rules_path = Path(rules) if rules is not None else base / "rules.yaml"
        scen_dir = Path(scenarios) if scenarios is not None else base / "scenarios"
        app = App(self, rules_path, scen_dir, idle_timeout=idle_timeout)
        self.apps.append(app)
        return app

    def load_text(self, rules: str, scenarios: dict[str, str], *, idle_timeout: float = 30.0) -> App:
        """Load an application given as text: rules YAML and ``{name: source}``
        (dedented), written to a temporary folder."""
        if self._tmp_dir is None:
            raise RuntimeError("load_text needs a temporary folder: use the callbridge fixture")
        root = self._tmp_dir() / f"app{len(self.apps)}"
        (root / "scenarios").mkdir(parents=True)
        (root / "rules.yaml").write_text(textwrap.dedent(rules))
        for name, source in scenarios.items():
            (root / "scenarios" / f"{name}.py").write_text(textwrap.dedent(source))
        return self.load(root, idle_timeout=idle_timeout)

    # -- the loop ----------------------------------------------------------------------------

    def _prompt_playing(self) -> bool:
        if any(ep.leg.playing for ep in self._endpoints):
            return True
        legs = [ep.leg for ep in self._endpoints]
        return any(app.graph.playing_to(legs) for app in self.apps)

    def run(self, listen: bool = True) -> None:
        """Run until the scenario is idle (and, with ``listen``, no prompt plays)."""
        keep: Callable[[], bool] = self._prompt_playing if listen else (lambda: False)
        self.loop.drive(Plan(deadline=self.now + LIMIT, keep_going=keep))
        self._raise_loop_errors()

    def wait(self, seconds: float | None = None) -> None:
        """Let virtual time pass; see :meth:`App.wait`."""
        if seconds is None:
            self.loop.drive(Plan(deadline=self.now + LIMIT))
        else:
            if seconds < 0:
                raise ValueError("cannot wait a negative time")
            self.loop.drive(Plan(deadline=self.now + seconds, settle=True))
        self._raise_loop_errors()

    def act(self, fn: Callable[..., _T], *args: Any, listen: bool = True) -> _T:
        """Run ``fn(*args)`` in the loop, then the loop until idle (and,
        with ``listen``, until no prompt plays to a test's endpoint); return
        its result, or raise what it raised."""
        if self._closed:
            raise RuntimeError("the harness is closed")
        fut: asyncio.Future[_T] = self.loop.create_future()

        def call() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to the test below
                fut.set_exception(exc)

        self.loop.call_soon(call)
        self.run(listen)
        return fut.result()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        text = str(context.get("message", "error in the event loop"))
        if isinstance(exc, BaseException):
            text += "\n" + "".join(traceback.format_exception(exc)).rstrip()
        self._loop_errors.append(text)

    def _raise_loop_errors(self) -> None:
        if self._loop_errors:
            errors, self._loop_errors = self._loop_errors, []
            raise AssertionError("an engine callback failed in the event loop:\n" + "\n".join(errors))

    def close(self) -> None:
        """End every session, run what is left, close the loop; then raise
        :class:`AssertionError` for problems the test did not look at
        (:meth:`App.problems`)."""
        if self._closed:
            return
        problems: list[str] = []
        try:
            for app in self.apps:
                self.act(_stop, app.runtime, listen=False)
            self.wait()
        except AssertionError as exc:
            problems.append(str(exc))
        finally:
            self._closed = True
            loop = self.loop
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        for app in self.apps:
            app.store.close()
            problems.extend(app.problems())
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
        problems.extend(self._loop_errors)
        if problems:
            raise AssertionError("\n".join(problems))


def _stop(runtime: ScenarioRuntime) -> None:
    async def stop() -> None:
        await runtime.stop()
        await runtime.graph.stop()
        await runtime.graph.clock.stop()

    asyncio.ensure_future(stop())
