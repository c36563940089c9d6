"""Tests for :mod:`engine.sip.auth` (SIP digest authentication)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.sip.auth import (
    ALGORITHMS,
    AuthResult,
    Challenge,
    ClientAuthSession,
    Credentials,
    DigestServer,
    answer_challenge,
    choose_challenge,
    compute_ha1,
    compute_response,
    parse_challenge,
    parse_credentials,
)
from engine.sip.errors import LocalProtocolError, RemoteProtocolError

REALM = "example.com"
URI = "sip:bob@example.com"
USERS = {"alice": "secret"}
T0 = 1000.0


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def lookup(username: str, realm: str, algorithm: str) -> str | None:
    return USERS.get(username)


def make_server(**kwargs: object) -> DigestServer:
    return DigestServer(REALM, secret=b"k" * 32, **kwargs)  # type: ignore[arg-type]


def login(
    server: DigestServer,
    *,
    algorithm: str = "SHA-256",
    username: str = "alice",
    password: str = "secret",
    nc: int = 1,
    now: float = T0,
) -> tuple[Credentials, Challenge]:
    """Challenge at ``now`` and answer the challenge for ``algorithm``."""
    challenges = [parse_challenge(v) for v in server.make_challenges(now)]
    challenge = next(c for c in challenges if c.algorithm == algorithm)
    creds = answer_challenge(
        challenge, method="INVITE", uri=URI, username=username, password=password, nc=nc
    )
    return creds, challenge


def check(server: DigestServer, creds: Credentials | str, now: float = T0, **kwargs: str) -> AuthResult:
    value = creds if isinstance(creds, str) else creds.to_header()
    params: dict[str, str] = {"method": "INVITE", "uri": URI} | kwargs
    return server.verify(value, password_lookup=lookup, now=now, **params)  # type: ignore[arg-type]


# -- RFC vectors ---------------------------------------------------------------

RFC2617_CHALLENGE = (
    'Digest\trealm="testrealm@host.com", qop="auth,auth-int",'
    '  nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",'
    ' uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b",'
    ' response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def test_rfc2617_example() -> None:
    """Check the RFC 2617 section 3.5 worked example, both directions."""
    challenge = parse_challenge(RFC2617_CHALLENGE)
    assert challenge.qop == ("auth", "auth-int")
    assert challenge.algorithm == "MD5"
    creds = answer_challenge(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle Of Life",
        cnonce="0a4f113b",
    )
    assert creds.response == "6629fae49393a05397450978507c4ef1"
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    assert parse_credentials(creds.to_header()) == parse_credentials(RFC2617_AUTHORIZATION)


@pytest.mark.parametrize(
    "algorithm, response",
    [
        # RFC 7616 section 3.9.1 gives both responses for the same exchange.
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_rfc7616_example(algorithm: str, response: str) -> None:
    """Check the RFC 7616 section 3.9.1 SHA-256 and MD5 examples."""
    challenge = parse_challenge(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm},'
        f' nonce="{RFC7616_NONCE}", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    creds = answer_challenge(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle of Life",
        cnonce=RFC7616_CNONCE,
    )
    assert (creds.response, creds.qop, creds.nc, creds.algorithm) == (response, "auth", 1, algorithm)


def test_compute_response_formulas() -> None:
    """Check -sess, auth-int and RFC 2069 forms against formulas written out with hashlib."""
    ha1 = md5("u:r:p")
    assert compute_ha1("u", "r", "p", "md5-sess") == ha1
    ha2 = md5("REGISTER:sip:r")
    sess = md5(f"{ha1}:n:c")
    assert compute_response(
        ha1, algorithm="MD5-sess", method="REGISTER", uri="sip:r", nonce="n", qop="auth", nc=2, cnonce="c"
    ) == md5(f"{sess}:n:00000002:c:auth:{ha2}")
    ha2_int = md5(f"REGISTER:sip:r:{md5('body')}")
    assert compute_response(
        ha1, algorithm="MD5", method="REGISTER", uri="sip:r", nonce="n", qop="auth-int", nc=1, cnonce="c", body=b"body"
    ) == md5(f"{ha1}:n:00000001:c:auth-int:{ha2_int}")
    assert compute_response(ha1, algorithm="MD5", method="REGISTER", uri="sip:r", nonce="n") == md5(f"{ha1}:n:{ha2}")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"algorithm": "SHA-1"}, "unsupported digest algorithm 'SHA-1'"),
        ({"algorithm": "MD5-sess", "qop": "auth", "nc": 1}, "MD5-sess needs a cnonce"),
        ({"qop": "auth-conf"}, "unsupported qop 'auth-conf'"),
        ({"qop": "auth", "cnonce": "c"}, "qop needs nc and cnonce"),
    ],
)
def test_compute_response_errors(kwargs: dict[str, object], message: str) -> None:
    """Check misuse of compute_response raises ValueError with clear text."""
    args: dict[str, object] = {"algorithm": "MD5", "method": "GET", "uri": "/", "nonce": "n"} | kwargs
    with pytest.raises(ValueError) as exc:
        compute_response("0" * 32, **args)  # type: ignore[arg-type]
    assert str(exc.value) == message


# -- parsing ---------------------------------------------------------------------


def test_parse_edge_cases() -> None:
    """Check lowercase scheme, odd spacing, escapes, empty elements, tokens and unknown params."""
    challenge = parse_challenge(
        '  digest   REALM = "a \\"quoted\\" realm\\\\" ,, Nonce=abc/def== ,'
        ' Algorithm="sha-256" , stale=true, qop="AUTH , auth-int,", domain="sip:x sip:y",'
    )
    assert challenge == Challenge(
        realm='a "quoted" realm\\',
        nonce="abc/def==",
        algorithm="SHA-256",
        qop=("auth", "auth-int"),
        stale=True,
        params=(("domain", "sip:x sip:y"),),
    )
    assert parse_challenge(challenge.to_header()) == challenge
    assert challenge.to_header() == (
        'Digest realm="a \\"quoted\\" realm\\\\", nonce="abc/def==", stale=TRUE, algorithm=SHA-256,'
        ' qop="auth,auth-int", domain="sip:x sip:y"'
    )


def test_parse_challenge_defaults() -> None:
    """Check absent algorithm means MD5, stale other than TRUE is false, unknown algorithms are kept."""
    challenge = parse_challenge('Digest realm="r", nonce="n", stale=maybe, algorithm=SHA-512-256')
    assert (challenge.algorithm, challenge.stale, challenge.qop) == ("SHA-512-256", False, ())
    legacy = parse_challenge("Digest realm=r,nonce=n")
    assert legacy.algorithm == "MD5"
    assert legacy.to_header() == 'Digest realm="r", nonce="n", algorithm=MD5'


def test_parse_credentials_legacy_and_quoted_qop() -> None:
    """Check credentials without qop, and a quoted qop, parse and round-trip."""
    legacy = parse_credentials('Digest username="u", realm="r", nonce="n", uri="sip:r", response="ab"')
    assert (legacy.qop, legacy.nc, legacy.cnonce, legacy.algorithm) == (None, None, None, "MD5")
    quoted = parse_credentials(
        'Digest username="u", realm="r", nonce="n", uri="sip:r", response="ab", qop="Auth", nc=0000000a,'
        ' cnonce="c", algorithm=md5-SESS, x-ext=1'
    )
    assert (quoted.qop, quoted.nc, quoted.algorithm, quoted.params) == ("auth", 10, "MD5-sess", (("x-ext", "1"),))
    for creds in (legacy, quoted):
        assert parse_credentials(creds.to_header()) == creds


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "Digest challenge: missing scheme"),
        ('Basic realm="x"', "Digest challenge: unsupported scheme 'Basic'"),
        ("Digest,realm=x", "Digest challenge: expected space after scheme at offset 6"),
        ('Digest realm="x, nonce=n', "Digest challenge: unterminated quoted string at offset 13"),
        ('Digest realm="x\\', "Digest challenge: unterminated quoted string at offset 13"),
        ('Digest realm "x"', "Digest challenge: expected '=' after 'realm'"),
        ("Digest realm", "Digest challenge: expected '=' after 'realm'"),
        ('Digest realm=, nonce="n"', "Digest challenge: missing value for 'realm'"),
        ("Digest =x", "Digest challenge: expected parameter name at offset 7"),
        ('Digest realm="x" nonce="n"', "Digest challenge: expected ',' at offset 17"),
        ('Digest realm="x", REALM="y", nonce=n', "Digest challenge: duplicate parameter 'realm'"),
        ('Digest realm="a\x01b", nonce=n', "Digest challenge: control character at offset 15"),
        ('Digest realm="x"', "Digest challenge: missing 'nonce'"),
        ('Digest nonce="x"', "Digest challenge: missing 'realm'"),
    ],
)
def test_parse_challenge_errors(value: str, message: str) -> None:
    """Check malformed challenges raise RemoteProtocolError with exact text and status 400."""
    with pytest.raises(RemoteProtocolError) as exc:
        parse_challenge(value)
    assert (str(exc.value), exc.value.status) == (message, 400)


CREDS = 'Digest username="u", realm="r", nonce="n", uri="sip:r", response="ab"'


@pytest.mark.parametrize(
    "value, message",
    [
        ('Digest username="u", realm="r", nonce="n", uri="sip:r"', "Digest credentials: missing 'response'"),
        (CREDS + ", qop=auth, nc=00000001", "Digest credentials: qop without 'cnonce'"),
        (CREDS + ", qop=auth, cnonce=c", "Digest credentials: qop without 'nc'"),
        (CREDS + ", qop=auth, cnonce=c, nc=1", "Digest credentials: 'nc' must be 8 lowercase hex digits"),
        (CREDS + ", qop=auth, cnonce=c, nc=0000000A", "Digest credentials: 'nc' must be 8 lowercase hex digits"),
    ],
)
def test_parse_credentials_errors(value: str, message: str) -> None:
    """Check malformed credentials raise RemoteProtocolError with exact text."""
    with pytest.raises(RemoteProtocolError) as exc:
        parse_credentials(value)
    assert str(exc.value) == message


def test_to_header_rejects_control_characters() -> None:
    """Check serialization refuses CR/LF that would inject a header."""
    with pytest.raises(LocalProtocolError):
        Challenge(realm="x\r\nVia: evil", nonce="n").to_header()


# Quoted-string text: anything but controls (tab allowed), RFC 3261 section 25.1.
TEXT = st.text(st.characters(exclude_categories=["Cs", "Cc"]) | st.just("\t"))


@given(realm=TEXT, nonce=TEXT, opaque=st.none() | TEXT, stale=st.booleans(), algorithm=st.sampled_from(ALGORITHMS))
def test_challenge_round_trip(realm: str, nonce: str, opaque: str | None, stale: bool, algorithm: str) -> None:
    """Check parse(to_header(c)) == c for arbitrary quoted text."""
    challenge = Challenge(realm=realm, nonce=nonce, algorithm=algorithm, qop=("auth",), opaque=opaque, stale=stale)
    assert parse_challenge(challenge.to_header()) == challenge


# -- client --------------------------------------------------------------------


def test_choose_challenge_prefers_sha256() -> None:
    """Check the strongest supported challenge wins whatever the order (RFC 8760 section 2.4)."""
    values = [
        'Basic realm="r"',
        'Digest realm="r", nonce="1", qop="auth"',
        'Digest realm="r", nonce="2", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="r", nonce="3", algorithm=SHA-256, qop="auth"',
        'Digest realm="r", nonce="4", algorithm=SHA-256-sess, qop="auth"',
    ]
    assert choose_challenge(values).nonce == "3"
    assert choose_challenge(values[:2]).nonce == "1"


def test_choose_challenge_none_usable() -> None:
    """Check the error lists why each challenge was skipped."""
    with pytest.raises(RemoteProtocolError) as exc:
        choose_challenge(
            [
                'Basic realm="r"',
                'Digest realm="r", nonce="n", algorithm=SHA-512-256',
                'Digest realm="r", nonce="n", qop="auth-conf"',
                'Digest realm="r", nonce="n", algorithm=MD5-sess',
            ]
        )
    assert str(exc.value) == (
        "No usable digest challenge: Digest challenge: unsupported scheme 'Basic';"
        " unsupported algorithm 'SHA-512-256'; No supported qop in 'auth-conf'; MD5-sess without qop"
    )
    with pytest.raises(RemoteProtocolError, match="none given"):
        choose_challenge([])


def test_answer_challenge_errors() -> None:
    """Check unusable challenges and a bad nc are refused."""
    with pytest.raises(RemoteProtocolError, match="^Cannot answer digest challenge: unsupported algorithm 'X'$"):
        answer_challenge(Challenge("r", "n", "X"), method="GET", uri="/", username="u", password="p")
    with pytest.raises(ValueError, match="nc out of range: 0"):
        answer_challenge(Challenge("r", "n", qop=("auth",)), method="GET", uri="/", username="u", password="p", nc=0)


def test_answer_prefers_auth_and_random_cnonce() -> None:
    """Check qop=auth is picked over auth-int, and cnonces are random when not given."""
    challenge = Challenge("r", "n", qop=("auth-int", "auth"))
    one, two = (
        answer_challenge(challenge, method="GET", uri="/", username="u", password="p") for _ in range(2)
    )
    assert one.qop == "auth"
    assert one.cnonce and two.cnonce and one.cnonce != two.cnonce


def test_legacy_rfc2069_answer() -> None:
    """Check a challenge without qop is answered in the RFC 2069 form."""
    creds = answer_challenge(
        Challenge("r", "n"), method="REGISTER", uri="sip:r", username="u", password="p", cnonce="ignored"
    )
    assert (creds.qop, creds.nc, creds.cnonce) == (None, None, None)
    assert creds.response == md5(f"{md5('u:r:p')}:n:{md5('REGISTER:sip:r')}")
    assert "qop" not in creds.to_header() and "nc=" not in creds.to_header()


def test_client_session_counts_nonce_uses() -> None:
    """Check nc increments per nonce, restarts on a new nonce, and is kept on a repeated one."""
    server = make_server()
    session = ClientAuthSession("alice", "secret")
    challenge = session.on_challenge(server.make_challenges(T0))
    assert challenge.algorithm == "SHA-256" and session.realms == [REALM]
    ncs = []
    for _ in range(3):
        creds = session.authorize(REALM, method="INVITE", uri=URI)
        assert check(server, creds).ok
        ncs.append(creds.nc)
    assert ncs == [1, 2, 3]
    session.on_challenge([challenge.to_header()])
    assert session.authorize(REALM, method="INVITE", uri=URI).nc == 4
    session.on_challenge(server.make_challenges(T0 + 1))
    assert session.authorize(REALM, method="INVITE", uri=URI).nc == 1
    with pytest.raises(LocalProtocolError, match="no digest challenge for realm 'other'"):
        session.authorize("other", method="INVITE", uri=URI)


# -- server --------------------------------------------------------------------


def test_challenges_strongest_first() -> None:
    """Check one challenge per algorithm, SHA-256 first, with qop=auth and distinct nonces."""
    server = make_server(algorithms=("md5", "SHA-256", "MD5"))
    challenges = [parse_challenge(v) for v in server.make_challenges(T0)]
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert all(c.realm == REALM and c.qop == ("auth",) and not c.stale for c in challenges)
    assert challenges[0].nonce != challenges[1].nonce
    assert all(parse_challenge(v).stale for v in server.make_challenges(T0, stale=True))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_round_trip(algorithm: str) -> None:
    """Check a client answer to our challenge verifies, for every algorithm."""
    server = make_server(algorithms=ALGORITHMS)
    creds, _ = login(server, algorithm=algorithm)
    result = check(server, creds)
    assert result == AuthResult(True, None, "alice", parse_credentials(creds.to_header()))


def test_round_trip_auth_int_and_ha1_lookup() -> None:
    """Check qop=auth-int covers the body, verified against a stored HA1."""
    server = make_server(qop=("auth-int",))
    challenge = parse_challenge(server.make_challenges(T0)[0])
    creds = answer_challenge(challenge, method="MESSAGE", uri=URI, username="alice", password="secret", body=b"hi")
    ha1s = {"alice": compute_ha1("alice", REALM, "secret", "SHA-256").upper()}

    def verify(body: bytes) -> AuthResult:
        return server.verify(
            creds.to_header(), method="MESSAGE", uri=URI, now=T0, body=body,
            ha1_lookup=lambda user, realm, alg: ha1s.get(user),
        )

    assert verify(b"tampered").reason == "wrong password"
    assert verify(b"hi").ok


def test_legacy_credentials() -> None:
    """Check RFC 2069 credentials are accepted unless allow_legacy is off (RFC 3261 section 22.4)."""
    challenge = parse_challenge(make_server().make_challenges(T0)[0])
    creds = answer_challenge(
        Challenge(challenge.realm, challenge.nonce, "SHA-256"), method="INVITE", uri=URI, username="alice",
        password="secret",
    )
    assert check(make_server(), creds).ok
    assert check(make_server(), creds).ok  # no nc, so no replay detection
    assert check(make_server(allow_legacy=False), creds).reason == "unsupported qop"


def test_stale_nonce_after_ttl() -> None:
    """Check an expired nonce with a right answer is stale, and with a wrong one is not."""
    server = make_server(nonce_ttl=30.0)
    creds, _ = login(server)
    assert check(server, creds, now=T0 + 30.0).ok
    assert check(server, creds, now=T0 + 30.5).reason == "stale nonce"
    wrong, _ = login(server, password="nope")
    assert check(server, wrong, now=T0 + 31).reason == "wrong password"


def test_forged_nonce() -> None:
    """Check tampered, foreign, non-canonical and garbage nonces are bad."""
    server = make_server()
    creds, _ = login(server)
    raw = bytearray(base64.urlsafe_b64decode(creds.nonce + "="))
    raw[0] ^= 1  # shift the timestamp
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    noncanonical = creds.nonce[:-1] + last[last.index(creds.nonce[-1]) + 1]  # same bytes, spare bits set
    foreign, _ = login(DigestServer(REALM, secret=b"other"))
    other_realm = DigestServer("other.example", secret=b"k" * 32).make_challenges(T0)[0]
    for nonce in (tampered, noncanonical, "garbage", parse_challenge(other_realm).nonce, foreign.nonce):
        challenge = Challenge(REALM, nonce, "SHA-256", ("auth",))
        forged = answer_challenge(challenge, method="INVITE", uri=URI, username="alice", password="secret")
        assert check(server, forged).reason == "bad nonce", nonce


@pytest.mark.parametrize(
    "username, password, reason",
    [("alice", "wrong", "wrong password"), ("mallory", "secret", "unknown user")],
)
def test_bad_user_or_password(username: str, password: str, reason: str) -> None:
    """Check wrong passwords and unknown users are told apart for the caller."""
    server = make_server()
    creds, _ = login(server, username=username, password=password)
    result = check(server, creds)
    assert (result.ok, result.reason, result.username) == (False, reason, username)


def test_nc_replay() -> None:
    """Check a nonce-count must increase per nonce (RFC 7616 section 3.4.5)."""
    server = make_server()
    creds, challenge = login(server, nc=5)
    assert check(server, creds).ok
    assert check(server, creds).reason == "nc replay"

    def again(nc: int) -> AuthResult:
        return check(
            server, answer_challenge(challenge, method="INVITE", uri=URI, username="alice", password="secret", nc=nc)
        )

    assert again(4).reason == "nc replay"
    assert again(6).ok
    wrong = answer_challenge(challenge, method="INVITE", uri=URI, username="alice", password="bad", nc=9)
    assert check(server, wrong).reason == "wrong password"
    assert again(7).ok  # a failed attempt does not advance the count


def test_nc_tracking_is_bounded() -> None:
    """Check the LRU stays bounded and an evicted nonce turns stale rather than replayable."""
    server = make_server(max_tracked_nonces=2)
    first, _ = login(server, now=T0)
    second, _ = login(server, now=T0 + 1)
    third, _ = login(server, now=T0 + 2)
    for creds in (first, second, third):
        assert check(server, creds, now=T0 + 3).ok
    assert check(server, first, now=T0 + 3).reason == "stale nonce"
    assert check(server, second, now=T0 + 3).reason == "nc replay"
    fourth, _ = login(server, now=T0 + 2.5)
    assert check(server, fourth, now=T0 + 3).ok


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"uri": "sip:carol@example.com"}, "uri mismatch"),
        ({"realm": "other"}, "realm mismatch"),
        ({"algorithm": "MD5"}, "unsupported algorithm"),
        ({"qop": "auth-int"}, "unsupported qop"),
        ({"algorithm": "SHA-256-sess", "qop": None, "nc": None, "cnonce": None}, "malformed"),
    ],
)
def test_refusals(kwargs: dict[str, object], reason: str) -> None:
    """Check each mismatch yields its reason."""
    server = make_server(algorithms=("SHA-256", "SHA-256-sess"))
    creds, _ = login(server)
    assert check(server, dataclasses.replace(creds, **kwargs)).reason == reason  # type: ignore[arg-type]


def test_malformed_credentials() -> None:
    """Check unparseable credentials report the parse error."""
    result = check(make_server(), 'Digest username="alice"')
    assert result == AuthResult(False, "malformed", detail="Digest credentials: missing 'realm'")


@pytest.mark.parametrize(
    "kwargs",
    [{"secret": b""}, {"algorithms": ()}, {"algorithms": ("SHA-1",)}, {"qop": ("auth-conf",)}, {"nonce_ttl": 0}],
)
def test_server_arguments(kwargs: dict[str, object]) -> None:
    """Check bad configuration raises ValueError."""
    args: dict[str, object] = {"secret": b"k"} | kwargs
    with pytest.raises(ValueError):
        DigestServer(REALM, **args)  # type: ignore[arg-type]


def test_verify_needs_one_lookup() -> None:
    """Check verify requires exactly one of the lookups."""
    with pytest.raises(TypeError):
        make_server().verify(CREDS, method="INVITE", uri=URI, now=T0)
