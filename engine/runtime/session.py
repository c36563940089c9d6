"""Scenario sessions: one running scenario's namespace, calls, timers, tasks and log.

A rule match starts a :class:`Session`: the rule's scenario modules are run,
in order, in one fresh module namespace (so a module-level ``calls = []`` is
per session), then ``AppEvents.Started`` and ``AppEvents.CallAlerting`` are
emitted. Scenario code reaches its own session through the module-level
objects of :mod:`engine.runtime.scenario_api` (``VoxEngine``, ``Logger``,
``Net``): each session runs its code in its own :class:`contextvars.Context`,
and :func:`current_session` looks the session up there, so two sessions of
the same scenario never see each other's state.

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
import contextvars
import enum
import functools
import inspect
import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from engine import entropy
from engine.calls.call import Call, CallError, CallState, Emitter, InternalCall, Listeners
from engine.calls.conference import Conference, ConferenceError
from engine.runtime.router import Rule
from engine.security_log import escape_controls

if TYPE_CHECKING:
    from engine.runtime.runtime import ScenarioRuntime

__all__ = ["AppEvents", "AppEvent", "Session", "current_session", "RELEASE_AFTER"]

logger = logging.getLogger("engine.runtime.scenario")

_current: contextvars.ContextVar[Session] = contextvars.ContextVar("callbridge_session")



#: Lines of a session's log kept in memory (the files keep them all).
LOG_LINES_KEPT = 2000

_stamp_second = -1
_stamp_text = ""


def _stamp() -> str:
    """The UTC time of a log line to the second (formatted once a second)."""
    global _stamp_second, _stamp_text
    now = int(time.time())
    if now != _stamp_second:
        _stamp_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        _stamp_second = now
    return _stamp_text

class AppEvents(str, enum.Enum):
    """Session-level events (VoxEngine's ``AppEvents``)."""

    Started = "Started"
    CallAlerting = "CallAlerting"
    MessageReceived = "MessageReceived"
    #: A request to the session's control URL (``POST /api/v1/sessions``).
    HttpRequest = "HttpRequest"
    #: A participant of the session's room changed (muted or unmuted, by
    #: the API, a moderator's page or a phone's ``*6``): ``data`` is the
    #: participant as ``GET /api/v1/rooms/{id}`` lists it.
    ParticipantUpdated = "ParticipantUpdated"
    #: The API or a moderator asks the room's conference to record (answer
    #: with ``VoxEngine.room_recording_started``): ``data`` has ``room``.
    RecordingRequested = "RecordingRequested"
    Terminating = "Terminating"
    Terminated = "Terminated"

    def __str__(self) -> str:
        return str.__str__(self)  # the value, without the enum's property


@dataclass
class AppEvent:
    """What session-level listeners receive.

    For ``CallAlerting``: ``call``, ``headers`` (the ``X-`` headers),
    ``callerid``, ``display_name``, ``destination`` (the dialed number).
    For ``MessageReceived`` (an out-of-dialog SIP MESSAGE): ``text``,
    ``callerid``, ``destination``, ``headers``.
    For ``HttpRequest`` (the session's control URL): ``method``, ``path``
    (what follows the control URL), ``query``, ``headers``, ``text`` (the body).
    For ``ParticipantUpdated``: ``data`` (the room's participant). For
    ``RecordingRequested``: ``data`` (``room``).
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
    data: dict[str, Any] = field(default_factory=dict)



def current_session() -> Session:
    """The session whose scenario code is running now.

    :raises RuntimeError: outside a running scenario session.
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "the scenario API is only available inside a running scenario session"
        ) from None


class Session(Listeners):
    """One running scenario: its namespace, calls, timers, tasks and log."""

    #: While ``CallAlerting`` of a SIP call is emitted: when its INVITE was
    #: read (``time.monotonic()``); the first listener run takes it.
    alerting_since: float | None = None

    def __init__(self, runtime: ScenarioRuntime, rule: Rule, custom_data: str = "") -> None:
        self.id = entropy.token_hex(12)
        self.runtime = runtime
        self.rule = rule
        self.custom_data = custom_data
        self.ctx = contextvars.copy_context()
        self.ctx.run(_current.set, self)
        self.emitter = Emitter()
        self.calls: set[Call] = set()
        #: Conferences this session created (stopped when it ends).
        self.mixers: list[Conference] = []
        self.timers: set[asyncio.TimerHandle] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        #: The last :data:`LOG_LINES_KEPT` lines of the session's log. A
        #: list trimmed from the front, not a ``deque(maxlen=...)``: a
        #: deque's first block is ~600 bytes and most sessions log a line
        #: or two (bench/memory.py).
        self.log_lines: list[str] = []
        self.started_at = time.time()
        self.terminated = False
        self._terminating = False
        self.error: str | None = None
        self.namespace: dict[str, Any] = {}
        self.conferences: set[str] = set()
        self._idle: asyncio.TimerHandle | None = None

    @functools.cached_property
    def control_secret(self) -> str:
        """The secret part of the session's control URL
        (``/api/v1/control/{id}/{secret}``), drawn when first asked for
        (the API hands it out on request: most sessions, a call's, never
        have it asked for). Drawn once, it stays the session's."""
        return entropy.token_urlsafe(16)

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
    # its own listeners (in its context; failures end it): its _dispatch is
    # run_listener

    def emit(self, event: AppEvents, **fields: Any) -> None:
        name: str = event._value_  # str(event), without a call of its __str__
        if self.emitter.listened(name):  # no event object for nobody
            self.emitter.emit(name, AppEvent(name, self.id, **fields))

    def run_listener(self, handler: Callable[..., Any], event: Any) -> None:
        """Run a listener in this session's context; failures end the session."""
        if self.terminated and getattr(event, "name", None) not in _AFTER_END:
            return
        since = self.alerting_since
        if since is not None:  # the CallAlerting handler is entered (issue 17's latency)
            self.alerting_since = None
            self.runtime.invite_to_alerting.observe(time.monotonic() - since)
        try:
            result = self._run(handler, event)
        except Exception as exc:
            self.fail(exc)
            return
        if result is not None and inspect.isawaitable(result):  # most listeners return None
            self.spawn(result)

    _dispatch = run_listener

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
        if call.kind != "internal":
            self.runtime.track_call(self, call)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def dial_transfer_target(self, target: str, callerid: str | None = None,
                             headers: dict[str, str] | None = None) -> Call:
        """Place the call a transfer leads to with this session's own verbs
        (:class:`~engine.calls.call.TransferDialer`; the rules are
        :func:`engine.runtime.scenario_api.dial_transfer_target`'s)."""
        from engine.runtime.scenario_api import dial_transfer_target  # it imports this module

        return self._run(dial_transfer_target, target, callerid, headers)  # type: ignore[no-any-return]

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
            self.arm_idle()

    def arm_idle(self) -> None:
        """(Re)start the idle countdown: the session ends after the
        runtime's ``idle_timeout`` unless a call joins it meanwhile."""
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
        line = f"{_stamp()} session={self.id} {escape_controls(text)}"
        lines = self.log_lines
        lines.append(line)
        if len(lines) > LOG_LINES_KEPT:
            del lines[0]
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
        if self.tasks:  # most sessions have none left: no look-up of the current task
            try:
                current = asyncio.current_task()
            except RuntimeError:  # no running loop
                current = None
            for task in list(self.tasks):
                if task is not current:
                    task.cancel()
        self.emit(AppEvents.Terminated)
        self.write_log("terminated")
        self.runtime.session_ended(self)
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


class TaskFactory:
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
        if not isinstance(current, TaskFactory):
            loop.set_task_factory(TaskFactory(current))

