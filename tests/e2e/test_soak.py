"""The 30-second soak: ``bench/soak.py``'s :func:`soak` in the suite.

``callbridge serve`` (the real command, its own process) answers sipp's
calls at 100 a second for 30 s (answer, 1 s, the engine's BYE): every call
completes, none fails, and RSS does not climb. No timing is asserted; 100
calls/s is a quarter of what the engine held for minutes on this machine,
so a loaded machine slows the calls without failing them.

RSS is compared with the sample after the first 10 s, not with the start:
the first calls import and cache (the scenario module, codecs), and ended
calls' transactions linger in their wait states (RFC 6026's Timer L is
32 s), so RSS rises legitimately for about 30 s. Over that window this
machine measured +3.5 %; the bound is +25 % (about 13 KB held for every one
of the 2,000 calls after the reference), generous enough that the allocator's
arenas and the collector's timing cannot trip it, tight enough that a call
leaking its session or media objects does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tools import require_tool

pytestmark = pytest.mark.e2e

SOAK_PY = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
RATE, SECONDS, EVERY, SETTLE = 100, 30, 5.0, 10.0
BOUND = 0.25


def _load_soak() -> ModuleType:
    # bench/ is a folder of scripts, not a package: load the file itself
    spec = importlib.util.spec_from_file_location("bench_soak", SOAK_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_soak_30_seconds_every_call_completes_and_rss_stays_bounded(tmp_path: Path) -> None:
    """sipp places 3,000 calls at 100/s against ``callbridge serve``: all
    3,000 succeed, none fails or is left unfinished, and the RSS once the
    calls ended is within +25 % of the RSS sampled after the first 10 s."""
    require_tool("sipp")  # a missing sipp fails the test, never skips it
    run = _load_soak().soak(RATE, SECONDS, tmp_path, every=EVERY)
    log = run.load.log.read_text(errors="replace")[-3000:]
    assert run.load.failed == 0, log
    assert run.load.successful == RATE * SECONDS, log
    assert run.unfinished == 0, log
    t_ref, ref = run.reference(SETTLE)
    assert t_ref >= SETTLE and ref > 0, run.samples
    assert run.rss_after <= ref * (1 + BOUND), (
        f"RSS {run.rss_after / 1024:.1f} MB after the run vs {ref / 1024:.1f} MB at {t_ref:.0f} s; "
        f"series {[(round(t), round(r / 1024, 1)) for t, r in run.samples]}")
