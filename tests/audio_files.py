"""Audio files made in the test: a tone written by libsndfile (soundfile)
as WAV, MP3, OGG Vorbis or FLAC, so no binary fixtures are stored."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import soundfile

#: (format, subtype) as soundfile writes them, by file extension.
FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
    "flac": ("FLAC", "PCM_16"),
}


def tone(freq: float, rate: int, seconds: float, channels: int = 1, level: float = 0.5) -> npt.NDArray[np.float64]:
    """A sine of ``freq`` Hz, peak ``level`` (1.0 is full scale)."""
    t = np.arange(int(round(rate * seconds))) / rate
    x = level * np.sin(2 * np.pi * freq * t)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def encode(kind: str, samples: npt.NDArray[np.float64], rate: int) -> bytes:
    """``samples`` as a file of ``kind`` (a key of :data:`FORMATS`)."""
    fmt, subtype = FORMATS[kind]
    buf = io.BytesIO()
    soundfile.write(buf, samples.astype(np.float32), rate, format=fmt, subtype=subtype)
    return buf.getvalue()
