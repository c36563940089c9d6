"""Players: passive sources of outgoing audio frames (pjmedia-port style).

A player is pulled by the media clock, one frame per tick: :meth:`FrameSource.read`
returns the next ``samples`` 16-bit mono samples, and raises
:class:`PlaybackFinished` once a non-looping source has nothing left (a last
short frame is returned padded with silence first). Players do no I/O and
keep no timers, so a session on hold can keep pulling (time passes) without
sending.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from engine.media.pcm import Pcm

__all__ = [
    "FrameSource", "PlaybackFinished", "ToneSource", "PcmSource", "SilenceSource", "silence",
    "DEFAULT_LEVEL",
]


#: Default level of generated tones, in dBFS (peak of the sine).
DEFAULT_LEVEL = -10.0


class PlaybackFinished(Exception):
    """The source has ended (never raised by a looping or endless source)."""


class FrameSource(Protocol):
    rate: int

    def read(self, samples: int) -> Pcm:
        """The next ``samples`` samples; :class:`PlaybackFinished` at the end."""
        ...


def _pad(frame: Pcm, samples: int) -> Pcm:
    if len(frame) == samples:
        return frame
    out = np.zeros(samples, dtype=np.int16)
    out[: len(frame)] = frame
    return out


class ToneSource:
    """A sine of ``freq`` Hz for ``seconds`` (``None``: endless) at ``level``
    dBFS. The phase continues across frames (no clicks between frames)."""

    def __init__(self, freq: float, seconds: float | None = None, level: float = DEFAULT_LEVEL,
                 rate: int = 8000) -> None:
        if freq <= 0 or freq >= rate / 2:
            raise ValueError(f"tone frequency must be in (0, {rate / 2}) Hz, not {freq}")
        if seconds is not None and seconds < 0:
            raise ValueError("seconds must not be negative")
        self.freq = float(freq)
        self.rate = rate
        self.amplitude = 32767.0 * 10.0 ** (level / 20.0)
        self.total = None if seconds is None else int(round(seconds * rate))
        self.position = 0

    def read(self, samples: int) -> Pcm:
        n = samples
        if self.total is not None:
            n = min(samples, self.total - self.position)
            if n <= 0:
                raise PlaybackFinished
        t = np.arange(self.position, self.position + n, dtype=np.float64)
        self.position += n
        wave = self.amplitude * np.sin(2.0 * np.pi * self.freq * t / self.rate)
        return _pad(np.round(wave).astype(np.int16), samples)


class PcmSource:
    """Plays an int16 array (at ``rate``), once or in a loop."""

    def __init__(self, pcm: npt.ArrayLike, loop: bool = False, rate: int = 8000) -> None:
        self.pcm: Pcm = np.asarray(pcm, dtype=np.int16).reshape(-1)
        self.loop = loop
        self.rate = rate
        self.position = 0

    def read(self, samples: int) -> Pcm:
        pcm = self.pcm
        if self.loop and len(pcm):
            idx = (np.arange(self.position, self.position + samples) % len(pcm))
            self.position = (self.position + samples) % len(pcm)
            return pcm[idx]
        if self.position >= len(pcm):
            raise PlaybackFinished
        frame = pcm[self.position: self.position + samples]
        self.position += len(frame)
        return _pad(frame, samples)


class SilenceSource:
    """Silence for ``seconds`` (``None``: endless)."""

    def __init__(self, seconds: float | None = None, rate: int = 8000) -> None:
        self.rate = rate
        self.remaining = None if seconds is None else int(round(seconds * rate))

    def read(self, samples: int) -> Pcm:
        if self.remaining is not None:
            if self.remaining <= 0:
                raise PlaybackFinished
            self.remaining -= samples
        return np.zeros(samples, dtype=np.int16)


def silence(seconds: float | None = None, rate: int = 8000) -> SilenceSource:
    """A :class:`SilenceSource`."""
    return SilenceSource(seconds, rate)
