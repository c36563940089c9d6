"""Silence suppression (engine.media.dtx) on the bridge, with fake G.711 ports.

Each fake port records what the bridge did to it: payloads pushed, and the
suppression calls (begin, refresh, end) with their times; the ticks run on
virtual time (``now`` is an argument), so refresh intervals are exact.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import numpy.typing as npt
import pytest

from engine.calls.conference import MediaGraph
from engine.media.bridge import Bridge, BridgePlan
from engine.media.clock import MediaClock
from engine.media.codecs.g711 import ULAW_ENCODE, PcmuEncoder
from engine.media.dtx import (
    CN_REFERENCE,
    REFRESH_INTERVAL,
    SLEEP_CHECK_TICKS,
    SilencePeriod,
    Suppressor,
    cn_level,
    cn_payload,
    noise_level,
)
from engine.media.mixer import FlowMatrix
from engine.media.players import ToneSource
from test_bridge import G711Port

Pcm = npt.NDArray[np.int16]
N = 160
TICK = 0.02
SILENCE = b"\xff" * N  # µ-law zero


class QuietPort(G711Port):
    """A leg as MediaSession is to the bridge: G.711 payloads in and out,
    and the silence-suppression calls."""

    def __init__(self) -> None:
        super().__init__()
        self.next = SILENCE
        self.pulls = 0
        self.frames: list[Pcm | None] = []
        self.calls: list[tuple[str, float]] = []
        self.levels: list[int] = []
        self.player = False  # its own prompt: it must keep sending
        self.idle = False    # nothing to pull until audio arrives
        self.audio_waker: Callable[[], None] | None = None
        self.send_waker: Callable[[], None] | None = None

    @property  # type: ignore[override]
    def encode_table(self) -> npt.NDArray[np.uint8] | None:
        return None if self.player else ULAW_ENCODE

    def pull_payload(self, now: float) -> bytes | Pcm | None:
        self.pulls += 1
        return None if self.idle else self.next

    def push(self, frame: Pcm | None) -> bool:
        self.frames.append(frame)
        return True

    def begin_silence(self, now: float, level: int) -> bool:
        if self.player:
            return False
        self.calls.append(("begin", now))
        self.levels.append(level)
        return True

    def refresh_silence(self, now: float) -> None:
        self.calls.append(("refresh", now))

    def end_silence(self, now: float) -> None:
        self.calls.append(("end", now))

    def sleep_until_audio(self, now: float) -> bool:
        return self.idle


class Leg:
    def __init__(self) -> None:
        self.port = QuietPort()

    def media_port(self) -> QuietPort:
        return self.port


def conference(legs: list[Leg], players: list[ToneSource] | None = None) -> BridgePlan[Leg]:
    """One mix-minus conference of ``legs`` plus ``players`` (rows after the legs)."""
    n, p = len(legs), len(players or [])
    stage1 = FlowMatrix(n + p, 1, [(i, 0) for i in range(n + p)])
    stage2 = FlowMatrix(n + p + 1, n, [e for i in range(n) for e in ((n + p, i, 1.0), (i, i, -1.0))])
    return BridgePlan(list(legs), list(players or []), list(legs), stage1, stage2, [], [])


def tone(frame: int, freq: float = 440.0, amp: float = 3000.0) -> bytes:
    t = (np.arange(N) + frame * N) / 8000
    return PcmuEncoder().encode(np.rint(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16))


def run(bridge: Bridge[Leg], plan: BridgePlan[Leg], start: float, ticks: int) -> float:
    """``ticks`` ticks from ``start``; returns the time of the next one."""
    for k in range(ticks):
        bridge.tick(plan, start + k * TICK)
    return start + ticks * TICK


def suppressing(refresh: float = REFRESH_INTERVAL, rnd: float = 0.5) -> Bridge[Leg]:
    bridge: Bridge[Leg] = Bridge()
    bridge.dtx = Suppressor(refresh, random=lambda: rnd)
    return bridge


# -- RFC 3389 payload -----------------------------------------------------------------


def test_cn_payload_is_the_level_byte_of_rfc3389_section_3() -> None:
    """Check a CN payload is one byte, the -dBov magnitude with the top bit
    clear; out-of-range levels are refused by name; a received payload's
    level ignores the top bit and spectral bytes; an empty one is refused."""
    assert cn_payload(0) == b"\x00" and cn_payload(72) == b"\x48" and cn_payload(127) == b"\x7f"
    for bad in (-1, 128, True):
        with pytest.raises(ValueError, match="CN noise level must be 0..127"):
            cn_payload(bad)
    assert cn_level(b"\xc8\x01\x02") == 72
    with pytest.raises(ValueError, match="CN payload is empty"):
        cn_level(b"")


def test_noise_level_in_dbov() -> None:
    """Check the level of the loudest row in -dBov against RFC 3389 section
    3.1's reference (a µ-law full-scale square wave is 0 dBov): digital
    silence is 127, a ±8 square 72, a 3000-amplitude sine about 23."""
    square = np.where(np.arange(N) % 2, 1, -1).astype(np.int16)
    assert noise_level(np.zeros((3, N), np.int16)) == 127
    assert noise_level((square * int(CN_REFERENCE)).reshape(1, N)) == 0
    rows = np.stack([square * 8, square * 2]).astype(np.int16)
    assert noise_level(rows) == round(20 * math.log10(CN_REFERENCE / 8))
    sine = np.rint(3000 * np.sin(2 * np.pi * 440 * np.arange(N) / 8000)).astype(np.int16)
    rms = float(np.sqrt(np.mean(sine.astype(np.float64) ** 2)))
    assert noise_level(sine.reshape(1, N)) == round(20 * math.log10(CN_REFERENCE / rms))


def test_silence_timestamp_counts_whole_frames_and_wraps() -> None:
    """Check the timestamp after a silence is its first frame's plus the
    frames due since (rounded to the 20 ms grid), modulo 2^32."""
    period = SilencePeriod(started=10.0, timestamp=0xFFFFFF00, level=127)
    assert period.timestamp_at(10.0, N) == 0xFFFFFF00
    assert period.timestamp_at(10.0 + 5 * TICK + 0.004, N) == (0xFFFFFF00 + 5 * N) & 0xFFFFFFFF
    assert period.timestamp_at(9.0, N) == 0xFFFFFF00  # never before its start


# -- the bridge -----------------------------------------------------------------------


def test_off_by_default_every_receiver_gets_silence_every_tick() -> None:
    """Check without a suppressor (the default, in the bridge and in the
    media graph) each quiet tick still sends each leg a µ-law silence frame."""
    assert Bridge().dtx is None
    assert MediaGraph(MediaClock()).bridge.dtx is None
    assert isinstance(MediaGraph(MediaClock(), silence_suppression=True).bridge.dtx, Suppressor)
    legs = [Leg() for _ in range(3)]
    bridge: Bridge[Leg] = Bridge()
    run(bridge, conference(legs), 0.0, 20)
    for leg in legs:
        assert leg.port.sent == [SILENCE] * 20 and leg.port.calls == []


def test_quiet_ticks_send_nothing_after_the_silence_begins() -> None:
    """Check the first quiet tick tells each leg its silence begins (with
    the level of what was quiet), and it is then sent nothing for the
    rest of the quiet stretch (before its first refresh)."""
    legs = [Leg() for _ in range(3)]
    bridge = suppressing()
    run(bridge, conference(legs), 0.0, 100)  # 2 s, refresh due at 5 s
    for leg in legs:
        assert leg.port.sent == [] and leg.port.frames == []
        assert leg.port.calls == [("begin", 0.0)]
        assert leg.port.levels == [127]  # µ-law silence decodes to zeros
    assert bridge.quiet_ticks == 100


def test_refresh_every_interval_randomised_per_leg() -> None:
    """Check a quiet leg is refreshed every ``refresh * (0.5 + random())``
    seconds: exactly every interval with random() = 0.5, half of it with 0."""
    legs = [Leg()]
    bridge = suppressing(refresh=1.0, rnd=0.5)
    run(bridge, conference(legs), 0.0, 176)  # to 3.5 s
    refreshes = [t for what, t in legs[0].port.calls if what == "refresh"]
    assert refreshes == pytest.approx([1.0, 2.0, 3.0])
    legs = [Leg()]
    bridge = suppressing(refresh=1.0, rnd=0.0)
    run(bridge, conference(legs), 0.0, 76)  # to 1.5 s
    refreshes = [t for what, t in legs[0].port.calls if what == "refresh"]
    assert refreshes == pytest.approx([0.5, 1.0, 1.5])


def test_speech_ends_every_silence_then_mixes() -> None:
    """Check the tick someone speaks, every quiet leg is told its silence
    ends (so it jumps its timestamp and sets the marker bit) before the mix
    is pushed to everyone; the next quiet tick begins a new silence."""
    legs = [Leg() for _ in range(3)]
    bridge = suppressing()
    plan = conference(legs)
    now = run(bridge, plan, 0.0, 10)
    legs[0].port.next = tone(0)
    now = run(bridge, plan, now, 1)
    for leg in legs:
        assert leg.port.calls == [("begin", 0.0), ("end", pytest.approx(0.2))]
        assert len(leg.port.sent) == 1
    assert legs[1].port.sent[0] != SILENCE  # they hear the speaker
    legs[0].port.next = SILENCE
    run(bridge, plan, now, 5)
    for leg in legs:
        assert [c for c, _ in leg.port.calls] == ["begin", "end", "begin"]
        assert len(leg.port.sent) == 1


def test_a_player_is_not_silence() -> None:
    """Check a conference player keeps every leg sent audio (its tone is
    mixed in, no silence begins), and a leg playing its own prompt keeps
    being pushed its frames while the others go quiet."""
    legs = [Leg() for _ in range(2)]
    bridge = suppressing()
    run(bridge, conference(legs, [ToneSource(440)]), 0.0, 10)
    for leg in legs:
        assert leg.port.calls == [] and len(leg.port.sent) == 10
    legs = [Leg() for _ in range(2)]
    legs[0].port.player = True
    bridge = suppressing()
    run(bridge, conference(legs), 0.0, 10)
    assert len(legs[0].port.frames) == 10 and legs[0].port.calls == []
    assert legs[1].port.frames == [] and legs[1].port.calls == [("begin", 0.0)]


def test_own_player_starting_while_quiet_wakes_the_leg() -> None:
    """Check a quiet leg whose own player starts (its send waker) ends its
    silence on the next tick and is pushed frames from then on; when the
    player ends, it goes quiet again."""
    legs = [Leg() for _ in range(2)]
    bridge = suppressing()
    plan = conference(legs)
    now = run(bridge, plan, 0.0, 5)
    port = legs[0].port
    port.player = True
    assert port.send_waker is not None
    port.send_waker()
    now = run(bridge, plan, now, 3)
    assert port.calls == [("begin", 0.0), ("end", pytest.approx(0.1))]
    assert len(port.frames) == 3
    port.player = False
    run(bridge, plan, now, 2)
    assert [c for c, _ in port.calls] == ["begin", "end", "begin"] and len(port.frames) == 3
    assert legs[1].port.calls == [("begin", 0.0)]


def test_idle_sources_are_not_pulled_until_audio_wakes_them() -> None:
    """Check a leg with nothing to pull is put to sleep at the next check,
    after which ticks are dormant (nobody pulled, nothing sent); its audio
    waker puts it back in the pull on the next tick, and its speech ends
    the others' silence."""
    legs = [Leg() for _ in range(3)]
    for leg in legs:
        leg.port.idle = True
    bridge = suppressing()
    plan = conference(legs)
    now = run(bridge, plan, 0.0, SLEEP_CHECK_TICKS)
    pulls = [leg.port.pulls for leg in legs]
    assert pulls == [SLEEP_CHECK_TICKS] * 3
    dtx = bridge.dtx
    assert dtx is not None
    now = run(bridge, plan, now, 50)
    assert [leg.port.pulls for leg in legs] == pulls
    assert dtx.dormant_ticks == 50
    assert all(leg.port.sent == [] for leg in legs)
    speaker = legs[0].port
    speaker.idle, speaker.next = False, tone(1)
    assert speaker.audio_waker is not None and legs[1].port.audio_waker is not None
    speaker.audio_waker()
    run(bridge, plan, now, 1)
    assert speaker.pulls == pulls[0] + 1 and legs[1].port.pulls == pulls[1]
    assert [c for c, _ in legs[1].port.calls] == ["begin", "end"] and len(legs[1].port.sent) == 1


def test_recordings_get_a_frame_every_quiet_tick() -> None:
    """Check a conference recording keeps getting a frame each tick while
    every leg is quiet and asleep (the tick is then not dormant)."""

    class Sink:
        def __init__(self) -> None:
            self.frames: list[Pcm] = []

        def write(self, frame: Pcm) -> None:
            self.frames.append(frame)

    legs = [Leg() for _ in range(2)]
    for leg in legs:
        leg.port.idle = True
    sink = Sink()
    plan = conference(legs)
    plan.mix_rec.append((sink, 0))
    bridge = suppressing()
    run(bridge, plan, 0.0, 40)
    assert len(sink.frames) == 40 and all(not f.any() for f in sink.frames)
    assert bridge.dtx is not None and bridge.dtx.dormant_ticks == 0
    assert all(leg.port.sent == [] for leg in legs)


def test_a_leg_leaving_the_plan_ends_its_silence() -> None:
    """Check a quiet leg no longer fed by the new plan is told its silence
    ended (it sends on its own from then on, marker bit and timestamp right)."""
    legs = [Leg() for _ in range(3)]
    bridge = suppressing()
    now = run(bridge, conference(legs), 0.0, 5)
    run(bridge, conference(legs[:2]), now, 1)
    assert legs[2].port.calls == [("begin", 0.0), ("end", pytest.approx(0.1))]
    assert legs[0].port.calls == [("begin", 0.0)]


def test_refresh_interval_must_be_positive() -> None:
    """Check a zero or NaN refresh interval is refused by name."""
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="CN refresh interval"):
            Suppressor(bad)
