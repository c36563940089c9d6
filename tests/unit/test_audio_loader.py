"""The loader of files and URLs (engine.transport.audio_fetch) without a
network: paths, URL checks, and the decoded-download cache with its
max-age, over a stand-in for :meth:`AudioLoader.fetch`. Real downloads
are in tests/integration/test_audio_fetch.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from audio_files import encode, tone

from engine.media.sources import AudioFileError
from engine.transport.audio_fetch import AudioLoader, is_url

URL = "http://media.example/hold.wav?v=2"


class FakeFetch:
    """Stands in for the network: serves ``body`` and counts requests."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.urls: list[str] = []

    async def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return self.body


@pytest.fixture
def loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AudioLoader:
    loader = AudioLoader(tmp_path / "cache")
    monkeypatch.setattr(loader, "fetch", FakeFetch(encode("wav", tone(1000, 16000, 0.5), 16000)))
    return loader


def test_is_url() -> None:
    """Check what counts as a URL (a scheme and ://) and what as a path."""
    assert is_url("http://x/a.wav") and is_url("HTTPS://x/a.wav") and is_url("ftp://x/a.wav")
    assert not is_url("/srv/a.wav") and not is_url("prompts/a.wav") and not is_url(Path("http://x"))
    assert not is_url("C:\\prompts\\a.wav")


async def test_url_is_fetched_once_then_cached(loader: AudioLoader, tmp_path: Path) -> None:
    """Check a URL is downloaded once, decoded to 8 kHz, and served from
    the cache (by a new loader on the same folder too, as after a restart)."""
    a = await loader.load(URL)
    b = await loader.load(URL)
    assert len(a) == 4000 and np.array_equal(a, b)
    assert loader.fetch.urls == [URL] and (loader.hits, loader.misses) == (1, 1)  # type: ignore[attr-defined]
    assert list((tmp_path / "cache").iterdir()) == [loader.cache_path(URL)]
    again = AudioLoader(tmp_path / "cache")
    assert np.array_equal(await again.load(URL), a) and again.hits == 1


async def test_cache_entry_expires_after_max_age(loader: AudioLoader) -> None:
    """Check an entry older than max_age is fetched again; the key holds
    the whole URL and the rate."""
    await loader.load(URL)
    old = time.time() - loader.max_age - 1
    os.utime(loader.cache_path(URL), (old, old))
    await loader.load(URL)
    await loader.load(URL)
    assert loader.fetch.urls == [URL, URL]  # type: ignore[attr-defined]
    assert loader.cache_path(URL) != loader.cache_path(URL.replace("v=2", "v=3"))
    assert loader.cache_path(URL) != AudioLoader(loader.cache_dir, rate=16000).cache_path(URL)


async def test_failures_are_not_cached(loader: AudioLoader) -> None:
    """Check a download that does not decode raises the file's error and
    leaves nothing in the cache, so the next try fetches again."""
    loader.fetch.body = b"<html>oops</html>"  # type: ignore[attr-defined]
    for _ in range(2):
        with pytest.raises(AudioFileError) as err:
            await loader.load(URL)
        assert str(err.value) == f"{URL}: not a WAV, MP3, OGG or FLAC file"
    assert len(loader.fetch.urls) == 2 and not loader.cache_path(URL).exists()  # type: ignore[attr-defined]


async def test_only_http_and_https(loader: AudioLoader) -> None:
    """Check other schemes and host-less URLs are refused before any fetch."""
    with pytest.raises(AudioFileError) as err:
        await loader.load("ftp://media.example/a.wav")
    assert str(err.value) == "ftp://media.example/a.wav: unsupported URL scheme 'ftp' (only http and https)"
    with pytest.raises(AudioFileError) as err:
        await loader.load("http:///a.wav")
    assert str(err.value) == "http:///a.wav: no host in the URL"
    assert loader.fetch.urls == []  # type: ignore[attr-defined]


async def test_paths_are_read_each_time(loader: AudioLoader, tmp_path: Path) -> None:
    """Check a local file is decoded at each load (an edited file plays as
    it is now) and never cached; a missing one is a clear error."""
    path = tmp_path / "prompt.flac"
    path.write_bytes(encode("flac", tone(1000, 8000, 0.25), 8000))
    assert len(await loader.load(path)) == 2000
    path.write_bytes(encode("flac", tone(1000, 8000, 0.5), 8000))
    assert len(await loader.load(str(path))) == 4000
    assert not (tmp_path / "cache").exists()
    with pytest.raises(AudioFileError, match="missing.wav: file not found$"):
        await loader.load(tmp_path / "missing.wav")
