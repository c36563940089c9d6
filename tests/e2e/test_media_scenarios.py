"""End-to-end media behaviours of whole scenarios, heard by real RTP callers:
the shipped echo test, early media before the answer, and a call recording.
Audio is checked with Goertzel filters on what the caller received (or on
the WAV written), never by counting packets."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest

from logs import wait_for_log
from tools import require_tool

from .phone import RtpPhone, tone_level

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _espeak() -> None:
    require_tool("espeak-ng")


async def test_shipped_echo_scenario(make_engine) -> None:
    """The shipped rules route ``echo`` to scenarios/echo.py: the caller
    hears the spoken explanation, the 1000 Hz beep, and then its own
    700 Hz tone sent back to it."""
    rules = (ROOT / "rules.yaml").read_text()
    scenarios = {p.stem: p.read_text() for p in (ROOT / "scenarios").glob("*.py")}
    engine = await make_engine(rules, scenarios)
    phone = RtpPhone(engine.ua.port, "echo", 700.0)
    try:
        await phone.call()
        await wait_for_log(engine, "echo test for", timeout=5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        echoed = 0.0
        while loop.time() < deadline and echoed < 1000:
            await asyncio.sleep(0.2)
            echoed = tone_level(phone.heard(0.5), 700)
        everything = phone.heard(60)
        assert echoed > 1000, f"own tone never echoed (level {echoed:.0f})"
        assert tone_level(everything, 1000) > 50, "no beep before the echo"
        speech = everything[: 8000 * 2]
        assert np.sqrt(np.mean(speech ** 2)) > 300, "no speech at the start"
        await phone.hang_up()
    finally:
        await phone.close()


EARLY_RULES = """
rules:
  - {name: Early, pattern: "early", scenarios: [early]}
  - {name: Record, pattern: "record", scenarios: [record]}
"""

EARLY = """
import asyncio
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    call.start_early_media()
    call.start_playback_tone(425, None)
    Logger.write("ringback playing")
    await asyncio.sleep(1.5)
    call.stop_playback()
    await call.answer()
    Logger.write("answered")


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

RECORD = """
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.RecordStopped,
                            lambda ev: Logger.write(f"recorded {ev.path} {ev.duration:.1f}"))
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    rec = call.record()
    call.start_playback_tone(1100, None)
    call.start_echo()
    Logger.write(f"recording to {rec.path}")


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""


async def test_early_media_heard_before_answer(make_engine) -> None:
    """``start_early_media()`` then a 425 Hz ringback tone: the caller gets
    the tone on RTP before the 200 OK (about 1.5 s of it)."""
    engine = await make_engine(EARLY_RULES, {"early": EARLY, "record": RECORD})
    phone = RtpPhone(engine.ua.port, "early", None)
    try:
        await phone.call()
        await wait_for_log(engine, "answered", timeout=5)
        early = phone.heard_before(phone.uac.answered_at)
        assert early.size >= 8000, f"only {early.size} samples before the answer"
        assert tone_level(early, 425) > 1000
        await phone.hang_up()
    finally:
        await phone.close()


async def test_call_recording_holds_both_directions(make_engine) -> None:
    """``call.record()`` while the call hears a 1100 Hz tone and its own
    500 Hz tone echoed: the WAV (8 kHz mono 16-bit, under the data
    directory) holds both, and RecordStopped at hang-up gives its path and
    duration."""
    engine = await make_engine(EARLY_RULES, {"early": EARLY, "record": RECORD})
    phone = RtpPhone(engine.ua.port, "record", 500.0)
    try:
        await phone.call()
        logs = await wait_for_log(engine, "recording to", timeout=5)
        await asyncio.sleep(1.5)
        await phone.hang_up()
    finally:
        await phone.close()
    logs = await wait_for_log(engine, "recorded ", timeout=5)
    path = Path(logs.split("recorded ", 1)[1].split()[0])
    assert path.is_relative_to(engine.config.data_dir / "recordings"), path
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    assert 1.0 < pcm.size / 8000 < 4.0
    assert tone_level(pcm, 1100) > 1000 and tone_level(pcm, 500) > 1000
