"""bench/results.py, the benches' regression guard: the direction of each
figure, the 10% flag, figures missing on one side, the saved file and the
``compare`` command line."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load() -> ModuleType:
    # bench/ is a folder of scripts, not a package: load the file itself
    # (putting bench/ on sys.path would shadow tests' own modules, e.g. fuzz)
    spec = importlib.util.spec_from_file_location("bench_results", BENCH / "results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


results = _load()
fig = results.figure


def by_name(rows: list[Any]) -> dict[str, Any]:
    return {r.name: r for r in rows}


def test_higher_is_better_flags_only_a_drop_beyond_10_percent() -> None:
    """A calls/s figure (higher is better): -11% is flagged, -10% exactly
    and -9% are not, and a rise of 50% is not a regression."""
    old = {"a": fig(1000, "calls/s", "higher"), "b": fig(1000, "calls/s", "higher"),
           "c": fig(1000, "calls/s", "higher"), "d": fig(1000, "calls/s", "higher")}
    new = {"a": fig(890, "calls/s", "higher"), "b": fig(900, "calls/s", "higher"),
           "c": fig(910, "calls/s", "higher"), "d": fig(1500, "calls/s", "higher")}
    rows = by_name(results.changes(old, new))
    assert [rows[k].worse for k in "abcd"] == [True, False, False, False]
    assert rows["a"].change == pytest.approx(-0.11)
    assert rows["d"].change == pytest.approx(0.5)


def test_lower_is_better_flags_only_a_rise_beyond_10_percent() -> None:
    """A µs/packet figure (lower is better): +11% is flagged, +10% exactly
    is not, and a drop of 50% is an improvement, not a regression."""
    old = {"a": fig(10.0, "us", "lower"), "b": fig(10.0, "us", "lower"), "c": fig(10.0, "us", "lower")}
    new = {"a": fig(11.1, "us", "lower"), "b": fig(11.0, "us", "lower"), "c": fig(5.0, "us", "lower")}
    rows = by_name(results.changes(old, new))
    assert [rows[k].worse for k in "abc"] == [True, False, False]
    assert rows["c"].change == pytest.approx(-0.5)


def test_figure_missing_on_one_side_is_listed_not_flagged() -> None:
    """A figure only in the old run and one only in the new run both appear
    (old's order first), with the missing side None and no change; neither
    is flagged as worse."""
    old = {"gone": fig(5, "MB", "lower"), "kept": fig(1, "x", "higher")}
    new = {"kept": fig(1, "x", "higher"), "added": fig(7, "calls/s", "higher")}
    rows = results.changes(old, new)
    assert [r.name for r in rows] == ["gone", "kept", "added"]
    gone, _, added = rows
    assert (gone.old, gone.new, gone.change, gone.worse) == (5.0, None, None, False)
    assert (added.old, added.new, added.change, added.worse) == (None, 7.0, None, False)


def test_from_zero() -> None:
    """An old value of 0: failed calls (lower is better) going 0 → 3 is
    flagged; 0 → 0 is no change."""
    old = {"failed": fig(0, "calls", "lower"), "same": fig(0, "calls", "lower")}
    new = {"failed": fig(3, "calls", "lower"), "same": fig(0, "calls", "lower")}
    rows = by_name(results.changes(old, new))
    assert rows["failed"].worse and math.isinf(rows["failed"].change)
    assert not rows["same"].worse and rows["same"].change == 0.0


def test_save_writes_figures_and_machine_facts(tmp_path: Path) -> None:
    """save() writes <UTC stamp>-<name>.json into a folder it creates, with
    the figures, the settings and the machine facts (cores, Python, commit)."""
    path = results.save("sip_cps", {"cps": fig(500, "calls/s", "higher")}, {"seconds": 60},
                        directory=tmp_path / "out")
    assert path.parent == tmp_path / "out" and path.name.endswith("Z-sip_cps.json")
    doc = json.loads(path.read_text())
    assert doc["figures"] == {"cps": {"value": 500, "unit": "calls/s", "better": "higher"}}
    assert doc["settings"] == {"seconds": 60}
    facts = doc["machine"]
    assert set(facts) >= {"cpu", "cores", "kernel", "python", "uvloop", "commit", "dirty", "date"}
    assert facts["cores"] >= 1 and facts["python"].count(".") == 2


@pytest.mark.parametrize("bad, message", [
    ({"x": {"value": 1, "unit": "s"}}, "figure 'x': better must be 'higher' or 'lower'"),
    ({"x": {"value": "1", "unit": "s", "better": "lower"}}, "figure 'x': value must be a finite number"),
    ({"x": {"value": 1.0, "unit": 3, "better": "lower"}}, "figure 'x': unit must be a string"),
])
def test_save_refuses_malformed_figures(tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    """A figure without a direction, with a non-numeric value or unit is
    refused with an error naming the figure, and nothing is written."""
    with pytest.raises(ValueError, match=message):
        results.save("media", bad, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_compare_prints_old_new_percent_and_marks(tmp_path: Path) -> None:
    """compare() prints each figure old → new with its % change and WORSE on
    the regressed one only."""
    old = results.save("media", {"us_per_packet": fig(10.0, "us", "lower"),
                                 "legs": fig(1000, "legs", "higher")}, directory=tmp_path)
    out = io.StringIO()
    results.compare(old, {"us_per_packet": fig(12.5, "us", "lower"),
                          "legs": fig(1000, "legs", "higher")}, out=out)
    lines = out.getvalue().splitlines()
    us = next(line for line in lines if "us_per_packet" in line)
    legs = next(line for line in lines if line.strip().startswith("legs"))
    assert "10 → 12.5" in us and "+25.0%" in us and "WORSE" in us
    assert "+0.0%" in legs and "WORSE" not in legs
    assert "1 figure(s) worse by more than 10%: us_per_packet" in lines[-1]


def test_command_line_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``results.py compare OLD NEW`` exits 1 when a figure is worse, 0 when
    none is, and 2 with a message naming the file when OLD is not a result."""
    a = results.save("soak", {"failed": fig(0, "calls", "lower")}, directory=tmp_path)
    b = results.save("soak", {"failed": fig(0, "calls", "lower")}, directory=tmp_path)
    c = results.save("soak", {"failed": fig(2, "calls", "lower")}, directory=tmp_path)
    assert results.main(["compare", str(a), str(b)]) == 0
    assert results.main(["compare", str(a), str(c)]) == 1
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    assert results.main(["compare", str(junk), str(a)]) == 2
    assert f"{junk}: not a result file" in capsys.readouterr().err


def test_median_of_rounds_takes_each_figures_median_and_the_ratios_own() -> None:
    """``bench/sip_cps.py --rounds``: a rate is the rounds' median, a ratio
    the median of each round's ratio (here 0.25, where the ratio of the
    median rates would be 0.2); a figure one round lacks is left out."""
    rounds = [
        {"nodes_cps": fig(1000, "calls/s", "higher"), "probe_cps": fig(4000, "calls/s", "higher"),
         "ratio_nodes_probe": fig(0.25, "ratio", "higher"), "kamailio_cps": fig(9000, "calls/s", "higher")},
        {"nodes_cps": fig(1200, "calls/s", "higher"), "probe_cps": fig(8000, "calls/s", "higher"),
         "ratio_nodes_probe": fig(0.15, "ratio", "higher")},
        {"nodes_cps": fig(1500, "calls/s", "higher"), "probe_cps": fig(6000, "calls/s", "higher"),
         "ratio_nodes_probe": fig(0.25, "ratio", "higher")},
    ]
    got = results.median_of_rounds(rounds)
    assert got == {"nodes_cps": fig(1200, "calls/s", "higher"), "probe_cps": fig(6000, "calls/s", "higher"),
                   "ratio_nodes_probe": fig(0.25, "ratio", "higher")}
    results.check_figures(got)
    assert results.median_of_rounds(rounds[:1]) == rounds[0]
    # two rounds: the mean of the two, as statistics.median gives
    assert results.median_of_rounds(rounds[:2])["nodes_cps"]["value"] == 1100
