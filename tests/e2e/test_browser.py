"""End to end with a real browser: headless Chromium (fake microphone)
opens an application page served elsewhere (a second local HTTP server, as
a real application's would be), imports ``/sdk.js`` from the engine
(cross-origin), logs in, and calls a number the rules
route to a scenario that answers, plays a 440 Hz tone and echoes messages.

Checks the page hears the tone (``getStats()`` audio energy of the inbound
RTP, and a WebAudio analyser peaking near 440 Hz), the engine hears the
page's fake microphone (audio at the call's port), messages go both ways,
a digit from ``sendTone`` reaches the scenario as ToneReceived mode
"signalling", and closing the page ends the call with Disconnected.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from aiohttp import web
from playwright.async_api import async_playwright

from browser import launch_chromium
from logs import session_logs, wait_for_log

from engine.server import Engine
from engine.web.app import CONNECTIONS

EngineFactory = Callable[..., Awaitable[Engine]]


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True

pytestmark = pytest.mark.e2e

RULES = """
rules:
  - {name: Web, pattern: "echo|early", scenarios: [web_echo]}
"""

#: The application's page: nothing but a body. (Served from a real local
#: server: a page Playwright fulfils itself counts as public, and Chromium's
#: local network access checks then block its WebSocket to 127.0.0.1.)
PAGE = "<!doctype html><html><head><title>sdk test</title></head><body></body></html>"

CALL_SCRIPT = """
async () => {
  const { Client, CallEvents } = await import(window.SDK_URL);
  const client = new Client();
  await client.connect();
  await client.login("alice", "wonderland");
  const call = client.call({ number: "echo", customHeaders: { "X-Conference-Id": "42" } });
  window.sdkCall = call;
  window.messages = [];
  window.remote = null;
  call.on(CallEvents.MessageReceived, (e) => window.messages.push(e.text));
  call.on(CallEvents.EndpointAdded, (e) => { window.remote = e.stream; });
  await call.waitFor(CallEvents.Connected, 10000);
  return call.state;
}
"""

STATS_SCRIPT = """
async () => {
  const stats = await window.sdkCall.peerConnection.getStats();
  for (const s of stats.values()) {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      return { energy: s.totalAudioEnergy || 0, level: s.audioLevel || 0, packets: s.packetsReceived || 0 };
    }
  }
  return { energy: 0, level: 0, packets: 0 };
}
"""

ANALYSER_SCRIPT = """
async () => {
  const ctx = new AudioContext();
  await ctx.resume();
  const source = ctx.createMediaStreamSource(window.remote);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 4096;
  source.connect(analyser);
  await new Promise((r) => setTimeout(r, 700));
  const bins = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(bins);
  let best = 0;
  for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
  const peakHz = best * ctx.sampleRate / analyser.fftSize;
  await ctx.close();
  return { peakHz, peakDb: bins[best] };
}
"""


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Engine:
    engine = await make_engine(RULES)
    assert engine.store is not None
    engine.store.create_user("alice", "wonderland", "Alice")
    return engine


@pytest.fixture
async def page(engine: Engine, tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Any]:
    """A Chromium page of an application served on its own local port, with
    ``window.SDK_URL`` naming the engine's ``/sdk.js``."""
    async def index(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    site = web.Application()
    site.router.add_get("/", index)
    server = await aiohttp_server(site)
    async with async_playwright() as pw:
        context = await launch_chromium(pw, tmp_path / "chromium-profile")
        try:
            page = await context.new_page()
            await page.goto(str(server.make_url("/")))
            await page.evaluate(f"window.SDK_URL = 'http://127.0.0.1:{engine.http_port}/sdk.js'")
            yield page
        finally:
            await context.close()


async def test_browser_calls_a_scenario(engine: Engine, page: Any) -> None:
    """Check a browser's call through the SDK: connected, the tone heard in
    the page, the microphone heard by the engine, messages both ways, DTMF,
    and the end of the call when the page closes."""
    assert await page.evaluate(CALL_SCRIPT) == "CONNECTED"
    logs = await wait_for_log(engine, "connected")
    assert "alerting web from alice (Alice) to echo [X-Conference-Id=42]" in logs

    await page.wait_for_function("window.messages.includes('welcome')", timeout=5000)
    await page.evaluate("window.sdkCall.sendMessage('from the page')")
    await page.wait_for_function("window.messages.includes('echo: from the page')", timeout=5000)
    assert "message from the page" in session_logs(engine)

    await page.evaluate("window.sdkCall.sendTone('7')")
    assert "tone 7 signalling" in await wait_for_log(engine, "tone 7")

    # The scenario's tone arrives: inbound RTP with audio energy...
    await page.wait_for_function(
        f"({STATS_SCRIPT})().then((s) => s.energy > 0.01 && s.packets > 50)", timeout=15000, polling=200,
    )
    # ...at 440 Hz (bins of 8000/4096 Hz at 8 kHz, about 12 Hz at 48 kHz).
    analysed = await page.evaluate(ANALYSER_SCRIPT)
    assert abs(analysed["peakHz"] - 440) < 25 and analysed["peakDb"] > -60, analysed

    # The page's fake microphone (a beep) reaches the engine's audio port.
    calls = [c for conn in engine.http_runner.app[CONNECTIONS] for c in conn.calls.values()]  # type: ignore[union-attr]
    assert len(calls) == 1
    port = calls[0].audio_port
    assert port is not None
    assert await wait_until(lambda: port.frames_in > 100, timeout=10)
    heard = np.concatenate([port.read_frame() for _ in range(port.available)])
    assert np.abs(heard).max() > 1000

    await page.close()
    logs = await wait_for_log(engine, "ended", timeout=10)
    assert "ended Disconnected 408 Connection Lost" in logs
