"""Tests for :mod:`engine.state.store`: users, passwords, SIP HA1, key-value, rooms, call records."""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from old_schema import database_at_version

from engine.state.store import (
    DEFAULT_FILENAME,
    SCHEMA_VERSION,
    InvalidValue,
    Room,
    RoomExists,
    ScryptParams,
    SqliteStore,
    Store,
    StoreError,
    User,
    UserExists,
    UserNotFound,
)

#: Cheap scrypt parameters so that the suite stays fast; one test uses the defaults.
FAST = ScryptParams(log2_n=4, r=1, p=1)
FASTER = ScryptParams(log2_n=3, r=1, p=1)


class Clock:
    """A settable clock for ``created_at``."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> Iterator[SqliteStore]:
    with SqliteStore(":memory:", password_params=FAST, clock=clock) as s:
        yield s


def open_file(path: Path, **kwargs: Any) -> SqliteStore:
    kwargs.setdefault("password_params", FAST)
    return SqliteStore(path, **kwargs)


def error_of(kind: type[Exception], call: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    with pytest.raises(kind) as info:
        call(*args, **kwargs)
    return str(info.value)


def raw(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run SQL on a store's file through a separate connection."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def ha1(hash_name: str, text: str) -> str:
    return hashlib.new(hash_name, text.encode("utf-8")).hexdigest()


# -- opening, schema, closing -------------------------------------------------


def test_memory_store_implements_the_interface(store: SqliteStore) -> None:
    """Check the SQLite store satisfies the Store protocol and records the schema version."""
    assert isinstance(store, Store)
    assert store.schema_version == SCHEMA_VERSION == 4
    assert store.sip_realm == "callbridge"
    assert store.path == ":memory:"


def test_file_store_creates_directory_and_uses_wal(tmp_path: Path) -> None:
    """Check a file store creates its directory, runs in WAL mode and records the version."""
    path = tmp_path / "data" / "nested" / "cb.sqlite3"
    with open_file(path) as store:
        store.kv_put("ns", "k", "v", None, 0.0)
        assert path.exists()
        assert Path(f"{path}-wal").exists()
        assert raw(path, "PRAGMA journal_mode") == [("wal",)]
    assert raw(path, "SELECT version FROM schema_version") == [(4,)]


def test_in_directory_uses_default_filename(tmp_path: Path) -> None:
    """Check in_directory opens DATA_DIR/callbridge.sqlite3."""
    with SqliteStore.in_directory(tmp_path / "data", password_params=FAST) as store:
        assert store.path == tmp_path / "data" / DEFAULT_FILENAME
    assert (tmp_path / "data" / "callbridge.sqlite3").is_file()


def test_persistence_across_reopen(tmp_path: Path, clock: Clock) -> None:
    """Check every kind of data survives closing and reopening a file store."""
    path = tmp_path / "cb.sqlite3"
    with open_file(path, clock=clock) as store:
        store.create_user("alice", "s3cret", "Alice A.", sip=True)
        store.create_room("1234", display_name="Weekly")
        store.kv_put("app", "k", "v", None, 10.0)
        store.kv_put("app", "short", "v", 5.0, 10.0)
        store.add_call_record({"call_id": "c1", "status": "answered"})
    with open_file(path) as store:
        assert store.schema_version == 4
        assert store.get_user("alice") == User("alice", "Alice A.", clock.now, sip=True)
        assert store.verify_password("alice", "s3cret")
        assert store.sip_ha1("alice", "callbridge", "MD5") == ha1(
            "md5", "alice:callbridge:s3cret"
        )
        assert store.get_room("1234") == Room("1234", "Weekly", clock.now)
        assert store.kv_get("app", "k", 1e9) == "v"
        assert store.kv_get("app", "short", 14.9) == "v"
        assert store.kv_get("app", "short", 15.0) is None
        assert store.list_call_records() == [{"call_id": "c1", "status": "answered"}]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """Check a database written by a newer version is not opened."""
    path = tmp_path / "cb.sqlite3"
    open_file(path).close()
    raw(path, "UPDATE schema_version SET version = 99")
    assert error_of(StoreError, open_file, path) == (
        f"{path}: database schema version 99 is newer than this callbridge supports ({SCHEMA_VERSION})"
    )


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    """Check a file that is not SQLite gives a StoreError naming the file."""
    path = tmp_path / "cb.sqlite3"
    path.write_bytes(b"this is not a database, " * 100)
    assert error_of(StoreError, open_file, path) == (
        f"{path}: cannot open the database: file is not a database"
    )


def test_unopenable_path_is_refused(tmp_path: Path) -> None:
    """Check a path whose parent is a file gives a StoreError naming the path."""
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "cb.sqlite3"
    message = error_of(StoreError, open_file, path)
    assert message.startswith(f"{path}: cannot open the database: ")


def test_closed_store_raises(tmp_path: Path) -> None:
    """Check close is idempotent and every later call raises StoreError."""
    store = open_file(tmp_path / "cb.sqlite3")
    store.close()
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.get_user("alice"),
        lambda: store.count_users(),
        lambda: store.kv_put("n", "k", "v", None, 0.0),
        lambda: store.list_rooms(),
        lambda: store.schema_version,
    ]
    for call in calls:
        assert error_of(StoreError, call) == "the store is closed"


def test_database_errors_are_wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check a failing statement surfaces as StoreError with SQLite's reason."""
    path = tmp_path / "cb.sqlite3"
    with open_file(path) as store:
        monkeypatch.setattr(store, "_find_nocase", lambda name: False)
        raw(path, "DROP TABLE rooms")
        raw(path, "DROP TABLE users")
        assert error_of(StoreError, store.create_user, "alice", "pw") == (
            "database error: no such table: users"
        )
        assert error_of(StoreError, store.list_rooms) == "database error: no such table: rooms"
        assert error_of(StoreError, store.create_room, "r1") == (
            "database error: no such table: rooms"
        )


def test_realm_must_be_plain_text() -> None:
    """Check the SIP realm is validated."""
    for realm in ("", 'a"b', "a\nb"):
        assert error_of(InvalidValue, SqliteStore, ":memory:", sip_realm=realm) == (
            "invalid sip_realm: must be non-empty text without quotes"
        )


def test_scrypt_params_are_validated() -> None:
    """Check out-of-range scrypt parameters are refused with the field named."""
    assert str(pytest.raises(InvalidValue, ScryptParams, log2_n=0).value) == (
        "invalid scrypt log2_n: must be an integer from 1 to 24"
    )
    assert str(pytest.raises(InvalidValue, ScryptParams, r=65).value) == (
        "invalid scrypt r: must be an integer from 1 to 64"
    )
    assert error_of(InvalidValue, ScryptParams, p=1.0) == (
        "invalid scrypt p: must be an integer from 1 to 16"
    )


# -- users --------------------------------------------------------------------


def test_create_and_get_user(store: SqliteStore, clock: Clock) -> None:
    """Check a created user is returned without secrets and found by exact name."""
    user = store.create_user("alice", "pw", "Alice")
    assert user == User("alice", "Alice", clock.now)
    assert store.get_user("alice") == user
    assert store.get_user("Alice") is None
    assert store.get_user("bob") is None
    assert store.get_user(42) is None  # type: ignore[arg-type]
    assert not hasattr(user, "password")
    assert store.create_user("bob", "pw", "").display_name is None


def test_user_names_are_unique_ignoring_case(store: SqliteStore) -> None:
    """Check duplicates, also in another case, raise UserExists naming the user."""
    store.create_user("alice", "pw")
    assert error_of(UserExists, store.create_user, "alice", "pw") == "user 'alice' already exists"
    assert error_of(UserExists, store.create_user, "ALICE", "pw") == "user 'ALICE' already exists"
    assert isinstance(UserExists("x"), StoreError)
    assert store.count_users() == 1


def test_user_exists_race_is_reported(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check a duplicate inserted between the check and the insert still gives UserExists."""
    store.create_user("alice", "pw")
    monkeypatch.setattr(store, "_find_nocase", lambda name: False)
    assert error_of(UserExists, store.create_user, "Alice", "pw") == "user 'Alice' already exists"


BAD_NAME = "invalid name: must be 1 to 64 characters of A-Z a-z 0-9 . _ - (got {})"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", BAD_NAME.format("''")),
        ("a" * 65, BAD_NAME.format(repr("a" * 65))),
        ("a b", BAD_NAME.format("'a b'")),
        ("al@ce", BAD_NAME.format("'al@ce'")),
        ("alice\n", BAD_NAME.format("'alice\\n'")),
        ("élise", BAD_NAME.format("'élise'")),
        (".", "invalid name: must not be '.'"),
        ("..", "invalid name: must not be '..'"),
        (None, "invalid name: must be a string"),
    ],
)
def test_invalid_user_names(store: SqliteStore, name: Any, message: str) -> None:
    """Check malformed names are refused with the exact reason."""
    with pytest.raises(InvalidValue) as info:
        store.create_user(name, "pw")
    assert str(info.value) == message
    assert info.value.field == "name"


def test_valid_user_name_edges(store: SqliteStore) -> None:
    """Check names at the edges of the allowed set are accepted."""
    for name in ("a", "a" * 64, "A.b_c-9", "...", "-", "_"):
        assert store.create_user(name, "pw").name == name


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "invalid password: must be 1 to 1024 characters"),
        ("x" * 1025, "invalid password: must be 1 to 1024 characters"),
        (b"pw", "invalid password: must be a string"),
    ],
)
def test_invalid_passwords(store: SqliteStore, password: Any, message: str) -> None:
    """Check malformed passwords are refused without echoing them."""
    assert error_of(InvalidValue, store.create_user, "alice", password) == message
    assert store.count_users() == 0


@pytest.mark.parametrize(
    ("display_name", "message"),
    [
        ("x" * 129, "invalid display_name: must be at most 128 characters"),
        ("a\r\nb", "invalid display_name: must not contain control characters"),
        (5, "invalid display_name: must be a string or None"),
    ],
)
def test_invalid_display_names(store: SqliteStore, display_name: Any, message: str) -> None:
    """Check malformed display names are refused for users and rooms."""
    assert error_of(InvalidValue, store.create_user, "alice", "pw", display_name) == message
    assert error_of(InvalidValue, store.update_user, "alice", display_name=display_name) == message
    assert error_of(InvalidValue, store.create_room, "r1", display_name=display_name) == message


def test_list_and_count_users(store: SqliteStore) -> None:
    """Check users are listed by name with offset and limit, and counted."""
    for name in ("carol", "alice", "bob", "Zed"):
        store.create_user(name, "pw")
    assert store.count_users() == 4
    assert [u.name for u in store.list_users()] == ["Zed", "alice", "bob", "carol"]
    assert [u.name for u in store.list_users(offset=1, limit=2)] == ["alice", "bob"]
    assert store.list_users(offset=10) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"offset": -1}, "invalid offset: must be an integer of at least 0"),
        ({"limit": 0}, "invalid limit: must be an integer from 1 to 1000"),
        ({"limit": 1001}, "invalid limit: must be an integer from 1 to 1000"),
        ({"limit": 10.0}, "invalid limit: must be an integer from 1 to 1000"),
    ],
)
def test_list_users_bounds(store: SqliteStore, kwargs: dict[str, Any], message: str) -> None:
    """Check offset and limit are validated."""
    assert error_of(InvalidValue, store.list_users, **kwargs) == message


def test_update_user(store: SqliteStore) -> None:
    """Check updating password and display name, clearing the name and leaving fields alone."""
    created = store.create_user("alice", "old", "Alice", sip=True)
    assert store.update_user("alice") == created
    assert store.update_user("alice", display_name="A.") == User("alice", "A.", created.created_at, True)
    before = store.sip_ha1("alice", "callbridge", "MD5")
    assert store.update_user("alice", password="new").display_name == "A."
    assert not store.verify_password("alice", "old")
    assert store.verify_password("alice", "new")
    assert store.sip_ha1("alice", "callbridge", "MD5") == ha1("md5", "alice:callbridge:new")
    assert store.sip_ha1("alice", "callbridge", "MD5") != before
    assert store.update_user("alice", display_name="").display_name is None


def test_update_user_errors(store: SqliteStore) -> None:
    """Check updating an unknown user or with bad values fails clearly."""
    assert error_of(UserNotFound, store.update_user, "bob", password="x") == (
        "user 'bob' does not exist"
    )
    assert error_of(InvalidValue, store.update_user, None) == "invalid name: must be a string"
    store.create_user("alice", "pw")
    assert error_of(InvalidValue, store.update_user, "alice", password="") == (
        "invalid password: must be 1 to 1024 characters"
    )
    assert store.verify_password("alice", "pw")


def test_update_user_deleted_meanwhile(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check a user deleted between the check and the write gives UserNotFound."""
    monkeypatch.setattr(store, "get_user", lambda name: User(name, None, 0.0))
    assert error_of(UserNotFound, store.update_user, "ghost", display_name="x") == (
        "user 'ghost' does not exist"
    )


def test_delete_user(store: SqliteStore) -> None:
    """Check deleting reports whether the user existed and removes its secrets."""
    store.create_user("alice", "pw")
    assert store.delete_user("Alice") is False
    assert store.delete_user("alice") is True
    assert store.delete_user("alice") is False
    assert store.delete_user(None) is False  # type: ignore[arg-type]
    assert store.get_user("alice") is None
    assert not store.verify_password("alice", "pw")
    assert store.sip_ha1("alice", "callbridge", "MD5") is None
    store.create_user("ALICE", "pw")  # the name is free again


# -- passwords ----------------------------------------------------------------


def test_verify_password(store: SqliteStore) -> None:
    """Check right, wrong and unknown-user passwords."""
    store.create_user("alice", "correct horse")
    assert store.verify_password("alice", "correct horse") is True
    assert store.verify_password("alice", "correct horsE") is False
    assert store.verify_password("alice", "") is False
    assert store.verify_password("Alice", "correct horse") is False
    assert store.verify_password("nobody", "correct horse") is False
    assert store.verify_password("nobody", "x") is False  # the dummy hash is reused
    assert store.verify_password(None, "x") is False  # type: ignore[arg-type]
    assert store.verify_password("alice", None) is False  # type: ignore[arg-type]


def test_password_hash_format_and_salt(tmp_path: Path) -> None:
    """Check hashes are PHC scrypt strings with parameters and a per-user random salt."""
    path = tmp_path / "cb.sqlite3"
    with open_file(path) as store:
        store.create_user("alice", "same")
        store.create_user("bob", "same")
    rows = dict(raw(path, "SELECT name, password_hash FROM users"))
    for encoded in rows.values():
        assert encoded.startswith("$scrypt$ln=4,r=1,p=1$")
        assert "same" not in encoded
        assert len(encoded.split("$")) == 5
    salts = {encoded.split("$")[3] for encoded in rows.values()}
    assert len(salts) == 2


def test_default_scrypt_parameters() -> None:
    """Check the default parameters (N=2**14, r=8, p=1) hash and verify."""
    with SqliteStore(":memory:") as store:
        store.create_user("alice", "pw")
        assert store.verify_password("alice", "pw")
        assert not store.verify_password("alice", "pW")


def test_rehash_with_new_parameters(tmp_path: Path) -> None:
    """Check a successful login upgrades a hash made with other parameters, a failed one not."""
    path = tmp_path / "cb.sqlite3"
    with open_file(path, password_params=FASTER) as store:
        store.create_user("alice", "pw")
    with open_file(path, password_params=FAST) as store:
        assert not store.verify_password("alice", "wrong")
        assert raw(path, "SELECT password_hash FROM users")[0][0].startswith("$scrypt$ln=3,")
        assert store.verify_password("alice", "pw")
        assert raw(path, "SELECT password_hash FROM users")[0][0].startswith("$scrypt$ln=4,")
        assert store.verify_password("alice", "pw")


@pytest.mark.parametrize(
    "encoded",
    [
        "garbage",
        "$bcrypt$x$y$z",
        "$scrypt$ln=4$c2FsdA$aGFzaA",
        "$scrypt$ln=99,r=1,p=1$c2FsdA$aGFzaA",
        "$scrypt$ln=4,r=1,p=1$!!$aGFzaA",
    ],
)
def test_corrupt_hash_never_verifies(tmp_path: Path, encoded: str) -> None:
    """Check a damaged stored hash makes verification fail instead of raising."""
    path = tmp_path / "cb.sqlite3"
    with open_file(path) as store:
        store.create_user("alice", "pw")
        raw(path, "UPDATE users SET password_hash = ?", (encoded,))
        assert store.verify_password("alice", "pw") is False


# -- SIP digest HA1 -----------------------------------------------------------


def test_sip_ha1_matches_hashlib(store: SqliteStore) -> None:
    """Check HA1 = H(user:realm:password) for MD5 and SHA-256, in any case of the name."""
    store.create_user("alice", "pässword", sip=True)
    md5 = ha1("md5", "alice:callbridge:pässword")
    sha = ha1("sha256", "alice:callbridge:pässword")
    assert store.sip_ha1("alice", "callbridge", "MD5") == md5
    assert store.sip_ha1("alice", "callbridge", "md5") == md5
    assert store.sip_ha1("alice", "callbridge", "SHA-256") == sha
    assert store.sip_ha1("alice", "callbridge", "sha-256") == sha


def test_sip_ha1_unknown_user_or_realm(store: SqliteStore) -> None:
    """Check HA1 is None for an unknown user, another case, or another realm."""
    store.create_user("alice", "pw", sip=True)
    assert store.sip_ha1("bob", "callbridge", "MD5") is None
    assert store.sip_ha1("ALICE", "callbridge", "MD5") is None
    assert store.sip_ha1("alice", "other", "MD5") is None
    assert store.sip_ha1(None, "callbridge", "MD5") is None  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["SHA-512-256", "MD5-sess", "", None])
def test_sip_ha1_unsupported_algorithm(store: SqliteStore, algorithm: Any) -> None:
    """Check an unsupported algorithm is refused with its name."""
    assert error_of(InvalidValue, store.sip_ha1, "alice", "callbridge", algorithm) == (
        f"invalid algorithm: must be MD5 or SHA-256 (got {algorithm!r})"
    )


def test_custom_realm_and_realm_change(tmp_path: Path) -> None:
    """Check HA1 follows the configured realm, and a realm change needs the password again."""
    path = tmp_path / "cb.sqlite3"
    with open_file(path, sip_realm="pbx.example.com") as store:
        store.create_user("alice", "pw", sip=True)
        assert store.sip_ha1("alice", "pbx.example.com", "SHA-256") == ha1(
            "sha256", "alice:pbx.example.com:pw"
        )
    with open_file(path, sip_realm="new.example.com") as store:
        assert store.sip_ha1("alice", "new.example.com", "MD5") is None
        assert store.sip_ha1("alice", "pbx.example.com", "MD5") is None
        assert store.verify_password("alice", "pw")  # recomputes for the new realm
        assert store.sip_ha1("alice", "new.example.com", "MD5") == ha1(
            "md5", "alice:new.example.com:pw"
        )
        store.create_user("bob", "x", sip=True)
        store.update_user("bob", password="y")
        assert store.sip_ha1("bob", "new.example.com", "MD5") == ha1("md5", "bob:new.example.com:y")


# -- key-value ----------------------------------------------------------------


def test_kv_put_get_replace(store: SqliteStore) -> None:
    """Check values are stored per namespace and replaced by a later put."""
    store.kv_put("app1", "greeting", "hello", None, 0.0)
    store.kv_put("app2", "greeting", "salut", None, 0.0)
    assert store.kv_get("app1", "greeting", 0.0) == "hello"
    assert store.kv_get("app2", "greeting", 0.0) == "salut"
    store.kv_put("app1", "greeting", "", None, 0.0)
    assert store.kv_get("app1", "greeting", 0.0) == ""
    assert store.kv_get("app1", "missing", 0.0) is None
    assert store.kv_get("app3", "greeting", 0.0) is None


def test_kv_ttl_expiry(store: SqliteStore) -> None:
    """Check a value expires exactly ttl seconds after now, and a put without ttl lives for ever."""
    store.kv_put("app", "k", "v", 10.0, 100.0)
    assert store.kv_get("app", "k", 109.999) == "v"
    assert store.kv_get("app", "k", 110.0) is None
    store.kv_put("app", "k", "v2", None, 200.0)
    assert store.kv_get("app", "k", 1e12) == "v2"
    store.kv_put("app", "k", "v3", 1, 300)
    assert store.kv_get("app", "k", 300.5) == "v3"
    assert store.kv_get("app", "k", 301) is None


def test_kv_keys(store: SqliteStore) -> None:
    """Check keys are listed sorted, by literal prefix, without expired keys or other namespaces."""
    for key in ("user:2", "user:10", "room:1", "user%", "user_x", "usera"):
        store.kv_put("app", key, "v", None, 0.0)
    store.kv_put("app", "user:3", "v", 5.0, 0.0)
    store.kv_put("other", "user:1", "v", None, 0.0)
    assert store.kv_keys("app", now=1.0) == [
        "room:1", "user%", "user:10", "user:2", "user:3", "user_x", "usera",
    ]
    assert store.kv_keys("app", "user:", now=1.0) == ["user:10", "user:2", "user:3"]
    assert store.kv_keys("app", "user:", now=5.0) == ["user:10", "user:2"]
    assert store.kv_keys("app", "user%", now=1.0) == ["user%"]
    assert store.kv_keys("app", "user_", now=1.0) == ["user_x"]
    assert store.kv_keys("app", "USER", now=1.0) == []
    assert store.kv_keys("none", now=1.0) == []


def test_kv_delete(store: SqliteStore) -> None:
    """Check delete reports whether a row existed, expired rows included."""
    store.kv_put("app", "k", "v", None, 0.0)
    store.kv_put("app", "old", "v", 1.0, 0.0)
    assert store.kv_delete("app", "k") is True
    assert store.kv_delete("app", "k") is False
    assert store.kv_delete("other", "old") is False
    assert store.kv_delete("app", "old") is True


def test_kv_purge_expired(store: SqliteStore) -> None:
    """Check purge deletes exactly the rows expired at now, across namespaces."""
    store.kv_put("a", "1", "v", 1.0, 0.0)
    store.kv_put("b", "2", "v", 2.0, 0.0)
    store.kv_put("b", "3", "v", 3.0, 0.0)
    store.kv_put("b", "forever", "v", None, 0.0)
    assert store.kv_purge_expired(2.0) == 2
    assert store.kv_purge_expired(2.0) == 0
    assert store.kv_keys("b", now=0.0) == ["3", "forever"]
    assert store.kv_purge_expired(1e12) == 1
    assert store.kv_delete("b", "3") is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "k", "v", None, 0.0), "invalid namespace: must be 1 to 128 characters"),
        (("n" * 129, "k", "v", None, 0.0), "invalid namespace: must be 1 to 128 characters"),
        ((1, "k", "v", None, 0.0), "invalid namespace: must be a string"),
        (("n", "", "v", None, 0.0), "invalid key: must be 1 to 256 characters"),
        (("n", "k" * 257, "v", None, 0.0), "invalid key: must be 1 to 256 characters"),
        (("n", "a\x00b", "v", None, 0.0), "invalid key: must not contain NUL characters"),
        (("n", "k", 5, None, 0.0), "invalid value: must be a string"),
        (("n", "k", "v" * (1024 * 1024 + 1), None, 0.0),
         "invalid value: must be 0 to 1048576 characters"),
        (("n", "k", "v", 0, 0.0), "invalid ttl: must be more than 0 seconds, or None"),
        (("n", "k", "v", -1.0, 0.0), "invalid ttl: must be more than 0 seconds, or None"),
        (("n", "k", "v", math.inf, 0.0), "invalid ttl: must be a finite number"),
        (("n", "k", "v", True, 0.0), "invalid ttl: must be a finite number"),
        (("n", "k", "v", None, math.nan), "invalid now: must be a finite number"),
        (("n", "k", "v", None, "0"), "invalid now: must be a finite number"),
    ],
)
def test_kv_put_invalid(store: SqliteStore, args: tuple[Any, ...], message: str) -> None:
    """Check kv_put validates every argument with the field named."""
    assert error_of(InvalidValue, store.kv_put, *args) == message


def test_kv_read_side_validation(store: SqliteStore) -> None:
    """Check kv_get, kv_keys, kv_delete and kv_purge_expired validate their arguments."""
    assert error_of(InvalidValue, store.kv_get, "", "k", 0.0) == (
        "invalid namespace: must be 1 to 128 characters"
    )
    assert error_of(InvalidValue, store.kv_get, "n", "k", None) == (
        "invalid now: must be a finite number"
    )
    assert error_of(InvalidValue, store.kv_keys, "n", 5, now=0.0) == (
        "invalid prefix: must be a string"
    )
    assert error_of(InvalidValue, store.kv_delete, "n", "") == (
        "invalid key: must be 1 to 256 characters"
    )
    assert error_of(InvalidValue, store.kv_purge_expired, math.nan) == (
        "invalid now: must be a finite number"
    )


def test_concurrent_writes_from_threads(tmp_path: Path) -> None:
    """Check writes from several threads through one store all land."""
    with open_file(tmp_path / "cb.sqlite3") as store:
        def work(n: int) -> None:
            for i in range(50):
                store.kv_put("t", f"{n}:{i}", "v", None, 0.0)
                assert store.kv_get("t", f"{n}:{i}", 0.0) == "v"

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(store.kv_keys("t", now=0.0)) == 200


# -- rooms --------------------------------------------------------------------


def test_rooms(store: SqliteStore, clock: Clock) -> None:
    """Check rooms are created, found exactly, listed by id and deleted."""
    room = store.create_room("1234", display_name="Weekly sync")
    assert room == Room("1234", "Weekly sync", clock.now)
    clock.now += 1
    store.create_room("Abc")
    store.create_room("abc")
    assert store.get_room("1234") == room
    assert store.get_room("ABC") is None
    assert store.get_room(None) is None  # type: ignore[arg-type]
    assert [r.room_id for r in store.list_rooms()] == ["1234", "Abc", "abc"]
    assert store.delete_room("abc") is True
    assert store.delete_room("abc") is False
    assert store.delete_room(7) is False  # type: ignore[arg-type]
    assert [r.room_id for r in store.list_rooms()] == ["1234", "Abc"]


def test_room_exists(store: SqliteStore) -> None:
    """Check a duplicate room id raises RoomExists naming it."""
    store.create_room("1234")
    assert error_of(RoomExists, store.create_room, "1234") == "room '1234' already exists"
    assert isinstance(RoomExists("x"), StoreError)


BAD_ROOM = "invalid room_id: must be 1 to 32 characters of A-Z a-z 0-9 (got {})"


@pytest.mark.parametrize(
    ("room_id", "message"),
    [
        ("", "invalid room_id: must be 1 to 32 characters of A-Z a-z 0-9 (got '')"),
        ("1" * 33, BAD_ROOM.format(repr("1" * 33))),
        ("conf_1", "invalid room_id: must be 1 to 32 characters of A-Z a-z 0-9 (got 'conf_1')"),
        ("12 34", "invalid room_id: must be 1 to 32 characters of A-Z a-z 0-9 (got '12 34')"),
        (1234, "invalid room_id: must be a string"),
    ],
)
def test_invalid_room_ids(store: SqliteStore, room_id: Any, message: str) -> None:
    """Check malformed room ids are refused with the exact reason."""
    assert error_of(InvalidValue, store.create_room, room_id) == message
    assert store.create_room("x" * 32).room_id == "x" * 32


# -- call records -------------------------------------------------------------


def test_call_records(store: SqliteStore) -> None:
    """Check records round-trip as JSON objects, newest first, up to the limit."""
    first = {
        "call_id": "c1", "session_id": "s1", "direction": "inbound", "number": "5550100",
        "caller": "+15551234", "start": 1.5, "answer": 2.0, "end": 30.25,
        "status": "answered", "reason": None, "extra": {"tags": ["a", "b"]},
    }
    store.add_call_record(first)
    store.add_call_record({"call_id": 42, "status": "failed"})
    store.add_call_record({"status": "busy"})
    records = store.list_call_records()
    assert records == [{"status": "busy"}, {"call_id": 42, "status": "failed"}, first]
    assert store.list_call_records(limit=1) == [{"status": "busy"}]


def test_call_records_are_written_in_batches(tmp_path: Path, clock: Clock) -> None:
    """Check queued records reach the file in one write: not before a
    flush (another connection sees none), all of them at a flush, at once
    when the queue is full, on close, and always for this store's reads."""
    path = tmp_path / "cb.sqlite3"

    def on_disk() -> int:
        other = sqlite3.connect(path)
        try:
            return int(other.execute("SELECT count(*) FROM call_records").fetchone()[0])
        finally:
            other.close()

    with open_file(path, clock=clock) as store:
        store.add_call_record({"call_id": "a"})
        store.add_call_record({"call_id": "b"})
        assert on_disk() == 0
        assert store.count_call_records() == 2  # a read writes the queue first
        assert on_disk() == 2
        store.add_call_record({"call_id": "c"})
        store.flush_call_records()
        assert on_disk() == 3
        for i in range(store.RECORD_BATCH):
            store.add_call_record({"call_id": f"n{i}"})
        assert on_disk() == 3 + store.RECORD_BATCH
        store.add_call_record({"call_id": "last"})
    assert on_disk() == 4 + store.RECORD_BATCH  # close wrote the last one
    with open_file(path) as store:
        assert store.list_call_records(limit=1) == [{"call_id": "last"}]
        with pytest.raises(StoreError):
            store.close()
            store.add_call_record({"call_id": "late"})


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([("call_id", "c1")], "invalid record: must be a mapping"),
        ({1: "x"}, "invalid record: keys must be strings"),
        ({"start": math.nan}, "invalid record: must be JSON-serialisable: "
         "Out of range float values are not JSON compliant"),
        ({"when": object}, "invalid record: must be JSON-serialisable: "
         "Object of type type is not JSON serializable"),
    ],
)
def test_invalid_call_records(store: SqliteStore, record: Any, message: str) -> None:
    """Check records that cannot be stored as JSON objects are refused."""
    assert error_of(InvalidValue, store.add_call_record, record) == message
    assert store.list_call_records() == []


def test_call_records_limit_validated(store: SqliteStore) -> None:
    """Check the limit of list_call_records is validated."""
    assert error_of(InvalidValue, store.list_call_records, 0) == (
        "invalid limit: must be an integer from 1 to 1000"
    )


def test_create_guest_stores_no_hash(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest is a listed user made without scrypt (it raises here) whose
    row holds no password hash and no HA1: no password logs in as it, SIP
    digest finds no HA1, and its name is taken like any user's."""

    def no_scrypt(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("scrypt was called")

    monkeypatch.setattr(hashlib, "scrypt", no_scrypt)
    user = store.create_guest("guest-0a1b2c3d4e", "Ann")
    monkeypatch.undo()
    assert (user.name, user.display_name) == ("guest-0a1b2c3d4e", "Ann")
    assert store.get_user("guest-0a1b2c3d4e") == user
    with store._read() as conn:
        row = conn.execute("SELECT password_hash, ha1_md5, ha1_sha256 FROM users").fetchone()
    assert tuple(row) == ("!guest", "", "")
    for password in ("!guest", "", "x"):
        assert store.verify_password("guest-0a1b2c3d4e", password) is False
    for algorithm in ("MD5", "SHA-256"):
        assert store.sip_ha1("guest-0a1b2c3d4e", store.sip_realm, algorithm) is None
    with pytest.raises(UserExists):
        store.create_guest("GUEST-0a1b2c3d4e")
    with pytest.raises(InvalidValue):
        store.create_guest("no spaces")


def test_web_only_users_keep_no_digest_hash(tmp_path: Path) -> None:
    """Check a user created without ``sip`` (the default) has empty HA1
    columns in the file and no HA1 answer, enabling SIP needs the password
    and then keeps the hashes, and disabling it erases them again."""
    path = tmp_path / "cb.sqlite3"
    with open_file(path) as store:
        assert store.create_user("webby", "pw").sip is False
        assert store.sip_ha1("webby", "callbridge", "MD5") is None
        assert raw(path, "SELECT ha1_md5, ha1_sha256, sip FROM users") == [("", "", 0)]
        assert error_of(InvalidValue, store.update_user, "webby", sip=True) == (
            "invalid sip: enabling SIP needs the password (the digest hashes are made from it)"
        )
        assert store.update_user("webby", password="pw2", sip=True).sip is True
        assert store.sip_ha1("webby", "callbridge", "MD5") == ha1("md5", "webby:callbridge:pw2")
        assert store.update_user("webby", sip=False).sip is False
        assert store.sip_ha1("webby", "callbridge", "MD5") is None
        assert raw(path, "SELECT ha1_md5, ha1_sha256, sip FROM users") == [("", "", 0)]
        assert store.verify_password("webby", "pw2")


def test_version_2_users_stay_sip_users(tmp_path: Path) -> None:
    """Check opening a version 2 database (every user had HA1 values) keeps
    its users able to REGISTER: an upgrade breaks no phone."""
    path = tmp_path / "cb.sqlite3"
    conn = database_at_version(path, 2)
    md5 = ha1("md5", "alice:callbridge:pw")
    sha = ha1("sha256", "alice:callbridge:pw")
    conn.execute("INSERT INTO users VALUES ('alice', NULL, 1.0, 'x', 'callbridge', ?, ?)", (md5, sha))
    conn.close()
    with open_file(path) as store:
        assert store.get_user("alice") == User("alice", None, 1.0, sip=True)
        assert store.sip_ha1("alice", "callbridge", "MD5") == md5


def test_store_package_imports_nothing_else_from_engine() -> None:
    """Check no module of engine.state.store imports a module of engine
    outside the package (the store is a leaf, handed down at start-up), and
    that engine.state.store is the package, not a module beside it."""
    import grimp

    import engine.state.store as package

    assert package.__file__ is not None and package.__file__.endswith("store/__init__.py")
    graph = grimp.build_graph("engine")
    inside = {m for m in graph.modules if m == "engine.state.store" or m.startswith("engine.state.store.")}
    assert len(inside) > 10
    outside = {
        (m, imported) for m in inside for imported in graph.find_modules_directly_imported_by(m)
        if imported.startswith("engine") and imported not in inside
    }
    assert outside == set()
