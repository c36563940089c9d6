"""The flagship application over SIP over TLS and SRTP (issue 14), with
real phones only: the shipped rules and scenarios (the ``InboundFromPSTN``
rule given ``srtp: mandatory`` in a test copy of rules.yaml), a room made
with ``callbridge rooms create``, and two baresip softphones that dial the
conference number over TLS (``;transport=tls``, verifying the engine's
certificate against the test CA through ``sip_cafile``) with
``mediaenc=srtp-mand`` (SDES keys, RFC 4568, carried inside the TLS
connection), type the PIN as RFC 4733 events and hear each other.

What crosses the wire is read where it crosses it: every datagram the
engine's RTP sockets receive (straight out of ``recvfrom``) or send (into
``sendto``) is recorded by wrapping :class:`~engine.transport.rtp_transport.RtpTransport`,
the one place those sockets are read and written. On loopback a packet
capture needs root, and a relay would have to rewrite the SDP inside the
TLS connection; these are the same bytes a capture would show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tls_ca import make_certs

from engine.media.codecs import get_decoder, get_encoder

from .baresip import Baresip, write_tone_wav
from .phone import tone_level
from .test_flagship_phone import ROOT, meet_by_pin, rooms_create
from .wire_tap import RtpWireTap

pytestmark = pytest.mark.e2e

#: RTP payload types negotiated with baresip (PCMU only, telephone-event).
PCMU, TELEPHONE_EVENT = 0, 101
#: The authentication tag AES_CM_128_HMAC_SHA1_80 appends (RFC 3711 §4.2, RFC 4568 §6.2.1).
TAG = 10
#: SRTCP's index word and tag after the RTCP packet (RFC 3711 §3.4).
SRTCP_TRAILER = 4 + TAG


def rtp(tap: RtpWireTap, direction: str) -> list[bytes]:
    """The datagrams shaped like RTP (version 2, one of our payload types)."""
    return [d for d in tap.datagrams(direction) if len(d) >= 12 and d[0] >> 6 == 2
            and d[1] & 0x7F in (PCMU, TELEPHONE_EVENT)]


def rtcp(tap: RtpWireTap, direction: str) -> list[bytes]:
    return [d for d in tap.datagrams(direction) if len(d) >= 8 and 200 <= d[1] <= 204]


def clear_windows(freq: float, folder: Path) -> set[bytes]:
    """Every 8-byte run of ``freq``'s tone as baresip sends it in PCMU,
    at any alignment (the tone is periodic, so one second holds them all)."""
    wav = folder / f"{freq:g}.wav"
    write_tone_wav(wav, freq, seconds=1.0)
    pcm = np.frombuffer(wav.read_bytes()[44:], dtype="<i2")
    clear = get_encoder("PCMU").encode(pcm)
    return {clear[i:i + 8] for i in range(len(clear) - 8)}


def has_clear_run(data: bytes, windows: set[bytes]) -> bool:
    return any(data[i:i + 8] in windows for i in range(len(data) - 7))


async def test_two_phones_meet_over_tls_and_srtp(make_engine: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two baresip phones (440 Hz and 1000 Hz microphones) dial 5550100
    over TLS with SRTP mandatory, type PIN 4321#, and each hears the
    other's tone (Goertzel on what its ``sndfile`` module decoded).

    The wire carries no plain RTP, checked three ways on every RTP-shaped
    datagram (an SRTP packet keeps the clear RTP header, RFC 3711 §3.1, so
    "does it parse as RTP" proves nothing; its payload is what must be
    unreadable):

    * each PCMU and telephone-event packet, both ways, is exactly its
      plain size plus the 10-byte HMAC-SHA1-80 tag (182 bytes for 20 ms of
      PCMU), and each RTCP packet the engine sends ends in an SRTCP index
      with the E (encrypted) bit set;
    * no datagram holds an 8-byte run of either tone's PCMU bytes, at any
      offset; as a control, the audio each phone decoded, encoded back to
      PCMU, does hold runs of the other phone's tone (so the check would
      have caught the engine forwarding clear audio);
    * the payloads of each stream (SSRC), decoded as if they were plain
      PCMU, have no energy at either tone (Goertzel), unlike the phones'
      audio. Run on the same call without SRTP, all three checks fail.
    """
    tap = RtpWireTap(monkeypatch)
    certs = make_certs(tmp_path / "tls", "engine")
    shipped = (ROOT / "rules.yaml").read_text()
    rules = shipped.replace("    scenarios: [pstn_gatekeeper]\n",
                            "    scenarios: [pstn_gatekeeper]\n    srtp: mandatory\n")
    assert rules != shipped
    engine = await make_engine(rules, ROOT / "scenarios", session_idle_timeout=5.0,
                               tls_cert=certs.cert, tls_key=certs.key)
    tls_port = engine.ua.config.tls_port
    rooms_create(engine, "4321")
    phones = [Baresip(tmp_path, "alice", 440.0, cafile=certs.ca, mediaenc="srtp-mand"),
              Baresip(tmp_path, "bob", 1000.0, cafile=certs.ca, mediaenc="srtp-mand")]
    await meet_by_pin(engine, phones, f"sip:5550100@127.0.0.1:{tls_port};transport=tls")
    for phone in phones:
        assert "transport=tls" in phone.output() and "srtp" in phone.output().lower()
    # They heard each other.
    alice, bob = (p.heard()[-8000 * 2:] for p in phones)
    assert alice.size and bob.size, "sndfile recorded nothing"
    assert tone_level(alice, 1000.0) > 500, tone_level(alice, 1000.0)
    assert tone_level(bob, 440.0) > 500, tone_level(bob, 440.0)
    assert tone_level(alice, 440.0) < tone_level(alice, 1000.0) / 10
    assert tone_level(bob, 1000.0) < tone_level(bob, 440.0) / 10

    # 1. Sizes: every media packet carries an SRTP tag; our RTCP is SRTCP, encrypted.
    sent, received = rtp(tap, "out"), rtp(tap, "in")
    assert len(sent) > 100 and len(received) > 100, (len(sent), len(received))
    for packet in sent + received:
        plain = 12 + (160 if packet[1] & 0x7F == PCMU else 4)
        assert len(packet) == plain + TAG, (len(packet), packet[:12].hex())
    sent_rtcp = rtcp(tap, "out")
    assert sent_rtcp and all(p[-SRTCP_TRAILER] & 0x80 for p in sent_rtcp)

    # 2. No run of either tone's PCMU bytes on the wire, while the control finds them.
    windows = {440.0: clear_windows(440.0, tmp_path), 1000.0: clear_windows(1000.0, tmp_path)}
    encoder = get_encoder("PCMU")
    assert has_clear_run(encoder.encode(bob.astype(np.int16)), windows[440.0])
    assert has_clear_run(encoder.encode(alice.astype(np.int16)), windows[1000.0])
    for _, way, data, _ in tap.packets:
        for freq, runs in windows.items():
            assert not has_clear_run(data, runs), f"{way} datagram holds {freq:g} Hz PCMU in clear"

    # 3. Read as plain PCMU, each stream's payloads are noise: neither tone is in them.
    decoder = get_decoder("PCMU")
    streams: dict[bytes, list[bytes]] = {}
    for packet in sent + received:
        if packet[1] & 0x7F == PCMU:
            streams.setdefault(packet[8:12], []).append(packet[12:-TAG])
    long = [b"".join(p) for p in streams.values() if len(p) > 100]
    assert len(long) >= 4, [len(p) for p in streams.values()]  # two phones, two legs
    for payloads in long:
        pcm = np.asarray(decoder.decode(payloads), dtype=np.float64)
        for freq in (440.0, 1000.0):
            assert tone_level(pcm, freq) < 300, (freq, tone_level(pcm, freq))
