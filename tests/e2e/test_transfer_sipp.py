"""``call.transfer_to`` against sipp phones (RFC 3515 REFER sent by the
engine): a sipp UAS that follows the REFER (202, NOTIFY sipfrag 100 then
200, then the engine's BYE), one that refuses it (405) so that
``fallback="bridge"`` makes the engine place the call itself and join it,
and an attended transfer between two calls (Replaces, RFC 3891) with sipp
as both phones.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import unquote

import pytest

from serve_process import free_port, free_ports

from engine.calls.sip_leg import SipCall

from logs import session_logs, wait_for_log

from .sipp import SIPP_DIR, start_sipp

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
    phone_port, target_port = free_ports(2)
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


ATTENDED = '''
from pathlib import Path

from engine.scenario import AppEvents, CallEvents, Logger, VoxEngine

A, C = Path(__file__).with_name("plan.txt").read_text().split()


def on_started(e):
    a = VoxEngine.call_sip(A)
    c = VoxEngine.call_sip(C)
    up = []
    ended = []

    def connected(ev):
        up.append(ev.call)
        if len(up) == 2:
            VoxEngine.send_media_between(a, c)
            VoxEngine.set_timeout(lambda: a.transfer_to(c), 300)

    def gone(name):
        def on(ev):
            Logger.write(f"{name} ended {ev.code} {ev.reason}")
            ended.append(name)
            if len(ended) == 2:
                VoxEngine.terminate()
        return on

    for call, name in ((a, "a"), (c, "c")):
        call.add_event_listener(CallEvents.Connected, connected)
        call.add_event_listener(CallEvents.Disconnected, gone(name))
    a.add_event_listener(CallEvents.TransferComplete, lambda ev: Logger.write(f"transfer complete {ev.code}"))
    a.add_event_listener(CallEvents.TransferFailed, lambda ev: Logger.write(f"transfer failed {ev.code}"))


VoxEngine.add_event_listener(AppEvents.Started, on_started)
'''


async def test_attended_transfer_with_replaces_between_sipp_phones(make_engine, tmp_path: Path) -> None:
    """The engine has a call with phone A and one with phone C (both sipp
    UASes) and ``a.transfer_to(c)``: A gets a REFER whose Refer-To is C's
    contact with ``Replaces`` naming the engine's dialog with C (RFC 3891
    §7.1); A's new call to C (a second sipp, ``uac_replaces.xml``, sending
    that Replaces header) is accepted by C only if the Replaces names that
    dialog, and C then ends the replaced call with BYE; A's NOTIFYs give
    ``transfer complete 200`` and the engine's BYE to A. All three sipp
    runs succeed.

    Two sipp phones, not baresip: Debian's baresip 1.0 (libre 1.1) has no
    Replaces support at all (the word is in neither binary). Sent such a
    REFER, it puts ``?Replaces=...`` into the new INVITE's Request-URI
    (with the escapes mangled, ``%3B`` read as ``?``) instead of a
    Replaces header, and as C it would take an INVITE with Replaces as a
    second incoming call."""
    a_port, c_port = free_ports(2)
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    phone_a = await start_sipp(["-p", str(a_port), "-m", "1"], scenario="uas_attended_a.xml", timeout=20,
                               cwd=a_dir)
    c_dir = tmp_path / "c"
    c_dir.mkdir()
    phone_c = await start_sipp(["-p", str(c_port), "-m", "2", "-trace_err"],
                               scenario="uas_replaces_c.xml", timeout=20, cwd=c_dir)
    procs = [phone_a, phone_c]
    try:
        engine = await make_engine(RULES.replace("move", "attended"), {"attended": ATTENDED},
                                   session_idle_timeout=5.0)
        (Path(engine.config.scenarios) / "plan.txt").write_text(
            f"sip:alice@127.0.0.1:{a_port} sip:carol@127.0.0.1:{c_port}")
        await asyncio.sleep(0.3)  # let sipp bind
        engine.runtime.start_session(engine.rules.match("attended"))
        refer_file = a_dir / "refer_to.txt"
        for _ in range(100):
            if refer_file.exists() and refer_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        refer_to = refer_file.read_text().strip()
        uri, _, header = refer_to.partition("?")
        assert uri.startswith(f"sip:127.0.0.1:{c_port}"), refer_to
        name, _, value = header.partition("=")
        assert name == "Replaces", refer_to
        replaces = unquote(value)
        c_leg = next(call for call in engine.ua.calls
                     if call.dialog is not None and call.dialog.remote_target.port == c_port)
        assert c_leg.dialog is not None
        assert replaces == (f"{c_leg.dialog.call_id};to-tag={c_leg.dialog.remote_tag}"
                            f";from-tag={c_leg.dialog.local_tag}")
        new_call = await start_sipp(["-sf", str(SIPP_DIR / "uac_replaces.xml"), "-key", "replaces", replaces,
                                     "-s", "carol", "-m", "1", f"127.0.0.1:{c_port}"], timeout=20)
        procs.append(new_call)
        await finish(new_call, "uac_replaces")
        await finish(phone_c, "uas_replaces_c")
        await finish(phone_a, "uas_attended_a")
        logs = await wait_for_log(engine, "a ended 200 Transferred", timeout=5)
        assert "transfer complete 200" in logs, logs
        assert "a ended 200 Transferred" in logs, logs
        assert "c ended 200" in logs, logs  # C's BYE of the replaced dialog
        assert "transfer failed" not in logs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
