"""Unit tests of :mod:`engine.runtime.tokens` (join tokens, invite hashing, the key
file) and :mod:`engine.runtime.rooms` (admission, cap, lock, schedule, events)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest

from engine.runtime.rooms import RoomRefused, RoomService
from engine.state.store import SqliteStore
from engine.runtime.tokens import PRESETS, Keys, TokenError, permissions_for


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    """Check the master key file is made once with mode 0600 and read back
    (tokens signed before a restart verify after it)."""
    keys = Keys.in_directory(tmp_path)
    path = tmp_path / "secret.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    token, _ = keys.issue_join_token(room="r", identity="i", display_name=None, role="guest",
                                     permissions=PRESETS["guest"], ttl=60, now=1000.0)
    again = Keys.in_directory(tmp_path)
    assert again.verify_join_token(token, 1010.0).identity == "i"
    assert again.code_hash("12345678") == keys.code_hash("12345678") != keys.link_hash("12345678")


def test_join_token_expiry_forgery_and_claims() -> None:
    """Check a token verifies until it expires, and one signed with another
    key, for another audience, or with 'none' is refused as invalid."""
    keys = Keys(b"k" * 32)
    token, grant = keys.issue_join_token(room="r1", identity="amy", display_name="Amy", role="moderator",
                                         permissions=PRESETS["moderator"], ttl=60, now=1000.0)
    assert keys.verify_join_token(token, 1059.0) == grant
    assert grant.may("remove") and not keys.verify_join_token(token, 1000.0).may("fly")
    with pytest.raises(TokenError) as info:
        keys.verify_join_token(token, 1060.0)
    assert info.value.code == "token_expired"
    other, _ = Keys(b"x" * 32).issue_join_token(room="r1", identity="amy", display_name=None, role="guest",
                                                permissions=(), ttl=60, now=1000.0)
    forged_claims: dict[str, Any] = {"iss": "callbridge", "aud": "other", "sub": "amy", "room": "r1",
                                     "exp": 2000}
    for bad in (other, "a.b.c", jwt.encode(forged_claims, keys._jwt_key, algorithm="HS256"),
                jwt.encode({**forged_claims, "aud": "callbridge-join"}, None, algorithm="none")):
        with pytest.raises(TokenError) as info:
            keys.verify_join_token(bad, 1000.0)
        assert info.value.code == "token_invalid"


def test_custom_id_and_picture_claims_are_checked_both_ways() -> None:
    """Check ``custom_id`` and ``picture`` round-trip through a token, are
    left out when absent, are refused when malformed at issue, and make a
    (validly signed) token whose claims are malformed ``token_invalid``."""
    keys = Keys(b"k" * 32)
    token, grant = keys.issue_join_token(room="r1", identity="amy", display_name=None, role="guest",
                                         permissions=(), ttl=60, now=1000.0, custom_id="crm:7",
                                         picture="http://cdn.example/p.jpg")
    assert keys.verify_join_token(token, 1001.0) == grant
    assert (grant.custom_id, grant.picture) == ("crm:7", "http://cdn.example/p.jpg")
    plain, _ = keys.issue_join_token(room="r1", identity="bo", display_name=None, role="guest",
                                     permissions=(), ttl=60, now=1000.0)
    claims = jwt.decode(plain, options={"verify_signature": False})
    assert "custom_id" not in claims and "picture" not in claims
    with pytest.raises(ValueError, match="picture must be an http:// or https:// URL"):
        keys.issue_join_token(room="r1", identity="amy", display_name=None, role="guest",
                              permissions=(), ttl=60, now=1000.0, picture="data:image/png,xx")
    with pytest.raises(ValueError, match="custom_id must be printable"):
        keys.issue_join_token(room="r1", identity="amy", display_name=None, role="guest",
                              permissions=(), ttl=60, now=1000.0, custom_id="a\x1bb")
    base: dict[str, Any] = {"iss": "callbridge", "aud": "callbridge-join", "sub": "amy", "room": "r1",
                            "exp": 2000}
    for claim, value in (("custom_id", 5), ("custom_id", "x" * 129), ("picture", "javascript:x"),
                         ("picture", ["https://a.b/"])):
        bad = jwt.encode({**base, claim: value}, keys._jwt_key, algorithm="HS256")
        with pytest.raises(TokenError, match=f"the join token's {claim} is malformed"):
            keys.verify_join_token(bad, 1000.0)


def test_permissions_presets_and_custom() -> None:
    """Check presets, custom lists (deduplicated) and refusals of unknown names."""
    assert permissions_for("guest") == ("mute_self",)
    assert permissions_for("custom", ["lock", "lock", "end"]) == ("lock", "end")
    with pytest.raises(ValueError, match="unknown role"):
        permissions_for("king")
    with pytest.raises(ValueError, match="unknown permission"):
        permissions_for("custom", ["fly"])


def test_room_admission_cap_lock_and_events() -> None:
    """Check joins count heads up to max_participants, a locked room admits
    only moderators, and events come in order (started once, joined, left)."""
    clock = Clock()
    with SqliteStore(":memory:", clock=clock) as store:
        rooms = RoomService(store, clock)
        events: list[tuple[str, str]] = []
        rooms.on_event.append(lambda name, data: events.append((name, data.get("participant", {}).get("id", ""))))
        store.create_room("r", max_participants=2)
        assert rooms.join("conf_adhoc", "x", kind="web") is None  # not a room: nothing enforced
        rooms.join("conf_r", "a", kind="web")
        rooms.join("conf_r", "a", kind="web")  # the same participant again: no double count
        rooms.join("conf_r", "b", kind="pstn")
        with pytest.raises(RoomRefused) as info:
            rooms.join("conf_r", "c", kind="pstn")
        assert info.value.code == "room_full"
        rooms.leave("conf_r", "b")
        store.set_room_locked("r", True)
        with pytest.raises(RoomRefused) as info:
            rooms.join("conf_r", "c", kind="pstn")
        assert info.value.code == "room_locked"
        assert rooms.join("conf_r", "m", kind="web", role="moderator") is not None
        assert events == [("room.started", ""), ("participant.joined", "a"), ("participant.joined", "b"),
                          ("participant.left", "b"), ("participant.joined", "m")]
        muted: list[tuple[Any, bool]] = []
        rooms.muter = lambda call, on: muted.append((call, on))
        assert rooms.mute_all("conf_r", True, except_="m") == 1
        assert [p.muted for p in rooms.list_participants("r")] == [True, False]


def test_schedule_tick_ends_room_and_runs_hooks() -> None:
    """Check tick() ends a room whose duration is over: participants leave,
    room.ended is emitted with the reason, and then the hook runs, once."""
    clock = Clock()
    with SqliteStore(":memory:", clock=clock) as store:
        rooms = RoomService(store, clock)
        ended: list[str] = []
        events: list[str] = []
        rooms.on_event.append(lambda name, data: events.append(f"{name}:{data.get('reason', '')}"))
        rooms.on_room_ended.append(lambda room_id: (ended.append(room_id), events.append("hook")))
        store.create_room("s", duration=60)
        call = SimpleNamespace(state=SimpleNamespace(ended=False), hangup=lambda: events.append("hangup"))
        rooms.join("s", "p", kind="pstn", call=call)
        rooms.tick()
        assert ended == []
        clock.now += 60
        rooms.tick()
        rooms.tick()
        assert ended == ["s"] and rooms.count("s") == 0
        # the calls and the conference (and so its recording) end after room.ended
        assert events[-4:] == ["participant.left:", "room.ended:schedule", "hangup", "hook"]
        with pytest.raises(RoomRefused) as info:
            rooms.join("s", "q", kind="web")
        assert info.value.code == "room_ended"
