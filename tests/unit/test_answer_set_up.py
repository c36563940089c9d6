"""The shortcuts of answering an offer, pinned against the general paths."""

from __future__ import annotations

import dataclasses

import pytest

from engine.sip.errors import RemoteProtocolError
from engine.sip.offer_answer import PCMA, PCMU, Codec, OfferAnswerState, _negotiated_codec, create_answer
from engine.sip.sdp import SessionDescription, parse_sdp, read_sdp

OFFER = (b"v=0\r\no=uac 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
         b"m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
         b"a=fmtp:101 0-16\r\n")


def test_read_sdp_shares_the_description_parse_sdp_copies() -> None:
    shared = read_sdp(OFFER)
    assert read_sdp(OFFER) is shared
    owned = parse_sdp(OFFER)
    assert owned == shared and owned is not shared and owned.media[0] is not shared.media[0]
    owned.media[0].attributes.append(("sendonly", None))  # the caller's to change
    assert read_sdp(OFFER) == parse_sdp(OFFER) != owned


def test_read_sdp_keeps_no_error() -> None:
    for _ in range(2):
        with pytest.raises(RemoteProtocolError, match="SDP line 2: missing '='"):
            read_sdp(b"v=0\r\nbad\r\n")


@pytest.mark.parametrize("codec, pt, fmtp", [
    (PCMU, 0, None), (PCMU, 96, None), (PCMU, 0, "x=1"), (PCMA, 8, None),
    (Codec("opus", 48000, 2, None, "useinbandfec=1"), 111, "useinbandfec=1"),
    (Codec("opus", 48000, 2, 111, "useinbandfec=1"), 111, "useinbandfec=1"),
    (Codec("opus", 48000, 2, 111, "useinbandfec=1"), 111, None),
])
def test_negotiated_codec_is_the_general_one(codec: Codec, pt: int, fmtp: str | None) -> None:
    general = Codec(codec.name, codec.clock_rate, codec.channels, pt, fmtp, codec.kind)
    assert _negotiated_codec(codec, pt, fmtp) == general
    assert dataclasses.astuple(_negotiated_codec(codec, pt, fmtp)) == dataclasses.astuple(general)


def test_answer_from_a_shared_offer_leaves_it_unchanged() -> None:
    offer = read_sdp(OFFER)
    before = parse_sdp(OFFER)
    answer, negotiated = create_answer(offer, "10.0.0.1", 20000, (PCMU, PCMA), session_id=1, session_version=1)
    assert negotiated is not None and negotiated.codec is PCMU and negotiated.telephone_event_pt == 101
    assert read_sdp(OFFER) == before
    assert answer.media[0].attributes is not offer.media[0].attributes


def _answered(owned: bool) -> tuple[OfferAnswerState, SessionDescription]:
    state = OfferAnswerState()
    state.receive_offer(parse_sdp(OFFER))
    answer, _ = create_answer(read_sdp(OFFER), "10.0.0.1", 20000, (PCMU,), session_id=1, session_version=1)
    state.record_answer(answer, owned=owned)
    return state, answer


def test_an_owned_first_answer_is_kept_as_the_general_path_copies_it() -> None:
    general, answer = _answered(owned=False)
    owned, owned_answer = _answered(owned=True)
    assert general.local == owned.local == answer and general.local is not answer
    assert owned.local is owned_answer  # no o= line to apply yet: nothing changed


def test_an_owned_later_answer_is_still_copied_and_stamped() -> None:
    for owned in (False, True):
        state, first = _answered(owned)
        state.receive_offer(parse_sdp(OFFER.replace(b"6000", b"6002")))
        second, _ = create_answer(read_sdp(OFFER), "10.0.0.1", 20002, (PCMU,), session_id=1, session_version=1)
        state.record_answer(second, owned=owned)
        assert state.local is not second and second.origin.sess_version == 1
        assert state.local is not None and state.local.origin.sess_version == 2  # RFC 3264 section 8
