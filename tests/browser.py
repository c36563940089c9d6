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


#: For pages that call each other peer to peer: Chromium then gathers host
#: candidates on every interface (the default policy above gives none a
#: page-to-page call can use; the engine's own calls work either way).
P2P_POLICY = "--webrtc-ip-handling-policy=default_public_and_private_interfaces"


async def launch_chromium(playwright: Any, user_data_dir: Path, *, p2p: bool = False) -> Any:
    """A headless Chromium (a persistent context in ``user_data_dir``, a new
    empty folder); the test fails when Chromium is not installed. ``p2p``:
    pages in it can call each other directly (see :data:`P2P_POLICY`)."""
    path = require_tool("chromium")
    args = [P2P_POLICY if a.startswith("--webrtc-ip-handling-policy=") else a for a in CHROMIUM_ARGS] \
        if p2p else CHROMIUM_ARGS
    return await playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=path, headless=True, args=args,
    )
