"""Text to speech: a small provider interface, espeak-ng by default, a disk cache.

:class:`TtsProvider` turns text into ``(int16 samples, rate)``.
:class:`EspeakProvider` runs ``espeak-ng --stdout -v VOICE TEXT`` (the Debian
package ``espeak-ng``) and parses the WAV it writes. :class:`TtsCache` wraps a
provider: it resamples to the call's rate (8 kHz) with :func:`resample` and
keeps the result as ``.npy`` under its directory, keyed by the SHA-256 of
provider, voice, rate and text, so a prompt is synthesized once.

Synthesis blocks (a subprocess and file I/O): the call layer runs
:meth:`TtsCache.get` in a thread (:meth:`TtsCache.get_async`), never on the
event loop.

Resampling is a windowed-sinc FIR low-pass (Hamming, cutoff at 0.45 of the
lower rate) followed by linear interpolation: plenty for telephone speech,
and pure NumPy.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["TtsProvider", "EspeakProvider", "TtsCache", "TtsError", "resample", "parse_wav"]

Pcm = npt.NDArray[np.int16]


class TtsError(Exception):
    """Synthesis failed."""


class TtsProvider(Protocol):
    #: Part of the cache key: change it when the output would change.
    name: str

    def synthesize(self, text: str, voice: str) -> tuple[Pcm, int]:
        """``text`` spoken by ``voice`` as (int16 mono samples, sample rate)."""
        ...


def parse_wav(data: bytes) -> tuple[Pcm, int]:
    """16-bit PCM WAV to (mono int16 samples, rate). Tolerates the bogus
    sizes of a WAV written to a pipe (the data chunk runs to the end)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise TtsError("not a WAV file")
    pos = 12
    rate = channels = bits = 0
    while pos + 8 <= len(data):
        cid = data[pos: pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            fmt, channels, rate = struct.unpack_from("<HHI", data, body)
            bits = struct.unpack_from("<H", data, body + 14)[0]
            if fmt != 1 or bits != 16:
                raise TtsError(f"unsupported WAV format {fmt}/{bits} bits")
        elif cid == b"data":
            if not rate:
                raise TtsError("WAV data before fmt")
            raw = data[body: body + size] if body + size <= len(data) else data[body:]
            raw = raw[: len(raw) - len(raw) % (2 * channels)]
            pcm = np.frombuffer(raw, dtype="<i2").astype(np.int16)
            if channels > 1:
                pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
            return pcm, rate
        pos = body + size + (size & 1)
    raise TtsError("WAV without data")


def _lowpass(x: npt.NDArray[np.float64], cutoff: float, taps: int = 63) -> npt.NDArray[np.float64]:
    """Windowed-sinc low-pass; ``cutoff`` as a fraction of the sample rate."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)
    h /= h.sum()
    return np.convolve(x, h, mode="same")


def resample(pcm: npt.ArrayLike, rate_in: int, rate_out: int) -> Pcm:
    """Resample int16 audio: FIR low-pass (when going down) then linear
    interpolation."""
    x = np.asarray(pcm, dtype=np.float64).reshape(-1)
    if rate_in == rate_out or len(x) == 0:
        return np.asarray(np.round(x), dtype=np.int16)
    if rate_out < rate_in:
        x = _lowpass(x, 0.45 * rate_out / rate_in)
    n_out = int(len(x) * rate_out // rate_in)
    t = np.arange(n_out, dtype=np.float64) * (rate_in / rate_out)
    y = np.interp(t, np.arange(len(x), dtype=np.float64), x)
    return np.asarray(np.clip(np.round(y), -32768, 32767), dtype=np.int16)


class EspeakProvider:
    """espeak-ng, offline. ``voice`` is an espeak-ng voice (``en``, ``de``, ``en-us``...)."""

    name = "espeak-ng"

    def __init__(self, executable: str = "espeak-ng", timeout: float = 30.0) -> None:
        self.executable = executable
        self.timeout = timeout

    def synthesize(self, text: str, voice: str) -> tuple[Pcm, int]:
        try:
            proc = subprocess.run(
                [self.executable, "--stdout", "-v", voice, "--", text],
                capture_output=True, timeout=self.timeout, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TtsError(f"espeak-ng failed: {exc}") from exc
        if proc.returncode != 0:
            raise TtsError(f"espeak-ng exited {proc.returncode}: {proc.stderr.decode(errors='replace')[:200]}")
        return parse_wav(proc.stdout)


class TtsCache:
    """A provider's output at ``rate``, cached as ``.npy`` in ``directory``."""

    def __init__(self, provider: TtsProvider, directory: Path | str, rate: int = 8000) -> None:
        self.provider = provider
        self.directory = Path(directory)
        self.rate = rate
        self.hits = 0
        self.misses = 0

    def path_for(self, text: str, voice: str) -> Path:
        key = "\0".join([self.provider.name, voice, str(self.rate), text])
        return self.directory / (hashlib.sha256(key.encode()).hexdigest() + ".npy")

    def get(self, text: str, voice: str = "en") -> Pcm:
        """The speech for ``text`` at :attr:`rate` (blocking)."""
        path = self.path_for(text, voice)
        try:
            cached = np.load(path, allow_pickle=False)
            self.hits += 1
            return np.asarray(cached, dtype=np.int16)
        except (OSError, ValueError):
            pass
        self.misses += 1
        pcm, rate = self.provider.synthesize(text, voice)
        out = resample(pcm, rate, self.rate)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, out, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return out

    async def get_async(self, text: str, voice: str = "en") -> Pcm:
        """:meth:`get` in a worker thread, so the event loop never waits."""
        return await asyncio.to_thread(self.get, text, voice)


_default: TtsCache | None = None


def default_tts() -> TtsCache:
    """espeak-ng cached under the system temporary directory (for calls
    whose media handler brings no cache of its own)."""
    global _default
    if _default is None:
        _default = TtsCache(EspeakProvider(), Path(tempfile.gettempdir()) / "callbridge-tts")
    return _default
