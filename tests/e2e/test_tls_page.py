"""The demo page over HTTPS in headless Chromium: the engine serves the
development certificate (``callbridge certs dev``), Chromium trusts exactly
that key for the test (``--ignore-certificate-errors-spki-list`` with the
certificate's SPKI hash, which Chromium honours only with a user data
directory: Playwright's persistent context gives one), and the page joins a
conference through the SDK over WSS.

The same browser refuses an engine serving another self-signed
certificate: the trust comes from the SPKI pin, not from ignoring errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import async_playwright

from browser import CHROMIUM_ARGS
from tools import require_tool

from engine.transport.tls import spki_sha256, write_dev_certificate

from .test_flagship_phone import ROOT

pytestmark = pytest.mark.e2e


async def test_demo_page_joins_over_https_and_wss(make_engine: Any, tmp_path: Path) -> None:
    """Check the demo page loads from ``https://127.0.0.1:PORT/`` with the
    development certificate pinned, its SDK socket is ``wss://…/ws``, and a
    guest reaches the joined state of conference 77; a page of an engine
    with another certificate fails with a certificate error."""
    cert, key = write_dev_certificate(tmp_path / "tls")
    engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios",
                               session_idle_timeout=5.0, tls_cert=cert, tls_key=key)
    other_cert, other_key = write_dev_certificate(tmp_path / "other")
    other = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios",
                              tls_cert=other_cert, tls_key=other_key)
    pin = f"--ignore-certificate-errors-spki-list={spki_sha256(cert.read_bytes())}"
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=require_tool("chromium"), headless=True,
            args=[*CHROMIUM_ARGS, pin])
        try:
            page = await context.new_page()
            sockets: list[str] = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            page.on("console", lambda msg: print(f"[page] {msg.type}: {msg.text}"))
            base = f"https://127.0.0.1:{engine.http_port}"
            response = await page.goto(f"{base}/?conference=77")
            assert response is not None and response.ok
            details = await response.security_details()
            assert details is not None and str(details.get("protocol")).startswith("TLS 1."), details
            await page.fill("#name", "Alice")
            await page.click("#join-button")
            await page.wait_for_selector("#room-view:not([hidden])", timeout=30000)
            assert sockets == [f"wss://127.0.0.1:{engine.http_port}/ws"], sockets
            assert await page.evaluate("location.protocol") == "https:"

            stranger = await context.new_page()
            with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
                await stranger.goto(f"https://127.0.0.1:{other.http_port}/")
        finally:
            await context.close()
