"""The external programs tests run (sipp, espeak-ng): ``./run.sh test``
installs them from debian-packages.txt; a missing one fails the test that
needs it, loudly, and is never skipped."""

from __future__ import annotations

import shutil

import pytest


def require_tool(name: str) -> str:
    """The path of ``name``; fail the test when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: ./run.sh test installs it (debian-packages.txt)",
                    pytrace=False)
    return path
