"""bench/gc_pauses: the cyclic collector's pauses in ``callbridge serve`` under load.

Run by hand. The engine runs as ``bench/sip_cps.py`` runs it (answer, 1 s,
the engine's BYE: ``scenarios/answer_hangup.py`` and
``tests/e2e/sipp/uac_wait_bye.xml``), with ``bench/memprobe`` on
``PYTHONPATH``: its ``sitecustomize`` times every collection through
``gc.callbacks`` (wall and thread CPU time) and, with ``--threshold
a,b,c``, replaces the thresholds ``engine/cli.py``'s ``_tune_gc`` sets, so
tunings can be compared without touching the engine. For each rate it
prints, per generation: collections, p50 / p99 / max pause (wall ms; the
max CPU ms next to it, since the machine is shared) and the share of the
run spent collecting.

Usage: ``python bench/gc_pauses.py [--rates 400,600] [--seconds 60] [--threshold 50000,50,100]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
from sipp_load import UAC_WAIT_BYE, run_sipp_load, serve_answer_hangup  # noqa: E402

PROBE = BENCH / "memprobe"


def pauses(log: Path, seconds: float) -> dict[int, dict[str, float]]:
    """Per generation: count, p50/p99/max wall ms, max CPU ms, % of the run."""
    rows: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}
    collected = {0: 0, 1: 0, 2: 0}
    for line in log.read_text().splitlines():
        gen, wall, cpu, freed = line.split()
        rows[int(gen)].append((float(wall), float(cpu)))
        collected[int(gen)] += int(freed)
    out: dict[int, dict[str, float]] = {}
    for gen, values in rows.items():
        walls = sorted(w for w, _ in values)
        if not walls:
            out[gen] = {"count": 0}
            continue

        def pct(p: float) -> float:
            return walls[min(len(walls) - 1, int(p * len(walls)))] * 1000

        out[gen] = {"count": len(walls), "p50_ms": round(pct(0.5), 3), "p99_ms": round(pct(0.99), 3),
                    "max_ms": round(walls[-1] * 1000, 3),
                    "max_cpu_ms": round(max(c for _, c in values) * 1000, 3),
                    "share_pct": round(100 * sum(walls) / seconds, 3), "collected": collected[gen]}
    return out


def run(rate: int, seconds: int, threshold: str | None, workdir: Path) -> dict[str, Any]:
    log = workdir / f"gc-{rate}.log"
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = str(PROBE) + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.environ["CALLBRIDGE_GCPROBE"] = str(log)
    if threshold:
        os.environ["CALLBRIDGE_GCPROBE_THRESHOLD"] = threshold
    try:
        serve = serve_answer_hangup(workdir)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        log.write_text("")  # start-up's collections (and gc.freeze's) are not the load's
        load = run_sipp_load(["-sf", str(UAC_WAIT_BYE), "-s", "bench", f"127.0.0.1:{serve.sip_port}"],
                             rate, seconds, workdir)
        ok, failed = load.successful, load.failed
    finally:
        serve.stop()
    return {"rate": rate, "ok": ok, "failed": failed, "gens": pauses(log, seconds + 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="400,600")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--threshold", help="a,b,c instead of _tune_gc's thresholds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gc_pauses-") as tmp:
        for rate in (int(r) for r in args.rates.split(",")):
            res = run(rate, args.seconds, args.threshold, Path(tmp))
            print(f"{rate} calls/s for {args.seconds} s, thresholds {args.threshold or 'engine'}: "
                  f"ok={res['ok']} failed={res['failed']}", flush=True)
            for gen, g in res["gens"].items():
                if g["count"]:
                    print(f"  gen{gen}: {g['count']:6d} collections, p50 {g['p50_ms']:.2f} ms, p99 "
                          f"{g['p99_ms']:.2f} ms, max {g['max_ms']:.2f} ms (cpu {g['max_cpu_ms']:.2f}), "
                          f"{g['share_pct']:.2f}% of the run, {g['collected']} unreachable objects freed",
                          flush=True)
                else:
                    print(f"  gen{gen}: no collection", flush=True)


if __name__ == "__main__":
    main()
