"""WAV recording of 16-bit mono PCM frames.

A :class:`WavRecorder` takes the frames the media graph hands it every tick
and writes them through the standard library's :mod:`wave` (RIFF header
patched at :meth:`WavRecorder.close`). Writes go through a buffered file, so
a tick costs one memory copy; the kernel sees a write every few seconds.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np

from engine.media.pcm import Pcm

__all__ = ["WavRecorder", "RecorderError"]



class RecorderError(Exception):
    """The recording file cannot be written."""


class WavRecorder:
    """Write frames to ``path`` as a mono 16-bit WAV at ``rate``.

    :raises RecorderError: the file cannot be created (with the path and reason).
    """

    def __init__(self, path: Path, rate: int = 8000) -> None:
        self.path = Path(path)
        self.rate = rate
        self.samples = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Recordings are private (mode 0600), whatever the umask.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            self._file = os.fdopen(fd, "wb")
            self._wav: wave.Wave_write | None = wave.open(self._file, "wb")
        except OSError as exc:
            raise RecorderError(f"cannot record to {self.path}: {exc.strerror or exc}") from exc
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(rate)

    @property
    def closed(self) -> bool:
        return self._wav is None

    @property
    def duration(self) -> float:
        """Seconds written so far."""
        return self.samples / self.rate

    def write(self, frame: Pcm) -> None:
        """Append one frame (little-endian on disk, as WAV requires)."""
        if self._wav is None:
            return
        self._wav.writeframesraw(np.asarray(frame, dtype="<i2").tobytes())
        self.samples += int(frame.shape[-1])

    def close(self) -> None:
        """Finish the file (patch the header); idempotent."""
        wav, self._wav = self._wav, None
        if wav is not None:
            wav.close()
            self._file.close()  # wave closes only the files it opened
