"""Tests for :mod:`engine.sip.sdp` and :mod:`engine.sip.offer_answer`."""

from __future__ import annotations

import dataclasses
import itertools
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.sip.errors import LocalProtocolError, RemoteProtocolError
from engine.sip.offer_answer import (
    PCMA,
    PCMU,
    Codec,
    NegotiatedMedia,
    NegotiationInput,
    NegotiationState,
    OfferAnswerState,
    create_answer,
    create_offer,
    process_answer,
)
from engine.sip.sdp import (
    Connection,
    Direction,
    MediaDescription,
    Origin,
    RtpMap,
    SessionDescription,
    Timing,
    media_direction,
    parse_sdp,
    rtp_address,
)

DATA = pathlib.Path(__file__).parent / "data" / "sdp"
FIXTURES = sorted(p.name for p in DATA.glob("*.sdp"))
DIRECTIONS: list[Direction] = ["sendrecv", "sendonly", "recvonly", "inactive"]
OPUS = Codec("opus", 48000, 2)


def load(name: str) -> bytes:
    """Return a fixture with CRLF line ends (the files are stored with LF)."""
    return (DATA / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def sdp_text(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


HEAD = ("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0")


def offer_with(*media_lines: str, session: tuple[str, ...] = HEAD) -> SessionDescription:
    return parse_sdp(sdp_text(*session, *media_lines))


def answer_to(offer: SessionDescription, **kwargs: object) -> tuple[SessionDescription, NegotiatedMedia | None]:
    options: dict[str, object] = {"session_id": 77, "session_version": 1} | kwargs
    codecs = options.pop("codecs", [PCMU, PCMA])
    return create_answer(offer, "192.0.2.99", 30000, codecs, **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_round_trip(name: str) -> None:
    """Check every fixture serializes back to exactly its own bytes."""
    data = load(name)
    assert parse_sdp(data).to_bytes() == data


@pytest.mark.parametrize("name", FIXTURES)
def test_lf_only_and_trailing_whitespace(name: str) -> None:
    """Check LF-only line ends, trailing whitespace and blank lines parse like the clean form."""
    clean = load(name)
    sloppy = clean.replace(b"\r\n", b" \t\n") + b"\n\n"
    assert parse_sdp(sloppy) == parse_sdp(clean)
    assert bytes(parse_sdp(sloppy)) == clean


def test_parse_sipp_offer() -> None:
    """Check a sipp offer: PCMU plus telephone-event 101 with fmtp 0-16."""
    sdp = parse_sdp(load("sipp_offer.sdp"))
    assert sdp.version == 0
    assert sdp.origin == Origin("user1", "53655765", 2353687637, "IN", "IP4", "127.0.0.1")
    assert sdp.session_name == "-"
    assert sdp.connection == Connection("IN", "IP4", "127.0.0.1")
    assert sdp.timing == [Timing(0, 0)]
    [audio] = sdp.media
    assert (audio.kind, audio.port, audio.port_count, audio.proto) == ("audio", 6000, 1, "RTP/AVP")
    assert audio.formats == ["0", "101"]
    assert audio.rtpmap == {0: RtpMap("PCMU", 8000), 101: RtpMap("telephone-event", 8000)}
    assert audio.fmtp == {101: "0-16"}
    assert audio.direction is None
    assert media_direction(audio, sdp) == "sendrecv"
    assert audio.ptime is None and audio.rtcp is None
    assert rtp_address(audio, sdp) == ("127.0.0.1", 6000)


def test_parse_baresip_offer() -> None:
    """Check a baresip offer keeps rtcp, ssrc and other attributes in order."""
    sdp = parse_sdp(load("baresip_offer.sdp"))
    assert sdp.attributes == [("tool", "baresip 3.10.1")]
    [audio] = sdp.media
    assert audio.formats == ["0", "8", "101"]
    assert audio.bandwidths == {"AS": 80}
    assert audio.rtcp == 10181
    assert audio.ptime == 20
    assert audio.direction == "sendrecv"
    assert audio.attribute("ssrc") == "1912587392 cname:3b5f2c37-d3a9-4ab4-a1b2-25ffb5f1c4e1"
    assert audio.attribute("rtcp-rsize") is None
    assert ("rtcp-rsize", None) in audio.attributes
    assert [name for name, _ in audio.attributes][-4:] == ["label", "ssrc", "rtcp-rsize", "ptime"]


def test_parse_linphone_offer() -> None:
    """Check a linphone offer with opus channels, several telephone-events and video."""
    sdp = parse_sdp(load("linphone_offer.sdp"))
    audio, video = sdp.media
    assert audio.rtpmap[96] == RtpMap("opus", 48000, 2)
    assert 18 not in audio.rtpmap  # static type without rtpmap
    assert audio.fmtp[18] == "annexb=yes"
    assert video.kind == "video"
    assert video.rtpmap[97] == RtpMap("H264", 90000)
    assert rtp_address(video, sdp) == ("192.168.0.11", 9078)


def test_parse_ipv6() -> None:
    """Check IPv6 addresses in o= and c=."""
    sdp = parse_sdp(load("ipv6_offer.sdp"))
    assert sdp.origin.addrtype == "IP6"
    assert sdp.connection == Connection("IN", "IP6", "2001:db8::10")
    assert rtp_address(sdp.media[0], sdp) == ("2001:db8::10", 49170)


def test_parse_rfc4566_seminar() -> None:
    """Check repeat times, time zones, keys, port counts and multicast TTLs."""
    sdp = parse_sdp(load("rfc4566_seminar.sdp"))
    assert sdp.timing == [Timing(2873397496, 2873404696, ["604800 3600 0 90000"]), Timing(2873500000, 2873600000)]
    assert ("z", "2882844526 -1h 2898848070 0") in sdp.extra
    assert sdp.bandwidths == {"CT": 128}
    assert sdp.direction == "recvonly"
    audio, video = sdp.media
    assert (audio.port, audio.port_count) == (49170, 2)
    assert audio.extra == [("i", "Audio track"), ("k", "prompt")]
    assert media_direction(video, sdp) == "recvonly"  # inherited from the session level
    assert rtp_address(audio, sdp) == ("224.2.17.12", 49170)


def test_media_connection_overrides_session() -> None:
    """Check a media-level c= wins over the session-level one (RFC 8866 section 5.7)."""
    sdp = parse_sdp(load("rfc8866_example.sdp"))
    assert rtp_address(sdp.media[0], sdp) == ("198.51.100.1", 49170)
    assert rtp_address(sdp.media[2], sdp) == ("2001:db8::2", 51372)


def test_missing_connection() -> None:
    """Check rtp_address reports a stream without any c= line."""
    sdp = offer_with("m=audio 4000 RTP/AVP 0", session=HEAD[:3] + HEAD[4:])
    with pytest.raises(RemoteProtocolError, match="^SDP has no c= line for m=audio$"):
        rtp_address(sdp.media[0], sdp)


def test_unknown_lines_kept() -> None:
    """Check unknown type letters (GB28181 y= and f=) survive and follow the a= lines."""
    sdp = parse_sdp(load("gb28181_offer.sdp"))
    assert sdp.extra == [("u", "34020000001320000001:0")]
    assert sdp.media[0].extra == [("y", "0100000001"), ("f", "v/2/4///a///")]
    moved = sdp_text(*HEAD, "m=video 1 RTP/AVP 96", "y=1", "a=recvonly")
    assert bytes(parse_sdp(moved)) == sdp_text(*HEAD, "m=video 1 RTP/AVP 96", "a=recvonly", "y=1")


def test_missing_timing_accepted() -> None:
    """Check a description without t= reads as t=0 0 and is written with it."""
    sdp = parse_sdp(sdp_text("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "m=audio 4000 RTP/AVP 0"))
    assert sdp.timing == [Timing(0, 0)]
    assert bytes(sdp) == sdp_text(*HEAD, "m=audio 4000 RTP/AVP 0")


def test_lines_out_of_order_are_reordered() -> None:
    """Check sloppy line order within a section is accepted and written in RFC order."""
    sdp = parse_sdp(sdp_text("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "t=0 0", "a=x", "c=IN IP4 192.0.2.1"))
    assert bytes(sdp) == sdp_text(*HEAD, "a=x")


def test_empty_session_name() -> None:
    """Check an empty s= is written as "s= " (RFC 8866 section 5.3)."""
    sdp = parse_sdp(sdp_text("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=", "t=0 0"))
    assert sdp.session_name == ""
    assert b"\r\ns= \r\n" in bytes(sdp)


def test_non_utf8_survives() -> None:
    """Check bytes that are not UTF-8 come back unchanged."""
    data = sdp_text(*HEAD).replace(b"s=-", b"s=caf\xe9")
    assert bytes(parse_sdp(data)) == data


def test_str_input() -> None:
    """Check text input parses like bytes."""
    assert parse_sdp(load("sipp_offer.sdp").decode()) == parse_sdp(load("sipp_offer.sdp"))


def test_direction_setter() -> None:
    """Check setting a direction replaces the old attribute, and None removes it."""
    media = parse_sdp(load("baresip_offer.sdp")).media[0]
    media.direction = "sendonly"
    assert media.direction == "sendonly"
    assert [n for n, _ in media.attributes].count("sendonly") == 1
    assert ("sendrecv", None) not in media.attributes
    media.direction = None
    assert media.direction is None


def test_lenient_attributes() -> None:
    """Check a=ptime:20.0 reads as 20, and unreadable ptime, rtcp and fmtp values are skipped."""
    attributes = [("ptime", "20.0"), ("rtcp", "x"), ("fmtp", "* x=1"), ("fmtp", None)]
    media = MediaDescription("audio", 1, "RTP/AVP", ["0"], attributes=attributes)
    assert (media.ptime, media.rtcp, media.fmtp) == (20, None, {})
    media.attributes = [("ptime", "inf"), ("rtcp", "4001 IN IP4 192.0.2.1")]
    assert (media.ptime, media.rtcp) == (None, 4001)


def test_serialize_rejects_line_breaks() -> None:
    """Check our own values cannot smuggle in extra lines."""
    sdp = parse_sdp(load("sipp_offer.sdp"))
    sdp.media[0].attributes.append(("x", "1\r\na=evil"))
    with pytest.raises(LocalProtocolError, match="CR or LF"):
        sdp.to_bytes()


def test_bad_local_rtpmap() -> None:
    """Check a malformed rtpmap we added ourselves is our error, not the peer's."""
    media = MediaDescription("audio", 1, "RTP/AVP", ["96"], attributes=[("rtpmap", "96 opus")])
    with pytest.raises(LocalProtocolError, match="bad rtpmap '96 opus'"):
        media.rtpmap


V, O, S = "v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ((), "SDP is empty"),
        (("", " "), "SDP is empty"),
        ((V, O, "bogus"), "SDP line 3: missing '='"),
        ((V, O, "s"), "SDP line 3: missing '='"),
        (("V=0",), "SDP line 1: bad type letter 'V'"),
        ((O, V, S), "SDP line 1: expected 'v=', got 'o='"),
        ((V, S), "SDP line 2: expected 'o=', got 's='"),
        ((V, O), "SDP has no 's=' line"),
        (("v=1", O, S), "SDP line 1: unsupported version '1'"),
        ((V, "o=- 1 1 IN IP4", S), "SDP line 2: o= needs 6 fields, got 5"),
        ((V, "o=- 1 x IN IP4 h", S), "SDP line 2: bad sess-version 'x'"),
        ((V, O, S, "c=IN IP4"), "SDP line 4: c= needs 3 fields, got 2"),
        ((V, O, S, "c=IN IP4 127.0.0.1\x00"), "SDP line 4: bad connection address '127.0.0.1\\x00'"),
        ((V, O, S, "c=IN IP6 ::1%eth0"), "SDP line 4: bad connection address '::1%eth0'"),
        ((V, O, S, "c=IN IP4 h\u00f4te.example"), "SDP line 4: bad connection address 'h\u00f4te.example'"),
        ((V, O, S, "b=AS"), "SDP line 4: bad bandwidth 'AS'"),
        ((V, O, S, "b=AS:fast"), "SDP line 4: bad bandwidth 'fast'"),
        ((V, O, S, "t=0"), "SDP line 4: bad stop time ''"),
        ((V, O, S, "t=now 0"), "SDP line 4: bad start time 'now'"),
        ((V, O, S, "r=1 2 3"), "SDP line 4: 'r=' before 't='"),
        ((V, O, S, "o=- 2 2 IN IP4 h"), "SDP line 4: 'o=' not allowed here"),
        ((V, O, S, "t=0 0", "m=audio"), "SDP line 5: bad m= line 'audio'"),
        ((V, O, S, "t=0 0", "m=audio x RTP/AVP 0"), "SDP line 5: bad port 'x'"),
        ((V, O, S, "t=0 0", "m=audio 70000 RTP/AVP 0"), "SDP line 5: bad port '70000'"),
        ((V, O, S, "t=0 0", "m=audio 1/x RTP/AVP 0"), "SDP line 5: bad port count 'x'"),
        ((V, O, S, "t=0 0", "m=audio 1 RTP/AVP 0", "t=0 0"), "SDP line 6: 't=' not allowed in a media section"),
        ((V, O, S, "t=0 0", "m=audio 1 RTP/AVP 96", "a=rtpmap:96 opus"), "SDP line 6: bad rtpmap '96 opus'"),
        ((V, O, S, "t=0 0", "m=audio 1 RTP/AVP 96", "a=rtpmap:x PCMU/8000"), "SDP line 6: bad rtpmap 'x PCMU/8000'"),
        ((V, O, S, "t=0 0", "m=audio 1 RTP/AVP 96", "a=rtpmap:96 PCMU/fast"), "SDP line 6: bad rtpmap '96 PCMU/fast'"),
        ((V, O, S, "a="), "SDP line 4: empty attribute name"),
        ((V, O, S, "a=" + "x" * 60, "b=" + "y" * 60), "SDP line 5: bad bandwidth '" + "y" * 37 + "...'"),
    ],
)
def test_malformed(lines: tuple[str, ...], message: str) -> None:
    """Check each malformed description fails with its exact message and status 400."""
    with pytest.raises(RemoteProtocolError) as info:
        parse_sdp(sdp_text(*lines) if lines else b"")
    assert str(info.value) == message
    assert info.value.status == 400


def test_malformed_counts_physical_lines() -> None:
    """Check error line numbers count blank lines, so they match what the peer sent."""
    with pytest.raises(RemoteProtocolError, match=r"^SDP line 4: missing '='$"):
        parse_sdp(b"v=0\n\no=- 1 1 IN IP4 h\nbad\n")


# A round-trip property: anything we can build serializes, parses back equal,
# and serializes to the same bytes.
token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/+", min_size=1, max_size=12)
value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).filter(
    lambda s: s == s.rstrip()
)
nonempty = value.filter(bool)
connections = st.builds(Connection, token, token, token)
attributes = st.lists(st.tuples(token.filter(lambda t: t != "rtpmap"), st.none() | value), max_size=4)
bandwidths = st.dictionaries(token, st.integers(0, 10**9), max_size=2)


def extra_lines(letters: str, order: str) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Extra lines already in the order serialization puts them in."""
    lines = st.lists(st.tuples(st.sampled_from(letters), nonempty), max_size=3)
    return lines.map(lambda ls: sorted(ls, key=lambda line: order.find(line[0]) % (len(order) + 1)))


media_descriptions = st.builds(
    MediaDescription,
    kind=token,
    port=st.integers(0, 65535),
    proto=token,
    formats=st.lists(token, max_size=4),
    port_count=st.integers(1, 4),
    connection=st.none() | connections,
    bandwidths=bandwidths,
    attributes=attributes,
    extra=extra_lines("ikdfgqxy", "micbka"),
)
session_descriptions = st.builds(
    SessionDescription,
    origin=st.builds(Origin, token, st.integers(0, 2**64).map(str), st.integers(0, 2**64), token, token, token),
    session_name=value,
    connection=st.none() | connections,
    timing=st.lists(
        st.builds(Timing, st.integers(0, 2**40), st.integers(0, 2**40), st.lists(nonempty, max_size=2)),
        min_size=1,
        max_size=2,
    ),
    bandwidths=bandwidths,
    attributes=attributes,
    media=st.lists(media_descriptions, max_size=3),
    extra=extra_lines("iuepzkdfgqxy", "vosiuepcbtzka"),
)


@given(session_descriptions)
def test_round_trip_property(sdp: SessionDescription) -> None:
    """Check build -> serialize -> parse gives back the same description and bytes."""
    data = sdp.to_bytes()
    parsed = parse_sdp(data)
    assert parsed == sdp
    assert parsed.to_bytes() == data


# --------------------------------------------------------------------------- offers


def test_create_offer() -> None:
    """Check the exact bytes of a default G.711 offer."""
    offer = create_offer("192.0.2.10", 40000, [PCMU, PCMA], session_id=1234, session_version=1)
    assert bytes(offer) == sdp_text(
        "v=0",
        "o=callbridge 1234 1 IN IP4 192.0.2.10",
        "s=-",
        "c=IN IP4 192.0.2.10",
        "t=0 0",
        "m=audio 40000 RTP/AVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    )


def test_create_offer_options() -> None:
    """Check IPv6, dynamic payload types, telephone-event per clock rate and the keyword options."""
    offer = create_offer(
        "2001:db8::1",
        40000,
        [OPUS, Codec("L16", 8000, payload_type=101), PCMU],
        session_id=9,
        session_version=3,
        direction="sendonly",
        ptime=None,
        username="bob",
    )
    assert offer.origin == Origin("bob", "9", 3, "IN", "IP6", "2001:db8::1")
    assert offer.connection == Connection("IN", "IP6", "2001:db8::1")
    [audio] = offer.media
    assert audio.formats == ["96", "101", "0", "97", "98"]
    assert audio.rtpmap[96] == RtpMap("opus", 48000, 2)
    assert audio.rtpmap[97] == RtpMap("telephone-event", 48000)
    assert audio.rtpmap[98] == RtpMap("telephone-event", 8000)
    assert audio.ptime is None
    assert audio.direction == "sendonly"


def test_create_offer_without_telephone_event() -> None:
    """Check telephone_event=False leaves RFC 4733 out, and non-audio gets no ptime."""
    audio = create_offer("192.0.2.1", 1, [PCMA], session_id=1, session_version=1, telephone_event=False).media[0]
    assert audio.formats == ["8"]
    vp8 = Codec("VP8", 90000, kind="video")
    video = create_offer("192.0.2.1", 1, [vp8], session_id=1, session_version=1).media[0]
    assert (video.kind, video.formats, video.ptime) == ("video", ["96"], None)


@pytest.mark.parametrize(
    ("codecs", "message"),
    [
        ([], "no codecs to offer"),
        ([PCMU, Codec("VP8", 90000, kind="video")], "one kind"),
        ([PCMU, dataclasses.replace(PCMA, payload_type=0)], "payload types repeat"),
    ],
)
def test_create_offer_misuse(codecs: list[Codec], message: str) -> None:
    """Check offers we cannot build raise LocalProtocolError."""
    with pytest.raises(LocalProtocolError, match=message):
        create_offer("192.0.2.1", 1, codecs, session_id=1, session_version=1)


# --------------------------------------------------------------------------- answers


def test_answer_sipp_offer() -> None:
    """Check answering sipp: PCMU on 0, telephone-event on 101, exact answer bytes."""
    answer, media = answer_to(parse_sdp(load("sipp_offer.sdp")))
    assert bytes(answer) == sdp_text(
        "v=0",
        "o=callbridge 77 1 IN IP4 192.0.2.99",
        "s=-",
        "c=IN IP4 192.0.2.99",
        "t=0 0",
        "m=audio 30000 RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    )
    assert media == NegotiatedMedia(
        index=0,
        remote_address="127.0.0.1",
        remote_port=6000,
        remote_rtcp_port=6001,
        codec=PCMU,
        telephone_event_pt=101,
        ptime=20,
        send=True,
        recv=True,
        on_hold=False,
    )
    assert media.direction == "sendrecv"


def test_answer_follows_offerer_preference() -> None:
    """Check the offerer's codec order wins over ours, and a=rtcp gives the RTCP port."""
    _, media = answer_to(parse_sdp(load("baresip_offer.sdp")), codecs=[PCMA, PCMU])
    assert media is not None
    assert (media.codec.name, media.codec.payload_type) == ("PCMU", 0)
    assert media.remote_rtcp_port == 10181


def test_answer_linphone_rejects_video() -> None:
    """Check video gets port 0 in place, and telephone-event follows the codec's clock rate."""
    offer = parse_sdp(load("linphone_offer.sdp"))
    answer, media = answer_to(offer)
    audio, video = answer.media
    assert (audio.kind, audio.formats) == ("audio", ["0", "100"])
    assert (video.kind, video.port, video.formats, video.attributes) == ("video", 0, ["96", "97"], [])
    assert media is not None and media.telephone_event_pt == 100


def test_answer_opus_keeps_offer_fmtp() -> None:
    """Check the negotiated codec carries the offerer's fmtp and number."""
    _, media = answer_to(parse_sdp(load("linphone_offer.sdp")), codecs=[PCMU, OPUS])
    assert media is not None
    assert media.codec == Codec("opus", 48000, 2, 96, "useinbandfec=1")
    assert media.telephone_event_pt == 101  # telephone-event/48000


def test_answer_keeps_m_line_order() -> None:
    """Check a video stream offered first stays first, rejected (RFC 3264 section 6)."""
    offer = offer_with("m=video 5000 RTP/AVP 96", "a=rtpmap:96 VP8/90000", "m=audio 4000 RTP/AVP 0")
    answer, media = answer_to(offer)
    assert [(m.kind, m.port) for m in answer.media] == [("video", 0), ("audio", 30000)]
    assert media is not None and media.index == 1


def test_answer_accepts_one_stream_per_kind() -> None:
    """Check a second audio stream and an SRTP stream are rejected with port 0."""
    offer = offer_with("m=audio 4000 RTP/SAVP 0", "m=audio 4002 RTP/AVP 8", "m=audio 4004 RTP/AVP 0")
    answer, media = answer_to(offer)
    assert [m.port for m in answer.media] == [0, 30000, 0]
    assert media is not None and (media.index, media.codec.payload_type) == (1, 8)


def test_answer_telephone_event_dynamic_96() -> None:
    """Check telephone-event offered on 96 is answered on 96, and a=ptime is honoured."""
    answer, media = answer_to(parse_sdp(load("ipv6_offer.sdp")))
    assert answer.media[0].formats == ["8", "96"]
    assert answer.media[0].fmtp == {96: "0-16"}
    assert media is not None
    assert (media.codec.name, media.telephone_event_pt, media.ptime) == ("PCMA", 96, 30)
    assert (media.remote_address, media.remote_port) == ("2001:db8::10", 49170)


def test_answer_without_telephone_event() -> None:
    """Check telephone_event=False answers without RFC 4733 even if offered."""
    answer, media = answer_to(parse_sdp(load("sipp_offer.sdp")), telephone_event=False)
    assert answer.media[0].formats == ["0"]
    assert media is not None and media.telephone_event_pt is None


def test_answer_static_type_without_rtpmap() -> None:
    """Check static payload types are understood without an rtpmap (RFC 3551 section 6)."""
    _, media = answer_to(offer_with("m=audio 4000 RTP/AVP 18 x 8 96"))
    assert media is not None and media.codec == PCMA


def test_answer_ipv6_address() -> None:
    """Check our IPv6 address is written as IP6."""
    answer, _ = create_answer(
        parse_sdp(load("sipp_offer.sdp")), "::1", 30000, [PCMU], session_id=1, session_version=1
    )
    assert answer.connection == Connection("IN", "IP6", "::1")


# RFC 3264 section 6.1: offered direction x wanted direction -> answer direction, on_hold.
ANSWER_DIRECTIONS: dict[tuple[Direction, Direction], tuple[Direction, bool]] = {
    ("sendrecv", "sendrecv"): ("sendrecv", False),
    ("sendrecv", "sendonly"): ("sendonly", False),
    ("sendrecv", "recvonly"): ("recvonly", False),
    ("sendrecv", "inactive"): ("inactive", False),
    ("sendonly", "sendrecv"): ("recvonly", True),
    ("sendonly", "sendonly"): ("inactive", True),
    ("sendonly", "recvonly"): ("recvonly", True),
    ("sendonly", "inactive"): ("inactive", True),
    ("recvonly", "sendrecv"): ("sendonly", False),
    ("recvonly", "sendonly"): ("sendonly", False),
    ("recvonly", "recvonly"): ("inactive", False),
    ("recvonly", "inactive"): ("inactive", False),
    ("inactive", "sendrecv"): ("inactive", True),
    ("inactive", "sendonly"): ("inactive", True),
    ("inactive", "recvonly"): ("inactive", True),
    ("inactive", "inactive"): ("inactive", True),
}


@pytest.mark.parametrize(("offered", "wanted"), list(itertools.product(DIRECTIONS, DIRECTIONS)))
def test_answer_direction(offered: Direction, wanted: Direction) -> None:
    """Check every offered x wanted direction pair against RFC 3264 section 6.1."""
    expected, on_hold = ANSWER_DIRECTIONS[offered, wanted]
    answer, media = answer_to(offer_with("m=audio 4000 RTP/AVP 0", f"a={offered}"), direction=wanted)
    assert answer.media[0].direction == expected
    assert media is not None
    assert (media.direction, media.on_hold) == (expected, on_hold)


def test_answer_session_level_direction() -> None:
    """Check a session-level a=sendonly is treated as hold."""
    _, media = answer_to(offer_with("m=audio 4000 RTP/AVP 0", session=(*HEAD, "a=sendonly")))
    assert media is not None and (media.direction, media.on_hold) == ("recvonly", True)


@pytest.mark.parametrize("address", ["IP4 0.0.0.0", "IP6 ::"])
def test_answer_rfc2543_hold(address: str) -> None:
    """Check c=0.0.0.0 means hold and that we must not send (RFC 3264 section 8.4)."""
    offer = offer_with("m=audio 4000 RTP/AVP 0", session=(*HEAD[:3], f"c=IN {address}", "t=0 0"))
    answer, media = answer_to(offer)
    assert answer.media[0].direction == "recvonly"
    assert media is not None
    assert (media.send, media.recv, media.on_hold) == (False, True, True)


def test_answer_host_name_connection() -> None:
    """Check a host name in c= is not taken for a hold address."""
    offer = offer_with("m=audio 4000 RTP/AVP 0", session=(*HEAD[:3], "c=IN IP4 pbx.example.com", "t=0 0"))
    _, media = answer_to(offer)
    assert media is not None and (media.remote_address, media.on_hold) == ("pbx.example.com", False)


@pytest.mark.parametrize(
    "media_lines",
    [
        ("m=audio 4000 RTP/AVP 9", "a=rtpmap:9 G722/8000"),
        ("m=audio 4000 RTP/AVP 101", "a=rtpmap:101 telephone-event/8000"),
        ("m=audio 4000 RTP/AVP 96",),
        ("m=audio 4000 RTP/SAVP 0",),
        ("m=video 5000 RTP/AVP 96", "a=rtpmap:96 VP8/90000"),
    ],
)
def test_answer_not_acceptable(media_lines: tuple[str, ...]) -> None:
    """Check an offer without an acceptable audio stream fails with 488."""
    with pytest.raises(RemoteProtocolError, match="^no acceptable audio stream") as info:
        answer_to(offer_with(*media_lines))
    assert info.value.status == 488


def test_answer_disabled_streams() -> None:
    """Check an offer whose streams all have port 0 is answered with port 0 and no media."""
    answer, media = answer_to(offer_with("m=audio 0 RTP/AVP 0", "m=video 0 RTP/AVP"))
    assert [(m.port, m.formats) for m in answer.media] == [(0, ["0"]), (0, ["0"])]
    assert media is None


def test_answer_port_function() -> None:
    """Check the port function is asked only for acceptable streams, and None rejects."""
    offer = offer_with("m=video 5000 RTP/AVP 96", "m=audio 4000 RTP/AVP 0", "m=audio 4002 RTP/AVP 0")
    asked: list[int] = []

    def port_for(index: int) -> int | None:
        asked.append(index)
        return None if index == 1 else 31000 + index

    answer, media = create_answer(offer, "192.0.2.99", port_for, [PCMU], session_id=1, session_version=1)
    assert asked == [1, 2]
    assert [m.port for m in answer.media] == [0, 0, 31002]
    assert media is not None and media.index == 2


def test_answer_without_codecs() -> None:
    """Check answering with no codecs is our misuse."""
    with pytest.raises(LocalProtocolError):
        answer_to(parse_sdp(load("sipp_offer.sdp")), codecs=[])


# --------------------------------------------------------------------------- process_answer


def our_offer(direction: Direction = "sendrecv") -> SessionDescription:
    return create_offer("192.0.2.10", 40000, [PCMU, PCMA], session_id=1, session_version=1, direction=direction)


def test_process_answer() -> None:
    """Check a plain answer gives the remote address, codec and telephone-event."""
    answer = offer_with(
        "m=audio 5004 RTP/AVP 8 101", "a=rtpmap:101 telephone-event/8000", "a=ptime:30", "a=rtcp:5010"
    )
    assert process_answer(our_offer(), answer) == NegotiatedMedia(
        index=0,
        remote_address="192.0.2.1",
        remote_port=5004,
        remote_rtcp_port=5010,
        codec=Codec("PCMA", 8000, payload_type=8),
        telephone_event_pt=101,
        ptime=30,
        send=True,
        recv=True,
        on_hold=False,
    )


def test_process_answer_honours_answer_numbers() -> None:
    """Check the answerer's payload type numbers and codec order are used."""
    offer = create_offer("192.0.2.10", 40000, [OPUS, PCMU], session_id=1, session_version=1)
    answer = offer_with(
        "m=audio 5004 RTP/AVP 0 111 120",
        "a=rtpmap:111 OPUS/48000/2",
        "a=rtpmap:120 telephone-event/8000",
        "a=fmtp:0 x=1",
    )
    media = process_answer(offer, answer)
    assert media.codec == Codec("PCMU", 8000, 1, 0, "x=1")
    assert media.telephone_event_pt == 120
    assert media.ptime == 20  # from our offer when the answer has none


@pytest.mark.parametrize(
    ("offered", "answered", "direction", "on_hold"),
    [
        ("sendrecv", "sendrecv", "sendrecv", False),
        ("sendrecv", "sendonly", "recvonly", True),
        ("sendrecv", "recvonly", "sendonly", False),
        ("sendrecv", "inactive", "inactive", True),
        ("sendonly", "recvonly", "sendonly", False),
        ("recvonly", "sendonly", "recvonly", False),
        ("inactive", "inactive", "inactive", False),
    ],
)
def test_process_answer_direction(offered: Direction, answered: Direction, direction: Direction, on_hold: bool) -> None:
    """Check our direction combines our offer with the answer, and hold is the peer's refusal."""
    media = process_answer(our_offer(offered), offer_with("m=audio 5004 RTP/AVP 0", f"a={answered}"))
    assert (media.direction, media.on_hold) == (direction, on_hold)


def test_process_answer_rfc2543_hold() -> None:
    """Check an answer with c=0.0.0.0 stops us sending."""
    answer = offer_with("m=audio 5004 RTP/AVP 0", session=(*HEAD[:3], "c=IN IP4 0.0.0.0", "t=0 0"))
    media = process_answer(our_offer(), answer)
    assert (media.send, media.recv, media.on_hold) == (False, True, True)


@pytest.mark.parametrize(
    ("media_lines", "message", "status"),
    [
        ((), "answer has 0 m= lines, offer had 1", 400),
        (("m=audio 5004 RTP/AVP 0", "m=video 0 RTP/AVP 96"), "answer has 2 m= lines, offer had 1", 400),
        (("m=video 5004 RTP/AVP 96",), "answer m= line 1 is 'video', offer had 'audio'", 400),
        (("m=audio 0 RTP/AVP 0",), "audio stream rejected", 488),
        (("m=audio 5004 RTP/AVP 18",), "answer has no codec from the offer", 488),
        (("m=audio 5004 RTP/AVP 101", "a=rtpmap:101 telephone-event/8000"), "answer has no codec from the offer", 488),
    ],
)
def test_process_answer_errors(media_lines: tuple[str, ...], message: str, status: int) -> None:
    """Check answers that do not fit the offer fail with exact messages."""
    with pytest.raises(RemoteProtocolError) as info:
        process_answer(our_offer(), offer_with(*media_lines))
    assert (str(info.value), info.value.status) == (message, status)


def test_process_answer_without_our_audio() -> None:
    """Check reading an answer to an offer without active audio is our misuse."""
    offer = our_offer()
    offer.media[0].port = 0
    with pytest.raises(LocalProtocolError):
        process_answer(offer, offer_with("m=audio 0 RTP/AVP 0"))


@pytest.mark.parametrize(("offered", "wanted"), list(itertools.product(DIRECTIONS, DIRECTIONS)))
def test_offer_answer_pair(offered: Direction, wanted: Direction) -> None:
    """Check both ends agree after a full exchange over bytes: one sends what the other receives."""
    offer = parse_sdp(bytes(our_offer(offered)))
    answer, theirs = create_answer(
        offer, "192.0.2.99", 30000, [PCMA, PCMU], session_id=5, session_version=1, direction=wanted
    )
    ours = process_answer(our_offer(offered), parse_sdp(bytes(answer)))
    assert theirs is not None
    assert (ours.send, ours.recv) == (theirs.recv, theirs.send)
    assert ours.codec == theirs.codec == PCMU
    assert ours.telephone_event_pt == theirs.telephone_event_pt == 101
    assert (ours.remote_address, ours.remote_port) == ("192.0.2.99", 30000)
    assert (theirs.remote_address, theirs.remote_port) == ("192.0.2.10", 40000)


# --------------------------------------------------------------------------- OfferAnswerState

St, In = NegotiationState, NegotiationInput
# The whole table, written out; an IDLE origin is assumed for rollbacks.
EXPECTED: dict[tuple[NegotiationState, NegotiationInput], NegotiationState] = {
    (St.IDLE, In.SEND_OFFER): St.LOCAL_OFFER,
    (St.IDLE, In.RECV_OFFER): St.REMOTE_OFFER,
    (St.DONE, In.SEND_OFFER): St.LOCAL_OFFER,
    (St.DONE, In.RECV_OFFER): St.REMOTE_OFFER,
    (St.LOCAL_OFFER, In.RECV_ANSWER): St.DONE,
    (St.LOCAL_OFFER, In.RECV_REJECT): St.IDLE,
    (St.REMOTE_OFFER, In.SEND_ANSWER): St.DONE,
    (St.REMOTE_OFFER, In.SEND_REJECT): St.IDLE,
}


@pytest.mark.parametrize(("state", "input_"), list(itertools.product(NegotiationState, NegotiationInput)))
def test_every_state_and_input(state: NegotiationState, input_: NegotiationInput) -> None:
    """Check every state x input either follows the table or raises the side's error."""
    machine = OfferAnswerState()
    machine.state = state
    if (state, input_) in EXPECTED:
        assert machine.process_input(input_) is EXPECTED[state, input_]
        return
    error = LocalProtocolError if input_.name.startswith("SEND_") else RemoteProtocolError
    with pytest.raises(error, match=f"^{input_.name} not allowed in state {state.name}$"):
        machine.process_input(input_)
    assert machine.state is state


@pytest.mark.parametrize(("state", "status"), [(St.LOCAL_OFFER, 491), (St.REMOTE_OFFER, 500)])
def test_offer_clash_status(state: NegotiationState, status: int) -> None:
    """Check an offer during another offer asks for 491 (glare) or 500 (RFC 3261 section 14.2)."""
    machine = OfferAnswerState()
    machine.state = state
    with pytest.raises(RemoteProtocolError) as info:
        machine.receive_offer(parse_sdp(load("sipp_offer.sdp")))
    assert info.value.status == status


def test_versions_across_hold_and_unhold() -> None:
    """Check sess-version: kept on first send and unchanged resends, +1 for each change (RFC 3264 section 8)."""
    machine = OfferAnswerState()
    answer = offer_with("m=audio 5004 RTP/AVP 0")
    versions: list[int] = []
    origins: set[str] = set()
    steps: list[tuple[Direction, int]] = [("sendrecv", 5), ("sendrecv", 6), ("sendonly", 7), ("sendonly", 8), ("sendrecv", 9)]
    for direction, session_id in steps:
        offer = create_offer("192.0.2.10", 40000, [PCMU], session_id=session_id, session_version=100, direction=direction)
        sent = machine.send_offer(offer)
        assert (machine.state, machine.offer) == (St.LOCAL_OFFER, sent)
        machine.receive_answer(answer)
        assert (machine.state, machine.local, machine.remote) == (St.DONE, sent, answer)
        versions.append(sent.origin.sess_version)
        origins.add(sent.origin.sess_id)
    assert versions == [100, 100, 101, 101, 102]
    assert origins == {"5"}  # the o= line is fixed by the first SDP
    media = process_answer(machine.local, machine.remote)  # type: ignore[arg-type]
    assert media.direction == "sendrecv"


def test_versions_when_answering() -> None:
    """Check answers share the version sequence and a refresh re-offer is reported unchanged."""
    machine = OfferAnswerState()
    offer = parse_sdp(load("sipp_offer.sdp"))
    assert machine.receive_offer(offer) is True
    answer, _ = answer_to(offer, session_version=1)
    assert machine.send_answer(answer).origin.sess_version == 1
    assert machine.remote == offer and machine.offer is None

    held = parse_sdp(load("sipp_offer.sdp"))
    held.origin.sess_version += 1
    held.media[0].direction = "sendonly"
    assert machine.receive_offer(held) is True
    answer, media = answer_to(held, session_version=1)
    assert media is not None and media.on_hold
    assert machine.send_answer(answer).origin.sess_version == 2

    refresh = parse_sdp(load("sipp_offer.sdp"))
    refresh.origin.sess_version += 5  # a peer that bumps the version without changing anything
    refresh.media[0].direction = "sendonly"
    assert machine.receive_offer(refresh) is False
    answer, _ = answer_to(refresh, session_version=1)
    assert machine.send_answer(answer).origin.sess_version == 2


def test_reject_rolls_back() -> None:
    """Check a rejected offer returns to the previous state and keeps the old session."""
    machine = OfferAnswerState()
    machine.receive_offer(parse_sdp(load("sipp_offer.sdp")))
    machine.reject_offer()
    assert (machine.state, machine.offer, machine.local) == (St.IDLE, None, None)

    first = machine.send_offer(our_offer())
    machine.receive_answer(offer_with("m=audio 5004 RTP/AVP 0"))
    machine.send_offer(our_offer("sendonly"))
    machine.reject_offer()  # e.g. 491 to our re-INVITE
    assert (machine.state, machine.offer, machine.local) == (St.DONE, None, first)
    machine.receive_offer(parse_sdp(load("sipp_offer.sdp")))
    machine.reject_offer()  # we answered 488
    assert machine.state is St.DONE
    with pytest.raises(LocalProtocolError, match="^SEND_REJECT not allowed in state DONE$"):
        machine.reject_offer()


def test_offers_must_not_remove_m_lines() -> None:
    """Check re-offers keep at least as many m= lines (RFC 3264 section 8)."""
    machine = OfferAnswerState()
    two = offer_with("m=audio 4000 RTP/AVP 0", "m=video 0 RTP/AVP 96")
    machine.receive_offer(two)
    machine.send_answer(answer_to(two)[0])
    with pytest.raises(RemoteProtocolError, match="^offer removes m= lines$"):
        machine.receive_offer(offer_with("m=audio 4000 RTP/AVP 0"))
    with pytest.raises(LocalProtocolError, match="must not remove m= lines"):
        machine.send_offer(our_offer())
    assert machine.state is St.DONE


# -------------------------------------------------------------- found by the fuzz run

HUGE = "9" * 16385


def test_huge_numbers_are_malformed_not_a_crash() -> None:
    """Check numbers of thousands of digits (int() of them raises ValueError
    beyond 4,300 digits) are refused as malformed SDP in o=, t=, m= and
    a=rtpmap, and ignored in a=fmtp and a=rtcp, so answering such an offer
    never raises anything but a RemoteProtocolError."""
    for session in (("v=0", f"o=- 1 {HUGE} IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0"),
                    (*HEAD[:4], f"t={HUGE} 0")):
        with pytest.raises(RemoteProtocolError):
            offer_with("m=audio 4000 RTP/AVP 0", session=session)
    for media in ((f"m=audio {HUGE} RTP/AVP 0",), ("m=audio 4000 RTP/AVP 0 101", f"a=rtpmap:{HUGE} x/8000"),
                  ("m=audio 4000 RTP/AVP 0 101", f"a=rtpmap:101 telephone-event/{HUGE}")):
        with pytest.raises(RemoteProtocolError):
            offer_with(*media)
    offer = offer_with("m=audio 4000 RTP/AVP 0", f"a=fmtp:{HUGE} 0-15", f"a=rtcp:{HUGE}")
    assert offer.media[0].fmtp == {} and offer.media[0].rtcp is None
    _, negotiated = answer_to(offer)
    assert negotiated is not None and negotiated.remote_rtcp_port == 4001


def test_rtcp_port_out_of_range_is_ignored() -> None:
    """Check a=rtcp beyond 65535 (or 0) is not used: RTCP goes to RTP port + 1."""
    for value in ("70000", "0"):
        offer = offer_with("m=audio 4000 RTP/AVP 0", f"a=rtcp:{value}")
        assert offer.media[0].rtcp is None


def test_copy_is_a_deep_copy_of_every_part() -> None:
    """``SessionDescription.copy`` (offer/answer's cheap copy) equals
    ``copy.deepcopy`` of a description with every part filled, and shares no
    mutable part with the original: changing the copy's lists, dicts and
    nested records leaves the original as it was."""
    import copy as copy_module

    text = (b"v=0\r\no=alice 2890844526 2890844526 IN IP4 198.51.100.1\r\ns=call\r\n"
            b"c=IN IP4 198.51.100.1\r\nb=AS:256\r\nt=0 0\r\nr=7d 1h 0 25h\r\na=sendrecv\r\n"
            b"m=audio 49170 RTP/SAVP 0 8 101\r\nc=IN IP4 198.51.100.2\r\nb=TIAS:64000\r\n"
            b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
            b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
            b"m=video 51372 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n")
    original = parse_sdp(text)
    before = copy_module.deepcopy(original)
    cheap = original.copy()
    assert cheap == before and cheap.to_bytes() == original.to_bytes()
    cheap.origin.sess_version += 1
    cheap.connection.address = "203.0.113.9"  # type: ignore[union-attr]
    cheap.timing[0].repeats.append("1d")
    cheap.bandwidths["AS"] = 1
    cheap.attributes.append(("recvonly", None))
    cheap.media[0].formats.append("9")
    cheap.media[0].connection.address = "203.0.113.9"  # type: ignore[union-attr]
    cheap.media[0].bandwidths["TIAS"] = 1
    cheap.media[0].attributes.clear()
    cheap.media.pop()
    assert original == before


def test_copy_knows_every_field() -> None:
    """``SessionDescription.copy`` names each field; a field added to a
    description class must be added there too (this list fails first)."""
    import dataclasses

    from engine.sip.sdp import Connection, MediaDescription, Origin, SessionDescription, Timing

    def names(cls: type) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    assert names(SessionDescription) == ["origin", "session_name", "connection", "timing", "bandwidths",
                                         "attributes", "media", "extra", "version"]
    assert names(MediaDescription) == ["kind", "port", "proto", "formats", "port_count", "connection",
                                       "bandwidths", "attributes", "extra"]
    assert names(Origin) == ["username", "sess_id", "sess_version", "nettype", "addrtype", "address"]
    assert names(Connection) == ["nettype", "addrtype", "address"]
    assert names(Timing) == ["start", "stop", "repeats"]


def test_a_body_parsed_again_gives_an_independent_description() -> None:
    """The parse memo (a call's offer is read by the INVITE session and by
    the media layer) hands each caller its own copy: changing one
    description changes neither the memo nor another caller's; a malformed
    body is refused every time, never remembered."""
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    first = parse_sdp(body)
    first.media[0].port = 9
    first.origin.sess_version = 7
    second = parse_sdp(body)
    assert second.media[0].port == 4000 and second.origin.sess_version == 1
    assert second is not parse_sdp(body)
    bad = b"v=0\r\nnonsense\r\n"
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            parse_sdp(bad)
