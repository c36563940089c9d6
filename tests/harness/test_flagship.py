"""Unit tests of the flagship application as shipped: the repository's own
``rules.yaml`` and ``scenarios/`` (``pstn_gatekeeper``, ``gatekeeper``,
``conference``, ``p2p``), driven through the scenario harness.

Phone callers dial 5550100 and type a PIN; browsers call ``joinconf`` with
``X-Conference-Id``; both land in the one ``conf_<id>`` session, which
mixes them (``everyone``, ``phones``), tells browsers who is in and dials
participants out on request. Anything else dialed is a user name (rule
``P2P``): a browser's ``X-DirectCall`` call goes browser to browser, other
calls are bridged through the engine.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from engine.calls.call import CallState
from engine.runtime.dialout import DialPolicy
from engine.calls.grants import Grant
from engine.testing import App, Callee, Caller, Harness
from engine.testing.calls import estimate_speech

ROOT = Path(__file__).parents[2]

PROMPT = "Please enter your conference PIN, followed by the pound key."
RETRY = "Please enter your conference PIN again, followed by the pound key."
WRONG = "That PIN is not valid."
NO_PIN = "No PIN was entered."
REFUSED = "Sorry, we could not find your conference. Goodbye."
THROTTLED = "Too many attempts. Please try again later. Goodbye."
JOINED = "You have joined the conference."


@pytest.fixture
def app(callbridge: Harness) -> App:
    """The shipped application; room 1234 exists (``callbridge rooms create 1234``)."""
    app = callbridge.load(ROOT)
    app.open_room("1234")
    return app


def phone(app: App, callerid: str = "+15551234567", name: str | None = None,
          source: str = "192.0.2.10") -> Caller:
    """A phone caller on the conference number, at the PIN prompt."""
    call = app.incoming_call("5550100", callerid=callerid, name=name, source=source)
    assert call.said == [PROMPT]
    return call


def token(user: str, room: str, role: str = "guest", *extra: str) -> Grant:
    """What the engine grants a browser that logged in with a join token
    for ``room`` (``POST /api/v1/rooms/{room}/tokens``)."""
    perms = {"guest": ("mute_self",), "moderator": ("mute_self", "mute_others", "remove", "lock", "end")}[role]
    return Grant(identity=user, authenticated_by="join-token", room=room, admitted_by="join-token",
                 role=role, permissions=frozenset(perms + extra))


def browser(app: App, conference: str, user: str = "ann", grant: Grant | None = None) -> Caller:
    """A logged-in browser joining ``conf_<conference>``: a room with a join
    token for it allowing dial-out, a conference that is not a room as a guest."""
    if grant is None and app.store.get_room(conference) is not None:
        grant = token(user, conference, "guest", "dial_out")
    return app.incoming_call("joinconf", callerid=user, transport="web",
                             headers={"X-Conference-Id": conference}, grant=grant)


def participants(call: Caller) -> list[tuple[str, str]]:
    """(name, kind) of the last participant list a browser received."""
    lists = [m.json() for m in call.messages if m.json().get("type") == "PARTICIPANTS"]
    assert lists, f"no participant list among {[m.text for m in call.messages]}"
    return [(p["name"], p["kind"]) for p in lists[-1]["participants"]]


def notices(call: Caller, kind: str) -> list[dict[str, Any]]:
    """The messages of type ``kind`` a browser received, as JSON."""
    return [m.json() for m in call.messages if m.json().get("type") == kind]


# -- pstn_gatekeeper: phone dial-in by PIN -------------------------------------------------


def test_pin_of_an_open_room_joins_its_conference(app: App) -> None:
    """Check the happy path: the PIN of a created room, the caller joins
    conf_1234 (audio both ways with its mixers) and hears the conference
    welcome through it; the log names the try, never the digits."""
    call = phone(app)
    call.press("1234#")
    assert call.joined("conf_1234")
    assert call.heard_speech("You have joined")
    assert call.speech[-1].via == "conf_1234"  # said by the conference session, heard through the bridge
    assert app.flows.between(call, "conf_1234/everyone")
    assert app.flows.sends(call, "conf_1234/phones")  # browsers hear phones through this mixer
    assert app.conference("conf_1234").participants == ["+15551234567"]
    assert call.logged("PIN accepted for +15551234567 on try 1")
    assert "[Fwd] pstn participant +15551234567 joined (1 in)" in app.log
    assert not any("1234#" in line or "PIN 1234" in line for line in app.log)
    assert call.connected and app.errors == []


def test_pin_of_a_conference_a_browser_opened_joins_it(app: App) -> None:
    """Check a conference with no room but a browser in it is open: the
    phone joins, and the browser is told (participant list) and hears it."""
    web = browser(app, "777")
    call = phone(app)
    call.press("777#")
    assert call.joined("conf_777") and web.joined("conf_777")
    assert participants(web) == [("ann", "web"), ("+15551234567", "pstn")]
    assert app.flows.sends("conf_777/phones", web) and app.flows.sends(call, "conf_777/phones")
    assert app.flows.sends(web, "conf_777/everyone") and app.flows.sends("conf_777/everyone", call)


def test_phone_dialing_in_is_announced_to_browsers_inbound(app: App) -> None:
    """Check the tutorial's notices for a phone that dials in by PIN:
    browsers get CALL_PARTICIPANT_CONNECTED with ``inbound: true``, the
    phone's id, name and number (besides the participant list), and
    CALL_PARTICIPANT_DISCONNECTED when it hangs up."""
    web = browser(app, "777")
    call = phone(app)
    call.press("777#")
    assert call.joined("conf_777")
    (joined,) = notices(web, "CALL_PARTICIPANT_CONNECTED")
    assert joined == {"type": "CALL_PARTICIPANT_CONNECTED", "inbound": True, "id": joined["id"],
                      "name": "+15551234567", "number": "+15551234567"}
    roster = notices(web, "PARTICIPANTS")[-1]["participants"]
    assert joined["id"] in [p["id"] for p in roster if p["kind"] == "pstn"]
    call.hang_up()
    (left,) = notices(web, "CALL_PARTICIPANT_DISCONNECTED")
    assert left == {**joined, "type": "CALL_PARTICIPANT_DISCONNECTED"}
    assert participants(web) == [("ann", "web")]


def test_wrong_pin_three_times_is_refused_and_hung_up(app: App) -> None:
    """Check three wrong PINs: each is answered 'not valid' and asked
    again, then the caller is told the conference cannot be found and hung
    up; no conference is called, and the log has no digits."""
    call = phone(app)
    call.press("1111#")
    call.press("2222#")
    assert call.connected
    call.press("3333#")
    assert call.said == [PROMPT, WRONG, RETRY, WRONG, RETRY, WRONG, REFUSED]
    assert call.ended_with(200)
    assert not call.joined("conf_1234") and app.conference("conf_1111").session is None
    assert call.logged("wrong PIN from +15551234567: try 3 of 3 (4 digits)")
    assert call.logged("refused +15551234567 after 3 tries")
    assert not any(pin in line for line in app.log for pin in ("1111", "2222", "3333"))
    assert app.runtime.sessions == {}


def test_wrong_pin_then_right_one_joins(app: App) -> None:
    """Check a mistyped PIN can be corrected on the second try."""
    call = phone(app)
    call.press("1243#")
    assert call.heard_speech(WRONG) and call.said[-1] == RETRY
    call.press("1234#")
    assert call.joined("conf_1234") and call.logged("on try 2")


def test_silence_times_out_three_times(app: App) -> None:
    """Check the PIN timeout: nothing for 15 s after each prompt is 'no
    PIN', three times, then goodbye; the whole call takes its virtual time
    and no real time."""
    call = phone(app)
    prompt_end = app.now
    call.wait(14.9)
    assert call.said == [PROMPT]
    call.wait(0.2)
    assert call.said == [PROMPT, NO_PIN]
    assert call.speech[-1].at == pytest.approx(prompt_end + 15)
    call.wait()
    assert call.said == [PROMPT, NO_PIN, RETRY, NO_PIN, RETRY, NO_PIN, REFUSED]
    assert call.ended_with(200)
    assert call.logged("try 1 of 3 (0 digits)")


def test_first_digit_stops_the_pin_prompt_and_the_caller_joins(app: App) -> None:
    """Check barge-in on the PIN prompt: a caller who types during the
    prompt cuts it short at the first digit (the prompt is stopped at that
    virtual instant, not played out) and joins with the PIN typed."""
    app.listen_to_prompts = False
    call = app.incoming_call("5550100", callerid="+15551234567")
    prompt = call.speech[0]
    assert prompt.text == PROMPT and prompt.completed is None
    app.wait(1.0)
    call.press("1")
    assert prompt.completed is False and not call.leg.playing
    assert app.now == pytest.approx(prompt.at + 1.0) and prompt.duration > 1.0
    call.press("234#")
    assert call.joined("conf_1234") and call.logged("PIN accepted for +15551234567 on try 1")


def test_retry_prompt_is_barged_into_too(app: App) -> None:
    """Check barge-in on the second prompt: after a wrong PIN, the first
    digit typed stops 'enter your PIN again', and the right PIN joins."""
    app.listen_to_prompts = False
    call = app.incoming_call("5550100")
    call.press("9#")
    app.wait(estimate_speech(WRONG) + 0.5)
    retry = call.speech[-1]
    assert retry.text == RETRY and retry.completed is None
    call.press("1234#")
    assert retry.completed is False and call.joined("conf_1234")


def test_pin_timeout_counts_from_the_end_of_the_prompt(app: App) -> None:
    """Check the 15 s to start typing begin when the barge-in prompt ends,
    not when it starts (a long prompt does not eat the caller's time)."""
    app.listen_to_prompts = False
    call = app.incoming_call("5550100")
    prompt = call.speech[0]
    app.wait(prompt.duration + 14.9)
    assert call.said == [PROMPT] and prompt.completed is True
    app.wait(0.2)
    assert call.said == [PROMPT, NO_PIN]


def test_digits_without_pound_end_after_the_inter_digit_timeout(app: App) -> None:
    """Check a PIN typed without '#' is taken 5 s after the last digit."""
    call = phone(app)
    call.press("12", interval=1.0)
    call.wait(4.9)
    assert call.said == [PROMPT]
    call.wait(0.2)
    assert call.said[-1] == WRONG
    assert call.logged("(2 digits)")


def test_unopened_and_closed_rooms_are_refused_like_wrong_pins(app: App) -> None:
    """Check a PIN nobody opened is refused as a wrong one (guessing cannot
    create conferences), and so is a room deleted meanwhile."""
    call = phone(app)
    call.press("5555#")
    assert call.said[-2:] == [WRONG, RETRY]
    app.close_room("1234")
    call.press("1234#")
    assert call.said[-2:] == [WRONG, RETRY]
    assert not call.conferences and app.conference("conf_5555").session is None


def test_wrong_pins_from_one_address_are_locked_out_whatever_the_caller_id(app: App) -> None:
    """Check the per-source limit: callers from one address get five wrong
    PINs (a new caller id each call changes nothing), then the next try is
    refused and hung up; another address is not affected, and after the
    lockout the address gets tries again."""
    attempts = 0
    for n in range(4):
        call = phone(app, callerid=f"+1555000{n}")
        while call.connected and call.said[-1] != THROTTLED:
            attempts += 1
            call.press("1#")
        if call.said[-1] == THROTTLED:
            break
        assert call.said[-1] == REFUSED
    assert call.said[-1] == THROTTLED and call.ended_with(200)
    assert attempts == 6  # the fifth wrong PIN locks the address: the sixth try is refused
    assert call.logged("throttled (too_many_attempts)")
    other = phone(app, callerid="+15550001", source="198.51.100.7")
    other.press("1234#")
    assert other.joined("conf_1234")
    app.wait(300)
    again = phone(app, callerid="+15550009")
    again.press("1234#")
    assert again.joined("conf_1234")


def test_caller_hanging_up_mid_pin_ends_quietly(app: App) -> None:
    """Check a caller who hangs up while typing ends the session without an error."""
    call = phone(app)
    call.press("12")
    call.hang_up()
    assert app.runtime.sessions == {} and app.errors == []


def test_phone_leaving_leaves_the_conference(app: App) -> None:
    """Check a phone caller's hang-up ends its bridge: the browser's
    participant list drops it, the conference goes on."""
    web = browser(app, "1234")
    call = phone(app)
    call.press("1234#")
    call.hang_up()
    assert participants(web) == [("ann", "web")]
    assert web.connected and app.conference("conf_1234").participants == ["ann"]
    assert app.conference("conf_1234").log[-1] == "pstn participant +15551234567 left (1 in)"


def test_conference_ending_hangs_up_the_phone(app: App) -> None:
    """Check the conference session ending hangs up the phone caller."""
    call = phone(app)
    call.press("1234#")
    app.conference("conf_1234").terminate()
    assert call.ended_with(200) and call.reason == "Hangup"


# -- gatekeeper: a browser joins by X-Conference-Id ---------------------------------------


def test_browser_joins_its_conference(app: App) -> None:
    """Check the happy path: answered, in conf_42 (sends to everyone,
    hears the phones mixer), told who is in, and welcomed."""
    web = browser(app, "42")
    assert web.connected and web.leg.kind == "web"
    assert web.joined("conf_42")
    assert app.flows.sends(web, "conf_42/everyone") and app.flows.sends("conf_42/phones", web)
    assert not app.flows.sends("conf_42/everyone", web)  # other browsers are heard peer to peer
    assert participants(web) == [("ann", "web")]
    assert web.heard_speech(JOINED)
    assert web.logged("ann joined conf_42")


def test_browser_without_a_conference_id_is_refused_400(app: App) -> None:
    """Check a web call without X-Conference-Id, or with a malformed one,
    is rejected with 400 and no conference is called."""
    web = app.incoming_call("joinconf", callerid="ann", transport="web")
    assert web.ended_with(400) and web.state == CallState.FAILED
    assert web.logged("refused: bad X-Conference-Id ''")
    bad = browser(app, "../etc")
    assert bad.ended_with(400)
    assert [s.rule.name for s in app.runtime.sessions.values()] == ["InboundCall", "InboundCall"]
    app.wait(30)  # sessions left without calls end after the idle timeout
    assert app.runtime.sessions == {}


def test_gatekeeper_relays_messages_both_ways(app: App) -> None:
    """Check messages cross the gatekeeper: the conference's list, sent
    before the browser is answered, arrives once it is; a browser's request
    reaches the conference, whose answer comes back."""
    web = browser(app, "42", grant=token("ann", "42", "guest", "dial_out"))
    assert [m.json()["type"] for m in web.messages] == ["PARTICIPANTS"]
    web.send_message('{"type": "CALL_PARTICIPANT", "number": "12"}')
    assert notices(web, "CALL_PARTICIPANT_FAILED") == [
        {"type": "CALL_PARTICIPANT_FAILED", "number": "12", "code": 484, "reason": "not a phone number"}]


def test_conference_ending_hangs_up_the_browser(app: App) -> None:
    """Check the conference ending ends the browser's call (and its gatekeeper session)."""
    web = browser(app, "42")
    app.conference("conf_42").terminate()
    assert web.ended_with(200)
    assert app.runtime.sessions == {}


def test_browser_leaving_ends_an_empty_conference(app: App) -> None:
    """Check the last participant leaving ends the conference session."""
    web = browser(app, "42")
    session = app.conference("conf_42").session
    assert session is not None
    web.hang_up()
    assert session.terminated and app.conference("conf_42").session is None
    assert "[Fwd] web participant ann left (0 in)" in app.log
    assert app.runtime.sessions == {}  # the gatekeeper's too


def test_browser_hears_hold_music_until_a_slow_conference_answers(callbridge: Harness, tmp_path: Path) -> None:
    """Check the gatekeeper's wait: hold music as early media while the
    conference does not answer, and after 20 s a 480; the conference's
    call is hung up. (A conference session that never answers stands in
    for the shipped one, which answers at once.)"""
    scenarios = tmp_path / "scenarios"
    shutil.copytree(ROOT / "scenarios" / "media", scenarios / "media")
    shutil.copy(ROOT / "scenarios" / "gatekeeper.py", scenarios)
    (scenarios / "silent.py").write_text(
        "from engine.scenario import AppEvents, VoxEngine\n"
        "VoxEngine.add_event_listener(AppEvents.CallAlerting, lambda e: None)\n")
    (tmp_path / "rules.yaml").write_text(
        "rules:\n"
        "  - {name: InboundCall, pattern: joinconf, scenarios: [gatekeeper]}\n"
        "  - {name: Fwd, pattern: 'conf_[A-Za-z0-9]+', scenarios: [silent]}\n")
    app = callbridge.load(tmp_path)
    web = browser(app, "42")
    assert web.leg.early_media and web.state == CallState.ALERTING
    assert web.heard_playback("hold.wav") and web.played[0].duration is None
    web.wait(20)
    assert web.ended_with(480)
    assert web.played[0].completed is False
    assert web.logged("conference conf_42 did not answer in 20 s")
    assert app.conference("conf_42").legs[0].state.ended


def test_conference_refusing_the_phone_is_announced(callbridge: Harness, tmp_path: Path) -> None:
    """Check the PIN gate when the conference's call fails (here a stand-in
    conference that rejects it 503): the caller is told and hung up."""
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    shutil.copy(ROOT / "scenarios" / "pstn_gatekeeper.py", scenarios)
    (scenarios / "busy.py").write_text(
        "from engine.scenario import AppEvents, VoxEngine\n"
        "VoxEngine.add_event_listener(AppEvents.CallAlerting, lambda e: e.call.reject(503))\n")
    (tmp_path / "rules.yaml").write_text(
        "rules:\n"
        "  - {name: InboundFromPSTN, pattern: '5550100', scenarios: [pstn_gatekeeper]}\n"
        "  - {name: Fwd, pattern: 'conf_[A-Za-z0-9]+', scenarios: [busy]}\n")
    app = callbridge.load(tmp_path)
    app.open_room("1234")
    call = phone(app)
    call.press("1234#")
    assert call.heard_speech("the conference cannot take your call now")
    assert call.ended_with(200) and not call.joined("conf_1234")
    assert call.logged("conf_1234 refused the caller: 503")


# -- conference: mixers, participant lists, dial-out -------------------------------------


def test_calls_dialed_straight_to_a_conference_are_refused_403(app: App) -> None:
    """Check a phone or browser dialing conf_1234 itself (skipping the
    gatekeepers) is refused 403 by the Fwd rule (internal calls only),
    before any session starts."""
    call = app.incoming_call("conf_1234")
    assert call.ended_with(403)
    assert app.runtime.sessions == {}
    web = app.incoming_call("conf_1234", callerid="ann", transport="web")
    assert web.ended_with(404)  # a browser's number is a user name (P2P): nobody is called conf_1234
    assert app.conference("conf_1234").session is None


def test_room_not_started_refuses_the_first_caller_and_ends(app: App) -> None:
    """Check a scheduled room refuses its first caller before it starts:
    the phone is told why and hung up, and the empty conference ends."""
    app.open_room("88", starts_at=time.time() + 3600)
    call = phone(app)
    call.press("88#")
    assert call.heard_speech("not started")
    assert call.ended_with(200) and not call.joined("conf_88")
    assert "[Fwd] pstn caller +15551234567 refused: room_not_started" in app.log
    assert app.conference("conf_88").session is None


def test_room_with_record_on_start_records_its_mix(app: App) -> None:
    """Check a room created with record_on_start: its conference records
    the everyone mix from the first join, into the test's temporary
    folder (the engine's ``data/recordings`` in ``serve``)."""
    app.open_room("5", record_on_start=True)
    browser(app, "5")
    (line,) = [ln for ln in app.conference("conf_5").log if ln.startswith("recording conf_5 to ")]
    path = Path(line.removeprefix("recording conf_5 to "))
    assert path.is_relative_to(app.recordings_dir) and path.exists()
    (everyone, _) = app.conference("conf_5").mixers
    assert [rec.path for rec in app.graph._recordings[everyone]] == [path]


def test_participant_lists_follow_joins_and_leaves(app: App) -> None:
    """Check every browser gets the whole list on each join and leave, and
    phones get none."""
    ann = browser(app, "1234", "ann")
    bob = browser(app, "1234", "bob")
    call = phone(app)
    call.press("1234#")
    everyone = [("ann", "web"), ("bob", "web"), ("+15551234567", "pstn")]
    assert participants(ann) == participants(bob) == everyone
    assert call.messages == []
    bob.hang_up()
    assert participants(ann) == [("ann", "web"), ("+15551234567", "pstn")]
    assert len(notices(ann, "PARTICIPANTS")) == 4  # ann; +bob; +phone; -bob


def test_join_token_data_and_role_reach_the_other_participants(app: App) -> None:
    """Check a join token's free-form ``data`` (kept in the call's grant)
    and role reach the other browsers' participant list; a participant
    without data shows ``data: null``."""
    info = '{"avatar": "https://example.org/ann.png", "team": "blue"}'
    ann = browser(app, "1234", grant=Grant(identity="ann", authenticated_by="join-token", room="1234",
                                           admitted_by="join-token", role="guest", data=info))
    bob = browser(app, "1234", user="bob")
    roster = notices(bob, "PARTICIPANTS")[-1]["participants"]
    assert [(p["name"], p["role"], p["data"]) for p in roster] == [("ann", "guest", info), ("bob", "guest", None)]
    assert notices(ann, "PARTICIPANTS")[-1]["participants"] == roster


def test_mixers_give_phones_everyone_and_browsers_the_phones(app: App) -> None:
    """Check the two mixers: a phone hears everyone (both browsers and the
    other phone); a browser hears the phones through the server, not the
    other browser (that is peer to peer)."""
    ann = browser(app, "1234", "ann")
    bob = browser(app, "1234", "bob")
    p1 = phone(app, "+15550001", name="p1")
    p1.press("1234#")
    conf = app.conference("conf_1234")
    assert [m.name for m in conf.mixers] == ["everyone", "phones"]
    assert sorted(f.source for f in app.flows if f.target == "conf_1234/everyone") == ["ann", "bob", "p1"]
    assert sorted(f.target for f in app.flows if f.source == "conf_1234/everyone") == ["p1"]
    assert sorted(f.source for f in app.flows if f.target == "conf_1234/phones") == ["p1"]
    assert sorted(f.target for f in app.flows if f.source == "conf_1234/phones") == ["ann", "bob"]
    assert sorted(conf.participants) == ["ann", "bob", "p1"]


def test_dial_out_connected_joins_the_participant(app: App) -> None:
    """Check CALL_PARTICIPANT: the conference calls the number from the
    conference's caller id, the callee answers and is in (browsers told:
    CONNECTED, then the list); its hang-up is announced too."""
    web = browser(app, "1234")
    web.send_message('{"type": "CALL_PARTICIPANT", "number": "+15559876543"}')
    callee = app.callee("+15559876543")
    assert callee.how == "pstn" and callee.leg.callerid == "5550100"
    callee.answer()
    (connected,) = notices(web, "CALL_PARTICIPANT_CONNECTED")
    assert connected["number"] == "+15559876543" and connected["id"] == callee.leg.id
    assert participants(web) == [("ann", "web"), ("+15559876543", "pstn")]
    assert callee.joined("conf_1234") and callee.heard_speech(JOINED)
    assert app.flows.between(callee, "conf_1234/everyone") and app.flows.sends(callee, "conf_1234/phones")
    callee.hang_up()
    assert notices(web, "CALL_PARTICIPANT_DISCONNECTED") == [
        {"type": "CALL_PARTICIPANT_DISCONNECTED", "inbound": False, "id": callee.leg.id,
         "name": "+15559876543", "number": "+15559876543"}]
    assert participants(web) == [("ann", "web")]


def test_dial_out_busy_is_reported_486(app: App) -> None:
    """Check a busy dial-out: the browser is told FAILED with 486 and the
    reason, and nobody joins."""
    web = browser(app, "1234")
    web.send_message('{"type": "CALL_PARTICIPANT", "number": "5551234"}')
    callee = app.callee("5551234")
    callee.busy()
    assert notices(web, "CALL_PARTICIPANT_FAILED") == [
        {"type": "CALL_PARTICIPANT_FAILED", "number": "5551234", "code": 486, "reason": "Busy Here"}]
    assert participants(web) == [("ann", "web")]
    assert app.conference("conf_1234").log[-1] == "dialing 5551234 failed: 486 Busy Here"


def test_dial_out_without_a_trunk_is_reported_503(app: App) -> None:
    """Check dial-out on an engine with no SIP trunk: nothing is dialed,
    the browser is told FAILED 503 and the log says why."""
    app.ua.trunk = False
    web = browser(app, "1234")
    web.send_message('{"type": "CALL_PARTICIPANT", "number": "5551234"}')
    assert notices(web, "CALL_PARTICIPANT_FAILED") == [
        {"type": "CALL_PARTICIPANT_FAILED", "number": "5551234", "code": 503,
         "reason": "dialing out is not available"}]
    assert app.dialed == []
    assert app.conference("conf_1234").log[-1] == "cannot dial 5551234: no SIP trunk is configured (--trunk)"


def test_dial_out_into_a_full_room_is_hung_up_403(app: App) -> None:
    """Check a dial-out answered after the room filled up: the callee is
    hung up and the browser told FAILED 403 room_full."""
    app.open_room("9", max_participants=1)
    web = browser(app, "9")
    web.send_message('{"type": "CALL_PARTICIPANT", "number": "5551234"}')
    callee = app.callee("5551234")
    callee.answer()
    assert callee.ended_with(200) and not callee.joined("conf_9")
    assert notices(web, "CALL_PARTICIPANT_FAILED") == [
        {"type": "CALL_PARTICIPANT_FAILED", "number": "5551234", "code": 403, "reason": "room_full"}]
    assert participants(web) == [("ann", "web")]


def test_dial_out_unanswered_fails_408(app: App) -> None:
    """Check a dial-out nobody answers fails when the trunk gives up (408)."""
    web = browser(app, "1234")
    web.send_message('{"type": "CALL_PARTICIPANT", "number": "5551234"}')
    app.wait(60)
    assert notices(web, "CALL_PARTICIPANT_FAILED")[0]["code"] == 408


def test_dial_out_of_an_invalid_number_is_refused_484(app: App) -> None:
    """Check a number that is not one is refused without dialing."""
    web = browser(app, "1234")
    for number in ("12", "call me", "+1555123456789012"):
        web.send_message(f'{{"type": "CALL_PARTICIPANT", "number": "{number}"}}')
    failed = notices(web, "CALL_PARTICIPANT_FAILED")
    assert [(f["number"], f["code"]) for f in failed] == [
        ("12", 484), ("call me", 484), ("+1555123456789012", 484)]
    assert app.dialed == []


def test_dial_out_is_limited_to_three_ringing(app: App) -> None:
    """Check the conference's own guard: a fourth dial-out while three ring
    is refused (486), even when the engine's policy would allow more."""
    app.runtime.dial_policy = DialPolicy(allow=(r"[0-9]+",), max_per_identity=10)
    web = browser(app, "1234")
    for n in range(4):
        web.send_message(f'{{"type": "CALL_PARTICIPANT", "number": "555000{n}"}}')
    assert len(app.dialed) == 3
    (failed,) = notices(web, "CALL_PARTICIPANT_FAILED")
    assert failed["number"] == "5550003" and failed["code"] == 486
    assert failed["reason"] == "too many calls ringing"


def test_messages_that_are_not_requests_are_ignored(app: App) -> None:
    """Check a message that is not JSON is logged and ignored; an unknown type too."""
    web = browser(app, "1234")
    web.send_message("hello")
    web.send_message('{"type": "SOMETHING_ELSE"}')
    web.send_message('["CALL_PARTICIPANT", "5551234"]')  # JSON, but not an object
    assert "[Fwd] ignored a message that is not JSON: 'hello'" in app.log
    assert [m.json()["type"] for m in web.messages] == ["PARTICIPANTS"] and app.dialed == []


def test_moderate_from_a_guest_is_ignored(app: App) -> None:
    """Check a guest cannot mute everyone: MODERATE from a participant
    who is not a moderator is logged and nothing is muted."""
    guest = browser(app, "1234")
    p1 = phone(app, name="p1")
    p1.press("1234#")
    guest.send_message('{"type": "MODERATE", "action": "mute_all"}')
    assert "[Fwd] ignored MODERATE from a participant who is not a moderator" in app.log
    assert app.flows.sends(p1, "conf_1234/phones")


def test_browser_moderator_mutes_a_conference_without_a_room(app: App) -> None:
    """Check MODERATE in an ad-hoc conference (no room in the store): the
    mixers mute everyone but the moderator, then unmute them."""
    mod = browser(app, "77", grant=token("ann", "77", "moderator"))
    assert mod.joined("conf_77")
    p1 = phone(app, name="p1")
    p1.press("77#")
    assert p1.joined("conf_77") and app.flows.sends(p1, "conf_77/phones")
    mod.send_message('{"type": "MODERATE", "action": "mute_all"}')
    assert "[Fwd] muted 1 participants" in app.log
    assert not app.flows.sends(p1, "conf_77") and app.flows.sends(mod, "conf_77/everyone")
    mod.send_message('{"type": "MODERATE", "action": "unmute_all"}')
    assert "[Fwd] unmuted 1 participants" in app.log
    assert app.flows.sends(p1, "conf_77/phones")


def test_conference_ends_when_its_last_participant_leaves(app: App) -> None:
    """Check the conference runs while anyone is in and ends with its last
    participant (a number still being dialled for one who left is cancelled,
    toll-fraud guard); the name is then free for a new session."""
    web = browser(app, "1234")
    p1 = phone(app, name="p1")
    p1.press("1234#")
    web.send_message('{"type": "CALL_PARTICIPANT", "number": "5551234"}')
    callee = app.callee("5551234")
    first = app.conference("conf_1234").session
    web.hang_up()
    assert callee.leg.state.ended  # asked for by the browser, which left
    assert first is not None and not first.terminated  # p1 is still in
    p1.hang_up()
    assert first.terminated and app.conference("conf_1234").session is None
    again = browser(app, "1234")
    assert again.joined("conf_1234") and app.conference("conf_1234").session is not first


# -- rooms (the management API's rooms, invites and roles) ----------------------------------


def test_room_pin_opens_it_and_its_id_does_not(app: App) -> None:
    """Check a room with a PIN is opened by its PIN, not by its id (typing
    the id is a wrong PIN), and its moderator PIN joins as moderator."""
    app.open_room("4242", pin="918273", moderator_pin="564738")
    call = phone(app)
    call.press("4242#")
    assert call.heard_speech(WRONG)
    call.press("918273#")
    assert call.joined("conf_4242")
    boss = phone(app, callerid="+15550000001")
    boss.press("564738#")
    assert boss.joined("conf_4242")
    roles = {p["display_name"]: p["role"] for p in app.participants("4242")}
    assert roles == {"+15551234567": "guest", "+15550000001": "moderator"}


def test_full_room_refuses_the_phone_with_a_reason(app: App) -> None:
    """Check a room capped at one participant: the second phone caller's
    PIN is right, but the conference tells it the room is full and hangs up."""
    app.open_room("55", max_participants=1)
    first = phone(app)
    first.press("55#")
    assert first.joined("conf_55")
    second = phone(app, callerid="+15550000002")
    second.press("55#")
    assert second.heard_speech("full")
    assert not second.joined("conf_55")
    assert second.leg.state.ended
    assert [p["display_name"] for p in app.participants("55")] == ["+15551234567"]


def test_full_room_refuses_the_browser_403(app: App) -> None:
    """Check a browser beyond a room's cap is refused with 403 (and the
    phone already in stays)."""
    app.open_room("56", max_participants=1)
    first = phone(app)
    first.press("56#")
    web = browser(app, "56")
    assert web.ended_with(403)
    assert first.connected


def test_invite_code_on_the_keypad_joins_once(app: App) -> None:
    """Check an invite's one-time code typed as the PIN joins its room with
    the invite's role, and the same code typed again is a wrong PIN."""
    app.open_room("77", pin="111222")
    code = app.invite("77", "carol@example.com", role="moderator")
    call = phone(app)
    call.press(code + "#")
    assert call.joined("conf_77")
    assert [p["role"] for p in app.participants("77")] == ["moderator"]
    again = phone(app, callerid="+15550000003")
    again.press(code + "#")
    assert again.heard_speech(WRONG)


def test_phone_moderator_mutes_everyone_else_with_star_6(app: App) -> None:
    """Check a moderator on the phone presses *6: every other participant is
    muted (in the room, as the API shows, and in the media); *7 unmutes.
    A guest's *6 does nothing."""
    app.open_room("88", pin="1212", moderator_pin="3434")
    guest = phone(app)
    guest.press("1212#")
    web = browser(app, "88")
    boss = phone(app, callerid="+15550000004")
    boss.press("3434#")
    guest.press("*6")
    assert not any(p["muted"] for p in app.participants("88"))
    boss.press("*6")
    muted = {p["display_name"]: p["muted"] for p in app.participants("88")}
    assert muted == {"+15551234567": True, "ann": True, "+15550000004": False}
    assert boss.heard_speech("Everyone else is muted")
    boss.press("*7")
    assert not any(p["muted"] for p in app.participants("88"))


def test_join_token_for_another_room_is_refused(app: App) -> None:
    """Check a browser whose join token is for room 1 cannot use it to join
    conference 2 (403), while the token's own room works."""
    app.open_room("1")
    app.open_room("2")
    wrong = browser(app, "2", grant=token("ann", "1", "moderator"))
    assert wrong.ended_with(403)
    right = browser(app, "1", grant=token("ann", "1", "moderator"))
    assert right.joined("conf_1")
    assert [p["role"] for p in app.participants("1")] == ["moderator"]


def test_guest_profile_is_deleted_when_the_browser_leaves(app: App) -> None:
    """Check the conference deletes a guest browser's web user profile
    (``guest-…``, made at its login) when it leaves, and leaves a stored
    user's profile alone."""
    app.store.create_user("guest-0a1b2c3d4e", "unused-secret", "Ann")
    app.store.create_user("bob", "bobs-password", "Bob")
    guest = browser(app, "31", user="guest-0a1b2c3d4e")
    member = browser(app, "31", user="bob", grant=Grant(identity="bob", authenticated_by="password"))
    assert guest.joined("conf_31") and member.joined("conf_31")
    guest.hang_up()
    member.hang_up()
    assert app.store.get_user("guest-0a1b2c3d4e") is None
    assert app.store.get_user("bob") is not None
    assert "[Fwd] deleted web user guest-0a1b2c3d4e" in app.log or any(
        "deleted web user guest-0a1b2c3d4e" in line for line in app.log)


# -- p2p: calls between users ----------------------------------------------------------------

DIRECT = {"X-DirectCall": "true", "X-Room": "7"}
#: A phone that answered the engine's digest challenge as store user ``carol``.
SIP_USER = Grant(identity="carol", authenticated_by="sip-digest")


def direct_call(app: App, callee: str = "bob", caller: str = "alice") -> tuple[Caller, Callee]:
    """``caller``'s browser calls logged-in ``callee`` directly; the callee's browser rings."""
    app.log_in_web_user(callee)
    call = app.incoming_call(callee, callerid=caller, transport="web", headers=DIRECT)
    return call, app.callee(callee)


def test_direct_call_is_forwarded_and_connected(app: App) -> None:
    """Check a browser's X-DirectCall call: the callee's browser rings with
    the caller's id and headers in the same session, the caller hears it
    ring, the callee's answer connects both (no media through the engine),
    messages are relayed both ways and the callee's hang-up ends the
    caller's call."""
    alice, bob = direct_call(app)
    assert bob.how == "web" and bob.direct and bob.direct_peer is alice and alice.direct
    assert bob.leg.callerid == "alice" and bob.invite_headers == DIRECT
    assert bob.session is alice.session and bob.state == CallState.PROGRESSING
    assert alice.state == CallState.ALERTING and "ringing (180)" in [e.text for e in alice.transcript]
    assert alice.logged("direct call from alice to bob")
    bob.answer()
    assert alice.connected_directly_to(bob) and bob.connected_directly_to(alice)
    assert alice.logged("direct call connected")
    assert len(app.flows) == 0, app.flows.describe()
    alice.send_message("hi bob")
    assert bob.received_message("hi bob")
    bob.send_message("hi alice", headers={"X-Mood": "good"})
    assert alice.received_message("hi alice") and alice.messages[-1].headers == {"X-Mood": "good"}
    bob.hang_up()
    assert alice.ended_with(200) and bob.ended_with(200)
    assert alice.logged("direct call ended 200")
    assert alice.session is not None and alice.session.terminated


@pytest.mark.parametrize("code", [603, 486])
def test_direct_call_rejected_by_the_callee_fails_the_caller_with_its_code(app: App, code: int) -> None:
    """Check the callee's browser declining (603) or busy (486): the
    caller's call fails with that code, and the scenario logs it."""
    alice, bob = direct_call(app)
    bob.reject(code)
    assert alice.ended_with(code) and alice.state == CallState.FAILED
    assert alice.logged(f"direct call failed {code}")
    assert not alice.connected_directly_to(bob)


def test_direct_call_nobody_answers_fails_408(app: App) -> None:
    """Check a callee that lets it ring: after the invite timeout both
    calls fail with 408."""
    alice, bob = direct_call(app)
    app.wait(app.ua.invite_timeout - 1)
    assert alice.state == CallState.ALERTING
    app.wait(1)
    assert bob.ended_with(408) and alice.ended_with(408)
    assert alice.logged("direct call failed 408")


def test_direct_call_to_a_user_not_logged_in_fails_480(app: App) -> None:
    """Check a direct call to someone without a browser logged in is
    refused 480 (Temporarily Unavailable) and nothing is dialed."""
    alice = app.incoming_call("carol", callerid="alice", transport="web", headers=DIRECT)
    assert alice.ended_with(480)
    assert alice.logged("direct call from alice to carol: not logged in")
    assert app.dialed == []


def test_direct_caller_hanging_up_ends_the_callees_call(app: App) -> None:
    """Check the caller's hang-up ends the callee's call: once connected
    (200), and while it still rings (487 Cancelled)."""
    alice, bob = direct_call(app)
    bob.answer()
    alice.hang_up()
    assert bob.ended_with(200) and alice.ended_with(200)
    assert alice.logged("direct call ended 200")
    ann, carol = direct_call(app, callee="carol", caller="ann")
    ann.hang_up()
    assert carol.ended_with(487) and ann.ended_with(487)


def test_scenario_cannot_answer_or_play_to_a_direct_call(callbridge: Harness) -> None:
    """Check what a scenario may not do to a direct call, as in ``serve``:
    answer it itself, or play to it (its media is not in the engine)."""
    app = callbridge.load_text("""
        rules:
          - {name: P2P, pattern: ".*", scenarios: [p2p]}
    """, {"p2p": """
        from engine.calls.call import CallError
        from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine

        def on_alerting(e):
            callee = e.call.forward_call_to_user_direct()
            try:
                e.call.answer()
            except CallError as exc:
                Logger.write(f"answer: {exc}")

            def connected(ev):
                try:
                    e.call.say("hello")
                except CallError as exc:
                    Logger.write(f"say: {exc}")

            callee.add_event_listener(CallEvents.Connected, connected)

        VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
    """})
    alice, bob = direct_call(app)
    assert alice.logged("answer: a direct call is answered by its callee")
    bob.answer()
    assert alice.logged("say: playback needs a connected call or early media, not CONNECTED")
    assert alice.speech == [] and alice.connected_directly_to(bob)


def test_call_to_a_logged_in_user_is_bridged_through_the_engine(app: App) -> None:
    """Check a phone's call to a user name: the user's browser rings (not
    direct), the phone hears ringing, the answer connects the phone and
    media flows both ways through the engine; the phone's hang-up ends the
    browser's call."""
    app.log_in_web_user("bob")
    phone_call = app.incoming_call("bob", callerid="+15551234567", name="phone", grant=SIP_USER)
    bob = app.callee("bob")
    assert bob.how == "web" and not bob.direct and bob.leg.callerid == "+15551234567"
    assert phone_call.state == CallState.ALERTING and "ringing (180)" in [e.text for e in phone_call.transcript]
    assert phone_call.logged("call from +15551234567 to bob (web)")
    bob.answer()
    assert phone_call.connected
    assert app.flows.between(phone_call, bob)
    phone_call.hang_up()
    assert bob.ended_with(200) and phone_call.ended_with(200)


def test_browser_call_without_x_directcall_is_bridged_to_a_phone(app: App) -> None:
    """Check a browser's call with no X-DirectCall to a user whose SIP
    phone is registered (no browser logged in): the phone rings, and once
    answered audio flows both ways; the phone's hang-up ends the browser's."""
    app.register_user("bob")
    web = app.incoming_call("bob", callerid="alice", transport="web")
    bob = app.callee("bob")
    assert bob.how == "user" and not web.direct
    bob.answer()
    assert web.connected and app.flows.between(web, bob)
    bob.hang_up()
    assert web.ended_with(200)


def test_bridged_call_refused_by_the_user_passes_the_code_on(app: App) -> None:
    """Check the user's refusal reaches the caller: busy (486) as 486."""
    app.register_user("bob")
    caller = app.incoming_call("bob", grant=SIP_USER)
    app.callee("bob").busy()
    assert caller.ended_with(486) and caller.state == CallState.FAILED


def test_bridged_call_to_nobody_is_refused_404(app: App) -> None:
    """Check a call to a user with neither a browser logged in nor a phone
    registered is refused 404, and the log says why."""
    caller = app.incoming_call("nobody", grant=SIP_USER)
    assert caller.ended_with(404)
    assert caller.logged("call from +15557654321 to nobody: user 'nobody' is not registered")


# -- the small shipped scenarios: echo and answer_hangup ------------------------------------


def test_echo_explains_beeps_and_sends_the_caller_back_to_itself(app: App) -> None:
    """Check the echo test: answered, explained, a 1000 Hz beep, then the
    caller's audio flows back to it until the scenario hangs up after 60 s."""
    call = app.incoming_call("echo", name="eve")
    assert call.connected and call.heard_speech("callbridge echo test")
    assert call.heard_playback("tone 1000 Hz")
    assert call.logged("echo test for +15557654321")
    assert app.flows.between(call, call)
    call.wait(59)
    assert call.connected
    call.wait(1)
    assert call.ended_with(200) and app.flows.describe() == "none"


def test_echo_caller_hanging_up_ends_the_session(app: App) -> None:
    """Check a caller leaving the echo test early ends its session."""
    call = app.incoming_call("echo")
    call.hang_up()
    assert call.session is not None and call.session.terminated
