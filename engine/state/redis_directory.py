"""Who is where, in Redis: the :class:`~engine.state.directory.Directory` that several engine nodes share.

``callbridge serve --directory redis://host:6379/0`` makes every node pointing
at the same Redis (and the same key prefix) share:

* **registrations**, with exactly :class:`~engine.state.directory.MemoryDirectory`'s
  RFC 3261 section 10.3 rules (the rules themselves are the same functions,
  :func:`engine.state.directory._apply_updates` and ``_check_remove_all``);
* **conference ownership**, one session per conference name across the nodes,
  with node liveness (below);
* **password and PIN failure counters**, so that guesses spread over the nodes
  add up to one lockout.

Rate buckets and bans are *not* shared: :meth:`RedisDirectory.hit`,
:meth:`~RedisDirectory.ban`, :meth:`~RedisDirectory.unban` and
:meth:`~RedisDirectory.is_banned` run for every SIP datagram on the event loop
and go to a per-process :class:`~engine.state.directory.MemoryDirectory`
(:attr:`RedisDirectory.local`): a round trip per datagram would cost more than
handling the datagram, and a flood would become a flood of Redis traffic.
Behind Kamailio's dispatcher (Call-ID hashed) each node sees its share of a
source's traffic and limits it; each node bans for itself. The exception is a
``hit(..., shared=True)``, for the few low-rate limits that must hold for the
whole cluster (dial-outs per hour, a scenario's ``VoxEngine.rate_limit``): that
bucket is a Lua script in Redis.

Keys (``P`` is the prefix, ``callbridge:`` by default)::

    P aor:<aor>          string  JSON list of the bindings of <aor>, in registration
                                 order; PX: until its last binding lapses (+ margin)
    P aors               zset    <aor> scored by the expiry of its last binding
    P conf:<name>        hash    node, session: the owner of conference <name>
    P conferences        set     the names with a claim
    P node:<node_id>     string  the node's liveness; PX node_ttl, renewed by heartbeat()
    P fail:<key>         hash    failures, locked_until, forget_at; PX: until forgotten
    P bucket:<key>       hash    tokens, last: a shared token bucket; PX: until full again

Time. Every method takes ``now`` like the other directories, but the engine's
callers read ``now`` from a clock of their own process (``time.monotonic()``
for the registrar and the web login, ``loop.time()`` for PINs: both the
monotonic clock), whose zero is that machine's boot: values from two machines
cannot be compared. So a RedisDirectory is told which ``clock`` its callers'
``now`` comes from, and maps ``now`` onto one scale all nodes share: **the
Redis server's clock** (``TIME``). The offset ``server time - clock()`` is
measured on the first use and again at every :meth:`~RedisDirectory.heartbeat`
(every few seconds), from the midpoint of the round trip; stored deadlines
(binding expiries, lockout ends) are absolute on the server's scale, and
values returned (:attr:`Binding.expires_at`) are mapped back to the caller's
scale. Nodes therefore need no synchronised clocks among themselves, only a
network round trip to Redis that is short against the deadlines (seconds).
With ``clock=None`` ``now`` is stored as given: the callers promise a shared
scale themselves (wall-clock ``time.time()`` on NTP-synchronised machines;
tests with virtual time). Where a lifetime needs no comparison with ``now``
(a node's liveness; garbage collection of lapsed keys) Redis TTLs measure it,
as durations, which need no shared scale at all.

Atomicity. A REGISTER's contacts are applied all or nothing with an optimistic
``WATCH``/``MULTI`` transaction on the address-of-record's key (read, apply
the rules in Python, write; redone when another node wrote in between), so
two nodes' REGISTERs for one address-of-record serialise. Conference claims
and failure counters are Lua scripts, atomic on the server. The scripts read
keys whose names come from stored values (a node's liveness key), so this
works on one Redis server (with replicas or Sentinel), not on Redis Cluster.
It needs Redis 6.0 or later (``SET ... KEEPTTL``).

Liveness. :meth:`~RedisDirectory.claim_conference` and
:meth:`~RedisDirectory.heartbeat` set ``P node:<node_id>`` to expire after
``node_ttl`` seconds (15 by default); the engine calls ``heartbeat`` every
``node_ttl / 3`` seconds. A conference whose owner's liveness key is gone
counts as free: :meth:`~RedisDirectory.conference_owner` returns ``None`` (and
drops the claim) and a claim succeeds. A node that stops cleanly calls
:meth:`~RedisDirectory.leave`. A node that was cut off for longer than
``node_ttl`` may find its conferences claimed by another node when it comes
back; the claim in Redis is then the one that counts.

Errors. Redis being unreachable, timing out or answering an error raises
:class:`~engine.state.directory.DirectoryUnavailable` (a
:class:`~engine.state.directory.DirectoryError`) naming the URL (never its
password) and the operation. Calls are synchronous and block the event loop
for their round trips, so every socket operation has a timeout (``timeout``,
0.5 s by default), redis-py's own retries are off, and after a failure the
directory refuses at once, without touching the network, for ``retry_after``
seconds (5 by default): an outage costs the loop one timeout per
``retry_after``, not one per request. The outage is logged once when it
starts and once when Redis answers again; what depends on the directory is
refused meanwhile by its callers, without a traceback: a call into a
conference gets a ``CallError``, a PIN the refusal ``unavailable``, a web
password login ``login_failed``, a dial-out a 503 ``DialRefused``, a
scenario's ``rate_limit`` ``False``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.state.directory import (
    Binding,
    ContactUpdate,
    DirectoryStats,
    DirectoryUnavailable,
    MemoryDirectory,
    Source,
    _apply_updates,
    _check_bucket,
    _check_cseq,
    _check_number,
    _check_register,
    _check_remove_all,
    _check_str,
    _q_order,
)

__all__ = ["DEFAULT_PREFIX", "NODE_TTL", "RedisDirectory", "redacted_url"]

logger = logging.getLogger(__name__)

#: Where the keys of a directory live unless told otherwise.
DEFAULT_PREFIX = "callbridge:"
#: Seconds a node counts as alive after its last heartbeat or claim.
NODE_TTL = 15.0
#: Seconds added to the Redis TTL of a key holding deadlines, beyond the
#: last deadline: the TTL only collects garbage, the deadlines decide.
_GC_MARGIN = 5.0
#: The longest TTL given to a key, in milliseconds (about 35 years).
_MAX_TTL_MS = 2**40

T = TypeVar("T")


# -- Lua scripts ----------------------------------------------------------------

# KEYS: conf key, conference index, the claimer's liveness key.
# ARGV: liveness key prefix, name, node id, session id, node TTL in ms.
_CLAIM = """
redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])
local owner = redis.call('HMGET', KEYS[1], 'node', 'session')
if owner[1] and redis.call('EXISTS', ARGV[1] .. owner[1]) == 1 then
  return owner
end
redis.call('HSET', KEYS[1], 'node', ARGV[3], 'session', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[2])
return {ARGV[3], ARGV[4]}
"""

# KEYS: conf key, conference index. ARGV: liveness key prefix, name.
_OWNER = """
local owner = redis.call('HMGET', KEYS[1], 'node', 'session')
if not owner[1] then
  return false
end
if redis.call('EXISTS', ARGV[1] .. owner[1]) == 1 then
  return owner
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return false
"""

# KEYS: conf key, conference index. ARGV: name, session id.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'session') ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: conference index. ARGV: conf key prefix, node id, the node's
# liveness key to delete ('' for none). Also drops index entries whose
# claim is gone.
_RELEASE_NODE = """
local released = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local node = redis.call('HGET', ARGV[1] .. name, 'node')
  if node == ARGV[2] or not node then
    redis.call('DEL', ARGV[1] .. name)
    redis.call('SREM', KEYS[1], name)
    if node then
      released[#released + 1] = name
    end
  end
end
if ARGV[3] ~= '' then
  redis.call('DEL', ARGV[3])
end
return released
"""

# KEYS: conference index. ARGV: conf key prefix, liveness key prefix.
# Returns {claims dropped, {name, node, session, ...}}; claims of nodes
# that are gone are dropped.
_CONFERENCES = """
local live, dropped = {}, 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local owner = redis.call('HMGET', ARGV[1] .. name, 'node', 'session')
  if owner[1] and redis.call('EXISTS', ARGV[2] .. owner[1]) == 1 then
    live[#live + 1] = name
    live[#live + 1] = owner[1]
    live[#live + 1] = owner[2]
  else
    redis.call('DEL', ARGV[1] .. name)
    redis.call('SREM', KEYS[1], name)
    if owner[1] then
      dropped = dropped + 1
    end
  end
end
return {dropped, live}
"""

# KEYS: aor index. ARGV: now (shared scale), aor key prefix. Forgets the
# addresses-of-record whose last binding has lapsed; returns the others.
_REGISTERED_AORS = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, aor in ipairs(gone) do
  redis.call('DEL', ARGV[2] .. aor)
end
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
"""

# The arithmetic of MemoryDirectory.add_failure, on the server. Numbers are
# stored and returned as '%.17g' strings: Lua's own conversion keeps 14
# digits, and Redis truncates a Lua number reply to an integer.
# KEYS: fail key. ARGV: now, free, base, cap, forget, GC margin in ms, TTL cap in ms.
_ADD_FAILURE = """
local now, free = tonumber(ARGV[1]), tonumber(ARGV[2])
local base, cap, forget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local e = redis.call('HMGET', KEYS[1], 'failures', 'locked_until', 'forget_at')
local n, locked, fgt = tonumber(e[1]), tonumber(e[2]), tonumber(e[3])
if not n or (fgt <= now and locked <= now) then
  n, locked, fgt = 0, 0, 0
end
n = n + 1
local excess = n - free
local lock = 0
if excess >= 0 then
  lock = math.min(cap, base * 2 ^ math.min(excess, 60))
end
if lock > 0 then
  locked = math.max(locked, now + lock)
end
fgt = math.max(now + forget, locked)
redis.call('HSET', KEYS[1], 'failures', string.format('%d', n),
           'locked_until', string.format('%.17g', locked), 'forget_at', string.format('%.17g', fgt))
local ttl = math.min(math.max(1, math.ceil((fgt - now) * 1000)) + tonumber(ARGV[6]), tonumber(ARGV[7]))
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
return string.format('%.17g', lock)
"""

# MemoryDirectory.hit's token bucket, on the server; the key lapses once the
# bucket is full again (a full bucket is a fresh one).
# KEYS: bucket key. ARGV: now, rate, burst, GC margin in ms, TTL cap in ms.
_HIT = """
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens, last = tonumber(b[1]), tonumber(b[2])
local allowed = 0
if not tokens then
  tokens = burst - 1
  allowed = 1
else
  if now > last then
    tokens = math.min(burst, tokens + (now - last) * rate)
  else
    now = last
  end
  if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
  end
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'last', string.format('%.17g', now))
local ttl = math.min(math.max(1, math.ceil((burst - tokens) / rate * 1000)) + tonumber(ARGV[4]), tonumber(ARGV[5]))
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
return allowed
"""

# KEYS: fail key. ARGV: now.
_LOCKED_FOR = """
local e = redis.call('HMGET', KEYS[1], 'locked_until', 'forget_at')
if not e[1] then
  return '0'
end
local now, locked, fgt = tonumber(ARGV[1]), tonumber(e[1]), tonumber(e[2])
if fgt <= now and locked <= now then
  redis.call('DEL', KEYS[1])
  return '0'
end
return string.format('%.17g', math.max(0, locked - now))
"""


# -- URLs -------------------------------------------------------------------------


def redacted_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for messages and logs).

    :param url: a Redis URL as the operator gave it.
    """
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", str(url))


def _check_url(url: str) -> str:
    """Check ``url`` names a Redis server; return it without credentials, for messages.

    :raises ValueError: not a ``redis://`` or ``rediss://`` URL with a host,
        a port from 1 to 65535 and a database number.
    """
    if not isinstance(url, str):
        raise ValueError(f"directory URL must be a string, not {url!r}")
    shown = redacted_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"directory URL {shown!r} is malformed: {exc}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"directory URL {shown!r} must start with redis:// or rediss://"
                         " (e.g. redis://127.0.0.1:6379/0)")
    if not parts.hostname:
        raise ValueError(f"directory URL {shown!r} names no host (e.g. redis://127.0.0.1:6379/0)")
    if port == 0:
        raise ValueError(f"directory URL {shown!r} has port 0")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"directory URL {shown!r}: the path must be a database number, not {parts.path!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}:{port or 6379}/{db or 0}"


# -- serialisation of bindings -------------------------------------------------


def _check_source(source: Source | None) -> None:
    if source is None:
        return
    if not isinstance(source, tuple) or not all(
        isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool)) for item in source
    ):
        raise ValueError(f"source must be a tuple of str and int items, not {source!r}")


def _encode(bindings: dict[str, Binding]) -> str:
    """The bindings as JSON, in order (floats as ``repr``: exact)."""
    return json.dumps(
        [[b.contact, b.expires_at, b.call_id, b.cseq, None if b.source is None else list(b.source), b.q]
         for b in bindings.values()],
        separators=(",", ":"),
    )


class _Unreadable(Exception):
    """A key holds something this module did not write (another program, another version)."""


def _decode(raw: object) -> dict[str, Binding]:
    """The bindings :func:`_encode` wrote, in order; ``{}`` for a missing key.

    :raises _Unreadable: the value is not such a list.
    """
    if raw is None:
        return {}
    out: dict[str, Binding] = {}
    try:
        if not isinstance(raw, str):
            raise TypeError(f"expected a JSON string, found {type(raw).__name__}")
        for contact, expires_at, call_id, cseq, source, q in json.loads(raw):
            out[contact] = Binding(contact, float(expires_at), call_id, int(cseq),
                                   None if source is None else tuple(source),
                                   None if q is None else float(q))
    except (TypeError, ValueError) as exc:
        raise _Unreadable(f"not a list of bindings ({exc}): {str(raw)[:80]!r}") from None
    return out


# -- the directory -----------------------------------------------------------------


class RedisDirectory:
    """:class:`~engine.state.directory.Directory` shared through Redis; see the module documentation.

    Creating one does not connect; :meth:`connect` checks that Redis answers
    (the engine calls it at start-up). Every method may raise
    :class:`~engine.state.directory.DirectoryUnavailable` besides what
    :class:`~engine.state.directory.MemoryDirectory` raises, except the rate
    and ban methods, which never touch Redis.

    :param url: ``redis://[user:password@]host[:port][/db]`` or ``rediss://`` (TLS).
    :param prefix: the start of every key; nodes sharing state use the same one.
    :param clock: the clock the callers' ``now`` comes from, mapped onto the
        Redis server's clock (``time.monotonic``, the engine's); ``None``:
        ``now`` is already on a scale the nodes share and is stored as given.
    :param node_ttl: seconds a node counts as alive after its last
        :meth:`heartbeat` or claim.
    :param timeout: seconds any socket operation (connect, send, receive) may take.
    :param retry_after: seconds the directory refuses without trying, after
        Redis failed.
    :param max_bindings_per_aor: most contacts one address-of-record may have.
    :param max_rate_keys: most token buckets tracked by :attr:`local`.
    :param max_bans: most bans tracked by :attr:`local`.
    :raises ValueError: a malformed URL or setting.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] | None = time.monotonic,
        node_ttl: float = NODE_TTL,
        timeout: float = 0.5,
        retry_after: float = 5.0,
        max_bindings_per_aor: int = 32,
        max_rate_keys: int = 50_000,
        max_bans: int = 50_000,
    ) -> None:
        #: The URL without its password, for messages.
        self.where = _check_url(url)
        _check_str("prefix", prefix)
        for field, value in (("node_ttl", node_ttl), ("timeout", timeout)):
            if not _check_number(field, value) > 0:
                raise ValueError(f"{field} must be more than 0 seconds, not {value!r}")
        if _check_number("retry_after", retry_after) < 0:
            raise ValueError(f"retry_after must not be negative, not {retry_after!r}")
        if type(max_bindings_per_aor) is not int or max_bindings_per_aor < 1:
            raise ValueError(f"max_bindings_per_aor must be a positive integer, not {max_bindings_per_aor!r}")
        self.prefix = prefix
        self.node_ttl = float(node_ttl)
        self.retry_after = float(retry_after)
        self.max_bindings_per_aor = max_bindings_per_aor
        #: The per-process rate buckets and bans (never shared: see the module documentation).
        self.local = MemoryDirectory(max_rate_keys=max_rate_keys, max_bans=max_bans,
                                     max_bindings_per_aor=max_bindings_per_aor)
        self._clock = clock
        # server time - clock(); None: not measured yet
        self._offset: float | None = None if clock is not None else 0.0
        # the circuit breaker (time.monotonic() values)
        self._retry_at = 0.0
        self._down_since: float | None = None
        self._down_reason = ""
        self._redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
        self._claim = self._redis.register_script(_CLAIM)
        self._owner = self._redis.register_script(_OWNER)
        self._release = self._redis.register_script(_RELEASE)
        self._release_node = self._redis.register_script(_RELEASE_NODE)
        self._conferences = self._redis.register_script(_CONFERENCES)
        self._registered_aors = self._redis.register_script(_REGISTERED_AORS)
        self._add_failure = self._redis.register_script(_ADD_FAILURE)
        self._locked_for = self._redis.register_script(_LOCKED_FOR)
        self._hit = self._redis.register_script(_HIT)

    def __repr__(self) -> str:
        return f"RedisDirectory({self.where!r}, prefix={self.prefix!r})"

    # -- connection, time and errors -------------------------------------------

    def connect(self) -> None:
        """Check that Redis answers (``PING``) and measure the clock offset.

        :raises DirectoryUnavailable: it does not, naming the URL and why.
        """
        self._retry_at = 0.0  # an explicit check always tries

        def ping() -> None:
            self._redis.ping()
            if self._clock is not None:
                self._measure_offset()

        self._run("connect", ping)

    def close(self) -> None:
        """Close the connections to Redis (a later call opens them again)."""
        self._redis.close()

    @property
    def available(self) -> bool:
        """``False`` from a failed request until one succeeds again."""
        return self._down_since is None

    @property
    def clock(self) -> Callable[[], float] | None:
        """The clock the callers' ``now`` comes from (see the module documentation)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float] | None) -> None:
        self._clock = clock
        self._offset = None if clock is not None else 0.0

    def _measure_offset(self) -> None:
        """Set the offset from the callers' clock to the server's, from one ``TIME``."""
        assert self._clock is not None
        before = self._clock()
        seconds, micros = self._redis.time()
        after = self._clock()
        self._offset = seconds + micros / 1e6 - (before + after) / 2

    def _offset_now(self) -> float:
        """The offset to add to a caller's ``now`` (measured on first use)."""
        if self._offset is None:
            self._measure_offset()
        assert self._offset is not None
        return self._offset

    def _run(self, operation: str, action: Callable[[], T]) -> T:
        """Run ``action`` (which talks to Redis), turning Redis errors into
        :class:`DirectoryUnavailable` and refusing at once while Redis is
        known to be down (the circuit breaker of the module documentation).

        :param operation: what ``action`` does, for the error (``"claim conference 'x'"``).
        """
        started = time.monotonic()
        if started < self._retry_at:
            raise DirectoryUnavailable(
                self.where, operation,
                f"{self._down_reason} (next try in {self._retry_at - started:.1f} s)",
            )
        try:
            result = action()
        except redis.RedisError as exc:
            failed = time.monotonic()
            reason = str(exc) or type(exc).__name__
            if self._down_since is None:
                self._down_since = failed
                logger.error("directory %s is unavailable (%s): what needs it is refused; next try in %g s",
                             self.where, reason, self.retry_after)
            self._down_reason = reason
            self._retry_at = failed + self.retry_after
            raise DirectoryUnavailable(self.where, operation, reason) from None
        except _Unreadable as exc:
            raise DirectoryUnavailable(self.where, operation, f"unreadable value: {exc}") from None
        if self._down_since is not None:
            logger.warning("directory %s answers again after %.1f s", self.where,
                           time.monotonic() - self._down_since)
            self._down_since = None
        return result

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def _members(self, index: str) -> list[str]:
        """The members of sorted set ``P<index>``, lowest score first."""
        return [str(m) for m in self._redis.zrange(self.prefix + index, 0, -1)]

    def _transaction(self, key: str, func: Callable[[Any], T]) -> T:
        """Run ``func(pipe)`` as an optimistic transaction on ``key``; return what it returns.

        ``func`` reads through ``pipe`` (``key`` is watched), then calls
        ``pipe.multi()`` and queues its writes, or ``pipe.unwatch()`` to write
        nothing. When another client wrote ``key`` in between, nothing is
        written and ``func`` runs again on the new value. An exception from
        ``func`` (a refusal) writes nothing.
        """
        pipe: Any  # redis-py leaves Pipeline.watch untyped
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    value = func(pipe)
                    pipe.execute()
                    return value
                except redis.WatchError:
                    continue

    # -- node liveness ---------------------------------------------------------

    def heartbeat(self, node_id: str) -> None:
        """Keep ``node_id`` alive for :attr:`node_ttl` more seconds, and measure the clock offset again.

        The engine calls it every ``node_ttl / 3`` seconds; a node whose
        liveness lapses loses its conferences to the next claim.

        :param node_id: this node.
        :raises DirectoryUnavailable: Redis did not answer.
        """
        _check_str("node_id", node_id)
        key = self._key("node", node_id)
        ttl_ms = max(1, math.ceil(self.node_ttl * 1000))

        def beat() -> None:
            self._redis.set(key, "1", px=ttl_ms)
            if self._clock is not None:
                self._measure_offset()

        self._run(f"renew the liveness of node {node_id!r}", beat)

    def leave(self, node_id: str) -> list[str]:
        """Release every conference of ``node_id`` and end its liveness (a clean stop).

        :param node_id: this node.
        :returns: the released names, sorted.
        :raises DirectoryUnavailable: Redis did not answer.
        """
        _check_str("node_id", node_id)
        names = self._run(
            f"release the conferences of node {node_id!r}",
            lambda: self._release_node(keys=[self.prefix + "conferences"],
                                       args=[self.prefix + "conf:", node_id, self._key("node", node_id)]),
        )
        return sorted(names)

    # -- registrations ---------------------------------------------------------

    def _load_aor(self, pipe: Any, aor: str) -> dict[str, Binding]:
        return _decode(pipe.get(self._key("aor", aor)))

    def _store_aor(self, pipe: Any, aor: str, bindings: dict[str, Binding], now: float | None) -> None:
        """Queue the writes that store ``bindings`` (shared scale) as ``aor``'s.

        :param now: the shared time, for the key's TTL; ``None``: keep the key's TTL.
        """
        key = self._key("aor", aor)
        index = self.prefix + "aors"
        if not bindings:
            pipe.delete(key)
            pipe.zrem(index, aor)
            return
        last = max(b.expires_at for b in bindings.values())
        if now is None:
            pipe.set(key, _encode(bindings), keepttl=True)
        else:
            ttl_ms = min(_MAX_TTL_MS, max(1, math.ceil((last - now + _GC_MARGIN) * 1000)))
            pipe.set(key, _encode(bindings), px=ttl_ms)
        pipe.zadd(index, {aor: last})

    @staticmethod
    def _to_caller(binding: Binding, offset: float) -> Binding:
        return dataclasses.replace(binding, expires_at=binding.expires_at - offset) if offset else binding

    def _update(self, aor: str, updates: Sequence[ContactUpdate], now: float, call_id: str, cseq: int,
                source: Source | None) -> tuple[dict[str, Binding], float]:
        """Apply the updates atomically; return the new bindings (shared scale) and the offset used."""
        offset = self._offset_now()
        shared_now = now + offset

        def apply(pipe: Any) -> dict[str, Binding]:
            stored = self._load_aor(pipe, aor)
            live = {c: b for c, b in stored.items() if b.expires_at > shared_now}
            result = _apply_updates(aor, live, updates, now=shared_now, call_id=call_id, cseq=cseq,
                                    source=source, limit=self.max_bindings_per_aor)
            pipe.multi()
            self._store_aor(pipe, aor, result, shared_now)
            return result

        return self._transaction(self._key("aor", aor), apply), offset

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

        As :meth:`MemoryDirectory.add_binding <engine.state.directory.MemoryDirectory.add_binding>`.

        :param source: where the REGISTER came from: a tuple of ``str`` and
            ``int`` items (it is stored as JSON and returned as given).
        :raises OutOfOrder: same Call-ID and a CSeq not higher than stored.
        :raises TooManyBindings: ``aor`` is full.
        :raises DirectoryUnavailable: Redis did not answer; the binding may or may not be stored.
        """
        update = ContactUpdate(contact, expires, q)
        now = _check_register(aor, (update,), now, call_id, cseq)
        _check_source(source)
        result, offset = self._run(
            f"register {contact!r} for {aor!r}",
            lambda: self._update(aor, (update,), now, call_id, cseq, source),
        )
        binding = result.get(contact)
        return self._to_caller(binding, offset) if binding is not None and expires > 0 else None

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
        """Apply every Contact of one REGISTER, all or nothing, atomically across nodes.

        As :meth:`MemoryDirectory.update_bindings <engine.state.directory.MemoryDirectory.update_bindings>`;
        with no updates (a query) nothing is written.

        :raises OutOfOrder: nothing is changed.
        :raises TooManyBindings: nothing is changed.
        :raises DirectoryUnavailable: Redis did not answer; the change may or may not be stored.
        """
        now = _check_register(aor, updates, now, call_id, cseq)
        _check_source(source)
        if not updates:
            return self.bindings(aor, now)
        result, offset = self._run(
            f"update the bindings of {aor!r}",
            lambda: self._update(aor, updates, now, call_id, cseq, source),
        )
        return sorted((self._to_caller(b, offset) for b in result.values()), key=_q_order)

    def remove_binding(self, aor: str, contact: str) -> bool:
        """Remove one binding, whatever its Call-ID and CSeq.

        :returns: ``False`` when there was no such binding.
        :raises DirectoryUnavailable: Redis did not answer.
        """

        def remove(pipe: Any) -> bool:
            stored = self._load_aor(pipe, aor)
            if contact not in stored:
                return False
            del stored[contact]
            pipe.multi()
            self._store_aor(pipe, aor, stored, None)
            return True

        return self._run(f"remove {contact!r} of {aor!r}",
                         lambda: self._transaction(self._key("aor", aor), remove))

    def remove_all(self, aor: str, call_id: str, cseq: int, *, now: float | None = None) -> int:
        """Remove every binding of ``aor`` (``Contact: *``, RFC 3261 section 10.3, step 6).

        As :meth:`MemoryDirectory.remove_all <engine.state.directory.MemoryDirectory.remove_all>`.

        :raises OutOfOrder: nothing is removed.
        :raises DirectoryUnavailable: Redis did not answer; the bindings may or may not be removed.
        """
        _check_str("call_id", call_id)
        _check_cseq(cseq)
        checked = None if now is None else _check_number("now", now)

        def remove(pipe: Any, shared_now: float | None) -> int:
            stored = self._load_aor(pipe, aor)
            if shared_now is not None:
                stored = {c: b for c, b in stored.items() if b.expires_at > shared_now}
            _check_remove_all(aor, stored.values(), call_id, cseq)
            pipe.multi()
            self._store_aor(pipe, aor, {}, None)
            return len(stored)

        def transaction() -> int:
            shared_now = None if checked is None else checked + self._offset_now()
            return self._transaction(self._key("aor", aor), lambda pipe: remove(pipe, shared_now))

        return self._run(f"remove the bindings of {aor!r}", transaction)

    def bindings(self, aor: str, now: float) -> list[Binding]:
        """Return the bindings of ``aor`` alive at ``now``, highest ``q`` first, then by first registration.

        :raises DirectoryUnavailable: Redis did not answer.
        """
        now = _check_number("now", now)

        def read() -> list[Binding]:
            offset = self._offset_now()
            shared_now = now + offset
            stored = _decode(self._redis.get(self._key("aor", aor)))
            return [self._to_caller(b, offset) for b in stored.values() if b.expires_at > shared_now]

        return sorted(self._run(f"read the bindings of {aor!r}", read), key=_q_order)

    def registered_aors(self, now: float) -> list[str]:
        """Return every address-of-record with a binding alive at ``now``, sorted.

        Those whose last binding lapsed are forgotten on the way.

        :raises DirectoryUnavailable: Redis did not answer.
        """
        now = _check_number("now", now)
        aors: list[str] = self._run(
            "list the registered addresses-of-record",
            lambda: self._registered_aors(keys=[self.prefix + "aors"],
                                          args=[repr(now + self._offset_now()), self.prefix + "aor:"]),
        )
        return sorted(aors)

    # -- conference ownership ----------------------------------------------------

    def claim_conference(self, name: str, node_id: str, session_id: str) -> tuple[str, str]:
        """Claim conference ``name`` for a session unless a live node's session has it.

        Atomic across nodes (one script). The claim also keeps ``node_id``
        alive for :attr:`node_ttl` seconds, as a :meth:`heartbeat` does.

        :returns: the owner ``(node_id, session_id)``: the caller's own when
            the claim succeeded, else the existing owner's.
        :raises DirectoryUnavailable: Redis did not answer.
        """
        _check_str("name", name)
        _check_str("node_id", node_id)
        _check_str("session_id", session_id)
        ttl_ms = max(1, math.ceil(self.node_ttl * 1000))
        owner = self._run(
            f"claim conference {name!r}",
            lambda: self._claim(keys=[self._key("conf", name), self.prefix + "conferences",
                                      self._key("node", node_id)],
                                args=[self.prefix + "node:", name, node_id, session_id, ttl_ms]),
        )
        return str(owner[0]), str(owner[1])

    def conference_owner(self, name: str) -> tuple[str, str] | None:
        """Return the owner ``(node_id, session_id)`` of ``name``, or ``None``.

        A claim whose node's liveness has lapsed is no owner (and is dropped).

        :raises DirectoryUnavailable: Redis did not answer.
        """
        owner = self._run(
            f"look up conference {name!r}",
            lambda: self._owner(keys=[self._key("conf", name), self.prefix + "conferences"],
                                args=[self.prefix + "node:", name]),
        )
        return None if owner is None else (str(owner[0]), str(owner[1]))

    def release_conference(self, name: str, session_id: str) -> bool:
        """Release conference ``name``, only if ``session_id`` owns it.

        :returns: whether the claim was released.
        :raises DirectoryUnavailable: Redis did not answer.
        """
        released = self._run(
            f"release conference {name!r}",
            lambda: self._release(keys=[self._key("conf", name), self.prefix + "conferences"],
                                  args=[name, session_id]),
        )
        return bool(released)

    def release_node(self, node_id: str) -> list[str]:
        """Release every conference owned by ``node_id`` (its liveness is left alone; see :meth:`leave`).

        :returns: the released names, sorted.
        :raises DirectoryUnavailable: Redis did not answer.
        """
        names = self._run(
            f"release the conferences of node {node_id!r}",
            lambda: self._release_node(keys=[self.prefix + "conferences"],
                                       args=[self.prefix + "conf:", node_id, ""]),
        )
        return sorted(names)

    def _live_conferences(self) -> tuple[int, dict[str, tuple[str, str]]]:
        dropped, flat = self._conferences(keys=[self.prefix + "conferences"],
                                          args=[self.prefix + "conf:", self.prefix + "node:"])
        claims = {flat[i]: (flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)}
        return int(dropped), claims

    def conferences(self) -> dict[str, tuple[str, str]]:
        """Return every live claim, name to ``(node_id, session_id)``.

        :raises DirectoryUnavailable: Redis did not answer.
        """
        return self._run("list the conferences", self._live_conferences)[1]

    # -- rate limiting and bans: per process, unless asked -------------------------

    def hit(self, key: str, now: float, *, rate: float, burst: int, shared: bool = False) -> bool:
        """Take one token from the bucket of ``key``: this process's (:attr:`local`), or with
        ``shared`` the one bucket of every node, in Redis.

        See :meth:`MemoryDirectory.hit <engine.state.directory.MemoryDirectory.hit>`.
        ``shared`` costs a round trip: for low-rate limits (dial-outs per
        hour, a scenario's ``rate_limit``), never per datagram.

        :raises DirectoryUnavailable: (``shared`` only) Redis did not answer.
        """
        if not shared:
            return self.local.hit(key, now, rate=rate, burst=burst)
        now = _check_number("now", now)
        _check_bucket(rate, burst)
        allowed = self._run(
            f"take a token of {key!r}",
            lambda: self._hit(keys=[self._key("bucket", key)],
                              args=[repr(now + self._offset_now()), repr(float(rate)), burst,
                                    math.ceil(_GC_MARGIN * 1000), _MAX_TTL_MS]),
        )
        return bool(allowed)

    def ban(self, key: str, until: float) -> None:
        """Ban ``key`` until ``until``, in this process only (:attr:`local`)."""
        self.local.ban(key, until)

    def unban(self, key: str) -> bool:
        """Lift this process's ban of ``key``; ``False`` when there was none."""
        return self.local.unban(key)

    def is_banned(self, key: str, now: float) -> bool:
        """Whether this process bans ``key`` at ``now``."""
        return self.local.is_banned(key, now)

    # -- failed logins: shared -----------------------------------------------------

    def locked_for(self, key: str, now: float) -> float:
        """Seconds ``key`` stays locked out, counting the failures of every node (0.0: it may try).

        :raises DirectoryUnavailable: Redis did not answer.
        """
        now = _check_number("now", now)
        left = self._run(
            f"read the failures of {key!r}",
            lambda: self._locked_for(keys=[self._key("fail", key)], args=[repr(now + self._offset_now())]),
        )
        return float(left)

    def add_failure(self, key: str, now: float, *, free: int, base: float, cap: float,
                    forget: float) -> float:
        """Count one failure of ``key``, atomically with the other nodes' failures.

        The lockouts are :meth:`MemoryDirectory.add_failure
        <engine.state.directory.MemoryDirectory.add_failure>`'s; the count
        is kept in Redis until forgotten (its key's TTL), so memory is
        bounded by the rate of distinct failing keys times ``forget``.

        :returns: the seconds of lockout this failure started (0.0: none).
        :raises DirectoryUnavailable: Redis did not answer; the failure may or may not be counted.
        """
        now = _check_number("now", now)
        if type(free) is not int or free < 1:
            raise ValueError(f"free must be a positive integer, not {free!r}")
        for field, value in (("base", base), ("cap", cap), ("forget", forget)):
            _check_number(field, value)
        lock = self._run(
            f"count a failure of {key!r}",
            lambda: self._add_failure(
                keys=[self._key("fail", key)],
                args=[repr(now + self._offset_now()), free, repr(float(base)), repr(float(cap)),
                      repr(float(forget)), math.ceil(_GC_MARGIN * 1000), _MAX_TTL_MS],
            ),
        )
        return float(lock)

    def clear_failures(self, key: str) -> bool:
        """Forget the failures of ``key`` on every node (a successful login).

        :returns: ``False`` when none were counted.
        :raises DirectoryUnavailable: Redis did not answer.
        """
        deleted = self._run(f"clear the failures of {key!r}", lambda: self._redis.delete(self._key("fail", key)))
        return bool(deleted)

    # -- housekeeping ----------------------------------------------------------------

    def prune(self, now: float) -> int:
        """Forget what no longer matters at ``now``; return how many entries.

        Locally: refilled buckets and lapsed bans. In Redis: lapsed bindings
        (every address-of-record is read, and one transaction rewrites each
        that has some: call it from a timer, not per request) and claims of
        nodes that are gone. Failure counters and shared buckets need no
        pruning: their keys' TTLs end them.

        :raises DirectoryUnavailable: Redis did not answer.
        """
        now = _check_number("now", now)
        dropped = self.local.prune(now)

        def prune_shared() -> int:
            shared_now = now + self._offset_now()
            count = 0

            def drop_lapsed(pipe: Any, aor: str) -> int:
                stored = self._load_aor(pipe, aor)
                live = {c: b for c, b in stored.items() if b.expires_at > shared_now}
                if len(live) == len(stored) and stored:
                    pipe.unwatch()
                    return 0
                pipe.multi()
                self._store_aor(pipe, aor, live, shared_now)
                return len(stored) - len(live)

            aors = self._members("aors")
            values: list[object] = list(self._redis.mget([self._key("aor", a) for a in aors])) if aors else []
            for aor, value in zip(aors, values):
                bindings = _decode(value)
                if not bindings or any(b.expires_at <= shared_now for b in bindings.values()):
                    count += self._transaction(self._key("aor", aor), lambda pipe: drop_lapsed(pipe, aor))
            return count + self._live_conferences()[0]

        return dropped + self._run("prune", prune_shared)

    def stats(self) -> DirectoryStats:
        """Return the sizes of what is tracked: in Redis (expired entries not
        yet pruned included), and this process's rate keys and bans.

        :raises DirectoryUnavailable: Redis did not answer.
        """

        def count() -> tuple[int, int, int]:
            aors = self._members("aors")
            values: list[object] = list(self._redis.mget([self._key("aor", a) for a in aors])) if aors else []
            bindings = sum(len(_decode(v)) for v in values)
            return len(aors), bindings, int(self._redis.scard(self.prefix + "conferences"))

        aors, bindings, conferences = self._run("count the directory's entries", count)
        local = self.local.stats()
        return DirectoryStats(aors=aors, bindings=bindings, conferences=conferences,
                              rate_keys=local.rate_keys, bans=local.bans)
