"""bench/media_paths keeps measuring what it says: a short run on real
sockets times every path, and every leg got every packet (the bench raises
when a frame had to be concealed)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_a_short_run_times_every_path_with_nothing_concealed(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("media_paths", None)
    import media_paths

    figures = media_paths.measure(6, media_paths.WARMUP + 10, rtcp=True)
    assert set(figures) == {"read", "receive", "pull", "mix", "push", "send"}
    assert all(math.isfinite(v) and v > 0 for v in figures.values()), figures
    # the engine's receive path includes the bare read it is compared with
    assert figures["receive"] > figures["read"] * 0.5


def test_the_counted_run_says_whether_the_compiled_modules_ran() -> None:
    """``--count`` (what ``--instructions`` runs under valgrind) drives the
    engine's paths and reports which modules ran: the parent refuses a count
    of the wrong kind on that line."""
    script = str(BENCH / "media_paths.py")
    for native, expect in (("1", "native True"), ("0", "native False")):
        proc = subprocess.run([sys.executable, script, "--count", "40", "--legs", "6", "--rtcp"],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "CALLBRIDGE_NATIVE": native})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1] == expect, (native, proc.stdout)


def test_instruction_counts_need_valgrind_and_say_so(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("media_paths", None)
    import media_paths

    monkeypatch.setattr(media_paths.valgrind.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="valgrind is not installed"):
        media_paths.instructions(True, rtcp=True, pinned=False)
