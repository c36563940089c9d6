"""Files and URLs played into a real call: ``call.start_playback(url)``
and ``call.start_playback(path, loop=True)``, heard by a SIP caller.

The caller, the scenario frame and the RTP checks are those of the
end-to-end playback tests (:mod:`tests.e2e.test_playback`): the test reads
the RTP the engine sends, decodes it, and checks a 1000 Hz tone (Goertzel)
for as long as the file (or the loop) lasts. The URL is served by a local
aiohttp server on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from audio_files import encode, tone
from e2e.test_playback import decode, goertzel, play_call


@pytest.fixture
async def media_url() -> AsyncIterator[str]:
    """The base URL of a server with /tone.mp3 (1 s of 1000 Hz)."""
    mp3 = encode("mp3", tone(1000, 44100, 1.0), 44100)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=mp3, content_type="audio/mpeg")

    app = web.Application()
    app.router.add_get("/tone.mp3", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/"))
    await server.close()


def assert_1000_hz(packets: list) -> None:
    pcm = decode(packets)
    powers = {f: goertzel(pcm, f) for f in (400, 700, 941, 1000, 1209, 1400, 2000)}
    assert max(powers, key=powers.__getitem__) == 1000
    assert powers[1000] > 100 * max(v for f, v in powers.items() if f != 1000), powers


URL_BODY = """call.add_event_listener(CallEvents.PlaybackFinished, lambda ev: Logger.write(f"error={ev.error}"))
    missing = await call.start_playback("BASEnope.mp3")
    Logger.write(f"missing played {missing}")
    done = await call.start_playback("BASEtone.mp3")
    Logger.write(f"url played {done}")"""


async def test_url_plays_after_a_404(make_engine, media_url: str) -> None:
    """Check a 404 URL ends its handle False with the HTTP error in
    PlaybackFinished and the call goes on; the MP3 URL played next arrives
    as about 1 s (50 packets) of 1000 Hz and its handle returns True."""
    engine, packets, logs = await play_call(make_engine, URL_BODY.replace("BASE", media_url), "url played ")
    assert f"error={media_url}nope.mp3: HTTP 404 Not Found" in logs, logs
    assert "missing played False" in logs and "url played True" in logs, logs
    assert logs.index("missing played False") < logs.index("url played True")
    assert 48 <= len(packets) <= 52, len(packets)
    assert_1000_hz(packets)
    assert list((Path(engine.config.data_dir) / "audio-cache").glob("*.npy"))


LOOP_BODY = """import asyncio
    pb = call.start_playback(r"PATH", loop=True)
    await asyncio.sleep(1.5)
    pb.stop()
    Logger.write(f"loop stopped {await pb}")"""


async def test_file_loops_until_stopped(make_engine, tmp_path: Path) -> None:
    """Check a 0.3 s WAV played with loop=True goes on for the 1.5 s until
    the scenario stops it (about 75 packets of 1000 Hz, not 15), and the
    stopped handle returns False."""
    path = tmp_path / "beep.wav"
    path.write_bytes(encode("wav", tone(1000, 16000, 0.3), 16000))
    _, packets, logs = await play_call(make_engine, LOOP_BODY.replace("PATH", str(path)), "loop stopped ")
    assert "loop stopped False" in logs, logs
    assert 60 <= len(packets) <= 90, len(packets)
    assert_1000_hz(packets)
