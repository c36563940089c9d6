"""Unpredictable identifiers for every call: tags, branches, Call-IDs,
session and call ids, SSRCs, CNAMEs.

The :mod:`secrets` functions read ``os.urandom`` once per value: a system
call for each of the dozen or so values a call draws (about 3% of a call's
CPU at hundreds of calls a second). These functions read the same source,
``os.urandom``, 4 KiB at a time, and hand out each byte once. Nothing is
reused or derived: the values are as unpredictable as :mod:`secrets`'.

A forked child starts with an empty pool (``os.register_at_fork``), so a
parent and its child never hand out the same bytes. Safe to call from
threads without a lock: the pool is an :class:`io.BytesIO` whose ``read``
runs in C under the interpreter lock, so two readers never get the same
bytes, and a thread that refills an emptied pool replaces it whole.
Long-lived secrets (API keys, invite tokens, SRTP master keys, digest
nonces) keep using :mod:`secrets` directly.
"""

from __future__ import annotations

import base64
import io
import os

__all__ = ["token_bytes", "token_hex", "token_urlsafe", "randbits", "randbelow"]

_POOL_SIZE = 4096
_pool = io.BytesIO()


def _reset() -> None:
    global _pool
    _pool = io.BytesIO()


os.register_at_fork(after_in_child=_reset)


def token_bytes(nbytes: int) -> bytes:
    """``nbytes`` random bytes (as :func:`secrets.token_bytes`)."""
    global _pool
    if nbytes > _POOL_SIZE // 4:
        return os.urandom(nbytes)
    out = _pool.read(nbytes)
    if len(out) < nbytes:  # the rest of a pool is dropped, never handed out again
        pool = _pool = io.BytesIO(os.urandom(_POOL_SIZE))
        out = pool.read(nbytes)
    return out


def token_hex(nbytes: int) -> str:
    """``2 * nbytes`` hex digits (as :func:`secrets.token_hex`)."""
    return token_bytes(nbytes).hex()


def token_urlsafe(nbytes: int) -> str:
    """``nbytes`` random bytes in unpadded URL-safe base64 (as :func:`secrets.token_urlsafe`)."""
    return base64.urlsafe_b64encode(token_bytes(nbytes)).rstrip(b"=").decode("ascii")


def randbits(k: int) -> int:
    """A random integer of ``k`` bits (as :func:`secrets.randbits`)."""
    if k <= 0:
        raise ValueError("number of bits must be greater than zero")
    nbytes = (k + 7) // 8
    return int.from_bytes(token_bytes(nbytes), "big") >> (nbytes * 8 - k)


def randbelow(n: int) -> int:
    """A random integer in ``[0, n)``, without modulo bias (as :func:`secrets.randbelow`)."""
    if n <= 0:
        raise ValueError("upper bound must be positive")
    k = n.bit_length()
    while True:
        r = randbits(k)
        if r < n:
            return r
