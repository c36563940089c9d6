"""A fixed-bucket histogram the engine fills on its hot paths and the
metrics layer reads at scrape time.

Theory of operation
-------------------
:class:`BucketHistogram` keeps one integer per bucket (the values at or
below its upper bound and above the previous one, Prometheus' ``le``
convention) plus the sum: :meth:`~BucketHistogram.observe` is a
:func:`bisect.bisect_left` and two additions, no object made.
:meth:`~BucketHistogram.cumulative` turns the counts into Prometheus'
cumulative ``(le, count)`` pairs when ``/metrics`` is scraped
(:mod:`engine.web.metrics`, which this layer never imports), and
:func:`bucket_quantile` estimates a quantile from such pairs the way
Prometheus' ``histogram_quantile()`` does: linear interpolation inside the
bucket the rank falls in, so the answer is only as fine as the buckets.
``bench/latency.py`` uses the same function on scraped figures.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Sequence

__all__ = ["BucketHistogram", "INVITE_TO_ALERTING_BUCKETS", "bucket_quantile"]

#: Seconds; INVITE received to the scenario's ``CallAlerting`` handler
#: entered (issue 17: p99 under 2 ms at 100 calls/s, under 10 ms near the
#: maximum rate), fine enough around both bounds.
INVITE_TO_ALERTING_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0,
)


class BucketHistogram:
    """Counts of observed values by fixed upper bounds, plus their sum.

    :param bounds: the buckets' upper bounds, strictly increasing and
        finite; a last ``+Inf`` bucket is implied.
    :raises ValueError: naming what is wrong with ``bounds``.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        bounds = tuple(float(b) for b in bounds)
        if not bounds:
            raise ValueError("a histogram needs at least one bucket bound")
        for low, high in zip(bounds, bounds[1:]):
            if not high > low:
                raise ValueError(f"bucket bounds must increase strictly: {low!r} then {high!r}")
        if not all(math.isfinite(b) for b in bounds):
            raise ValueError("bucket bounds must be finite (the +Inf bucket is implied)")
        self.bounds = bounds
        #: Per bucket (not cumulative); the last one is ``+Inf``.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is at least ``value``."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Values observed."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, values at or below le)`` for each bound, then ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float | None:
        """See :func:`bucket_quantile`."""
        return bucket_quantile(self.cumulative(), q)


def bucket_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of cumulative ``(le, count)`` pairs, as Prometheus'
    ``histogram_quantile()`` estimates it: find the bucket holding rank
    ``q * count`` and interpolate linearly between its lower bound (the
    previous bound, 0 for the first) and its upper bound. A rank in the
    ``+Inf`` bucket gives the highest finite bound.

    :param buckets: sorted by ``le``, ending with ``(inf, count)``.
    :param q: between 0 and 1.
    :returns: ``None`` when nothing was observed.
    :raises ValueError: ``q`` out of range, or no ``+Inf`` bucket last.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, not {q!r}")
    if not buckets or not math.isinf(buckets[-1][0]):
        raise ValueError("cumulative buckets must end with the +Inf bucket")
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower
