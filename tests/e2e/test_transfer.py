"""Call transfer with real baresip phones (RFC 3515 REFER from a phone):
A calls a scenario that connects it to B; B transfers A (blind,
baresip's ``/transfer <uri>``) to C; the engine calls C, reports progress
in NOTIFYs, puts C in B's place and ends B's leg; C then hears A's tone
(Goertzel on what its sndfile module recorded)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from logs import wait_for_log

from .baresip import Baresip
from .phone import tone_level

pytestmark = pytest.mark.e2e

RULES = """
rules:
  - {name: Connect, pattern: "connect", scenarios: [connect]}
"""

CONNECT = '''
from pathlib import Path

from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine

TARGET = Path(__file__).with_name("target.txt").read_text().strip()


async def on_alerting(e):
    a = e.call
    await a.answer()
    b = VoxEngine.call_sip(TARGET)

    def requested(ev):
        Logger.write(f"transfer requested to {ev.target}")
        new = ev.accept()
        new.add_event_listener(CallEvents.Disconnected, lambda ev: a.hangup())

    b.add_event_listener(CallEvents.TransferRequested, requested)
    b.add_event_listener(CallEvents.TransferComplete, lambda ev: Logger.write(f"transfer complete {ev.code}"))
    b.add_event_listener(CallEvents.Disconnected, lambda ev: Logger.write(f"b ended {ev.reason}"))
    b.add_event_listener(CallEvents.Connected, lambda ev: VoxEngine.send_media_between(a, b))
    a.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
'''


async def test_b_transfers_a_to_c_blind(make_engine, tmp_path: Path) -> None:
    """A (440 Hz) reaches B (1000 Hz) through the engine; B's ``/transfer``
    to C (700 Hz): the session logs the request and ``transfer complete
    200``, B's leg ends as ``Transferred``, and C hears 440 Hz."""
    phones = {name: Baresip(tmp_path, name, freq) for name, freq in
              (("alice", 440.0), ("bob", 1000.0), ("carol", 700.0))}
    engine = None
    try:
        for phone in phones.values():
            await phone.start()
        a, b, c = phones["alice"], phones["bob"], phones["carol"]
        engine = await make_engine(RULES, {"connect": CONNECT}, session_idle_timeout=5.0)
        (Path(engine.config.scenarios) / "target.txt").write_text(f"sip:bob@127.0.0.1:{b.sip_port}")
        await a.dial(f"sip:connect@127.0.0.1:{engine.ua.port}")
        await b.wait_for("Incoming call", 10)
        b.command("/accept\n")
        await b.wait_for("Call established", 10)
        await asyncio.sleep(1.0)
        b.command(f"/transfer sip:carol@127.0.0.1:{c.sip_port}\n")
        await c.wait_for("Incoming call", 10)
        c.command("/accept\n")
        await c.wait_for("Call established", 10)
        logs = await wait_for_log(engine, "b ended Transferred", timeout=10)
        assert f"transfer requested to sip:carol@127.0.0.1:{c.sip_port}" in logs
        assert "transfer complete 200" in logs
        assert "b ended Transferred" in logs
        await asyncio.sleep(2.5)
        heard = c.heard_so_far()[-8000 * 2:]
        assert heard.size, "carol's sndfile recorded nothing"
        assert tone_level(heard, 440.0) > 500, tone_level(heard, 440.0)
        assert tone_level(heard, 1000.0) < tone_level(heard, 440.0) / 10
        a.command("/hangup\n")
        await asyncio.sleep(0.5)
    finally:
        for phone in phones.values():
            await phone.stop()


MOVE = '''
from pathlib import Path

from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine

TARGET = Path(__file__).with_name("target.txt").read_text().strip()


async def on_alerting(e):
    a = e.call
    a.add_event_listener(CallEvents.TransferComplete, lambda ev: Logger.write(f"transfer complete {ev.code}"))
    a.add_event_listener(CallEvents.TransferFailed, lambda ev: Logger.write(f"transfer failed {ev.code}"))
    a.add_event_listener(CallEvents.Disconnected, lambda ev: Logger.write(f"a ended {ev.reason}"))
    await a.answer()
    VoxEngine.set_timeout(lambda: a.transfer_to(TARGET), 500)


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
'''


async def test_transfer_to_moves_baresip(make_engine, tmp_path: Path) -> None:
    """``call.transfer_to(uri)`` sends baresip A a REFER; A calls C itself,
    its NOTIFYs give ``transfer complete 200``, the engine ends its leg
    (``Transferred``), and C hears A's 440 Hz directly."""
    phones = {name: Baresip(tmp_path, name, freq) for name, freq in (("alice", 440.0), ("carol", 700.0))}
    try:
        for phone in phones.values():
            await phone.start()
        a, c = phones["alice"], phones["carol"]
        engine = await make_engine(RULES.replace("connect", "move"), {"move": MOVE}, session_idle_timeout=5.0)
        (Path(engine.config.scenarios) / "target.txt").write_text(f"sip:carol@127.0.0.1:{c.sip_port}")
        await a.dial(f"sip:move@127.0.0.1:{engine.ua.port}")
        await c.wait_for("Incoming call", 10)
        c.command("/accept\n")
        logs = await wait_for_log(engine, "a ended Transferred", timeout=10)
        assert "transfer complete 200" in logs and "a ended Transferred" in logs
        await asyncio.sleep(2.5)
        heard = c.heard_so_far()[-8000 * 2:]
        assert heard.size, "carol's sndfile recorded nothing"
        assert tone_level(heard, 440.0) > 500, tone_level(heard, 440.0)
        a.command("/hangup\n")
        await asyncio.sleep(0.5)
    finally:
        for phone in phones.values():
            await phone.stop()
