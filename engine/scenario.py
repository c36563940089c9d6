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
listener (or a task it started) is logged with its traceback in the session
log, the session's calls are ended (500 before answer, BYE after) and the
session terminates; the engine goes on. A session with no calls left ends
after ``idle_timeout`` seconds, so nothing leaks.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import inspect
import logging
import secrets
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any, Callable

import aiohttp
from pyee.asyncio import AsyncIOEventEmitter

from .calls import Call, CallError, CallEvents, CallState, InternalCall, new_call_pair
from .directory import MemoryDirectory
from .router import Rule, RuleSet

__all__ = [
    "AppEvents",
    "AppEvent",
    "CallEvents",
    "ScenarioError",
    "ScenarioRuntime",
    "Session",
    "VoxEngine",
    "Logger",
    "Net",
    "HttpResponse",
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
    """

    name: str
    session_id: str
    call: Call | None = None
    headers: dict[str, str] = field(default_factory=dict)
    callerid: str | None = None
    display_name: str | None = None
    destination: str | None = None
    text: str | None = None


class ScenarioError(Exception):
    """A scenario could not be loaded (file, line and reason in the text)."""


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
        headers: dict[str, str] | None = None,
    ) -> Call:
        """Call the ONE session that owns conference ``name`` (started through
        the rules on first use). Returns this side's leg; the conference
        session gets ``CallAlerting`` with the other."""
        return _session().runtime.call_conference(_session(), name, callerid, display_name, headers)

    def call_pstn(self, number: str, callerid: str, headers: dict[str, str] | None = None,
                  display_name: str | None = None) -> Call:
        """Call a phone number through the configured SIP trunk."""
        session = _session()
        call = session.runtime.ua.call_pstn(number, callerid, display_name=display_name,
                                            headers=headers, dispatcher=session)
        session.adopt(call)
        return call

    def call_sip(self, uri: str, callerid: str = "callbridge", headers: dict[str, str] | None = None,
                 display_name: str | None = None) -> Call:
        """Call a SIP URI directly."""
        session = _session()
        call = session.runtime.ua.call_sip(uri, callerid=callerid, display_name=display_name,
                                           headers=headers, dispatcher=session)
        session.adopt(call)
        return call

    def call_user(self, name: str, callerid: str = "callbridge", headers: dict[str, str] | None = None,
                  display_name: str | None = None) -> Call:
        """Call a user: the SIP phone registered under ``name``."""
        session = _session()
        call = session.runtime.ua.call_registered(name, callerid=callerid, display_name=display_name,
                                                  headers=headers, dispatcher=session)
        session.adopt(call)
        return call

    def set_timeout(self, callback: Callable[[], Any], ms: float) -> asyncio.TimerHandle:
        return _session().set_timeout(callback, ms)

    def clear_timeout(self, handle: asyncio.TimerHandle) -> None:
        _session().clear_timeout(handle)


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


class _Net:
    async def http_request(
        self, url: str, method: str = "GET", headers: dict[str, str] | None = None,
        body: str | bytes | None = None, timeout: float = 10.0,
    ) -> HttpResponse:
        """Make an HTTP request (aiohttp) from a scenario; never raises for
        network errors, returns ``code=0`` and ``error`` instead."""
        session = _session()
        try:
            http = await session.runtime.http_session()
            async with http.request(
                method, url, headers=headers, data=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                text = await resp.text(errors="replace")
                return HttpResponse(resp.status, text, dict(resp.headers))
        except asyncio.TimeoutError:
            session.write_log(f"http_request {method} {url}: timeout after {timeout} s")
            return HttpResponse(0, "", {}, "timeout")
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            session.write_log(f"http_request {method} {url}: {exc}")
            return HttpResponse(0, "", {}, str(exc) or type(exc).__name__)


VoxEngine = _VoxEngine()
Logger = _Logger()
Net = _Net()


def set_timeout(callback: Callable[[], Any], ms: float) -> asyncio.TimerHandle:
    """Run ``callback`` (function or coroutine function) after ``ms`` milliseconds."""
    return _session().set_timeout(callback, ms)


def clear_timeout(handle: asyncio.TimerHandle) -> None:
    _session().clear_timeout(handle)


class Session:
    """One running scenario: its namespace, calls, timers, tasks and log."""

    def __init__(self, runtime: ScenarioRuntime, rule: Rule, custom_data: str = "") -> None:
        self.id = secrets.token_hex(12)
        self.runtime = runtime
        self.rule = rule
        self.custom_data = custom_data
        self.ctx = contextvars.copy_context()
        self.ctx.run(_current.set, self)
        self.emitter = AsyncIOEventEmitter()
        self.calls: set[Call] = set()
        self.timers: set[asyncio.TimerHandle] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.log_lines: deque[str] = deque(maxlen=2000)
        self.started_at = time.time()
        self.terminated = False
        self.error: str | None = None
        self.namespace: dict[str, Any] = {}
        self.conferences: set[str] = set()
        self._idle: asyncio.TimerHandle | None = None
        self.log = logging.LoggerAdapter(logger, {"session_id": self.id})

    def __repr__(self) -> str:
        return f"<Session {self.id[:8]} {self.rule.name} calls={len(self.calls)}>"

    # -- loading ---------------------------------------------------------------

    def load(self) -> None:
        """Run the rule's scenarios, in order, in one fresh namespace."""
        self.namespace = {"__name__": f"scenario_{self.id}", "__builtins__": __builtins__}
        for name in self.rule.scenarios:
            code = self.runtime.code(name)
            self.namespace["__file__"] = code.co_filename
            self.ctx.run(exec, code, self.namespace)

    # -- events ------------------------------------------------------------------

    def add_event_listener(self, event: str | AppEvents, handler: Callable[..., Any]) -> None:
        def run(ev: AppEvent, handler: Callable[..., Any] = handler) -> None:
            self.run_listener(handler, ev)

        run.__wrapped__ = handler  # type: ignore[attr-defined]
        self.emitter.on(str(event), run)

    def remove_event_listener(self, event: str | AppEvents, handler: Callable[..., Any] | None) -> None:
        for listener in list(self.emitter.listeners(str(event))):
            if handler is None or getattr(listener, "__wrapped__", None) is handler:
                self.emitter.remove_listener(str(event), listener)

    def emit(self, event: AppEvents, **fields: Any) -> None:
        self.emitter.emit(str(event), AppEvent(str(event), self.id, **fields))

    def run_listener(self, handler: Callable[..., Any], event: Any) -> None:
        """Run a listener in this session's context; failures end the session."""
        if self.terminated and getattr(event, "name", None) not in ("Terminating", "Terminated", "Disconnected", "Failed"):
            return
        try:
            if _current.get(None) is self:
                result = handler(event)
            else:
                result = self.ctx.run(handler, event)
        except Exception as exc:
            self.fail(exc)
            return
        if inspect.isawaitable(result):
            self.spawn(result)

    def spawn(self, awaitable: Any) -> asyncio.Task[Any]:
        """Run a coroutine as part of this session (cancelled at termination)."""
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

    def fail(self, exc: BaseException) -> None:
        """A scenario error: log the traceback, end the calls, terminate."""
        text = "".join(traceback.format_exception(exc))
        self.error = f"{type(exc).__name__}: {exc}"
        self.write_log(f"scenario error: {text.rstrip()}")
        self.log.error("scenario %s failed: %s", self.rule.name, self.error)
        if self.terminated:
            return
        for call in list(self.calls):
            self._end_call(call, 500)
        self.terminate()

    # -- calls ---------------------------------------------------------------

    def adopt(self, call: Call) -> None:
        """Make ``call`` part of this session: its listeners run here."""
        call.dispatcher = self
        self.calls.add(call)
        call.on_ended.append(self._call_ended)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _call_ended(self, call: Call) -> None:
        self.calls.discard(call)
        if not self.calls and not self.terminated:
            self._arm_idle()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(
            self.runtime.idle_timeout, self._on_idle
        )

    def _on_idle(self) -> None:
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
        def fire() -> None:
            self.timers.discard(handle)
            self.run_listener(lambda _ev: callback(), None)

        handle = asyncio.get_running_loop().call_later(max(ms, 0) / 1000.0, fire, context=self.ctx)
        self.timers.add(handle)
        return handle

    def clear_timeout(self, handle: asyncio.TimerHandle) -> None:
        handle.cancel()
        self.timers.discard(handle)

    def write_log(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = f"{stamp} session={self.id} {text}"
        self.log_lines.append(line)
        self.runtime.append_log(self.id, line)

    # -- ending ----------------------------------------------------------------

    def terminate(self) -> None:
        if self.terminated:
            return
        self.emit(AppEvents.Terminating)
        self.terminated = True
        for call in list(self.calls):
            self._end_call(call, 480)
        for handle in list(self.timers):
            handle.cancel()
        self.timers.clear()
        if self._idle is not None:
            self._idle.cancel()
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        self.emit(AppEvents.Terminated)
        self.runtime._session_ended(self)
        self.write_log("terminated")


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable


class ScenarioRuntime:
    """Starts sessions for rule matches and conference calls.

    :param ua: the :class:`~engine.ua.UserAgent` (anything with
        ``call_sip``, ``call_pstn`` and ``call_registered``).
    :param node_id: this engine node's id, for the directory.
    :param log_dir: where each session's log is written (``<id>.log``).
    """

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
    ) -> None:
        self.rules = rules
        self.scenarios_dir = Path(scenarios_dir)
        self.ua = ua
        self.directory = directory or MemoryDirectory()
        self.node_id = node_id or secrets.token_hex(6)
        self.idle_timeout = idle_timeout
        self.log_dir = log_dir
        self.sessions: dict[str, Session] = {}
        self._code: dict[str, CodeType] = {}
        self._http: aiohttp.ClientSession | None = None
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
        code = self._code.get(name)
        if code is None:
            path = self.scenarios_dir / f"{name}.py"
            try:
                source = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ScenarioError(f"{path}: cannot read the scenario: {exc.strerror}") from None
            try:
                code = compile(source, str(path), "exec")
            except SyntaxError as exc:
                raise ScenarioError(f"{path}:{exc.lineno}: {exc.msg}") from None
            self._code[name] = code
        return code

    def reload(self, rules: RuleSet) -> None:
        """Use new rules and re-read scenarios for sessions started from now on."""
        old_rules, old_code = self.rules, self._code
        self.rules, self._code = rules, {}
        try:
            self.compile_all()
        except ScenarioError:
            self.rules, self._code = old_rules, old_code
            raise

    # -- starting sessions -----------------------------------------------------

    def start_session(self, rule: Rule, custom_data: str = "") -> Session:
        """Create and load a session; a load error fails it (and raises)."""
        session = Session(self, rule, custom_data)
        self.sessions[session.id] = session
        session.write_log(f"started by rule {rule.name} ({', '.join(rule.scenarios)})")
        try:
            session.load()
        except Exception as exc:
            session.fail(exc)
            raise
        session.emit(AppEvents.Started)
        return session

    def on_incoming_call(self, call: Call, request: Any = None) -> None:
        """Route an inbound call by its dialed number."""
        rule = self.rules.match(call.number)
        if rule is None:
            logger.info("no rule matches %r: 404", call.number)
            call.reject(404)
            return
        try:
            session = self.start_session(rule)
        except Exception:
            if call.state == CallState.ALERTING:
                call.reject(500)
            return
        self._alert(session, call)

    def _alert(self, session: Session, call: Call) -> None:
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
        if session.terminated and call.state == CallState.ALERTING:
            call.reject(500)

    def on_message(self, text: str, callerid: str, destination: str, headers: dict[str, str]) -> int:
        """An out-of-dialog MESSAGE: start a session for it; return the status."""
        rule = self.rules.match(destination)
        if rule is None:
            return 404
        try:
            session = self.start_session(rule)
        except Exception:
            return 500
        session.emit(AppEvents.MessageReceived, text=text, callerid=callerid,
                     destination=destination, headers=headers)
        if not session.calls and not session.terminated:
            session._arm_idle()
        return 200

    def call_conference(
        self, caller: Session, name: str, callerid: str | None, display_name: str | None,
        headers: dict[str, str] | None,
    ) -> InternalCall:
        """Connect ``caller`` to the session owning conference ``name``."""
        rule = self.rules.match(name)
        if rule is None:
            raise CallError(f"no rule matches conference {name!r}")
        out, inc = new_call_pair(
            number=name, callerid=callerid or "", display_name=display_name, headers=headers,
            caller_dispatcher=caller,
        )
        caller.adopt(out)
        candidate = secrets.token_hex(12)
        owner_node, owner_sid = self.directory.claim_conference(name, self.node_id, candidate)
        session = self.sessions.get(owner_sid)
        if owner_sid == candidate or session is None or session.terminated:
            if owner_sid != candidate:  # a dead owner: take over
                self.directory.release_conference(name, owner_sid)
                self.directory.claim_conference(name, self.node_id, candidate)
            try:
                session = self.start_session(rule)
            except Exception:
                self.directory.release_conference(name, candidate)
                asyncio.get_running_loop().call_soon(inc.reject, 500)
                return out
            self.directory.release_conference(name, candidate)
            self.directory.claim_conference(name, self.node_id, session.id)
            session.conferences.add(name)
        asyncio.get_running_loop().call_soon(self._alert, session, inc)
        return out

    def conference_session(self, name: str) -> Session | None:
        owner = self.directory.conference_owner(name)
        return self.sessions.get(owner[1]) if owner else None

    def _session_ended(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        for name in session.conferences:
            self.directory.release_conference(name, session.id)
        self.finished.append((session.id, session.rule.name, session.error))

    # -- services ----------------------------------------------------------------

    async def http_session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    def append_log(self, session_id: str, line: str) -> None:
        if self.log_dir is None:
            return
        try:
            with open(self.log_dir / f"{session_id}.log", "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError:
            logger.exception("cannot write session log")

    def read_log(self, session_id: str) -> list[str]:
        session = self.sessions.get(session_id)
        if session is not None:
            return list(session.log_lines)
        if self.log_dir is not None:
            path = self.log_dir / f"{session_id}.log"
            if path.is_file():
                return path.read_text(encoding="utf-8").splitlines()
        raise KeyError(session_id)

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            session.terminate()
        await asyncio.sleep(0)
        if self._http is not None:
            await self._http.close()
