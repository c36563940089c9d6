"""The overload detector (engine.transport.overload) on a fake clock: when
it begins refusing new INVITEs, when it drops them, and that it leaves each
level only after the signals stayed low for ``hold`` seconds."""

from __future__ import annotations

import pytest

from engine.transport.overload import EXIT_RATIO, LATE_MIN_LEGS, OverloadBounds, OverloadDetector, OverloadLevel

PROBE = 0.05
BOUNDS = OverloadBounds(lag=0.1, drop_lag=0.5, queue=0.25, drop_queue=0.6, setup_calls=100, hold=1.0,
                        media_backlog=8192, late_legs=0.5)


def run(detector: OverloadDetector, start: float, seconds: float, **signals: float) -> tuple[float, list[int]]:
    """Feed one sample every PROBE seconds for ``seconds``; return the end
    time and the episode changes reported on the way."""
    now, changes = start, []
    while now < start + seconds - 1e-9:
        now += PROBE
        lag = signals.get("lag", 0.0)
        change = detector.sample(now, lag=lag, queue=signals.get("queue", 0.0),
                                 setup_calls=int(signals.get("setup_calls", 0)),
                                 media_backlog=int(signals.get("media_backlog", 0)),
                                 late_legs=int(signals.get("late_legs", 0)), legs=int(signals.get("legs", 0)))
        if change:
            changes.append(change)
    return now, changes


def test_quiet_engine_stays_normal() -> None:
    """Lag, queue, calls being set up and RTP backlog under their bounds never refuse."""
    detector = OverloadDetector(BOUNDS)
    _, changes = run(detector, 0.0, 10.0, lag=0.09, queue=0.2, setup_calls=99, media_backlog=8191,
                     late_legs=49, legs=100)
    assert detector.level is OverloadLevel.NORMAL
    assert changes == [] and detector.episodes == 0


def test_one_long_pause_is_smoothed_away() -> None:
    """One 300 ms lag sample (a GC pause) among on-time ones does not refuse:
    the lag is smoothed."""
    detector = OverloadDetector(BOUNDS)
    now, _ = run(detector, 0.0, 1.0)
    detector.sample(now + PROBE, lag=0.3)
    assert detector.level is OverloadLevel.NORMAL
    assert detector.lag == pytest.approx(0.06)


def test_sustained_lag_refuses_then_recovers_after_hold() -> None:
    """A sustained lag over the bound begins one episode (reported once);
    the level falls back only after every signal stayed under half its
    bound for ``hold`` seconds, and the end is reported once."""
    detector = OverloadDetector(BOUNDS)
    now, changes = run(detector, 0.0, 1.0, lag=0.15)
    assert detector.level is OverloadLevel.REFUSE
    assert changes == [1] and detector.episodes == 1
    # Lag now between the exit mark (0.05) and the bound: still refusing.
    now, changes = run(detector, now, 5.0, lag=0.07)
    assert detector.level is OverloadLevel.REFUSE and changes == []
    # Under the exit mark: the smoothed lag needs a few samples to get there,
    # then hold seconds pass before the level falls.
    now, changes = run(detector, now, 0.9, lag=0.0)
    assert detector.level is OverloadLevel.REFUSE
    now, changes = run(detector, now, 1.0, lag=0.0)
    assert detector.level is OverloadLevel.NORMAL and changes == [-1]


def test_hysteresis_no_flapping_around_the_bound() -> None:
    """A lag that oscillates around the bound keeps one episode open rather
    than starting one per crossing."""
    detector = OverloadDetector(BOUNDS)
    now, changes = 0.0, []
    for i in range(200):
        now += PROBE
        change = detector.sample(now, lag=0.2 if (i // 5) % 2 else 0.06)
        if change:
            changes.append(change)
    assert changes == [1]
    assert detector.level is OverloadLevel.REFUSE


def test_queue_fill_refuses_then_drops() -> None:
    """The receive-queue fill is not smoothed: over its refuse bound the
    next sample refuses, over the drop bound it drops; falling from DROP
    goes through REFUSE, each after ``hold`` seconds under its exit mark."""
    detector = OverloadDetector(BOUNDS)
    detector.sample(0.05, lag=0.0, queue=0.3)
    assert detector.level is OverloadLevel.REFUSE
    detector.sample(0.10, lag=0.0, queue=0.7)
    assert detector.level is OverloadLevel.DROP
    assert detector.episodes == 1
    # 0.2 is under half the drop bound (0.3) but not under half the refuse
    # bound (0.125): DROP falls to REFUSE after hold, and stays there.
    now, changes = run(detector, 0.10, 1.1, queue=0.2)
    assert detector.level is OverloadLevel.REFUSE and changes == []
    now, changes = run(detector, now, 3.0, queue=0.2)
    assert detector.level is OverloadLevel.REFUSE
    now, changes = run(detector, now, 1.1, queue=0.1)
    assert detector.level is OverloadLevel.NORMAL and changes == [-1]


def test_lag_over_drop_bound_drops() -> None:
    """A sustained lag past ``drop_lag`` drops new INVITEs."""
    detector = OverloadDetector(BOUNDS)
    run(detector, 0.0, 2.0, lag=0.8)
    assert detector.level is OverloadLevel.DROP


def test_calls_being_set_up_refuse() -> None:
    """As many calls being set up as the bound refuse; below half of it the
    level falls after hold."""
    detector = OverloadDetector(BOUNDS)
    detector.sample(0.05, lag=0.0, setup_calls=100)
    assert detector.level is OverloadLevel.REFUSE
    now, _ = run(detector, 0.05, 2.0, setup_calls=int(100 * EXIT_RATIO))
    assert detector.level is OverloadLevel.REFUSE
    run(detector, now, 1.1, setup_calls=49)
    assert detector.level is OverloadLevel.NORMAL


def test_rtp_backlog_refuses_never_drops() -> None:
    """The media readers' backlog at its bound refuses at the next sample,
    however far past it, and never drops (an INVITE's parse is not what
    costs then); under half the bound the level falls after hold."""
    detector = OverloadDetector(BOUNDS)
    assert detector.sample(0.05, lag=0.0, media_backlog=8192) == 1
    assert detector.level is OverloadLevel.REFUSE
    now, changes = run(detector, 0.05, 2.0, media_backlog=200_000)
    assert detector.level is OverloadLevel.REFUSE and changes == []
    assert detector.describe()["media_backlog_bytes"] == "200000"
    now, changes = run(detector, now, 2.0, media_backlog=4096)
    assert detector.level is OverloadLevel.REFUSE and changes == []
    now, changes = run(detector, now, 1.1, media_backlog=832)
    assert detector.level is OverloadLevel.NORMAL and changes == [-1]


def test_late_legs_refuse_from_enough_legs() -> None:
    """Half the legs late in a second refuses (never drops); under
    LATE_MIN_LEGS legs read the share is 0, however many are late; under a
    quarter (half the bound) the level falls after hold."""
    detector = OverloadDetector(BOUNDS)
    detector.sample(0.05, lag=0.0, late_legs=LATE_MIN_LEGS - 1, legs=LATE_MIN_LEGS - 1)
    assert detector.level is OverloadLevel.NORMAL and detector.late_legs == 0.0
    detector.sample(0.10, lag=0.0, late_legs=499, legs=1000)
    assert detector.level is OverloadLevel.NORMAL and detector.late_legs == pytest.approx(0.499)
    detector.sample(0.15, lag=0.0, late_legs=500, legs=1000)
    assert detector.level is OverloadLevel.REFUSE
    assert detector.describe()["late_legs_pct"] == "50"
    now, _ = run(detector, 0.15, 2.0, late_legs=1000, legs=1000)
    assert detector.level is OverloadLevel.REFUSE
    now, _ = run(detector, now, 2.0, late_legs=250, legs=1000)
    assert detector.level is OverloadLevel.REFUSE
    now, changes = run(detector, now, 1.1, late_legs=249, legs=1000)
    assert detector.level is OverloadLevel.NORMAL and changes == [-1]


def test_zero_turns_a_bound_off() -> None:
    """A bound of 0 is off: huge values of that signal change nothing."""
    detector = OverloadDetector(OverloadBounds(lag=0, drop_lag=0, queue=0, drop_queue=0, setup_calls=0,
                                               media_backlog=0, late_legs=0))
    run(detector, 0.0, 2.0, lag=10.0, queue=1.0, setup_calls=10**6, media_backlog=10**6, late_legs=1000, legs=1000)
    assert detector.level is OverloadLevel.NORMAL


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"lag": -1}, "overload bound lag must be 0 (off) or more, not -1"),
    ({"media_backlog": -1}, "overload bound media_backlog must be 0 (off) or more, not -1"),
    ({"lag": 0.5, "drop_lag": 0.1}, "overload drop_lag (0.1) must not be below lag (0.5)"),
    ({"queue": 0.5, "drop_queue": 0.2}, "overload drop_queue (0.2) must not be below queue (0.5)"),
    ({"queue": 2.0, "drop_queue": 3.0}, "overload queue bounds are shares of the buffer: 0 to 1"),
    ({"late_legs": 1.5}, "overload late_legs is a share of the legs: 0 to 1"),
])
def test_bad_bounds_are_refused(kwargs: dict[str, float], error: str) -> None:
    """Bounds that cannot work are refused with a message naming them."""
    with pytest.raises(ValueError) as info:
        OverloadBounds(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == error
