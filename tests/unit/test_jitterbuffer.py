"""Tests for :mod:`engine.media.jitterbuffer` on a simulated timeline: the
media clock ticks every 20 ms and packets arrive at chosen milliseconds."""

from __future__ import annotations

import gc

import pytest

from engine.media import jitterbuffer
from engine.media.jitterbuffer import JitterBuffer
from engine.media.rtp import RtpPacket

SSRC = 0x1234


def pkt(i: int, *, seq0: int = 1000, ts0: int = 50_000, ssrc: int = SSRC) -> RtpPacket:
    """Frame i of a 20 ms PCMU stream; the payload names the frame."""
    return RtpPacket(0, (seq0 + i) & 0xFFFF, (ts0 + 160 * i) & 0xFFFFFFFF, ssrc, b"f%d" % i)


def run(jb: JitterBuffer, arrivals: list[tuple[int, RtpPacket]], until_ms: int) -> list[bytes | None]:
    """Tick every 20 ms from 0 to until_ms; packets due by a tick are put first."""
    pending = sorted(arrivals, key=lambda a: a[0])
    out: list[bytes | None] = []
    k = 0
    for tick in range(0, until_ms + 1, 20):
        while k < len(pending) and pending[k][0] <= tick:
            jb.put(pending[k][1], pending[k][0] / 1000)
            k += 1
        out.append(jb.get(tick / 1000))
    return out


def played(out: list[bytes | None]) -> list[bytes | None]:
    """The output from the first frame on, trailing underruns dropped."""
    first = next(i for i, f in enumerate(out) if f is not None)
    last = max(i for i, f in enumerate(out) if f is not None)
    return out[first : last + 1]


def frames(*ids: int | None) -> list[bytes | None]:
    return [None if i is None else b"f%d" % i for i in ids]


def steady(n: int, **kw: int) -> list[tuple[int, RtpPacket]]:
    return [(20 * i + 5, pkt(i, **kw)) for i in range(n)]


def test_in_order_stream_plays_after_target_delay() -> None:
    """Check an even stream plays every frame in order, starting one target (40 ms) late."""
    jb = JitterBuffer()
    out = run(jb, steady(10), 300)
    assert out[:3] == [None, None, None]  # priming: first arrival 5 ms, start at 60 ms
    assert out[3:13] == frames(*range(10))
    s = jb.stats
    assert (s.received, s.lost, s.late, s.duplicate, s.resyncs, s.target_ms) == (10, 0, 0, 0, 0, 40)


def test_depth_in_steady_state() -> None:
    """Check depth_ms between ticks equals the target for an even stream."""
    jb = JitterBuffer()
    run(jb, steady(20), 200)
    assert jb.stats.depth_ms == 40


def test_reordered_packets_are_put_back_in_order() -> None:
    """Check two swapped packets that both come before their slot play in order."""
    arrivals = steady(10)
    arrivals[3] = (85, pkt(3))
    arrivals[4] = (65, pkt(4))
    jb = JitterBuffer()
    assert played(run(jb, arrivals, 300)) == frames(*range(10))
    assert (jb.stats.lost, jb.stats.late) == (0, 0)


def test_duplicates_are_dropped() -> None:
    """Check a duplicate before playout and one after playout are both dropped and counted."""
    arrivals = steady(10) + [(47, pkt(2)), (200, pkt(2))]
    jb = JitterBuffer()
    assert played(run(jb, arrivals, 300)) == frames(*range(10))
    assert (jb.stats.duplicate, jb.stats.late, jb.stats.received) == (2, 0, 10)


def test_lost_packet_is_reported_as_none() -> None:
    """Check a packet that never comes leaves a None in its slot for the codec's PLC."""
    arrivals = [a for a in steady(10) if a[1].sequence_number != 1004]
    jb = JitterBuffer()
    assert played(run(jb, arrivals, 300)) == frames(0, 1, 2, 3, None, 5, 6, 7, 8, 9)
    assert (jb.stats.lost, jb.stats.late, jb.stats.target_ms) == (1, 0, 40)


def test_late_packet_dropped_and_target_grows() -> None:
    """Check a packet arriving after its slot is dropped, counted late, and the
    target grows by a frame, paid for by one extra missing frame.

    Frame 5 is due at tick 160 but arrives at 205; the grow costs the tick at 220.
    """
    arrivals = steady(10)
    arrivals[5] = (205, pkt(5))
    jb = JitterBuffer()
    assert played(run(jb, arrivals, 400)) == frames(0, 1, 2, 3, 4, None, 6, 7, None, 8, 9)
    s = jb.stats
    assert (s.late, s.lost, s.target_ms, s.received) == (1, 1, 60, 9)


def test_sequence_and_timestamp_wrap() -> None:
    """Check a stream whose sequence and timestamp both wrap plays straight through."""
    jb = JitterBuffer()
    arrivals = [(20 * i + 5, pkt(i, seq0=65530, ts0=2**32 - 800)) for i in range(12)]
    arrivals[6], arrivals[7] = (arrivals[7][0], arrivals[6][1]), (arrivals[6][0], arrivals[7][1])
    assert played(run(jb, arrivals, 400)) == frames(*range(12))
    assert (jb.stats.lost, jb.stats.resyncs) == (0, 0)


def test_new_ssrc_resyncs() -> None:
    """Check a new SSRC restarts the buffer: the old stream's leftovers are dropped,
    the new one is primed and played from its first frame."""
    a = steady(10)
    b = [(205 + 20 * i, RtpPacket(0, 7 + i, 999 + 160 * i, 0x9999, b"g%d" % i)) for i in range(5)]
    jb = JitterBuffer()
    out = run(jb, a + b, 600)
    assert b"f7" in out and b"f8" not in out  # f8, f9 were still queued at the switch (205 ms)
    assert [f for f in out if f and f.startswith(b"g")] == [b"g%d" % i for i in range(5)]
    assert (jb.stats.resyncs, jb.stats.discarded) == (1, 2)


def test_timestamp_jump_resyncs() -> None:
    """Check a timestamp leap of minutes on the same SSRC restarts the buffer."""
    a = steady(5)
    b = [(105 + 20 * i, pkt(i, ts0=50_000 + 8000 * 300, seq0=1005)) for i in range(5)]
    jb = JitterBuffer()
    out = run(jb, a + b, 500)
    assert jb.stats.resyncs == 1
    assert [f for f in out if f] [-5:] == frames(*range(5))


def test_silence_gap_does_not_resync() -> None:
    """Check a 400 ms silence-suppression gap (timestamps and arrivals jump,
    sequence numbers continue) plays as concealed frames, then resumes in step
    without loss or resync."""
    arrivals = steady(5) + [(20 * i + 5, pkt(i, seq0=980)) for i in range(25, 30)]
    jb = JitterBuffer()
    out = played(run(jb, arrivals, 640))
    assert out == frames(0, 1, 2, 3, 4) + [None] * 20 + frames(25, 26, 27, 28, 29)
    s = jb.stats
    assert (s.lost, s.late, s.resyncs, s.concealed) == (0, 0, 0, 20)


def test_adaptive_depth_grows_to_cap_and_shrinks_back() -> None:
    """Check the target grows on late arrivals but never past 200 ms, then
    shrinks a frame per quiet spell down to 20 ms, discarding frames to cut delay."""
    jb = JitterBuffer(shrink_after=1.0)
    arrivals = []
    for i in range(1500):
        delay = 5 + (400 if i < 250 and i % 10 == 0 else 0)  # 5 s of bad spikes
        arrivals.append((20 * i + delay, pkt(i)))
    targets = []
    pending = sorted(arrivals, key=lambda a: a[0])
    k = 0
    for tick in range(0, 30_000, 20):
        while k < len(pending) and pending[k][0] <= tick:
            jb.put(pending[k][1], pending[k][0] / 1000)
            k += 1
        jb.get(tick / 1000)
        targets.append(jb.stats.target_ms)
    s = jb.stats
    assert max(targets) == 200
    assert targets[300] == 200  # still high while spikes keep coming
    assert s.target_ms == 20 and s.depth_ms <= 40
    assert s.discarded >= 8 and s.late >= 9


def test_burst_overflow_is_cut_to_target() -> None:
    """Check a burst of 30 frames at once is cut back to the target instead of
    adding 600 ms of delay."""
    jb = JitterBuffer()
    arrivals = [(5, pkt(i)) for i in range(30)] + [(20 * i + 5, pkt(i)) for i in range(30, 40)]
    out = run(jb, arrivals, 1000)
    assert jb.stats.discarded > 0
    assert out[3] is not None and out[3] != b"f0"  # jumped ahead at the first tick
    assert jb.stats.depth_ms <= 200


def test_nothing_received_gives_none() -> None:
    """Check get before any packet returns None and counts nothing."""
    jb = JitterBuffer()
    assert [jb.get(t / 50) for t in range(5)] == [None] * 5
    assert jb.stats.lost == 0 and jb.stats.depth_ms == 0


def test_long_stream_across_timestamp_reference_moves() -> None:
    """Check a stream that runs past 2**31 samples from its first packet (a
    huge frame here, 400,000 samples, so that 10,000 frames suffice; the
    timestamp wraps on the way) plays every frame in order: the buffer
    moves its timestamp reference along (every 4,096 frames played), so
    the signed 32-bit difference never wraps into a resync. A swapped pair
    and a duplicate right after a move are handled as anywhere else."""
    n, spf = 10_000, 400_000

    def big(i: int) -> RtpPacket:
        return RtpPacket(0, (1000 + i) & 0xFFFF, (spf * i) & 0xFFFFFFFF, SSRC, b"f%d" % i)

    arrivals = [(20 * i + 5, big(i)) for i in range(n)]
    k = 4098  # played at the tick after the reference moved (frame 4096 played, +2 of priming)
    arrivals[k], arrivals[k + 1] = (arrivals[k + 1][0], arrivals[k][1]), (arrivals[k][0], arrivals[k + 1][1])
    arrivals.append((20 * (k + 1) + 6, big(k + 1)))
    # an even stream: with a floor of two frames the depth stays put, nothing discarded
    jb = JitterBuffer(clock_rate=spf * 50, min_depth_ms=40)
    out = played(run(jb, arrivals, 20 * n + 200))
    assert out == frames(*range(n))
    s = jb.stats
    assert (s.received, s.duplicate, s.lost, s.late, s.resyncs, s.discarded) == (n, 1, 0, 0, 0, 0)


def test_a_late_copy_of_a_played_frame_is_a_duplicate_and_of_a_concealed_one_late() -> None:
    """The ring keeps a played mark per slot: a packet for a slot already
    played is a duplicate, one for a slot that was concealed is late."""
    jb = JitterBuffer(initial_depth_ms=20, min_depth_ms=20)
    arrivals = [(i * 20, pkt(i)) for i in range(10) if i != 4]
    out = run(jb, arrivals, 220)
    assert played(out) == frames(0, 1, 2, 3, None, 5, 6, 7, 8, 9)
    assert jb.put(pkt(2), 0.230) is False and jb.stats.duplicate == 1 and jb.stats.late == 0
    assert jb.put(pkt(4), 0.230) is False and jb.stats.late == 1 and jb.stats.duplicate == 1


def test_a_deep_buffer_holds_frames_far_ahead_without_mixing_them_up() -> None:
    """With a 2 s ceiling the ring grows past its 64 entries: 100 frames
    (the ceiling) arriving at once just after playout started are played in
    order, each once, none concealed; the only ones not played are those the
    buffer discards to cut its delay (one a second while it stays over
    target), and a resync after them drops only what was still waiting.
    (Arriving before playout starts, all but the newest would be cut at
    once: the next test.)"""
    jb = JitterBuffer(max_depth_ms=2000, initial_depth_ms=20, min_depth_ms=20)
    assert jb.put(pkt(0), 0.0)
    got = [jb.get(0.020)]  # playout starts on the one frame there
    for i in range(1, 100):
        assert jb.put(pkt(i), 0.021)
    got += [jb.get(0.020 * (k + 2)) for k in range(89)]
    ids = [int(f[1:]) for f in got if f is not None]
    assert len(ids) == 90 and ids == sorted(set(ids)) and ids[0] == 0
    assert ids[-1] + 1 == 90 + jb.stats.discarded and jb.stats.concealed == 0
    waiting = 100 - 90 - jb.stats.discarded
    before = jb.stats.discarded
    assert jb.put(pkt(0, ssrc=SSRC + 1), 2.2)  # a new stream: the frames still waiting are discarded
    assert jb.stats.discarded == before + waiting and jb.stats.resyncs == 1


def _stall(jb: JitterBuffer, skipped: int, *, burst_first: bool) -> list[bytes | None]:
    """An even stream (frame i arrives at 20 i + 5 ms) played from 60 ms;
    the loop then stalls from 105 ms: ticks 120..100 + 20 * skipped never
    happen (the clock skipped them), the frames sent meanwhile are read in
    one burst, before or after the tick that follows the stall; then the
    stream goes on. Returns what each tick played, the stall's ticks left out."""
    out: list[bytes | None] = []
    for i in range(5):  # ticks 0..80, frames 0..4 arrive at 5..85
        out.append(jb.get(20 * i / 1000))
        jb.put(pkt(i), (20 * i + 5) / 1000)
    jb.put(pkt(5), 0.105)
    resume = 100 + 20 * (skipped + 1)  # the first tick after the stall
    burst = [pkt(i) for i in range(6, 6 + skipped + 1)]  # sent during the stall
    if burst_first:
        for p in burst:
            jb.put(p, resume / 1000)
    jb.skip_frames(skipped)
    out.append(jb.get(resume / 1000))
    if not burst_first:
        for p in burst:
            jb.put(p, (resume + 1) / 1000)
    for k in range(1, 6):  # the stream goes on, one frame a tick
        i = 6 + skipped + k
        jb.put(pkt(i), (20 * i + 5) / 1000)
        out.append(jb.get((resume + 20 * k) / 1000))
    return out


def test_ticks_the_clock_skipped_are_skipped_in_playout_too() -> None:
    """After a stall the playout keeps its delay: the frames of the skipped
    ticks are discarded, not played one a tick from then on (which would
    put every later frame ``skipped`` frames later for good), and with the
    burst read before the next tick nothing counts as late or lost."""
    jb = JitterBuffer()
    out = _stall(jb, 6, burst_first=True)
    # priming (0-40 ms), frames 0-1 at 60 and 80 ms; the stall skips the
    # slots of frames 2-7: the next tick plays frame 8, two frames behind
    # the newest (10 arrived at 205 ms), as before the stall
    assert out == frames(None, None, None, 0, 1, 8, 9, 10, 11, 12, 13)
    s = jb.stats
    assert (s.late, s.lost, s.target_ms) == (0, 0, 40)
    assert s.discarded == 6  # frames 2-7: waiting, or read in the burst


def test_frames_of_skipped_ticks_read_after_the_tick_are_discarded_not_late() -> None:
    """The same stall with the burst read after the tick that follows it:
    the frames of skipped ticks are counted discarded as they come, not
    late (the target does not grow for them); only the frame of that tick
    itself, which came after its slot was concealed, is late, as any
    frame after its slot is."""
    jb = JitterBuffer()
    out = _stall(jb, 6, burst_first=False)
    assert out[5] is None  # frame 8 was not there yet: concealed
    assert out[6] is None  # ... it came late: the target grows a frame, paid by this tick
    assert out[7:] == frames(9, 10, 11, 12)
    s = jb.stats
    assert (s.late, s.target_ms) == (1, 60)
    assert s.discarded == 6  # frames 2-5 waiting at the skip, 6-7 as they came
    assert s.lost == 1  # frame 8, never played; the discarded ones are not lost


def test_a_burst_before_playout_starts_is_cut_at_once_not_a_frame_a_second() -> None:
    """Six frames queued before the stream was first read arrive together,
    then one every 20 ms: playout starts at the newest target + 1 of them
    (the rest discarded before anything is played), so the call does not
    run 80 ms late, trimmed later by a frame a second, each an audible cut."""
    jb = JitterBuffer()
    # 4 s: before the target's own shrink (after 5 s without a late frame),
    # which trims a frame of its own
    arrivals = [(5, pkt(i)) for i in range(6)] + [(20 * (i - 5) + 5, pkt(i)) for i in range(6, 200)]
    out = run(jb, arrivals, 4_000)
    start = next(i for i, f in enumerate(out) if f is not None)
    discarded_at_start = jb.stats.discarded
    # at 60 ms frames 0-7 are there (6 and 7 came at 25 and 45 ms): 0-4 are
    # dropped, 5, 6 and 7 wait (the target, 2, + 1)
    assert out[start] == b"f5"
    assert played(out) == frames(*range(5, 200))  # then every frame, none cut later
    assert discarded_at_start == 5 and jb.stats.discarded == 5 and jb.stats.late == 0


def test_an_excess_that_lasts_a_second_is_cut_in_one_go() -> None:
    """Playout has started when a backlog arrives (frames the loop read
    late, all at once): the buffer then holds six frames more than the
    target + 1 it keeps. After a second of that it drops all six together:
    one cut in what is heard, and the delay back at once, rather than a
    frame a second (six cuts, and the delay for six seconds)."""
    jb = JitterBuffer()
    arrivals = [(5, pkt(0)), (25, pkt(1)), (45, pkt(2))]
    arrivals += [(70, pkt(i)) for i in range(3, 10)]  # a backlog: 3-9 at once
    arrivals += [(20 * (i - 6) + 5, pkt(i)) for i in range(10, 200)]  # then the steady pace
    out = run(jb, arrivals, 3_900)
    ids = [int(f[1:]) for f in played(out)]
    gaps = [(a, b) for a, b in zip(ids, ids[1:]) if b != a + 1]
    assert len(gaps) == 1 and gaps[0][1] - gaps[0][0] - 1 == jb.stats.discarded == 6
    assert jb.stats.depth_ms <= jb.stats.target_ms + 20 and jb.stats.late == 0 and jb.stats.concealed == 0


def test_late_buffers_counts_each_late_buffer_once_a_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine-wide count the overload detector reads: a buffer that got
    late frames counts once in its window however many it got, one that
    got its frames on time or twice (a duplicate) not at all, one freed
    meanwhile is not held; the figure is the fewer of the last two whole
    windows', so one window of late frames (a stall) is not enough."""
    now = [100.0]
    monkeypatch.setattr(jitterbuffer, "monotonic", lambda: now[0])
    monkeypatch.setattr(jitterbuffer, "_late_window", [100.0, 0.0, 0.0])
    monkeypatch.setattr(jitterbuffer, "_late_count", [0])
    monkeypatch.setattr(jitterbuffer, "_late_epoch", [0])

    def playing() -> JitterBuffer:
        jb = JitterBuffer()
        for i in (0, 1, 3):  # frame 2 missing
            jb.put(pkt(i), 0.0)
        for tick in range(4):  # a burst over the target: starts at 1, plays 1, conceals 2, plays 3, conceals 4
            jb.get(0.04 + tick * 0.02)
        return jb

    late, other, on_time, dup, freed = playing(), playing(), playing(), playing(), playing()
    for _ in range(5):
        late.put(pkt(2), 0.2)
    other.put(pkt(2), 0.2)
    dup.put(pkt(1), 0.2)
    on_time.put(pkt(5), 0.2)
    freed.put(pkt(2), 0.2)
    assert (late.stats.late, dup.stats.duplicate, on_time.stats.late, freed.stats.late) == (5, 1, 0, 1)
    del freed
    gc.collect()
    assert jitterbuffer.late_buffers() == 0  # no whole window yet
    now[0] = 101.0
    assert jitterbuffer.late_buffers() == 0  # one window of two late buffers: a stall
    late.put(pkt(2), 101.2)  # late again in the next window: counted again
    now[0] = 101.5
    assert jitterbuffer.late_buffers() == 0
    now[0] = 102.0
    assert jitterbuffer.late_buffers() == 1  # the fewer of 2 and 1
    now[0] = 103.0
    assert jitterbuffer.late_buffers() == 0


def test_datagrams_dropped_stale_by_the_transport_count_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames the transport read and dropped as too old to play (a drain
    after the loop was away) never reach the buffer: count_late counts them
    late, and the buffer joins the window's late ones once however often it
    is told, so a loop too slow to read its sockets in time still shows in
    the overload detector's late-legs signal."""
    now = [100.0]
    monkeypatch.setattr(jitterbuffer, "monotonic", lambda: now[0])
    monkeypatch.setattr(jitterbuffer, "_late_window", [100.0, 0.0, 0.0])
    monkeypatch.setattr(jitterbuffer, "_late_count", [0])
    monkeypatch.setattr(jitterbuffer, "_late_epoch", [0])
    stale, fine = JitterBuffer(), JitterBuffer()
    stale.count_late(15)
    stale.count_late(3)
    assert stale.stats.late == 18 and fine.stats.late == 0
    assert jitterbuffer._late_count[0] == 1
    now[0] = 101.0
    jitterbuffer.late_buffers()
    stale.count_late(1)
    now[0] = 102.0
    assert jitterbuffer.late_buffers() == 1
