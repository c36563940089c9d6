"""Tests for :mod:`engine.media.mixer`: mix-minus, mute/deaf/volume, flows."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from engine.media.mixer import FlowMatrix, benchmark_mix, mix_minus, stack_frames


def frames(*rows: list[int]) -> npt.NDArray[np.int16]:
    return np.array(rows, dtype=np.int16)


def test_mix_minus_exact() -> None:
    """Check each leg gets exactly the sum of the others on a small array."""
    f = frames([1, 2, 3], [10, 20, 30], [100, 200, 300])
    out = mix_minus(f)
    assert out.dtype == np.int16
    assert out.tolist() == [[110, 220, 330], [101, 202, 303], [11, 22, 33]]
    # a list of frames is accepted too
    assert mix_minus([f[0], f[1]]).tolist() == [[10, 20, 30], [1, 2, 3]]
    assert mix_minus(f[:1]).tolist() == [[0, 0, 0]]


def test_mix_minus_random_matches_reference() -> None:
    """Check a random 7-leg mix against a per-leg Python reference with clipping."""
    rng = np.random.default_rng(3)
    f = rng.integers(-20000, 20000, size=(7, 160)).astype(np.int16)
    out = mix_minus(f)
    for i in range(7):
        ref = sum(f[j].astype(np.int64) for j in range(7) if j != i)
        assert np.array_equal(out[i], np.clip(ref, -32768, 32767))


def test_saturation() -> None:
    """Check sums beyond int16 saturate instead of wrapping, in both directions."""
    f = frames([30000, -30000, 5], [30000, -30000, 5], [30000, -30000, 5])
    assert mix_minus(f).tolist() == [[32767, -32768, 10]] * 3


def test_mute_deaf_volume() -> None:
    """Check mute removes a leg's voice from others, deaf silences what it
    hears, and volume scales what it contributes."""
    f = frames([100, 100], [10, 10], [1, 1])
    assert mix_minus(f, mute=[False, True, False]).tolist() == [[1, 1], [101, 101], [100, 100]]
    assert mix_minus(f, deaf=[True, False, False]).tolist() == [[0, 0], [101, 101], [110, 110]]
    assert mix_minus(f, volume=[0.5, 2.0, 1.0]).tolist() == [[21, 21], [51, 51], [70, 70]]
    # a muted leg still hears the others; a deaf leg is still heard
    out = mix_minus(f, mute=[True, False, False], deaf=[False, True, False])
    assert out.tolist() == [[11, 11], [0, 0], [10, 10]]


def test_groups() -> None:
    """Check several conferences mixed in one call stay apart, for small and
    large leg counts (two summing paths)."""
    f = frames([1, 1], [2, 2], [4, 4], [8, 8], [16, 16])
    out = mix_minus(f, groups=[7, 3, 7, 3, 9])
    assert out.tolist() == [[4, 4], [8, 8], [1, 1], [2, 2], [0, 0]]
    rng = np.random.default_rng(5)
    big = rng.integers(-1000, 1000, size=(300, 160)).astype(np.int16)
    groups = rng.integers(0, 40, size=300)
    out = mix_minus(big, groups=groups)
    for g in (0, 17, 39):
        members = np.flatnonzero(groups == g)
        if members.size:
            assert np.array_equal(out[members], mix_minus(big[members]))


def test_bad_shape() -> None:
    """Check a 1D array is refused with its shape named."""
    with pytest.raises(ValueError, match=r"legs x samples, got shape \(3,\)"):
        stack_frames(np.zeros(3, dtype=np.int16))


def test_flows() -> None:
    """Check directed flows: one source to several sinks, several sources
    summed into one sink, gains, saturation, sinks with no flow silent."""
    src = frames([100, -100], [10, -10], [30000, 30000])
    flows = FlowMatrix(3, 4, [(0, 0), (0, 1), (1, 1), (2, 2, 0.5), (2, 1), (0, 2)])
    assert flows.num_edges == 6
    out = flows.apply(src)
    assert out.dtype == np.int16
    assert out.tolist() == [[100, -100], [30110, 29890], [15100, 14900], [0, 0]]
    loud = FlowMatrix(3, 1, [(2, 0), (2, 0)])
    assert loud.apply(src).tolist() == [[32767, 32767]]
    assert FlowMatrix(3, 2, []).apply(src).tolist() == [[0, 0], [0, 0]]


def test_flow_errors() -> None:
    """Check out-of-range flows and wrong frame counts are refused."""
    with pytest.raises(ValueError, match=r"flow 3->0 out of range \(3 sources, 1 sinks\)"):
        FlowMatrix(3, 1, [(3, 0)])
    with pytest.raises(ValueError, match="expected 2 source frames, got 3"):
        FlowMatrix(2, 1, [(0, 0)]).apply(frames([1], [2], [3]))


def test_flows_equal_mix_minus() -> None:
    """Check mix-minus is the flow matrix 'every other leg' (the bridge case)."""
    rng = np.random.default_rng(9)
    f = rng.integers(-5000, 5000, size=(5, 160)).astype(np.int16)
    edges = [(s, d) for s in range(5) for d in range(5) if s != d]
    assert np.array_equal(FlowMatrix(5, 5, edges).apply(f), mix_minus(f))


def _reference_flows(num_sinks: int, edges: list[tuple[int, int, float]],
                     arr: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """Each sink's sum of its edges' rounded, weighted rows, edge by edge."""
    out = np.zeros((num_sinks, arr.shape[1]), dtype=np.int64)
    for src, dst, gain in edges:
        out[dst] += np.rint(arr[src].astype(np.int64) * np.float32(gain)).astype(np.int64)
    return out


@pytest.mark.parametrize("column_min_sinks", [1, 32])
def test_flows_random_match_reference(column_min_sinks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check random weighted flows (unity, whole and fractional gains, any
    fan-in, int16 and int32 sources) against an edge-by-edge reference, on
    both summing paths (by column for a big group of small fan-in, else by
    one gather), the second time reusing the same matrix and buffers."""
    monkeypatch.setattr(FlowMatrix, "COLUMN_MIN_SINKS", column_min_sinks)
    rng = np.random.default_rng(5)
    for _ in range(300):
        num_sources, num_sinks = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        gains = rng.choice([1.0, 1.0, -1.0, 2.0, 0.5, 0.37, -3.0], size=int(rng.integers(0, 200)))
        edges = [(int(rng.integers(0, num_sources)), int(rng.integers(0, num_sinks)), float(g)) for g in gains]
        matrix = FlowMatrix(num_sources, num_sinks, edges)
        for dtype in (np.int16, np.int32):
            arr = rng.integers(-32768, 32768, size=(num_sources, 8)).astype(dtype)
            want = _reference_flows(num_sinks, edges, arr)
            assert np.array_equal(matrix.apply_raw(arr), want)
            out = np.full((num_sinks, 8), 7, dtype=np.int32)
            assert matrix.apply_raw(arr, out=out) is out
            assert np.array_equal(out, want)


def test_flows_mix_minus_shape() -> None:
    """Check the mix-minus stage shape (each receiver: its conference's sum
    plus minus its own row, as the media graph compiles it) on the by-column
    path writing in place, with a receiver hearing nothing in between."""
    rng = np.random.default_rng(6)
    legs, confs = 100, 10
    rows = rng.integers(-3000, 3000, size=(legs, 160)).astype(np.int32)
    conf_of = rng.integers(0, confs, size=legs)
    sums = np.zeros((confs, 160), dtype=np.int32)
    np.add.at(sums, conf_of, rows)
    stacked = np.concatenate([rows, sums])
    edges = [(legs + int(conf_of[i]), i, 1.0) for i in range(legs)] + [(i, i, -1.0) for i in range(legs)]
    want = sums[conf_of] - rows
    assert np.array_equal(FlowMatrix(legs + confs, legs, edges).apply_raw(stacked), want)
    hole = [e for e in edges if e[1] != 50]
    want[50] = 0
    assert np.array_equal(FlowMatrix(legs + confs, legs, hole).apply_raw(stacked), want)


def test_benchmark_runs() -> None:
    """Check the micro-benchmark returns a positive time (no speed assertion)."""
    assert benchmark_mix(legs=20, conference_size=5, ticks=2) > 0
