"""``call.transfer_to`` against sipp phones (RFC 3515 REFER sent by the
engine): a sipp UAS that follows the REFER (202, NOTIFY sipfrag 100 then
200, then the engine's BYE), and one that refuses it (405) so that
``fallback="bridge"`` makes the engine place the call itself and join it.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from engine.calls.sip_leg import SipCall

from logs import session_logs, wait_for_log

from .sipp import start_sipp

pytestmark = pytest.mark.e2e

RULES = """
rules:
  - {name: Move, pattern: "move", scenarios: [move]}
"""

MOVE = '''
from pathlib import Path

from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine

PHONE, TARGET, FALLBACK = Path(__file__).with_name("plan.txt").read_text().split()


def on_started(e):
    b = VoxEngine.call_sip(PHONE)

    def failed(ev):
        Logger.write(f"transfer failed {ev.code} refused={ev.refused}")
        new = ev.new_call
        if new is None:
            return

        def bridged(_):
            Logger.write("fallback connected")

            def done():
                new.hangup()
                b.hangup()
                VoxEngine.terminate()

            VoxEngine.set_timeout(done, 800)

        new.add_event_listener(CallEvents.Connected, bridged)

    b.add_event_listener(CallEvents.Connected, lambda ev: VoxEngine.set_timeout(
        lambda: b.transfer_to(TARGET, fallback=None if FALLBACK == "none" else FALLBACK), 300))
    b.add_event_listener(CallEvents.TransferComplete, lambda ev: Logger.write(f"transfer complete {ev.code}"))
    b.add_event_listener(CallEvents.TransferFailed, failed)

    def ended(ev):
        Logger.write(f"b ended {ev.code} {ev.reason}")
        if ev.reason == "Transferred":
            VoxEngine.terminate()

    b.add_event_listener(CallEvents.Disconnected, ended)


VoxEngine.add_event_listener(AppEvents.Started, on_started)
'''


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def finish(proc: asyncio.subprocess.Process, name: str) -> None:
    """Wait for a sipp run; it must have ended with every call successful (exit 0)."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"{name}: " + out.decode(errors="replace")[-2500:] + err.decode(errors="replace")


async def test_transfer_to_moves_a_sipp_phone(make_engine, tmp_path: Path) -> None:
    """The scenario calls the sipp UAS and ``transfer_to``s it: sipp gets the
    REFER, answers 202 and NOTIFYs 100 then 200; the engine logs
    ``transfer complete 200``, ends its leg with BYE (``Transferred``), and
    sipp's scenario (which expects exactly that) succeeds."""
    port = free_port()
    uas = await start_sipp(["-p", str(port), "-m", "1"], scenario="uas_refer_accept.xml", timeout=20)
    try:
        engine = await make_engine(RULES, {"move": MOVE}, session_idle_timeout=5.0)
        (Path(engine.config.scenarios) / "plan.txt").write_text(
            f"sip:phone@127.0.0.1:{port} sip:carol@127.0.0.1:5999 none")
        await asyncio.sleep(0.3)  # let sipp bind
        engine.runtime.start_session(engine.rules.match("move"))
        await finish(uas, "uas_refer_accept")
        logs = await wait_for_log(engine, "b ended 200 Transferred", timeout=5)
        assert "transfer complete 200" in logs, logs
        assert "b ended 200 Transferred" in logs, logs
        assert "transfer failed" not in logs
    finally:
        if uas.returncode is None:
            uas.kill()
            await uas.wait()


async def test_refused_refer_falls_back_to_a_bridge(make_engine, tmp_path: Path) -> None:
    """The sipp UAS answers the REFER 405: ``TransferFailed`` 405 (refused)
    with the fallback's new call, which the engine places to a second sipp
    UAS (``-sn uas``); once it answers, the two legs are joined both ways in
    the media graph; the scenario then hangs both up and both sipp runs
    succeed."""
    phone_port, target_port = free_port(), free_port()
    phone = await start_sipp(["-p", str(phone_port), "-m", "1"], scenario="uas_refer_refuse.xml", timeout=20)
    target = await start_sipp(["-sn", "uas", "-p", str(target_port), "-m", "1"], timeout=20)
    try:
        engine = await make_engine(RULES, {"move": MOVE}, session_idle_timeout=5.0)
        (Path(engine.config.scenarios) / "plan.txt").write_text(
            f"sip:phone@127.0.0.1:{phone_port} sip:carol@127.0.0.1:{target_port} bridge")
        await asyncio.sleep(0.3)
        engine.runtime.start_session(engine.rules.match("move"))
        logs = await wait_for_log(engine, "fallback connected", timeout=10)
        assert "transfer failed 405 refused=True" in logs, logs
        assert "fallback connected" in logs, logs
        calls = list(engine.ua.calls)
        assert len(calls) == 2
        legs = {str(c.dialog.remote_target.port) if c.dialog else "": c for c in calls}
        b, new = legs[str(phone_port)], legs[str(target_port)]
        assert isinstance(b, SipCall) and isinstance(new, SipCall)
        flows = b._require_graph().flows()
        assert (b, new) in flows and (new, b) in flows, flows
        await finish(phone, "uas_refer_refuse")
        await finish(target, "uas")
        logs = await wait_for_log(engine, "b ended", timeout=5)
        assert "transfer complete" not in logs
        assert "b ended" in logs and "Transferred" not in logs, session_logs(engine)
    finally:
        for proc in (phone, target):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
