"""The demo page's moderator view in headless Chromium, against the shipped
rules and scenarios: a page joined with a moderator's join token shows
controls per participant and for the room, and every page's roster shows
who is muted, live.

- the moderator mutes a phone caller (baresip, a 700 Hz tone as its
  microphone): a guest page stops hearing the tone (WebAudio analyser on
  its conference call), and the guest's roster marks the phone muted, then
  unmuted again;
- "Mute all" mutes everyone but the moderator (every roster shows it);
- "Remove" hangs up a guest page's conference call;
- "Lock room" makes the room refuse a new page, which says so.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from logs import wait_for_log

from engine.runtime.rooms import create_room_with_pin
from engine.runtime.tokens import permissions_for
from engine.server import Engine

from .baresip import Baresip
from .test_demo_page import ANALYSER_SCRIPT, browser, engine, join  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e

MUTED = "(id) => { const li = document.querySelector(`#people li[data-id='${id}']`); return li && li.dataset.muted; }"


def token(engine: Engine, identity: str, name: str, role: str) -> str:
    assert engine.keys is not None
    issued, _ = engine.keys.issue_join_token(
        room="88", identity=identity, display_name=name, role=role, permissions=permissions_for(role, None), ttl=600, now=time.time())
    return issued


async def roster_says(page: Any, pid: str, muted: bool) -> None:
    await page.wait_for_function(f"({MUTED})('{pid}') === '{str(muted).lower()}'", timeout=15000)


async def test_moderator_mutes_removes_and_locks(engine: Engine, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    """Check the moderator page's controls act on the room for everyone:
    the guest page no longer hears a muted phone and sees each mute change
    in its roster; mute all; remove; lock refuses a new page."""
    create_room_with_pin(engine.store, "88", pin=None)  # an open room: phones type 88#
    boss = await join(browser, engine, "Boss", "88", token=token(engine, "boss", "Boss", "moderator"))
    gwen = await join(browser, engine, "Gwen", "88", token=token(engine, "gwen", "Gwen", "guest"))
    assert await boss.is_visible("#moderation") and not await gwen.is_visible("#moderation")
    assert await gwen.evaluate("document.querySelectorAll('#people button').length") == 0
    phone = Baresip(tmp_path, "bob", 700.0)
    try:
        await phone.start()
        await phone.dial(f"sip:5550100@127.0.0.1:{engine.ua.port}")
        await phone.wait_for("Call established", 10)
        await wait_for_log(engine, "started by rule InboundFromPSTN", timeout=10)
        await asyncio.sleep(1.0)
        await phone.press("88#")
        await wait_for_log(engine, "pstn participant", timeout=30)
        for page in (boss, gwen):
            await page.wait_for_selector("#people li.pstn", timeout=15000)
        phone_id = await boss.get_attribute("#people li.pstn", "data-id")
        assert phone_id
        await asyncio.sleep(4.0)  # past "You have joined the conference."
        before = await gwen.evaluate(ANALYSER_SCRIPT, [700.0])
        assert abs(before["peakHz"] - 700.0) < 15 and before["levels"][0] > -70, before

        await boss.click("#people li.pstn button.mute-one")
        await roster_says(gwen, phone_id, True)
        await roster_says(boss, phone_id, True)
        assert await gwen.is_visible("#people li.pstn .mute-state")
        await asyncio.sleep(1.0)
        after = await gwen.evaluate(ANALYSER_SCRIPT, [700.0])
        assert after["levels"][0] < before["levels"][0] - 30, (before, after)
        room = engine.rooms.describe(engine.rooms.get("88"))  # type: ignore[union-attr]
        assert room["participant_count"] == 3

        await boss.click("#people li.pstn button.mute-one")  # now "Unmute"
        await roster_says(gwen, phone_id, False)

        await boss.click("#mute-all")
        gwen_id = await gwen.get_attribute("#people li.web:has(.name:text-matches('(you)'))", "data-id")
        boss_id = await boss.get_attribute("#people li.web:has(.name:text-matches('(you)'))", "data-id")
        assert gwen_id and boss_id
        for page in (boss, gwen):
            await roster_says(page, phone_id, True)
            await roster_says(page, gwen_id, True)
            await roster_says(page, boss_id, False)

        await boss.click(f"#people li[data-id='{gwen_id}'] button.remove-one")
        await gwen.wait_for_selector("#join-view:not([hidden])", timeout=15000)
        await boss.wait_for_function(f"!document.querySelector(`#people li[data-id='{gwen_id}']`)",
                                     timeout=15000)

        await boss.click("#lock-room")
        await boss.wait_for_function("document.querySelector('#lock-room').textContent === 'Unlock room'",
                                     timeout=10000)
        assert engine.store.get_room("88").locked is True
        late = await browser.new_page()
        await late.goto(f"http://127.0.0.1:{engine.http_port}/?conference=88"
                        f"&token={token(engine, 'late', 'Late', 'guest')}")
        await late.fill("#name", "Late")
        await late.click("#join-button")
        await late.wait_for_function(
            "document.querySelector('#join-error').textContent.includes('locked')", timeout=20000)
    finally:
        phone.command("/hangup\n")
        await phone.stop()


async def test_without_guests_the_page_asks_for_a_login(make_engine: Any, browser: Any) -> None:  # noqa: F811
    """Check on an engine run with ``--guests off`` the page shows a user
    name and password form instead of the name box (from /config.json), a
    wrong password is refused, the right one joins under the user's display
    name, and a one-time login link (``?login=``) joins with no password."""
    from .test_flagship_phone import ROOT

    engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios",
                               session_idle_timeout=5.0, guest_login=False)
    engine.store.create_user("alice", "correct-horse-9", "Alice A")
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{engine.http_port}/?conference=91")
    await page.wait_for_selector("#login-fields:not([hidden])", timeout=10000)
    assert not await page.is_visible("#name")
    await page.fill("#username", "alice")
    await page.fill("#password", "wrong-password")
    await page.click("#join-button")
    await page.wait_for_function(
        "document.querySelector('#join-error').textContent.includes('wrong user name')", timeout=15000)
    await page.fill("#password", "correct-horse-9")
    await page.click("#join-button")
    await page.wait_for_selector("#room-view:not([hidden])", timeout=30000)
    await page.wait_for_function("document.querySelector('#people').textContent.includes('Alice A (you)')",
                                 timeout=15000)

    link_token = secrets_token(engine, "alice")
    other = await browser.new_page()
    await other.goto(f"http://127.0.0.1:{engine.http_port}/?conference=92&login={link_token}")
    await other.wait_for_selector("#login-fields:not([hidden])", timeout=10000)
    assert not await other.is_visible("#username") and not await other.is_visible("#name")
    assert "login=" not in other.url  # the one-time token leaves the address bar
    await other.click("#join-button")
    await other.wait_for_selector("#room-view:not([hidden])", timeout=30000)


def secrets_token(engine: Engine, user: str) -> str:
    """A one-time login token for ``user``, as POST /users/{name}/login-tokens issues."""
    import secrets

    from engine.web.ws import TOKEN_NAMESPACE

    token = secrets.token_urlsafe(32)
    assert engine.keys is not None
    engine.store.kv_put(TOKEN_NAMESPACE, engine.keys.login_token_hash(token), user, 300.0, time.time())
    return token
