"""Where the public conformance corpora are (RFC 4475, RFC 5118, PROTOS,
pjsip seeds): ``shared/corpora`` beside the checkout, as CI lays it out, or
``$CALLBRIDGE_CORPORA``. They are GPL material we read, never copy. A
missing corpus fails the test that needs it: it is never skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def corpora_dir() -> Path:
    candidates = []
    if os.environ.get("CALLBRIDGE_CORPORA"):
        candidates.append(Path(os.environ["CALLBRIDGE_CORPORA"]))
    candidates += [_REPO.parent / "shared" / "corpora", Path("/work/shared/corpora")]
    for path in candidates:
        if (path / "rfc4475").is_dir():
            return path
    pytest.fail(
        "conformance corpora not found (looked in: "
        + ", ".join(str(p) for p in candidates)
        + "); set CALLBRIDGE_CORPORA to the shared/corpora folder",
        pytrace=False,
    )
