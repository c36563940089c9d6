"""The engine type-checks under ``mypy --strict`` (style.md §6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.typing
def test_engine_passes_mypy_strict(tmp_path: Path) -> None:
    """Check ``mypy --strict -p engine`` reports no error (``-p``: a stray
    ``__init__.py`` in a parent folder must not change module names)."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "-p", "engine"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
