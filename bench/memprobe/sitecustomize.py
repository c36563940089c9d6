"""bench/memory's probe, loaded by every Python started with this folder on
``PYTHONPATH`` and active only with ``CALLBRIDGE_MEMPROBE`` set to a file
path prefix: tracemalloc starts (with ``PYTHONTRACEMALLOC`` frames, default
1) and each SIGUSR2 dumps a snapshot to ``<prefix>-<n>.snap`` plus the
traced totals and the collector's counts to ``<prefix>-<n>.txt``. With
``CALLBRIDGE_GCPROBE`` set to a file path, the collector's pauses (from
``gc.callbacks``) are appended there as ``generation wall_seconds cpu_seconds collected`` lines, and
``CALLBRIDGE_GCPROBE_THRESHOLD=a,b,c`` replaces the thresholds the engine
sets (``gc.set_threshold`` is wrapped) so other tunings can be compared. The engine knows nothing of this: it is the bench's outside
measure, never part of ``callbridge serve``."""

from __future__ import annotations

import gc
import os
import signal
import time

_prefix = os.environ.get("CALLBRIDGE_MEMPROBE")
if _prefix:
    import tracemalloc

    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ.get("PYTHONTRACEMALLOC") or 1))
    _count = [0]

    def _dump(signum: int, frame: object) -> None:
        _count[0] += 1
        path = f"{_prefix}-{_count[0]}"
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.take_snapshot().dump(path + ".snap")
        with open(path + ".txt", "w") as fh:
            fh.write(f"{current} {peak} {gc.get_count()} {len(gc.get_objects())}\n")

    signal.signal(signal.SIGUSR2, _dump)

_gcpath = os.environ.get("CALLBRIDGE_GCPROBE")
if _gcpath:
    _out = open(_gcpath, "a", buffering=1)
    _start = [0.0, 0.0]

    def _timing(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _start[0] = time.perf_counter()
            _start[1] = time.thread_time()
        else:
            wall = time.perf_counter() - _start[0]
            cpu = time.thread_time() - _start[1]
            _out.write(f"{info['generation']} {wall:.6f} {cpu:.6f} {info['collected']}\n")

    gc.callbacks.append(_timing)
    _thresholds = os.environ.get("CALLBRIDGE_GCPROBE_THRESHOLD")
    if _thresholds:
        _wanted = tuple(int(v) for v in _thresholds.split(","))
        _set = gc.set_threshold

        def _set_threshold(*values: int) -> None:
            _set(*_wanted)

        gc.set_threshold = _set_threshold
