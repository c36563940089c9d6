"""Tests for :mod:`engine.state.directory`: registrations, conference ownership, rate limits, bans.

The tests taking the ``d`` or ``make_directory`` fixture are written against
the interface (plus ``stats()`` and ``conferences()``) and run again on
:class:`~engine.state.redis_directory.RedisDirectory` in
tests/integration/test_redis_directory.py, which imports them (unit tests
start no server); the others look inside :class:`MemoryDirectory`.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Callable, Protocol

import pytest

from engine.state.directory import (
    LoginBackoff,
    LoginGuard,
    Binding,
    ContactUpdate,
    Directory,
    DirectoryError,
    DirectoryStats,
    MemoryDirectory,
    OutOfOrder,
    TooManyBindings,
)

AOR = "sip:alice@example.com"
C1 = "sip:alice@192.0.2.10:5060"
C2 = "sip:alice@192.0.2.11:5060;transport=tcp"
C3 = "sip:alice@198.51.100.7:5080"


class DirectoryUnderTest(Directory, Protocol):
    """What the shared tests use: the interface, sizes and the claims."""

    def stats(self) -> DirectoryStats: ...

    def conferences(self) -> dict[str, tuple[str, str]]: ...


#: Builds an empty directory from keyword settings (``max_bindings_per_aor``).
DirectoryFactory = Callable[..., DirectoryUnderTest]


@pytest.fixture
def make_directory() -> DirectoryFactory:
    """Empty MemoryDirectory instances (tests/integration overrides this with Redis)."""
    return MemoryDirectory


@pytest.fixture
def d(make_directory: DirectoryFactory) -> DirectoryUnderTest:
    return make_directory()


def register(
    d: DirectoryUnderTest, contact: str = C1, *, expires: float = 3600, now: float = 0.0,
    call_id: str = "cid-1", cseq: int = 1, q: float | None = None, aor: str = AOR,
) -> Binding | None:
    return d.add_binding(aor, contact, expires=expires, now=now, call_id=call_id, cseq=cseq, q=q)


def contacts(d: DirectoryUnderTest, now: float, aor: str = AOR) -> list[str]:
    return [b.contact for b in d.bindings(aor, now)]


def test_directory_implements_the_interface(d: DirectoryUnderTest) -> None:
    """Check the directory satisfies the Directory protocol and starts empty."""
    assert isinstance(d, Directory)
    assert d.stats() == DirectoryStats(aors=0, bindings=0, conferences=0, rate_keys=0, bans=0)


def test_constructor_validation() -> None:
    """Check the limits must be positive integers."""
    with pytest.raises(ValueError) as info:
        MemoryDirectory(max_rate_keys=0)
    assert str(info.value) == "max_rate_keys must be a positive integer, not 0"
    with pytest.raises(ValueError) as info:
        MemoryDirectory(max_bindings_per_aor=1.5)  # type: ignore[arg-type]
    assert str(info.value) == "max_bindings_per_aor must be a positive integer, not 1.5"


# -- registrations ------------------------------------------------------------


def test_add_binding(d: DirectoryUnderTest) -> None:
    """Check a new binding is stored with all its fields and counts down."""
    source = ("udp", "192.0.2.10", 5060)
    binding = d.add_binding(
        AOR, C1, expires=3600, now=100.0, call_id="cid-1", cseq=7, source=source, q=0.5
    )
    assert binding == Binding(C1, 3700.0, "cid-1", 7, source, 0.5)
    assert binding.remaining(100.0) == 3600.0
    assert binding.remaining(3000.0) == 700.0
    assert binding.remaining(5000.0) == 0.0
    assert d.bindings(AOR, 100.0) == [binding]
    assert d.registered_aors(100.0) == [AOR]
    assert d.bindings("sip:bob@example.com", 100.0) == []


def test_refresh_same_call_id_needs_higher_cseq(d: DirectoryUnderTest) -> None:
    """Check RFC 3261 10.3 step 7: same Call-ID needs a higher CSeq to refresh."""
    register(d, cseq=5, expires=60)
    with pytest.raises(OutOfOrder) as info:
        register(d, cseq=5, expires=3600, now=1.0)
    assert str(info.value) == (
        "REGISTER for 'sip:alice@example.com' is out of order: binding "
        "'sip:alice@192.0.2.10:5060' with Call-ID 'cid-1' has CSeq 5, the request has CSeq 5"
    )
    assert (info.value.aor, info.value.contact, info.value.cseq, info.value.stored_cseq) == (
        AOR, C1, 5, 5
    )
    assert isinstance(info.value, DirectoryError)
    with pytest.raises(OutOfOrder):
        register(d, cseq=4, now=1.0)
    assert d.bindings(AOR, 1.0)[0].expires_at == 60.0  # unchanged
    refreshed = register(d, cseq=6, expires=3600, now=1.0)
    assert refreshed is not None and refreshed.expires_at == 3601.0 and refreshed.cseq == 6
    assert len(d.bindings(AOR, 1.0)) == 1


def test_other_call_id_replaces_whatever_cseq(d: DirectoryUnderTest) -> None:
    """Check a binding with another Call-ID is replaced even by a lower CSeq (a rebooted phone)."""
    register(d, call_id="before-reboot", cseq=900)
    binding = register(d, call_id="after-reboot", cseq=1, expires=120, now=10.0)
    assert d.bindings(AOR, 10.0) == [binding]
    assert binding is not None and binding.call_id == "after-reboot"


def test_expires_zero_removes_binding(d: DirectoryUnderTest) -> None:
    """Check expires=0 removes the binding, subject to the same ordering rule."""
    register(d, C1, cseq=1)
    register(d, C2, cseq=2)
    with pytest.raises(OutOfOrder):
        register(d, C1, expires=0, cseq=1)
    assert register(d, C1, expires=0, cseq=3) is None
    assert contacts(d, 0.0) == [C2]
    assert register(d, C3, expires=0, cseq=4) is None  # removing an unknown contact is fine
    assert register(d, C2, expires=0, cseq=5) is None
    assert d.registered_aors(0.0) == []
    assert d.stats().aors == 0


def test_binding_expiry(d: DirectoryUnderTest) -> None:
    """Check a binding lapses exactly at expires_at and a lapsed one no longer orders requests."""
    register(d, C1, expires=60, now=0.0, cseq=10)
    register(d, C2, expires=120, now=0.0, cseq=11)
    assert contacts(d, 59.999) == [C1, C2]
    assert contacts(d, 60.0) == [C2]
    assert d.registered_aors(119.0) == [AOR]
    assert d.registered_aors(120.0) == []
    assert d.stats().aors == 0
    # Same Call-ID, lower CSeq: accepted because the stored binding has lapsed.
    assert register(d, C1, now=200.0, cseq=1) is not None


def test_update_bindings_is_all_or_nothing(d: DirectoryUnderTest) -> None:
    """Check one out-of-order Contact makes the whole REGISTER fail with nothing changed."""
    register(d, C1, call_id="a", cseq=5, expires=60)
    register(d, C2, call_id="b", cseq=5, expires=60)
    with pytest.raises(OutOfOrder) as info:
        d.update_bindings(
            AOR, [ContactUpdate(C3, 300), ContactUpdate(C1, 300), ContactUpdate(C2, 0)],
            now=1.0, call_id="b", cseq=5,
        )
    assert info.value.contact == C2
    assert contacts(d, 1.0) == [C1, C2]
    assert all(b.expires_at == 60.0 for b in d.bindings(AOR, 1.0))
    current = d.update_bindings(
        AOR, [ContactUpdate(C3, 300, 0.9), ContactUpdate(C1, 300), ContactUpdate(C2, 0)],
        now=1.0, call_id="b", cseq=6, source=("tcp", "192.0.2.10", 40000),
    )
    assert [(b.contact, b.expires_at, b.call_id, b.cseq) for b in current] == [
        (C1, 301.0, "b", 6), (C3, 301.0, "b", 6),
    ]
    assert all(b.source == ("tcp", "192.0.2.10", 40000) for b in current)
    assert d.update_bindings(AOR, [], now=1.0, call_id="b", cseq=7) == current  # a query


def test_contact_listed_twice_takes_last(d: DirectoryUnderTest) -> None:
    """Check the last entry wins when one REGISTER names a contact twice."""
    current = d.update_bindings(
        AOR, [ContactUpdate(C1, 60), ContactUpdate(C1, 0), ContactUpdate(C2, 60),
              ContactUpdate(C2, 90)],
        now=0.0, call_id="x", cseq=1,
    )
    assert [(b.contact, b.expires_at) for b in current] == [(C2, 90.0)]


def test_bindings_ordered_by_q(d: DirectoryUnderTest) -> None:
    """Check bindings come highest q first, no q ranking as 1.0, ties in registration order."""
    register(d, "sip:a@h", q=0.5, cseq=1)
    register(d, "sip:b@h", q=None, cseq=2)
    register(d, "sip:c@h", q=1.0, cseq=3)
    register(d, "sip:d@h", q=0.0, cseq=4)
    register(d, "sip:e@h", q=0.5, cseq=5)
    assert contacts(d, 0.0) == ["sip:b@h", "sip:c@h", "sip:a@h", "sip:e@h", "sip:d@h"]


def test_too_many_bindings(make_directory: DirectoryFactory) -> None:
    """Check the per-AoR cap refuses new contacts but allows refreshing and swapping."""
    d = make_directory(max_bindings_per_aor=2)
    register(d, C1, cseq=1)
    register(d, C2, cseq=2)
    with pytest.raises(TooManyBindings) as info:
        register(d, C3, cseq=3)
    assert str(info.value) == (
        "address-of-record 'sip:alice@example.com' would have more than 2 bindings"
    )
    assert isinstance(info.value, DirectoryError)
    assert contacts(d, 0.0) == [C1, C2]
    assert register(d, C2, cseq=4, expires=10) is not None
    d.update_bindings(
        AOR, [ContactUpdate(C1, 0), ContactUpdate(C3, 60)], now=0.0, call_id="cid-1", cseq=5
    )
    assert contacts(d, 0.0) == [C2, C3]
    register(d, "sip:other@h", aor="sip:bob@example.com")  # per AoR, not global


def test_remove_binding(d: DirectoryUnderTest) -> None:
    """Check remove_binding removes one contact unconditionally."""
    register(d, C1, cseq=9)
    register(d, C2, cseq=10)
    assert d.remove_binding(AOR, C1) is True
    assert d.remove_binding(AOR, C1) is False
    assert d.remove_binding("sip:nobody@h", C1) is False
    assert contacts(d, 0.0) == [C2]
    assert d.remove_binding(AOR, C2) is True
    assert d.registered_aors(0.0) == []


def test_remove_all(d: DirectoryUnderTest) -> None:
    """Check Contact: * removes every binding, obeying RFC 3261 10.3 step 6."""
    register(d, C1, call_id="a", cseq=5)
    register(d, C2, call_id="b", cseq=5)
    with pytest.raises(OutOfOrder) as info:
        d.remove_all(AOR, "a", 5)
    assert info.value.contact == C1
    assert contacts(d, 0.0) == [C1, C2]
    assert d.remove_all(AOR, "a", 6) == 2
    assert d.registered_aors(0.0) == []
    assert d.remove_all(AOR, "a", 7) == 0
    assert d.remove_all("sip:nobody@h", "z", 1) == 0


def test_remove_all_with_now_ignores_lapsed(d: DirectoryUnderTest) -> None:
    """Check remove_all with now drops lapsed bindings first, and counts only live ones."""
    register(d, C1, call_id="a", cseq=5, expires=10)
    register(d, C2, call_id="b", cseq=1, expires=100)
    with pytest.raises(OutOfOrder):
        d.remove_all(AOR, "a", 1)
    assert d.remove_all(AOR, "a", 1, now=50.0) == 1
    assert d.stats().bindings == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aor": ""}, "aor must be a non-empty string, not ''"),
        ({"contact": None}, "contact must be a non-empty string, not None"),
        ({"expires": -1}, "expires must not be negative, not -1"),
        ({"expires": math.inf}, "expires must be a finite number, not inf"),
        ({"now": math.nan}, "now must be a finite number, not nan"),
        ({"call_id": ""}, "call_id must be a non-empty string, not ''"),
        ({"cseq": -1}, "cseq must be an integer from 0 to 2**31 - 1, not -1"),
        ({"cseq": 2**31}, "cseq must be an integer from 0 to 2**31 - 1, not 2147483648"),
        ({"cseq": True}, "cseq must be an integer from 0 to 2**31 - 1, not True"),
        ({"q": 1.5}, "q must be from 0 to 1, not 1.5"),
        ({"q": "1"}, "q must be a finite number, not '1'"),
    ],
)
def test_add_binding_validation(d: DirectoryUnderTest, kwargs: dict[str, Any], message: str) -> None:
    """Check malformed registrar input raises ValueError naming the argument."""
    args: dict[str, Any] = {"aor": AOR, "contact": C1, "expires": 60, "now": 0.0,
                            "call_id": "c", "cseq": 1, "q": None}
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        d.add_binding(args.pop("aor"), args.pop("contact"), **args)
    assert str(info.value) == message
    assert d.stats().bindings == 0


def test_remove_all_validation(d: DirectoryUnderTest) -> None:
    """Check remove_all validates Call-ID, CSeq and now."""
    with pytest.raises(ValueError, match="^call_id must be a non-empty string, not ''$"):
        d.remove_all(AOR, "", 1)
    with pytest.raises(ValueError, match=r"^cseq must be an integer from 0 to 2\*\*31 - 1"):
        d.remove_all(AOR, "c", -5)
    with pytest.raises(ValueError, match="^now must be a finite number, not inf$"):
        d.remove_all(AOR, "c", 1, now=math.inf)


# -- conference ownership -----------------------------------------------------


def test_claim_conference(d: DirectoryUnderTest) -> None:
    """Check the first claim wins and a second claim gets the first owner back."""
    assert d.conference_owner("conf_1") is None
    assert d.claim_conference("conf_1", "node-a", "s1") == ("node-a", "s1")
    assert d.claim_conference("conf_1", "node-b", "s2") == ("node-a", "s1")
    assert d.claim_conference("conf_1", "node-a", "s1") == ("node-a", "s1")
    assert d.conference_owner("conf_1") == ("node-a", "s1")
    assert d.claim_conference("conf_2", "node-b", "s2") == ("node-b", "s2")
    assert d.conferences() == {"conf_1": ("node-a", "s1"), "conf_2": ("node-b", "s2")}


async def test_racing_claims_see_one_owner(d: DirectoryUnderTest) -> None:
    """Check concurrent claims from many coroutines all get the same owner."""

    async def claim(n: int) -> tuple[str, str]:
        await asyncio.sleep(0)  # a yield point, as a real session would have
        return d.claim_conference("conf_9", f"node-{n % 2}", f"s{n}")

    owners = await asyncio.gather(*(claim(n) for n in range(20)))
    assert set(owners) == {("node-0", "s0")}


def test_release_conference(d: DirectoryUnderTest) -> None:
    """Check only the owning session releases, after which a new claim succeeds."""
    d.claim_conference("conf_1", "node-a", "s1")
    assert d.release_conference("conf_1", "s2") is False
    assert d.conference_owner("conf_1") == ("node-a", "s1")
    assert d.release_conference("conf_1", "s1") is True
    assert d.release_conference("conf_1", "s1") is False
    assert d.release_conference("conf_unknown", "s1") is False
    assert d.claim_conference("conf_1", "node-b", "s3") == ("node-b", "s3")


def test_release_node(d: DirectoryUnderTest) -> None:
    """Check release_node frees every conference of a node and only those."""
    d.claim_conference("conf_b", "node-a", "s1")
    d.claim_conference("conf_a", "node-a", "s2")
    d.claim_conference("conf_c", "node-b", "s3")
    assert d.release_node("node-a") == ["conf_a", "conf_b"]
    assert d.release_node("node-a") == []
    assert d.conferences() == {"conf_c": ("node-b", "s3")}


def test_claim_validation(d: DirectoryUnderTest) -> None:
    """Check empty names and ids are refused."""
    with pytest.raises(ValueError, match="^name must be a non-empty string, not ''$"):
        d.claim_conference("", "n", "s")
    with pytest.raises(ValueError, match="^node_id must be a non-empty string, not None$"):
        d.claim_conference("c", None, "s")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^session_id must be a non-empty string, not ''$"):
        d.claim_conference("c", "n", "")
    assert d.conferences() == {}


# -- rate limiting ------------------------------------------------------------


# ``shared`` changes nothing in one process; a shared directory keeps that
# bucket where every node sees it, with the same arithmetic.
@pytest.mark.parametrize("shared", [False, True])
def test_token_bucket_burst_then_refill(d: DirectoryUnderTest, shared: bool) -> None:
    """Check a bucket allows a burst, refuses beyond it, and refills at the rate."""
    hits = [d.hit("ip:1", 0.0, rate=2.0, burst=3, shared=shared) for _ in range(4)]
    assert hits == [True, True, True, False]
    assert d.hit("ip:1", 0.25, rate=2.0, burst=3, shared=shared) is False  # half a token
    assert d.hit("ip:1", 0.5, rate=2.0, burst=3, shared=shared) is True  # one token
    assert d.hit("ip:1", 0.5, rate=2.0, burst=3, shared=shared) is False
    # Refill is capped at the burst size.
    assert [d.hit("ip:1", 100.0, rate=2.0, burst=3, shared=shared) for _ in range(4)] == [
        True, True, True, False,
    ]


@pytest.mark.parametrize("shared", [False, True])
def test_refused_hits_take_nothing(d: DirectoryUnderTest, shared: bool) -> None:
    """Check refused hits do not drain the bucket: partial tokens keep accruing."""
    assert d.hit("k", 0.0, rate=1.0, burst=1, shared=shared) is True
    assert d.hit("k", 0.4, rate=1.0, burst=1, shared=shared) is False
    assert d.hit("k", 0.8, rate=1.0, burst=1, shared=shared) is False
    assert d.hit("k", 1.0, rate=1.0, burst=1, shared=shared) is True


@pytest.mark.parametrize("shared", [False, True])
def test_keys_are_independent(d: DirectoryUnderTest, shared: bool) -> None:
    """Check each key has its own bucket."""
    assert d.hit("a", 0.0, rate=1.0, burst=1, shared=shared) is True
    assert d.hit("a", 0.0, rate=1.0, burst=1, shared=shared) is False
    assert d.hit("b", 0.0, rate=1.0, burst=1, shared=shared) is True


@pytest.mark.parametrize("shared", [False, True])
def test_clock_going_back_adds_nothing(d: DirectoryUnderTest, shared: bool) -> None:
    """Check a time earlier than the last hit counts as no time passed."""
    assert d.hit("k", 10.0, rate=1.0, burst=1, shared=shared) is True
    assert d.hit("k", 5.0, rate=1.0, burst=1, shared=shared) is False
    assert d.hit("k", 10.5, rate=1.0, burst=1, shared=shared) is False
    assert d.hit("k", 11.0, rate=1.0, burst=1, shared=shared) is True


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0.0, 1, "rate must be a positive number, not 0.0"),
        (-1.0, 1, "rate must be a positive number, not -1.0"),
        (math.nan, 1, "rate must be a positive number, not nan"),
        (math.inf, 1, "rate must be a positive number, not inf"),
        (1.0, 0, "burst must be a positive integer, not 0"),
        (1.0, 2.5, "burst must be a positive integer, not 2.5"),
    ],
)
@pytest.mark.parametrize("shared", [False, True])
def test_hit_validation(d: DirectoryUnderTest, rate: float, burst: Any, message: str, shared: bool) -> None:
    """Check rate and burst are validated."""
    with pytest.raises(ValueError) as info:
        d.hit("k", 0.0, rate=rate, burst=burst, shared=shared)
    assert str(info.value) == message


def test_prune_drops_only_refilled_buckets(d: DirectoryUnderTest) -> None:
    """Check prune forgets buckets that are full again and keeps the others."""
    d.hit("slow", 0.0, rate=0.1, burst=5)  # full again at 10 s
    d.hit("fast", 0.0, rate=10.0, burst=5)  # full again at 0.1 s
    d.hit("drained", 0.0, rate=1.0, burst=1)  # full again at 1 s
    assert d.prune(0.5) == 1
    assert d.stats().rate_keys == 2
    assert d.prune(10.0) == 2
    assert d.stats().rate_keys == 0
    # A pruned key behaves as a fresh one: it is full.
    assert [d.hit("drained", 10.0, rate=1.0, burst=1) for _ in range(2)] == [True, False]


def test_hit_prunes_as_it_goes() -> None:
    """Check hits forget refilled buckets at the old end without an explicit prune."""
    d = MemoryDirectory()
    for i in range(1000):
        d.hit(f"ip:{i}", i * 1.0, rate=1.0, burst=2)  # each is full again 1 s later
    assert d.stats().rate_keys <= 2
    d = MemoryDirectory()
    d.hit("x", 0.0, rate=1.0, burst=1)
    d.hit("y", 0.0, rate=1.0, burst=1)
    d.hit("z", 5000.0, rate=1.0, burst=1)  # x and y are full again: both go
    assert d.stats().rate_keys == 1


def test_memory_cap_under_a_flood_of_distinct_keys() -> None:
    """Check 100k distinct keys within one instant never track more than the cap."""
    d = MemoryDirectory()
    for i in range(100_000):
        assert d.hit(f"ip:{i}", 0.0, rate=1.0, burst=5) is True
    assert d.stats().rate_keys == d.max_rate_keys == 50_000
    small = MemoryDirectory(max_rate_keys=100)
    for i in range(100_000):
        small.hit(f"ip:{i}", i * 1e-6, rate=0.001, burst=10)
        assert small.stats().rate_keys <= 100
    assert small.stats().rate_keys == 100


def test_eviction_is_least_recently_hit() -> None:
    """Check the bucket evicted at the cap is the one hit longest ago."""
    d = MemoryDirectory(max_rate_keys=2)
    d.hit("a", 0.0, rate=0.01, burst=1)
    d.hit("b", 0.0, rate=0.01, burst=1)
    assert d.hit("a", 0.0, rate=0.01, burst=1) is False  # touch a
    d.hit("c", 0.0, rate=0.01, burst=1)  # evicts b
    assert d.hit("a", 0.0, rate=0.01, burst=1) is False  # a still limited
    assert d.hit("b", 0.0, rate=0.01, burst=1) is True  # b forgotten


# -- bans ---------------------------------------------------------------------


def test_ban_and_expiry(d: DirectoryUnderTest) -> None:
    """Check a ban holds until its end, exclusive, and is then forgotten."""
    assert d.is_banned("ip:1", 0.0) is False
    d.ban("ip:1", 60.0)
    assert d.is_banned("ip:1", 59.9) is True
    assert d.is_banned("ip:2", 59.9) is False
    assert d.is_banned("ip:1", 60.0) is False
    assert d.stats().bans == 0


def test_ban_keeps_the_longer_one(d: DirectoryUnderTest) -> None:
    """Check a shorter ban does not cut a longer one, and a longer one extends it."""
    d.ban("ip:1", 100.0)
    d.ban("ip:1", 50.0)
    assert d.is_banned("ip:1", 75.0) is True
    d.ban("ip:1", 200.0)
    assert d.is_banned("ip:1", 150.0) is True
    assert d.stats().bans == 1


def test_unban(d: DirectoryUnderTest) -> None:
    """Check unban lifts a ban and reports whether there was one."""
    d.ban("ip:1", 100.0)
    assert d.unban("ip:1") is True
    assert d.unban("ip:1") is False
    assert d.is_banned("ip:1", 0.0) is False


def test_ban_cap_evicts_oldest() -> None:
    """Check the number of bans is capped, the oldest going first."""
    d = MemoryDirectory(max_bans=3)
    for i in range(10):
        d.ban(f"ip:{i}", 1000.0)
    assert d.stats().bans == 3
    assert [d.is_banned(f"ip:{i}", 0.0) for i in range(10)] == [False] * 7 + [True] * 3


def test_ban_validation(d: DirectoryUnderTest) -> None:
    """Check the end of a ban must be a finite number."""
    with pytest.raises(ValueError, match="^until must be a finite number, not nan$"):
        d.ban("k", math.nan)


# -- housekeeping -------------------------------------------------------------


def test_prune_covers_everything(d: DirectoryUnderTest) -> None:
    """Check prune drops refilled buckets, lapsed bans and lapsed bindings, and counts them."""
    d.hit("k", 0.0, rate=1.0, burst=1)
    d.ban("b1", 5.0)
    d.ban("b2", 500.0)
    register(d, C1, expires=5, cseq=1)
    register(d, C2, expires=500, cseq=2)
    register(d, C1, expires=5, aor="sip:bob@h")
    d.claim_conference("conf_1", "n", "s")
    assert d.stats() == DirectoryStats(aors=2, bindings=3, conferences=1, rate_keys=1, bans=2)
    assert d.prune(10.0) == 4
    assert d.stats() == DirectoryStats(aors=1, bindings=1, conferences=1, rate_keys=0, bans=1)
    assert d.prune(10.0) == 0
    with pytest.raises(ValueError, match="^now must be a finite number, not None$"):
        d.prune(None)  # type: ignore[arg-type]


def test_login_guard_backoff_doubles_to_the_cap_and_forgets(d: DirectoryUnderTest) -> None:
    """Check the first four failures of an account cost nothing, the fifth
    locks it 1 s, each further one doubles the lockout up to the 300 s cap,
    a success clears the account's count, and the count is forgotten after
    ``forget`` seconds without failure."""
    guard = LoginGuard(d, LoginBackoff())
    now = 0.0
    locks = [guard.failed("Alice", None, now) for _ in range(4)]
    assert locks == [0.0] * 4 and guard.refusal("alice", None, now) is None
    locks = [guard.failed("alice", None, now) for _ in range(12)]
    assert locks == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0, 300.0]
    assert guard.refusal("ALICE", None, now + 299) == "account"
    assert guard.refusal("alice", None, now + 301) is None
    guard.succeeded("alice")
    assert guard.failed("alice", None, now + 301) == 0.0
    assert guard.failed("bob", None, 0.0) == 0.0
    for _ in range(3):
        guard.failed("bob", None, 0.0)
    assert guard.failed("bob", None, 901.0) == 0.0  # the first four are forgotten


def test_login_guard_locks_a_source_across_accounts_and_memory_is_bounded() -> None:
    """Check twenty failures from one address over many account names lock
    that address (not other addresses), and a flood of account names keeps
    at most ``max_rate_keys`` failure entries."""
    directory = MemoryDirectory(max_rate_keys=100)
    guard = LoginGuard(directory)
    for i in range(19):
        assert guard.failed(f"user{i}", "192.0.2.1", 0.0) == 0.0
    assert guard.failed("user19", "192.0.2.1", 0.0) == 1.0
    assert guard.refusal("someone", "192.0.2.1", 0.5) == "source"
    assert guard.refusal("someone", "192.0.2.2", 0.5) is None
    for i in range(1000):
        guard.failed(f"flood{i}", None, 1.0)
    assert len(directory._failures) <= 100
    assert directory.prune(10_000.0) >= 1 and not directory._failures


def test_login_guard_lives_apart_and_is_reexported() -> None:
    """Check the password-login lockout is its own leaf module and
    engine.state.directory still hands out the very same classes."""
    import grimp

    from engine.state import login_guard

    assert LoginGuard is login_guard.LoginGuard and LoginBackoff is login_guard.LoginBackoff
    graph = grimp.build_graph("engine")
    imported = graph.find_modules_directly_imported_by("engine.state.login_guard")
    assert {m for m in imported if m.startswith("engine")} == set()
