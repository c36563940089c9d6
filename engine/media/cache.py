"""Disk caches' one way to write a file: atomically.

The TTS cache (:class:`engine.media.tts.TtsCache`) and the audio fetcher
(:class:`engine.transport.audio_fetch.AudioLoader`) keep decoded audio as
``.npy`` files that other threads, other calls and later engine runs read.
:func:`store_array` writes each into a temporary file in the same folder
and renames it over the final name (``os.replace``, atomic on POSIX within
one file system), so a reader finds the old file, no file or the whole new
one, never a half-written one; a failed write leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["store_array"]


def store_array(path: Path, array: npt.NDArray[Any]) -> bool:
    """Save ``array`` to ``path`` (``.npy``, no pickles) atomically, making
    its folder if needed.

    :returns: ``True`` once stored; ``False`` when writing or renaming
        failed (the temporary file is removed, ``path`` is untouched).
    :raises OSError: the folder cannot be made, or no file can be created
        in it (nothing was written).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    return True
