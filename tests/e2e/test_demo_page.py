"""The demo page (``/``) in headless Chromium, against the shipped rules and
scenarios (the flagship application): fake camera and microphone, guests
joining conference N by name.

- two pages join the same conference, see each other in the participant
  list and each plays the other's video (frames decoded: the remote
  ``<video>``'s ``getVideoPlaybackQuality().totalVideoFrames`` grows), over
  a direct browser-to-browser call; the test takes the screenshot shown in
  README (saved under ``$CALLBRIDGE_SCREENSHOT_DIR`` when set);
- a phone (baresip, tests/e2e/baresip.py: a 700 Hz tone as its microphone,
  sndfile recording what it hears) dials the conference number and types
  the PIN on its keypad (RFC 4733): it hears the
  page's fake microphone (Chromium's beep) mixed by the conference, the
  page hears its tone (WebAudio analyser on the conference call's audio),
  the page lists it as a phone participant, and once the page mutes the
  phone hears it no more;
- closing a page ends its calls: the conference and P2P scenarios see
  Disconnected, and the other page's list and tiles follow;
- "invite by phone" sends CALL_PARTICIPANT to the conference scenario, which
  dials out through the trunk (sipp as the carrier) and reports
  CALL_PARTICIPANT_CONNECTED and _DISCONNECTED back to the page (and
  _FAILED when there is no trunk).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import pytest
from playwright.async_api import async_playwright

from browser import launch_chromium
from logs import session_logs, wait_for_log

from engine.runtime.dialout import DialPolicy
from engine.runtime.rooms import create_room_with_pin
from engine.server import Engine

from .baresip import Baresip
from .phone import tone_level
from .sipp import start_sipp
from .test_flagship_phone import ROOT, shipped_engine

pytestmark = pytest.mark.e2e

#: Chromium's fake microphone beeps at this frequency (measured by FFT of
#: what the phone hears: Chromium's FakeAudioInputStream beeps at 400 Hz).
BEEP_HZ = 400.0

FRAMES_SCRIPT = """
(key) => {
  const tile = document.querySelector(`.tile[data-key="${key}"]`);
  const video = tile && tile.querySelector("video");
  if (!video || !video.srcObject) return -1;
  return video.getVideoPlaybackQuality().totalVideoFrames;
}
"""

REMOTE_KEYS_SCRIPT = """
() => [...document.querySelectorAll(".tile.remote")].map((t) => t.dataset.key)
"""

ANALYSER_SCRIPT = """
async (freqs) => {
  const call = window.demo.confCall;
  const stream = call.remoteStreams[0];
  const ctx = new AudioContext();
  await ctx.resume();
  const source = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 8192;
  source.connect(analyser);
  await new Promise((r) => setTimeout(r, 1000));
  const bins = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(bins);
  await ctx.close();
  const at = (hz) => {
    const i = Math.round(hz * analyser.fftSize / ctx.sampleRate);
    return Math.max(bins[i - 1], bins[i], bins[i + 1]);
  };
  let best = 1;
  for (let i = 2; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
  return { peakHz: best * ctx.sampleRate / analyser.fftSize, levels: freqs.map(at) };
}
"""


@pytest.fixture
async def engine(make_engine: Any) -> Engine:
    engine: Engine = await shipped_engine(make_engine)
    return engine


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    async with async_playwright() as pw:
        context = await launch_chromium(pw, tmp_path / "chromium-profile", p2p=True)
        try:
            yield context
        finally:
            await context.close()


async def join(context: Any, engine: Engine, name: str, conference: str, token: str | None = None) -> Any:
    """A new page on the demo, joined to ``conference`` as ``name`` (a
    guest, or with a join ``token``: ``/?token=…``)."""
    page = await context.new_page()
    page.on("console", lambda msg: print(f"[{name}] {msg.type}: {msg.text}"))
    extra = f"&token={token}" if token else ""
    await page.goto(f"http://127.0.0.1:{engine.http_port}/?conference={conference}{extra}")
    await page.fill("#name", name)
    await page.click("#join-button")
    await page.wait_for_selector("#room-view:not([hidden])", timeout=30000)
    return page


async def frames_growing(page: Any, key: str, timeout: float = 30.0) -> int:
    """Wait until the tile ``key``'s video has decoded frames, and more a
    moment later; return the count."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    first = -1
    while loop.time() < deadline:
        count = await page.evaluate(FRAMES_SCRIPT, key)
        if count > 0 and first < 0:
            first = count
        elif first > 0 and count > first + 5:
            return int(count)
        await asyncio.sleep(0.3)
    raise AssertionError(f"video of {key} does not play (frames {first})")


async def test_two_pages_see_each_other(engine: Engine, browser: Any) -> None:
    """Check two guests in conference 77 each list the other and play the
    other's video, peer to peer (a direct call the P2P rule forwarded)."""
    alice = await join(browser, engine, "Alice", "77")
    bob = await join(browser, engine, "Bob", "77")
    for page, other in ((alice, "Bob"), (bob, "Alice")):
        await page.wait_for_function(
            f"document.querySelector('#people').textContent.includes('{other}')", timeout=20000)
    for page in (alice, bob):
        keys = await page.evaluate(REMOTE_KEYS_SCRIPT)
        assert len(keys) == 1, keys
        await frames_growing(page, keys[0])
    logs = session_logs(engine)
    assert "started by rule P2P" in logs and "direct call connected" in logs, logs
    shots = os.environ.get("CALLBRIDGE_SCREENSHOT_DIR")
    if shots:
        await alice.set_viewport_size({"width": 1280, "height": 720})
        await asyncio.sleep(1.0)
        await alice.screenshot(path=str(Path(shots) / "demo-two-participants.png"))

    await bob.close()
    await alice.wait_for_function("document.querySelectorAll('.tile.remote').length === 0", timeout=20000)
    await alice.wait_for_function("!document.querySelector('#people').textContent.includes('Bob')",
                                  timeout=20000)
    logs = await wait_for_log(engine, "direct call ended", timeout=10)
    assert "web participant Bob left" in logs, logs


def peak_hz(pcm: np.ndarray, rate: int = 8000) -> float:
    """The strongest frequency in ``pcm`` (FFT)."""
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    spectrum[:10] = 0  # DC and rumble
    return float(np.argmax(spectrum) * rate / pcm.size)


async def test_page_and_phone_hear_each_other(engine: Engine, browser: Any, tmp_path: Path) -> None:
    """Check a baresip phone that dials the conference number and types the
    PIN of the page's conference hears the page's fake microphone mixed by
    the conference, the page hears the phone's 700 Hz tone, the page lists
    the phone caller, and muting the page silences it for the phone."""
    page = await join(browser, engine, "Alice", "55")
    phone = Baresip(tmp_path, "bob", 700.0)
    try:
        await phone.start()
        await phone.dial(f"sip:5550100@127.0.0.1:{engine.ua.port}")
        await phone.wait_for("Call established", 10)
        await wait_for_log(engine, "started by rule InboundFromPSTN", timeout=10)
        await asyncio.sleep(1.0)
        await phone.press("55#")
        logs = await wait_for_log(engine, "pstn participant", timeout=30)
        assert "PIN accepted" in logs, logs
        await page.wait_for_function(
            "document.querySelector('#people').textContent.includes('Phone')", timeout=10000)
        # announced as a phone that joined, not as an answer in the dial-out log
        await page.wait_for_function(
            "document.querySelector('#toasts').textContent.includes('joined by phone')", timeout=4000)
        assert await page.text_content("#invite-log") == ""
        assert await page.evaluate("document.querySelectorAll('.tile.phone').length") == 1
        await asyncio.sleep(4.0)  # past "You have joined the conference."
        heard = phone.heard_so_far()[-16000:]
        assert abs(peak_hz(heard) - BEEP_HZ) < 10, peak_hz(heard)
        assert tone_level(heard, BEEP_HZ) > 200, tone_level(heard, BEEP_HZ)
        assert tone_level(heard, 700.0) < tone_level(heard, BEEP_HZ) / 5, "the phone hears itself"
        analysed = await page.evaluate(ANALYSER_SCRIPT, [700.0, BEEP_HZ])
        assert abs(analysed["peakHz"] - 700.0) < 15, analysed
        tone_db, beep_db = analysed["levels"]
        assert tone_db > -70 and tone_db > beep_db + 30, analysed
        # Mute: the phone no longer hears the page.
        await page.click("#mute")
        assert await page.text_content("#mute-label") == "Unmute"
        await asyncio.sleep(1.5)
        muted = phone.heard_so_far()[-8000:]
        assert tone_level(muted, BEEP_HZ) < tone_level(heard, BEEP_HZ) / 5, tone_level(muted, BEEP_HZ)
    finally:
        phone.command("/hangup\n")
        await phone.stop()


async def test_invite_a_phone_number(make_engine: Any, browser: Any) -> None:
    """Check messages both ways between the page and the conference
    scenario: the page's "invite by phone" sends CALL_PARTICIPANT; the
    scenario dials out through the trunk, where sipp (the carrier) answers
    and hangs up three seconds later; the page logs CALL_PARTICIPANT_CONNECTED,
    lists the phone participant, then logs CALL_PARTICIPANT_DISCONNECTED."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    carrier = await start_sipp(["-p", str(port), "-m", "1"], scenario="uas_answer_hangup.xml", timeout=40)
    try:
        engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios",
                                   session_idle_timeout=5.0, trunk=f"sip:127.0.0.1:{port}",
                                   dial_policy=DialPolicy(allow=(r"\+1[0-9]{7,10}",)))
        engine.store.create_room("66")
        token, _ = engine.keys.issue_join_token(
            room="66", identity="alice", display_name="Alice", role="custom",
            permissions=("mute_self", "dial_out"), ttl=600, now=time.time())
        page = await join(browser, engine, "Alice", "66", token=token)
        await page.fill("#invite-number", "+1 555 0199")
        await page.click("#invite-form button")
        await page.wait_for_function(
            "document.querySelector('#invite-log').textContent.includes('+15550199 answered')", timeout=20000)
        await page.wait_for_function(
            "document.querySelector('#people').textContent.includes('+15550199')", timeout=10000)
        await page.wait_for_function(
            "document.querySelector('#invite-log').textContent.includes('+15550199 hung up')", timeout=20000)
        await page.wait_for_function(
            "!document.querySelector('#people').textContent.includes('+15550199')", timeout=10000)
        out, err = await asyncio.wait_for(carrier.communicate(), 30)
        assert carrier.returncode == 0, out.decode(errors="replace")[-2000:] + err.decode(errors="replace")
        logs = session_logs(engine)
        assert "dialing +15550199 into the conference" in logs, logs
    finally:
        if carrier.returncode is None:
            carrier.kill()
            await carrier.wait()


async def test_a_room_with_a_pin_asks_the_page_for_it(engine: Engine, browser: Any) -> None:
    """Check the page joins a room that has a PIN only with it: without,
    the page says the conference needs its PIN and shows the PIN field; a
    wrong PIN is refused; the right one joins."""
    create_room_with_pin(engine.store, "77", pin="246810")
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{engine.http_port}/?conference=77")
    await page.fill("#name", "Eve")
    await page.click("#join-button")
    await page.wait_for_function(
        "document.querySelector('#join-error').textContent.includes('needs its PIN')", timeout=20000)
    assert await page.is_visible("#pin")
    await page.fill("#pin", "135790")
    await page.click("#join-button")
    await page.wait_for_function(
        "document.querySelector('#join-error').textContent.includes('not valid')", timeout=20000)
    await page.fill("#pin", "246810")
    await page.click("#join-button")
    await page.wait_for_selector("#room-view:not([hidden])", timeout=30000)
    assert await page.text_content("#dial-in") == "Phone PIN: 246810#"


async def test_invite_without_a_trunk_fails_politely(engine: Engine, browser: Any) -> None:
    """Check CALL_PARTICIPANT on an engine with no trunk comes back as
    CALL_PARTICIPANT_FAILED and the conference goes on."""
    page = await join(browser, engine, "Alice", "67")
    await page.fill("#invite-number", "5550199")
    await page.click("#invite-form button")
    await page.wait_for_function(
        "document.querySelector('#invite-log').textContent.includes('dialing out is not available')",
        timeout=10000)
    assert await page.evaluate("window.demo.confCall.state") == "CONNECTED"
