"""Signed join tokens, and the hashing of invite codes.

One random master key lives in ``DATA_DIR/secret.key`` (created on first
start, mode 0600, never in the database: a copy of the database alone
neither forges tokens nor reveals invite codes). Each use gets its own key
derived from it by HMAC-SHA256 over a label, so a key is never used for
two purposes.

.. rubric:: Join tokens

A join token is a JWT (RFC 7519) signed with HS256 through PyJWT. Its
claims::

    {"iss": "callbridge", "aud": "callbridge-join", "sub": IDENTITY,
     "room": ROOM_ID, "name": DISPLAY_NAME, "role": "guest",
     "perms": ["mute_self"], "data": null, "custom_id": null, "picture": null,
     "iat": ..., "exp": ..., "jti": ...}

``data`` is free-form text the application attaches (JSON, say; at most
:data:`MAX_DATA` bytes of UTF-8): the engine keeps it in the call's grant
and the conference shows it to the other participants with the roster.
``custom_id`` is the application's own id for the participant (at most
:data:`MAX_CUSTOM_ID` printable characters) and ``picture`` the URL of its
picture (``http`` or ``https``, at most :data:`MAX_PICTURE` characters;
:func:`check_picture`): both travel the same way, into the grant and the
roster. Absent claims are left out of the token.

Tokens are short-lived (10 minutes unless asked otherwise, 24 hours at
most): they are bearer credentials. The engine checks every permission on
the server; the token only says what its holder may ask for.

.. rubric:: Permissions

``mute_self`` (own audio and video mute and unmute), ``mute_others``,
``remove`` (a participant), ``lock`` (the room), ``end`` (the room),
``dial_out`` (ask the engine to call a phone into the room through the
trunk; the dial-out policy still applies). The presets are ``guest``
(``mute_self``), ``moderator`` (all of them but ``dial_out``, which is
only ever given by name) and ``subscriber`` (none: listen only; the engine
mutes its audio into the conference, refuses to unmute it and refuses its
direct calls, see :data:`LISTEN_ONLY_ROLES`). The operator may name more
presets (``POST /api/v1/presets``: a name and a list of permissions, kept in
the store); a token or invite asks for one by name (``preset: "host"``) and
its role is then the preset's name. The built-in names cannot be redefined
(:func:`check_preset_name`).

.. rubric:: Invite codes

An invite carries a numeric code (8 digits: typed on a phone keypad) and a
128-bit link token (``secrets.token_urlsafe(16)``). Both are stored as
HMAC-SHA256 under a key derived from the master key: a deterministic keyed
hash, so a code is found by an index lookup, and without the key file the
stored hashes cannot be checked against the 10**8 possible codes.

.. rubric:: Login tokens and room PINs

The web SDK's one-time login tokens (``POST /api/v1/users/{name}/login-tokens``)
and rooms' phone PINs are stored the same way, each under its own derived
key: a copy of the database shows neither a usable token nor a PIN.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from engine.calls.grants import LISTEN_ONLY_ROLES

__all__ = [
    "DEFAULT_TTL",
    "MAX_TTL",
    "PERMISSIONS",
    "PRESETS",
    "CODE_DIGITS",
    "JoinGrant",
    "LISTEN_ONLY_ROLES",
    "MAX_CUSTOM_ID",
    "MAX_DATA",
    "MAX_PICTURE",
    "check_custom_id",
    "check_picture",
    "check_preset_name",
    "Keys",
    "TokenError",
    "permissions_for",
]

#: What a participant may be allowed to do.
PERMISSIONS = ("mute_self", "mute_others", "remove", "lock", "end", "dial_out", "record")

#: Named permission sets.
PRESETS: dict[str, tuple[str, ...]] = {
    "guest": ("mute_self",),
    # dial_out (make the engine call a phone through the trunk) is never in
    # a preset: it is given explicitly, to a token or invite that lists it.
    "moderator": ("mute_self", "mute_others", "remove", "lock", "end", "record"),
    # listen only: hears and sees the conference, sends nothing
    "subscriber": (),
}


#: Bytes (UTF-8) of a join token's free-form ``data``, at most.
MAX_DATA = 1024

#: Characters of a join token's ``custom_id``, and of its ``picture`` URL, at most.
MAX_CUSTOM_ID = 128
MAX_PICTURE = 512

#: Seconds a join token lives unless asked otherwise, and at most.
DEFAULT_TTL = 600.0
MAX_TTL = 86400.0

#: Digits of an invite code.
CODE_DIGITS = 8

_ISSUER = "callbridge"
_AUDIENCE = "callbridge-join"
KEY_FILENAME = "secret.key"


class TokenError(Exception):
    """A join token is refused: ``code`` is ``token_expired`` or ``token_invalid``."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class JoinGrant:
    """What a verified join token grants."""

    room: str
    identity: str
    display_name: str | None
    role: str
    permissions: tuple[str, ...]
    expires_at: float
    token_id: str
    #: Free-form text the application attached (at most :data:`MAX_DATA` bytes).
    data: str | None = None
    #: The application's id for the participant (:func:`check_custom_id`).
    custom_id: str | None = None
    #: The participant's picture, an http(s) URL (:func:`check_picture`).
    picture: str | None = None

    def may(self, permission: str) -> bool:
        return permission in self.permissions


def permissions_for(role: str, permissions: list[str] | tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The permissions of a preset role, or a custom list (role ``custom``).

    :raises ValueError: an unknown role or permission.
    """
    if permissions is not None:
        unknown = [p for p in permissions if p not in PERMISSIONS]
        if unknown:
            raise ValueError(f"unknown permission {unknown[0]!r}: use {', '.join(PERMISSIONS)}")
        return tuple(dict.fromkeys(permissions))
    if role not in PRESETS:
        raise ValueError(f"unknown role {role!r}: use {', '.join(PRESETS)} or give permissions")
    return PRESETS[role]


def check_custom_id(value: str) -> str:
    """A participant's ``custom_id``: 1 to :data:`MAX_CUSTOM_ID` printable characters.

    :raises ValueError: saying what is wrong.
    """
    if not 1 <= len(value) <= MAX_CUSTOM_ID:
        raise ValueError(f"must be 1 to {MAX_CUSTOM_ID} characters")
    if not value.isprintable():
        raise ValueError("must be printable characters (no control characters)")
    return value


def check_picture(value: str) -> str:
    """A participant's ``picture``: an absolute ``http`` or ``https`` URL with
    a host, at most :data:`MAX_PICTURE` characters, printable ASCII without
    spaces or quotes (it ends up in a page's ``img src``).

    :raises ValueError: saying what is wrong.
    """
    if not 1 <= len(value) <= MAX_PICTURE:
        raise ValueError(f"must be 1 to {MAX_PICTURE} characters")
    if not all("!" <= ch <= "~" for ch in value) or any(ch in value for ch in "\"'<>`\\"):
        raise ValueError("must be a URL of printable ASCII without spaces, quotes or angle brackets")
    scheme, sep, rest = value.partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]
    if not sep or scheme.lower() not in ("http", "https") or not host or host.startswith(":"):
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def check_preset_name(name: str) -> str:
    """A name an operator may give a new preset: not a built-in one (:data:`PRESETS`).

    :raises ValueError: a built-in name.
    """
    if name in PRESETS or name == "custom":
        raise ValueError(f"{name!r} is a built-in preset and cannot be redefined")
    return name


class Keys:
    """The engine's secret keys, all derived from one master key.

    :param master: 32 random bytes.
    """

    def __init__(self, master: bytes) -> None:
        if len(master) < 32:
            raise ValueError("the master key must be at least 32 bytes")
        self._master = master
        self._jwt_key = self._derive("join-token")
        self._code_key = self._derive("invite-code")
        self._login_key = self._derive("login-token")
        #: The key the store hashes room PINs with (``SqliteStore(pin_key=...)``).
        self.pin_key = self._derive("room-pin")

    @classmethod
    def in_directory(cls, data_dir: Path) -> Keys:
        """Read ``DATA_DIR/secret.key``, creating it (mode 0600) on first use."""
        path = Path(data_dir) / KEY_FILENAME
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            text = secrets.token_hex(32)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(text + "\n")
        return cls(bytes.fromhex(text))

    def _derive(self, label: str) -> bytes:
        return hmac.new(self._master, label.encode("ascii"), hashlib.sha256).digest()

    # -- join tokens -------------------------------------------------------------

    def issue_join_token(
        self, *, room: str, identity: str, display_name: str | None, role: str,
        permissions: tuple[str, ...], ttl: float, now: float, data: str | None = None,
        custom_id: str | None = None, picture: str | None = None,
    ) -> tuple[str, JoinGrant]:
        """Sign a join token; return it and what it grants.

        :param data: free-form text for the other participants.
        :param custom_id: the application's id for the participant.
        :param picture: the participant's picture (an http(s) URL).
        :raises ValueError: ``data`` over :data:`MAX_DATA` bytes, a malformed
            ``custom_id`` or ``picture``.
        """
        if data is not None and len(data.encode("utf-8")) > MAX_DATA:
            raise ValueError(f"data is at most {MAX_DATA} bytes (UTF-8)")
        if custom_id is not None:
            try:
                check_custom_id(custom_id)
            except ValueError as exc:
                raise ValueError(f"custom_id {exc}") from None
        if picture is not None:
            try:
                check_picture(picture)
            except ValueError as exc:
                raise ValueError(f"picture {exc}") from None
        grant = JoinGrant(room, identity, display_name, role, tuple(permissions), now + ttl,
                          secrets.token_hex(8), data, custom_id, picture)
        claims: dict[str, Any] = {
            "iss": _ISSUER, "aud": _AUDIENCE, "sub": identity, "room": room, "name": display_name,
            "role": role, "perms": list(permissions), "iat": int(now), "exp": now + ttl,
            "jti": grant.token_id,
        }
        for claim, value in (("data", data), ("custom_id", custom_id), ("picture", picture)):
            if value is not None:
                claims[claim] = value
        return jwt.encode(claims, self._jwt_key, algorithm="HS256"), grant

    def verify_join_token(self, token: str, now: float) -> JoinGrant:
        """Check a join token's signature, issuer, audience and expiry at ``now``.

        :raises TokenError: ``token_expired`` or ``token_invalid``.
        """
        if not isinstance(token, str) or len(token) > 4096:
            raise TokenError("token_invalid", "the join token is malformed")
        try:
            claims = jwt.decode(
                token, self._jwt_key, algorithms=["HS256"], audience=_AUDIENCE, issuer=_ISSUER,
                options={"require": ["exp", "sub", "room", "iss", "aud"], "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError("token_invalid", f"the join token is not valid: {exc}") from None
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or now >= exp:
            raise TokenError("token_expired", "the join token has expired")
        perms = claims.get("perms") or []
        name = claims.get("name")
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            raise TokenError("token_invalid", "the join token's permissions are malformed")
        data = claims.get("data")
        if data is not None and (not isinstance(data, str) or len(data.encode("utf-8")) > MAX_DATA):
            raise TokenError("token_invalid", "the join token's data is malformed")
        checked: dict[str, str | None] = {}
        for claim, check in (("custom_id", check_custom_id), ("picture", check_picture)):
            value = claims.get(claim)
            try:
                checked[claim] = None if value is None else check(value) if isinstance(value, str) else check("")
            except ValueError:
                raise TokenError("token_invalid", f"the join token's {claim} is malformed") from None
        return JoinGrant(str(claims["room"]), str(claims["sub"]),
                         name if isinstance(name, str) else None, str(claims.get("role", "")),
                         tuple(perms), float(exp), str(claims.get("jti", "")), data,
                         checked["custom_id"], checked["picture"])

    # -- invites -----------------------------------------------------------------

    def new_invite_secrets(self) -> tuple[str, str]:
        """Draw a code of :data:`CODE_DIGITS` digits and a 128-bit link token."""
        code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
        return code, secrets.token_urlsafe(16)

    def code_hash(self, code: str) -> str:
        return hmac.new(self._code_key, b"code:" + code.encode("utf-8"), hashlib.sha256).hexdigest()

    def link_hash(self, link_token: str) -> str:
        return hmac.new(self._code_key, b"link:" + link_token.encode("utf-8"), hashlib.sha256).hexdigest()

    # -- one-time login tokens -----------------------------------------------------

    def login_token_hash(self, token: str) -> str:
        """What the store keeps of a one-time login token (HMAC-SHA256, hex)."""
        return hmac.new(self._login_key, token.encode("utf-8"), hashlib.sha256).hexdigest()
