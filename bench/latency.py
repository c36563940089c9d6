"""bench/latency: INVITE received -> the scenario's ``CallAlerting`` handler
entered, as a histogram (issue 17: p99 under 2 ms at 100 calls/s, under
10 ms at 80% of the maximum rate).

The engine measures it itself: the transport stamps each SIP request as it
reads it (``time.monotonic()``), and the session's first ``CallAlerting``
listener observes the time since in ``callbridge_invite_to_alerting_seconds``
(:mod:`engine.runtime.histogram`). Time an INVITE spends in the kernel's
receive queue before the engine reads it is not in that figure, so sipp's
own INVITE -> 200 OK response time (``-trace_rtt``; the bench scenario
answers inside its ``CallAlerting`` handler) is printed next to it: the
view from the wire, sipp's scheduling included; so is the number of
datagrams the kernel dropped for the engine's full receive queue
(``/proc/net/udp``), each a 500 ms retransmission for its caller.

For each rate: a fresh ``callbridge serve`` as ``bench/sip_cps`` starts it
(``scenarios/answer_hangup.py``), with ``--metrics-listen`` on loopback;
``/metrics`` scraped; sipp places ``tests/e2e/sipp/uac_wait_bye.xml`` calls
at that rate for ``--seconds``; scraped again. The difference is printed
bucket by bucket with a bar, and p50/p90/p99 are estimated from the buckets
by linear interpolation inside the bucket (Prometheus'
``histogram_quantile()``), so they are only as fine as the buckets.

Usage::

    python bench/latency.py --seconds 20 --rates 100,400
    python bench/latency.py --max-rate 1200          # 100/s, then 80% of 1200
    ./run.sh bench --latency                         # bench/sip_cps: 80% of the best rate it found

:func:`bench_latency` returns the figures (milliseconds) for the results JSON.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from engine.runtime.histogram import bucket_quantile  # noqa: E402
from serve_process import free_port  # noqa: E402
from sipp_load import UAC_WAIT_BYE as UAC_XML, run_sipp_load, serve_answer_hangup  # noqa: E402

__all__ = ["METRIC", "bench_latency", "default_rates", "histogram_delta", "print_histogram", "scrape"]

#: The engine's histogram (engine.web.metrics).
METRIC = "callbridge_invite_to_alerting_seconds"
#: The first rate: issue 17's "p99 < 2 ms at 100 calls/s".
BASE_RATE = 100
#: The second rate, as a share of the maximum: "< 10 ms at 80% of the maximum rate".
SHARE_OF_MAX = 0.8

Buckets = list[tuple[float, float]]


def default_rates(max_rate: int | None, rate2: int | None = None) -> list[int]:
    """100 calls/s, then ``rate2`` (or 80% of ``max_rate``) when given."""
    second = rate2 if rate2 is not None else (int(max_rate * SHARE_OF_MAX) if max_rate else None)
    return [BASE_RATE] + ([second] if second and second != BASE_RATE else [])


def scrape(port: int) -> Buckets:
    """The cumulative ``(le, count)`` pairs of :data:`METRIC` at ``port``'s ``/metrics``."""
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == METRIC:
            pairs = [(float(s.labels["le"]), s.value) for s in family.samples if s.name == f"{METRIC}_bucket"]
            return sorted(pairs)
    raise SystemExit(f"{METRIC} is missing from /metrics: is this engine older than the metric?")


def histogram_delta(before: Buckets, after: Buckets) -> Buckets:
    """What one run added: ``after - before``, bucket by bucket."""
    if [le for le, _ in before] != [le for le, _ in after]:
        raise ValueError("the two scrapes have different buckets")
    return [(le, a - b) for (le, b), (_, a) in zip(before, after)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.2f} ms"


def print_histogram(buckets: Buckets, width: int = 40) -> dict[str, Any]:
    """Print each bucket (upper bound in ms, the count in it, a bar) up to
    the last non-empty one, then p50/p90/p99 (bucket-interpolated) and the
    bucket holding the largest value; return those figures in ms."""
    counts = [(le, n - prev) for (le, n), prev in zip(buckets, [0.0] + [n for _, n in buckets])]
    total = buckets[-1][1] if buckets else 0.0
    last = max((i for i, (_, n) in enumerate(counts) if n > 0), default=-1)
    top = max((n for _, n in counts), default=0.0)
    print(f"    {'le (ms)':>9} {'calls':>8}  ", flush=True)
    lower = 0.0
    for le, n in counts[:last + 1]:
        bar = "#" * (math.ceil(width * n / top) if n > 0 else 0)
        label = "+Inf" if math.isinf(le) else f"{le * 1000:g}"
        print(f"    {label:>9} {int(n):8d}  {bar}")
        lower = le
    figures: dict[str, Any] = {"observed": int(total)}
    for q in (0.5, 0.9, 0.99):
        figures[f"p{round(q * 100)}_ms"] = _ms(bucket_quantile(buckets, q)) if total else None
    figures["max_bucket_ms"] = None if last < 0 else ("+Inf" if math.isinf(lower) else _ms(lower))
    print(f"    p50 {_fmt(figures['p50_ms'])}, p90 {_fmt(figures['p90_ms'])}, p99 {_fmt(figures['p99_ms'])}"
          f" (bucket-interpolated); the largest value is in the bucket up to {figures['max_bucket_ms']} ms",
          flush=True)
    return figures


def _sipp_rtts(workdir: Path, before: set[Path]) -> list[float]:
    """The INVITE -> 200 response times (ms) of the sipp run that wrote a new
    ``*_rtt.csv`` in ``workdir`` (``date_ms;response_time_ms;rtd_no``)."""
    values: list[float] = []
    for path in sorted(set(workdir.glob("*_rtt.csv")) - before):
        with open(path, newline="") as fh:
            for row in csv.reader(fh, delimiter=";"):
                if len(row) >= 2 and row[1].replace(".", "", 1).isdigit():
                    values.append(float(row[1]))
    return values


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped for a full receive queue on 127.0.0.1:``port``
    (``/proc/net/udp``'s ``drops``; 0 where it cannot be read). Each dropped
    INVITE costs its call a retransmission, 500 ms later (RFC 3261 T1)."""
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return 0
    local = f"0100007F:{port:04X}"
    return sum(int(f[-1]) for f in (line.split() for line in lines) if len(f) > 12 and f[1] == local)


def _exact(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 3)


def run_rate(rate: int, seconds: int, workdir: Path) -> dict[str, Any]:
    """One fresh engine, ``rate`` calls/s for ``seconds``: print and return its figures."""
    metrics_port = free_port()
    serve = serve_answer_hangup(workdir, ["--metrics-listen", f"127.0.0.1:{metrics_port}"])
    sip_port = serve.sip_port
    try:
        before = scrape(metrics_port)
        drops_before = udp_drops(sip_port)
        rtt_files = set(workdir.glob("*_rtt.csv"))
        load = run_sipp_load(["-sf", str(UAC_XML), "-s", "bench", "-trace_rtt", "-rtt_freq", "1",
                              f"127.0.0.1:{sip_port}"], rate, seconds, workdir)
        ok, failed = load.successful, load.failed
        after = scrape(metrics_port)
        drops = udp_drops(sip_port) - drops_before
    finally:
        serve.stop()
    print(f"  {rate} calls/s for {seconds} s: sipp ok={ok} failed={failed}; INVITE read -> CallAlerting"
          f" handler entered, in the engine:", flush=True)
    figures = {"rate": rate, "seconds": seconds, "calls_ok": ok, "calls_failed": failed, "udp_drops": drops,
               **print_histogram(histogram_delta(before, after))}
    rtts = _sipp_rtts(workdir, rtt_files)
    wire = {f"sipp_invite_to_200_p{round(q * 100)}_ms": _exact(rtts, q) for q in (0.5, 0.99)}
    wire["sipp_invite_to_200_max_ms"] = round(max(rtts), 3) if rtts else None
    print(f"    sipp, INVITE sent -> 200 OK received ({len(rtts)} calls; whole ms of sipp's coarse clock): p50"
          f" {_fmt(wire['sipp_invite_to_200_p50_ms'])}, p99 {_fmt(wire['sipp_invite_to_200_p99_ms'])},"
          f" max {_fmt(wire['sipp_invite_to_200_max_ms'])}; the engine's SIP socket dropped {drops}"
          f" datagrams for a full receive queue (not in the engine's figure)", flush=True)
    return {**figures, **wire}


def bench_latency(workdir: Path, rates: Sequence[int], seconds: int = 30) -> dict[str, Any]:
    """Run each rate in turn (see the module notes) and return
    ``{"invite_to_alerting": {"unit": "ms", "percentiles": ..., "runs": [...]}}``,
    each run with its rate, calls, ``p50_ms``, ``p90_ms``, ``p99_ms``,
    ``max_bucket_ms`` and sipp's INVITE -> 200 figures."""
    runs = []
    for i, rate in enumerate(rates):
        if i:
            time.sleep(2)
        runs.append(run_rate(rate, seconds, workdir))
    return {"invite_to_alerting": {
        "unit": "ms",
        "percentiles": "interpolated inside the engine's histogram buckets (histogram_quantile);"
                       " sipp's are exact over its whole-millisecond clock",
        "runs": runs,
    }}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=30, help="duration of each rate (default 30)")
    parser.add_argument("--rates", help="comma-separated calls/s, e.g. 100,400 (overrides the two below)")
    parser.add_argument("--max-rate", type=int, help="the engine's maximum rate: the second rate is 80%% of it")
    parser.add_argument("--rate2", type=int, help="the second rate (default 80%% of --max-rate)")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed: ./run.sh bench installs sip-tester")
    try:
        rates = [int(r) for r in args.rates.split(",")] if args.rates else default_rates(args.max_rate, args.rate2)
    except ValueError:
        raise SystemExit(f"--rates {args.rates!r}: expected calls/s separated by commas, e.g. 100,400") from None
    if not rates or any(r <= 0 for r in rates) or args.seconds <= 0:
        raise SystemExit("rates and --seconds must be positive")
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        print("callbridge serve (uvloop), answer + 1 s + BYE: INVITE -> CallAlerting latency", flush=True)
        bench_latency(Path(tmp), rates, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
