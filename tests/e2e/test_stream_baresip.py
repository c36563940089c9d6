"""A real phone's call streamed to a WebSocket bot (``call.stream_to``).

baresip (a 440 Hz tone as its microphone) calls a scenario that answers and
streams the call, Twilio Media Streams format, to an aiohttp bot in this
test. The bot checks the frame sequence (connected, start, media..., stop),
decodes the µ-law of the inbound track and finds the phone's 440 Hz by
Goertzel, then sends back 2 s of 1000 Hz and a mark: baresip's recording
(sndfile) holds the 1000 Hz, and the mark comes back to the bot once its
audio has played.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from engine.media.codecs.g711 import ulaw_decode, ulaw_encode

from logs import wait_for_log

from .baresip import Baresip
from .phone import tone_level

pytestmark = pytest.mark.e2e

RULES = """
rules:
  - {name: Bot, pattern: "bot", scenarios: [bot]}
"""

SCENARIO = '''
from pathlib import Path

from engine.scenario import AppEvents, CallEvents, Logger, StreamEvents, VoxEngine

URL = Path(__file__).with_name("url.txt").read_text().strip()


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    stream = call.stream_to(URL, custom={"phone": "baresip"})
    call.add_event_listener(StreamEvents.StreamStopped, lambda ev: Logger.write(f"stopped {ev.reason}"))


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
'''


class Bot:
    """One WebSocket connection's frames, and the bot's reply once the
    phone's tone has been heard."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.heard_phone = asyncio.Event()
        self.mark_back = asyncio.Event()
        self.stopped = asyncio.Event()

    def inbound_pcm(self, last: int) -> np.ndarray:
        inbound = [f for f in self.frames if f.get("event") == "media" and f["media"].get("track") == "inbound"]
        codes = b"".join(base64.b64decode(f["media"]["payload"]) for f in inbound[-last:])
        return ulaw_decode(np.frombuffer(codes, dtype=np.uint8)).astype(np.float64)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            self.frames.append(frame)
            event = frame.get("event")
            if event == "media" and not self.heard_phone.is_set():
                pcm = self.inbound_pcm(25)
                if pcm.size >= 4000 and tone_level(pcm, 440.0) > 500:
                    self.heard_phone.set()
                    t = np.arange(8000 * 2) / 8000
                    reply = (8000 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.int16)
                    payload = base64.b64encode(ulaw_encode(reply).tobytes()).decode()
                    await ws.send_str(json.dumps({"event": "media", "streamSid": "x", "media": {"payload": payload}}))
                    await ws.send_str(json.dumps({"event": "mark", "streamSid": "x", "mark": {"name": "reply"}}))
            elif event == "mark" and frame["mark"].get("name") == "reply":
                self.mark_back.set()
            elif event == "stop":
                self.stopped.set()
        return ws


@pytest.fixture
async def bot_url() -> AsyncIterator[tuple[Bot, str]]:
    bot = Bot()
    app = web.Application()
    app.router.add_get("/bot", bot.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield bot, f"ws://127.0.0.1:{port}/bot"
    await runner.cleanup()


async def test_baresip_call_streamed_to_a_bot(make_engine, tmp_path: Path, bot_url: tuple[Bot, str]) -> None:
    """baresip's 440 Hz reaches the bot (connected, start with the custom
    parameters, inbound media carrying 440 Hz), the bot's 1000 Hz reaches
    baresip (its recording, by Goertzel, well above 440 Hz), the bot's mark
    comes back after its audio, and the hang-up ends the stream with stop."""
    bot, url = bot_url
    phone = Baresip(tmp_path, "alice", 440.0)
    try:
        await phone.start()
        engine = await make_engine(RULES, {"bot": SCENARIO}, session_idle_timeout=5.0)
        (Path(engine.config.scenarios) / "url.txt").write_text(url)
        await phone.dial(f"sip:bot@127.0.0.1:{engine.ua.port}")
        await phone.wait_for("Call established", 10)
        await asyncio.wait_for(bot.heard_phone.wait(), 10)
        await asyncio.wait_for(bot.mark_back.wait(), 10)
        # the mark comes back once the 2 s reply has played to the phone: its
        # recording's last 2.5 s hold the reply
        await asyncio.sleep(0.3)
        heard = phone.heard_so_far()[-8000 * 2:-8000 // 2]
        assert heard.size, "baresip's sndfile recorded nothing"
        assert tone_level(heard, 1000.0) > 500, tone_level(heard, 1000.0)
        assert tone_level(heard, 440.0) < tone_level(heard, 1000.0) / 10
        phone.command("/hangup\n")
        await asyncio.wait_for(bot.stopped.wait(), 10)
        logs = await wait_for_log(engine, "stopped call ended", timeout=5)
        assert "stopped call ended" in logs
    finally:
        await phone.stop()

    kinds = [f["event"] for f in bot.frames]
    assert kinds[:2] == ["connected", "start"] and kinds[-1] == "stop", kinds[:3]
    assert set(kinds[2:-1]) == {"media", "mark"}
    start = bot.frames[1]["start"]
    assert start["customParameters"] == {"phone": "baresip"}
    assert start["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert bot.frames[-1]["stop"]["callSid"] == start["callSid"]
    said = bot.inbound_pcm(50)
    assert tone_level(said, 440.0) > 10 * tone_level(said, 1000.0)
    # the outbound track (what the phone heard) carried the reply
    outbound = [f for f in bot.frames if f.get("event") == "media" and f["media"].get("track") == "outbound"]
    codes = b"".join(base64.b64decode(f["media"]["payload"]) for f in outbound)
    played = ulaw_decode(np.frombuffer(codes, dtype=np.uint8)).astype(np.float64)
    assert tone_level(played, 1000.0) > 500
