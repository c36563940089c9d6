"""The registrar over UDP (RFC 3261 §10.3) with digest auth (SHA-256 and
MD5), and ``VoxEngine.call_user`` reaching the registered phone: a Python
UDP socket playing the phone, directly (third-party registration on
loopback) and through the REGISTER's source address (behind NAT)."""

from __future__ import annotations

import secrets
import time

import pytest

from engine.server import Engine
from engine.sip.auth import ClientAuthSession, parse_challenge
from engine.sip.message import SipRequest, SipResponse

from .conftest import EngineFactory, PeerFactory, wait_for_log, wait_until
from .sip_peer import UdpPeer, request, sdp_offer

RULES = """
rules:
  - {name: DialUser, pattern: "dial", scenarios: [dial_user]}
"""

DIAL_USER = '''
"""On a MESSAGE to 'dial': call the registered user named in its text,
hang up once connected, log how the call went."""
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


def on_message(e):
    out = VoxEngine.call_user(e.text, callerid="5550100")

    def connected(ev):
        Logger.write("connected")
        out.hangup()

    def ended(ev):
        Logger.write(f"ended {ev.name} {ev.code}")
        VoxEngine.terminate()

    out.add_event_listener(CallEvents.Connected, connected)
    out.add_event_listener(CallEvents.Disconnected, ended)
    out.add_event_listener(CallEvents.Failed, ended)


VoxEngine.add_event_listener(AppEvents.MessageReceived, on_message)
'''

PASSWORD = "s3cret-pw"


class Registration:
    """One registering client: a Call-ID and its CSeq, answering 401s."""

    def __init__(self, peer: UdpPeer, engine: Engine, user: str = "alice",
                 password: str = PASSWORD, algorithm: str | None = None) -> None:
        self.peer = peer
        self.port = engine.ua.port
        self.user = user
        self.auth = ClientAuthSession(user, password)
        self.algorithm = algorithm
        self.call_id = secrets.token_hex(8)
        self.from_tag = secrets.token_hex(4)
        self.cseq = 0
        self.uri = f"sip:127.0.0.1:{self.port}"

    def build(self, contacts: list[str], expires: int | None, authorization: str | None) -> bytes:
        self.cseq += 1
        headers = [("Contact", c) for c in contacts]
        if expires is not None:
            headers.append(("Expires", str(expires)))
        if authorization is not None:
            headers.append(("Authorization", authorization))
        aor = f"sip:{self.user}@127.0.0.1"
        return request("REGISTER", self.uri, local=self.peer.local, call_id=self.call_id,
                       from_tag=self.from_tag, to_uri=aor, from_uri=aor, cseq=self.cseq,
                       contact=False, headers=headers)

    async def send(self, contacts: list[str], expires: int | None = 600,
                   authorization: str | None = None) -> SipResponse:
        self.peer.send(self.build(contacts, expires, authorization))
        return await self.peer.expect(method="REGISTER")

    async def register(self, contacts: list[str], expires: int | None = 600) -> SipResponse:
        """REGISTER, answering a 401 once with our credentials."""
        resp = await self.send(contacts, expires)
        if resp.status != 401:
            return resp
        values = resp.headers.get_all("WWW-Authenticate")
        if self.algorithm is not None:
            values = [v for v in values if parse_challenge(v).algorithm == self.algorithm]
        challenge = self.auth.on_challenge(values)
        creds = self.auth.authorize(challenge.realm, method="REGISTER", uri=self.uri)
        return await self.send(contacts, expires, creds.to_header())


def bindings(resp: SipResponse) -> dict[str, int]:
    """Contact URI -> expires of a 200 to REGISTER."""
    out = {}
    for contact in resp.contact:
        out[str(contact.uri)] = int(contact.params["expires"] or "0")
    return out


async def registrar(make_engine: EngineFactory) -> Engine:
    engine = await make_engine(RULES, {"dial_user": DIAL_USER})
    assert engine.store is not None
    engine.store.create_user("alice", PASSWORD, sip=True)
    return engine


async def test_register_with_sha256_and_md5(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Without credentials a REGISTER gets 401 with two WWW-Authenticate
    challenges, SHA-256 first then MD5; answering either with the right
    password gets 200 listing every binding with its expires."""
    engine = await registrar(make_engine)
    peer = await peers.udp(engine)
    reg = Registration(peer, engine, algorithm="SHA-256")
    first = await reg.send(["<sip:alice@127.0.0.1:5071>"])
    assert first.status == 401
    challenges = [parse_challenge(v) for v in first.headers.get_all("WWW-Authenticate")]
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert all(c.realm == "callbridge" and "auth" in c.qop for c in challenges)
    ok = await reg.register(["<sip:alice@127.0.0.1:5071>"], expires=600)
    assert ok.status == 200
    assert 595 <= bindings(ok)["sip:alice@127.0.0.1:5071"] <= 600
    assert (ok.headers.get("Date") or "").endswith("GMT")

    md5 = Registration(await peers.udp(engine), engine, algorithm="MD5")
    ok = await md5.register(["<sip:alice@127.0.0.1:5072>;expires=120"], expires=None)
    assert ok.status == 200
    got = bindings(ok)
    assert set(got) == {"sip:alice@127.0.0.1:5071", "sip:alice@127.0.0.1:5072"}
    assert 115 <= got["sip:alice@127.0.0.1:5072"] <= 120


async def test_register_refusals(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A wrong password and an unknown user get 403; an expiry below the
    minimum gets 423 with Min-Expires (and nothing is bound); a registrar
    challenge is answered again after an unknown auth scheme."""
    engine = await registrar(make_engine)
    peer = await peers.udp(engine)
    wrong = Registration(peer, engine, password="not-it")
    assert (await wrong.register(["<sip:alice@127.0.0.1:5071>"])).status == 403
    nobody = Registration(peer, engine, user="mallory")
    assert (await nobody.register(["<sip:mallory@127.0.0.1:5071>"])).status == 403
    brief = Registration(peer, engine)
    resp = await brief.register(["<sip:alice@127.0.0.1:5071>"], expires=10)
    assert resp.status == 423
    assert resp.headers.get("Min-Expires") == "60"
    assert not engine.directory.bindings("alice", time.monotonic())
    odd = Registration(peer, engine)
    resp = await odd.send(["<sip:alice@127.0.0.1:5071>"], authorization="Basic YWxpY2U6eA==")
    assert resp.status == 401 and len(resp.headers.get_all("WWW-Authenticate")) == 2


async def test_web_only_user_cannot_register(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A user created without SIP access (the default: web SDK only, and
    every guest) is refused with 403 even with the right password, exactly
    like an unknown user, and the store keeps no digest hash for it."""
    engine = await registrar(make_engine)
    assert engine.store is not None
    engine.store.create_user("webby", PASSWORD)
    assert engine.store.sip_ha1("webby", "callbridge", "MD5") is None
    peer = await peers.udp(engine)
    web_only = Registration(peer, engine, user="webby")
    resp = await web_only.register(["<sip:webby@127.0.0.1:5071>"])
    nobody = await Registration(peer, engine, user="nobody").register(["<sip:nobody@127.0.0.1:5071>"])
    assert (resp.status, resp.reason) == (nobody.status, nobody.reason) == (403, "Forbidden")
    assert not engine.directory.bindings("webby", time.monotonic())


async def test_register_password_guessing_locks_the_account(
    make_engine: EngineFactory, peers: PeerFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    """Five wrong passwords for alice lock her account: the right password
    then gets 403 too (its HA1 is not even read) until the backoff lapses
    (virtual clock, no sleep), after which it registers; an unknown
    account locks the same way; security events name source and user."""
    engine = await registrar(make_engine)
    now = [time.monotonic()]
    engine.clock = lambda: now[0]
    reads: list[str] = []
    ha1 = engine.ua.user_ha1
    assert ha1 is not None

    def counting(user: str, realm: str, algorithm: str) -> str | None:
        reads.append(user)
        return ha1(user, realm, algorithm)

    engine.ua.user_ha1 = counting
    peer = await peers.udp(engine)
    contact = ["<sip:alice@127.0.0.1:5071>"]
    for _ in range(5):
        wrong = Registration(peer, engine, password="guess")
        assert (await wrong.register(contact)).status == 403
    assert len(reads) == 5
    right = Registration(peer, engine)
    assert (await right.register(contact)).status == 403
    assert len(reads) == 5
    for _ in range(6):
        nobody = Registration(peer, engine, user="mallory", password="guess")
        assert (await nobody.register(["<sip:mallory@127.0.0.1:5071>"])).status == 403
    now[0] += 1.5  # the first lockout is 1 s
    again = Registration(peer, engine)
    assert (await again.register(contact)).status == 200
    assert "event=auth_failed src=127.0.0.1 method=REGISTER user=alice" in caplog.text
    assert "event=auth_locked src=127.0.0.1 method=REGISTER user=alice" in caplog.text
    assert "event=auth_locked src=127.0.0.1 method=REGISTER user=mallory" in caplog.text


async def test_register_remove_one_and_all(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Expires 0 on one Contact removes that binding only; ``Contact: *``
    with Expires 0 removes every binding; a REGISTER without Contact is a
    query that lists what is left."""
    engine = await registrar(make_engine)
    reg = Registration(await peers.udp(engine), engine)
    contacts = [f"<sip:alice@127.0.0.1:{p}>" for p in (5071, 5072, 5073)]
    ok = await reg.register(contacts)
    assert len(bindings(ok)) == 3
    ok = await reg.register(["<sip:alice@127.0.0.1:5072>"], expires=0)
    assert set(bindings(ok)) == {"sip:alice@127.0.0.1:5071", "sip:alice@127.0.0.1:5073"}
    ok = await reg.register([], expires=None)
    assert len(bindings(ok)) == 2
    other = Registration(await peers.udp(engine), engine)  # another Call-ID
    ok = await other.register(["*"], expires=0)
    assert ok.status == 200 and not ok.contact
    assert not engine.directory.bindings("alice", time.monotonic())
    bad = await other.register(["*"], expires=60)
    assert bad.status == 400


async def test_register_all_or_none(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A REGISTER is applied whole or not at all (RFC 3261 §10.3): one
    out-of-order Contact (same Call-ID, lower CSeq) gets 500 and the other
    Contact of the request is not bound either; more Contacts than an AOR
    may hold gets 403 and binds none of them."""
    engine = await registrar(make_engine)
    reg = Registration(await peers.udp(engine), engine)
    reg.cseq = 100
    assert (await reg.register(["<sip:alice@127.0.0.1:5071>"])).status == 200
    stored = reg.cseq
    reg.cseq = stored - 10  # an older CSeq of the same Call-ID
    resp = await reg.register(["<sip:alice@127.0.0.1:5099>", "<sip:alice@127.0.0.1:5071>"])
    assert resp.status == 500
    now = time.monotonic()
    contacts = [b.contact for b in engine.directory.bindings("alice", now)]
    assert contacts == ["sip:alice@127.0.0.1:5071"]
    reg.cseq = stored + 10
    many = [f"<sip:alice@127.0.0.1:{6000 + i}>" for i in range(40)]
    resp = await reg.register(many)
    assert resp.status == 403
    assert [b.contact for b in engine.directory.bindings("alice", now)] == ["sip:alice@127.0.0.1:5071"]


async def answer_as_phone(phone: UdpPeer, engine: Engine) -> SipRequest:
    """Play the registered phone: take the INVITE, answer 200 with SDP,
    wait for the ACK, then answer the BYE. Returns the INVITE."""
    invite = await phone.recv_request("INVITE")
    ok = invite.create_response(200, to_tag="phone1")
    ok.headers.add("Contact", f"<sip:alice@127.0.0.1:{phone.local[1]}>")
    ok.headers.add("Content-Type", "application/sdp")
    ok.body = sdp_offer("127.0.0.1", 41000)
    source = phone.sources[-1]
    phone.send(ok.to_bytes(), source)
    ack = await phone.recv_request("ACK")
    assert ack.to.tag == "phone1"
    bye = await phone.recv_request("BYE")
    phone.send(bye.create_response(200).to_bytes(), source)
    return invite


async def test_call_user_reaches_third_party_registered_contact(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A binding registered from one socket for a Contact on another host
    address-wise equal (loopback, third-party registration): call_user
    sends the INVITE to the Contact, not to the REGISTER's source; the call
    connects and ends with the scenario's BYE."""
    engine = await registrar(make_engine)
    registering = await peers.udp(engine)
    phone = await peers.udp(engine)
    contact = f"<sip:alice@127.0.0.1:{phone.local[1]}>"
    assert (await Registration(registering, engine).register([contact])).status == 200
    trigger = await peers.udp(engine)
    trigger.send(request("MESSAGE", f"sip:dial@127.0.0.1:{engine.ua.port}", local=trigger.local,
                         body=b"alice", content_type="text/plain"))
    assert (await trigger.expect()).status == 200
    invite = await answer_as_phone(phone, engine)
    assert invite.uri_text == f"sip:alice@127.0.0.1:{phone.local[1]}"
    assert invite.from_.uri.user == "5550100"
    logs = await wait_for_log(engine, "ended Disconnected 200")
    assert "connected" in logs and "ended Disconnected 200" in logs
    assert not registering.drain()  # nothing went to the REGISTER's source
    assert await wait_until(lambda: not engine.ua.calls, 2.0)


async def test_call_user_behind_nat_uses_registration_source(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """A phone behind NAT registers a Contact with a private address that is
    not where its REGISTER came from: call_user sends the INVITE (for the
    Contact URI) to the REGISTER's source address and port."""
    engine = await registrar(make_engine)
    phone = await peers.udp(engine)
    contact = "<sip:alice@192.0.2.99:5062>"
    assert (await Registration(phone, engine).register([contact])).status == 200
    trigger = await peers.udp(engine)
    trigger.send(request("MESSAGE", f"sip:dial@127.0.0.1:{engine.ua.port}", local=trigger.local,
                         body=b"alice", content_type="text/plain"))
    assert (await trigger.expect()).status == 200
    invite = await answer_as_phone(phone, engine)
    assert invite.uri_text == "sip:alice@192.0.2.99:5062"
    logs = await wait_for_log(engine, "ended Disconnected 200")
    assert "ended Disconnected 200" in logs
