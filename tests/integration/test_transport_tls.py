"""SIP over TLS (RFC 3261 §26, RFC 5630, RFC 5923) on real sockets: a
call placed over the engine's TLS listener that hears a tone, a trunk call
over TLS to a second engine verified through ``trunk_ca`` (and refused when
the carrier's certificate is not trusted or names another host), a phone
registered over TLS reached over its own connection, the alias parameter,
and TLS connections counted against ``max_tcp_per_source``."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import numpy as np
import pylibsrtp
import pytest

from engine.media.codecs import get_decoder, get_encoder
from engine.media.players import ToneSource
from engine.media.rtp import RtpPacket, RtpSender
from engine.runtime.dialout import DialPolicy
from engine.server import Engine, EngineConfig
from engine.sip.message import SipRequest
from engine.sip.offer_answer import PCMU, create_offer, new_srtp_key
from engine.sip.sdp import CryptoAttribute, parse_sdp
from engine.transport.sip_endpoint import Peer, SecurityPolicy

from e2e.test_playback import decode, goertzel, receive_rtp
from tls_ca import CertSet, make_certs
from tls_certs import serial_of, served_serial, trusting

from conftest import SCENARIOS

from .conftest import EngineFactory, wait_for_log, wait_until
from .sip_peer import Dialog, TlsPeer, request, sdp_offer
from .test_registrar import PASSWORD, Registration

TONE_RULES = """
rules:
  - {name: Tone, pattern: "tone", scenarios: [tone]}
"""

TONE = '''
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    done = await call.start_playback_tone(1000, 1.0)
    Logger.write(f"tone played {done}")


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
'''

CARRIER_RULES = """
rules:
  - {name: Carrier, pattern: "5551234", scenarios: [carrier]}
"""

CARRIER = '''
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine, set_timeout


def on_alerting(e):
    call = e.call
    Logger.write("carrier got the call")
    call.add_event_listener(CallEvents.Connected, lambda ev: set_timeout(call.hangup, 200))
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    call.answer()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
'''

DIAL_RULES = """
rules:
  - {name: Trunk, pattern: "dialout", scenarios: [dial]}
  - {name: DialUser, pattern: "dial", scenarios: [dial_user]}
"""

DIAL = '''
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


def on_started(e):
    out = VoxEngine.call_pstn("5551234", "5550100")
    out.add_event_listener(CallEvents.Connected, lambda ev: Logger.write("connected"))

    def ended(ev):
        Logger.write(f"ended {ev.name} {ev.code} {ev.reason}")
        VoxEngine.terminate()

    out.add_event_listener(CallEvents.Disconnected, ended)
    out.add_event_listener(CallEvents.Failed, ended)


VoxEngine.add_event_listener(AppEvents.Started, on_started)
'''

DIAL_USER = '''
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


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    """A CA and the server certificate it signed for 127.0.0.1."""
    return make_certs(tmp_path_factory.mktemp("tls"), "engine")


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))


async def tls_engine(make_engine: EngineFactory, rules: str, scenarios: dict[str, str],
                     certs: CertSet, **overrides: Any) -> Engine:
    return await make_engine(rules, scenarios, tls_cert=certs.cert, tls_key=certs.key,
                             sip_tls_port=0, **overrides)


async def test_call_over_tls_hears_a_tone(make_engine: EngineFactory, certs: CertSet) -> None:
    """A client on ``ssl`` places a call to a ``sips:`` URI through the TLS
    listener: the 200 comes back over its connection with a Via of TLS and
    a ``sips:`` Contact on the TLS port; after the ACK the RTP carries a
    1000 Hz tone (Goertzel) for about a second; the BYE gets its 200."""
    engine = await tls_engine(make_engine, TONE_RULES, {"tone": TONE}, certs)
    tls_port = engine.ua.config.tls_port
    assert tls_port not in (0, engine.ua.port)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.setblocking(False)
    peer = await TlsPeer("127.0.0.1", ("127.0.0.1", tls_port), client_context(certs.ca)).open()
    try:
        dialog = Dialog(peer, f"sips:tone@127.0.0.1:{tls_port}")  # type: ignore[arg-type]
        dialog.invite(body=sdp_offer("127.0.0.1", rtp.getsockname()[1]))
        ok = await peer.expect(200, method="INVITE", timeout=5)
        assert ok.top_via.transport == "TLS"
        assert str(ok.contact[0].uri) == f"sips:callbridge@127.0.0.1:{tls_port}"
        dialog.learn(ok)
        dialog.ack()
        match = re.search(rb"m=audio (\d+)", ok.body)
        assert match is not None
        rtp.sendto(RtpPacket(0, 1, 0, 0x5EED, b"\xff" * 160).serialize(), ("127.0.0.1", int(match[1])))
        packets = await receive_rtp(engine, rtp, "tone played", timeout=10)
        dialog.send("BYE")
        assert (await peer.expect(200, method="BYE")).status == 200
    finally:
        await peer.close()
        rtp.close()
    assert 45 <= len(packets) <= 55, len(packets)
    pcm = decode(packets)
    powers = {f: goertzel(pcm, f) for f in (400, 700, 1000, 1400, 2000)}
    assert max(powers, key=powers.__getitem__) == 1000, powers
    logs = await wait_for_log(engine, "tone played True")
    assert "tone played True" in logs


async def start_dial(engine: Engine) -> None:
    assert engine.rules is not None
    engine.runtime.start_session(engine.rules.match("dialout"))


async def test_trunk_call_over_tls_to_a_verified_carrier(
        make_engine: EngineFactory, certs: CertSet, tmp_path: Path) -> None:
    """A second engine with a TLS listener plays the carrier; ``call_pstn``
    through ``sips:`` trunk reaches it over TLS, its certificate verified
    through ``trunk_ca`` for the trunk's host; the call connects and ends
    with the carrier's BYE."""
    carrier = await tls_engine(make_engine, CARRIER_RULES, {"carrier": CARRIER}, certs)
    engine = await make_engine(DIAL_RULES, {"dial": DIAL, "dial_user": DIAL_USER},
                               trunk=f"sips:127.0.0.1:{carrier.ua.config.tls_port}",
                               trunk_ca=certs.ca, dial_policy=DialPolicy(allow=(r"[0-9]+",)))
    await start_dial(engine)
    logs = await wait_for_log(engine, "ended Disconnected", timeout=10)
    assert "connected" in logs and "ended Disconnected" in logs, logs
    assert "carrier got the call" in await wait_for_log(carrier, "carrier got the call")
    # The trunk URI names the carrier's TLS port only, and nothing came by UDP.
    assert carrier.ua.config.tls_port != carrier.ua.port
    assert not carrier.ua.endpoint._peers


@pytest.mark.parametrize("case", ["untrusted", "wrong_name"])
async def test_trunk_call_fails_on_a_certificate_not_accepted(
        make_engine: EngineFactory, certs: CertSet, tmp_path: Path, case: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """The carrier's certificate is signed by a CA the engine does not
    trust, or (trusted) names another host: ``call_pstn`` fails at once
    with 503 and a reason naming the TLS error, and a log line says so;
    nothing reaches the carrier's scenario."""
    if case == "untrusted":
        carrier_certs = make_certs(tmp_path / "rogue", "rogue")
        trust = certs.ca
        expected = "unable to get local issuer certificate"
    else:
        carrier_certs = make_certs(tmp_path / "other", "other", hosts=("carrier.example",))
        trust = carrier_certs.ca
        expected = "IP address mismatch"
    carrier = await tls_engine(make_engine, CARRIER_RULES, {"carrier": CARRIER}, carrier_certs)
    engine = await make_engine(DIAL_RULES, {"dial": DIAL, "dial_user": DIAL_USER},
                               trunk=f"sips:127.0.0.1:{carrier.ua.config.tls_port}",
                               trunk_ca=trust, dial_policy=DialPolicy(allow=(r"[0-9]+",)))
    await start_dial(engine)
    logs = await wait_for_log(engine, "ended Failed", timeout=10)
    assert "ended Failed 503 TLS certificate not accepted: " in logs, logs
    assert expected in logs, logs
    assert "TLS connection to 127.0.0.1" in caplog.text and expected in caplog.text
    assert "carrier got the call" not in (await wait_for_log(carrier, "carrier got the call", 0.3))


async def test_phone_registered_over_tls_is_reached_over_its_connection(
        make_engine: EngineFactory, certs: CertSet) -> None:
    """A phone registers over TLS (a Contact with ``;transport=tls`` it
    cannot be connected to: it has no certificate); ``call_user`` sends the
    INVITE over the phone's own connection, with a TLS Via and our TLS
    Contact, and the call connects and ends with the engine's BYE there."""
    engine = await tls_engine(make_engine, DIAL_RULES, {"dial": DIAL, "dial_user": DIAL_USER}, certs)
    assert engine.store is not None
    engine.store.create_user("alice", PASSWORD, sip=True)
    tls_port = engine.ua.config.tls_port
    phone = await TlsPeer("127.0.0.1", ("127.0.0.1", tls_port), client_context(certs.ca)).open()
    try:
        contact = f"<sip:alice@127.0.0.1:{phone.local[1] + 1};transport=tls>"
        assert (await Registration(phone, engine).register([contact])).status == 200  # type: ignore[arg-type]
        phone.send(request("MESSAGE", f"sip:dial@127.0.0.1:{tls_port}", local=phone.local,
                           transport="TLS", body=b"alice", content_type="text/plain"))
        assert (await phone.expect(method="MESSAGE")).status == 200
        invite = await phone.recv_request("INVITE", timeout=5)
        assert invite.uri_text == f"sip:alice@127.0.0.1:{phone.local[1] + 1};transport=tls"
        assert invite.top_via.transport == "TLS" and invite.top_via.port == tls_port
        assert str(invite.contact[0].uri) == f"sip:callbridge@127.0.0.1:{tls_port};transport=tls"
        ok = invite.create_response(200, to_tag="phone1")
        ok.headers.add("Contact", contact)
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = sdp_offer("127.0.0.1", 41000)
        phone.send(ok.to_bytes())
        assert (await phone.recv_request("ACK")).to.tag == "phone1"
        bye = await phone.recv_request("BYE")
        phone.send(bye.create_response(200).to_bytes())
    finally:
        await phone.close()
    logs = await wait_for_log(engine, "ended Disconnected 200")
    assert "connected" in logs and "ended Disconnected 200" in logs, logs
    assert len([c for c in engine.ua.endpoint._conns if not c.inbound]) == 0  # no connection of ours


async def test_alias_reuses_the_connection_for_the_sent_by(
        make_engine: EngineFactory, certs: CertSet) -> None:
    """RFC 5923: a request over TLS whose Via has ``alias`` and a sent-by on
    the connection's own address makes that address:port reach the
    connection; a sent-by on another host is not honoured."""
    engine = await tls_engine(make_engine, TONE_RULES, {"tone": TONE}, certs)
    tls_port = engine.ua.config.tls_port
    endpoint = engine.ua.endpoint
    peer = await TlsPeer("127.0.0.1", ("127.0.0.1", tls_port), client_context(certs.ca)).open()
    try:
        for host in ("192.0.2.8", "127.0.0.1"):
            data = request("OPTIONS", f"sips:tone@127.0.0.1:{tls_port}", local=(host, 5999), transport="TLS")
            peer.send(data.replace(b";rport\r\n", b";rport;alias\r\n", 1))
            assert (await peer.expect(method="OPTIONS")).status == 200
            assert endpoint.has_connection(Peer("TLS", "127.0.0.1", 5999)) == (host == "127.0.0.1")
            assert not endpoint.has_connection(Peer("TLS", "192.0.2.8", 5999))
    finally:
        await peer.close()


async def test_tls_connections_count_against_max_tcp_per_source(
        make_engine: EngineFactory, certs: CertSet) -> None:
    """An untrusted source may hold ``max_tcp_per_source`` connections, TCP
    and TLS together, counted before the TLS handshake: with two plain TCP
    connections open (that never send anything, let alone a ClientHello),
    a TLS connection is closed at once and its handshake fails."""
    policy = SecurityPolicy(max_tcp_per_source=2, trusted=frozenset())
    engine = await tls_engine(make_engine, TONE_RULES, {"tone": TONE}, certs, policy=policy)
    tls_port = engine.ua.config.tls_port
    held = [await asyncio.open_connection("127.0.0.1", tls_port) for _ in range(2)]
    try:
        assert await wait_until(lambda: engine.ua.endpoint.admission.connections_from("127.0.0.1") == 2, 2.0)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            await TlsPeer("127.0.0.1", ("127.0.0.1", tls_port), client_context(certs.ca)).open()
    finally:
        for _, writer in held:
            writer.close()
    assert await wait_until(lambda: engine.ua.endpoint.admission.connections_from("127.0.0.1") == 0, 2.0)


async def test_handshake_timeout_frees_the_slot(make_engine: EngineFactory, certs: CertSet) -> None:
    """A connection to the TLS port that never finishes its handshake is
    closed after ``tls_handshake_timeout`` (the slowloris defence), and
    its slot is free again."""
    policy = SecurityPolicy(tls_handshake_timeout=0.3, trusted=frozenset())
    engine = await tls_engine(make_engine, TONE_RULES, {"tone": TONE}, certs, policy=policy)
    reader, writer = await asyncio.open_connection("127.0.0.1", engine.ua.config.tls_port)
    try:
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed by the engine
    finally:
        writer.close()
    assert await wait_until(lambda: engine.ua.endpoint.admission.connections_from("127.0.0.1") == 0, 2.0)


def test_tls_listener_accepts_under_uvloop(certs: CertSet, tmp_path: Path) -> None:
    """``callbridge serve`` runs on uvloop, which starts reading an accepted
    connection only once ``connection_made`` has returned (the pause there
    does nothing), so the ClientHello reaches the SIP protocol before
    ``start_tls`` has taken the stream. Check that on a uvloop loop a TLS
    client completes its handshake and an OPTIONS over it is answered 200,
    twice in a row (before the fix the handshake hung until
    ``tls_handshake_timeout`` and the client saw ConnectionResetError: the
    TLS half of bench/sip_tls.py)."""
    import uvloop

    (tmp_path / "rules.yaml").write_text('rules:\n  - {name: Any, pattern: "tone", scenarios: [answer_wait_hangup]}\n')
    config = EngineConfig(
        sip_hosts=["127.0.0.1"], sip_port=0, http_port=0, sip_tls_port=0, rules=tmp_path / "rules.yaml",
        scenarios=SCENARIOS, data_dir=tmp_path / "data", tls_cert=certs.cert, tls_key=certs.key,
        policy=SecurityPolicy(trusted=frozenset(), tls_handshake_timeout=3.0))

    async def options_over_tls() -> list[int]:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        engine = Engine(config)
        await engine.start()
        statuses = []
        try:
            tls_port = engine.ua.config.tls_port
            for _ in range(2):
                peer = await TlsPeer("127.0.0.1", ("127.0.0.1", tls_port), client_context(certs.ca)).open()
                try:
                    peer.send(request("OPTIONS", f"sips:tone@127.0.0.1:{tls_port}", local=peer.local,
                                      transport="TLS"))
                    statuses.append((await peer.expect(method="OPTIONS", timeout=5)).status)
                finally:
                    await peer.close()
        finally:
            await engine.stop()
        return statuses

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(options_over_tls()) == [200, 200]


SRTP_RULES = """
rules:
  - {name: Secure, pattern: "secure", scenarios: [tone_echo], srtp: mandatory}
"""

TONE_ECHO = '''
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


async def on_alerting(e):
    call = e.call
    call.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    await call.answer()
    done = await call.start_playback_tone(1000, 1.0)
    Logger.write(f"tone played {done}")
    call.start_echo()


VoxEngine.add_event_listener(AppEvents.CallAlerting, on_alerting)
'''


def _srtp_session(key: bytes, inbound: bool) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=key, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
                              ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound
                              else pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    return pylibsrtp.Session(policy=policy)


async def test_srtp_call_over_tls_both_ways_and_drops_recorded(make_engine: EngineFactory, certs: CertSet) -> None:
    """A full call from a Python client over TLS to a rule with ``srtp:
    mandatory``: the SDES offer (RTP/SAVP, one AES_CM_128_HMAC_SHA1_80 key)
    is answered RTP/SAVP with the engine's own key, inside the TLS
    connection. Audio flows both ways as SRTP, protected and checked here
    with pylibsrtp directly: the engine's 1000 Hz tone, then our 440 Hz
    tone echoed back (so the engine decrypted ours and encrypted it again);
    no datagram holds a run of either tone's PCMU bytes. A packet forged
    without the key and a replayed one are dropped, and the ``call.ended``
    record (in the store) carries them as ``media.srtp_auth_failed`` and
    ``media.srtp_replay`` next to the RTP counts."""
    engine = await tls_engine(make_engine, SRTP_RULES, {"tone_echo": TONE_ECHO}, certs)
    assert engine.store is not None
    tls_port = engine.ua.config.tls_port
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.setblocking(False)
    our_key = new_srtp_key("AES_CM_128_HMAC_SHA1_80")
    offer = create_offer("127.0.0.1", rtp.getsockname()[1], [PCMU], session_id=5, session_version=1,
                         telephone_event=False, crypto=[CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", our_key)])
    peer = await TlsPeer("127.0.0.1", ("127.0.0.1", tls_port), client_context(certs.ca)).open()
    loop = asyncio.get_running_loop()
    wire: list[bytes] = []
    try:
        dialog = Dialog(peer, f"sips:secure@127.0.0.1:{tls_port}")  # type: ignore[arg-type]
        dialog.invite(body=offer.to_bytes())
        ok = await peer.expect(200, method="INVITE", timeout=5)
        dialog.learn(ok)
        dialog.ack()
        answer = parse_sdp(ok.body)
        (crypto,) = answer.media[0].crypto
        assert answer.media[0].proto == "RTP/SAVP" and crypto.suite == "AES_CM_128_HMAC_SHA1_80"
        assert crypto.key != our_key
        engine_rtp = ("127.0.0.1", answer.media[0].port)
        tx, rx = _srtp_session(our_key, inbound=False), _srtp_session(crypto.key, inbound=True)
        encoder, sender = get_encoder("PCMU"), RtpSender()
        tone = ToneSource(440, 4.0)
        started = loop.time()
        for i in range(150):  # 3 s of 440 Hz, paced at 20 ms
            packet = tx.protect(sender.next_packet(encoder.encode(tone.read(160)), 0, 160).serialize())
            rtp.sendto(packet, engine_rtp)
            if i == 60:
                rtp.sendto(packet, engine_rtp)  # a replay
                fake = _srtp_session(new_srtp_key("AES_CM_128_HMAC_SHA1_80"), inbound=False)
                forged = RtpPacket(0, (sender.sequence_number + 5) & 0xFFFF, 0, sender.ssrc, b"\xff" * 160)
                rtp.sendto(fake.protect(forged.serialize()), engine_rtp)  # no key: a forgery
            while True:
                try:
                    wire.append(rtp.recv(2048))
                except BlockingIOError:
                    break
            await asyncio.sleep(max(0.0, started + (i + 1) * 0.02 - loop.time()))
        dialog.send("BYE")
        assert (await peer.expect(200, method="BYE")).status == 200
    finally:
        await peer.close()
        rtp.close()
    rtp_wire = [d for d in wire if not 200 <= d[1] <= 204]
    assert len(rtp_wire) > 100, len(rtp_wire)
    # Nothing in clear: no 8-byte run of either tone's PCMU bytes on the wire.
    for freq in (1000, 440):
        source = ToneSource(freq, 1.0)
        clear = b"".join(get_encoder("PCMU").encode(source.read(160)) for _ in range(50))
        runs = {clear[i:i + 8] for i in range(len(clear) - 8)}
        assert not any(d[i:i + 8] in runs for d in wire for i in range(len(d) - 7)), freq
    packets = [RtpPacket.parse(bytes(rx.unprotect(d))) for d in rtp_wire]  # raises if any fails
    ordered = sorted(packets, key=lambda p: (p.timestamp - packets[0].timestamp) & 0xFFFFFFFF)
    pcm = np.concatenate([get_decoder("PCMU").decode(p.payload) for p in ordered]).astype(np.float64)
    first, last = pcm[:8000 - 800], pcm[-8000:]
    assert goertzel(first, 1000) > 100 * goertzel(first, 440), "the engine's tone"
    assert goertzel(last, 440) > 100 * goertzel(last, 1000), "our tone, echoed"
    assert await wait_until(lambda: bool(engine.store and engine.store.list_call_records()), 5.0)
    (record,) = engine.store.list_call_records()
    media = record["media"]
    assert media["srtp_auth_failed"] >= 1 and media["srtp_replay"] >= 1, media
    assert media["packets_received"] >= 140 and media["packets_sent"] >= 100, media


async def test_reload_serves_the_new_certificate_and_keeps_dialogs(
        make_engine: EngineFactory, tmp_path: Path) -> None:
    """``Engine.reload_tls()`` (what SIGHUP runs) with a new pair written
    over ``tls_cert``/``tls_key``: a new TLS connection to the SIP TLS port
    is given the new certificate (its serial), verified against the new
    CA, while a dialog set up over a connection made before the reload
    still ends: its BYE gets a 200 over that connection."""
    old = make_certs(tmp_path / "old", "old")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(old.cert.read_bytes())
    key.write_bytes(old.key.read_bytes())
    engine = await make_engine(TONE_RULES, {"tone": TONE}, tls_cert=cert, tls_key=key, sip_tls_port=0)
    tls_port = engine.ua.config.tls_port
    assert await served_serial("127.0.0.1", tls_port, trusting(old.ca)) == serial_of(old.cert)
    peer = await TlsPeer("127.0.0.1", ("127.0.0.1", tls_port), client_context(old.ca)).open()
    try:
        dialog = Dialog(peer, f"sips:tone@127.0.0.1:{tls_port}")  # type: ignore[arg-type]
        dialog.invite(body=sdp_offer("127.0.0.1", 41002))
        ok = await peer.expect(200, method="INVITE", timeout=5)
        dialog.learn(ok)
        dialog.ack()
        new = make_certs(tmp_path / "new", "new")
        cert.write_bytes(new.cert.read_bytes())
        key.write_bytes(new.key.read_bytes())
        assert engine.reload_tls()
        assert await served_serial("127.0.0.1", tls_port, trusting(new.ca)) == serial_of(new.cert)
        with pytest.raises(ssl.SSLCertVerificationError):
            await served_serial("127.0.0.1", tls_port, trusting(old.ca))
        dialog.send("BYE")
        assert (await peer.expect(200, method="BYE", timeout=5)).status == 200
    finally:
        await peer.close()
    assert serial_of(new.cert) != serial_of(old.cert)
