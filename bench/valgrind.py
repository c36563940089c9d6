"""The instructions a Python command runs, counted by valgrind: what
``bench/call_paths.py --instructions`` and ``bench/media_paths.py
--instructions`` count with (``cachegrind`` without cache simulation, the
hash seed fixed so that two runs walk the same dicts)."""

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
    cmd = [valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", sys.executable, *args]
    full = {**os.environ, **(env or {}), "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run of {what} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return int(found.group(1).replace(",", "")), proc.stdout
