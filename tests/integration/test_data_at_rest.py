"""Secrets at rest: the data directory is private (0700) and what the
engine writes there (database with its WAL files, master key, session
logs, recordings) is 0600, whatever the process umask; a data directory
left readable by an older version is tightened at start, with a warning."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.media.recorder import WavRecorder
from engine.state.store import SqliteStore

from .conftest import EngineFactory

ROOT = Path(__file__).resolve().parents[2]
RULES = """
rules:
  - {name: Echo, pattern: "echo", scenarios: [answer_wait_hangup]}
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> object:
    """Run with the permissive umask 022 (the usual shell default)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


async def test_engine_tightens_and_keeps_its_data_private(
    make_engine: EngineFactory, tmp_path: Path, open_umask: object, caplog: pytest.LogCaptureFixture,
) -> None:
    """Check a world-readable data directory with a readable old log is
    made 0700 / 0600 at start with a warning, and the database, its -wal
    and -shm files, the key file and the day's session log are 0600."""
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    data.chmod(0o755)
    old_log = data / "logs" / "sessions-2020-01-01.log"
    old_log.write_text("session=old line\n")
    old_log.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        engine = await make_engine(RULES, data_dir=data)
    assert "took group and other access away" in caplog.text
    assert engine.store is not None
    engine.store.kv_put("ns", "k", "v", None, 0.0)  # the WAL files exist now
    engine.runtime.append_log("s1", "session=s1 a line")
    db = data / "callbridge.sqlite3"
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), data / "secret.key", old_log,
             *sorted((data / "logs").glob("sessions-*.log"))]
    assert len(files) == 7
    assert {str(p.relative_to(data)): mode(p) for p in files} == {
        str(p.relative_to(data)): 0o600 for p in files}
    assert mode(data) == mode(data / "logs") == 0o700


def test_store_and_recorder_files_are_private(tmp_path: Path, open_umask: object) -> None:
    """Check a store opened on a new directory creates it 0700 and its
    database 0600 (WAL files too), tightens an existing readable one, and
    a recording is written 0600."""
    path = tmp_path / "new" / "cb.sqlite3"
    with SqliteStore(path) as store:
        store.kv_put("ns", "k", "v", None, 0.0)
        assert mode(path.parent) == 0o700
        assert [mode(p) for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))] == [0o600] * 3
    path.chmod(0o644)
    SqliteStore(path).close()
    assert mode(path) == 0o600
    rec = WavRecorder(tmp_path / "rec" / "call.wav")
    rec.write(np.zeros(160, dtype=np.int16))
    rec.close()
    assert mode(tmp_path / "rec" / "call.wav") == 0o600


def test_cli_store_commands_write_private_files(tmp_path: Path) -> None:
    """Check ``callbridge users create`` on a new data directory leaves it
    0700 with the database 0600 (the CLI sets umask 077)."""
    data = tmp_path / "data"
    result = subprocess.run([sys.executable, "-m", "engine", "users", "--data-dir", str(data), "create",
                             "alice", "--password-stdin"], cwd=ROOT, capture_output=True, text=True,
                            input="pw-123456\n", timeout=60)
    assert result.returncode == 0, result.stderr
    assert mode(data) == 0o700
    assert {p.name: mode(p) for p in data.iterdir() if p.is_file()} == {
        p.name: 0o600 for p in data.iterdir() if p.is_file()}
    assert mode(data / "callbridge.sqlite3") == 0o600
