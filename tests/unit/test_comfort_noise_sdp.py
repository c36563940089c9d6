"""RFC 3389 comfort noise (CN) in offer/answer: offered and accepted only
when asked (the engine's silence suppression), never picked as the codec."""

from __future__ import annotations

import pytest

from engine.sip.errors import RemoteProtocolError
from engine.sip.offer_answer import PCMA, PCMU, Codec, create_answer, create_offer, process_answer
from engine.sip.sdp import parse_sdp


def phone_offer(formats: str, rtpmaps: list[str]) -> bytes:
    lines = ["v=0", "o=phone 1 1 IN IP4 192.0.2.10", "s=-", "c=IN IP4 192.0.2.10", "t=0 0",
             f"m=audio 4000 RTP/AVP {formats}", *(f"a=rtpmap:{m}" for m in rtpmaps)]
    return ("\r\n".join(lines) + "\r\n").encode()


def answer_formats(answer_bytes: bytes) -> tuple[list[str], dict[int, str]]:
    media = parse_sdp(answer_bytes).media[0]
    return media.formats, {pt: str(m) for pt, m in media.rtpmap.items()}


def test_offer_has_cn_only_when_asked() -> None:
    """Check our offer lists CN at 13 (static, with an rtpmap) when comfort
    noise is on, once per clock rate (a dynamic number for 16 kHz), and
    not at all by default (today's offers are unchanged)."""
    plain = create_offer("192.0.2.1", 5000, [PCMU, PCMA], session_id=1, session_version=1)
    assert plain.media[0].formats == ["0", "8", "101"]
    with_cn = create_offer("192.0.2.1", 5000, [PCMU, PCMA], session_id=1, session_version=1, comfort_noise=True)
    assert with_cn.media[0].formats == ["0", "8", "101", "13"]
    assert str(with_cn.media[0].rtpmap[13]) == "CN/8000"
    wide = create_offer("192.0.2.1", 5000, [Codec("G722", 8000, payload_type=9), Codec("opus", 48000, 2)],
                        session_id=1, session_version=1, comfort_noise=True)
    cn = {pt: m.clock_rate for pt, m in wide.media[0].rtpmap.items() if m.encoding_name == "CN"}
    assert cn[13] == 8000 and sorted(cn.values()) == [8000, 48000] and len(cn) == 2


def test_answer_accepts_offered_cn_under_the_offerers_number() -> None:
    """Check an answer with comfort noise on takes the offer's CN (static 13
    or a dynamic number, at the codec's rate) and says so in the result;
    with it off, or at another rate, CN is left out as before."""
    offer = parse_sdp(phone_offer("0 13 101", ["0 PCMU/8000", "13 CN/8000", "101 telephone-event/8000"]))
    answer, neg = create_answer(offer, "192.0.2.1", 5000, [PCMU], session_id=1, session_version=1,
                                comfort_noise=True)
    assert neg is not None and neg.comfort_noise_pt == 13 and neg.codec.name == "PCMU"
    formats, maps = answer_formats(answer.to_bytes())
    assert formats == ["0", "101", "13"] and maps[13] == "CN/8000"
    answer, neg = create_answer(offer, "192.0.2.1", 5000, [PCMU], session_id=1, session_version=1)
    assert neg is not None and neg.comfort_noise_pt is None
    assert answer_formats(answer.to_bytes())[0] == ["0", "101"]
    dynamic = parse_sdp(phone_offer("8 98 99", ["8 PCMA/8000", "98 CN/16000", "99 CN/8000"]))
    _, neg = create_answer(dynamic, "192.0.2.1", 5000, [PCMU, PCMA], session_id=1, session_version=1,
                           comfort_noise=True)
    assert neg is not None and neg.comfort_noise_pt == 99


def test_cn_is_never_the_codec() -> None:
    """Check an offer listing CN first still gets a real codec (and one with
    only CN and an unknown codec gets 488), and an answer to our offer that
    lists CN first is read as PCMU with CN beside it."""
    offer = parse_sdp(phone_offer("13 0", ["13 CN/8000", "0 PCMU/8000"]))
    _, neg = create_answer(offer, "192.0.2.1", 5000, [PCMU, Codec("CN", 8000, payload_type=13)],
                           session_id=1, session_version=1, comfort_noise=True)
    assert neg is not None and neg.codec.name == "PCMU" and neg.comfort_noise_pt == 13
    only_cn = parse_sdp(phone_offer("13 18", ["13 CN/8000", "18 G729/8000"]))
    with pytest.raises(RemoteProtocolError) as err:
        create_answer(only_cn, "192.0.2.1", 5000, [PCMU, Codec("CN", 8000, payload_type=13)],
                      session_id=1, session_version=1, comfort_noise=True)
    assert err.value.status == 488
    ours = create_offer("192.0.2.1", 5000, [PCMU], session_id=1, session_version=1, comfort_noise=True)
    theirs = parse_sdp(phone_offer("13 0", ["13 CN/8000", "0 PCMU/8000"]))
    neg = process_answer(ours, theirs)
    assert neg.codec.name == "PCMU" and neg.codec.payload_type == 0 and neg.comfort_noise_pt == 13


def test_answer_cannot_add_cn_we_did_not_offer() -> None:
    """Check CN in an answer to an offer without CN is ignored (an answer
    adds no format, RFC 3264 section 6.1): nothing is negotiated."""
    ours = create_offer("192.0.2.1", 5000, [PCMU], session_id=1, session_version=1)
    theirs = parse_sdp(phone_offer("0 13", ["0 PCMU/8000", "13 CN/8000"]))
    assert process_answer(ours, theirs).comfort_noise_pt is None
