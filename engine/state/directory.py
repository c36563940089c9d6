"""Who is where: the state that several engine nodes would share.

:class:`Directory` is the interface; :class:`MemoryDirectory` implements it in
the memory of one process. When callbridge runs as several nodes behind a SIP
load balancer (design.md, "Beyond one machine"),
:class:`~engine.state.redis_directory.RedisDirectory` takes its place
(``callbridge serve --directory redis://...``); nothing else changes, because
no module keeps this state in globals.

What it holds:

* **registrations**: SIP registrar bindings, address-of-record to contacts,
  with the ordering rules of RFC 3261 section 10.3;
* **conference ownership**: which node and session run conference ``NAME``
  (one session per conference name, across all nodes);
* **rate limits and bans**: token buckets and ban deadlines for the SIP
  server's flood protection, with memory bounded against floods from random
  source addresses;
* **password guessing**: the failure counts per account and per source
  address behind the exponential lockouts of
  :class:`~engine.state.login_guard.LoginGuard` (the policy lives there; it is
  re-exported here);
* **web user presence**: to come (see the marked place in :class:`Directory`).

Time is always an argument (``now``, seconds on any monotonic-enough scale
shared by the callers); nothing here reads a clock, so tests are exact.
Callers on different machines do not share a scale: the Redis implementation
maps each node's ``now`` onto the Redis server's clock (see
:mod:`engine.state.redis_directory`).

Atomicity: every method is synchronous and never yields, so on the event loop
each call is atomic with respect to other coroutines (e.g. two sessions racing
to :meth:`Directory.claim_conference` the same name). :class:`MemoryDirectory`
is not meant to be shared between threads. The Redis implementation provides
the same guarantees across processes with ``WATCH``/``MULTI`` transactions and
Lua scripts, and adds one refusal: :class:`DirectoryUnavailable` when Redis
cannot be reached.

This module imports nothing from ``engine`` but :mod:`engine.state.login_guard`
(itself a leaf), for the re-export.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

# Re-exported: the password-login lockout lives in its own module now.
from engine.state.login_guard import LoginBackoff, LoginGuard

__all__ = [
    "Binding",
    "ContactUpdate",
    "Directory",
    "DirectoryError",
    "DirectoryStats",
    "DirectoryUnavailable",
    "LoginBackoff",
    "LoginGuard",
    "MemoryDirectory",
    "OutOfOrder",
    "Source",
    "TooManyBindings",
]

#: Where a REGISTER came from, stored and returned as given; typically
#: ``(transport, host, port)``. Keep it to ``str``/``int`` items so that a
#: shared directory can serialise it.
Source = tuple[Any, ...]

#: RFC 3261 section 8.1.1.5: a CSeq sequence number is below 2**31.
_MAX_CSEQ = 2**31 - 1


# -- errors -------------------------------------------------------------------


class DirectoryError(Exception):
    """Base class of the directory's refusals."""


class OutOfOrder(DirectoryError):
    """A REGISTER is older than what is stored (RFC 3261 section 10.3, steps 6 and 7).

    The stored binding for ``contact`` has the same Call-ID and a CSeq at
    least as high as the request's; the whole request fails and nothing is
    changed.

    :param aor: the address-of-record.
    :param contact: the binding that refused the request.
    :param call_id: the request's Call-ID.
    :param cseq: the request's CSeq number.
    :param stored_cseq: the CSeq number stored with the binding.
    """

    def __init__(self, aor: str, contact: str, call_id: str, cseq: int, stored_cseq: int) -> None:
        self.aor = aor
        self.contact = contact
        self.call_id = call_id
        self.cseq = cseq
        self.stored_cseq = stored_cseq
        super().__init__(
            f"REGISTER for {aor!r} is out of order: binding {contact!r} with Call-ID "
            f"{call_id!r} has CSeq {stored_cseq}, the request has CSeq {cseq}"
        )


class DirectoryUnavailable(DirectoryError):
    """The shared directory could not be asked (Redis unreachable, timed out or failing).

    A refusal like the others: whoever catches :class:`DirectoryError` where
    a peer's request depends on the directory answers that request with a
    refusal (a 503, "try again later") instead of failing. Whether a change
    in flight when the connection broke was applied is unknown.

    :param where: the directory, e.g. its URL without credentials.
    :param operation: what could not be done, e.g. ``"claim conference 'conf_1'"``.
    :param reason: why, e.g. the connection error.
    """

    def __init__(self, where: str, operation: str, reason: str) -> None:
        self.where = where
        self.operation = operation
        self.reason = reason
        super().__init__(f"directory {where} is unavailable: cannot {operation}: {reason}")


class TooManyBindings(DirectoryError):
    """Registering would give an address-of-record more bindings than allowed.

    :param aor: the address-of-record.
    :param limit: the most bindings one address-of-record may have.
    """

    def __init__(self, aor: str, limit: int) -> None:
        self.aor = aor
        self.limit = limit
        super().__init__(f"address-of-record {aor!r} would have more than {limit} bindings")


# -- records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered contact of an address-of-record (RFC 3261 section 10.3).

    :param contact: the contact URI, as the registrar gave it (bindings are
        told apart by exact string equality).
    :param expires_at: when the binding lapses (same scale as ``now``).
    :param call_id: Call-ID of the REGISTER that made or refreshed it.
    :param cseq: CSeq number of that REGISTER.
    :param source: where that REGISTER came from, or ``None``.
    :param q: the contact's ``q`` preference (0 to 1), or ``None``.
    """

    contact: str
    expires_at: float
    call_id: str
    cseq: int
    source: Source | None = None
    q: float | None = None

    def remaining(self, now: float) -> float:
        """Seconds left at ``now`` (never negative), for the 200 OK's ``expires``.

        :param now: the current time.
        """
        return max(0.0, self.expires_at - now)


@dataclass(frozen=True, slots=True)
class ContactUpdate:
    """One Contact of a REGISTER, for :meth:`Directory.update_bindings`.

    :param contact: the contact URI (see :attr:`Binding.contact`).
    :param expires: seconds from now; ``0`` removes the binding.
    :param q: the ``q`` parameter, or ``None``.
    """

    contact: str
    expires: float
    q: float | None = None


@dataclass(frozen=True, slots=True)
class DirectoryStats:
    """Sizes, for metrics and tests (expired entries not yet pruned included)."""

    aors: int
    bindings: int
    conferences: int
    rate_keys: int
    bans: int


# -- the interface ------------------------------------------------------------


@runtime_checkable
class Directory(Protocol):
    """State shared between engine nodes; see the module documentation.

    Malformed arguments raise :class:`ValueError` (they are the caller's
    bugs); refusals a peer can provoke raise :class:`DirectoryError`.
    """

    # registrations (RFC 3261 section 10.3)

    def add_binding(
        self,
        aor: str,
        contact: str,
        *,
        expires: float,
        now: float,
        call_id: str,
        cseq: int,
        source: Source | None = None,
        q: float | None = None,
    ) -> Binding | None:
        """Add, refresh or (``expires=0``) remove one binding; return it, or ``None`` when removed.

        :raises OutOfOrder: same Call-ID and a CSeq not higher than stored.
        :raises TooManyBindings: the address-of-record is full.
        """
        ...

    def update_bindings(
        self,
        aor: str,
        updates: Sequence[ContactUpdate],
        *,
        now: float,
        call_id: str,
        cseq: int,
        source: Source | None = None,
    ) -> list[Binding]:
        """Apply all Contacts of one REGISTER at once, or none; return the current bindings.

        :raises OutOfOrder: as for :meth:`add_binding`; nothing is changed.
        :raises TooManyBindings: as for :meth:`add_binding`; nothing is changed.
        """
        ...

    def remove_binding(self, aor: str, contact: str) -> bool:
        """Remove one binding unconditionally; ``False`` when there was none."""
        ...

    def remove_all(self, aor: str, call_id: str, cseq: int, *, now: float | None = None) -> int:
        """``Contact: *`` with ``Expires: 0``: remove every binding; return how many.

        :raises OutOfOrder: a binding with this Call-ID has a CSeq not lower
            than ``cseq``; nothing is removed.
        """
        ...

    def bindings(self, aor: str, now: float) -> list[Binding]:
        """Return the bindings alive at ``now``, highest ``q`` first."""
        ...

    def registered_aors(self, now: float) -> list[str]:
        """Return the addresses-of-record with a binding alive at ``now``, sorted."""
        ...

    # conference ownership

    def claim_conference(self, name: str, node_id: str, session_id: str) -> tuple[str, str]:
        """Claim ``name`` unless claimed; return the owner ``(node_id, session_id)``."""
        ...

    def conference_owner(self, name: str) -> tuple[str, str] | None:
        """Return the owner ``(node_id, session_id)`` of ``name``, or ``None``."""
        ...

    def release_conference(self, name: str, session_id: str) -> bool:
        """Release ``name`` if ``session_id`` owns it; return whether it did."""
        ...

    def release_node(self, node_id: str) -> list[str]:
        """Release every conference that ``node_id`` owns (the node restarted or died)."""
        ...

    # flood protection

    def hit(self, key: str, now: float, *, rate: float, burst: int, shared: bool = False) -> bool:
        """Take one token from ``key``'s bucket; ``False`` when over the limit.

        ``shared``: the bucket is the same on every node sharing the
        directory (a round trip where it is remote: for low-rate limits such
        as dial-outs per hour); without it a node may keep the bucket to
        itself (per-datagram flood limits).
        """
        ...

    def ban(self, key: str, until: float) -> None:
        """Ban ``key`` until ``until`` (an existing later ban is kept)."""
        ...

    def unban(self, key: str) -> bool:
        """Lift a ban; ``False`` when there was none."""
        ...

    def is_banned(self, key: str, now: float) -> bool:
        """Whether ``key`` is banned at ``now``."""
        ...

    def locked_for(self, key: str, now: float) -> float:
        """Seconds ``key`` stays locked out after failures (0.0: it may try)."""
        ...

    def add_failure(self, key: str, now: float, *, free: int, base: float, cap: float,
                    forget: float) -> float:
        """Count one failure of ``key``; return the lockout it now serves (0.0: none)."""
        ...

    def clear_failures(self, key: str) -> bool:
        """Forget the failures of ``key``; ``False`` when none were counted."""
        ...

    def prune(self, now: float) -> int:
        """Forget everything that no longer matters at ``now``; return how many entries."""
        ...

    # web user presence: to come. Planned shape, keyed like the rest by
    # plain strings and timed by ``now``:
    #   set_presence(user, node_id, connection_id, *, now, ttl) -> None
    #   clear_presence(user, connection_id) -> bool
    #   presence(user, now) -> list[tuple[node_id, connection_id]]
    # so that a call to a web user is routed to the node holding its WebSocket.


# -- validation ---------------------------------------------------------------


def _check_str(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, not {value!r}")
    return value


def _check_number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, not {value!r}")
    return float(value)


def _check_cseq(cseq: object) -> int:
    if type(cseq) is not int or not 0 <= cseq <= _MAX_CSEQ:
        raise ValueError(f"cseq must be an integer from 0 to 2**31 - 1, not {cseq!r}")
    return cseq


def _check_bucket(rate: float, burst: int) -> None:
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a positive number, not {rate!r}")
    if type(burst) is not int or burst < 1:
        raise ValueError(f"burst must be a positive integer, not {burst!r}")


def _check_update(update: ContactUpdate) -> None:
    _check_str("contact", update.contact)
    if _check_number("expires", update.expires) < 0:
        raise ValueError(f"expires must not be negative, not {update.expires!r}")
    if update.q is not None and not 0.0 <= _check_number("q", update.q) <= 1.0:
        raise ValueError(f"q must be from 0 to 1, not {update.q!r}")


def _q_order(binding: Binding) -> float:
    # A Contact without q ranks as q=1.0, the highest preference.
    return -(1.0 if binding.q is None else binding.q)


# -- RFC 3261 section 10.3, shared by the implementations ---------------------


def _check_register(aor: str, updates: Sequence[ContactUpdate], now: float, call_id: str,
                    cseq: int) -> float:
    """Validate the arguments of ``update_bindings``; return ``now`` as a float."""
    _check_str("aor", aor)
    now = _check_number("now", now)
    _check_str("call_id", call_id)
    _check_cseq(cseq)
    for update in updates:
        _check_update(update)
    return now


def _apply_updates(
    aor: str,
    stored: dict[str, Binding],
    updates: Sequence[ContactUpdate],
    *,
    now: float,
    call_id: str,
    cseq: int,
    source: Source | None,
    limit: int,
) -> dict[str, Binding]:
    """The bindings of ``aor`` after one REGISTER's Contacts (RFC 3261 section 10.3, step 7).

    Pure: ``stored`` (the live bindings, in registration order) is not
    changed. A refreshed contact keeps its place in the order; a new one goes
    last; a contact listed twice takes its last entry.

    :param limit: the most bindings ``aor`` may have.
    :raises OutOfOrder: a stored binding has ``call_id`` and a CSeq not lower than ``cseq``.
    :raises TooManyBindings: the result has more than ``limit`` bindings and more than before.
    """
    for update in updates:
        old = stored.get(update.contact)
        if old is not None and old.call_id == call_id and cseq <= old.cseq:
            raise OutOfOrder(aor, update.contact, call_id, cseq, old.cseq)
    result = dict(stored)
    for update in updates:
        if update.expires == 0:
            result.pop(update.contact, None)
        else:
            result[update.contact] = Binding(
                update.contact, now + update.expires, call_id, cseq, source, update.q
            )
    if len(result) > limit and len(result) > len(stored):
        raise TooManyBindings(aor, limit)
    return result


def _check_remove_all(aor: str, current: Iterable[Binding], call_id: str, cseq: int) -> None:
    """Refuse ``Contact: *`` when a binding has ``call_id`` and a CSeq not lower (RFC 3261 section 10.3, step 6).

    :raises OutOfOrder: naming the first such binding.
    """
    for binding in current:
        if binding.call_id == call_id and cseq <= binding.cseq:
            raise OutOfOrder(aor, binding.contact, call_id, cseq, binding.cseq)


# -- in memory ----------------------------------------------------------------


class MemoryDirectory:
    """:class:`Directory` in the memory of one process.

    Rate-limit buckets live in an LRU-ordered map. A bucket that has been idle
    long enough to be full again is indistinguishable from a fresh one, so it
    is dropped: a few at the old end on every :meth:`hit` (amortised O(1)),
    all of them on :meth:`prune`. Beyond ``max_rate_keys`` the least recently
    used bucket is evicted, and beyond ``max_bans`` the oldest ban, so a flood
    from random source addresses cannot grow memory without bound.

    :param max_rate_keys: most token buckets tracked at once.
    :param max_bans: most bans tracked at once.
    :param max_bindings_per_aor: most contacts one address-of-record may have.
    """

    #: Buckets examined at the old end of the map on each hit.
    _PRUNE_PER_HIT = 2

    def __init__(
        self,
        *,
        max_rate_keys: int = 50_000,
        max_bans: int = 50_000,
        max_bindings_per_aor: int = 32,
    ) -> None:
        for field, value in (
            ("max_rate_keys", max_rate_keys),
            ("max_bans", max_bans),
            ("max_bindings_per_aor", max_bindings_per_aor),
        ):
            if type(value) is not int or value < 1:
                raise ValueError(f"{field} must be a positive integer, not {value!r}")
        self.max_rate_keys = max_rate_keys
        self.max_bans = max_bans
        self.max_bindings_per_aor = max_bindings_per_aor
        # aor -> contact -> binding, in registration order
        self._aors: dict[str, dict[str, Binding]] = {}
        # name -> (node_id, session_id)
        self._conferences: dict[str, tuple[str, str]] = {}
        # key -> [tokens, last, full_at], least recently hit first
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        # key -> until, oldest first
        self._bans: dict[str, float] = {}
        # key -> [failures, locked_until, forget_at], least recently failed first
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    # -- registrations --------------------------------------------------------

    def _live(self, aor: str, now: float) -> dict[str, Binding]:
        """The bindings of ``aor`` with the lapsed ones dropped (a new dict)."""
        current = self._aors.get(aor)
        if not current:
            return {}
        live = {c: b for c, b in current.items() if b.expires_at > now}
        if len(live) != len(current):
            self._store(aor, live)
        return live

    def _store(self, aor: str, bindings: dict[str, Binding]) -> None:
        if bindings:
            self._aors[aor] = bindings
        else:
            self._aors.pop(aor, None)

    def add_binding(
        self,
        aor: str,
        contact: str,
        *,
        expires: float,
        now: float,
        call_id: str,
        cseq: int,
        source: Source | None = None,
        q: float | None = None,
    ) -> Binding | None:
        """Add, refresh or remove the binding of one contact (RFC 3261 section 10.3, step 7).

        A binding with another Call-ID is replaced; one with the same Call-ID
        only when ``cseq`` is higher than the stored CSeq.

        :param aor: the address-of-record (canonical form, as for ``contact``).
        :param contact: the contact URI in a canonical form: bindings are
            matched by exact string equality, so the registrar applies the
            URI comparison rules (RFC 3261 section 19.1.4) before calling.
        :param expires: seconds to live from ``now``; ``0`` removes the binding.
        :param now: the current time.
        :param call_id: the REGISTER's Call-ID.
        :param cseq: the REGISTER's CSeq number.
        :param source: where the REGISTER came from.
        :param q: the contact's ``q`` (0 to 1).
        :returns: the new binding, or ``None`` when ``expires`` was 0.
        :raises OutOfOrder: same Call-ID and a CSeq not higher than stored.
        :raises TooManyBindings: ``aor`` already has ``max_bindings_per_aor``
            other bindings.
        """
        self.update_bindings(
            aor, (ContactUpdate(contact, expires, q),),
            now=now, call_id=call_id, cseq=cseq, source=source,
        )
        binding = self._aors.get(aor, {}).get(contact)
        return binding if expires > 0 else None

    def update_bindings(
        self,
        aor: str,
        updates: Sequence[ContactUpdate],
        *,
        now: float,
        call_id: str,
        cseq: int,
        source: Source | None = None,
    ) -> list[Binding]:
        """Apply every Contact of one REGISTER, all or nothing (RFC 3261 section 10.3, step 7).

        Lapsed bindings are dropped first and do not take part in the ordering
        check. A contact listed twice takes its last entry.

        :param aor: as for :meth:`add_binding`.
        :param updates: the request's Contacts.
        :param now: the current time.
        :param call_id: the REGISTER's Call-ID.
        :param cseq: the REGISTER's CSeq number.
        :param source: where the REGISTER came from.
        :returns: the bindings of ``aor`` afterwards, as :meth:`bindings`.
        :raises OutOfOrder: nothing is changed.
        :raises TooManyBindings: nothing is changed.
        """
        now = _check_register(aor, updates, now, call_id, cseq)
        result = _apply_updates(aor, self._live(aor, now), updates, now=now, call_id=call_id, cseq=cseq,
                                source=source, limit=self.max_bindings_per_aor)
        self._store(aor, result)
        return sorted(result.values(), key=_q_order)

    def remove_binding(self, aor: str, contact: str) -> bool:
        """Remove one binding, whatever its Call-ID and CSeq.

        :param aor: the address-of-record.
        :param contact: the contact, as registered.
        :returns: ``False`` when there was no such binding.
        """
        current = self._aors.get(aor)
        if not current or contact not in current:
            return False
        remaining = dict(current)
        del remaining[contact]
        self._store(aor, remaining)
        return True

    def remove_all(self, aor: str, call_id: str, cseq: int, *, now: float | None = None) -> int:
        """Remove every binding of ``aor`` (``Contact: *``, RFC 3261 section 10.3, step 6).

        A binding with another Call-ID is removed; one with the same Call-ID
        only if ``cseq`` is higher than its CSeq, otherwise the whole request
        fails.

        :param aor: the address-of-record.
        :param call_id: the REGISTER's Call-ID.
        :param cseq: the REGISTER's CSeq number.
        :param now: when given, lapsed bindings are dropped first and take no
            part in the ordering check.
        :returns: how many (live) bindings were removed.
        :raises OutOfOrder: nothing is removed.
        """
        _check_str("call_id", call_id)
        _check_cseq(cseq)
        if now is not None:
            current = self._live(aor, _check_number("now", now))
        else:
            current = self._aors.get(aor, {})
        _check_remove_all(aor, current.values(), call_id, cseq)
        self._aors.pop(aor, None)
        return len(current)

    def bindings(self, aor: str, now: float) -> list[Binding]:
        """Return the bindings of ``aor`` alive at ``now``.

        Ordered by ``q`` descending (no ``q`` ranks as 1.0), then by first
        registration. Lapsed bindings are forgotten.

        :param aor: the address-of-record.
        :param now: the current time.
        """
        return sorted(self._live(aor, now).values(), key=_q_order)

    def registered_aors(self, now: float) -> list[str]:
        """Return every address-of-record with a binding alive at ``now``, sorted.

        :param now: the current time.
        """
        return sorted(aor for aor in list(self._aors) if self._live(aor, now))

    # -- conference ownership -------------------------------------------------

    def claim_conference(self, name: str, node_id: str, session_id: str) -> tuple[str, str]:
        """Claim conference ``name`` for a session, unless someone has it.

        Atomic: of two racing claims the first wins and the second gets the
        first's owner back.

        :param name: the conference name (e.g. ``conf_1234``).
        :param node_id: the claiming node.
        :param session_id: the claiming session (unique across nodes).
        :returns: the owner ``(node_id, session_id)``: the caller's own when
            the claim succeeded, else the existing owner's.
        """
        _check_str("name", name)
        _check_str("node_id", node_id)
        _check_str("session_id", session_id)
        return self._conferences.setdefault(name, (node_id, session_id))

    def conference_owner(self, name: str) -> tuple[str, str] | None:
        """Return the owner ``(node_id, session_id)`` of conference ``name``, or ``None``.

        :param name: the conference name.
        """
        return self._conferences.get(name)

    def release_conference(self, name: str, session_id: str) -> bool:
        """Release conference ``name``, only if ``session_id`` owns it.

        :param name: the conference name.
        :param session_id: the session that ends.
        :returns: whether the claim was released.
        """
        owner = self._conferences.get(name)
        if owner is None or owner[1] != session_id:
            return False
        del self._conferences[name]
        return True

    def release_node(self, node_id: str) -> list[str]:
        """Release every conference owned by ``node_id``.

        :param node_id: a node that restarted or is gone.
        :returns: the released names, sorted.
        """
        names = sorted(n for n, owner in self._conferences.items() if owner[0] == node_id)
        for name in names:
            del self._conferences[name]
        return names

    def conferences(self) -> dict[str, tuple[str, str]]:
        """Return a copy of every claim, name to ``(node_id, session_id)``."""
        return dict(self._conferences)

    # -- rate limiting and bans -----------------------------------------------

    def hit(self, key: str, now: float, *, rate: float, burst: int, shared: bool = False) -> bool:
        """Take one token from the bucket of ``key`` (token bucket).

        A new key starts with ``burst`` tokens; tokens come back at ``rate``
        per second up to ``burst``. A refused hit takes nothing. Bans are
        separate (:meth:`is_banned`).

        :param key: what is limited, e.g. ``"register:192.0.2.1"``.
        :param now: the current time; a time earlier than the last hit
            counts as no time passed.
        :param rate: tokens per second (more than 0).
        :param burst: bucket size (1 or more).
        :param shared: changes nothing here: in one process every bucket is
            shared by all its callers.
        :returns: ``False`` when over the limit.
        """
        _check_bucket(rate, burst)
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_rate_keys:
                buckets.popitem(last=False)
            tokens = burst - 1.0
            allowed = True
            bucket = buckets[key] = [tokens, now, 0.0]
        else:
            tokens, last, _ = bucket
            if now > last:
                tokens = min(float(burst), tokens + (now - last) * rate)
            else:
                now = last
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            bucket[0] = tokens
            bucket[1] = now
            buckets.move_to_end(key)
        bucket[2] = now + (burst - tokens) / rate
        # Amortised pruning: drop refilled buckets at the old end. The bucket
        # just hit is at the new end and is never full, so it stays.
        for _ in range(self._PRUNE_PER_HIT):
            oldest, (_, _, full_at) = next(iter(buckets.items()))
            if full_at > now:
                break
            del buckets[oldest]
        return allowed

    def ban(self, key: str, until: float) -> None:
        """Ban ``key`` until ``until``; a ban already lasting longer is kept.

        :param key: what is banned, e.g. ``"ip:192.0.2.1"``.
        :param until: the end of the ban, on the ``now`` scale.
        """
        until = _check_number("until", until)
        bans = self._bans
        old = bans.pop(key, None)
        if old is not None and old > until:
            until = old
        elif len(bans) >= self.max_bans:
            del bans[next(iter(bans))]
        bans[key] = until

    def unban(self, key: str) -> bool:
        """Lift the ban of ``key``.

        :returns: ``False`` when no ban of ``key`` was tracked.
        """
        return self._bans.pop(key, None) is not None

    def is_banned(self, key: str, now: float) -> bool:
        """Whether ``key`` is banned at ``now``; a lapsed ban is forgotten.

        :param key: as given to :meth:`ban`.
        :param now: the current time.
        """
        until = self._bans.get(key)
        if until is None:
            return False
        if until > now:
            return True
        del self._bans[key]
        return False

    # -- failed logins --------------------------------------------------------

    def locked_for(self, key: str, now: float) -> float:
        """Seconds ``key`` stays locked out (0.0: it may try now).

        :param key: what failed, e.g. ``"login:user:alice"``.
        :param now: the current time.
        """
        entry = self._failures.get(key)
        if entry is None:
            return 0.0
        if entry[2] <= now and entry[1] <= now:
            del self._failures[key]
            return 0.0
        return max(0.0, entry[1] - now)

    def add_failure(self, key: str, now: float, *, free: int, base: float, cap: float,
                    forget: float) -> float:
        """Count one failure of ``key``.

        The first ``free`` failures cost nothing; failure ``free + k`` (k = 0,
        1, ...) locks ``key`` out for ``min(cap, base * 2**k)`` seconds.
        Failures are forgotten ``forget`` seconds after the last one (or once
        its lockout is over, whichever is later). Beyond ``max_rate_keys``
        keys the least recently failed is dropped, so memory stays bounded.

        :returns: the seconds of lockout this failure started (0.0: none).
        """
        now = _check_number("now", now)
        if type(free) is not int or free < 1:
            raise ValueError(f"free must be a positive integer, not {free!r}")
        failures = self._failures
        entry = failures.get(key)
        if entry is None or (entry[2] <= now and entry[1] <= now):
            if entry is None and len(failures) >= self.max_rate_keys:
                failures.popitem(last=False)
            entry = failures[key] = [0.0, 0.0, 0.0]
        entry[0] += 1
        excess = int(entry[0]) - free
        lock = min(cap, base * 2.0 ** min(excess, 60)) if excess >= 0 else 0.0
        if lock > 0:
            entry[1] = max(entry[1], now + lock)
        entry[2] = max(now + forget, entry[1])
        failures.move_to_end(key)
        return lock

    def clear_failures(self, key: str) -> bool:
        """Forget the failures of ``key`` (a successful login).

        :returns: ``False`` when none were counted.
        """
        return self._failures.pop(key, None) is not None

    # -- housekeeping ---------------------------------------------------------

    def prune(self, now: float) -> int:
        """Forget refilled buckets, lapsed bans and lapsed bindings.

        Nothing observable changes. It walks everything, so call it from a
        timer (say once a minute), not per packet.

        :param now: the current time.
        :returns: how many entries were dropped.
        """
        now = _check_number("now", now)
        dropped = 0
        stale: Iterable[str] = [k for k, b in self._buckets.items() if b[2] <= now]
        for key in stale:
            del self._buckets[key]
            dropped += 1
        stale = [k for k, until in self._bans.items() if until <= now]
        for key in stale:
            del self._bans[key]
            dropped += 1
        stale = [k for k, f in self._failures.items() if f[1] <= now and f[2] <= now]
        for key in stale:
            del self._failures[key]
            dropped += 1
        for aor in list(self._aors):
            before = len(self._aors[aor])
            dropped += before - len(self._live(aor, now))
        return dropped

    def stats(self) -> DirectoryStats:
        """Return the sizes of what is tracked."""
        return DirectoryStats(
            aors=len(self._aors),
            bindings=sum(len(b) for b in self._aors.values()),
            conferences=len(self._conferences),
            rate_keys=len(self._buckets),
            bans=len(self._bans),
        )
