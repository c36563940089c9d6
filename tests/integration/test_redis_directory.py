"""Tests for :mod:`engine.state.redis_directory` against a real ``redis-server``
started by the tests (tests/redis_server.py): every interface test of
tests/unit/test_directory.py again, on Redis; two directories ("nodes") on
one Redis sharing registrations, conference claims (with node liveness) and
failure counters; an outage giving a clear error rather than a hang; and two
engines sharing one Redis."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import aiohttp
import pytest

from logs import wait_for_log
from redis_server import RedisServer
from sdk_peer import SdkSocket
from serve_process import free_port
from tests.unit import test_directory as interface_tests

from engine.runtime.invites import PinAdmission
from engine.runtime.rooms import RoomRefused
from engine.server import Engine, EngineConfig, StartupError
from engine.state.directory import (
    Binding,
    ContactUpdate,
    DirectoryUnavailable,
    LoginBackoff,
    LoginGuard,
    OutOfOrder,
)
from engine.state.redis_directory import RedisDirectory, redacted_url

from .conftest import EngineFactory, PeerFactory
from .sip_peer import request
from .test_registrar import DIAL_USER, PASSWORD, Registration, answer_as_phone
from .test_registrar import RULES as DIAL_RULES
from .test_cli import callbridge, write_app

AOR = "sip:alice@example.com"
C1 = "sip:alice@192.0.2.10:5060"
C2 = "sip:alice@192.0.2.11:5060;transport=tcp"
C3 = "sip:alice@198.51.100.7:5080"

#: The interface tests of tests/unit/test_directory.py (those taking the
#: ``d`` or ``make_directory`` fixture), collected here again: the fixtures
#: below give them RedisDirectory instances.
SHARED_TESTS: dict[str, Callable[..., Any]] = {
    name: test for name, test in vars(interface_tests).items()
    if name.startswith("test_") and callable(test)
    and {"d", "make_directory"} & set(inspect.signature(test).parameters)
}
globals().update(SHARED_TESTS)

DirectoryFactory = Callable[..., RedisDirectory]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the module's tests (emptied before each)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def make_directory(redis_server: RedisServer) -> Iterator[DirectoryFactory]:
    """Connected RedisDirectory instances on the emptied server: each one a
    "node" (``now`` taken as given: ``clock=None``), closed at teardown."""
    redis_server.flush()
    made: list[RedisDirectory] = []

    def factory(**settings: Any) -> RedisDirectory:
        directory = RedisDirectory(redis_server.url, **{"clock": None, **settings})
        directory.connect()
        made.append(directory)
        return directory

    yield factory
    for directory in made:
        directory.close()


@pytest.fixture
def d(make_directory: DirectoryFactory) -> RedisDirectory:
    return make_directory()


def test_the_interface_tests_run_here_too() -> None:
    """Check the unit module's interface tests were found and are collected
    in this module (an empty import would make the Redis runs vacuous)."""
    assert {"test_update_bindings_is_all_or_nothing", "test_claim_conference", "test_binding_expiry",
            "test_login_guard_backoff_doubles_to_the_cap_and_forgets", "test_too_many_bindings",
            "test_prune_covers_everything"} <= set(SHARED_TESTS)
    assert len(SHARED_TESTS) >= 30
    assert all(globals()[name] is test for name, test in SHARED_TESTS.items())


# -- two nodes, one Redis: registrations ---------------------------------------------


def test_a_binding_added_by_one_node_is_seen_by_the_other(make_directory: DirectoryFactory) -> None:
    """Check node B sees node A's binding with every field (source as a tuple
    of str and int), is held to its CSeq ordering, and its removal is seen by A."""
    a, b = make_directory(), make_directory()
    source = ("UDP", "192.0.2.10", 5060)
    made = a.add_binding(AOR, C1, expires=3600, now=100.0, call_id="cid-1", cseq=7, source=source, q=0.5)
    assert made == Binding(C1, 3700.0, "cid-1", 7, source, 0.5)
    assert b.bindings(AOR, 200.0) == [made]
    assert b.registered_aors(200.0) == [AOR]
    with pytest.raises(OutOfOrder):  # B holds A's REGISTER to the ordering rule, all or nothing
        b.update_bindings(AOR, [ContactUpdate(C3, 60), ContactUpdate(C1, 60)], now=200.0,
                          call_id="cid-1", cseq=7)
    assert a.bindings(AOR, 200.0) == [made]
    b.update_bindings(AOR, [ContactUpdate(C2, 60)], now=200.0, call_id="cid-2", cseq=1)
    assert [x.contact for x in a.bindings(AOR, 200.0)] == [C2, C1]  # no q ranks as 1.0
    assert b.remove_binding(AOR, C1) is True
    assert [x.contact for x in a.bindings(AOR, 200.0)] == [C2]
    assert a.remove_all(AOR, "cid-3", 1) == 1
    assert b.registered_aors(200.0) == []


def test_concurrent_registers_from_two_nodes_lose_nothing(make_directory: DirectoryFactory) -> None:
    """Check 2 x 40 REGISTERs for one address-of-record, each adding a
    contact, made at once from two nodes in two threads, leave 80 bindings:
    each read-modify-write is atomic (a lost update would drop contacts)."""
    nodes = [make_directory(max_bindings_per_aor=100), make_directory(max_bindings_per_aor=100)]
    errors: list[BaseException] = []

    def register_all(n: int) -> None:
        try:
            for i in range(40):
                nodes[n].add_binding(AOR, f"sip:{n}-{i}@h", expires=600, now=0.0, call_id=f"{n}-{i}", cseq=1)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=register_all, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    contacts = {b.contact for b in nodes[0].bindings(AOR, 1.0)}
    assert contacts == {f"sip:{n}-{i}@h" for n in (0, 1) for i in range(40)}
    assert nodes[1].stats().bindings == 80


def test_nodes_with_another_prefix_share_nothing(make_directory: DirectoryFactory,
                                                 redis_server: RedisServer) -> None:
    """Check the key prefix separates directories on one Redis, and every key
    written is under it."""
    a, other = make_directory(), make_directory(prefix="other:")
    a.add_binding(AOR, C1, expires=60, now=0.0, call_id="c", cseq=1)
    a.claim_conference("conf_1", "node-a", "s1")
    a.add_failure("login:user:x", 0.0, free=5, base=1.0, cap=300.0, forget=900.0)
    assert other.bindings(AOR, 0.0) == [] and other.conference_owner("conf_1") is None
    assert other.locked_for("login:user:x", 0.0) == 0.0
    assert other.claim_conference("conf_1", "node-b", "s2") == ("node-b", "s2")
    with redis_server.client() as client:
        keys = set(client.keys("*"))
    assert keys and all(k.startswith(("callbridge:", "other:")) for k in keys)
    assert "callbridge:node:node-a" in keys and "other:node:node-b" in keys


def test_now_is_mapped_onto_the_server_clock(make_directory: DirectoryFactory) -> None:
    """Check two nodes whose clocks read 1000 and 5 (boot times apart) agree
    through Redis's clock: a binding A makes for 60 s is seen by B with 60 s
    left at B's own now, and lapses on B's scale; likewise a lockout."""
    a = make_directory(clock=lambda: 1000.0)
    b = make_directory(clock=lambda: 5.0)
    made = a.add_binding(AOR, C1, expires=60, now=1000.0, call_id="c", cseq=1)
    assert made is not None and made.expires_at == pytest.approx(1060.0, abs=0.01)
    [seen] = b.bindings(AOR, 5.0)
    assert seen.expires_at == pytest.approx(65.0, abs=0.5)
    assert seen.remaining(5.0) == pytest.approx(60.0, abs=0.5)
    assert b.bindings(AOR, 66.0) == [] and b.registered_aors(64.0) == [AOR]
    assert a.add_failure("pin:all", 1000.0, free=1, base=10.0, cap=60.0, forget=100.0) == 10.0
    assert b.locked_for("pin:all", 5.0) == pytest.approx(10.0, abs=0.5)
    assert b.locked_for("pin:all", 16.0) == 0.0


# -- two nodes, one Redis: conferences ---------------------------------------------


def test_a_conference_claimed_by_a_is_refused_to_b_until_released(make_directory: DirectoryFactory) -> None:
    """Check B's claim returns A's ownership while A holds it, and succeeds
    once A released it."""
    a, b = make_directory(), make_directory()
    assert a.claim_conference("conf_1", "node-a", "s1") == ("node-a", "s1")
    assert b.claim_conference("conf_1", "node-b", "s2") == ("node-a", "s1")
    assert b.conference_owner("conf_1") == ("node-a", "s1")
    assert b.release_conference("conf_1", "s2") is False
    assert a.release_conference("conf_1", "s1") is True
    assert b.conference_owner("conf_1") is None
    assert b.claim_conference("conf_1", "node-b", "s2") == ("node-b", "s2")
    assert a.conferences() == {"conf_1": ("node-b", "s2")}


def test_a_conference_is_free_once_its_node_stops_its_heartbeat(make_directory: DirectoryFactory) -> None:
    """Check A's conferences stay A's while A's heartbeat runs (beyond the
    TTL), and once A's liveness lapses (not before) B's claim wins and
    conference_owner sees no owner of A's other conference."""
    a, b = make_directory(node_ttl=0.3), make_directory(node_ttl=0.3)
    assert a.claim_conference("conf_1", "node-a", "s1") == ("node-a", "s1")
    assert a.claim_conference("conf_2", "node-a", "s2") == ("node-a", "s2")
    for _ in range(6):  # 0.6 s: twice the TTL, kept alive
        time.sleep(0.1)
        a.heartbeat("node-a")
        assert b.claim_conference("conf_1", "node-b", "s3") == ("node-a", "s1")
    last_beat = time.monotonic()
    while b.claim_conference("conf_1", "node-b", "s3") != ("node-b", "s3"):
        assert time.monotonic() - last_beat < 3.0, "node-a's claim outlived its liveness"
        time.sleep(0.02)
    assert time.monotonic() - last_beat >= 0.25
    assert b.conference_owner("conf_2") is None
    assert a.conference_owner("conf_1") == ("node-b", "s3")
    assert a.release_conference("conf_1", "s1") is False


def test_leave_releases_a_nodes_conferences_and_its_liveness(make_directory: DirectoryFactory,
                                                             redis_server: RedisServer) -> None:
    """Check a node leaving frees its conferences (only its own) and ends its
    liveness key."""
    a, b = make_directory(), make_directory()
    a.claim_conference("conf_b", "node-a", "s1")
    a.claim_conference("conf_a", "node-a", "s2")
    b.claim_conference("conf_c", "node-b", "s3")
    assert a.leave("node-a") == ["conf_a", "conf_b"]
    assert b.conferences() == {"conf_c": ("node-b", "s3")}
    with redis_server.client() as client:
        assert client.exists("callbridge:node:node-a") == 0
        assert client.exists("callbridge:node:node-b") == 1


def test_prune_drops_claims_of_nodes_that_are_gone(make_directory: DirectoryFactory,
                                                   redis_server: RedisServer) -> None:
    """Check prune counts and drops a claim whose node's liveness is gone."""
    d = make_directory()
    d.claim_conference("conf_1", "node-a", "s1")
    d.claim_conference("conf_2", "node-b", "s2")
    with redis_server.client() as client:
        client.delete("callbridge:node:node-a")
    assert d.stats().conferences == 2
    assert d.prune(0.0) == 1
    assert d.stats().conferences == 1 and d.conferences() == {"conf_2": ("node-b", "s2")}


# -- two nodes, one Redis: failures --------------------------------------------------


def test_password_failures_from_both_nodes_add_up_to_one_lockout(make_directory: DirectoryFactory) -> None:
    """Check wrong passwords alternating between two nodes count as one
    series: the fifth locks the account on both, a success on one clears it
    for both."""
    guards = [LoginGuard(make_directory(), LoginBackoff()), LoginGuard(make_directory(), LoginBackoff())]
    locks = [guards[i % 2].failed("alice", None, 0.0) for i in range(4)]
    assert locks == [0.0] * 4
    assert guards[0].refusal("alice", None, 0.0) is None
    assert guards[0].failed("alice", None, 0.0) == 1.0
    assert guards[1].failed("alice", None, 0.0) == 2.0
    assert guards[1].refusal("alice", None, 1.5) == "account"
    assert guards[0].refusal("alice", None, 1.5) == "account"
    guards[1].succeeded("alice")
    assert guards[0].refusal("alice", None, 1.5) is None
    assert guards[0].failed("alice", None, 2.0) == 0.0


# -- two nodes, one Redis: rate buckets ---------------------------------------------


def test_buckets_are_per_node_unless_shared(make_directory: DirectoryFactory,
                                            redis_server: RedisServer) -> None:
    """Check a plain hit is counted in the node's own memory (nothing in
    Redis: the per-datagram limits), and a shared one once for all nodes."""
    a, b = make_directory(), make_directory()
    assert a.hit("ip:1", 0.0, rate=1.0, burst=1) is True
    assert b.hit("ip:1", 0.0, rate=1.0, burst=1) is True  # B's own bucket
    assert a.hit("ip:1", 0.0, rate=1.0, burst=1) is False
    with redis_server.client() as client:
        assert client.keys("*bucket*") == []
    assert a.hit("dialout:*", 0.0, rate=1.0, burst=2, shared=True) is True
    assert b.hit("dialout:*", 0.0, rate=1.0, burst=2, shared=True) is True
    assert a.hit("dialout:*", 0.5, rate=1.0, burst=2, shared=True) is False
    assert b.hit("dialout:*", 1.0, rate=1.0, burst=2, shared=True) is True
    with redis_server.client() as client:
        assert client.keys("*bucket*") == ["callbridge:bucket:dialout:*"]
        # empty at 1.0: full again 2 s later; the key lives that long plus a 5 s margin
        assert 6900 < client.pttl("callbridge:bucket:dialout:*") <= 7000
    assert (a.stats().rate_keys, b.stats().rate_keys) == (1, 1)


# -- Redis going away -----------------------------------------------------------------


def test_a_redis_that_hangs_or_dies_gives_a_clear_error_not_a_hang(caplog: pytest.LogCaptureFixture) -> None:
    """Check a frozen Redis (connection open, no answer) gives
    DirectoryUnavailable naming the URL within the timeout, the next calls
    are refused at once, one error line is logged for the outage and one
    line when Redis answers again; a killed Redis also gives the error."""
    caplog.set_level(logging.WARNING, logger="engine.state.redis_directory")
    with RedisServer() as server:
        d = RedisDirectory(server.url, clock=None, timeout=0.3, retry_after=0.5)
        d.connect()
        d.add_binding(AOR, C1, expires=60, now=0.0, call_id="c", cseq=1)
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(DirectoryUnavailable) as info:
                d.bindings(AOR, 1.0)
            assert time.monotonic() - started < 2.0
            assert str(info.value).startswith(
                f"directory {server.url} is unavailable: cannot read the bindings of {AOR!r}: ")
            assert d.available is False
            started = time.monotonic()
            for _ in range(20):
                with pytest.raises(DirectoryUnavailable, match=r"\(next try in \d\.\d s\)$"):
                    d.claim_conference("conf_1", "node-a", "s1")
            assert time.monotonic() - started < 0.2  # refused without waiting for Redis
        finally:
            server.resume()
        time.sleep(0.6)
        assert [b.contact for b in d.bindings(AOR, 1.0)] == [C1]
        assert d.available is True
        records = [(r.levelname, r.getMessage()) for r in caplog.records]
        assert len(records) == 2, records
        assert records[0][0] == "ERROR" and records[0][1].startswith(f"directory {server.url} is unavailable (")
        assert records[1][0] == "WARNING" and records[1][1].startswith(f"directory {server.url} answers again")
        assert all(r.exc_info is None for r in caplog.records)
        server.stop()
        time.sleep(0.6)
        with pytest.raises(DirectoryUnavailable, match=f"^directory {server.url} is unavailable: cannot "):
            d.add_failure("k", 0.0, free=1, base=1.0, cap=1.0, forget=1.0)
        d.close()


def test_connect_names_the_url_without_its_password() -> None:
    """Check connecting to a port where nothing listens fails at once with
    the URL, its password hidden."""
    port = free_port()
    d = RedisDirectory(f"redis://:s3cret@127.0.0.1:{port}/2", timeout=1.0)
    with pytest.raises(DirectoryUnavailable) as info:
        d.connect()
    assert str(info.value).startswith(f"directory redis://127.0.0.1:{port}/2 is unavailable: cannot connect: ")
    assert "s3cret" not in str(info.value)
    assert redacted_url(f"rediss://user:pw@h:{port}/0") == f"rediss://user:***@h:{port}/0"


def test_pins_are_refused_while_the_directory_is_unavailable() -> None:
    """Check PIN admission answers the refusal ``unavailable`` (not an
    exception of Redis) when the failure counters cannot be read."""
    d = RedisDirectory(f"redis://127.0.0.1:{free_port()}/0", clock=None, timeout=0.5)
    pins = PinAdmission(d, None, None, None)
    call: Any = SimpleNamespace(source="192.0.2.7", callerid="eve", grant=None, display_name=None)
    with pytest.raises(RoomRefused) as info:
        pins.admit(call, "123456", None, 0.0)
    assert (info.value.code, info.value.message) == (
        "unavailable", "PIN entry is not available right now. Please try again later.")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0", "directory URL 'http://127.0.0.1:6379/0' must start with redis:// or"
                                    " rediss:// (e.g. redis://127.0.0.1:6379/0)"),
        ("redis:///0", "directory URL 'redis:///0' names no host (e.g. redis://127.0.0.1:6379/0)"),
        ("redis://:pw@h:99999/0", "directory URL 'redis://:***@h:99999/0' is malformed: Port out of range"
                                  " 0-65535"),
        ("redis://h:6379/zero", "directory URL 'redis://h:6379/zero': the path must be a database number,"
                                " not '/zero'"),
    ],
)
def test_malformed_urls_are_refused(url: str, message: str) -> None:
    """Check a URL that names no Redis database is refused with the reason
    (and never the password)."""
    with pytest.raises(ValueError) as info:
        RedisDirectory(url)
    assert str(info.value) == message


def test_settings_are_checked() -> None:
    """Check the prefix and the timings are validated."""
    with pytest.raises(ValueError, match="^prefix must be a non-empty string, not ''$"):
        RedisDirectory("redis://h/0", prefix="")
    with pytest.raises(ValueError, match="^node_ttl must be more than 0 seconds, not 0$"):
        RedisDirectory("redis://h/0", node_ttl=0)
    with pytest.raises(ValueError, match="^retry_after must not be negative, not -1$"):
        RedisDirectory("redis://h/0", retry_after=-1)
    assert RedisDirectory("rediss://user:pw@[::1]:7000").where == "rediss://user@[::1]:7000/0"


def test_a_value_written_by_someone_else_is_a_clear_error(d: RedisDirectory, redis_server: RedisServer) -> None:
    """Check a binding key holding something else is reported as unreadable
    (naming the operation), not as a crash deep in the decoder."""
    with redis_server.client() as client:
        client.set(f"callbridge:aor:{AOR}", '{"not": "a list"}')
    with pytest.raises(DirectoryUnavailable) as info:
        d.bindings(AOR, 0.0)
    assert str(info.value).startswith(
        f"directory {redis_server.url} is unavailable: cannot read the bindings of {AOR!r}:"
        " unreadable value: not a list of bindings (")
    assert d.available is True  # Redis answered: no outage


def test_a_source_that_cannot_be_stored_is_refused(d: RedisDirectory) -> None:
    """Check a REGISTER source with items other than str and int is refused
    before anything is written."""
    with pytest.raises(ValueError, match=r"^source must be a tuple of str and int items, not \('udp', 1\.5\)$"):
        d.add_binding(AOR, C1, expires=60, now=0.0, call_id="c", cseq=1, source=("udp", 1.5))
    assert d.stats().bindings == 0


# -- engines ----------------------------------------------------------------------------

#: MESSAGE to "gate": join conference "conf_shared" (run by rule Conf), or
#: log why not.
GATE = """
from engine.scenario import AppEvents, CallError, CallEvents, Logger, VoxEngine

async def on_message(e):
    try:
        leg = VoxEngine.call_conference("conf_shared", callerid=e.callerid)
    except CallError as exc:
        Logger.write(f"refused {e.callerid}: {exc}")
        VoxEngine.terminate()
        return
    await leg.wait_for(CallEvents.Connected, timeout=10)
    Logger.write(f"joined {e.callerid}")

VoxEngine.add_event_listener(AppEvents.MessageReceived, on_message)
"""

CONF = """
from engine.scenario import AppEvents, VoxEngine

async def on_alerting(e):
    await e.call.answer()

VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
"""

RULES = """
rules:
  - {name: Gate, pattern: "gate", scenarios: [gate]}
  - {name: Conf, pattern: "conf_shared", scenarios: [conf]}
"""

SCENARIOS = {"gate": GATE, "conf": CONF}


async def test_two_engines_share_conference_ownership(make_engine: EngineFactory,
                                                      redis_server: RedisServer) -> None:
    """Check a conference opened through engine A's runtime is owned by A as
    engine B sees it, B's callers are refused (calls between nodes are not
    built), and once A stops B opens it itself."""
    redis_server.flush()
    a = await make_engine(RULES, SCENARIOS, directory_url=redis_server.url)
    b = await make_engine(RULES, SCENARIOS, directory_url=redis_server.url)
    assert isinstance(a.directory, RedisDirectory) and a.directory is a.shared_directory
    assert a.runtime.on_message("hi", "alice", "gate", {}) == 200
    assert "joined alice" in await wait_for_log(a, "joined alice")
    session = a.runtime.conference_session("conf_shared")
    assert session is not None
    assert b.directory.conference_owner("conf_shared") == (a.node_id, session.id)
    assert b.runtime.conference_is_open("conf_shared") is True
    assert b.runtime.on_message("hi", "bob", "gate", {}) == 200
    logs = await wait_for_log(b, "refused bob")
    assert f"refused bob: conference 'conf_shared' is run by node {a.node_id}" in logs
    await a.stop()
    assert b.directory.conference_owner("conf_shared") is None
    with redis_server.client() as client:
        assert client.exists(f"callbridge:node:{a.node_id}") == 0
        assert client.exists(f"callbridge:node:{b.node_id}") == 1
    assert b.runtime.on_message("hi", "carol", "gate", {}) == 200
    assert "joined carol" in await wait_for_log(b, "joined carol")
    owner = b.directory.conference_owner("conf_shared")
    assert owner is not None and owner[0] == b.node_id


async def test_an_engine_refuses_what_needs_redis_while_it_is_down(
        make_engine: EngineFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    """Check a Redis killed under a running engine turns a call into a
    conference into the scenario's CallError naming the directory (the
    second one refused at once) and a web password login into
    ``login_failed``, with one error line logged and no traceback."""
    with RedisServer() as server:
        engine = await make_engine(RULES, SCENARIOS, directory_url=server.url)
        assert engine.store is not None
        engine.store.create_user("alice", "wonderland")
        server.stop()
        caplog.set_level(logging.WARNING)
        caplog.clear()
        assert engine.runtime.on_message("hi", "dave", "gate", {}) == 200
        logs = await wait_for_log(engine, "refused dave")
        assert (f"refused dave: conference 'conf_shared' cannot be looked up: directory {server.url}"
                " is unavailable: cannot look up conference 'conf_shared': ") in logs
        assert engine.shared_directory is not None and engine.shared_directory.available is False
        assert engine.runtime.on_message("hi", "erin", "gate", {}) == 200
        logs = await wait_for_log(engine, "refused erin")
        assert re.search(r"refused erin: .* \(next try in \d\.\d s\)", logs)
        sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{engine.http_port}/ws"))
        try:
            await sock.hello()
            reply = await sock.login("alice", "wonderland")
        finally:
            await sock.ws.close()
        assert (reply["type"], reply["code"], reply["message"]) == (
            "error", "login_failed", "password logins are not available right now: try again later")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.name for r in errors] == ["engine.state.redis_directory"]
        assert all(r.exc_info is None for r in caplog.records)


async def test_an_engine_does_not_start_without_its_redis(make_engine: EngineFactory) -> None:
    """Check start-up stops with a StartupError naming the URL when nothing
    answers there, and at construction for a URL that is not Redis's."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StartupError, match=f"^--directory {url}: cannot use Redis: "):
        await make_engine(RULES, SCENARIOS, directory_url=url)
    with pytest.raises(StartupError, match="^--directory: directory URL 'mysql://h/0' must start with redis://"):
        Engine(EngineConfig(directory_url="mysql://h/0"))


def test_serve_stops_on_an_unreachable_or_malformed_directory(tmp_path: Path) -> None:
    """Check ``callbridge serve`` exits 2 with a message naming the URL for
    ``CALLBRIDGE_DIRECTORY`` pointing where nothing answers, and for a
    ``--directory`` that is not a Redis URL."""
    app = write_app(tmp_path, RULES, SCENARIOS)
    sip, http = free_port(), free_port()
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run([sys.executable, "-m", "engine", "serve", "--sip-port", str(sip),
                             "--http-port", str(http)], cwd=app, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "CALLBRIDGE_DIRECTORY": url})
    assert result.returncode == 2, result.stderr
    assert f"callbridge: --directory {url}: cannot use Redis: " in result.stderr
    result = callbridge("serve", "--sip-port", str(sip), "--http-port", str(http),
                        "--directory", "redis//oops", cwd=app)
    assert result.returncode == 2, result.stderr
    assert "callbridge: --directory: directory URL 'redis//oops' must start with redis://" in result.stderr


async def test_a_register_while_redis_is_down_gets_503(make_engine: EngineFactory, peers: PeerFactory,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Check a phone that registers with the right password while the shared
    directory is down gets 503 with Retry-After (RFC 3261 §21.5.4: try again
    later), not silence and a traceback; once Redis is back it registers."""
    with RedisServer() as server:
        engine = await make_engine(RULES, SCENARIOS, directory_url=server.url)
        assert engine.store is not None
        engine.store.create_user("alice", PASSWORD, sip=True)
        reg = Registration(await peers.udp(engine), engine)
        assert (await reg.register(["<sip:alice@127.0.0.1:5071>"])).status == 200
        server.pause()
        caplog.clear()
        try:
            refused = await reg.register(["<sip:alice@127.0.0.1:5071>"])
        finally:
            server.resume()
        assert refused.status == 503 and refused.headers.get("Retry-After") == "30"
        assert all(r.exc_info is None for r in caplog.records)
        statuses = []
        for _ in range(12):  # the directory refuses at once for a few seconds after a failure
            statuses.append((await reg.register(["<sip:alice@127.0.0.1:5071>"])).status)
            if statuses[-1] == 200:
                break
            await asyncio.sleep(1.0)
        assert statuses[-1] == 200 and set(statuses[:-1]) <= {503}, statuses


async def test_a_phone_registered_with_one_node_is_called_from_the_other(
        make_engine: EngineFactory, peers: PeerFactory, redis_server: RedisServer) -> None:
    """Check two engines on one Redis: a phone registers with engine A, and a
    scenario on engine B calls it (``VoxEngine.call_user``): B finds A's
    binding, the phone gets B's INVITE from B's SIP port, and the call
    connects and ends with B's BYE."""
    redis_server.flush()
    a = await make_engine(DIAL_RULES, {"dial_user": DIAL_USER}, directory_url=redis_server.url)
    b = await make_engine(DIAL_RULES, {"dial_user": DIAL_USER}, directory_url=redis_server.url)
    for engine in (a, b):
        assert engine.store is not None
        engine.store.create_user("alice", PASSWORD, sip=True)
    phone = await peers.udp(a)
    assert (await Registration(phone, a).register([f"<sip:alice@127.0.0.1:{phone.local[1]}>"])).status == 200
    assert not b.ua.calls
    trigger = await peers.udp(b)
    trigger.send(request("MESSAGE", f"sip:dial@127.0.0.1:{b.ua.port}", local=trigger.local,
                         body=b"alice", content_type="text/plain"))
    assert (await trigger.expect()).status == 200
    invite = await answer_as_phone(phone, b)
    assert invite.uri_text == f"sip:alice@127.0.0.1:{phone.local[1]}"
    assert phone.sources[-1] == ("127.0.0.1", b.ua.port)
    logs = await wait_for_log(b, "ended Disconnected 200")
    assert "connected" in logs
