"""bench/media_paths keeps measuring what it says: a short run on real
sockets times every path, and every leg got every packet (the bench raises
when a frame had to be concealed)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

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
