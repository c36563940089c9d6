"""End-to-end ``call.send_digits``: a scenario sends DTMF to sipp both ways.

- RFC 4733: sipp calls offering telephone-event, with its media port set to
  a socket pair of the test (``-key rtp_port``), which receives the engine's
  RTP and RTCP: the events must decode to exactly the digits sent, inside
  the audio stream (one SSRC, one sequence), and the call's end must bring
  an RTCP BYE to the port above.
- SIP INFO: sipp offers no telephone-event; its scenario accepts exactly
  three INFO requests, ``application/dtmf-relay`` with ``Signal=1``, ``*``
  and ``#`` and ``Duration=120``, and fails the call otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import pytest

from engine.media.codecs.telephone_event import TelephoneEvent, TelephoneEventReceiver
from engine.media.rtcp import Bye, Sdes, SenderReport, parse_rtcp
from engine.media.rtp import RtpPacket
from engine.server import Engine
from engine.transport.rtp_socket import RtpPortAllocator

from logs import wait_for_log
from udp import drain

from .sipp import run_sipp

pytestmark = pytest.mark.e2e

EngineFactory = Callable[..., Awaitable[Engine]]

RULES = """
rules:
  - {name: Digits, pattern: "digits", scenarios: [send_digits]}
"""

SCENARIO = """
import asyncio

from engine.calls.call import CallError
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    call.start_playback_tone(1000)
    try:
        call.send_digits("1", mode="rfc4733")
    except CallError as exc:
        Logger.write(f"refused: {exc}")
    else:
        Logger.write("rfc4733 accepted")
    action = call.send_digits(DIGITS, duration=0.12)
    Logger.write(f"sending {action.digits} by {action.mode}")
    ok = await action
    Logger.write(f"digits sent {ok}")
    await asyncio.sleep(0.2)
    call.hangup()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""


def scenario(digits: str) -> dict[str, str]:
    return {"send_digits": SCENARIO.replace("DIGITS", repr(digits))}


async def test_rfc4733_digits_reach_sipp(make_engine: EngineFactory) -> None:
    """The scenario sends '1,5#9' during a tone: the test's socket at sipp's
    media port decodes exactly 1, 5, # and 9, each as seven packets on one
    timestamp (marker on the first, three end packets), in the tone's SSRC
    and sequence; sipp's call succeeds; an RTCP SR + SDES + BYE arrives at
    the port above once the call ends."""
    engine = await make_engine(RULES, scenario("1,5#9"))
    ports = RtpPortAllocator("127.0.0.1", 43000, 43100)
    pair = ports.allocate()
    loop = asyncio.get_running_loop()
    try:
        run = loop.create_task(run_sipp(
            ["-s", "digits", "-m", "1", "-key", "rtp_port", str(pair.rtp_port)],
            scenario="uac_digits_rfc4733.xml", target=f"127.0.0.1:{engine.ua.port}", timeout=20,
        ))
        rtp: list[bytes] = []
        rtcp: list[bytes] = []
        while not run.done():
            rtp += drain(pair.rtp)
            rtcp += drain(pair.rtcp)
            await asyncio.sleep(0.01)
        result = await run
        await asyncio.sleep(0.05)
        rtcp += drain(pair.rtcp)
    finally:
        ports.release(pair)
    packets = [RtpPacket.parse(data) for data in rtp]
    assert result.returncode == 0 and result.successful == 1, result.output[-2000:] + result.errors
    logs = await wait_for_log(engine, "digits sent")
    assert "rfc4733 accepted" in logs and "sending 1,5#9 by rfc4733" in logs and "digits sent True" in logs, logs
    assert len({p.ssrc for p in packets}) == 1
    seqs = [p.sequence_number for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    events = [p for p in packets if p.payload_type == 101]
    assert {p.payload_type for p in packets} == {0, 101}
    receiver = TelephoneEventReceiver()
    heard = [d for p in events for d in receiver.receive(p.payload, p.timestamp, 0.0)]
    # the probe's "1" (mode='rfc4733' accepted, default duration) first, then the digits
    assert [d.digit for d in heard] == ["1", "1", "5", "#", "9"]
    assert {d.duration for d in heard[1:]} == {0.12} and heard[0].duration == 0.1
    by_ts: dict[int, list[RtpPacket]] = {}
    for p in events:
        by_ts.setdefault(p.timestamp, []).append(p)
    assert len(by_ts) == 5
    for group in by_ts.values():
        payloads = [TelephoneEvent.parse(p.payload) for p in group]
        assert [p.marker for p in group][0] and not any(p.marker for p in group[1:])
        assert [e.end for e in payloads][-3:] == [True] * 3 and not any(e.end for e in payloads[:-3])
    assert rtcp, "no RTCP"
    last = parse_rtcp(rtcp[-1])
    assert isinstance(last[0], SenderReport) and isinstance(last[1], Sdes) and isinstance(last[-1], Bye)
    assert last[0].ssrc == packets[0].ssrc


async def test_info_digits_reach_sipp(make_engine: EngineFactory) -> None:
    """Without telephone-event the scenario's send_digits('1*#') goes by SIP
    INFO: sipp's scenario checks each body (Signal, Duration=120) and the
    Content-Type and succeeds; mode='rfc4733' was refused with a clear error."""
    engine = await make_engine(RULES, scenario("1*#"))
    result = await run_sipp(["-s", "digits", "-m", "1"], scenario="uac_digits_info.xml",
                            target=f"127.0.0.1:{engine.ua.port}", timeout=20)
    assert result.returncode == 0 and result.successful == 1, result.output[-2000:] + result.errors
    logs = await wait_for_log(engine, "digits sent")
    assert "refused: the peer did not negotiate telephone-event: send the digits with mode='info'" in logs, logs
    assert "sending 1*# by info" in logs and "digits sent True" in logs, logs
