"""Tests for :func:`engine.media.cache.store_array`, the atomic write that
the TTS cache and the audio fetcher share: the file appears whole or not at
all, and a failure leaves no temporary file behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.media.cache import store_array


def test_stores_the_array_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Check the array reads back equal from a folder made on the way, and
    only the final file is left."""
    pcm = np.arange(-5, 5, dtype=np.int16)
    path = tmp_path / "a" / "b" / "x.npy"
    assert store_array(path, pcm) is True
    assert np.array_equal(np.load(path, allow_pickle=False), pcm)
    assert [p.name for p in path.parent.iterdir()] == ["x.npy"]


def test_replaces_an_older_file_whole(tmp_path: Path) -> None:
    """Check a second store replaces the first file's content entirely."""
    path = tmp_path / "x.npy"
    store_array(path, np.zeros(1000, dtype=np.int16))
    store_array(path, np.ones(3, dtype=np.int16))
    assert np.array_equal(np.load(path, allow_pickle=False), np.ones(3, dtype=np.int16))
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_failed_rename_removes_the_temporary_file(tmp_path: Path) -> None:
    """Check that when the final name cannot be replaced (here a folder
    holds it) the store reports False, the folder is untouched and no
    ``.tmp`` file is left."""
    path = tmp_path / "x.npy"
    (path / "inside").mkdir(parents=True)
    assert store_array(path, np.zeros(4, dtype=np.int16)) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
    assert [p.name for p in path.iterdir()] == ["inside"]


def test_unusable_folder_raises_oserror(tmp_path: Path) -> None:
    """Check a cache folder that cannot exist (a file has its name) raises
    OSError before anything is written."""
    blocker = tmp_path / "cache"
    blocker.write_bytes(b"not a folder")
    with pytest.raises(OSError):
        store_array(blocker / "x.npy", np.zeros(4, dtype=np.int16))
    assert blocker.read_bytes() == b"not a folder"
