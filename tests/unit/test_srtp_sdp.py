"""SDES in SDP (RFC 4568) and its offer/answer: ``a=crypto`` parsed and
written, malformed lines refused with their line number, each supported
suite negotiated with our own key under the offer's tag, and the SRTP
policy deciding which streams are acceptable."""

from __future__ import annotations

import base64

import pytest

from engine.sip.errors import RemoteProtocolError
from engine.sip.offer_answer import PCMU, SrtpParameters, create_answer, create_offer, process_answer
from engine.sip.sdp import SRTP_SUITES, CryptoAttribute, parse_crypto, parse_sdp

KEY30 = bytes(range(30))
KEY28 = bytes(range(28))
B64 = base64.b64encode(KEY30).decode()


def offer_text(proto: str = "RTP/SAVP", *crypto: str) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio 4000 {proto} 0 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000",
             *(f"a=crypto:{c}" for c in crypto)]
    return "\r\n".join(lines) + "\r\n"


def answer(offer: str, srtp: str = "optional") -> tuple[str, SrtpParameters | None]:
    sdp, neg = create_answer(parse_sdp(offer), "127.0.0.1", 5000, [PCMU], session_id=1, session_version=1,
                             srtp=srtp, srtp_key=lambda suite: b"\x07" * SRTP_SUITES[suite])  # type: ignore[arg-type]
    assert neg is not None
    return sdp.to_bytes().decode(), neg.srtp


def test_crypto_round_trip_with_lifetime_and_mki() -> None:
    """Check every field of an a=crypto value is read and written back unchanged."""
    text = f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^20|1:32 KDR=1"
    crypto = parse_crypto(text)
    assert crypto == CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", KEY30, "2^20", (1, 32), ("KDR=1",))
    assert str(crypto) == text
    assert B64 not in repr(crypto)  # keys never reach logs


@pytest.mark.parametrize("value, message", [
    ("1 AES_CM_128_HMAC_SHA1_80", "needs '<tag> <crypto-suite> inline:<key>'"),
    (f"x AES_CM_128_HMAC_SHA1_80 inline:{B64}", "bad tag 'x'"),
    (f"1 AES-CM inline:{B64}", "bad crypto-suite 'AES-CM'"),
    (f"1 AES_CM_128_HMAC_SHA1_80 uri:{B64}", "key method must be 'inline', got 'uri'"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:not*base64", "key is not valid base64"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA", "AES_CM_128_HMAC_SHA1_80 needs a 30-byte key and salt, got 3 bytes"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|x", "bad lifetime or MKI 'x'"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|1|2|3", "too many '|' fields in the key parameters"),
])
def test_bad_crypto_line_names_the_line(value: str, message: str) -> None:
    """Check a malformed a=crypto is a 400 naming its SDP line and the fault, never a crash."""
    with pytest.raises(RemoteProtocolError) as info:
        parse_sdp(offer_text("RTP/SAVP", value))
    assert str(info.value) == f"SDP line 9: bad crypto attribute: {message}"
    assert info.value.status == 400


def test_unknown_suite_is_not_an_error() -> None:
    """Check a suite we do not know parses (RFC 4568 section 7.1.1: the answerer skips it)."""
    assert parse_crypto("3 F8_128_HMAC_SHA1_80 inline:AAAA").suite == "F8_128_HMAC_SHA1_80"


@pytest.mark.parametrize("suite, key", [
    ("AES_CM_128_HMAC_SHA1_80", KEY30), ("AES_CM_128_HMAC_SHA1_32", KEY30), ("AEAD_AES_128_GCM", KEY28),
])
def test_answer_each_suite(suite: str, key: bytes) -> None:
    """Check an SAVP offer of each supported suite is answered SAVP under the
    same tag and suite with our own key, and the keys go the right way."""
    offer = offer_text("RTP/SAVP", f"5 {suite} inline:{base64.b64encode(key).decode()}")
    text, keys = answer(offer)
    ours = b"\x07" * len(key)
    assert "m=audio 5000 RTP/SAVP 0 101" in text
    assert f"a=crypto:5 {suite} inline:{base64.b64encode(ours).decode()}\r\n" in text
    assert keys == SrtpParameters(suite, send_key=ours, recv_key=key)


def test_answer_takes_first_usable_crypto() -> None:
    """Check unknown suites, MKI and session parameters are skipped in the offerer's order."""
    b64 = base64.b64encode(KEY30).decode()
    offer = offer_text("RTP/SAVP", f"1 F8_128_HMAC_SHA1_80 inline:{b64}",
                       f"2 AES_CM_128_HMAC_SHA1_80 inline:{b64}|1:4",
                       f"3 AES_CM_128_HMAC_SHA1_80 inline:{b64} UNENCRYPTED_SRTP",
                       f"4 AES_CM_128_HMAC_SHA1_32 inline:{b64}")
    text, keys = answer(offer)
    assert text.count("a=crypto:") == 1 and "a=crypto:4 AES_CM_128_HMAC_SHA1_32 " in text
    assert keys is not None and keys.suite == "AES_CM_128_HMAC_SHA1_32"


def test_savpf_answered_in_kind() -> None:
    """Check an RTP/SAVPF offer is answered RTP/SAVPF."""
    text, keys = answer(offer_text("RTP/SAVPF", f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}"))
    assert "m=audio 5000 RTP/SAVPF 0 101" in text and keys is not None


def test_optional_answers_avp_with_avp() -> None:
    """Check the default policy answers a plain offer with plain RTP and no keys."""
    text, keys = answer(offer_text("RTP/AVP"))
    assert "RTP/AVP" in text and "a=crypto" not in text and keys is None


@pytest.mark.parametrize("srtp, proto, crypto, why", [
    ("mandatory", "RTP/AVP", (), "SRTP is required but the offer has no usable RTP/SAVP stream"),
    ("off", "RTP/SAVP", (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}",), "SRTP is off but the offer is RTP/SAVP"),
    ("optional", "RTP/SAVP", ("1 F8_128_HMAC_SHA1_80 inline:AAAA",),
     "no supported SDES crypto-suite in the RTP/SAVP offer"),
    ("mandatory", "RTP/SAVP", (), "no supported SDES crypto-suite in the RTP/SAVP offer"),
])
def test_not_acceptable(srtp: str, proto: str, crypto: tuple[str, ...], why: str) -> None:
    """Check the policy turns a mismatched offer into 488 saying why."""
    with pytest.raises(RemoteProtocolError) as info:
        answer(offer_text(proto, *crypto), srtp)
    assert info.value.status == 488
    assert str(info.value) == f"no acceptable audio stream ({why})"


def test_offer_and_process_answer() -> None:
    """Check our SAVP offer carries every key and the answer's tag picks ours and its key."""
    crypto = [CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", KEY30), CryptoAttribute(2, "AEAD_AES_128_GCM", KEY28)]
    offer = create_offer("127.0.0.1", 4000, [PCMU], session_id=1, session_version=1, crypto=crypto)
    text = offer.to_bytes().decode()
    assert "m=audio 4000 RTP/SAVP 0 101" in text and text.count("a=crypto:") == 2
    theirs = b"\x09" * 28
    reply = parse_sdp(text.replace("4000", "6000").split("a=crypto")[0]
                      + f"a=crypto:2 AEAD_AES_128_GCM inline:{base64.b64encode(theirs).decode()}\r\n")
    neg = process_answer(parse_sdp(text), reply)
    assert neg.srtp == SrtpParameters("AEAD_AES_128_GCM", KEY28, theirs)


@pytest.mark.parametrize("answer_tail, message", [
    ("", "answer has no a=crypto matching the offer"),
    (f"a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:{B64}\r\n", "answer has no a=crypto matching the offer"),
    (f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{B64}\r\n", "answer has no a=crypto matching the offer"),
])
def test_bad_answer_to_savp_offer(answer_tail: str, message: str) -> None:
    """Check an answer without our tag and suite fails the call with 488."""
    crypto = [CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", KEY30)]
    offer = create_offer("127.0.0.1", 4000, [PCMU], session_id=1, session_version=1, crypto=crypto)
    text = offer.to_bytes().decode().split("a=crypto")[0] + answer_tail
    with pytest.raises(RemoteProtocolError, match=f"^{message}$") as info:
        process_answer(offer, parse_sdp(text))
    assert info.value.status == 488


def test_plain_answer_to_savp_offer() -> None:
    """Check an RTP/AVP answer to our RTP/SAVP offer is refused (488), not taken as plain RTP."""
    offer = create_offer("127.0.0.1", 4000, [PCMU], session_id=1, session_version=1,
                         crypto=[CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", KEY30)])
    with pytest.raises(RemoteProtocolError, match="^answer is RTP/AVP, offer was RTP/SAVP$"):
        process_answer(offer, parse_sdp(offer_text("RTP/AVP")))
