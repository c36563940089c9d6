"""End-to-end outgoing audio: ``call.say()`` and ``call.start_playback_tone()``
heard by a real SIP caller.

The caller is the small UDP client of the in-band DTMF test
(:class:`tests.e2e.phone.UdpUac`, PCMU only); the test reads the RTP the
engine sends to the port of its offer, decodes it with
:mod:`engine.media.codecs.g711` and checks the audio itself: speech-band
energy for about as long as espeak-ng speaks the prompt, a 1000 Hz tone
(Goertzel) for about a second.
"""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

from engine.media.codecs import get_decoder
from engine.media.rtp import RtpPacket
from engine.media.tts import EspeakProvider
from engine.server import Engine

from logs import session_logs, wait_for_log
from tools import require_tool

from .phone import UdpUac

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _espeak() -> None:
    require_tool("espeak-ng")

RULES = """
rules:
  - {name: Play, pattern: "dtmf", scenarios: [play]}
"""

PROMPT = "please enter your conference PIN followed by the pound key"

SCENARIO = """
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call
    try:
        call.say("too early")
    except Exception as exc:
        Logger.write(f"refused before answer: {type(exc).__name__}")
    call.add_event_listener(
        CallEvents.PlaybackFinished,
        lambda ev: Logger.write(f"PlaybackFinished {ev.playback.kind} completed={ev.completed}"),
    )

    def ended(ev):
        Logger.write(f"ended {ev.name} {ev.code}")
        VoxEngine.terminate()

    call.add_event_listener(CallEvents.Disconnected, ended)
    await call.answer()
    BODY


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

SAY = f'done = await call.say("{PROMPT}")\n    Logger.write(f"said {{done}}")'
TONE = 'done = await call.start_playback_tone(1000, 1.0)\n    Logger.write(f"tone played {done}")'


async def receive_rtp(engine: Engine, sock: socket.socket, until_log: str, timeout: float) -> list[RtpPacket]:
    """Collect RTP until ``until_log`` is in the session log (plus 0.3 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    packets: list[RtpPacket] = []
    stop_at: float | None = None
    while loop.time() < deadline and (stop_at is None or loop.time() < stop_at):
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.1)
            packets.append(RtpPacket.parse(data))
        except asyncio.TimeoutError:
            pass
        if stop_at is None and until_log in session_logs(engine):
            stop_at = loop.time() + 0.3
    return packets


def decode(packets: list[RtpPacket]) -> np.ndarray:
    assert packets and all(p.payload_type == 0 for p in packets)
    decoder = get_decoder("PCMU")
    ordered = sorted(packets, key=lambda p: (p.timestamp - packets[0].timestamp) & 0xFFFFFFFF)
    return np.concatenate([decoder.decode(p.payload) for p in ordered]).astype(np.float64)


def goertzel(x: np.ndarray, freq: float, rate: int = 8000) -> float:
    n = np.arange(len(x))
    return float(abs(np.sum(x * np.exp(-2j * np.pi * freq * n / rate))) ** 2)


async def play_call(make_engine, body: str, until_log: str) -> tuple[Engine, list[RtpPacket], str]:
    engine = await make_engine(RULES, {"play": SCENARIO.replace("BODY", body)})
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.setblocking(False)
    uac = UdpUac(engine.ua.port, rtp.getsockname()[1])
    try:
        engine_rtp = await uac.invite()
        # A phone sends RTP too: strict RTP sends to an SDP address nothing
        # came from only for a 3 s grace, shorter than the prompt.
        rtp.sendto(RtpPacket(0, 1, 0, 0x5EED, b"\xff" * 160).serialize(), ("127.0.0.1", engine_rtp))
        packets = await receive_rtp(engine, rtp, until_log, timeout=15)
        await uac.bye()
    finally:
        uac.close()
        rtp.close()
    logs = await wait_for_log(engine, "ended Disconnected", timeout=10.0)
    return engine, packets, logs


async def test_say_prompt_arrives_as_speech(make_engine) -> None:
    """``await call.say(PROMPT)`` after answer: the caller receives one RTP
    stream (marker on its first packet) whose audio has speech-band energy
    (300-3400 Hz) for about as long as espeak-ng speaks the prompt (2-6 s,
    within 0.3 s of espeak-ng's own output); the await returns True after
    PlaybackFinished; say() before answer raised CallError."""
    pcm_ref, rate = EspeakProvider().synthesize(PROMPT, "en")
    expected = len(pcm_ref) / rate
    assert 2.0 < expected < 6.0
    engine, packets, logs = await play_call(make_engine, SAY, "said ")
    assert "refused before answer: CallError" in logs, logs
    assert "PlaybackFinished say completed=True" in logs and "said True" in logs, logs
    assert logs.index("PlaybackFinished say") < logs.index("said True")
    assert packets[0].marker and len({p.ssrc for p in packets}) == 1
    pcm = decode(packets)
    duration = len(pcm) / 8000
    assert 2.0 < duration < 6.0 and abs(duration - expected) < 0.3, (duration, expected)
    spectrum = np.abs(np.fft.rfft(pcm)) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / 8000)
    band = spectrum[(freqs >= 300) & (freqs <= 3400)].sum() / spectrum[freqs > 0].sum()
    assert band > 0.8, band
    # loud 100 ms windows (speech, not the pauses between words) span most of it
    windows = pcm[: len(pcm) // 800 * 800].reshape(-1, 800)
    rms = np.sqrt((windows ** 2).mean(axis=1))
    voiced = np.flatnonzero(rms > 300)
    assert len(voiced) >= 0.5 * len(windows), rms.round()
    span = (voiced[-1] - voiced[0] + 1) / 10
    assert 2.0 < span < 6.0 and span > 0.8 * expected, (span, expected)


async def test_tone_playback_arrives_as_1000_hz(make_engine) -> None:
    """``start_playback_tone(1000, 1.0)``: about 1 s (50 packets) of audio
    in which 1000 Hz dominates (Goertzel against neighbouring bands), then
    PlaybackFinished is logged and the awaited handle returns True."""
    engine, packets, logs = await play_call(make_engine, TONE, "tone played ")
    assert "PlaybackFinished playback completed=True" in logs and "tone played True" in logs, logs
    assert 48 <= len(packets) <= 51, len(packets)
    pcm = decode(packets)
    powers = {f: goertzel(pcm, f) for f in (400, 700, 941, 1000, 1209, 1400, 2000)}
    assert max(powers, key=powers.__getitem__) == 1000
    assert powers[1000] > 100 * max(v for f, v in powers.items() if f != 1000), powers
    for frame in pcm[: len(pcm) // 160 * 160].reshape(-1, 160)[:-1]:
        assert goertzel(frame, 1000) > 10 * goertzel(frame, 700)
