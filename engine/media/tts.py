"""Text to speech: a small provider interface, espeak-ng by default, a disk cache.

:class:`TtsProvider` turns text into ``(int16 samples, rate)``.
:class:`EspeakProvider` runs ``espeak-ng --stdout -v VOICE TEXT`` (the Debian
package ``espeak-ng``) and parses the WAV it writes. :class:`GttsProvider`
asks Google Translate's voice through gTTS (the optional extra
``tts-google``; online only) and decodes its MP3 with miniaudio.
:class:`FallbackProvider` puts a second provider behind a first: when gTTS
is not installed or Google cannot be reached, espeak-ng speaks instead, the
failure is logged once, and the first provider is tried again only after a
back-off. :func:`make_tts_provider` builds the one the engine's
``tts_provider`` setting names.

:class:`TtsCache` wraps a provider: it resamples to the call's rate (8 kHz)
with :func:`resample` and keeps the result as ``.npy`` under its directory,
keyed by the SHA-256 of provider, voice, rate and text, so a prompt is
synthesized once. The provider in the key is the one that actually spoke:
what espeak-ng said while gTTS was down is cached as espeak-ng's, never
served as gTTS audio, and is used only while gTTS is still backed off.

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
import io
import logging
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import numpy.typing as npt

from engine.media.outage import Outage
from engine.media.cache import store_array
from engine.media.sources import AudioFileError, decode_native, lowpass_taps
from engine.media.pcm import Pcm

__all__ = [
    "TtsProvider", "EspeakProvider", "GttsProvider", "FallbackProvider", "TtsCache", "TtsError",
    "TtsUnavailable", "TTS_PROVIDERS", "make_tts_provider", "resample", "parse_wav",
]

logger = logging.getLogger(__name__)



class TtsError(Exception):
    """Synthesis failed."""


class TtsUnavailable(TtsError):
    """The provider cannot speak at all now (not installed, its service
    unreachable or failing), as opposed to not speaking this request (an
    unknown voice)."""


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
    return np.convolve(x, lowpass_taps(cutoff, taps), mode="same")


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


class GttsProvider:
    """Google Translate's voice through gTTS (``pip install
    'callbridge[tts-google]'``), imported on first use so that the engine
    runs without it. Online only: put it behind a :class:`FallbackProvider`.

    ``voice`` is a gTTS language (``en``, ``de``, ``zh-CN``...); a regional
    espeak-style voice (``en-us``, ``pt-br``) speaks its language (the
    accent comes from ``tld``: ``com``, ``co.uk``, ``com.au``...).

    :param timeout: seconds to wait for Google (connect and each read).
    """

    name = "gtts"

    def __init__(self, tld: str = "com", timeout: float = 5.0, slow: bool = False) -> None:
        self.tld = tld
        self.timeout = timeout
        self.slow = slow

    @staticmethod
    def language_for(voice: str, languages: dict[str, str]) -> str:
        """The gTTS language for ``voice``: itself, or its language without
        the region; :class:`TtsError` when gTTS has neither."""
        for candidate in (voice, voice.split("-")[0].lower()):
            if candidate in languages:
                return candidate
        raise TtsError(f"gTTS has no voice {voice!r}")

    def synthesize(self, text: str, voice: str) -> tuple[Pcm, int]:
        try:
            from gtts import gTTS, gTTSError  # type: ignore[import-untyped]
            from gtts.lang import tts_langs  # type: ignore[import-untyped]
        except ImportError:
            raise TtsUnavailable("gTTS is not installed (pip install 'callbridge[tts-google]')") from None
        lang = self.language_for(voice, tts_langs())
        buf = io.BytesIO()
        try:
            speech = gTTS(text, tld=self.tld, lang=lang, slow=self.slow, lang_check=False,
                          timeout=self.timeout)
            speech.write_to_fp(buf)
        except AssertionError as exc:  # gTTS asserts there is something to say
            raise TtsError(f"gTTS: {exc}") from exc
        except (gTTSError, OSError) as exc:
            raise TtsUnavailable(f"gTTS failed: {exc}") from exc
        try:
            return decode_native(buf.getvalue(), "gTTS speech")
        except AudioFileError as exc:
            raise TtsUnavailable(str(exc)) from exc


class FallbackProvider:
    """``primary``, or ``fallback`` while the primary fails.

    When the primary cannot speak at all (:class:`TtsUnavailable`, or any
    error that is not a :class:`TtsError`: not installed, network
    unreachable, an error from the service), that is logged once, as a
    warning, and the fallback speaks; the primary is tried again only
    ``retry_after`` seconds later (further failures while it is down are
    logged at debug level), and its recovery is logged once. A request the
    primary refuses (a plain :class:`TtsError`, say an unknown voice) is
    spoken by the fallback and logged, without a back-off.
    Thread-safe: :class:`TtsCache` runs it in worker threads.

    :param clock: seconds, monotonic (a parameter for tests).
    """

    def __init__(self, primary: TtsProvider, fallback: TtsProvider, retry_after: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.outage = Outage(retry_after, clock)

    @property
    def primary_down(self) -> bool:
        """Whether the primary failed last time and its back-off runs."""
        return self.outage.down

    def cache_names(self) -> list[str]:
        """Whose cached speech may be served now, best first: the
        fallback's too while the primary is backed off."""
        if self.primary_down:
            return [self.primary.name, self.fallback.name]
        return [self.primary.name]

    def synthesize_tagged(self, text: str, voice: str) -> tuple[Pcm, int, str]:
        """The speech and the name of the provider that spoke it."""
        if not self.primary_down:
            try:
                pcm, rate = self.primary.synthesize(text, voice)
            except TtsError as exc:
                if not isinstance(exc, TtsUnavailable):
                    logger.warning("TTS %s: %s: speaking with %s", self.primary.name, exc,
                                   self.fallback.name)
                    return self._fallback(text, voice)
                self._primary_failed(exc)
            except Exception as exc:
                self._primary_failed(exc)
            else:
                if self.outage.recovered():
                    logger.info("TTS %s works again", self.primary.name)
                return pcm, rate, self.primary.name
        return self._fallback(text, voice)

    def _fallback(self, text: str, voice: str) -> tuple[Pcm, int, str]:
        pcm, rate = self.fallback.synthesize(text, voice)
        return pcm, rate, self.fallback.name

    def _primary_failed(self, exc: Exception) -> None:
        if self.outage.failed():
            logger.warning("TTS %s failed (%s): speaking with %s, retrying %s in %g s",
                           self.primary.name, exc, self.fallback.name, self.primary.name,
                           self.outage.retry_after)
        else:
            logger.debug("TTS %s still failing: %s", self.primary.name, exc)

    def synthesize(self, text: str, voice: str) -> tuple[Pcm, int]:
        pcm, rate, _ = self.synthesize_tagged(text, voice)
        return pcm, rate


#: The names :func:`make_tts_provider` knows (the ``--tts`` choices).
TTS_PROVIDERS = ("espeak", "gtts")


def make_tts_provider(name: str) -> TtsProvider:
    """The provider for a ``tts_provider`` setting: ``espeak`` (offline,
    the default) or ``gtts`` (gTTS with espeak-ng as its fallback)."""
    if name == "espeak":
        return EspeakProvider()
    if name == "gtts":
        return FallbackProvider(GttsProvider(), EspeakProvider())
    raise ValueError(f"unknown TTS provider {name!r} (choose from {', '.join(TTS_PROVIDERS)})")


class TtsCache:
    """A provider's output at ``rate``, cached as ``.npy`` in ``directory``."""

    def __init__(self, provider: TtsProvider, directory: Path | str, rate: int = 8000) -> None:
        self.provider = provider
        self.directory = Path(directory)
        self.rate = rate
        self.hits = 0
        self.misses = 0

    def path_for(self, text: str, voice: str, provider: str | None = None) -> Path:
        """Where the speech of ``provider`` (default: ours) is cached."""
        key = "\0".join([provider or self.provider.name, voice, str(self.rate), text])
        return self.directory / (hashlib.sha256(key.encode()).hexdigest() + ".npy")

    def _cache_names(self) -> list[str]:
        if isinstance(self.provider, FallbackProvider):
            return self.provider.cache_names()
        return [self.provider.name]

    def _synthesize(self, text: str, voice: str) -> tuple[Pcm, int, str]:
        if isinstance(self.provider, FallbackProvider):
            return self.provider.synthesize_tagged(text, voice)
        pcm, rate = self.provider.synthesize(text, voice)
        return pcm, rate, self.provider.name

    def get(self, text: str, voice: str = "en") -> Pcm:
        """The speech for ``text`` at :attr:`rate` (blocking)."""
        for name in self._cache_names():
            try:
                cached = np.load(self.path_for(text, voice, name), allow_pickle=False)
                self.hits += 1
                return np.asarray(cached, dtype=np.int16)
            except (OSError, ValueError):
                pass
        self.misses += 1
        pcm, rate, name = self._synthesize(text, voice)
        out = resample(pcm, rate, self.rate)
        store_array(self.path_for(text, voice, name), out)
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
