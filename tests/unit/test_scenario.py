"""Tests for :mod:`engine.runtime.scenario`: loading, sessions, events, errors,
timers, idle ends, ``call_conference`` and session logs.

No sockets: the user agent is :class:`FakeUserAgent`, whose calls are
:class:`FakeCall` objects the tests drive by hand (``remote_answer``,
``remote_hangup``), and conference legs are real internal call pairs.
Scenarios come from ``data/scenarios`` (copied to a temporary folder, so a
test may change them) or are written by the test itself. What a scenario saw
is read back from its session's namespace or its log.
"""

from __future__ import annotations

import asyncio
import shutil
import textwrap
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from engine.calls.call import Call, CallError, CallEvents, CallState, Dispatcher, InternalCall
from engine.runtime.dialout import DialPolicy
from engine.runtime.router import RuleSet, parse_rules
from engine.state.directory import MemoryDirectory
from engine.runtime.scenario import (
    AppEvent,
    Logger,
    Net,
    ScenarioError,
    ScenarioRuntime,
    Session,
    VoxEngine,
    clear_timeout,
    set_timeout,
)

DATA = Path(__file__).parent / "data" / "scenarios"

CONFERENCE_RULES = """
rules:
  - {name: Gate, pattern: "join[0-9]*", scenarios: [gatekeeper]}
  - {name: Fwd, pattern: "conf_[A-Za-z0-9]+", scenarios: [conference]}
"""


# -- doubles -----------------------------------------------------------------------


class FakeCall(Call):
    """A call leg the test plays the far end of. Actions are recorded in
    ``actions``; ``remote_*`` methods act as the peer would."""

    kind = "fake"

    def __init__(self, direction: str, number: str, callerid: str = "alice", **kwargs: Any) -> None:
        super().__init__(direction=direction, number=number, callerid=callerid, **kwargs)
        self.actions: list[tuple[Any, ...]] = []
        self._set_state(CallState.ALERTING if direction == "inbound" else CallState.PROGRESSING)

    def answer(self, headers: dict[str, str] | None = None) -> asyncio.Future[None]:
        self.actions.append(("answer",))
        if self.direction != "inbound":
            raise CallError("only an inbound call can be answered")
        if self.state.ended:
            raise CallError("call already ended")
        if self.state == CallState.ALERTING:
            self._set_state(CallState.CONNECTED)
            self._emit(CallEvents.Connected, headers=dict(headers or {}))
        return self._connected_future()

    def reject(self, code: int = 486, headers: dict[str, str] | None = None) -> None:
        self.actions.append(("reject", code))
        if self.state != CallState.ALERTING:
            raise CallError(f"cannot reject a call in state {self.state.value}")
        self._finish(CallState.FAILED, CallEvents.Failed, code, None)

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        self.actions.append(("hangup",))
        if self.state == CallState.CONNECTED:
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup")
        elif self.direction == "inbound":
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 480, "Hangup")
        else:
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 487, "Cancelled")

    def send_message(self, text: str, headers: dict[str, str] | None = None) -> None:
        self.actions.append(("message", text))

    # the far end

    def remote_answer(self) -> None:
        self._set_state(CallState.CONNECTED)
        self._emit(CallEvents.Connected)

    def remote_hangup(self) -> None:
        self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "BYE")


class FakeUserAgent:
    """What the runtime needs of :class:`~engine.calls.sip_ua.UserAgent`: outbound calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, FakeCall]] = []

    def _call(self, how: str, number: str, callerid: str, display_name: str | None,
              headers: dict[str, str] | None, dispatcher: Dispatcher | None) -> FakeCall:
        call = FakeCall("outbound", number, callerid, display_name=display_name,
                        headers=headers, dispatcher=dispatcher)
        self.calls.append((how, call))
        return call

    def call_sip(self, uri: str, *, callerid: str, display_name: str | None = None,
                 headers: dict[str, str] | None = None, dispatcher: Dispatcher | None = None) -> FakeCall:
        return self._call("sip", uri, callerid, display_name, headers, dispatcher)

    def call_pstn(self, number: str, callerid: str, *, display_name: str | None = None,
                  headers: dict[str, str] | None = None, dispatcher: Dispatcher | None = None) -> FakeCall:
        return self._call("pstn", number, callerid, display_name, headers, dispatcher)

    def call_registered(self, user: str, *, callerid: str, display_name: str | None = None,
                        headers: dict[str, str] | None = None,
                        dispatcher: Dispatcher | None = None) -> FakeCall:
        return self._call("user", user, callerid, display_name, headers, dispatcher)


class Env:
    """Runtimes over a temporary copy of ``data/scenarios``."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "scenarios"
        shutil.copytree(DATA, self.dir)
        self.log_dir = tmp_path / "logs"
        self.ua = FakeUserAgent()
        self.runtimes: list[ScenarioRuntime] = []

    def write(self, name: str, source: str) -> Path:
        path = self.dir / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return path

    def rules(self, text: str) -> RuleSet:
        return parse_rules(textwrap.dedent(text), scenarios_dir=self.dir)

    def runtime(self, rules: str, scenarios: dict[str, str] | None = None, *,
                idle_timeout: float = 30.0) -> ScenarioRuntime:
        for name, source in (scenarios or {}).items():
            self.write(name, source)
        runtime = ScenarioRuntime(self.rules(rules), self.dir, ua=self.ua, directory=MemoryDirectory(),
                                  node_id="node1", idle_timeout=idle_timeout, log_dir=self.log_dir)
        runtime.compile_all()
        self.runtimes.append(runtime)
        return runtime


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    environment = Env(tmp_path)
    yield environment
    for runtime in environment.runtimes:
        await runtime.stop()


def incoming(runtime: ScenarioRuntime, number: str, callerid: str = "alice",
             display_name: str | None = "Alice", headers: dict[str, str] | None = None) -> FakeCall:
    """Offer the runtime an inbound call, as the user agent does."""
    call = FakeCall("inbound", number, callerid, display_name=display_name, headers=headers)
    runtime.on_incoming_call(call, None)
    return call


def session_of(call: Call) -> Session:
    assert isinstance(call.dispatcher, Session), call.dispatcher
    return call.dispatcher


async def until(predicate: Callable[[], object], what: str = "condition") -> None:
    """Let the loop run until ``predicate()`` holds (a safety limit, not a timing check)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.001)


def names(events: list[Any]) -> list[str]:
    return [e.name for e in events]


# -- loading -----------------------------------------------------------------------


async def test_each_session_has_a_fresh_namespace(env: Env) -> None:
    """Check two sessions of one scenario do not share module-level state:
    each sees its own ``calls = []`` and its own module name."""
    runtime = env.runtime(
        'rules: [{name: In, pattern: "in", scenarios: [collect]}]',
        {"collect": """
            from engine.runtime.scenario import AppEvents, VoxEngine
            calls = []
            VoxEngine.add_event_listener(AppEvents.CallAlerting, lambda e: calls.append(e.call))
        """},
    )
    first, second = incoming(runtime, "in"), incoming(runtime, "in")
    one, two = session_of(first), session_of(second)
    assert one is not two
    assert one.namespace["calls"] == [first]
    assert two.namespace["calls"] == [second]
    assert one.namespace["__name__"] != two.namespace["__name__"]


async def test_scenarios_of_one_rule_share_a_namespace_in_order(env: Env) -> None:
    """Check a rule's scenarios run in the listed order in one namespace:
    the second sees the first's names, and each ran once."""
    runtime = env.runtime(
        'rules: [{name: In, pattern: "in", scenarios: [first, second]}]',
        {
            "first": """
                order = ["first"]
                def helper():
                    return "from first"
            """,
            "second": """
                order.append("second")
                result = helper()
            """,
        },
    )
    session = runtime.start_session(runtime.rules.rules[0])
    assert session.namespace["order"] == ["first", "second"]
    assert session.namespace["result"] == "from first"
    assert session.namespace["__file__"] == str(env.dir / "second.py")


async def test_syntax_error_names_file_line_and_reason(env: Env) -> None:
    """Check compile_all raises ScenarioError as ``file:line: reason``."""
    path = env.write("broken", "x = 1\n\ndef broken(:\n    pass\n")
    rules = env.rules('rules: [{name: In, pattern: "in", scenarios: [answer, broken]}]')
    runtime = ScenarioRuntime(rules, env.dir, ua=env.ua, directory=MemoryDirectory())
    with pytest.raises(ScenarioError) as info:
        runtime.compile_all()
    assert str(info.value) == f"{path}:3: invalid syntax"


async def test_unreadable_scenarios_are_scenario_errors(env: Env) -> None:
    """Check a missing file and a file that is not UTF-8 give ScenarioError
    naming the file (and the line of the bad byte), not another exception."""
    rules = parse_rules('rules: [{name: In, pattern: "in", scenarios: [missing]}]')
    with pytest.raises(ScenarioError, match=r"missing\.py: cannot read the scenario"):
        ScenarioRuntime(rules, env.dir, ua=env.ua, directory=MemoryDirectory()).compile_all()
    path = env.dir / "latin1.py"
    path.write_bytes(b"x = 1\ny = '\xe9'\n")
    rules = parse_rules('rules: [{name: In, pattern: "in", scenarios: [latin1]}]')
    with pytest.raises(ScenarioError) as info:
        ScenarioRuntime(rules, env.dir, ua=env.ua, directory=MemoryDirectory()).compile_all()
    assert str(info.value).startswith(f"{path}:2: not valid UTF-8")
    path.write_bytes(b"x = 1\n\0\n")
    with pytest.raises(ScenarioError, match=rf"^{path}"):
        ScenarioRuntime(rules, env.dir, ua=env.ua, directory=MemoryDirectory()).compile_all()


async def test_scenario_raising_at_import_fails_the_session(env: Env) -> None:
    """Check a scenario that raises while loading: the call gets reject(500),
    the session ends with the error recorded and its traceback in the log
    file, and the runtime keeps no session."""
    runtime = env.runtime(
        'rules: [{name: In, pattern: "in", scenarios: [explodes]}]',
        {"explodes": """
            x = 1
            raise RuntimeError("boom at import")
        """},
    )
    call = incoming(runtime, "in")
    assert call.actions == [("reject", 500)]
    assert (call.state, call.end_code) == (CallState.FAILED, 500)
    assert runtime.sessions == {}
    session_id, rule, error = runtime.finished[-1]
    assert (rule, error) == ("In", "RuntimeError: boom at import")
    log = "\n".join(runtime.read_log(session_id))
    assert "Traceback" in log and "explodes.py" in log and "boom at import" in log
    assert "boom at import" in daily_log(env)


async def test_scenarios_are_read_through_the_code_cache(env: Env) -> None:
    """Check sessions run the code compiled once (a changed or deleted file
    does not matter until reload) and reload() reads the files again."""
    rules_text = 'rules: [{name: In, pattern: "in", scenarios: [version]}]'
    runtime = env.runtime(rules_text, {"version": "VERSION = 1\n"})
    path = env.write("version", "VERSION = 2\n")
    assert runtime.start_session(runtime.rules.rules[0]).namespace["VERSION"] == 1
    path.unlink()
    assert runtime.start_session(runtime.rules.rules[0]).namespace["VERSION"] == 1
    env.write("version", "VERSION = 3\n")
    runtime.reload(env.rules(rules_text))
    assert runtime.start_session(runtime.rules.rules[0]).namespace["VERSION"] == 3


async def test_reload_swaps_rules(env: Env) -> None:
    """Check new sessions follow the reloaded rules (the old pattern now 404s)."""
    runtime = env.runtime('rules: [{name: Old, pattern: "old", scenarios: [recorder]}]')
    runtime.reload(env.rules('rules: [{name: New, pattern: "new", scenarios: [recorder]}]'))
    old = incoming(runtime, "old")
    new = incoming(runtime, "new")
    assert old.actions == [("reject", 404)]
    assert session_of(new).rule.name == "New"


async def test_bad_reload_keeps_the_old_rules_and_code(env: Env) -> None:
    """Check a reload naming a scenario that does not compile raises
    ScenarioError and leaves the old rules and compiled code in use."""
    runtime = env.runtime('rules: [{name: Old, pattern: "old", scenarios: [recorder]}]')
    old_rules = runtime.rules
    env.write("broken", "def (\n")
    env.write("recorder", "raise RuntimeError('must not be re-read')\n")
    with pytest.raises(ScenarioError, match=r"broken\.py:1: "):
        runtime.reload(env.rules('rules: [{name: New, pattern: "old", scenarios: [recorder, broken]}]'))
    assert runtime.rules is old_rules
    call = incoming(runtime, "old")
    assert session_of(call).rule.name == "Old"
    assert names(session_of(call).namespace["events"]) == ["Started", "CallAlerting"]


# -- events ------------------------------------------------------------------------


async def test_started_then_call_alerting(env: Env) -> None:
    """Check a call starts the session with Started, then CallAlerting with
    the call, its headers, caller id, display name and dialed number."""
    runtime = env.runtime('rules: [{name: In, pattern: "in.*", scenarios: [recorder]}]')
    call = incoming(runtime, "in42", "alice", "Alice A", {"X-Conference-Id": "7"})
    session = session_of(call)
    events = session.namespace["events"]
    assert names(events) == ["Started", "CallAlerting"]
    alerting = events[1]
    assert isinstance(alerting, AppEvent)
    assert (alerting.call, alerting.headers, alerting.callerid, alerting.display_name,
            alerting.destination, alerting.session_id) == (
        call, {"X-Conference-Id": "7"}, "alice", "Alice A", "in42", session.id,
    )
    assert call in session.calls and call.state == CallState.ALERTING


async def test_coroutine_handlers(env: Env) -> None:
    """Check a coroutine handler runs as part of the session: it can await
    the answer and still use the session's API afterwards."""
    runtime = env.runtime(
        'rules: [{name: In, pattern: "in", scenarios: [waits]}]',
        {"waits": """
            import asyncio
            from engine.runtime.scenario import AppEvents, Logger, VoxEngine

            async def on_alerting(e):
                await asyncio.sleep(0)
                await e.call.answer()
                Logger.write(f"answered in {VoxEngine.session_id}")

            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
    )
    call = incoming(runtime, "in")
    session = session_of(call)
    await until(lambda: any("answered in" in line for line in runtime.read_log(session.id)))
    assert call.state == CallState.CONNECTED
    assert any(line.endswith(f"answered in {session.id}") for line in runtime.read_log(session.id))


_FAILURES = {
    "sync handler": ("""
        def on_alerting(e):
            raise ValueError("bug in a handler")
    """, False),
    "coroutine handler": ("""
        async def on_alerting(e):
            await asyncio.sleep(0)
            raise ValueError("bug in a coroutine handler")
    """, False),
    "coroutine after answer": ("""
        async def on_alerting(e):
            await e.call.answer()
            raise ValueError("bug after the answer")
    """, True),
    "task from a handler": ("""
        async def work():
            await asyncio.sleep(0)
            raise ValueError("bug in a task")

        def on_alerting(e):
            e.call.answer()
            asyncio.get_running_loop().create_task(work())
    """, True),
    "ensure_future from a handler": ("""
        async def work():
            raise ValueError("bug in a future")

        def on_alerting(e):
            asyncio.ensure_future(work())
    """, False),
    "set_timeout callback": ("""
        def on_alerting(e):
            e.call.answer()
            set_timeout(lambda: 1 / 0, 1)
    """, True),
    "coroutine set_timeout callback": ("""
        async def later():
            raise ValueError("bug in a coroutine timer")

        def on_alerting(e):
            VoxEngine.set_timeout(later, 0)
    """, False),
    "Connected listener": ("""
        def on_alerting(e):
            e.call.add_event_listener(CallEvents.Connected, lambda ev: {}["missing"])
            e.call.answer()
    """, True),
}


@pytest.mark.parametrize(("source", "answered"), list(_FAILURES.values()), ids=list(_FAILURES))
async def test_scenario_errors_end_the_session(env: Env, source: str, answered: bool) -> None:
    """Check an exception escaping scenario code (sync or coroutine handlers,
    tasks they start, set_timeout callbacks, call listeners) ends the
    session: the traceback goes to the session log, an unanswered call gets
    reject(500), a connected one is hung up, Terminated is emitted, and other
    sessions go on while new ones still start."""
    header = """
        import asyncio
        from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine, set_timeout
        terminated = []
        VoxEngine.add_event_listener(AppEvents.Terminated, terminated.append)
    """
    runtime = env.runtime(
        """
        rules:
          - {name: Buggy, pattern: "buggy", scenarios: [buggy]}
          - {name: Fine, pattern: "fine", scenarios: [answer]}
        """,
        {"buggy": textwrap.dedent(header) + textwrap.dedent(source)
         + "\nVoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)\n"},
    )
    bystander = incoming(runtime, "fine")
    call = incoming(runtime, "buggy")
    session = session_of(call)
    await until(lambda: session.terminated, "the session to end")
    expected = [("answer",), ("hangup",)] if answered else [("reject", 500)]
    assert call.actions == expected
    assert call.state.ended
    assert len(session.namespace["terminated"]) == 1
    log = "\n".join(runtime.read_log(session.id))
    assert "scenario error: Traceback" in log
    assert "buggy.py" in log
    assert session.error is not None and session.error in log
    assert daily_log(env, session.id).count("Traceback") == 1
    # the engine goes on
    assert bystander.state == CallState.CONNECTED and not session_of(bystander).terminated
    later = incoming(runtime, "fine")
    assert later.state == CallState.CONNECTED


async def test_handled_task_errors_do_not_end_the_session(env: Env) -> None:
    """Check an exception in a task the scenario awaits and handles itself
    does not end the session."""
    runtime = env.runtime(
        'rules: [{name: In, pattern: "in", scenarios: [careful]}]',
        {"careful": """
            import asyncio
            from engine.runtime.scenario import AppEvents, Logger, VoxEngine

            async def work():
                raise ValueError("expected")

            async def on_alerting(e):
                task = asyncio.get_running_loop().create_task(work())
                try:
                    await task
                except ValueError:
                    Logger.write("handled")
                await e.call.answer()

            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
    )
    call = incoming(runtime, "in")
    await until(lambda: call.state == CallState.CONNECTED)
    for _ in range(5):
        await asyncio.sleep(0)
    session = session_of(call)
    assert not session.terminated and session.error is None


async def test_terminating_and_terminated_are_emitted_once(env: Env) -> None:
    """Check terminate() called again (also from Terminating and Terminated
    listeners) emits each event once, rejects the alerting call (480) and
    removes the session."""
    runtime = env.runtime(
        'rules: [{name: In, pattern: "in", scenarios: [ends]}]',
        {"ends": """
            from engine.runtime.scenario import AppEvents, VoxEngine
            seen = []

            def on(e):
                seen.append(e.name)
                VoxEngine.terminate()

            def on_alerting(e):
                VoxEngine.terminate()
                VoxEngine.terminate()

            VoxEngine.add_event_listener(AppEvents.Terminating, on)
            VoxEngine.add_event_listener(AppEvents.Terminated, on)
            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
    )
    call = incoming(runtime, "in")
    session = session_of(call)
    assert session.namespace["seen"] == ["Terminating", "Terminated"]
    assert call.actions == [("reject", 480)]
    assert session.id not in runtime.sessions and session.terminated
    session.terminate()
    await runtime.stop()
    assert session.namespace["seen"] == ["Terminating", "Terminated"]


async def test_terminate_from_a_call_listener(env: Env) -> None:
    """Check VoxEngine.terminate() in a Connected listener hangs up the
    connected call, whose Disconnected listener still runs."""
    runtime = env.runtime(
        'rules: [{name: In, pattern: "in", scenarios: [quits]}]',
        {"quits": """
            from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine
            seen = []

            def on_alerting(e):
                e.call.add_event_listener(CallEvents.Connected, lambda ev: VoxEngine.terminate())
                e.call.add_event_listener(CallEvents.Disconnected, lambda ev: seen.append(ev.code))
                e.call.answer()

            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
    )
    call = incoming(runtime, "in")
    session = session_of(call)
    assert call.actions == [("answer",), ("hangup",)]
    assert session.terminated and session.namespace["seen"] == [200]


async def test_reentrant_hangup_inside_a_listener(env: Env) -> None:
    """Check a listener that hangs up its call synchronously delivers
    Disconnected to another listener of the same session at once, and then
    carries on."""
    runtime = env.runtime(
        'rules: [{name: In, pattern: "in", scenarios: [reenter]}]',
        {"reenter": """
            from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine
            log = []

            def on_alerting(e):
                call = e.call

                def connected(ev):
                    log.append("connected")
                    call.hangup()
                    log.append(f"after hangup, {VoxEngine.session_id == ev_session}")

                call.add_event_listener(CallEvents.Connected, connected)
                call.add_event_listener(
                    CallEvents.Disconnected, lambda ev: log.append(f"disconnected {ev.code}")
                )
                call.answer()

            ev_session = None

            def on_started(e):
                global ev_session
                ev_session = e.session_id

            VoxEngine.add_event_listener(AppEvents.Started, on_started)
            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
    )
    call = incoming(runtime, "in")
    assert session_of(call).namespace["log"] == [
        "connected", "disconnected 200", "after hangup, True",
    ]
    assert session_of(call).error is None


async def test_out_of_dialog_message_starts_a_session(env: Env) -> None:
    """Check on_message routes by destination: MessageReceived with text,
    caller id, destination and headers (200); no rule is 404; a scenario
    that fails to load is 500."""
    runtime = env.runtime(
        """
        rules:
          - {name: Msg, pattern: "bot", scenarios: [recorder]}
          - {name: Bad, pattern: "bad", scenarios: [bad]}
        """,
        {"bad": "raise ImportError('nope')\n"},
    )
    assert runtime.on_message("hello", "alice", "bot", {"X-A": "1"}) == 200
    (session,) = runtime.sessions.values()
    event = session.namespace["events"][-1]
    assert (event.name, event.text, event.callerid, event.destination, event.headers) == (
        "MessageReceived", "hello", "alice", "bot", {"X-A": "1"},
    )
    assert runtime.on_message("x", "alice", "nobody", {}) == 404
    assert runtime.on_message("x", "alice", "bad", {}) == 500


# -- the API's context -----------------------------------------------------------


async def test_api_outside_a_session_raises_a_clear_error() -> None:
    """Check the scenario API used outside a session raises RuntimeError saying so."""
    message = "only available inside a running scenario session"
    calls: list[Callable[[], object]] = [
        VoxEngine.terminate,
        VoxEngine.custom_data,
        lambda: VoxEngine.session_id,
        lambda: VoxEngine.add_event_listener("Started", print),
        lambda: VoxEngine.call_conference("conf_1"),
        lambda: VoxEngine.call_sip("sip:bob@example.com"),
        lambda: Logger.write("x"),
        lambda: set_timeout(print, 1),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match=message):
            call()
    with pytest.raises(RuntimeError, match=message):
        await Net.http_request("http://127.0.0.1:9/")


async def test_concurrent_sessions_keep_their_own_state(env: Env) -> None:
    """Check two sessions whose coroutines interleave (both are pending
    before either runs, and each yields between reads) each see their own
    custom_data and session_id at every step."""
    runtime = env.runtime(
        'rules: [{name: Api, pattern: "api", scenarios: [reader]}]',
        {"reader": """
            import asyncio
            from engine.runtime.scenario import AppEvents, VoxEngine
            seen = []

            async def on_started(e):
                for _ in range(5):
                    seen.append((VoxEngine.custom_data(), VoxEngine.session_id))
                    await asyncio.sleep(0)

            VoxEngine.add_event_listener(AppEvents.Started, on_started)
        """},
    )
    rule = runtime.rules.rules[0]
    a = runtime.start_session(rule, "a")
    b = runtime.start_session(rule, "b")
    assert len(a.tasks) == len(b.tasks) == 1  # both pending: they will interleave
    await until(lambda: len(a.namespace["seen"]) == len(b.namespace["seen"]) == 5)
    assert a.namespace["seen"] == [("a", a.id)] * 5
    assert b.namespace["seen"] == [("b", b.id)] * 5


# -- timers --------------------------------------------------------------------------


async def test_set_timeout_runs_in_the_session_and_clear_timeout_cancels(env: Env) -> None:
    """Check set_timeout callbacks (function or coroutine function) run in
    their session's context, and a cleared timer never runs."""
    runtime = env.runtime(
        'rules: [{name: Api, pattern: "api", scenarios: [timers]}]',
        {"timers": """
            from engine.runtime.scenario import AppEvents, VoxEngine, clear_timeout, set_timeout
            fired = []

            async def later():
                fired.append(("coroutine", VoxEngine.custom_data()))

            def on_started(e):
                cancelled = set_timeout(lambda: fired.append("cancelled"), 0)
                set_timeout(lambda: fired.append(("plain", VoxEngine.session_id)), 1)
                VoxEngine.set_timeout(later, 2)
                clear_timeout(cancelled)

            VoxEngine.add_event_listener(AppEvents.Started, on_started)
        """},
    )
    session = runtime.start_session(runtime.rules.rules[0], "data")
    fired = session.namespace["fired"]
    await until(lambda: len(fired) == 2)
    assert sorted(fired) == [("coroutine", "data"), ("plain", session.id)]
    assert session.timers == set()


async def test_termination_cancels_timers_and_tasks(env: Env) -> None:
    """Check terminate() cancels pending timers, running coroutine handlers
    and tasks the scenario started."""
    runtime = env.runtime(
        'rules: [{name: Api, pattern: "api", scenarios: [pending]}]',
        {"pending": """
            import asyncio
            from engine.runtime.scenario import AppEvents, VoxEngine, set_timeout
            state = []
            timers = []

            async def waiter(label):
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    state.append(label)
                    raise

            async def on_started(e):
                timers.append(set_timeout(lambda: state.append("timer fired"), 60_000))
                asyncio.get_running_loop().create_task(waiter("task cancelled"))
                await waiter("handler cancelled")

            VoxEngine.add_event_listener(AppEvents.Started, on_started)
        """},
    )
    session = runtime.start_session(runtime.rules.rules[0])
    await until(lambda: session.namespace["timers"] and len(session.tasks) == 2)
    session.terminate()
    await until(lambda: len(session.namespace["state"]) == 2)
    assert sorted(session.namespace["state"]) == ["handler cancelled", "task cancelled"]
    (timer,) = session.namespace["timers"]
    assert timer.cancelled() and session.timers == set()
    assert session.error is None


# -- idle ----------------------------------------------------------------------------


async def test_session_ends_when_its_calls_have_ended(env: Env) -> None:
    """Check a session whose calls all ended terminates after idle_timeout."""
    runtime = env.runtime('rules: [{name: In, pattern: "in", scenarios: [answer]}]',
                          idle_timeout=0.01)
    call = incoming(runtime, "in")
    session = session_of(call)
    call.remote_hangup()
    assert not session.terminated  # not at once: after the idle timeout
    await until(lambda: session.terminated)
    assert any("no calls for" in line for line in runtime.read_log(session.id))


async def test_a_new_call_cancels_the_idle_timer(env: Env) -> None:
    """Check a call adopted while the idle timer runs keeps the session
    alive, and the session ends once that call has ended too."""
    runtime = env.runtime(
        'rules: [{name: In, pattern: "in", scenarios: [redial]}]',
        {"redial": """
            from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine

            def on_alerting(e):
                e.call.answer()
                e.call.add_event_listener(
                    CallEvents.Disconnected, lambda ev: VoxEngine.call_sip("sip:bob@example.com")
                )

            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
        idle_timeout=0.01,
    )
    call = incoming(runtime, "in")
    session = session_of(call)
    call.remote_hangup()
    ((how, outbound),) = env.ua.calls
    assert how == "sip" and outbound in session.calls
    await asyncio.sleep(0.05)  # several idle timeouts
    assert not session.terminated
    outbound.remote_hangup()
    await until(lambda: session.terminated)


async def test_a_session_without_calls_ends_when_idle(env: Env) -> None:
    """Check a session started without a call (start_session) that makes
    none ends after idle_timeout instead of living forever."""
    runtime = env.runtime('rules: [{name: Api, pattern: "api", scenarios: [recorder]}]',
                          idle_timeout=0.01)
    session = runtime.start_session(runtime.rules.rules[0])
    await until(lambda: session.terminated)
    assert names(session.namespace["events"]) == ["Started", "Terminating", "Terminated"]


# -- outbound calls ----------------------------------------------------------------


async def test_outbound_calls_belong_to_the_session(env: Env) -> None:
    """Check call_sip, call_pstn and call_user go to the user agent with the
    session as dispatcher, and their listeners run in that session."""
    runtime = env.runtime(
        'rules: [{name: Api, pattern: "api", scenarios: [dialer]}]',
        {"dialer": """
            from engine.runtime.scenario import AppEvents, CallEvents, VoxEngine
            seen = []

            def on_started(e):
                for call in (
                    VoxEngine.call_sip("sip:bob@example.com", callerid="me"),
                    VoxEngine.call_pstn("+15550100", "5550000", headers={"X-T": "1"}),
                    VoxEngine.call_user("carol", display_name="Me"),
                ):
                    call.add_event_listener(
                        CallEvents.Connected, lambda ev: seen.append((ev.call.number, VoxEngine.session_id))
                    )

            VoxEngine.add_event_listener(AppEvents.Started, on_started)
        """},
    )
    runtime.dial_policy = DialPolicy(allow=(r"\+[0-9]+",))  # serve allows nothing until --dial-allow
    session = runtime.start_session(runtime.rules.rules[0])
    assert [(how, c.number, c.callerid) for how, c in env.ua.calls] == [
        ("sip", "sip:bob@example.com", "me"),
        ("pstn", "+15550100", "5550000"),
        ("user", "carol", "callbridge"),
    ]
    for _, call in env.ua.calls:
        assert call.dispatcher is session and call in session.calls
        call.remote_answer()
    assert session.namespace["seen"] == [
        ("sip:bob@example.com", session.id), ("+15550100", session.id), ("carol", session.id),
    ]
    assert env.ua.calls[1][1].headers == {"X-T": "1"}


async def test_outbound_calls_without_a_user_agent(env: Env) -> None:
    """Check call_sip in a runtime without a user agent raises CallError."""
    runtime = env.runtime(
        'rules: [{name: Api, pattern: "api", scenarios: [dialer]}]',
        {"dialer": """
            from engine.calls.call import CallError
            from engine.runtime.scenario import AppEvents, Logger, VoxEngine

            def on_started(e):
                try:
                    VoxEngine.call_sip("sip:bob@example.com")
                except CallError as exc:
                    Logger.write(f"CallError: {exc}")

            VoxEngine.add_event_listener(AppEvents.Started, on_started)
        """},
    )
    runtime.ua = None
    session = runtime.start_session(runtime.rules.rules[0])
    assert any("CallError: " in line for line in runtime.read_log(session.id))


# -- call_conference -----------------------------------------------------------------


async def conference_pair(env: Env) -> tuple[ScenarioRuntime, Session, Session, InternalCall, InternalCall]:
    """One gatekeeper session joined to conference conf_1: (runtime,
    gatekeeper, conference, gatekeeper's leg, conference's leg)."""
    runtime = env.runtime(CONFERENCE_RULES)
    gate = session_of(incoming(runtime, "join", headers={"X-Conf": "1"}))
    await until(lambda: runtime.conference_session("conf_1") is not None
                and runtime.conference_session("conf_1").namespace["legs"])  # type: ignore[union-attr]
    conference = runtime.conference_session("conf_1")
    assert conference is not None
    return runtime, gate, conference, gate.namespace["leg"], conference.namespace["legs"][0]


async def test_two_callers_reach_the_same_conference_session(env: Env) -> None:
    """Check two sessions calling one conference name reach ONE conference
    session, which gets two CallAlerting events whose internal legs carry the
    callers' id, display name and headers, each leg paired with its caller's."""
    runtime = env.runtime(CONFERENCE_RULES)
    alice = session_of(incoming(runtime, "join1", "alice", "Alice", {"X-Conf": "1"}))
    bob = session_of(incoming(runtime, "join2", "bob", "Bob", {"X-Conf": "1"}))
    conference = runtime.conference_session("conf_1")
    assert conference is not None and conference not in (alice, bob)
    await until(lambda: len(conference.namespace["alerts"]) == 2)
    assert len(runtime.sessions) == 3
    assert runtime.directory.conference_owner("conf_1") == ("node1", conference.id)
    first, second = conference.namespace["alerts"]
    assert [(e.callerid, e.display_name, e.headers, e.destination) for e in (first, second)] == [
        ("alice", "Alice", {"X-ClientType": "web"}, "conf_1"),
        ("bob", "Bob", {"X-ClientType": "web"}, "conf_1"),
    ]
    for event, caller in ((first, alice), (second, bob)):
        assert isinstance(event.call, InternalCall)
        assert (event.call.direction, event.call.state) == ("inbound", CallState.ALERTING)
        leg = caller.namespace["leg"]
        assert isinstance(leg, InternalCall) and event.call.peer is leg
        assert event.call.dispatcher is conference
        assert leg.dispatcher is caller and leg.state == CallState.PROGRESSING


async def test_answering_connects_the_callers_leg(env: Env) -> None:
    """Check answering the conference's leg gives Connected on both legs."""
    _, gate, conference, leg, conf_leg = await conference_pair(env)
    await conf_leg.answer()
    assert names(gate.namespace["leg_events"]) == ["Connected"]
    assert names(conference.namespace["events"]) == ["Connected"]
    assert leg.state == conf_leg.state == CallState.CONNECTED


async def test_messages_and_info_cross_between_sessions(env: Env) -> None:
    """Check send_message and send_info on one leg arrive as MessageReceived
    and InfoReceived on the other, both ways."""
    _, gate, conference, leg, conf_leg = await conference_pair(env)
    await conf_leg.answer()
    leg.send_message("hello", {"X-M": "1"})
    conf_leg.send_message("welcome")
    leg.send_info("application/json", "{}")
    conf_leg.send_info("text/plain", b"back")
    assert [(e.name, e.text, e.body) for e in conference.namespace["events"][1:]] == [
        ("MessageReceived", "hello", None), ("InfoReceived", None, b"{}"),
    ]
    assert conference.namespace["events"][1].headers == {"X-M": "1"}
    assert [(e.name, e.text, e.body) for e in gate.namespace["leg_events"][1:]] == [
        ("MessageReceived", "welcome", None), ("InfoReceived", None, b"back"),
    ]


@pytest.mark.parametrize("side", ["caller", "conference"])
async def test_hangup_disconnects_the_other_session(env: Env, side: str) -> None:
    """Check a hangup on either leg gives Disconnected on the other session's leg."""
    _, gate, conference, leg, conf_leg = await conference_pair(env)
    await conf_leg.answer()
    (leg if side == "caller" else conf_leg).hangup()
    assert [(e.name, e.code) for e in gate.namespace["leg_events"][1:]] == [("Disconnected", 200)]
    assert [(e.name, e.code) for e in conference.namespace["events"][1:]] == [("Disconnected", 200)]


async def test_reject_fails_the_callers_leg_with_the_code(env: Env) -> None:
    """Check rejecting the conference's leg gives Failed with that code on the caller's leg."""
    _, gate, _, leg, conf_leg = await conference_pair(env)
    conf_leg.reject(403)
    assert [(e.name, e.code) for e in gate.namespace["leg_events"]] == [("Failed", 403)]
    assert leg.state == CallState.FAILED


async def test_conference_sessions_talk_back_synchronously(env: Env) -> None:
    """Check two sessions that answer each other's messages from their
    listeners (each call crossing back into a session whose listener is still
    running) work, and neither session fails."""
    runtime = env.runtime(
        CONFERENCE_RULES,
        {
            "conference": """
                from engine.calls.call import CallEvents
                from engine.runtime.scenario import AppEvents, VoxEngine

                def on_alerting(e):
                    call = e.call
                    call.add_event_listener(
                        CallEvents.MessageReceived, lambda ev: call.send_message("echo " + ev.text)
                    )
                    call.answer()

                VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
            """,
            "gatekeeper": """
                from engine.calls.call import CallEvents
                from engine.runtime.scenario import AppEvents, VoxEngine
                heard = []

                def on_alerting(e):
                    e.call.answer()
                    leg = VoxEngine.call_conference("conf_9")
                    leg.add_event_listener(CallEvents.Connected, lambda ev: leg.send_message("ping"))

                    def on_message(ev):
                        heard.append((ev.text, VoxEngine.session_id))
                        if ev.text == "echo ping":
                            leg.send_message("pong")

                    leg.add_event_listener(CallEvents.MessageReceived, on_message)

                VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
            """,
        },
    )
    gate = session_of(incoming(runtime, "join"))
    await until(lambda: len(gate.namespace["heard"]) == 2)
    conference = runtime.conference_session("conf_9")
    assert conference is not None
    assert gate.namespace["heard"] == [("echo ping", gate.id), ("echo pong", gate.id)]
    assert gate.error is None and conference.error is None
    assert not gate.terminated and not conference.terminated


async def test_conference_name_is_released_when_its_session_ends(env: Env) -> None:
    """Check that when the conference session terminates its legs end, its
    name is released, and the next call_conference starts a new session."""
    runtime, gate, conference, leg, conf_leg = await conference_pair(env)
    await conf_leg.answer()
    conference.terminate()
    assert [(e.name, e.code) for e in gate.namespace["leg_events"]] == [
        ("Connected", None), ("Disconnected", 200),
    ]
    assert runtime.directory.conference_owner("conf_1") is None
    assert runtime.conference_session("conf_1") is None
    again = session_of(incoming(runtime, "join", headers={"X-Conf": "1"}))
    fresh = runtime.conference_session("conf_1")
    assert fresh is not None and fresh is not conference
    await until(lambda: len(fresh.namespace["alerts"]) == 1)
    assert fresh.namespace["alerts"][0].call.peer is again.namespace["leg"]


async def test_conference_without_a_rule_is_a_call_error(env: Env) -> None:
    """Check call_conference for a name no rule matches raises CallError."""
    runtime = env.runtime(
        'rules: [{name: Api, pattern: "api", scenarios: [lost]}]',
        {"lost": """
            from engine.calls.call import CallError
            from engine.runtime.scenario import AppEvents, Logger, VoxEngine

            def on_started(e):
                try:
                    VoxEngine.call_conference("nowhere")
                except CallError as exc:
                    Logger.write(f"CallError: {exc}")

            VoxEngine.add_event_listener(AppEvents.Started, on_started)
        """},
    )
    session = runtime.start_session(runtime.rules.rules[0])
    assert any(line.endswith("CallError: no rule matches conference 'nowhere'")
               for line in runtime.read_log(session.id))
    assert session.calls == set() and runtime.directory.conference_owner("nowhere") is None


async def test_conference_that_fails_to_load_fails_the_callers_leg(env: Env) -> None:
    """Check a conference scenario raising at import gives the caller's leg
    Failed 500, leaves no owner for the name and the caller's session running."""
    runtime = env.runtime(CONFERENCE_RULES, {"conference": "raise RuntimeError('bad conference')\n"})
    gate = session_of(incoming(runtime, "join"))
    await until(lambda: gate.namespace["leg_events"])
    assert [(e.name, e.code) for e in gate.namespace["leg_events"]] == [("Failed", 500)]
    assert runtime.directory.conference_owner("conf_1") is None
    assert not gate.terminated and gate.error is None


async def test_caller_hanging_up_at_once_leaves_no_dangling_leg(env: Env) -> None:
    """Check a caller that hangs up its conference leg before the conference
    saw it: the conference gets no CallAlerting for the dead leg, keeps no
    call, and ends when idle."""
    runtime = env.runtime(
        CONFERENCE_RULES,
        {"gatekeeper": """
            from engine.runtime.scenario import AppEvents, VoxEngine

            def on_alerting(e):
                VoxEngine.call_conference("conf_1").hangup()

            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
        idle_timeout=0.01,
    )
    incoming(runtime, "join")
    conference = runtime.conference_session("conf_1")
    assert conference is not None
    await until(lambda: conference.terminated)
    assert conference.namespace["alerts"] == [] and conference.calls == set()


async def test_conference_owned_by_another_node(env: Env) -> None:
    """Check a conference claimed by another node is not taken over: the
    caller gets CallError and no local session starts."""
    runtime = env.runtime(CONFERENCE_RULES)
    runtime.directory.claim_conference("conf_1", "node2", "remote-session")
    gate = session_of(incoming(runtime, "join"))
    assert gate.terminated and gate.error is not None and "node2" in gate.error
    assert runtime.directory.conference_owner("conf_1") == ("node2", "remote-session")
    assert [s.rule.name for s in runtime.sessions.values()] == []


# -- logs ----------------------------------------------------------------------------


async def test_logger_lines_are_in_read_log_and_the_log_file(env: Env) -> None:
    """Check Logger.write lines are tagged with the session id, readable with
    read_log while the session runs and from the file after it ended."""
    runtime = env.runtime(
        'rules: [{name: Api, pattern: "api", scenarios: [talks]}]',
        {"talks": """
            from engine.runtime.scenario import AppEvents, Logger, VoxEngine
            VoxEngine.add_event_listener(AppEvents.Started, lambda e: Logger.write("hello, log"))
        """},
    )
    session = runtime.start_session(runtime.rules.rules[0])
    running = runtime.read_log(session.id)
    assert any(line.endswith(f"session={session.id} hello, log") for line in running)
    session.terminate()
    ended = runtime.read_log(session.id)
    assert ended[: len(running)] == running and ended[-1].endswith("terminated")
    text = daily_log(env)
    assert f"session={session.id} hello, log" in text
    runtime.logs.forget_ended()  # evicted from memory: read back from the file
    assert runtime.read_log(session.id) == ended
    with pytest.raises(KeyError):
        runtime.read_log("no-such-session")


def daily_log(env: Env, session_id: str | None = None) -> str:
    """The text of the daily session log files (only ``session_id``'s lines),
    once the buffered lines are written (they reach the file within
    ``SessionLogs.FLUSH_AFTER``)."""
    for runtime in env.runtimes:
        runtime.logs.flush()
    text = "".join(p.read_text() for p in sorted(env.log_dir.glob("sessions-*.log")))
    if session_id is None:
        return text
    return "".join(ln + "\n" for ln in text.splitlines() if f" session={session_id} " in ln)


async def test_read_log_without_a_log_dir_after_the_end(env: Env) -> None:
    """Check a runtime without log_dir still answers read_log for a session
    that has just ended."""
    rules = env.rules('rules: [{name: Api, pattern: "api", scenarios: [recorder]}]')
    runtime = ScenarioRuntime(rules, env.dir, ua=env.ua, directory=MemoryDirectory())
    env.runtimes.append(runtime)
    session = runtime.start_session(rules.rules[0])
    session.terminate()
    assert runtime.read_log(session.id)[-1].endswith("terminated")


async def test_stop_terminates_every_session(env: Env) -> None:
    """Check stop() terminates all sessions, ending their calls."""
    runtime = env.runtime('rules: [{name: In, pattern: "in", scenarios: [answer]}]')
    calls = [incoming(runtime, "in") for _ in range(3)]
    await runtime.stop()
    assert runtime.sessions == {}
    assert all(call.state == CallState.DISCONNECTED for call in calls)


async def test_listener_removal_on_the_session(env: Env) -> None:
    """Check VoxEngine.remove_event_listener removes one handler, also a
    bound method (a new object at each attribute access)."""
    runtime = env.runtime(
        'rules: [{name: Api, pattern: "api", scenarios: [fickle]}]',
        {"fickle": """
            from engine.runtime.scenario import AppEvents, VoxEngine
            seen = []

            class Handlers:
                def keep(self, e):
                    seen.append("keep")

                def drop(self, e):
                    seen.append("drop")

            handlers = Handlers()
            VoxEngine.add_event_listener(AppEvents.Started, handlers.keep)
            VoxEngine.add_event_listener(AppEvents.Started, handlers.drop)
            VoxEngine.remove_event_listener(AppEvents.Started, handlers.drop)
        """},
    )
    assert runtime.start_session(runtime.rules.rules[0]).namespace["seen"] == ["keep"]


async def test_session_log_lines_reach_the_file_within_the_flush_delay(tmp_path: Path) -> None:
    """Check lines are buffered, not written one system call each, and
    reach the daily file by themselves FLUSH_AFTER later; a read of the
    files writes them first."""
    from engine.runtime.records import SessionLogs

    logs = SessionLogs(tmp_path)
    logs.FLUSH_AFTER = 0.05
    logs.append("s1", "2026-12-05T00:00:00 session=s1 first")
    logs.append("s1", "2026-12-05T00:00:00 session=s1 second")

    def on_disk() -> str:
        return "".join(p.read_text() for p in tmp_path.glob("sessions-*.log"))

    assert on_disk() == ""
    for _ in range(100):
        await asyncio.sleep(0.02)
        if on_disk():
            break
    assert on_disk().splitlines() == ["2026-12-05T00:00:00 session=s1 first",
                                      "2026-12-05T00:00:00 session=s1 second"]
    logs.append("s2", "2026-12-05T00:00:01 session=s2 third")
    assert logs.read("s2") == ["2026-12-05T00:00:01 session=s2 third"]
    logs.close()


async def test_session_keeps_the_last_log_lines_in_memory(env: Env) -> None:
    """Check a session's in-memory log (a plain list since bench/memory
    showed a deque's block per session) keeps the last LOG_LINES_KEPT lines,
    oldest first, and read_log returns them."""
    from engine.runtime.session import LOG_LINES_KEPT

    runtime = env.runtime(
        'rules: [{name: Api, pattern: "api", scenarios: [quiet]}]',
        {"quiet": """
            from engine.runtime.scenario import VoxEngine
        """},
    )
    session = runtime.start_session(runtime.rules.rules[0])
    for i in range(LOG_LINES_KEPT + 5):
        session.write_log(f"line {i}")
    lines = runtime.read_log(session.id)
    assert len(lines) == LOG_LINES_KEPT
    assert lines[0].endswith(" line 5") and lines[-1].endswith(f" line {LOG_LINES_KEPT + 4}")
