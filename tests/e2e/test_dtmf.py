"""End-to-end DTMF, all three ways, on real RTP and real SIP peers.

- RFC 4733: sipp plays Debian's sip-tester captures ``dtmf_2833_{1,2,3,pound}.pcap``
  into the call;
- SIP INFO: sipp sends ``application/dtmf-relay`` and ``application/dtmf`` bodies;
- in-band: a small SIP client in the test places the call and sends PCMU
  audio with DTMF tones (from :func:`engine.media.dtmf.generate_dtmf_sequence`)
  to the RTP port of the engine's 200 OK SDP, paced at 20 ms.

The scenario (tests/scenarios/collect_dtmf.py) logs each ``ToneReceived``
with its mode and the result of ``collect_tones(terminator="#", timeout=10)``.
"""

from __future__ import annotations

import asyncio
import re
import socket

import numpy as np
import pytest

from engine.media.codecs import get_encoder
from engine.media.dtmf import generate_dtmf_sequence
from engine.media.rtp import RtpSender

from logs import wait_for_log

from .phone import UdpUac
from .sipp import run_sipp

pytestmark = pytest.mark.e2e

RULES = """
rules:
  - {name: Dtmf, pattern: "dtmf", scenarios: [collect_dtmf]}
"""


def tones(logs: str) -> list[tuple[str, str]]:
    return re.findall(r" tone (\S) (\w+)$", logs, re.MULTILINE)


async def test_rfc4733_from_sipp_pcap(make_engine) -> None:
    """sipp plays the RFC 4733 captures for 1, 2, 3 and # (end packets
    repeated three times): the scenario's collect_tones returns exactly
    '123', and each digit is reported once, in mode 'rfc4733'."""
    engine = await make_engine(RULES)
    result = await run_sipp(["-s", "dtmf", "-m", "1"], scenario="uac_dtmf_pcap.xml",
                            target=f"127.0.0.1:{engine.ua.port}", timeout=20)
    assert result.returncode == 0, result.output[-2000:] + result.errors
    logs = await wait_for_log(engine, "ended Disconnected", timeout=10.0)
    assert "digits '123'" in logs, logs
    assert tones(logs) == [("1", "rfc4733"), ("2", "rfc4733"), ("3", "rfc4733"), ("#", "rfc4733")], logs


async def test_info_dtmf_from_sipp(make_engine) -> None:
    """sipp sends 4, 6 and # as application/dtmf-relay and 5 as
    application/dtmf INFO: each is answered 200 and arrives as a tone in
    mode 'info'; collect_tones returns '456'."""
    engine = await make_engine(RULES)
    result = await run_sipp(["-s", "dtmf", "-m", "1"], scenario="uac_info_dtmf.xml",
                            target=f"127.0.0.1:{engine.ua.port}", timeout=15)
    assert result.returncode == 0, result.output[-2000:] + result.errors
    logs = await wait_for_log(engine, "ended Disconnected", timeout=10.0)
    assert "digits '456'" in logs, logs
    assert tones(logs) == [("4", "info"), ("5", "info"), ("6", "info"), ("#", "info")], logs


async def test_inband_tones_detected(make_engine) -> None:
    """A caller that offers only PCMU sends 1, 2, 3 and # as audio tones
    (100 ms each, 100 ms apart, -10 dBm0) over RTP paced at 20 ms: the
    engine's detector reports each once in mode 'inband' and
    collect_tones returns '123'."""
    engine = await make_engine(RULES)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    uac = UdpUac(engine.ua.port, rtp.getsockname()[1])
    try:
        engine_rtp = await uac.invite()
        silence = np.zeros(1600, dtype=np.int16)
        pcm = np.concatenate([silence, generate_dtmf_sequence("123#"), silence])
        encoder = get_encoder("PCMU")
        sender = RtpSender()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(len(pcm) // 160):
            payload = encoder.encode(pcm[i * 160:(i + 1) * 160])
            rtp.sendto(sender.next_packet(payload, 0, 160, marker=i == 0).serialize(),
                       ("127.0.0.1", engine_rtp))
            delay = start + (i + 1) * 0.02 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        logs = await wait_for_log(engine, "digits ", timeout=5)
        await uac.bye()
    finally:
        uac.close()
        rtp.close()
    logs = await wait_for_log(engine, "ended Disconnected", timeout=10.0)
    assert "digits '123'" in logs, logs
    assert tones(logs) == [("1", "inband"), ("2", "inband"), ("3", "inband"), ("#", "inband")], logs
