"""Headless Chromium for tests: the Debian package, driven by Playwright for
Python (never ``playwright install``: it downloads a browser, and these
machines have no internet beyond package registries).

The flags are the recipe of shared/peers.md: fake microphone and camera,
no network lookups at launch, loopback allowed in peer connections, and no
mDNS host candidates. Chromium honours only the LAST ``--disable-features``,
and Playwright passes its own list, so ours repeats Playwright's (1.65)
and adds ``WebRtcHideLocalIpsWithMdns``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools import require_tool

#: Playwright's own --disable-features list, then ours.
_DISABLED_FEATURES = ",".join([
    "AvoidUnnecessaryBeforeUnloadCheckSync", "DestroyProfileOnBrowserClose", "HttpsUpgrades",
    "HttpsFirstBalancedModeAutoEnable", "LensOverlay", "MediaRouter", "PaintHolding",
    "ThirdPartyStoragePartitioning", "AvoidCorsURLLoaderRestartOnRedirect", "OptimizationHints",
    "NetworkTimeServiceQuerying", "AimEnabled", "PreconnectToSearch",
    "WebRtcHideLocalIpsWithMdns",
])

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--webrtc-ip-handling-policy=default_public_interface_only",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    f"--disable-features={_DISABLED_FEATURES}",
]


async def launch_chromium(playwright: Any, user_data_dir: Path) -> Any:
    """A headless Chromium (a persistent context in ``user_data_dir``, a new
    empty folder); the test fails when Chromium is not installed."""
    path = require_tool("chromium")
    return await playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=path, headless=True, args=CHROMIUM_ARGS,
    )
