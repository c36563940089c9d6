"""Tests for the scenario harness (:mod:`engine.testing`), driving the
example application in ``tests/harness/app`` (a phone PIN gate, a web gate,
a conference room and a callback dialer) and small scenarios of their own.

Each test is what a scenario author would write: plain ``def`` tests on the
``callbridge`` fixture, no sockets, no sleeping, virtual time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.calls.call import CallError, CallEvents, CallState, InternalCall
from engine.testing import App, Harness

APP = Path(__file__).parent / "app"
ROOT = Path(__file__).parents[2]
SCENARIOS = Path(__file__).parents[1] / "scenarios"

PROMPT = "Welcome. Please enter your conference PIN, then press the pound key."


@pytest.fixture
def app(callbridge: Harness) -> App:
    """The example application; the rooms API knows room 1234 only."""
    app = callbridge.load(APP)
    app.http.respond("http://api.example/rooms/1234", json={"id": "1234"})
    app.http.respond("http://api.example/rooms/*", status=404)
    return app


# -- the shipped application ----------------------------------------------------------


def test_shipped_echo_answers_and_hangs_up_after_a_second(callbridge: Harness) -> None:
    """Check the repository's own rules.yaml and scenarios/ load as they
    are: a call to 100 is answered, logged, and hung up by the scenario one
    (virtual) second later."""
    app = callbridge.load(ROOT)
    call = app.incoming_call("100", callerid="alice")
    assert call.connected
    assert call.logged("call from alice to 100")
    call.wait(0.9)
    assert call.connected
    call.wait(0.1)
    assert call.ended_with(200) and call.reason == "Hangup"


# -- the phone PIN gate ---------------------------------------------------------------


def test_right_pin_joins_the_conference(app: App) -> None:
    """Check the happy path: the caller hears the prompt, enters 1234#, is
    told so and joins conf_1234, whose session answered it; media flows
    both ways between the caller and the conference."""
    call = app.incoming_call("5550100", callerid="+15551234567")
    assert call.state == CallState.CONNECTED
    assert call.heard_speech("enter your conference PIN")
    call.press("1234#")
    assert call.heard_speech("joining the conference")
    assert call.joined("conf_1234")
    assert call.conferences == ["conf_1234"]
    assert app.flows.between(call, "conf_1234")
    assert app.conference("conf_1234").participants == ["+15551234567"]
    assert [r.url for r in app.http.requests] == ["http://api.example/rooms/1234"]
    assert call.logged("PIN 1234: rooms API answered 200")
    assert call.logged("joined conf_1234")
    assert "[Fwd] +15551234567 joins (pstn)" in app.log


def test_prompts_play_out_on_the_virtual_clock(app: App) -> None:
    """Check speech lasts its estimated length on the virtual clock: the
    caller's next action comes once the prompt is over."""
    call = app.incoming_call("+15550100")
    assert call.said == [PROMPT]
    assert app.now == pytest.approx(call.speech[0].duration)
    assert call.speech[0].completed is True


def test_three_wrong_pins_end_the_call(app: App) -> None:
    """Check three wrong PINs: each is refused, then the scenario says
    goodbye and hangs up (200), and nobody joins anything."""
    call = app.incoming_call("5550100")
    for pin in ("1111#", "2222#", "3333#"):
        call.press(pin)
    assert call.said.count("That PIN is not valid. Please try again.") == 3
    assert call.said[-1] == "Too many attempts. Goodbye."
    assert call.ended_with(200)
    assert call.reason == "Hangup"
    assert not call.joined("conf_1111")
    assert len(app.http.requests) == 3


def test_silence_times_out(app: App) -> None:
    """Check the ten-second PIN timeout: nothing happens until the caller
    waits, and then the scenario says goodbye and hangs up at once."""
    call = app.incoming_call("5550100")
    start = app.now
    call.wait(9.9)
    assert call.connected and call.said == [PROMPT]
    call.wait(0.2)
    assert call.heard_speech("did not receive a PIN")
    call.wait()
    assert call.ended_with(200)
    assert call.speech[-1].at == pytest.approx(start + 10.0)


def test_session_ends_when_its_calls_have(app: App) -> None:
    """Check the caller hanging up mid-PIN ends the scenario's session
    (its Disconnected listener terminates it)."""
    call = app.incoming_call("5550100")
    session = call.session
    assert session is not None and not session.terminated
    call.hang_up()
    assert call.ended_with(200) and call.reason == "BYE"
    assert session.terminated
    assert app.runtime.sessions == {}


def test_digits_before_tone_handling_are_lost_and_reported(callbridge: Harness) -> None:
    """Check digits pressed while the scenario handles no tones are not
    heard (as on a real call), and the transcript says so."""
    app = callbridge.load_text(
        'rules: [{name: In, pattern: "in", scenarios: [deaf]}]',
        {"deaf": """
            from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine

            def on_alerting(e):
                e.call.add_event_listener(CallEvents.ToneReceived, lambda ev: Logger.write(ev.tone))
                e.call.answer()

            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
    )
    call = app.incoming_call("in")
    call.press("12")
    assert call.log[-1].startswith("call ")  # no tone logged
    assert "(the scenario did not hear '12': tone handling was off)" in [e.text for e in call.transcript]


def test_dtmf_by_info_goes_through_the_engine_parser(callbridge: Harness) -> None:
    """Check ``press(mode="info")`` delivers digits as SIP INFO bodies that
    the engine parses (tests/scenarios/collect_dtmf.py logs their mode)."""
    app = callbridge.load_text(
        'rules: [{name: In, pattern: "in", scenarios: [collect_dtmf]}]',
        {"collect_dtmf": (SCENARIOS / "collect_dtmf.py").read_text()},
    )
    call = app.incoming_call("in")
    call.press("4", mode="info")
    call.press("2#")
    assert call.log[-4:] == ["tone 4 info", "tone 2 rfc4733", "tone # rfc4733", "digits '42'"]


# -- the web gate, the room, dialing out -------------------------------------------------


def test_web_client_waits_on_hold_then_joins(app: App) -> None:
    """Check the web gate: hold tone as early media while the conference
    answers, then the web call is answered and joins conf_77; the room
    tells it who is in."""
    web = app.incoming_call("joinconf", callerid="ann", transport="web",
                            headers={"X-Conference-Id": "77"})
    assert web.leg.kind == "web"
    assert web.heard_playback("tone 425 Hz")
    assert web.played[0].duration is None  # endless hold tone
    assert web.played[0].completed is False  # stopped at the answer
    assert web.connected and web.joined("conf_77")
    assert web.received_message(json={"type": "participants", "names": ["ann"]})


def test_phone_and_web_in_one_conference(app: App) -> None:
    """Check a phone caller and a web client with the same room share the
    ONE conference session, and the web client hears of the phone caller."""
    web = app.incoming_call("joinconf", callerid="ann", transport="web",
                            headers={"X-Conference-Id": "1234"})
    phone = app.incoming_call("5550100", callerid="+15551234567")
    phone.press("1234#")
    assert phone.joined("conf_1234") and web.joined("conf_1234")
    conf = app.conference("conf_1234")
    assert sorted(conf.participants) == ["+15551234567", "ann"]
    assert len(conf.legs) == 2 and all(isinstance(leg, InternalCall) for leg in conf.legs)
    assert web.messages[-1].json() == {"type": "participants", "names": ["ann", "+15551234567"]}
    phone.hang_up()
    assert web.messages[-1].json() == {"type": "participants", "names": ["ann"]}
    assert app.conference("conf_1234").participants == ["ann"]


def test_dial_out_busy_is_reported_to_the_web_client(app: App) -> None:
    """Check a participant dial-out that meets 486: the room places a PSTN
    call, the callee is busy, and the web client is told."""
    web = app.incoming_call("joinconf", callerid="ann", transport="web",
                            headers={"X-Conference-Id": "9"})
    web.send_message("CALL_PARTICIPANT 5551234")
    callee = app.callee("5551234")
    assert callee.how == "pstn" and callee.leg.callerid == "5550100"
    assert callee.state == CallState.PROGRESSING
    callee.busy()
    assert callee.ended_with(486)
    assert web.received_message(json={"type": "dial_failed", "number": "5551234", "code": 486})
    assert app.conference("conf_9").log[-1] == "dial-out to 5551234 failed: 486"


def test_web_call_without_conference_id_is_rejected(app: App) -> None:
    """Check the web gate refuses a call with no X-Conference-Id with 404."""
    web = app.incoming_call("joinconf", transport="web")
    assert web.ended_with(404)
    assert web.state == CallState.FAILED


def test_callback_answered_hears_its_greeting(app: App) -> None:
    """Check the callback dialer: two seconds after the caller was told, it
    calls back with X-Reason; the callee answers and is greeted."""
    call = app.incoming_call("callback", headers={"X-Callback": "5559876"})
    assert call.ended_with(200) and call.said == ["We will call you back in a moment."]
    with pytest.raises(AssertionError, match="^expected the scenario to place a call to 5559876; it dialed nobody$"):
        app.callee("5559876")
    app.wait(2)
    callee = app.callee("5559876")
    assert callee.invite_headers == {"X-Reason": "callback"}
    callee.ring()
    callee.answer()
    assert callee.heard_speech("this is your callback")
    callee.hang_up()
    assert callee.ended_with(200)


def test_callback_to_a_busy_line_fails_with_486(app: App) -> None:
    """Check the dialer's failure path: the callee rejects with 486 and the
    scenario logs the code and reason, then ends its session."""
    app.incoming_call("callback", headers={"X-Callback": "5559876"})
    app.wait(2)
    callee = app.callee("5559876")
    callee.reject(486)
    assert callee.ended_with(486)
    assert callee.logged("callback to 5559876 failed: 486 Busy Here")
    assert callee.session is not None and callee.session.terminated


def test_unanswered_outbound_call_times_out_with_408(app: App) -> None:
    """Check a callee that never answers fails with 408 after the user
    agent's INVITE timeout (60 s), on the virtual clock."""
    app.incoming_call("callback", headers={"X-Callback": "5559876"})
    app.wait(2)
    callee = app.callee()
    dialed_at = app.now
    app.wait()
    assert callee.ended_with(408) and callee.reason == "No Answer"
    assert callee.transcript[-2].at == pytest.approx(dialed_at + 60)


# -- fidelity and failures ---------------------------------------------------------------------


def test_no_rule_answers_404_and_a_caller_can_give_up(callbridge: Harness) -> None:
    """Check a number no rule matches is refused with 404, and a caller
    hanging up while the scenario only rings cancels (487), which the
    scenario sees (tests/scenarios/ring_only.py)."""
    app = callbridge.load_text(
        'rules: [{name: Ring, pattern: "ring", scenarios: [ring_only]}]',
        {"ring_only": (SCENARIOS / "ring_only.py").read_text()},
    )
    assert app.incoming_call("nobody").ended_with(404)
    call = app.incoming_call("ring")
    assert call.state == CallState.ALERTING
    assert [e.text for e in call.transcript][-1] == "ringing (180)"
    call.hang_up()
    assert call.ended_with(487)
    assert call.log[-2] == "ended Disconnected 487 Cancelled"


def test_connected_comes_after_answer_returns(callbridge: Harness) -> None:
    """Check the leg emits Connected on a later turn than answer(), as a
    SIP leg does (at the ACK): a listener added after answer() still gets it."""
    app = callbridge.load_text(
        'rules: [{name: In, pattern: "in", scenarios: [late]}]',
        {"late": """
            from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine

            def on_alerting(e):
                e.call.answer()
                e.call.add_event_listener(CallEvents.Connected, lambda ev: Logger.write("connected"))

            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
    )
    call = app.incoming_call("in")
    assert call.logged("connected")


def test_scenario_error_ends_the_call_and_must_be_read(callbridge: Harness) -> None:
    """Check a scenario that raises: the call is refused with 500 as in
    serve, checks mention the error, and reading app.errors acknowledges it."""
    app = callbridge.load_text(
        'rules: [{name: In, pattern: "in", scenarios: [raises]}]',
        {"raises": (SCENARIOS / "raises.py").read_text()},
    )
    call = app.incoming_call("in")
    assert call.ended_with(500)
    verdict = call.heard_speech("hello")
    assert not verdict
    assert "the scenario failed: RuntimeError: scenario bug on purpose" in repr(verdict)
    assert app.errors == ["RuntimeError: scenario bug on purpose"]


def test_unread_errors_and_unregistered_urls_fail_at_close(tmp_path: Path) -> None:
    """Check closing the harness reports a scenario error nobody read (with
    its traceback) and an HTTP request no response was registered for."""
    harness = Harness(tmp_dir=lambda: tmp_path)
    app = harness.load_text(
        'rules: [{name: In, pattern: "in", scenarios: [fetch]}]',
        {"fetch": """
            from engine.runtime.scenario import AppEvents, Logger, Net, VoxEngine

            async def on_alerting(e):
                r = await Net.http_request("http://nowhere.example/x")
                Logger.write(f"code {r.code} {r.error}")
                raise ValueError("after fetching")

            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
    )
    call = app.incoming_call("in")
    assert call.logged("code 0 ClientConnectionError: no canned response for GET http://nowhere.example/x")
    with pytest.raises(AssertionError) as info:
        harness.close()
    text = str(info.value)
    assert "scenario of rule In failed: ValueError: after fetching" in text
    assert 'raise ValueError("after fetching")' in text  # the traceback
    assert "requested GET http://nowhere.example/x, which the test did not register" in text


def test_harness_works_outside_pytest_fixtures(tmp_path: Path) -> None:
    """Check a Harness used as a context manager (a script, another test
    runner) runs an application and closes its loop at the end."""
    with Harness(tmp_dir=lambda: tmp_path) as harness:
        app = harness.load(APP)
        app.http.respond("http://api.example/rooms/*", status=404)
        call = app.incoming_call("5550100")
        call.press("1#")
        assert call.heard_speech("not valid")
    assert harness.loop.is_closed()


def test_http_delay_beyond_the_timeout_times_out(callbridge: Harness) -> None:
    """Check a canned response slower than the request's timeout gives the
    scenario code 0 "timeout" after the timeout, in virtual time."""
    app = callbridge.load_text(
        'rules: [{name: In, pattern: "in", scenarios: [slow]}]',
        {"slow": """
            from engine.runtime.scenario import AppEvents, Logger, Net, VoxEngine

            async def on_alerting(e):
                e.call.answer()
                r = await Net.http_request("http://api.example/slow", method="POST", body="x", timeout=2)
                Logger.write(f"code {r.code} {r.error}")

            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
    )
    app.http.respond("http://api.example/slow", method="POST", text="late", delay=5)
    call = app.incoming_call("in")
    assert not call.logged("code")
    call.wait(2)
    assert call.logged("code 0 timeout")
    assert app.http.requests[0].body == "x"


def test_call_user_needs_a_registered_user(callbridge: Harness) -> None:
    """Check VoxEngine.call_user: an unregistered user is a CallError (as in
    serve), a registered one rings as a callee reached by "user", and a
    user logged in with the web SDK is rung in the browser first ("web")."""
    app = callbridge.load_text(
        'rules: [{name: In, pattern: "in", scenarios: [dial_user]}]',
        {"dial_user": """
            from engine.calls.call import CallError
            from engine.runtime.scenario import AppEvents, Logger, VoxEngine

            def on_alerting(e):
                try:
                    VoxEngine.call_user("bob")
                except CallError as exc:
                    Logger.write(f"refused: {exc}")

            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
    )
    first = app.incoming_call("in")
    assert first.logged("refused: user 'bob' is not registered")
    app.register_user("bob")
    app.incoming_call("in")
    assert app.callee("bob").how == "user"
    app.log_in_web_user("bob")  # a browser is rung before the phone, as in serve
    app.incoming_call("in")
    browser = app.callee("bob")
    assert browser.how == "web" and browser.leg.kind == "web"
    assert [c.how for c in app.dialed] == ["user", "web"]


def test_started_session_dials_the_trunk(callbridge: Harness) -> None:
    """Check a session started without a call (tests/scenarios/dial_trunk.py)
    dials through the trunk with its headers and logs the outcome."""
    app = callbridge.load_text(
        'rules: [{name: Dial, pattern: "dial", scenarios: [dial_trunk]}]',
        {"dial_trunk": (SCENARIOS / "dial_trunk.py").read_text()},
    )
    session = app.start("Dial", custom_data="5552222")
    callee = app.callee("5552222")
    assert callee.invite_headers == {"X-Test": "trunk"}
    callee.answer()
    callee.hang_up()
    assert app.log_of(session.id)[-3:] == ["connected", "ended Disconnected 200", "terminated"]
    with pytest.raises(ValueError, match="no rule named 'Nope'"):
        app.start("Nope")


def test_actions_that_the_call_state_forbids_say_why(app: App) -> None:
    """Check a test action the call's state does not allow fails with the
    state and what was last said, not a CallError from inside the engine."""
    call = app.incoming_call("5550100")
    call.press("1111#")
    call.hang_up()
    with pytest.raises(AssertionError) as info:
        call.send_message("hi")
    assert str(info.value) == (
        "the call cannot send a message: that needs a connected call; it ended DISCONNECTED 200 (BYE); "
        "last said: 'That PIN is not valid. Please try again.'"
    )
    with pytest.raises(ValueError, match="DTMF digits"):
        call.press("12x")


def test_verdict_messages_say_what_happened(app: App) -> None:
    """Check the text of failed checks: what was expected, what happened
    instead, and what the caller last heard."""
    call = app.incoming_call("5550100")
    call.press("42#")
    assert repr(call.joined("conf_42")) == (
        "expected the call to join conf_42, it joined nothing; it is CONNECTED; "
        "last said: 'That PIN is not valid. Please try again.'"
    )
    assert repr(call.heard_speech("goodbye")) == (
        "expected the call to hear 'goodbye'; it heard "
        "'Welcome. Please enter your conference PIN, then...', "
        "'That PIN is not valid. Please try again.'; it is CONNECTED"
    )
    assert repr(call.received_message("x")).startswith("expected the call to receive a message 'x'; messages: none")
    assert repr(call.ended_with(486)).startswith("expected the call to end with 486; it is CONNECTED")


def test_out_of_dialog_message_starts_a_session(app: App) -> None:
    """Check a MESSAGE outside a call is routed by the rules: 404 when none
    matches, 200 when a session starts for it."""
    assert app.send_message("nobody", "hello") == 404
    assert app.send_message("conf_5", "hello") == 200


def test_barge_in_acts_mid_prompt(app: App) -> None:
    """Check ``listen_to_prompts = False``: actions return while the prompt
    still plays, so the caller can type ahead of it."""
    app.listen_to_prompts = False
    call = app.incoming_call("5550100")
    assert app.now == 0.0 and call.speech[0].completed is None
    call.press("1")
    assert call.speech[0].completed is None
    app.wait(call.speech[0].duration)
    assert call.speech[0].completed is True


def test_internal_call_errors_reach_the_scenario_not_the_test(app: App) -> None:
    """Check an engine error from a scenario's own action (say on a call
    not yet answered) is the scenario's failure, reported as such."""
    harness = app.harness
    bad = harness.load_text(
        'rules: [{name: In, pattern: "in", scenarios: [early]}]',
        {"early": """
            from engine.runtime.scenario import AppEvents, VoxEngine

            def on_alerting(e):
                e.call.say("too early")

            VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
        """},
    )
    call = bad.incoming_call("in")
    assert call.ended_with(500)
    assert bad.errors == ["CallError: playback needs a connected call or early media, not ALERTING"]
    assert CallError.__name__ in bad.errors[0]
    assert CallEvents.Failed == "Failed"
    assert json.dumps(call.said) == "[]"
