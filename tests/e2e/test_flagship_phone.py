"""The flagship application with real phones only (issue: the canonical
application, end to end): the shipped rules and scenarios, a room opened
with ``callbridge rooms create``, and baresip softphones that dial the
conference number and type the PIN as RFC 4733 DTMF. Each phone's
microphone is a tone of its own; each must hear the other's tone in what
its ``sndfile`` module recorded (Goertzel), and a caller with a wrong PIN
is refused after three tries."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from logs import wait_for_log

from engine.server import Engine

from .baresip import Baresip
from .phone import tone_level

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def rooms_create(engine, room: str) -> None:
    """``callbridge rooms create ROOM --no-pin`` against the engine's data
    directory: an open room, which phone callers join by typing its id."""
    env = dict(os.environ, CALLBRIDGE_DATA_DIR=str(engine.config.data_dir))
    result = subprocess.run([sys.executable, "-m", "engine", "rooms", "create", room, "--no-pin"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


async def shipped_engine(make_engine):
    return await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios",
                             session_idle_timeout=5.0)



async def meet_by_pin(engine: Engine, phones: list[Baresip], uri: str, pin: str = "4321#") -> None:
    """Each phone in turn dials ``uri`` (the PSTN gatekeeper), types ``pin``
    and is in the conference (``(n in)``); they talk 3 s, hang up, and the
    phones are stopped whatever happens."""
    try:
        for phone in phones:
            await phone.start()
        for n, phone in enumerate(phones, 1):
            await phone.dial(uri)
            await phone.wait_for("Call established", 10)
            await wait_for_log(engine, "started by rule InboundFromPSTN", timeout=5)
            await asyncio.sleep(1.0)
            await phone.press(pin)
            await wait_for_log(engine, f"({n} in)", timeout=20)
        await asyncio.sleep(3.0)  # both talk
        for phone in phones:
            phone.command("/hangup\n")
        await asyncio.sleep(0.5)
    finally:
        for phone in phones:
            await phone.stop()

async def test_two_phones_meet_by_pin(make_engine, tmp_path: Path) -> None:
    """Two baresip phones (440 Hz and 1000 Hz microphones) dial 5550100,
    type PIN 4321#, and each hears the other's tone (and not much of its own)."""
    engine = await shipped_engine(make_engine)
    rooms_create(engine, "4321")
    phones = [Baresip(tmp_path, "alice", 440.0), Baresip(tmp_path, "bob", 1000.0)]
    await meet_by_pin(engine, phones, f"sip:5550100@127.0.0.1:{engine.ua.port}")
    alice, bob = (p.heard()[-8000 * 2:] for p in phones)
    assert alice.size and bob.size, "sndfile recorded nothing"
    assert tone_level(alice, 1000.0) > 500, tone_level(alice, 1000.0)
    assert tone_level(bob, 440.0) > 500, tone_level(bob, 440.0)
    assert tone_level(alice, 440.0) < tone_level(alice, 1000.0) / 10
    assert tone_level(bob, 1000.0) < tone_level(bob, 440.0) / 10


async def test_wrong_pin_refused_after_three_tries(make_engine, tmp_path: Path) -> None:
    """A caller typing a PIN that opens nothing three times is told so and
    hung up on; the session log records the three failures without the digits."""
    engine = await shipped_engine(make_engine)
    rooms_create(engine, "4321")
    phone = Baresip(tmp_path, "mallory", 700.0)
    try:
        await phone.start()
        await phone.dial(f"sip:5550100@127.0.0.1:{engine.ua.port}")
        await phone.wait_for("Call established", 10)
        for attempt in range(1, 4):
            await asyncio.sleep(1.0)
            await phone.press("9999#")
            await wait_for_log(engine, f"try {attempt} of 3", timeout=20)
        logs = await wait_for_log(engine, "refused ", timeout=30)
        await phone.wait_for("terminated", 30)
    finally:
        await phone.stop()
    assert "9999" not in logs
    assert "PIN accepted" not in logs
