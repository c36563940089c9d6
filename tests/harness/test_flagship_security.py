"""The shipped application under attack, through the scenario harness:
what a guest, a stranger to a room, a PIN guesser and a removed
participant can do (nothing they should). The same attacks run against a
real ``callbridge serve`` in tests/e2e/test_attacks.py; these check the
scenarios' side of each, on virtual time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.calls.grants import Grant
from engine.testing import App, Caller, Harness

ROOT = Path(__file__).parents[2]


@pytest.fixture
def app(callbridge: Harness) -> App:
    """The shipped application; room 1234 has PIN 246810."""
    app = callbridge.load(ROOT)
    app.open_room("1234", pin="246810")
    return app


def token(user: str, room: str, *permissions: str) -> Grant:
    return Grant(identity=user, authenticated_by="join-token", room=room, admitted_by="join-token",
                 permissions=frozenset(("mute_self",) + permissions))


def browser(app: App, conference: str, user: str = "ann", *, grant: Grant | None = None,
            pin: str | None = None, source: str = "192.0.2.10") -> Caller:
    headers = {"X-Conference-Id": conference}
    if pin is not None:
        headers["X-Conference-Pin"] = pin
    return app.incoming_call("joinconf", callerid=user, transport="web", headers=headers, grant=grant,
                             source=source)


def notices(call: Caller, kind: str) -> list[dict[str, Any]]:
    return [m.json() for m in call.messages if m.json().get("type") == kind]


def test_a_guest_cannot_dial_out_even_with_forged_headers(app: App) -> None:
    """Check a guest in an ad-hoc conference asking for a phone, with
    X-Callbridge-* headers claiming a moderator, is refused 403 and nothing
    is dialed."""
    web = app.incoming_call("joinconf", callerid="guest-1", transport="web",
                            headers={"X-Conference-Id": "42", "X-Callbridge-Role": "moderator",
                                     "X-Callbridge-Permissions": "dial_out"})
    assert web.joined("conf_42")
    assert "X-Callbridge-Role" not in web.leg.headers
    web.send_message('{"type": "CALL_PARTICIPANT", "number": "+88212345678"}')
    assert notices(web, "CALL_PARTICIPANT_FAILED") == [
        {"type": "CALL_PARTICIPANT_FAILED", "number": "+88212345678", "code": 403,
         "reason": "not allowed to dial out"}]
    assert app.dialed == []


def test_a_room_refuses_a_browser_that_only_knows_its_name(app: App) -> None:
    """Check room 1234 refuses a guest without its PIN (pin_required) and
    with a wrong one (wrong_pin), admits it with the PIN, and a join token
    for it admits without one."""
    bare = browser(app, "1234")
    assert bare.ended_with(403) and bare.leg.end_code == 403
    wrong = browser(app, "1234", pin="111111")
    assert wrong.ended_with(403)
    assert not app.participants("1234")
    right = browser(app, "1234", pin="246810", user="bob")
    assert right.joined("conf_1234")
    tokened = browser(app, "1234", user="cy", grant=token("cy", "1234"))
    assert tokened.joined("conf_1234")
    assert sorted(p["identity"] for p in app.participants("1234")) == ["bob", "cy"]


def test_a_phone_cannot_open_a_room_by_its_id(app: App) -> None:
    """Check a room with a PIN is not opened by typing its id."""
    call = app.incoming_call("5550100")
    call.press("1234#")
    assert not call.conferences and call.logged("wrong PIN")
    call.press("246810#")
    assert call.joined("conf_1234")


def test_guessing_a_rooms_pin_from_many_addresses_locks_it(app: App) -> None:
    """Check the per-room limit: ten wrong PINs for room 1234 from ten
    addresses (each under its own limit) lock the room's PINs: the right
    PIN from a new address is then refused (pin_locked), room.pin_locked is
    reported, and a join token still admits."""
    events: list[tuple[str, dict[str, Any]]] = []
    app.rooms.on_event.append(lambda name, data: events.append((name, data)))
    for n in range(11):
        guess = browser(app, "1234", user=f"g{n}", pin=f"{300000 + n}", source=f"198.51.100.{n + 1}")
        assert guess.ended_with(403)
    locked = browser(app, "1234", user="late", pin="246810", source="203.0.113.50")
    assert locked.ended_with(403) and not app.participants("1234")
    assert ("room.pin_locked", {"room": "1234", "seconds": 300.0}) in events
    member = browser(app, "1234", user="cy", grant=token("cy", "1234"), source="203.0.113.51")
    assert member.joined("conf_1234")
    app.wait(301)
    back = browser(app, "1234", user="later", pin="246810", source="203.0.113.52")
    assert back.joined("conf_1234")


def test_ad_hoc_conferences_can_be_switched_off(app: App) -> None:
    """Check with ad-hoc conferences off a guest naming a conference that is
    not a room is refused, while rooms still work."""
    app.runtime.ad_hoc_conferences = False
    web = browser(app, "42")
    assert web.ended_with(403) and not web.conferences
    ok = browser(app, "1234", pin="246810")
    assert ok.joined("conf_1234")


def test_a_direct_call_needs_both_sides_in_the_callers_room(app: App) -> None:
    """Check a browser holding a token for room 1234 calls bob directly only
    while both are in the room: before joining it is refused 403."""
    app.log_in_web_user("bob")
    outsider = app.incoming_call("bob", callerid="eve", transport="web",
                                 headers={"X-DirectCall": "true"}, grant=token("eve", "1234"))
    assert outsider.ended_with(403)
    eve = browser(app, "1234", user="eve", grant=token("eve", "1234"))
    bob = browser(app, "1234", user="bob", grant=token("bob", "1234"))
    assert eve.joined("conf_1234") and bob.joined("conf_1234")
    inside = app.incoming_call("bob", callerid="eve", transport="web",
                               headers={"X-DirectCall": "true"}, grant=token("eve", "1234"))
    assert app.callee("bob").direct and not inside.ended_with(403)
