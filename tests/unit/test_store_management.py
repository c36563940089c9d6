"""Tests for the management API's part of :mod:`engine.state.store`: the schema
migration, rooms with a lifetime and PINs, API keys, invites, webhooks."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from old_schema import database_at_version

from engine.state.store import (
    SCHEMA_VERSION,
    InvalidValue,
    InviteRefused,
    Preset,
    PresetExists,
    Room,
    SqliteStore,
)


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    with SqliteStore(":memory:", clock=lambda: 1000.0) as s:
        yield s


def test_version_1_database_is_migrated_keeping_rooms(tmp_path: Path) -> None:
    """Check a database of schema version 1 (rooms with an id and a display
    name only) opens at the current version with its rooms intact."""
    path = tmp_path / "cb.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("CREATE TABLE rooms (room_id TEXT PRIMARY KEY, display_name TEXT,"
                 " created_at REAL NOT NULL)")
    conn.execute("INSERT INTO rooms VALUES ('1234', 'Weekly', 5.0)")
    conn.close()
    # The rest of version 1's tables are missing here: create them as v1 did.
    from engine.state.store.migrations import MIGRATIONS

    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0]:
        if "rooms" not in statement:
            conn.execute(statement)
    conn.close()
    with SqliteStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 4
        assert store.get_room("1234") == Room("1234", "Weekly", 5.0)
        assert store.find_room_by_pin("1234") == (Room("1234", "Weekly", 5.0), "guest")


def test_version_2_clear_pins_are_hashed_at_open(tmp_path: Path) -> None:
    """Check a database whose rooms have PINs in clear (version 2) opens
    with them replaced by keyed hashes, which still open the rooms with
    their roles; reopening changes nothing more; a wrong key finds nothing."""
    path = tmp_path / "cb.sqlite3"
    conn = database_at_version(path, 2)
    conn.execute("INSERT INTO rooms (room_id, display_name, created_at, pin, moderator_pin)"
                 " VALUES ('math', NULL, 1.0, '4321', '987654'), ('open', NULL, 1.0, NULL, NULL)")
    conn.close()
    key = b"k" * 32
    with SqliteStore(path, pin_key=key) as store:
        math = store.get_room("math")
        assert math is not None and math.pin_hash == store.pin_hash("4321")
        assert store.find_room_by_pin("4321") == (math, "guest")
        assert store.find_room_by_pin("987654") == (math, "moderator")
        assert store.room_pin_role("math", "987654") == "moderator"
        assert store.room_pin_role("open", "open") == "guest"
    stored = sqlite3.connect(path).execute("SELECT pin, moderator_pin FROM rooms ORDER BY room_id").fetchall()
    assert "4321" not in repr(stored) and "987654" not in repr(stored)
    assert stored[1] == (None, None)
    with SqliteStore(path, pin_key=key) as store:
        assert store.get_room("math") == math
    with SqliteStore(path, pin_key=b"x" * 32) as store:
        assert store.find_room_by_pin("4321") is None


def test_room_settings_state_and_pins(store: SqliteStore) -> None:
    """Check a room keeps its settings, its state follows the schedule, and
    its PINs (not its id) open it with their roles."""
    room = store.create_room("math", display_name="Math", max_participants=2,
                             record_on_start=True, pin="4321", moderator_pin="9876",
                             end_when_empty_after=30, starts_at=2000.0, duration=600)
    assert store.get_room("math") == room
    assert (room.state(1999), room.state(2000), room.state(2600)) == ("scheduled", "open", "ended")
    assert store.find_room_by_pin("4321") == (room, "guest")
    assert store.find_room_by_pin("9876") == (room, "moderator")
    assert store.find_room_by_pin("math") is None
    with pytest.raises(InvalidValue, match="pin: is in use by another room"):
        store.create_room("other", pin="9876")
    with pytest.raises(InvalidValue, match="max_participants"):
        store.create_room("bad", max_participants=0)
    ended = store.end_room("math", 2100.0)
    assert ended is not None and ended.ended_at == 2100.0 and ended.state(2100.0) == "ended"
    assert store.end_room("math", 2200.0) == ended
    locked = store.set_room_locked("math", True)
    assert locked is not None and locked.locked
    assert store.end_room("nope", 1.0) is None


def test_api_key_secret_is_checked_and_not_stored(store: SqliteStore) -> None:
    """Check a key verifies only with its secret, which the database does not hold."""
    key, secret = store.create_api_key(["users", "calls", "users"], name="ops")
    assert key.scopes == ("users", "calls")
    assert store.verify_api_key(key.key_id, secret) == key
    assert store.verify_api_key(key.key_id, secret + "x") is None
    assert store.verify_api_key("cbk_nope", secret) is None
    with store._read() as conn:
        dump = "\n".join(conn.iterdump())
    assert secret not in dump
    with pytest.raises(InvalidValue, match="scopes"):
        store.create_api_key(["root"])
    assert store.delete_api_key(key.key_id)
    assert store.verify_api_key(key.key_id, secret) is None


def test_invite_is_single_use_expiring_and_locks(store: SqliteStore) -> None:
    """Check an invite redeems once, expires, and locks after wrong codes for its room."""
    store.create_room("r1")

    def invite(code: str, expires_at: float = 5000.0) -> str:
        return store.create_invite(
            "r1", "a@example.com", display_name="A", role="guest", permissions=["mute_self"],
            code_hash=code * 16, link_hash=code * 17, expires_at=expires_at, max_attempts=2,
            now=1000.0,
        ).invite_id

    first = invite("a")
    used = store.redeem_invite(code_hash="a" * 16, room_id="r1", now=1001.0)
    assert used.invite_id == first and used.used_at == 1001.0
    with pytest.raises(InviteRefused) as info:
        store.redeem_invite(code_hash="a" * 16, now=1002.0)
    assert info.value.code == "invite_used"
    invite("b", expires_at=1500.0)
    with pytest.raises(InviteRefused) as info:
        store.redeem_invite(link_hash="b" * 17, now=1500.0)
    assert info.value.code == "invite_expired"
    invite("c")
    for _ in range(2):
        with pytest.raises(InviteRefused) as info:
            store.redeem_invite(code_hash="z" * 16, room_id="r1", now=1003.0)
        assert info.value.code == "invalid_code"
    with pytest.raises(InviteRefused) as info:
        store.redeem_invite(code_hash="c" * 16, room_id="r1", now=1004.0)
    assert info.value.code == "invite_locked"
    with pytest.raises(InvalidValue, match="code_hash: is taken"):
        invite("c")


def test_webhook_deliveries_queue_in_order_and_replay(store: SqliteStore) -> None:
    """Check events queue one delivery per subscribed webhook, in order, and
    that attempts, failure and replay are recorded."""
    hook = store.create_webhook("http://127.0.0.1:9/hook", ["room.started", "room.ended"])
    other = store.create_webhook("http://127.0.0.1:9/all", ["*"])
    assert hook.secret.startswith("whsec_") and hook.secret != other.secret
    store.enqueue_event("room.started", '{"n":1}', 10.0)
    store.enqueue_event("call.started", '{"n":2}', 11.0)
    pending = store.pending_deliveries()
    assert [(d.webhook_id, d.event) for d in pending] == [
        (hook.webhook_id, "room.started"), (other.webhook_id, "room.started"),
        (other.webhook_id, "call.started"),
    ]
    first = pending[0]
    again = store.record_delivery_attempt(first.delivery_id, delivered=False, code=500,
                                          error="HTTP 500", next_attempt_at=12.0, now=10.5)
    assert again is not None and (again.status, again.attempts, again.next_attempt_at) == (
        "pending", 1, 12.0)
    failed = store.record_delivery_attempt(first.delivery_id, delivered=False, code=None,
                                           error="refused", next_attempt_at=None, now=12.5)
    assert failed is not None and (failed.status, failed.attempts) == ("failed", 2)
    replayed = store.replay_delivery(first.delivery_id, 20.0)
    assert replayed is not None and (replayed.status, replayed.attempts) == ("pending", 0)
    done = store.record_delivery_attempt(first.delivery_id, delivered=True, code=200,
                                         error=None, next_attempt_at=None, now=21.0)
    assert done is not None and (done.status, done.delivered_at) == ("delivered", 21.0)
    assert store.delete_webhook(other.webhook_id)
    assert [d.event for d in store.pending_deliveries()] == []


def test_presets_are_stored_listed_and_deleted(store: SqliteStore) -> None:
    """Check a named preset is stored with its permissions (duplicates
    dropped), listed by name, refused when its name is taken or malformed,
    and deleted once."""
    host = store.create_preset("host", ["mute_self", "lock", "mute_self"])
    assert host == Preset("host", ("mute_self", "lock"), 1000.0)
    store.create_preset("audience-2", [])
    assert store.get_preset("host") == host
    assert [p.name for p in store.list_presets()] == ["audience-2", "host"]
    with pytest.raises(PresetExists, match="preset 'host' already exists"):
        store.create_preset("host", ["end"])
    for bad in ("", "Host", "9lives", "a" * 33, "a b"):
        with pytest.raises(InvalidValue, match="name: must be 1-32 characters"):
            store.create_preset(bad, [])
    with pytest.raises(InvalidValue, match="permissions: must be a list"):
        store.create_preset("x", "lock")  # type: ignore[arg-type]
    assert store.delete_preset("host") and not store.delete_preset("host")
    assert store.get_preset("host") is None
