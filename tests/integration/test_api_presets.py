"""``/api/v1`` named presets and a participant's custom id and picture,
against a running engine: presets made, listed, fetched and deleted with
an admin key (a ``calls`` key is refused), the built-in ones neither
redefined nor deleted; tokens and invites asking for a preset by name
(unknown: 400 naming it); ``custom_id`` and ``picture`` checked, signed
into the join token, and shown in the room's roster through the API and in
the shipped conference scenario's ``PARTICIPANTS`` message."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sdk_peer import BrowserPeer, SdkSocket

from engine.server import Engine

from .api_client import Api, error, new_key
from .conftest import EngineFactory
from .test_api_rooms import RULES, SCENARIOS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Engine:
    return await make_engine(RULES, SCENARIOS)


@pytest.fixture
def admin(engine: Engine, http: aiohttp.ClientSession) -> Api:
    return Api(engine, http, new_key(engine, "admin"))


async def test_presets_are_made_listed_and_deleted(admin: Api) -> None:
    """Check a preset is created with its permissions, listed after the
    built-in ones, fetched, refused a second time, deleted once; the
    built-in names are neither redefined nor deleted (409); a key with
    only the ``calls`` scope may not touch presets."""
    status, host = await admin.post("/presets", {"name": "host", "permissions": ["mute_self", "lock", "end"]})
    assert status == 201, host
    assert (host["name"], host["permissions"], host["builtin"]) == ("host", ["mute_self", "lock", "end"], False)
    status, listed = await admin.get("/presets")
    assert status == 200
    assert [(p["name"], p["builtin"]) for p in listed["presets"]] == [
        ("guest", True), ("moderator", True), ("subscriber", True), ("host", False)]
    status, got = await admin.get("/presets/host")
    assert status == 200 and got == host
    status, got = await admin.get("/presets/moderator")
    assert status == 200 and got["builtin"] is True and "mute_others" in got["permissions"]
    status, body = await admin.post("/presets", {"name": "host", "permissions": []})
    assert status == 409 and error(body) == ("preset_exists", "name")
    for name in ("guest", "moderator", "subscriber"):
        status, body = await admin.post("/presets", {"name": name, "permissions": ["end"]})
        assert status == 409 and error(body) == ("builtin_preset", "name"), body
        status, body = await admin.delete(f"/presets/{name}")
        assert status == 409 and error(body) == ("builtin_preset", "preset")
    status, _ = await admin.get("/presets/moderator")
    assert status == 200
    status, _ = await admin.delete("/presets/host")
    assert status == 204
    status, body = await admin.delete("/presets/host")
    assert status == 404 and error(body) == ("not_found", "preset")
    calls = admin.with_key(new_key(admin.engine, "calls"))
    for method, path in (("GET", "/presets"), ("POST", "/presets"), ("DELETE", "/presets/x")):
        status, body = await calls.call(method, path, {"name": "x", "permissions": []})
        assert status == 403 and error(body)[0] == "forbidden"


@pytest.mark.parametrize("body, field", [
    ({"name": "Host", "permissions": []}, "name"),
    ({"name": "h" * 33, "permissions": []}, "name"),
    ({"name": "host"}, "permissions"),
    ({"name": "host", "permissions": ["fly"]}, "permissions"),
    ({"name": "host", "permissions": "lock"}, "permissions"),
])
async def test_bad_presets_are_refused_naming_the_field(admin: Api, body: dict[str, Any], field: str) -> None:
    """Check each malformed preset is a 400 naming its field, and nothing is stored."""
    status, answer = await admin.post("/presets", body)
    assert status == 400 and error(answer)[1] == field, answer
    assert admin.engine.store is not None and admin.engine.store.list_presets() == []


async def test_tokens_and_invites_ask_for_a_preset_by_name(admin: Api) -> None:
    """Check a token and an invite issued with ``preset`` carry the preset's
    name as their role and its permissions (a built-in preset too, and the
    redeemed invite's token); an unknown preset is a 400 naming it; a
    preset with role or permissions is refused."""
    await admin.post("/rooms", {"name": "pre1"})
    await admin.post("/presets", {"name": "host", "permissions": ["mute_self", "mute_others", "record"]})
    status, tok = await admin.post("/rooms/pre1/tokens", {"identity": "hana", "preset": "host"})
    assert status == 201, tok
    assert (tok["role"], tok["permissions"]) == ("host", ["mute_self", "mute_others", "record"])
    status, verified = await admin.post("/tokens/verify", {"token": tok["token"]})
    assert (verified["role"], verified["permissions"]) == ("host", ["mute_self", "mute_others", "record"])
    status, tok = await admin.post("/rooms/pre1/tokens", {"identity": "sal", "preset": "subscriber"})
    assert status == 201 and (tok["role"], tok["permissions"]) == ("subscriber", [])
    status, body = await admin.post("/rooms/pre1/tokens", {"identity": "x", "preset": "hots"})
    assert status == 400 and error(body) == ("invalid_field", "preset")
    assert "'hots'" in body["error"]["message"]
    status, body = await admin.post("/rooms/pre1/tokens", {"identity": "x", "preset": "host", "role": "guest"})
    assert status == 400 and error(body) == ("invalid_field", "preset")
    status, body = await admin.post("/rooms/pre1/invites", {"invitee": "ivy", "preset": "nobody"})
    assert status == 400 and error(body) == ("invalid_field", "preset")
    status, invite = await admin.post("/rooms/pre1/invites", {"invitee": "ivy", "preset": "host"})
    assert status == 201 and (invite["role"], invite["permissions"]) == (
        "host", ["mute_self", "mute_others", "record"])
    # deleting the preset leaves what was issued with it as it was
    await admin.delete("/presets/host")
    status, redeemed = await admin.with_key(None).post("/invites/redeem", {"link_token": invite["link_token"]})
    assert status == 200 and (redeemed["role"], redeemed["permissions"]) == (
        "host", ["mute_self", "mute_others", "record"])
    status, body = await admin.post("/rooms/pre1/tokens", {"identity": "hana", "preset": "host"})
    assert status == 400 and error(body) == ("invalid_field", "preset")


@pytest.mark.parametrize("body, field", [
    ({"custom_id": ""}, "custom_id"),
    ({"custom_id": "x" * 129}, "custom_id"),
    ({"custom_id": "a\nb"}, "custom_id"),
    ({"custom_id": 7}, "custom_id"),
    ({"picture": "javascript:alert(1)"}, "picture"),
    ({"picture": "ftp://example.com/a.png"}, "picture"),
    ({"picture": "https://"}, "picture"),
    ({"picture": "https://ex.com/a.png\" onerror=\"x"}, "picture"),
    ({"picture": "https://ex.com/<script>"}, "picture"),
    ({"picture": "https://ex.com/a b.png"}, "picture"),
    ({"picture": "https://ex.com/" + "a" * 500}, "picture"),
])
async def test_bad_custom_id_and_picture_are_refused(admin: Api, body: dict[str, Any], field: str) -> None:
    """Check a malformed custom id or picture URL is a 400 naming its field."""
    await admin.post("/rooms", {"name": "pic1"})
    status, answer = await admin.post("/rooms/pic1/tokens", {"identity": "amy", **body})
    assert status == 400 and error(answer) == ("invalid_field", field), answer


async def _message(sock: SdkSocket, kind: str, timeout: float = 15.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await sock.recv("message", timeout=max(0.1, deadline - loop.time()))
        data = json.loads(frame["text"])
        if data.get("type") == kind:
            return dict(data)


async def test_custom_id_and_picture_reach_the_roster(make_engine: EngineFactory,
                                                      http: aiohttp.ClientSession) -> None:
    """Check, with the shipped rules and conference scenario: ``custom_id``
    and ``picture`` given to a join token are in the token and its
    verification, and the participant shows them in ``GET /rooms/{id}``
    and in the PARTICIPANTS message the other pages get (``None`` for one
    who has neither)."""
    engine = await make_engine((ROOT / "rules.yaml").read_text(), ROOT / "scenarios")
    api = Api(engine, http, new_key(engine, "admin"))
    await api.post("/rooms", {"name": "pic2", "pin": None})
    picture = "https://img.example.com/u/42.png?s=64"
    status, tok = await api.post("/rooms/pic2/tokens", {"identity": "amy", "custom_id": "crm:42 Amy",
                                                        "picture": picture})
    assert status == 201 and (tok["custom_id"], tok["picture"]) == ("crm:42 Amy", picture)
    status, verified = await api.post("/tokens/verify", {"token": tok["token"]})
    assert (verified["custom_id"], verified["picture"]) == ("crm:42 Amy", picture)
    status, plain = await api.post("/rooms/pic2/tokens", {"identity": "bob"})
    sockets: list[SdkSocket] = []
    peers: list[BrowserPeer] = []

    async def join(token: str) -> SdkSocket:
        sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws"))
        sockets.append(sock)
        await sock.hello()
        assert (await sock.request({"type": "login", "token": token}))["type"] == "login_ok"
        peer = BrowserPeer()
        peers.append(peer)
        await sock.send({"type": "call", "call": "c1", "number": "joinconf", "sdp": await peer.offer(),
                         "audio": True, "video": False, "headers": {"X-Conference-Id": "pic2"}})
        await sock.recv("connected", call="c1", timeout=15)
        return sock

    try:
        await join(tok["token"])
        bob = await join(plain["token"])
        roster = await _message(bob, "PARTICIPANTS")
        while len(roster["participants"]) < 2:
            roster = await _message(bob, "PARTICIPANTS")
        shown = {p["number"]: (p["custom_id"], p["picture"]) for p in roster["participants"]}
        assert shown == {"amy": ("crm:42 Amy", picture), "bob": (None, None)}
        status, room = await api.get("/rooms/pic2")
        assert status == 200
        listed = {p["identity"]: (p["custom_id"], p["picture"]) for p in room["participants"]}
        assert listed == {"amy": ("crm:42 Amy", picture), "bob": (None, None)}
    finally:
        for sock in sockets:
            await sock.ws.close()
        for peer in peers:
            await peer.close()
