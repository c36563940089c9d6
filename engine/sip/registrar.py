"""The registrar's logic (RFC 3261 §10.3), sans-IO.

Theory of operation
-------------------

:meth:`Registrar.receive` reads one REGISTER and returns a decision:

* :class:`RegisterAnswered`: the response is ready (404 for a request
  without a user AOR, 401 challenges, 403 refusals, 400/423 for bad Contact
  parameters). Nothing is stored.
* :class:`BindingsChanged`: the request is authenticated and valid; the
  caller applies it to its binding directory (``remove_all`` for a wildcard
  ``Contact: *``, ``update_bindings`` for the contacts, ``bindings`` for a
  query without contacts, RFC 3261 §10.2.3) and hands the outcome back to
  :meth:`Registrar.accepted` (the current bindings) or
  :meth:`Registrar.refused` (the directory refused: out of order, too many
  bindings).

The directory itself is the caller's (``engine.state`` sits beside
``engine.sip``, not below it), so the registrar never calls it; the login
lockouts are read and written through the :class:`LoginGuardLike` passed
in. Time is an argument everywhere: ``now`` (monotonic seconds, the
directory's and the nonces' clock) and, for the ``Date`` header, the wall
time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Literal, Protocol, Sequence

from engine.security_log import security_event
from engine.sip.auth import DigestServer
from engine.sip.headers import NameAddr
from engine.sip.message import SipRequest, SipResponse, new_tag
from engine.sip.uri import SipUri

__all__ = [
    "BindingLike", "BindingsChanged", "ContactExpiry", "LoginGuardLike", "RegisterAnswered",
    "RegisterDecision", "Registrar", "digest_credentials",
]

logger = logging.getLogger(__name__)

#: ``(user, realm, algorithm) -> HA1 | None`` (users from the store).
Ha1Lookup = Callable[[str, str, str], "str | None"]


class LoginGuardLike(Protocol):
    """The lockouts after wrong passwords (``engine.state.directory.LoginGuard``)."""

    def refusal(self, user: str, src: str | None, now: float) -> str | None: ...

    def failed(self, user: str, src: str | None, now: float) -> float: ...

    def succeeded(self, user: str) -> None: ...


class BindingLike(Protocol):
    """A binding as the directory returns it (``engine.state.directory.Binding``)."""

    @property
    def contact(self) -> str: ...

    def remaining(self, now: float) -> float: ...


@dataclass(frozen=True)
class ContactExpiry:
    """One Contact of a REGISTER: its URI, the expiry granted (clamped to
    the maximum) and its ``q`` (RFC 3261 §10.2.1.2)."""

    contact: str
    expires: int
    q: float | None


@dataclass(frozen=True)
class RegisterAnswered:
    """The REGISTER is answered without touching the directory."""

    response: SipResponse


@dataclass(frozen=True)
class BindingsChanged:
    """Apply this to the directory, then call :meth:`Registrar.accepted` or
    :meth:`Registrar.refused` (RFC 3261 §10.3 steps 6-8, all or none).

    :param remove_all: ``Contact: *`` with ``Expires: 0``.
    :param contacts: the contacts to add, refresh or remove (expiry 0);
        empty (and not ``remove_all``): a query.
    """

    request: SipRequest
    aor: str
    call_id: str
    cseq: int
    remove_all: bool
    contacts: tuple[ContactExpiry, ...]
    source: tuple[str, str, int]


RegisterDecision = RegisterAnswered | BindingsChanged


def digest_credentials(request: SipRequest) -> str | None:
    """The first ``Authorization: Digest`` value. RFC 4475 §3.3.7:
    credentials of a scheme we do not know are ignored, and the request is
    challenged with one we do."""
    return next(
        (v for v in request.headers.get_all("Authorization")
         if v[:6].lower() == "digest" and v[6:7] in (" ", "\t")),
        None,
    )


def contact_q(raw: str | None) -> float | None:
    """A Contact's ``q`` (RFC 3261 §20.10: 0 to 1, three decimals at most),
    ``None`` when absent.

    :raises ValueError: when malformed.
    """
    if raw is None:
        return None
    if len(raw) > 5 or not raw[:1].isdigit():
        raise ValueError(f"bad q {raw!r}")
    q = float(raw)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"bad q {raw!r}")
    return q


class Registrar:
    """REGISTER handling for the users whose HA1 ``user_ha1`` knows.

    :param auth: the digest server (nonces, verification).
    :param guard: the per-account and per-source lockouts.
    :param user_ha1: the users, or ``None``: registration disabled (403).
    """

    def __init__(
        self,
        auth: DigestServer,
        guard: LoginGuardLike,
        user_ha1: Ha1Lookup | None,
        *,
        min_expires: int = 60,
        max_expires: int = 3600,
    ) -> None:
        self.auth = auth
        self.guard = guard
        self.user_ha1 = user_ha1
        self.min_expires = min_expires
        self.max_expires = max_expires

    # -- REGISTER ----------------------------------------------------------------

    def receive(self, request: SipRequest, source: tuple[str, str, int], now: float, *,
                origin: str | None = None) -> RegisterDecision:
        """Read one REGISTER from ``source`` (transport, host, port: where the
        bindings are reached). ``origin``: the sender's host when a front
        proxy forwarded it (``source`` is then the proxy's), whose password
        failures are counted; ``source``'s host by default."""
        to_uri = request.to.uri
        if not isinstance(to_uri, SipUri) or not to_uri.user:
            return RegisterAnswered(request.create_response(404, "Unknown AOR"))
        aor = to_uri.user
        user_ha1 = self.user_ha1
        if user_ha1 is None:
            return RegisterAnswered(request.create_response(403, "Registration Disabled"))
        host = origin or source[1]
        creds = digest_credentials(request)
        if creds is None:
            return RegisterAnswered(self.challenge(request, now))
        guard, locked = self.guard, []

        def lookup(user: str, realm: str, algorithm: str) -> str | None:
            # A locked account (or source) is refused like a wrong password,
            # before its HA1 is even read: the right password fails too.
            refusal = guard.refusal(user, host, now)
            if refusal is not None:
                locked.append(refusal)
                return None
            return user_ha1(user, realm, algorithm)

        result = self.auth.verify(creds, method="REGISTER", uri=request.uri_text, now=now, ha1_lookup=lookup)
        if not result.ok:
            if locked:
                security_event("auth_locked", host, method="REGISTER", user=result.username, scope=locked[0])
                return RegisterAnswered(request.create_response(403, "Forbidden"))
            if result.reason in ("unknown user", "wrong password") and result.username is not None:
                # An unknown (or web-only) user counts like a wrong password:
                # the answers and the lockouts do not tell which it was.
                lock = guard.failed(result.username, host, now)
                security_event("auth_failed", host, method="REGISTER", user=result.username)
                if lock:
                    security_event("auth_locked", host, method="REGISTER", user=result.username, seconds=lock)
            if result.reason == "stale nonce":
                return RegisterAnswered(self.challenge(request, now, stale=True))
            if result.reason == "malformed":
                return RegisterAnswered(request.create_response(400, "Malformed Authorization"))
            if result.reason in ("realm mismatch", "bad nonce", "unsupported algorithm"):
                # Not an answer to a challenge of ours (another realm, or a
                # nonce from before a restart): challenge, do not refuse.
                return RegisterAnswered(self.challenge(request, now))
            logger.info("REGISTER for %s from %s refused: %s", aor, host, result.reason)
            return RegisterAnswered(request.create_response(403, "Forbidden"))
        if result.username is not None:
            guard.succeeded(result.username)
        if result.username != aor:
            return RegisterAnswered(request.create_response(403, "Username Does Not Match AOR"))
        return self._bindings_change(request, aor, source)

    def _bindings_change(self, request: SipRequest, aor: str, source: tuple[str, str, int]) -> RegisterDecision:
        """RFC 3261 §10.3 steps 6-7: read every Contact before storing any."""
        expires_header = request.headers.get("Expires")
        default_expires = int(expires_header) if expires_header is not None else 3600
        contacts: Sequence[NameAddr] = request.contact
        if any(c.wildcard for c in contacts):
            if len(contacts) != 1 or default_expires != 0:
                return RegisterAnswered(request.create_response(400, "Wildcard Contact Needs Expires 0"))
            return BindingsChanged(request, aor, request.call_id, request.cseq.number, True, (), source)
        updates: list[ContactExpiry] = []
        for contact in contacts:
            raw = contact.params.get("expires")
            if raw is None:
                expires = default_expires
            elif raw.isdigit() and len(raw) <= 10:
                expires = int(raw)
            else:
                return RegisterAnswered(request.create_response(400, "Bad Contact expires"))
            if 0 < expires < self.min_expires:
                resp = request.create_response(423)
                resp.headers.add("Min-Expires", str(self.min_expires))
                return RegisterAnswered(resp)
            try:
                q = contact_q(contact.params.get("q"))
            except ValueError:
                return RegisterAnswered(request.create_response(400, "Bad Contact q"))
            updates.append(ContactExpiry(str(contact.uri), min(expires, self.max_expires), q))
        return BindingsChanged(request, aor, request.call_id, request.cseq.number, False, tuple(updates), source)

    def accepted(self, change: BindingsChanged, bindings: Sequence[BindingLike], now: float,
                 wall_time: float) -> SipResponse:
        """The 200 listing the AOR's bindings after ``change`` (RFC 3261 §10.3 step 8)."""
        resp = change.request.create_response(200, to_tag=new_tag())
        for binding in bindings:
            resp.headers.add("Contact", f"<{binding.contact}>;expires={int(binding.remaining(now))}")
        resp.headers.add("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(wall_time)))
        return resp

    def refused(self, change: BindingsChanged, reason: Literal["out of order", "too many bindings"],
                detail: str = "") -> SipResponse:
        """The answer when the directory refused ``change``: a REGISTER older
        than the stored one (RFC 3261 §10.3 step 7: 500) or one binding too
        many (403)."""
        logger.info("REGISTER for %s refused: %s", change.aor, detail or reason)
        if reason == "out of order":
            return change.request.create_response(500, "Out Of Order")
        return change.request.create_response(403, "Too Many Bindings")

    # -- digest for INVITEs ------------------------------------------------------

    def challenge(self, request: SipRequest, now: float, stale: bool = False) -> SipResponse:
        """A 401 with our ``WWW-Authenticate`` challenges (RFC 3261 §22.2)."""
        resp = request.create_response(401, to_tag=new_tag())
        for value in self.auth.make_challenges(now, stale=stale):
            resp.headers.add("WWW-Authenticate", value)
        return resp

    def invite_identity(self, request: SipRequest, src: str, now: float) -> str | None:
        """The store user an INVITE proved to be by digest credentials in
        answer to :meth:`challenge`, or ``None`` (an anonymous call)."""
        if self.user_ha1 is None:
            return None
        creds = digest_credentials(request)
        if creds is None:
            return None
        result = self.auth.verify(creds, method="INVITE", uri=request.uri_text, now=now, ha1_lookup=self.user_ha1)
        if not result.ok or not result.username:
            security_event("auth_failed", src, method="INVITE", reason=result.reason)
            return None
        return result.username
