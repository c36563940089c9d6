"""Password hashing: scrypt in the PHC string form, and SIP digest HA1 values.

A password is stored as a salted scrypt hash (:func:`hashlib.scrypt`, a random
16-byte salt per user) in the PHC string form
``$scrypt$ln=14,r=8,p=1$<salt>$<hash>``: the cost parameters travel with the
hash, so they can be raised later (:class:`ScryptParams`). The store compares
in constant time, spends the same work on unknown users, and rehashes with its
current parameters after a successful check when the stored ones differ.

For the SIP registrar's digest authentication (RFC 7616 section 3.4.2;
RFC 3261 section 22.4), ``HA1 = H(username ":" realm ":" password)`` is kept
for MD5 and SHA-256 (:func:`digest_ha1`, :data:`HA1_ALGORITHMS`); see
:mod:`engine.state.store.users` for which users keep them.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

from engine.state.store.errors import InvalidValue

__all__ = [
    "GUEST_HASH",
    "HA1_ALGORITHMS",
    "ScryptParams",
    "digest_ha1",
    "hash_password",
    "parse_hash",
    "scrypt",
]

#: Digest algorithms :meth:`~engine.state.store.Store.sip_ha1` answers for (RFC 7616 section 3.4.2).
HA1_ALGORITHMS = ("MD5", "SHA-256")

#: The password hash of a user made by :meth:`~engine.state.store.SqliteStore.create_guest`: no
#: scrypt string (it has no ``$``), so no password ever matches it.
GUEST_HASH = "!guest"


@dataclass(frozen=True)
class ScryptParams:
    """Cost parameters of :func:`hashlib.scrypt` for new password hashes.

    The defaults (N = 2**14, r = 8, p = 1, 32-byte key; 16 MiB, about 50 ms)
    follow Django's scrypt hasher. Raise them here; old hashes are upgraded
    at the user's next successful :meth:`~engine.state.store.SqliteStore.verify_password`.

    :param log2_n: base-2 logarithm of the CPU/memory cost N (1-24).
    :param r: block size (1-64).
    :param p: parallelism (1-16).
    """

    log2_n: int = 14
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        for field, value, low, high in (
            ("log2_n", self.log2_n, 1, 24),
            ("r", self.r, 1, 64),
            ("p", self.p, 1, 16),
        ):
            if type(value) is not int or not low <= value <= high:
                raise InvalidValue(f"scrypt {field}", f"must be an integer from {low} to {high}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def scrypt(password: str, salt: bytes, params: ScryptParams, dklen: int) -> bytes:
    """The ``dklen``-byte scrypt key of ``password`` with ``salt`` at the cost ``params``."""
    n = 1 << params.log2_n
    # scrypt needs 128 * r * (N + p) bytes; leave headroom over OpenSSL's 32 MiB default.
    maxmem = 128 * params.r * (n + params.p) + (16 << 20)
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=params.r, p=params.p, dklen=dklen,
        maxmem=maxmem,
    )


def hash_password(password: str, params: ScryptParams) -> str:
    """A new PHC scrypt string for ``password`` with a fresh random salt; slow by design."""
    salt = secrets.token_bytes(16)
    digest = scrypt(password, salt, params, 32)
    return f"$scrypt$ln={params.log2_n},r={params.r},p={params.p}${_b64(salt)}${_b64(digest)}"


def parse_hash(encoded: str) -> tuple[ScryptParams, bytes, bytes]:
    """Split a PHC scrypt string; :raises ValueError: when it is malformed."""
    empty, scheme, settings, salt, digest = encoded.split("$")
    if empty or scheme != "scrypt":
        raise ValueError(f"unknown password hash scheme {scheme!r}")
    fields = dict(item.split("=", 1) for item in settings.split(","))
    params = ScryptParams(int(fields["ln"]), int(fields["r"]), int(fields["p"]))
    return params, _unb64(salt), _unb64(digest)


def digest_ha1(algorithm: str, name: str, realm: str, password: str) -> str:
    """Hex ``H(name ":" realm ":" password)`` for ``MD5`` or ``SHA-256`` (RFC 7616 section 3.4.2)."""
    hash_name = "md5" if algorithm == "MD5" else "sha256"
    data = f"{name}:{realm}:{password}".encode("utf-8")
    return hashlib.new(hash_name, data, usedforsecurity=False).hexdigest()
