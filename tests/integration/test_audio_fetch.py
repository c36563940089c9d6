"""Downloads of audio for playback (engine.transport.audio_fetch) from a
real aiohttp server on 127.0.0.1: decoded and cached once, and each way a
download fails (HTTP status, size limit by header and by body, timeout,
nothing listening) with its exact error."""

from __future__ import annotations

import asyncio
import socket
from typing import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from audio_files import encode, tone

from engine.media.sources import AudioFileError
from engine.transport.audio_fetch import AudioLoader

MP3 = encode("mp3", tone(1000, 44100, 1.0), 44100)


class Media:
    """A small media server: /tone.mp3, /big (streamed, no length), /slow."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        app = web.Application()
        app.router.add_get("/tone.mp3", self.tone)
        app.router.add_get("/big", self.big)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/moved", self.moved)
        app.router.add_get("/hop/{n}", self.hop)
        self.server = TestServer(app, host="127.0.0.1")

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def tone(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.Response(body=MP3, content_type="audio/mpeg")

    async def big(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b"\xff" * 1000)
        await resp.write_eof()
        return resp

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=MP3)

    async def moved(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/tone.mp3")

    async def hop(self, request: web.Request) -> web.Response:
        """/hop/N redirects to /hop/N-1, /hop/0 to the tone."""
        n = int(request.match_info["n"])
        raise web.HTTPFound(f"/hop/{n - 1}" if n > 0 else "/tone.mp3")


@pytest.fixture
async def media() -> AsyncIterator[Media]:
    m = Media()
    await m.server.start_server()
    yield m
    await m.server.close()


async def test_download_decoded_and_cached(media: Media, tmp_path) -> None:
    """Check a URL is downloaded once, decoded to 8 kHz, then served from
    the cache; a redirect is followed."""
    loader = AudioLoader(tmp_path / "cache")
    url = media.url("/tone.mp3")
    first = await loader.load(url)
    assert abs(len(first) - 8000) <= 80
    assert len(await loader.load(url)) == len(first)
    assert media.requests == ["/tone.mp3"] and (loader.hits, loader.misses) == (1, 1)
    assert len(await loader.load(media.url("/moved"))) == len(first)
    assert media.requests == ["/tone.mp3", "/tone.mp3"]


async def test_http_status_is_an_error(media: Media, tmp_path) -> None:
    """Check a 404 fails with the URL and the status line, and is not cached."""
    loader = AudioLoader(tmp_path / "cache")
    url = media.url("/nope.wav")
    for _ in range(2):
        with pytest.raises(AudioFileError) as err:
            await loader.load(url)
        assert str(err.value) == f"{url}: HTTP 404 Not Found"
    assert loader.misses == 2


async def test_size_limit_by_header_and_by_body(media: Media, tmp_path) -> None:
    """Check a body over max_bytes is refused: from Content-Length before
    reading, and while reading a chunked body that declares no length."""
    loader = AudioLoader(tmp_path / "cache", max_bytes=5000)
    for path in ("/tone.mp3", "/big"):
        url = media.url(path)
        with pytest.raises(AudioFileError) as err:
            await loader.fetch(url)
        assert str(err.value) == f"{url}: larger than the download limit of 5000 bytes"


async def test_timeout(media: Media, tmp_path) -> None:
    """Check a server that does not answer in time is given up on."""
    loader = AudioLoader(tmp_path / "cache", timeout=0.2)
    url = media.url("/slow")
    with pytest.raises(AudioFileError) as err:
        await loader.fetch(url)
    assert str(err.value) == f"{url}: no complete answer within 0.2 s"


async def test_nothing_listening(tmp_path) -> None:
    """Check a refused connection names the URL and the host it tried."""
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/a.wav"
        with pytest.raises(AudioFileError) as err:
            await AudioLoader(tmp_path / "cache").fetch(url)
    assert str(err.value).startswith(f"{url}: Cannot connect to host 127.0.0.1:"), err.value


async def test_redirects_are_bounded(media: Media, tmp_path) -> None:
    """Check a download follows up to MAX_REDIRECTS (3) redirects and
    fails, naming the limit, on a longer chain (aiohttp alone allows 10)."""
    loader = AudioLoader(tmp_path / "cache")
    assert await loader.fetch(media.url("/hop/2")) == MP3  # 3 redirects
    url = media.url("/hop/5")
    with pytest.raises(AudioFileError) as err:
        await loader.fetch(url)
    assert str(err.value) == f"{url}: more than 3 redirects"
