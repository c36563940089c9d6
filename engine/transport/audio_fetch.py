"""Audio for playback from a path or an http(s) URL, off the event loop.

:class:`AudioLoader` is the I/O half of :mod:`engine.media.sources`: it
reads a local file, or downloads a URL with aiohttp, and decodes it in a
worker thread (``asyncio.to_thread``, as :meth:`engine.media.tts.TtsCache.get_async`
does for speech), so a long file never stalls the media clock.

Downloads are guarded: only ``http`` and ``https``, at most ``max_bytes``
(checked against Content-Length first, then while reading), ``timeout``
seconds for the whole request, at most :data:`MAX_REDIRECTS` redirects
(aiohttp's default is 10), and any status outside 2xx is an error.
Every failure is an :class:`~engine.media.sources.AudioFileError` whose
text starts with the URL.

The cache keeps what a URL decoded to, not its bytes: one ``.npy`` file of
int16 samples at :attr:`AudioLoader.rate` per URL and rate, named by the
SHA-256 of both, under the loader's directory (``<data_dir>/audio-cache``
in the engine). An entry is fresh for ``max_age`` seconds after it was
downloaded (its file's modification time); after that the URL is fetched
again, whatever the server's own cache headers say. The URL is the whole
key, query string included. Failures are not cached; nothing is evicted
(delete the folder to clear it). Local files are read and decoded at each
playback, so an edited file plays as it is now.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from engine.media.cache import store_array
from engine.media.pcm import Pcm
from engine.media.sources import AudioFileError, decode_audio, load_file

__all__ = ["AudioLoader", "MAX_REDIRECTS", "is_url", "default_audio_loader"]

#: Redirects a download follows before it fails.
MAX_REDIRECTS = 3

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a path."""
    return isinstance(location, str) and _SCHEME.match(location) is not None


class AudioLoader:
    """Paths and URLs to int16 mono samples at ``rate``.

    :param cache_dir: where decoded downloads are kept.
    :param max_age: seconds a downloaded URL is used before it is fetched again.
    :param max_bytes: the largest download accepted.
    :param timeout: seconds for a whole download (connect, answer, body).
    """

    def __init__(self, cache_dir: Path | str, *, rate: int = 8000, max_age: float = 3600.0,
                 max_bytes: int = 50 * 2**20, timeout: float = 30.0) -> None:
        self.cache_dir = Path(cache_dir)
        self.rate = rate
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.hits = 0
        self.misses = 0

    async def load(self, location: str | os.PathLike[str]) -> Pcm:
        """The audio at ``location`` (a path, or an http(s) URL).

        :raises AudioFileError: it cannot be read, fetched or decoded.
        """
        if is_url(location):
            return await self._load_url(str(location))
        return await asyncio.to_thread(load_file, location, self.rate)

    def cache_path(self, url: str) -> Path:
        key = f"{url}\0{self.rate}"
        return self.cache_dir / (hashlib.sha256(key.encode()).hexdigest() + ".npy")

    async def _load_url(self, url: str) -> Pcm:
        self._check_url(url)
        path = self.cache_path(url)
        cached = await asyncio.to_thread(self._read_cache, path)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        data = await self.fetch(url)
        return await asyncio.to_thread(self._decode_and_store, data, url, path)

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise AudioFileError(f"{url}: unsupported URL scheme {parts.scheme!r} (only http and https)")
        if not parts.hostname:
            raise AudioFileError(f"{url}: no host in the URL")

    async def fetch(self, url: str) -> bytes:
        """The body of ``url`` (no cache), within the size and time limits.

        :raises AudioFileError: bad scheme, connection failure, timeout,
            a status outside 2xx, or a body over ``max_bytes``.
        """
        self._check_url(url)
        too_big = f"{url}: larger than the download limit of {self.max_bytes} bytes"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
                # aiohttp fails when the count of redirects reaches max_redirects.
                async with session.get(url, max_redirects=MAX_REDIRECTS + 1) as resp:
                    if not 200 <= resp.status < 300:
                        raise AudioFileError(f"{url}: HTTP {resp.status} {resp.reason or ''}".rstrip())
                    if resp.content_length is not None and resp.content_length > self.max_bytes:
                        raise AudioFileError(too_big)
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(65536):
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise AudioFileError(too_big)
                    return bytes(body)
        except TimeoutError:
            raise AudioFileError(f"{url}: no complete answer within {self.timeout:g} s") from None
        except aiohttp.TooManyRedirects:
            raise AudioFileError(f"{url}: more than {MAX_REDIRECTS} redirects") from None
        except aiohttp.ClientError as exc:
            raise AudioFileError(f"{url}: {exc}") from None

    def _read_cache(self, path: Path) -> Pcm | None:
        try:
            if time.time() - path.stat().st_mtime >= self.max_age:
                return None
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.int16)
        except (OSError, ValueError):
            return None

    def _decode_and_store(self, data: bytes, url: str, path: Path) -> Pcm:
        pcm = decode_audio(data, url, self.rate)
        try:
            store_array(path, pcm)
        except OSError:
            pass  # no cache, still playable
        return pcm


_default: AudioLoader | None = None


def default_audio_loader() -> AudioLoader:
    """A loader caching under the system temporary directory (for calls
    whose media handler brings no loader of its own)."""
    global _default
    if _default is None:
        _default = AudioLoader(Path(tempfile.gettempdir()) / "callbridge-audio")
    return _default
