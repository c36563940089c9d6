"""The sans-IO registrar (engine.sip.registrar): its decisions, with no directory or socket."""

from __future__ import annotations

from engine.sip.auth import ClientAuthSession, DigestServer, compute_ha1
from engine.sip.registrar import BindingsChanged, Registrar, RegisterAnswered
from engine.state.directory import LoginGuard, MemoryDirectory

from sip_helpers import make_request

SRC = ("UDP", "192.0.2.1", 5060)


def registrar() -> Registrar:
    server = DigestServer("callbridge", secret=b"s" * 32)
    users = {"bob": "pw"}

    def lookup(user: str, realm: str, algorithm: str) -> str | None:
        return compute_ha1(user, realm, users[user], algorithm) if user in users else None

    return Registrar(server, LoginGuard(MemoryDirectory()), lookup, min_expires=60, max_expires=3600)


def register(reg: Registrar, contact: str = "<sip:bob@192.0.2.1>", expires: str | None = None,
             user: str = "bob", password: str = "pw") -> RegisterAnswered | BindingsChanged:
    return register_with(reg, SRC, contact=contact, expires=expires, user=user, password=password)


def register_with(reg: Registrar, source: tuple[str, str, int], *, origin: str | None = None,
                  contact: str = "<sip:bob@192.0.2.1>", expires: str | None = None,
                  user: str = "bob", password: str = "pw") -> RegisterAnswered | BindingsChanged:
    """A REGISTER, its 401, and the REGISTER with credentials, from
    ``source`` (forwarded for ``origin``); the second's decision."""
    extra = [("Expires", expires)] if expires is not None else []
    first = make_request("REGISTER", uri="sip:example.com", contact=contact, extra=extra)
    first.headers.set("To", f"<sip:{user}@example.com>")
    challenged = reg.receive(first, source, 0.0, origin=origin)
    assert isinstance(challenged, RegisterAnswered) and challenged.response.status == 401
    client = ClientAuthSession(user, password)
    challenge = client.on_challenge(challenged.response.headers.get_all("WWW-Authenticate"))
    creds = client.authorize(challenge.realm, method="REGISTER", uri="sip:example.com")
    second = make_request("REGISTER", uri="sip:example.com", contact=contact, cseq=2,
                          extra=extra + [("Authorization", creds.to_header())])
    second.headers.set("To", f"<sip:{user}@example.com>")
    return reg.receive(second, source, 1.0, origin=origin)


def test_register_without_credentials_is_challenged_and_valid_one_changes_bindings() -> None:
    """Check the first REGISTER gets 401 and the answered one a BindingsChanged with the clamped expiry."""
    decision = register(registrar(), contact="<sip:bob@192.0.2.1>;expires=99999")
    assert isinstance(decision, BindingsChanged)
    assert decision.aor == "bob" and not decision.remove_all and decision.source == SRC
    assert [(c.contact, c.expires) for c in decision.contacts] == [("sip:bob@192.0.2.1", 3600)]


def test_register_expiry_below_minimum_gets_423() -> None:
    """Check an expiry under the minimum is answered 423 with Min-Expires (RFC 3261 §10.3 step 7)."""
    decision = register(registrar(), contact="<sip:bob@192.0.2.1>;expires=5")
    assert isinstance(decision, RegisterAnswered) and decision.response.status == 423
    assert decision.response.headers.get("Min-Expires") == "60"


def test_register_wildcard_needs_expires_zero() -> None:
    """Check ``Contact: *`` is refused without Expires: 0 and becomes remove_all with it."""
    bad = register(registrar(), contact="*", expires="60")
    assert isinstance(bad, RegisterAnswered) and bad.response.status == 400
    good = register(registrar(), contact="*", expires="0")
    assert isinstance(good, BindingsChanged) and good.remove_all


def test_register_wrong_password_forbidden_and_accepted_lists_bindings() -> None:
    """Check a wrong password gets 403, and ``accepted`` lists the directory's bindings with expiry."""
    reg = registrar()
    wrong = register(reg, password="nope")
    assert isinstance(wrong, RegisterAnswered) and wrong.response.status == 403
    change = register(reg)
    assert isinstance(change, BindingsChanged)
    directory = MemoryDirectory()
    from engine.state.directory import ContactUpdate
    bindings = directory.update_bindings("bob", [ContactUpdate("sip:bob@192.0.2.1", 600, None)], now=1.0,
                                         call_id=change.call_id, cseq=change.cseq, source=SRC)
    response = reg.accepted(change, bindings, 11.0, 0.0)
    assert response.status == 200
    assert response.headers.get_all("Contact") == ["<sip:bob@192.0.2.1>;expires=590"]
    assert response.headers.get("Date") == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert reg.refused(change, "out of order").status == 500
