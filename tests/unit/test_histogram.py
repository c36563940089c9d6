"""engine.runtime.histogram: the fixed-bucket histogram behind
``callbridge_invite_to_alerting_seconds``: which bucket a value lands in
(Prometheus' ``le``: at or below the bound), the cumulative counts the
metrics layer exposes, the quantiles estimated from them by linear
interpolation (as ``histogram_quantile()``), and bad bounds refused."""

from __future__ import annotations

import math

import pytest

from engine.runtime.histogram import INVITE_TO_ALERTING_BUCKETS, BucketHistogram, bucket_quantile


def test_a_value_lands_in_the_first_bucket_whose_bound_is_not_below_it() -> None:
    """Check a value equal to a bound counts in that bound's bucket, a value
    just above it in the next, and one above every bound in ``+Inf``."""
    h = BucketHistogram([1.0, 2.0, 5.0])
    for v in (0.0, 1.0, 1.0000001, 2.0, 4.9, 5.0, 5.1, 1e9):
        h.observe(v)
    assert h.counts == [2, 2, 2, 2]
    assert h.count == 8
    assert h.sum == pytest.approx(0.0 + 1.0 + 1.0000001 + 2.0 + 4.9 + 5.0 + 5.1 + 1e9)


def test_cumulative_counts_end_with_the_inf_bucket() -> None:
    """Check ``cumulative()`` gives each bound with the values at or below
    it, then ``(inf, count)``, and empty buckets repeat the running total."""
    h = BucketHistogram([0.001, 0.002, 0.005])
    for v in (0.0005, 0.0015, 0.0016, 0.01):
        h.observe(v)
    assert h.cumulative() == [(0.001, 1), (0.002, 3), (0.005, 3), (math.inf, 4)]


def test_quantiles_interpolate_linearly_inside_a_bucket() -> None:
    """Check the estimates ``histogram_quantile()`` would give: rank
    ``q * count`` interpolated between the bucket's lower and upper bound
    (0 below the first), nothing observed gives ``None``, and a rank in the
    ``+Inf`` bucket gives the highest finite bound."""
    h = BucketHistogram([1.0, 2.0, 4.0])
    assert h.quantile(0.5) is None
    for v in [0.5] * 10 + [1.5] * 10 + [3.0] * 20:
        h.observe(v)
    # count 40: ranks 20 (p50) and 30 (p75) and 39.6 (p99)
    assert h.quantile(0.25) == pytest.approx(1.0)  # rank 10: the top of the first bucket
    assert h.quantile(0.5) == pytest.approx(2.0)
    assert h.quantile(0.75) == pytest.approx(3.0)  # halfway through (2, 4]
    assert h.quantile(0.99) == pytest.approx(2.0 + 2.0 * 19.6 / 20)
    assert h.quantile(0.1) == pytest.approx(0.4)  # rank 4 of 10 in (0, 1]
    h.observe(100.0)
    assert h.quantile(1.0) == 4.0


def test_bucket_quantile_reads_scraped_pairs_and_refuses_bad_input() -> None:
    """Check the function works on scraped ``(le, count)`` pairs (floats), and
    a quantile out of 0..1 or pairs without ``+Inf`` last raise, saying why."""
    pairs = [(0.001, 0.0), (0.002, 4.0), (math.inf, 4.0)]
    assert bucket_quantile(pairs, 0.5) == pytest.approx(0.0015)
    with pytest.raises(ValueError, match="within 0..1"):
        bucket_quantile(pairs, 1.5)
    with pytest.raises(ValueError, match=r"\+Inf"):
        bucket_quantile(pairs[:2], 0.5)


@pytest.mark.parametrize(("bounds", "message"), [
    ([], "at least one"),
    ([1.0, 1.0], "increase strictly"),
    ([2.0, 1.0], "increase strictly"),
    ([1.0, math.inf], "finite"),
])
def test_bad_bounds_are_refused(bounds: list[float], message: str) -> None:
    """Check bounds that are empty, not increasing or infinite raise a
    ValueError naming the fault."""
    with pytest.raises(ValueError, match=message):
        BucketHistogram(bounds)


def test_the_invite_to_alerting_buckets_resolve_the_issue_17_bounds() -> None:
    """Check 2 ms and 10 ms (the targets of issue 17) are bucket bounds, so
    a p99 read from the buckets says exactly whether it is under them."""
    assert 0.002 in INVITE_TO_ALERTING_BUCKETS and 0.01 in INVITE_TO_ALERTING_BUCKETS
    BucketHistogram(INVITE_TO_ALERTING_BUCKETS)  # valid
