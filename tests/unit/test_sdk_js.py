"""The JavaScript SDK (engine/web/static/sdk.js) against the protocol: run
under Node with a scripted socket (tests/unit/sdk_moderation.mjs), every
frame its moderation methods send must pass the engine's own frame check
(:func:`engine.web.protocol.parse_frame`), and answers and refusals must
reach the caller (a resolved ``moderated`` frame, an ``SdkError`` with the
error's code)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from engine.web.protocol import parse_frame

from tools import require_tool

ROOT = Path(__file__).resolve().parents[2]


def test_sdk_moderation_methods_send_valid_frames() -> None:
    """Check muteParticipant/unmuteParticipant/removeParticipant/muteAll/
    unmuteAll/lockRoom/unlockRoom/endRoom send ``moderate`` frames the engine accepts, with the
    right action and participant, and that the login's room, role and
    permissions are kept (``client.can``)."""
    node = require_tool("node")
    sdk = (ROOT / "engine" / "web" / "static" / "sdk.js").as_uri()
    result = subprocess.run([node, str(Path(__file__).with_name("sdk_moderation.mjs")), sdk],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    moderate = [f for f in out["sent"] if f["type"] == "moderate"]
    for frame in out["sent"]:
        parse_frame(json.dumps(frame))  # raises ProtocolError on a frame the engine refuses
    assert [(f["action"], f.get("participant")) for f in moderate] == [
        ("mute", "p1"), ("unmute", "p1"), ("remove", "p2"), ("mute_all", None), ("unmute_all", None),
        ("lock", None), ("unlock", None), ("end", None)]
    assert all(isinstance(f["ref"], str) for f in moderate)
    results = out["results"]
    assert (results["room"], results["role"], results["canMute"], results["canEnd"]) == (
        "flow", "custom", True, False)
    assert results["muteParticipant"] == {"type": "moderated", "action": "mute", "participant": "p1"}
    assert results["removeParticipant"] == {"type": "moderated", "action": "remove", "participant": "p2"}
    assert results["muteAll"] == {"type": "moderated", "action": "mute_all", "participant": None}
    assert results["endRoom"] == {"error": "forbidden", "sdkError": "SdkError"}
