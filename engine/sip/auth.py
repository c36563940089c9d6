"""SIP digest authentication, client and server side (RFC 3261 section 22).

The computations follow RFC 2617 section 3.2.2 and RFC 7616 section 3.4;
RFC 8760 adds SHA-256 (and SHA-512/256, not supported here) to SIP.  Both
plain and ``-sess`` variants of MD5 and SHA-256 are supported, with
``qop=auth``, ``qop=auth-int`` and the legacy RFC 2069 form without ``qop``.

Everything here works on header *values*: the caller takes the value of a
``WWW-Authenticate``/``Proxy-Authenticate`` or ``Authorization``/
``Proxy-Authorization`` header out of a message and hands it in, and puts the
strings we return back into one.  Nothing here reads a clock: the current time
is always the ``now`` argument.

Theory of operation, server side (:class:`DigestServer`): nonces are
stateless, ``base64url(timestamp | salt | HMAC(secret, timestamp | salt |
realm))``, so a forged nonce is detected by its MAC and an expired one by its
timestamp without remembering issued nonces.  The only state is a bounded LRU
map ``nonce -> highest nc seen`` used to reject replayed nonce-counts
(RFC 7616 section 3.4.5).  When a nonce falls out of that map its timestamp
becomes a watermark: an untracked nonce issued at or before the watermark may
have been evicted, so it is reported as stale (the client simply retries with a
fresh nonce) instead of letting its old nonce-counts be replayed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from engine.sip.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ALGORITHMS",
    "AuthFailure",
    "AuthResult",
    "Challenge",
    "ClientAuthSession",
    "Credentials",
    "DigestServer",
    "Lookup",
    "answer_challenge",
    "choose_challenge",
    "compute_ha1",
    "compute_response",
    "parse_challenge",
    "parse_credentials",
]

#: Supported algorithms, strongest first (RFC 8760 section 2.4 orders
#: challenges by preference).
ALGORITHMS: Final = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")
_CANONICAL: Final = {name.upper(): name for name in ALGORITHMS}
_HASHLIB_NAME: Final = {"MD5": "md5", "SHA-256": "sha256"}
_STRENGTH: Final = {"SHA-256": 0, "SHA-256-sess": 0, "MD5": 1, "MD5-sess": 1}
_QOPS: Final = ("auth", "auth-int")

#: Why :meth:`DigestServer.verify` refused credentials.
AuthFailure = Literal[
    "malformed",
    "realm mismatch",
    "unsupported algorithm",
    "unsupported qop",
    "uri mismatch",
    "bad nonce",
    "unknown user",
    "wrong password",
    "stale nonce",
    "nc replay",
]

#: ``(username, realm, algorithm) -> password or HA1``, ``None`` if unknown.
Lookup = Callable[[str, str, str], str | None]

# RFC 3261 section 25.1: token characters.
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Lenient unquoted value: anything up to whitespace, comma or quote.
_UNQUOTED_RE: Final = re.compile(r'[^\s,"\x00-\x1f\x7f]+')
# Controls that may not appear in a quoted-string (RFC 3261 section 25.1).
_CTL_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NC_RE: Final = re.compile(r"[0-9a-f]{8}")
_NONCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_WS: Final = " \t"


# -- computations (RFC 2617 section 3.2.2, RFC 7616 section 3.4) -----------


def _canonical_algorithm(name: str) -> str | None:
    return _CANONICAL.get(name.upper())


def _h(algorithm: str, data: str | bytes) -> str:
    """H(data) as lowercase hex, with the hash of ``algorithm``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    base = algorithm.removesuffix("-sess")
    return hashlib.new(_HASHLIB_NAME[base], data).hexdigest()


def _require_algorithm(algorithm: str) -> str:
    canonical = _canonical_algorithm(algorithm)
    if canonical is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return canonical


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """Return ``H(username:realm:password)`` (RFC 7616 section 3.4.2).

    This is what a server may store instead of the password.  For a ``-sess``
    algorithm it is the same value as for the plain one: the session key is
    derived from it per request by :func:`compute_response`.

    :param algorithm: one of :data:`ALGORITHMS`, case-insensitive.
    :raises ValueError: for an unsupported algorithm.
    """
    return _h(_require_algorithm(algorithm), f"{username}:{realm}:{password}")


def compute_response(
    ha1: str,
    *,
    algorithm: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: int | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """Return the ``response`` value (RFC 2617 section 3.2.2.1).

    :param ha1: :func:`compute_ha1` of the user.
    :param qop: ``"auth"``, ``"auth-int"`` or ``None`` for the RFC 2069 form.
    :param nc: nonce-count, required with ``qop``.
    :param cnonce: client nonce, required with ``qop`` and ``-sess``.
    :param body: the message body, hashed for ``qop=auth-int``.
    :raises ValueError: for an unsupported algorithm or qop, or a missing
        ``nc``/``cnonce``.
    """
    algorithm = _require_algorithm(algorithm)
    if algorithm.endswith("-sess"):
        # RFC 7616 section 3.4.2: A1 = H(user:realm:pass):nonce:cnonce
        if cnonce is None:
            raise ValueError(f"{algorithm} needs a cnonce")
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    # RFC 7616 section 3.4.3
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + _h(algorithm, body)
    elif qop not in (None, "auth"):
        raise ValueError(f"unsupported qop {qop!r}")
    ha2 = _h(algorithm, a2)
    if qop is None:
        # RFC 2617 section 3.2.2.1, compatibility with RFC 2069
        return _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise ValueError("qop needs nc and cnonce")
    # RFC 7616 section 3.4.1: KD(H(A1), nonce:nc:cnonce:qop:H(A2))
    return _h(algorithm, f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


# -- header values (RFC 3261 section 25.1, challenge / credentials) ----------


def _skip_ws(value: str, pos: int) -> int:
    while pos < len(value) and value[pos] in _WS:
        pos += 1
    return pos


def _read_quoted(value: str, start: int, what: str) -> tuple[str, int]:
    """Read the quoted-string opening at ``start``; return (text, end)."""
    out: list[str] = []
    pos = start + 1
    while pos < len(value):
        char = value[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\":
            pos += 1
            if pos == len(value):
                break
            char = value[pos]
        if _CTL_RE.match(char):
            raise RemoteProtocolError(f"{what}: control character at offset {pos}")
        out.append(char)
        pos += 1
    raise RemoteProtocolError(f"{what}: unterminated quoted string at offset {start}")


def _parse_params(value: str, what: str) -> dict[str, str]:
    """Parse ``Digest name=value, ...`` into lowercased name -> unquoted value."""
    pos = _skip_ws(value, 0)
    match = _TOKEN_RE.match(value, pos)
    if match is None:
        raise RemoteProtocolError(f"{what}: missing scheme")
    if match.group().lower() != "digest":
        raise RemoteProtocolError(f"{what}: unsupported scheme {match.group()!r}")
    pos = match.end()
    if pos < len(value) and value[pos] not in _WS:
        raise RemoteProtocolError(f"{what}: expected space after scheme at offset {pos}")
    params: dict[str, str] = {}
    while True:
        # Empty list elements are allowed (RFC 3261 section 7.3.1, "#" rule).
        while (pos := _skip_ws(value, pos)) < len(value) and value[pos] == ",":
            pos += 1
        if pos == len(value):
            return params
        match = _TOKEN_RE.match(value, pos)
        if match is None:
            raise RemoteProtocolError(f"{what}: expected parameter name at offset {pos}")
        name = match.group().lower()
        pos = _skip_ws(value, match.end())
        if pos == len(value) or value[pos] != "=":
            raise RemoteProtocolError(f"{what}: expected '=' after {name!r}")
        pos = _skip_ws(value, pos + 1)
        if pos < len(value) and value[pos] == '"':
            text, pos = _read_quoted(value, pos, what)
        else:
            match = _UNQUOTED_RE.match(value, pos)
            if match is None:
                raise RemoteProtocolError(f"{what}: missing value for {name!r}")
            text, pos = match.group(), match.end()
        if name in params:
            raise RemoteProtocolError(f"{what}: duplicate parameter {name!r}")
        params[name] = text
        pos = _skip_ws(value, pos)
        if pos < len(value) and value[pos] != ",":
            raise RemoteProtocolError(f"{what}: expected ',' at offset {pos}")


def _pop_required(params: dict[str, str], name: str, what: str) -> str:
    try:
        return params.pop(name)
    except KeyError:
        raise RemoteProtocolError(f"{what}: missing {name!r}") from None


def _quote(value: str) -> str:
    if _CTL_RE.search(value):
        raise LocalProtocolError(f"control character in digest parameter {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _token_or_quote(value: str) -> str:
    return value if _TOKEN_RE.fullmatch(value) else _quote(value)


def _serialize(items: Sequence[tuple[str, str]]) -> str:
    return "Digest " + ", ".join(f"{name}={text}" for name, text in items)


@dataclass(frozen=True)
class Challenge:
    """A digest challenge, the value of ``WWW-Authenticate`` or
    ``Proxy-Authenticate`` (RFC 3261 section 22.1, RFC 7616 section 3.3).

    :param algorithm: canonical name if supported (``"SHA-256"``), otherwise
        as the peer sent it; ``"MD5"`` when absent (RFC 2617 section 3.2.1).
    :param qop: offered qop values, lowercased; empty for the RFC 2069 form.
    :param params: other parameters (e.g. ``domain``), always re-sent quoted.
    """

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    params: tuple[tuple[str, str], ...] = ()

    def to_header(self) -> str:
        """Serialize as a header value.

        :raises LocalProtocolError: if a value contains a control character.
        """
        items = [("realm", _quote(self.realm)), ("nonce", _quote(self.nonce))]
        if self.opaque is not None:
            items.append(("opaque", _quote(self.opaque)))
        if self.stale:
            items.append(("stale", "TRUE"))
        items.append(("algorithm", _token_or_quote(self.algorithm)))
        if self.qop:
            items.append(("qop", _quote(",".join(self.qop))))
        items.extend((name, _quote(text)) for name, text in self.params)
        return _serialize(items)


@dataclass(frozen=True)
class Credentials:
    """Digest credentials, the value of ``Authorization`` or
    ``Proxy-Authorization`` (RFC 3261 section 22.2, RFC 7616 section 3.4).

    :param nc: nonce-count, sent as 8 lowercase hex digits.
    :param params: other parameters, always re-sent quoted.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: int | None = None
    params: tuple[tuple[str, str], ...] = ()

    def to_header(self) -> str:
        """Serialize as a header value.

        :raises LocalProtocolError: if a value contains a control character.
        """
        items = [
            ("username", _quote(self.username)),
            ("realm", _quote(self.realm)),
            ("nonce", _quote(self.nonce)),
            ("uri", _quote(self.uri)),
            ("response", _quote(self.response)),
            ("algorithm", _token_or_quote(self.algorithm)),
        ]
        if self.cnonce is not None:
            items.append(("cnonce", _quote(self.cnonce)))
        if self.opaque is not None:
            items.append(("opaque", _quote(self.opaque)))
        if self.qop is not None:
            items.append(("qop", _token_or_quote(self.qop)))
        if self.nc is not None:
            items.append(("nc", f"{self.nc:08x}"))
        items.extend((name, _quote(text)) for name, text in self.params)
        return _serialize(items)


def parse_challenge(value: str) -> Challenge:
    """Parse a ``WWW-Authenticate``/``Proxy-Authenticate`` header value.

    Scheme and parameter names are case-insensitive; values may be tokens or
    quoted strings with backslash escapes.

    :raises RemoteProtocolError: if the value is not a well-formed digest
        challenge with ``realm`` and ``nonce``.
    """
    what = "Digest challenge"
    params = _parse_params(value, what)
    realm = _pop_required(params, "realm", what)
    nonce = _pop_required(params, "nonce", what)
    algorithm = params.pop("algorithm", "MD5")
    qop = params.pop("qop", None)
    return Challenge(
        realm=realm,
        nonce=nonce,
        algorithm=_canonical_algorithm(algorithm) or algorithm,
        qop=() if qop is None else tuple(q.strip().lower() for q in qop.split(",") if q.strip()),
        opaque=params.pop("opaque", None),
        # RFC 2617 section 3.2.1: anything but TRUE means false.
        stale=params.pop("stale", "").lower() == "true",
        params=tuple(params.items()),
    )


def parse_credentials(value: str) -> Credentials:
    """Parse an ``Authorization``/``Proxy-Authorization`` header value.

    :raises RemoteProtocolError: if a required parameter is missing
        (``username``, ``realm``, ``nonce``, ``uri``, ``response``, and
        ``cnonce`` and ``nc`` when ``qop`` is present) or malformed.
    """
    what = "Digest credentials"
    params = _parse_params(value, what)
    username, realm, nonce, uri, response = (
        _pop_required(params, name, what) for name in ("username", "realm", "nonce", "uri", "response")
    )
    algorithm = params.pop("algorithm", "MD5")
    qop = params.pop("qop", None)
    nc_text = params.pop("nc", None)
    cnonce = params.pop("cnonce", None)
    if qop is not None:
        qop = qop.lower()
        # RFC 2617 section 3.2.2: cnonce and nc MUST be sent with qop.
        if cnonce is None:
            raise RemoteProtocolError(f"{what}: qop without 'cnonce'")
        if nc_text is None:
            raise RemoteProtocolError(f"{what}: qop without 'nc'")
    if nc_text is not None and not _NC_RE.fullmatch(nc_text):
        raise RemoteProtocolError(f"{what}: 'nc' must be 8 lowercase hex digits")
    return Credentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response,
        algorithm=_canonical_algorithm(algorithm) or algorithm,
        cnonce=cnonce,
        opaque=params.pop("opaque", None),
        qop=qop,
        nc=None if nc_text is None else int(nc_text, 16),
        params=tuple(params.items()),
    )


# -- client (RFC 3261 section 22.2, 22.3) ------------------------------------


def _pick_qop(challenge: Challenge) -> str | None:
    """Pick ``auth`` over ``auth-int``; ``None`` for the RFC 2069 form."""
    if not challenge.qop:
        return None
    for qop in _QOPS:
        if qop in challenge.qop:
            return qop
    raise RemoteProtocolError(f"No supported qop in {','.join(challenge.qop)!r}")


def _usable(challenge: Challenge) -> str | None:
    """Return why we cannot answer ``challenge``, or ``None`` if we can."""
    algorithm = _canonical_algorithm(challenge.algorithm)
    if algorithm is None:
        return f"unsupported algorithm {challenge.algorithm!r}"
    try:
        qop = _pick_qop(challenge)
    except RemoteProtocolError as exc:
        return str(exc)
    if qop is None and algorithm.endswith("-sess"):
        return f"{algorithm} without qop"
    return None


def choose_challenge(values: Sequence[str]) -> Challenge:
    """Pick the strongest challenge we can answer (RFC 8760 section 2.4).

    Ties go to the earliest value (the server's order of preference).  Values
    that are malformed, of another scheme or with an unsupported algorithm
    or qop are skipped.  Challenges of different realms are not grouped:
    group by realm first if a forked response challenges for several.

    :param values: the values of all ``WWW-Authenticate`` (or all
        ``Proxy-Authenticate``) headers of one response.
    :raises RemoteProtocolError: if none is usable; the message says why.
    """
    best: Challenge | None = None
    problems: list[str] = []
    for value in values:
        try:
            challenge = parse_challenge(value)
        except RemoteProtocolError as exc:
            problems.append(str(exc))
            continue
        problem = _usable(challenge)
        if problem is not None:
            problems.append(problem)
        elif best is None or _STRENGTH[challenge.algorithm] < _STRENGTH[best.algorithm]:
            best = challenge
    if best is None:
        raise RemoteProtocolError("No usable digest challenge: " + ("; ".join(problems) or "none given"))
    return best


def answer_challenge(
    challenge: Challenge,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str | None = None,
    nc: int = 1,
    body: bytes = b"",
) -> Credentials:
    """Compute credentials answering ``challenge`` (RFC 3261 section 22.2).

    Uses ``qop=auth`` when offered, else ``auth-int``; without any ``qop`` it
    answers in the RFC 2069 form (no ``cnonce``/``nc``).

    :param method: the method of the request being authorized.
    :param uri: the Request-URI of that request, as it will be sent.
    :param cnonce: client nonce; random when ``None``.
    :param nc: nonce-count, ``1`` for the first use of this nonce.
    :param body: the request body, used for ``qop=auth-int`` only.
    :raises RemoteProtocolError: if the challenge's algorithm or qop is not
        supported.
    :raises ValueError: if ``nc`` is out of range.
    """
    problem = _usable(challenge)
    if problem is not None:
        raise RemoteProtocolError(f"Cannot answer digest challenge: {problem}")
    algorithm = _require_algorithm(challenge.algorithm)
    qop = _pick_qop(challenge)
    nc_value: int | None = None
    if qop is None:
        cnonce = None
    else:
        if not 1 <= nc <= 0xFFFFFFFF:
            raise ValueError(f"nc out of range: {nc}")
        nc_value = nc
        if cnonce is None:
            cnonce = secrets.token_hex(8)
    response = compute_response(
        compute_ha1(username, challenge.realm, password, algorithm),
        algorithm=algorithm,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc_value,
        cnonce=cnonce,
        body=body,
    )
    return Credentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=algorithm,
        cnonce=cnonce,
        opaque=challenge.opaque,
        qop=qop,
        nc=nc_value,
    )


class ClientAuthSession:
    """One identity's cached challenges, re-used across requests with an
    increasing nonce-count (RFC 3261 section 22.3, RFC 7616 section 3.4).

    Feed every 401/407's challenge values to :meth:`on_challenge`, then call
    :meth:`authorize` for the retried request and for later ones to the same
    realm.  Use one session for ``WWW-Authenticate`` and another for
    ``Proxy-Authenticate`` since they answer in different headers.

    :param username: the user name for every realm.
    :param password: the password for every realm.
    """

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._password = password
        # realm -> (latest challenge, last nc sent for its nonce)
        self._realms: dict[str, tuple[Challenge, int]] = {}

    @property
    def realms(self) -> list[str]:
        """The realms we hold a challenge for."""
        return list(self._realms)

    def on_challenge(self, values: Sequence[str]) -> Challenge:
        """Choose and remember a challenge; the nonce-count restarts when
        the nonce changes.

        A challenge without ``stale=TRUE`` for a nonce we already answered
        means the password was refused: check ``Challenge.stale`` before
        retrying, to avoid a loop.

        :raises RemoteProtocolError: as :func:`choose_challenge`.
        """
        challenge = choose_challenge(values)
        previous = self._realms.get(challenge.realm)
        nc = previous[1] if previous is not None and previous[0].nonce == challenge.nonce else 0
        self._realms[challenge.realm] = (challenge, nc)
        return challenge

    def authorize(self, realm: str, *, method: str, uri: str, body: bytes = b"") -> Credentials:
        """Credentials for a request to ``realm``, with the next nonce-count.

        :raises LocalProtocolError: if no challenge for ``realm`` was seen.
        """
        try:
            challenge, nc = self._realms[realm]
        except KeyError:
            raise LocalProtocolError(f"no digest challenge for realm {realm!r}") from None
        self._realms[realm] = (challenge, nc + 1)
        return answer_challenge(
            challenge,
            method=method,
            uri=uri,
            username=self.username,
            password=self._password,
            nc=nc + 1,
            body=body,
        )


# -- server (RFC 3261 section 22.4) ------------------------------------------


@dataclass(frozen=True)
class AuthResult:
    """Outcome of :meth:`DigestServer.verify`.

    :param ok: whether the request is authenticated.
    :param reason: why not, when ``ok`` is false.  ``"stale nonce"`` means
        the response was right for an old nonce: challenge again with
        ``stale=True``.  ``"malformed"`` warrants a 400.
    :param username: the claimed user, when the credentials parsed.
    :param credentials: the parsed credentials, when they parsed.
    :param detail: the parse error for ``"malformed"``.
    """

    ok: bool
    reason: AuthFailure | None = None
    username: str | None = None
    credentials: Credentials | None = None
    detail: str = ""


_NONCE_PAYLOAD: Final = struct.Struct(">d8s")  # timestamp, salt
_MAC_SIZE: Final = 16


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class DigestServer:
    """Issue digest challenges and verify credentials for one realm.

    :param realm: the realm, e.g. the domain (RFC 3261 section 22.1).
    :param secret: HMAC key signing nonces; keep it private and share it
        between instances that must accept each other's nonces.
    :param algorithms: algorithms to offer; challenged strongest first.
    :param nonce_ttl: seconds a nonce stays valid.
    :param qop: qop values to offer; ``auth-int`` requires passing the body to
        :meth:`verify`.
    :param allow_legacy: accept RFC 2069 credentials without ``qop``, which
        RFC 3261 section 22.4 requires servers to receive; such credentials
        have no nonce-count, so they can be replayed until the nonce expires.
    :param max_tracked_nonces: size of the nonce-count replay LRU.
    :raises ValueError: for an invalid argument.
    """

    def __init__(
        self,
        realm: str,
        *,
        secret: bytes,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        nonce_ttl: float = 300.0,
        qop: Sequence[str] = ("auth",),
        allow_legacy: bool = True,
        max_tracked_nonces: int = 4096,
    ) -> None:
        if not secret:
            raise ValueError("secret must not be empty")
        if not algorithms:
            raise ValueError("algorithms must not be empty")
        if not qop or any(q not in _QOPS for q in qop):
            raise ValueError(f"qop must be a non-empty subset of {_QOPS}")
        if not nonce_ttl > 0 or max_tracked_nonces < 1:
            raise ValueError("nonce_ttl and max_tracked_nonces must be positive")
        canonical = list(dict.fromkeys(_require_algorithm(a) for a in algorithms))
        self.realm = realm
        self.algorithms: tuple[str, ...] = tuple(sorted(canonical, key=_STRENGTH.__getitem__))
        self.nonce_ttl = nonce_ttl
        self.qop: tuple[str, ...] = tuple(qop)
        self.allow_legacy = allow_legacy
        self.max_tracked_nonces = max_tracked_nonces
        self._secret = secret
        # nonce -> (highest nc seen, issue time), least recently used first
        self._nc_seen: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._evicted_upto = -math.inf

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload + self.realm.encode("utf-8"), hashlib.sha256).digest()[:_MAC_SIZE]

    def _make_nonce(self, now: float) -> str:
        payload = _NONCE_PAYLOAD.pack(now, secrets.token_bytes(8))
        return _b64encode(payload + self._mac(payload))

    def _nonce_time(self, nonce: str) -> float | None:
        """Issue time of a nonce we signed, ``None`` if forged or garbled."""
        if not _NONCE_RE.fullmatch(nonce):
            return None
        raw = base64.urlsafe_b64decode(nonce + "=")
        payload, mac = raw[: _NONCE_PAYLOAD.size], raw[_NONCE_PAYLOAD.size :]
        # Re-encoding rejects non-canonical spellings of the same bytes.
        if not hmac.compare_digest(mac, self._mac(payload)) or _b64encode(raw) != nonce:
            return None
        issued: float = _NONCE_PAYLOAD.unpack(payload)[0]
        return issued

    def make_challenges(self, now: float, stale: bool = False) -> list[str]:
        """Header values for a 401/407, one per algorithm, strongest first
        (RFC 8760 section 2.4), each with a fresh nonce.

        :param now: the current time, in the same clock as :meth:`verify`.
        :param stale: set ``stale=TRUE``, after a ``"stale nonce"`` result.
        """
        return [
            Challenge(
                realm=self.realm,
                nonce=self._make_nonce(now),
                algorithm=algorithm,
                qop=self.qop,
                stale=stale,
            ).to_header()
            for algorithm in self.algorithms
        ]

    def verify(
        self,
        credentials_value: str,
        *,
        method: str,
        uri: str,
        now: float,
        password_lookup: Lookup | None = None,
        ha1_lookup: Lookup | None = None,
        body: bytes = b"",
    ) -> AuthResult:
        """Check ``Authorization``/``Proxy-Authorization`` credentials
        (RFC 3261 section 22.4, RFC 2617 section 3.2.2).

        Pass exactly one lookup.  Each gets ``(username, realm, algorithm)``
        and returns the password, or :func:`compute_ha1` of it, or ``None``
        for an unknown user.

        :param method: the request's method.
        :param uri: the request's Request-URI text; the ``uri`` parameter must
            equal it exactly (RFC 2617 section 3.2.2.5).
        :param body: the request body, for ``qop=auth-int``.
        :raises TypeError: unless exactly one lookup is given.
        """
        if (password_lookup is None) == (ha1_lookup is None):
            raise TypeError("pass exactly one of password_lookup and ha1_lookup")
        try:
            creds = parse_credentials(credentials_value)
        except RemoteProtocolError as exc:
            return AuthResult(False, "malformed", detail=str(exc))

        def fail(reason: AuthFailure) -> AuthResult:
            return AuthResult(False, reason, creds.username, creds)

        if creds.realm != self.realm:
            return fail("realm mismatch")
        if creds.algorithm not in self.algorithms:
            return fail("unsupported algorithm")
        if creds.qop not in self.qop and not (creds.qop is None and self.allow_legacy):
            return fail("unsupported qop")
        if creds.algorithm.endswith("-sess") and creds.cnonce is None:
            return fail("malformed")
        if creds.uri != uri:
            return fail("uri mismatch")
        issued = self._nonce_time(creds.nonce)
        if issued is None:
            return fail("bad nonce")

        if password_lookup is not None:
            password = password_lookup(creds.username, creds.realm, creds.algorithm)
            ha1 = None if password is None else compute_ha1(creds.username, creds.realm, password, creds.algorithm)
        else:
            assert ha1_lookup is not None
            ha1 = ha1_lookup(creds.username, creds.realm, creds.algorithm)
        if ha1 is None:
            return fail("unknown user")
        expected = compute_response(
            ha1.lower(),
            algorithm=creds.algorithm,
            method=method,
            uri=creds.uri,
            nonce=creds.nonce,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
            body=body,
        )
        if not hmac.compare_digest(expected.encode(), creds.response.lower().encode("utf-8")):
            return fail("wrong password")

        # RFC 2617 section 3.2.1: stale only when the digest was valid.
        if now - issued > self.nonce_ttl:
            return fail("stale nonce")
        if creds.nc is not None:
            seen = self._nc_seen.get(creds.nonce)
            if seen is None and issued <= self._evicted_upto:
                return fail("stale nonce")  # may have been evicted: unknown history
            if creds.nc <= (0 if seen is None else seen[0]):
                return fail("nc replay")  # RFC 7616 section 3.4.5
            self._nc_seen[creds.nonce] = (creds.nc, issued)
            self._nc_seen.move_to_end(creds.nonce)
            while len(self._nc_seen) > self.max_tracked_nonces:
                _, (_, evicted_issued) = self._nc_seen.popitem(last=False)
                self._evicted_upto = max(self._evicted_upto, evicted_issued)
        return AuthResult(True, None, creds.username, creds)
