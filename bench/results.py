"""bench/results: the benches' figures as JSON, and the regression guard.

Each bench calls :func:`save` once at its end; the file
``bench/results/<UTC timestamp>-<name>.json`` holds the figures and the
facts of the machine and tree they were measured on (:func:`machine_facts`).
A figure is ``{"value": number, "unit": "...", "better": "higher"|"lower"}``;
:func:`figure` builds one.

:func:`compare` prints every figure of an earlier file next to the new one,
old → new with the change in %, and marks the ones that moved more than
10 % (:data:`THRESHOLD`) in their bad direction. From the command line::

    python bench/results.py compare OLD.json NEW.json   # two saved runs
    python bench/results.py compare OLD.json --since T  # the newest run of OLD's
                                                        # bench saved at or after
                                                        # Unix time T (run.sh bench --compare)

It exits 1 when a figure got worse by more than 10 %, 0 otherwise. Figures
are noisy on a shared machine: read a flag as "run it again", not as proof.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TextIO

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
THRESHOLD = 0.10  # a change worse than this fraction is flagged

Figures = dict[str, dict[str, Any]]


def figure(value: float, unit: str, better: Literal["higher", "lower"]) -> dict[str, Any]:
    """One figure as the result files store it (``value`` may be a numpy
    scalar: it is stored as a plain int when whole, else a float)."""
    v = float(value)
    return {"value": int(v) if v.is_integer() else v, "unit": unit, "better": better}


def median_of_rounds(rounds: list[Figures]) -> Figures:
    """The figures of several rounds as one: each figure every round has,
    its value the rounds' median (a ratio is the median of the rounds' own
    ratios, not a ratio of medians)."""
    if len(rounds) == 1:
        return dict(rounds[0])
    out: Figures = {}
    for name, fig in rounds[0].items():
        if all(name in r for r in rounds):
            median = statistics.median(r[name]["value"] for r in rounds)
            out[name] = figure(round(median, 4), fig["unit"], fig["better"])
    return out


def check_figures(figures: Figures) -> None:
    """Raise ValueError naming the first figure that is not
    ``{"value": number, "unit": str, "better": "higher"|"lower"}``."""
    for name, fig in figures.items():
        if not isinstance(fig, dict):
            raise ValueError(f"figure {name!r}: expected a dict with value, unit, better; got {fig!r}")
        value = fig.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"figure {name!r}: value must be a finite number, got {value!r}")
        if not isinstance(fig.get("unit"), str):
            raise ValueError(f"figure {name!r}: unit must be a string, got {fig.get('unit')!r}")
        if fig.get("better") not in ("higher", "lower"):
            raise ValueError(f"figure {name!r}: better must be 'higher' or 'lower', got {fig.get('better')!r}")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_facts() -> dict[str, Any]:
    """Where the figures come from: CPU model, cores, kernel, Python and
    uvloop versions, the tree's git commit and whether it had uncommitted
    changes (``dirty``), and the UTC date."""
    try:
        from importlib.metadata import version

        uvloop: str | None = version("uvloop")
    except Exception:  # not installed: the benches then run on asyncio's loop
        uvloop = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uvloop,
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save(name: str, figures: Figures, settings: dict[str, Any] | None = None,
         directory: Path | None = None) -> Path:
    """Write ``<directory>/<UTC timestamp>-<name>.json`` (default directory:
    ``bench/results/``, created when missing) with ``figures``, the bench's
    ``settings`` (its flags) and :func:`machine_facts`; return its path."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"bench name must be lower-case letters, digits and _: {name!r}")
    check_figures(figures)
    directory = RESULTS_DIR if directory is None else directory
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"{stamp}-{name}.json"
    doc = {"name": name, "figures": figures, "settings": settings or {}, "machine": machine_facts()}
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    print(f"figures saved to {path}", flush=True)
    return path


def load(path: Path) -> dict[str, Any]:
    """A saved result file; ValueError naming the file when it is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable result file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("figures"), dict):
        raise ValueError(f"{path}: not a result file (no 'figures' object)")
    try:
        check_figures(doc["figures"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return doc


@dataclass(frozen=True)
class Change:
    """One row of a comparison. ``old`` or ``new`` is None when the figure
    is missing on that side; ``change`` is the relative change (new − old) /
    |old| (None when a side is missing, ±inf from an old 0)."""

    name: str
    unit: str
    better: str
    old: float | None
    new: float | None
    change: float | None
    worse: bool


def changes(old: Figures, new: Figures, threshold: float = THRESHOLD) -> list[Change]:
    """Every figure of ``old`` and ``new`` (old's order, then new-only ones).
    A figure is ``worse`` when it moved more than ``threshold`` of the old
    value in its bad direction (``better`` as the new file declares it); a
    figure missing on one side is listed, never flagged."""
    rows = []
    for name in [*old, *(n for n in new if n not in old)]:
        o, n = old.get(name), new.get(name)
        meta = n if n is not None else o
        assert meta is not None
        better = meta["better"]
        if o is None or n is None:
            rows.append(Change(name, meta["unit"], better, None if o is None else float(o["value"]),
                               None if n is None else float(n["value"]), None, False))
            continue
        a, b = float(o["value"]), float(n["value"])
        if a == 0:
            change = 0.0 if b == 0 else math.copysign(math.inf, b)
        else:
            change = (b - a) / abs(a)
        bad = -change if better == "higher" else change
        rows.append(Change(name, meta["unit"], better, a, b, change, bad > threshold))
    return rows


def _num(v: float | None) -> str:
    if v is None:
        return "(missing)"
    return f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:,.3g}"


def compare(old_file: Path, new_figures: Figures, out: TextIO | None = None,
            new_settings: dict[str, Any] | None = None) -> list[Change]:
    """Print each figure of ``old_file`` → ``new_figures`` with its change in
    %, marking ``WORSE`` the ones more than 10 % worse; return the rows.
    With ``new_settings``, the bench flags that differ are named first."""
    out = sys.stdout if out is None else out
    old_doc = load(old_file)
    check_figures(new_figures)
    rows = changes(old_doc["figures"], new_figures)
    facts = old_doc.get("machine", {})
    print(f"compared with {old_file} ({old_doc.get('name', '?')}, {facts.get('date', '?')}, "
          f"commit {str(facts.get('commit'))[:10]}{' dirty' if facts.get('dirty') else ''}):", file=out)
    if new_settings is not None:
        old_settings = old_doc.get("settings", {})
        differ = [f"{k} {old_settings.get(k)!r} → {new_settings.get(k)!r}"
                  for k in [*old_settings, *(k for k in new_settings if k not in old_settings)]
                  if old_settings.get(k) != new_settings.get(k)]
        if differ:
            print(f"  (not like for like: {'; '.join(differ)})", file=out)
    width = max((len(r.name) for r in rows), default=0)
    for r in rows:
        if r.change is None:
            pct = "new figure" if r.old is None else "gone"
        elif math.isinf(r.change):
            pct = "from 0"
        else:
            pct = f"{r.change * 100:+.1f}%"
        mark = f"  WORSE (>{THRESHOLD * 100:.0f}%, {r.better} is better)" if r.worse else ""
        print(f"  {r.name:{width}}  {_num(r.old):>12} → {_num(r.new):<12} {r.unit:8} {pct:>10}{mark}", file=out)
    worse = [r.name for r in rows if r.worse]
    print(f"  {len(worse)} figure(s) worse by more than {THRESHOLD * 100:.0f}%"
          + (f": {', '.join(worse)}" if worse else ""), file=out)
    return rows


def newest(name: str, since: float, directory: Path | None = None) -> Path | None:
    """The newest saved run of bench ``name`` written at or after Unix time ``since``."""
    directory = RESULTS_DIR if directory is None else directory
    found = [p for p in directory.glob(f"*-{name}.json") if p.stat().st_mtime >= since]
    return max(found, key=lambda p: p.name) if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare saved bench results (bench/results/*.json).")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp_ = sub.add_parser("compare", help="print OLD's figures next to NEW's, flagging >10%% regressions")
    cmp_.add_argument("old", type=Path)
    cmp_.add_argument("new", type=Path, nargs="?",
                      help="a later result file (default: with --since, the newest run of OLD's bench)")
    cmp_.add_argument("--since", type=float, help="Unix time: NEW is the newest run of OLD's bench saved since")
    args = parser.parse_args(argv)
    try:
        old_doc = load(args.old)
        if args.new is not None:
            new_path: Path | None = args.new
        elif args.since is not None:
            new_path = newest(str(old_doc.get("name")), args.since)
            if new_path is None:
                raise ValueError(f"no run of bench {old_doc.get('name')!r} was saved in {RESULTS_DIR} "
                                 f"during this run to compare {args.old} with")
        else:
            raise ValueError("give NEW or --since")
        assert new_path is not None
        new_doc = load(new_path)
        rows = compare(args.old, new_doc["figures"], new_settings=new_doc.get("settings", {}))
    except ValueError as exc:
        print(f"results.py: {exc}", file=sys.stderr)
        return 2
    print(f"  (new: {new_path})")
    return 1 if any(r.worse for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
