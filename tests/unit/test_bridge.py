"""The port-level bridge on G.711 ports it decodes and encodes in batches.

Each fake port hands the bridge µ-law payloads (as a SIP leg's
MediaSession does) and keeps the payloads it is sent; what a leg heard is
checked against the mix computed frame by frame, and by which tones it
holds (single-bin DFT), never by counting frames.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.media.bridge import SILENCE_PEAK, Bridge, BridgePlan
from engine.media.codecs.g711 import ULAW_DECODE, ULAW_ENCODE, PcmuDecoder, PcmuEncoder
from engine.media.mixer import FlowMatrix, mix_minus

Pcm = npt.NDArray[np.int16]
RATE = 8000
N = 160


class G711Port:
    """A leg whose frames the bridge decodes and encodes itself."""

    decode_table = ULAW_DECODE
    encode_table = ULAW_ENCODE

    def __init__(self) -> None:
        self.next: bytes | None = None  # the payload pulled at the next tick
        self.sent: list[bytes] = []
        self.last_sent: Pcm | None = None

    def graph_attach(self) -> None:
        pass

    def graph_detach(self) -> None:
        pass

    def pull(self, now: float) -> Pcm | None:
        raise AssertionError("the bridge pulls payloads from a batch port")

    def pull_payload(self, now: float) -> bytes | Pcm | None:
        return self.next

    def push(self, frame: Pcm | None) -> bool:
        raise AssertionError("the bridge pushes payloads to a batch port")

    def push_payload(self, payload: bytes) -> None:
        self.sent.append(payload)


class Leg:
    def __init__(self) -> None:
        self.port = G711Port()

    def media_port(self) -> G711Port:
        return self.port


def conference(legs: list[Leg]) -> BridgePlan[Leg]:
    """One mix-minus conference of ``legs`` (the plan MediaGraph compiles)."""
    n = len(legs)
    stage1 = FlowMatrix(n, 1, [(i, 0) for i in range(n)])
    stage2 = FlowMatrix(n + 1, n, [e for i in range(n) for e in ((n, i, 1.0), (i, i, -1.0))])
    return BridgePlan(list(legs), [], list(legs), stage1, stage2, [], [])


def tone(freq: float, frame: int, amp: float = 3000.0) -> bytes:
    t = (np.arange(N) + frame * N) / RATE
    return PcmuEncoder().encode(np.rint(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16))


def level(pcm: Pcm, freq: float) -> float:
    t = np.arange(pcm.size) / RATE
    return float(abs(np.dot(pcm.astype(np.float64), np.exp(-2j * np.pi * freq * t))) * 2 / pcm.size)


def test_batch_decode_and_encode_equal_frame_by_frame() -> None:
    """Check what each leg is sent after the bridge decodes all payloads in
    one lookup, mixes and encodes all frames in one lookup equals decoding
    each payload alone, mixing and encoding each frame alone (random codes)."""
    rng = np.random.default_rng(5)
    legs = [Leg() for _ in range(7)]
    plan = conference(legs)
    bridge: Bridge[Leg] = Bridge(N)
    for tick in range(5):
        payloads = [rng.integers(0, 256, N, dtype=np.uint8).tobytes() for _ in legs]
        for leg, payload in zip(legs, payloads):
            leg.port.next = payload
        bridge.tick(plan, tick * 0.02)
        frames = [PcmuDecoder().decode(p) for p in payloads]
        expected = [PcmuEncoder().encode(f) for f in mix_minus(frames)]
        assert [leg.port.sent[-1] for leg in legs] == expected
    assert bridge.quiet_ticks == 0


def test_batch_decode_rows_with_and_without_gaps() -> None:
    """Check the source rows the bridge pulls hold each leg's decoded payload
    whether the legs that sent one are all in a row (decoded straight into
    the rows) or some in between sent nothing (their rows stay silent),
    with the rows of a tick before cleared."""
    rng = np.random.default_rng(9)
    legs = [Leg() for _ in range(6)]
    plan = conference(legs)
    bridge: Bridge[Leg] = Bridge(N)
    for tick, quiet in enumerate(((), (0, 5), (2,), (1, 3), ())):
        payloads = [None if i in quiet else rng.integers(0, 256, N, dtype=np.uint8).tobytes()
                    for i in range(len(legs))]
        for leg, payload in zip(legs, payloads):
            leg.port.next = payload
        rows, _ = bridge.pull(plan, tick * 0.02)
        expected = [np.zeros(N, np.int16) if p is None else ULAW_DECODE[np.frombuffer(p, np.uint8)]
                    for p in payloads]
        assert rows.tolist() == np.array(expected).tolist(), f"tick {tick}, quiet legs {quiet}"


def test_silence_is_not_mixed_and_a_speaker_is_heard_the_tick_they_start() -> None:
    """Check ticks where every leg is silent (nothing received, or G.711's
    quietest codes) mix nothing and send each leg encoded silence, and the
    first tick one leg speaks the others hear its tone and it hears nothing."""
    legs = [Leg() for _ in range(4)]
    plan = conference(legs)
    bridge: Bridge[Leg] = Bridge(N)
    quiet = bytes([0xFF, 0xFE, 0x7F, 0x7E]) * (N // 4)  # 0 and ±8: within SILENCE_PEAK
    assert np.abs(ULAW_DECODE[np.frombuffer(quiet, np.uint8)]).max() <= SILENCE_PEAK
    for tick in range(3):
        for i, leg in enumerate(legs):
            leg.port.next = None if i % 2 else quiet
        bridge.tick(plan, tick * 0.02)
    assert bridge.quiet_ticks == 3
    silence = PcmuEncoder().encode(np.zeros(N, np.int16))
    assert all(leg.port.sent == [silence] * 3 for leg in legs)
    legs[1].port.next = tone(1000, 0)
    bridge.tick(plan, 0.06)
    assert bridge.quiet_ticks == 3
    heard = [ULAW_DECODE[np.frombuffer(leg.port.sent[-1], np.uint8)] for leg in legs]
    assert level(heard[1], 1000) < 50
    assert all(level(heard[i], 1000) > 2000 for i in (0, 2, 3))
