"""End-to-end speech recognition: espeak-ng speaks into a real SIP call.

A small SIP client (:class:`~tests.e2e.phone.UdpUac`) places a call and
sends PCMU audio over RTP, paced at 20 ms: words spoken by espeak-ng
(several voices and speeds), each followed by a second of silence. The
scenario answers and loops on ``call.gather(speech=True, hints=...)``,
logging each result; the test compares what was said with what was heard.

Accuracy is measured, not assumed: PocketSphinx's US English model on
8 kHz synthetic speech (see the README's "Speech recognition") gets most
but not all of them; the threshold below is set under the measured rate.
Latency (end of speech to result) is printed, never asserted.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess

import numpy as np
import pytest

from engine.media.codecs import get_encoder
from engine.media.rtp import RtpSender
from engine.media.tts import parse_wav, resample

from logs import wait_for_log

from .phone import UdpUac

pytestmark = pytest.mark.e2e

RULES = """
rules:
  - {name: Yesno, pattern: "yesno", scenarios: [gather_speech]}
  - {name: Digits, pattern: "digits", scenarios: [gather_speech]}
"""

SCENARIO = '''
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine

HINTS = {
    "yesno": ["yes", "no"],
    "digits": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
}


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    n = 0
    while not call.state.ended:
        r = await call.gather(hints=HINTS[call.number], digits=False, timeout=30, end_silence=0.5)
        if r.kind == "hangup":
            break
        n += 1
        Logger.write(f"heard {n} {r.kind} {r.text!r} conf={r.confidence:.2f} latency={r.latency}")


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
'''

VOICES = [("en-us", 130), ("en-us", 170), ("en", 150), ("en+f2", 140), ("en-us+klatt", 150)]
WORDS = {"yesno": ["yes", "no"],
         "digits": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]}
#: Measured (PocketSphinx 5.1.1, these voices): see the README. The
#: threshold is set below the measured rate, so a real regression (a
#: broken tap, resampling, endpointing) fails and the model's own misses do not.
MIN_ACCURACY = 0.70


def speak(word: str, voice: str, speed: int) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), word],
                         capture_output=True, check=True).stdout
    pcm, rate = parse_wav(wav)
    return resample(pcm, rate, 8000)


async def run_call(make_engine, number: str) -> tuple[int, int, list[float]]:
    engine = await make_engine(RULES, {"gather_speech": SCENARIO})
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    uac = UdpUac(engine.ua.port, rtp.getsockname()[1], number)
    encoder = get_encoder("PCMU")
    sender = RtpSender()
    loop = asyncio.get_running_loop()
    said: list[str] = []
    try:
        engine_rtp = await uac.invite()
        start = loop.time()
        sent = 0

        async def send(pcm: np.ndarray) -> None:
            nonlocal sent
            for i in range(len(pcm) // 160):
                payload = encoder.encode(pcm[i * 160:(i + 1) * 160])
                rtp.sendto(sender.next_packet(payload, 0, 160, marker=sent == 0).serialize(),
                           ("127.0.0.1", engine_rtp))
                sent += 1
                delay = start + sent * 0.02 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)

        silence = np.zeros(6400, dtype=np.int16)
        await send(silence)
        for voice, speed in VOICES:
            for word in WORDS[number]:
                said.append(word)
                await send(np.concatenate([silence[:2400], speak(word, voice, speed), silence]))
                await wait_for_log(engine, f"heard {len(said)} ", timeout=10)
        await uac.bye()
    finally:
        uac.close()
        rtp.close()
    logs = await wait_for_log(engine, f"heard {len(said)} ", timeout=5)
    heard = dict((int(n), text) for n, text in re.findall(r"heard (\d+) \w+ '([^']*)'", logs))
    latencies = [float(x) for x in re.findall(r"latency=([0-9.]+)", logs)]
    right = sum(heard.get(i + 1) == word for i, word in enumerate(said))
    for i, word in enumerate(said):
        if heard.get(i + 1) != word:
            print(f"  missed: said {word!r} ({VOICES[i // len(WORDS[number])]}), heard {heard.get(i + 1)!r}")
    return right, len(said), latencies


@pytest.mark.timeout(400)
async def test_gather_recognises_yes_no_and_digits_over_rtp(make_engine) -> None:
    """espeak-ng says yes/no (5 voices and speeds: 10 utterances) and one
    to nine (45 utterances) into two SIP calls over RTP; each utterance
    gives exactly one gather result, and at least MIN_ACCURACY of them are
    the word said. Prints accuracy and end-of-speech-to-result latency."""
    right = total = 0
    latencies: list[float] = []
    for number in ("yesno", "digits"):
        r, n, lat = await run_call(make_engine, number)
        print(f"{number}: {r}/{n} recognised")
        right, total, latencies = right + r, total + n, latencies + lat
    accuracy = right / total
    print(f"speech accuracy {right}/{total} = {accuracy:.0%}; latency from end of speech: "
          f"median {np.median(latencies):.2f} s, max {max(latencies):.2f} s (end_silence 0.5 s)")
    assert total >= 30
    assert accuracy >= MIN_ACCURACY, f"{right}/{total}"
