"""bench/soak: does callbridge hold a call rate for minutes with flat memory?

``callbridge serve`` (its own process, uvloop) answers calls placed by sipp
at ``--rate`` calls/s (default 400) for ``--minutes`` (default 10), with the
scenario of ``bench/sip_cps.py`` (``tests/e2e/sipp/uac_wait_bye.xml`` against
``scenarios/answer_hangup.py``: INVITE, 200, ACK, the engine's BYE after
1 s, 200). The engine's RSS is sampled every 10 s. It prints the RSS series,
its min and max relative to the sample after the first minute (the
reference: by then imports, caches and the 32-second transaction wait
states have filled), "flat" when every later sample is within ±10 % of it,
the failed and unfinished calls, and saves the figures through
``bench/results.py`` (``bench/results/<stamp>-soak.json``).

Run by hand (issue 17's target: 10 minutes at 80 % of the maximum rate,
zero failed calls, RSS flat within ±10 %)::

    ./run.sh bench soak [--rate 400] [--minutes 10]

``tests/e2e/test_soak.py`` runs :func:`soak` for 30 s in the suite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))
from sipp_load import SippLoad, answer_hangup_sipp, run_sipp_load, serve_answer_hangup  # noqa: E402

FLAT = 0.10  # RSS within ±10% of the reference sample counts as flat


@dataclass(frozen=True)
class SoakRun:
    """One soak: the sipp run, the engine's RSS in KiB at ``(seconds since
    sipp started, rss)`` (the first at 0 s, before any call), and its RSS
    once sipp had ended (every call over)."""

    load: SippLoad
    samples: list[tuple[float, int]]
    rss_after: int

    @property
    def unfinished(self) -> int:
        """Calls placed that neither succeeded nor failed (sipp timed out)."""
        return self.load.placed - self.load.successful - self.load.failed

    def reference(self, settle: float) -> tuple[float, int]:
        """The first sample at or after ``settle`` seconds (else the last one)."""
        return next(((t, r) for t, r in self.samples if t >= settle), self.samples[-1])

    def drift(self, settle: float) -> tuple[float, float]:
        """(min, max) of the samples from the reference on and of the RSS
        after the run, relative to the reference (−0.05 = 5 % below it)."""
        t_ref, ref = self.reference(settle)
        later = [r for t, r in self.samples if t >= t_ref] + [self.rss_after]
        return min(later) / ref - 1, max(later) / ref - 1


def soak(rate: int, seconds: int, workdir: Path, every: float = 10.0,
         on_sample: Callable[[float, int], None] | None = None) -> SoakRun:
    """Run a fresh ``callbridge serve`` under sipp at ``rate`` calls/s for
    ``seconds``, sampling its RSS every ``every`` seconds (``on_sample``
    sees each sample as it is taken); stop the engine and return the run."""
    serve = serve_answer_hangup(workdir)
    try:
        samples = [(0.0, serve.rss_kb())]
        if on_sample is not None:
            on_sample(*samples[0])

        def tick(elapsed: float) -> None:
            if elapsed >= samples[-1][0] + every - 0.5:
                samples.append((elapsed, serve.rss_kb()))
                if on_sample is not None:
                    on_sample(*samples[-1])

        load = run_sipp_load(answer_hangup_sipp(serve.sip_port), rate, seconds, workdir, on_second=tick)
        rss_after = serve.rss_kb()
    finally:
        serve.stop()
    return SoakRun(load, samples, rss_after)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=400, help="calls/s (default 400)")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long calls are placed (default 10)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="the reference RSS is the first sample after this many seconds (default 60)")
    args = parser.parse_args()
    seconds = int(args.minutes * 60)
    if args.rate < 1 or seconds < 1 or args.every <= 0:
        parser.error("--rate, --minutes and --every must be positive")
    print(f"bench/soak: callbridge serve, answer + 1 s + BYE, sipp at {args.rate} calls/s for "
          f"{seconds} s ({args.rate * seconds:,} calls); RSS every {args.every:g} s", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            run = soak(args.rate, seconds, Path(tmp), args.every,
                       on_sample=lambda t, rss: print(f"  {t:6.0f} s  RSS {rss / 1024:7.1f} MB", flush=True))
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    print(f"  after the run: RSS {run.rss_after / 1024:.1f} MB")
    t_ref, ref = run.reference(args.settle)
    low, high = run.drift(args.settle)
    flat = -FLAT <= low and high <= FLAT
    print(f"RSS relative to {ref / 1024:.1f} MB at {t_ref:.0f} s: min {low * 100:+.1f}%, max {high * 100:+.1f}% "
          f"-> {'flat' if flat else 'NOT flat'} (±{FLAT * 100:.0f}%)")
    print(f"calls: {run.load.placed:,} placed, {run.load.successful:,} succeeded, {run.load.failed:,} failed, "
          f"{run.unfinished:,} unfinished")
    from results import figure, save

    save("soak", {
        "failed_calls": figure(run.load.failed, "calls", "lower"),
        "unfinished_calls": figure(run.unfinished, "calls", "lower"),
        "rss_reference": figure(round(ref / 1024, 1), "MB", "lower"),
        "rss_after": figure(round(run.rss_after / 1024, 1), "MB", "lower"),
        "rss_max_vs_reference": figure(round(high * 100, 2), "%", "lower"),
    }, {"rate": args.rate, "seconds": seconds, "every": args.every, "settle": args.settle,
        "rss_series_mb": [[round(t, 1), round(r / 1024, 1)] for t, r in run.samples]})
    return 0 if flat and run.load.passed else 1


if __name__ == "__main__":
    sys.exit(main())
