"""The instructions a Python command runs, counted by valgrind: what
``bench/call_paths.py --instructions`` and ``bench/media_paths.py
--instructions`` count with (``cachegrind`` without cache simulation, the
hash seed fixed so that two runs walk the same dicts, address space
randomisation off with ``setarch -R`` where there is one, and numpy's
OpenBLAS on one thread: its idle threads spin a varying number of
instructions, which moved a call's count by about 1% from run to run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

__all__ = ["count"]


def count(args: list[str], what: str, timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``python args...`` under valgrind; its instruction count and stdout.

    :raises RuntimeError: valgrind is missing, or the run (``what``) failed.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed: ./run.sh bench installs it (bench-packages.txt)")
    setarch = shutil.which("setarch")
    cmd = [*([setarch, "-R"] if setarch else []), valgrind, "--tool=cachegrind", "--cache-sim=no",
           "--cachegrind-out-file=/dev/null", sys.executable, *args]
    full = {**os.environ, **(env or {}), "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run of {what} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return int(found.group(1).replace(",", "")), proc.stdout
