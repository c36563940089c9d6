"""The SDP offer/answer model (RFC 3264), without any codec implementation.

This module builds offers and answers, reads answers to our own offers, and
tracks each dialog's offer/answer state. It sees only SDP. Mapping the result
to RTP sessions and codecs is the call layer's job.

Decisions callers should know about:

- An answer carries one codec per accepted stream, plus ``telephone-event``
  at the codec's clock rate when one is offered. RFC 3264 section 6.1 allows
  more than one, but with one codec the peer cannot switch codecs mid-call.
- At most one stream of each kind is accepted, over ``RTP/AVP`` or, with
  SDES keys (RFC 4568), over ``RTP/SAVP`` and ``RTP/SAVPF`` (SRTP, RFC 3711).
  The SRTP policy decides which: ``mandatory`` takes only SRTP, ``off``
  only plain RTP, ``optional`` (the default) answers each in kind. Other
  streams are answered with port 0.
- SDES: an answer takes the first ``a=crypto`` of the offer whose suite we
  support (offerer's order, RFC 4568 section 7.1.1), without MKI or session
  parameters, and answers it under the same tag with a key of our own. The
  key written by a party is the one it sends with (RFC 4568 section 6.1).
- The codec is picked in the offerer's preference order. Payload type numbers
  are the offerer's in an answer we write (RFC 3264 section 6.1), and the
  answerer's when we read the answer to our own offer. We send with the
  receiver's numbers.
- Comfort noise (RFC 3389, ``CN``) is offered and accepted only when the
  caller asks (``comfort_noise=True``: the engine's silence suppression):
  offered at each audio clock rate (payload type 13 at 8000 Hz, RFC 3551
  section 6), and answered, under the offerer's number, only when the offer
  has it at the chosen codec's rate. CN is never picked as the codec.
- Hold: a stream is *on hold* when the peer refuses to receive media that
  we offered, or that was offered to us. The peer says so with ``sendonly``
  or ``inactive``, or with the RFC 2543 connection address ``0.0.0.0``
  (RFC 3264 section 8.4). Such an address also means we send nothing.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from engine.sip.errors import LocalProtocolError, RemoteProtocolError
from engine.sip.memo import Memo
from engine.sip.sdp import (
    SRTP_SUITES,
    Attribute,
    Connection,
    CryptoAttribute,
    Direction,
    MediaDescription,
    Origin,
    RtpMap,
    SessionDescription,
    media_direction,
    rtp_address,
)

__all__ = [
    "Codec",
    "NegotiatedMedia",
    "NegotiationInput",
    "NegotiationState",
    "OfferAnswerState",
    "PCMA",
    "PCMU",
    "SRTP_POLICIES",
    "SrtpParameters",
    "SrtpPolicy",
    "COMFORT_NOISE",
    "TELEPHONE_EVENT",
    "create_answer",
    "create_offer",
    "new_srtp_key",
    "process_answer",
]


@dataclass(frozen=True)
class Codec:
    """A media format as SDP sees it.

    :param name: the encoding name, e.g. ``"PCMU"``. Matching ignores case.
    :param payload_type: the preferred payload type number. ``None`` means a
        dynamic number (96-127) is assigned when offering.
    :param fmtp: the ``a=fmtp`` parameters, without the payload type.
    :param kind: the media type of the ``m=`` line the codec belongs to.
    """

    name: str
    clock_rate: int
    channels: int = 1
    payload_type: int | None = None
    fmtp: str | None = None
    kind: str = "audio"

    def matches(self, rtpmap: RtpMap) -> bool:
        """Return whether ``rtpmap`` describes this codec: same name (ignoring case), rate and channels."""
        # _same_format's test, without making an RtpMap of this codec (once per offered format per call)
        return (self.clock_rate == rtpmap.clock_rate and self.channels == rtpmap.channels
                and self.name.lower() == rtpmap.encoding_name.lower())

    @property
    def rtpmap(self) -> RtpMap:
        """This codec as an :class:`~engine.sip.sdp.RtpMap`."""
        return RtpMap(self.name, self.clock_rate, self.channels)


PCMU = Codec("PCMU", 8000, payload_type=0)
PCMA = Codec("PCMA", 8000, payload_type=8)
#: RFC 4733 DTMF events. ``0-16`` covers the 16 DTMF digits and flash.
TELEPHONE_EVENT = Codec("telephone-event", 8000, payload_type=101, fmtp="0-16")
#: RFC 3389 comfort noise: static payload type 13 at 8000 Hz (RFC 3551 section 6).
COMFORT_NOISE = Codec("CN", 8000, payload_type=13)

# RFC 3551 section 6: static payload types, which peers may use without an rtpmap.
_STATIC_PAYLOAD_TYPES = {
    0: RtpMap("PCMU", 8000),
    3: RtpMap("GSM", 8000),
    4: RtpMap("G723", 8000),
    8: RtpMap("PCMA", 8000),
    9: RtpMap("G722", 8000),  # RFC 3551 section 4.5.2: 8000 by mistake, kept for compatibility
    13: RtpMap("CN", 8000),
    18: RtpMap("G729", 8000),
}
_PLAIN_PROTOS = frozenset({"RTP/AVP"})
#: RFC 3711 section 12 (SAVP) and RFC 5124 (SAVPF, answered without RTCP feedback).
_SECURE_PROTOS = frozenset({"RTP/SAVP", "RTP/SAVPF"})

#: Which streams a leg takes: only SRTP, either (answered in kind), only RTP.
SrtpPolicy = Literal["mandatory", "optional", "off"]
SRTP_POLICIES: tuple[SrtpPolicy, ...] = ("mandatory", "optional", "off")


def new_srtp_key(suite: str) -> bytes:
    """A fresh random master key and salt for ``suite`` (RFC 4568 section 6.1)."""
    return secrets.token_bytes(SRTP_SUITES[suite])


@dataclass(frozen=True)
class SrtpParameters:
    """The SDES outcome of one stream: SRTP with ``suite``.

    :param send_key: our master key and salt (the one in our SDP).
    :param recv_key: the peer's (the one in its SDP).
    """

    suite: str
    send_key: bytes
    recv_key: bytes

    def __repr__(self) -> str:  # never print keys
        return f"SrtpParameters(suite={self.suite!r})"


def _usable_crypto(media: MediaDescription, suites: Sequence[str]) -> CryptoAttribute | None:
    """The first ``a=crypto`` of ``media`` we can use (RFC 4568 section 7.1.1):
    a suite we support, no MKI (pylibsrtp has none), no session parameters
    (an unknown one forbids using the line, RFC 4568 section 6.3)."""
    return next((c for c in media.crypto if c.suite in suites and c.mki is None and not c.session_params), None)
_DEFAULT_PTIME = 20


@dataclass(frozen=True)
class NegotiatedMedia:
    """The outcome of offer/answer for one stream, from our point of view.

    :param index: the index of the stream's ``m=`` line.
    :param codec: the codec to use. Its ``payload_type`` is the negotiated
        number, and its ``fmtp`` holds the peer's parameters.
    :param telephone_event_pt: the RFC 4733 payload type to use, or ``None``.
    :param ptime: the packet time to send with, in milliseconds.
    :param send: whether we send media.
    :param recv: whether we receive media.
    :param on_hold: whether the peer has put the stream on hold (see the module notes).
    :param srtp: the SRTP suite and keys, or ``None`` for plain RTP.
    :param comfort_noise_pt: the RFC 3389 CN payload type to use, or ``None``
        (not negotiated).
    """

    index: int
    remote_address: str
    remote_port: int
    remote_rtcp_port: int
    codec: Codec
    telephone_event_pt: int | None
    ptime: int
    send: bool
    recv: bool
    on_hold: bool
    srtp: SrtpParameters | None = None
    comfort_noise_pt: int | None = None

    @property
    def direction(self) -> Direction:
        """``send`` and ``recv`` combined into a direction attribute value."""
        return _to_direction(self.send, self.recv)


_DIRECTION_OF: dict[tuple[bool, bool], Direction] = {
    (True, True): "sendrecv",
    (True, False): "sendonly",
    (False, True): "recvonly",
    (False, False): "inactive",
}


def _to_direction(send: bool, recv: bool) -> Direction:
    return _DIRECTION_OF[send, recv]


def _flags(direction: Direction) -> tuple[bool, bool]:
    """Return ``(sends, receives)`` for the party that wrote ``direction``."""
    return direction in ("sendrecv", "sendonly"), direction in ("sendrecv", "recvonly")


def _is_unspecified(address: str) -> bool:
    if address.strip("0.:"):  # another character: a non-zero address or a host name
        return False
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:  # a host name
        return False


def _payload_types(media: MediaDescription) -> list[tuple[int, RtpMap]]:
    """The RTP formats of ``media`` in m= line order, skipping any we cannot identify."""
    rtpmap = media.rtpmap
    result = []
    for fmt in media.formats:
        if fmt.isascii() and fmt.isdecimal():
            pt = int(fmt)
            mapping = rtpmap.get(pt) or _STATIC_PAYLOAD_TYPES.get(pt)
            if mapping is not None:
                result.append((pt, mapping))
    return result


def _same_format(a: RtpMap, b: RtpMap) -> bool:
    # Encoding names are case-insensitive (RFC 4855 section 3).
    return (a.encoding_name.lower(), a.clock_rate, a.channels) == (b.encoding_name.lower(), b.clock_rate, b.channels)


#: The encoding names (lower-cased) of formats that carry no audio of their own.
_EVENTS_NAME = "telephone-event"
_CN_NAME = "cn"


def _is_telephone_event(rtpmap: RtpMap) -> bool:
    return rtpmap.encoding_name.lower() == _EVENTS_NAME


def _telephone_event_pt(formats: list[tuple[int, RtpMap]], clock_rate: int) -> int | None:
    # RFC 4733: events share the timestamp clock of the audio they go with.
    return next((pt for pt, m in formats if _is_telephone_event(m) and m.clock_rate == clock_rate), None)


def _is_comfort_noise(rtpmap: RtpMap) -> bool:
    return rtpmap.encoding_name.lower() == _CN_NAME


def _is_codec(rtpmap: RtpMap) -> bool:
    """Whether a format can carry the audio itself (not events, not CN)."""
    name = rtpmap.encoding_name.lower()  # the two tests above, with one lower()
    return name != _EVENTS_NAME and name != _CN_NAME


def _comfort_noise_pt(formats: list[tuple[int, RtpMap]], clock_rate: int) -> int | None:
    # RFC 3389 section 4: CN uses the clock of the audio it stands in for.
    return next((pt for pt, m in formats if _is_comfort_noise(m) and m.clock_rate == clock_rate), None)


def _build_media(
    kind: str, port: int, codecs: Sequence[Codec], direction: Direction, ptime: int | None,
    proto: str = "RTP/AVP", crypto: Sequence[CryptoAttribute] = (),
) -> MediaDescription:
    """Build an m= section for ``codecs``, whose payload types are all set."""
    formats, attributes = _format_attributes(kind, codecs, ptime)
    return _media(kind, port, proto, formats, attributes, direction, crypto)


def _format_attributes(
    kind: str, codecs: Sequence[Codec], ptime: int | None
) -> tuple[tuple[str, ...], tuple[Attribute, ...]]:
    """The m= line's formats and their attributes (rtpmap, fmtp, ptime)."""
    attributes: list[Attribute] = []
    for codec in codecs:
        # Write an rtpmap even for static types: RFC 8866 section 6.6 recommends it.
        attributes.append(("rtpmap", f"{codec.payload_type} {codec.rtpmap}"))
        if codec.fmtp:
            attributes.append(("fmtp", f"{codec.payload_type} {codec.fmtp}"))
    if ptime and kind == "audio":
        attributes.append(("ptime", str(ptime)))
    return tuple(str(c.payload_type) for c in codecs), tuple(attributes)


def _media(
    kind: str, port: int, proto: str, formats: tuple[str, ...], attributes: tuple[Attribute, ...],
    direction: Direction, crypto: Sequence[CryptoAttribute],
) -> MediaDescription:
    """An m= section: the formats' attributes, then SDES keys, then the direction."""
    return MediaDescription(kind, port, proto, list(formats),
                            attributes=[*attributes, *(("crypto", str(c)) for c in crypto), (direction, None)])


#: An answer's formats and attributes (see :func:`_format_attributes`) by
#: what decides them: the codec, its payload type, those of telephone-event
#: and CN, the ptime and the kind. Calls from the same phones answer with
#: the same text, so it is written once.
_ANSWER_FORMATS: Memo[
    tuple[Codec, int, int | None, int | None, int | None, str], tuple[tuple[str, ...], tuple[Attribute, ...]]
] = Memo(64)


def _answer_formats(
    kind: str, codec: Codec, pt: int, te_pt: int | None, cn_pt: int | None, ptime: int | None
) -> tuple[tuple[str, ...], tuple[Attribute, ...]]:
    """The formats and attributes of an answer that picked ``codec`` as ``pt``,
    with telephone-event and CN at its clock rate when their numbers are given."""
    key = (codec, pt, te_pt, cn_pt, ptime, kind)
    known = _ANSWER_FORMATS.get(key)
    if known is None:
        answer_codecs = [dataclasses.replace(codec, payload_type=pt)]
        if te_pt is not None:
            answer_codecs.append(dataclasses.replace(TELEPHONE_EVENT, clock_rate=codec.clock_rate, payload_type=te_pt))
        if cn_pt is not None:
            answer_codecs.append(dataclasses.replace(COMFORT_NOISE, clock_rate=codec.clock_rate, payload_type=cn_pt))
        known = _format_attributes(kind, answer_codecs, ptime)
        _ANSWER_FORMATS.put(key, known)
    return known


def _build_session(
    address: str, session_id: int | str, session_version: int, username: str, media: list[MediaDescription]
) -> SessionDescription:
    addrtype = "IP6" if ":" in address else "IP4"
    return SessionDescription(
        origin=Origin(username, str(session_id), session_version, "IN", addrtype, address),
        connection=Connection("IN", addrtype, address),
        media=media,
    )


def _rejected(media: MediaDescription) -> MediaDescription:
    # RFC 3264 section 6: port 0, with the offer's formats (at least one is required).
    return MediaDescription(media.kind, 0, media.proto, list(media.formats) or ["0"])


def create_offer(
    address: str,
    port: int,
    codecs: Sequence[Codec],
    *,
    session_id: int | str,
    session_version: int,
    direction: Direction = "sendrecv",
    ptime: int | None = 20,
    telephone_event: bool = True,
    username: str = "callbridge",
    crypto: Sequence[CryptoAttribute] = (),
    comfort_noise: bool = False,
) -> SessionDescription:
    """Build an offer (RFC 3264 section 5) with one ``m=`` line of the codecs' kind.

    :param address: our media address, IPv4 or IPv6. It is used for ``o=`` and ``c=``.
    :param codecs: in our order of preference. All must have the same ``kind``.
        Codecs without a payload type get dynamic numbers.
    :param telephone_event: add RFC 4733 ``telephone-event`` (at 101 when free)
        once for each clock rate among the audio codecs.
    :param ptime: the ``a=ptime`` to request (audio only). ``None`` leaves it out.
    :param crypto: SDES keys (RFC 4568) in our order of preference: the offer
        is ``RTP/SAVP`` when there are any, else ``RTP/AVP``.
    :param comfort_noise: add RFC 3389 ``CN`` once for each clock rate among
        the audio codecs (13 at 8000 Hz when free, else a dynamic number).
    :raises LocalProtocolError: if ``codecs`` is empty, mixes kinds, or repeats a payload type.
    """
    if not codecs:
        raise LocalProtocolError("no codecs to offer")
    kind = codecs[0].kind
    if any(c.kind != kind for c in codecs):
        raise LocalProtocolError("an offer's codecs must all be of one kind")
    offered = list(codecs)
    if telephone_event and kind == "audio":
        taken = {c.payload_type for c in codecs}
        rates = dict.fromkeys(c.clock_rate for c in codecs)
        for rate in rates:
            pt = TELEPHONE_EVENT.payload_type if TELEPHONE_EVENT.payload_type not in taken else None
            offered.append(dataclasses.replace(TELEPHONE_EVENT, clock_rate=rate, payload_type=pt))
            taken.add(pt)
    if comfort_noise and kind == "audio":
        taken = {c.payload_type for c in offered}
        for rate in dict.fromkeys(c.clock_rate for c in codecs):
            pt = COMFORT_NOISE.payload_type if rate == 8000 and COMFORT_NOISE.payload_type not in taken else None
            offered.append(dataclasses.replace(COMFORT_NOISE, clock_rate=rate, payload_type=pt))
            taken.add(pt)
    proto = "RTP/SAVP" if crypto else "RTP/AVP"
    media = _build_media(kind, port, _assign_payload_types(offered), direction, ptime, proto, crypto)
    return _build_session(address, session_id, session_version, username, [media])


def _assign_payload_types(codecs: list[Codec]) -> list[Codec]:
    fixed = [c.payload_type for c in codecs if c.payload_type is not None]
    if len(set(fixed)) != len(fixed):
        raise LocalProtocolError(f"payload types repeat: {fixed}")
    free = (pt for pt in range(96, 128) if pt not in fixed)  # RFC 3551 section 3: dynamic range
    return [c if c.payload_type is not None else dataclasses.replace(c, payload_type=next(free)) for c in codecs]


def create_answer(
    offer: SessionDescription,
    address: str,
    port: int | Callable[[int], int | None],
    codecs: Sequence[Codec],
    *,
    session_id: int | str,
    session_version: int,
    direction: Direction = "sendrecv",
    ptime: int | None = 20,
    telephone_event: bool = True,
    username: str = "callbridge",
    srtp: SrtpPolicy = "optional",
    srtp_suites: Sequence[str] = tuple(SRTP_SUITES),
    srtp_key: Callable[[str], bytes] = new_srtp_key,
    comfort_noise: bool = False,
) -> tuple[SessionDescription, NegotiatedMedia | None]:
    """Answer a peer's offer (RFC 3264 section 6).

    The answer has the offer's ``m=`` lines in the same order. Streams we
    cannot or will not take get port 0.

    :param port: our RTP port, or a function that takes an ``m=`` index and
        returns a port, or ``None`` to reject that stream. The function is only
        called for streams we would accept.
    :param codecs: the codecs we support. Our order does not matter: the
        offerer's preference decides.
    :param direction: the direction we want. It is intersected with what the
        offer allows (RFC 3264 section 6.1).
    :param srtp: which streams we take (see the module notes).
    :param srtp_suites: the SDES crypto-suites we support.
    :param srtp_key: makes our key for a suite (fresh random ones by default).
    :param comfort_noise: accept RFC 3389 ``CN`` when the offer has it at the
        chosen codec's clock rate (see the module notes).
    :returns: the answer, and the negotiated audio stream. The stream is
        ``None`` only if the offer has no active stream at all (every port is 0).
    :raises RemoteProtocolError: with status 488 if the offer has an active
        stream but no audio stream we can accept; the text says why when
        SRTP is the reason.
    """
    if not codecs:
        raise LocalProtocolError("no codecs to answer with")
    port_for = port if callable(port) else (lambda index: port)
    want_send, want_recv = _flags(direction)
    answered: list[MediaDescription] = []
    accepted: dict[str, NegotiatedMedia] = {}
    why: str | None = None
    for index, media in enumerate(offer.media):
        formats = _payload_types(media)
        chosen = _choose(formats, codecs, media.kind)
        local_port = None
        crypto: CryptoAttribute | None = None
        usable = media.proto in _PLAIN_PROTOS and srtp != "mandatory"
        if media.port != 0 and media.proto in _PLAIN_PROTOS and srtp == "mandatory":
            why = why or "SRTP is required but the offer has no usable RTP/SAVP stream"
        elif media.port != 0 and media.proto in _SECURE_PROTOS:
            crypto = _usable_crypto(media, srtp_suites) if srtp != "off" else None
            usable = crypto is not None
            if srtp == "off":
                why = why or "SRTP is off but the offer is RTP/SAVP"
            elif crypto is None:
                why = why or "no supported SDES crypto-suite in the RTP/SAVP offer"
        if media.port != 0 and usable and media.kind not in accepted and chosen:
            local_port = port_for(index)
        if chosen is None or local_port is None:
            answered.append(_rejected(media))
            continue
        pt, codec = chosen
        remote_address, remote_port = rtp_address(media, offer)
        remote_send, remote_recv = _flags(media_direction(media, offer))
        remote_recv = remote_recv and not _is_unspecified(remote_address)
        te_pt = _telephone_event_pt(formats, codec.clock_rate) if telephone_event else None
        cn_pt = _comfort_noise_pt(formats, codec.clock_rate) if comfort_noise else None
        send, recv = want_send and remote_recv, want_recv and remote_send
        ours_crypto: list[CryptoAttribute] = []
        keys: SrtpParameters | None = None
        if crypto is not None:
            # RFC 4568 section 7.1.2: the same tag and suite, our own key.
            ours_crypto.append(CryptoAttribute(crypto.tag, crypto.suite, srtp_key(crypto.suite)))
            keys = SrtpParameters(crypto.suite, ours_crypto[0].key, crypto.key)
        accepted[media.kind] = NegotiatedMedia(
            index=index,
            remote_address=remote_address,
            remote_port=remote_port,
            remote_rtcp_port=media.rtcp or remote_port + 1,  # RFC 3605; RFC 3550 section 11
            codec=_negotiated_codec(codec, pt, media.fmtp.get(pt)),
            telephone_event_pt=te_pt,
            ptime=media.ptime or ptime or _DEFAULT_PTIME,
            send=send,
            recv=recv,
            on_hold=not remote_recv,
            srtp=keys,
            comfort_noise_pt=cn_pt,
        )
        answer_formats, attributes = _answer_formats(media.kind, codec, pt, te_pt, cn_pt, ptime)
        answered.append(_media(media.kind, local_port, media.proto, answer_formats, attributes,
                               _to_direction(send, recv), ours_crypto))
    audio = accepted.get("audio")
    if audio is None and any(m.port != 0 for m in offer.media):
        # RFC 3264 section 6: nothing in common rejects the session; 488 is RFC 3261 section 21.4.26.
        raise RemoteProtocolError(f"no acceptable audio stream ({why})" if why else "no acceptable audio stream",
                                  status=488)
    return _build_session(address, session_id, session_version, username, answered), audio


def _negotiated_codec(codec: Codec, pt: int, fmtp: str | None) -> Codec:
    """``codec`` under the offerer's payload type ``pt`` with its ``fmtp``:
    ``codec`` itself when those are its own (PCMU as 0 without parameters,
    the usual answer), a frozen value equal to the one made otherwise."""
    if pt == codec.payload_type and fmtp == codec.fmtp:
        return codec
    return Codec(codec.name, codec.clock_rate, codec.channels, pt, fmtp, codec.kind)


def _choose(formats: list[tuple[int, RtpMap]], codecs: Sequence[Codec], kind: str) -> tuple[int, Codec] | None:
    """The first offered format that we support, in the offerer's order."""
    for pt, rtpmap in formats:
        if _is_codec(rtpmap):
            for codec in codecs:
                if codec.kind == kind and codec.matches(rtpmap):
                    return pt, codec
    return None


def process_answer(offer: SessionDescription, answer: SessionDescription) -> NegotiatedMedia:
    """Read the answer to one of our offers and return the negotiated audio stream.

    :raises RemoteProtocolError: if the answer's ``m=`` lines do not match the
        offer's (RFC 3264 section 6). Also raised, with status 488, if the audio
        stream was rejected or the answer has no codec from the offer.
    :raises LocalProtocolError: if ``offer`` has no active audio stream.
    """
    if len(answer.media) != len(offer.media):
        raise RemoteProtocolError(f"answer has {len(answer.media)} m= lines, offer had {len(offer.media)}")
    for number, (ours, theirs) in enumerate(zip(offer.media, answer.media), 1):
        if ours.kind != theirs.kind:
            raise RemoteProtocolError(f"answer m= line {number} is {theirs.kind!r}, offer had {ours.kind!r}")
    index = next((i for i, m in enumerate(offer.media) if m.kind == "audio" and m.port != 0), None)
    if index is None:
        raise LocalProtocolError("the offer has no active audio stream")
    ours, theirs = offer.media[index], answer.media[index]
    if theirs.port == 0:
        raise RemoteProtocolError("audio stream rejected", status=488)
    keys = _answered_srtp(ours, theirs)
    offered = _payload_types(ours)
    formats = _payload_types(theirs)
    # The answerer's first codec that we offered. Keep the answerer's number and
    # our spelling of the name.
    chosen = next(
        ((pt, o) for pt, m in formats if _is_codec(m) for _, o in offered if _same_format(o, m)),
        None,
    )
    if chosen is None:
        raise RemoteProtocolError("answer has no codec from the offer", status=488)
    pt, rtpmap = chosen
    remote_address, remote_port = rtp_address(theirs, answer)
    we_send, we_recv = _flags(media_direction(ours, offer))
    they_send, they_recv = _flags(media_direction(theirs, answer))
    they_recv = they_recv and not _is_unspecified(remote_address)
    # CN only if we offered it too (an answer adds no format, RFC 3264 section 6.1).
    cn_pt = _comfort_noise_pt(formats, rtpmap.clock_rate)
    if cn_pt is not None and _comfort_noise_pt(offered, rtpmap.clock_rate) is None:
        cn_pt = None
    return NegotiatedMedia(
        index=index,
        remote_address=remote_address,
        remote_port=remote_port,
        remote_rtcp_port=theirs.rtcp or remote_port + 1,
        codec=Codec(rtpmap.encoding_name, rtpmap.clock_rate, rtpmap.channels, pt, theirs.fmtp.get(pt), ours.kind),
        telephone_event_pt=_telephone_event_pt(formats, rtpmap.clock_rate),
        ptime=theirs.ptime or ours.ptime or _DEFAULT_PTIME,
        send=we_send and they_recv,
        recv=we_recv and they_send,
        on_hold=we_send and not they_recv,
        srtp=keys,
        comfort_noise_pt=cn_pt,
    )


def _answered_srtp(ours: MediaDescription, theirs: MediaDescription) -> SrtpParameters | None:
    """The SRTP keys agreed by our offer ``ours`` and the answer ``theirs``
    (RFC 4568 section 7.1.3: the answer repeats the tag and suite of one of
    our ``a=crypto`` lines, with its own key).

    :raises RemoteProtocolError: (488) if the answer changes the transport
        profile or has no crypto attribute matching the offer.
    """
    secure = ours.proto in _SECURE_PROTOS
    if (theirs.proto in _SECURE_PROTOS) != secure:
        raise RemoteProtocolError(f"answer is {theirs.proto}, offer was {ours.proto}", status=488)
    if not secure:
        return None
    offered = {c.tag: c for c in ours.crypto}
    for answered in theirs.crypto:
        mine = offered.get(answered.tag)
        if mine is not None and mine.suite == answered.suite and answered.mki is None:
            return SrtpParameters(mine.suite, mine.key, answered.key)
    raise RemoteProtocolError("answer has no a=crypto matching the offer", status=488)


# Theory of operation
# -------------------
#
# One OfferAnswerState per dialog. It follows pjmedia's sdp_neg and tracks
# which offer is outstanding. Its transitions do not depend on our role (UAC
# or UAS) or on the SIP method (INVITE, re-INVITE, UPDATE, PRACK) that
# carries the SDP. The INVITE session drives it:
#
#                      SEND_OFFER    +-------------+  RECV_ANSWER
#              +-------------------->| LOCAL_OFFER |------------------+
#              |                     +-------------+                  v
#         +--------+    RECV_REJECT: back to IDLE or DONE        +--------+
#         |  IDLE  |                                             |  DONE  |
#         +--------+    SEND_REJECT: back to IDLE or DONE        +--------+
#              |                     +--------------+                 ^
#              +-------------------->| REMOTE_OFFER |-----------------+
#                      RECV_OFFER    +--------------+  SEND_ANSWER
#
#   DONE accepts SEND_OFFER and RECV_OFFER like IDLE; these are re-offers
#   such as hold and unhold.
#
# A rejected offer (4xx to a re-INVITE, CANCEL, 491 glare) is rolled back, and
# the previous session stays in force (RFC 3261 section 14.1). For the same
# reason a protocol error leaves the state unchanged: unlike h11, a bad offer
# ends one transaction, not the dialog.
#
# The machine also owns our o= line (RFC 3264 section 8). The first SDP we
# send fixes username, sess-id and address. sess-version goes up by one for
# each SDP that differs from the last one we sent, and stays the same when the
# content is unchanged, as in a session refresh.


class NegotiationState(enum.Enum):
    """Offer/answer states, named after pjmedia ``PJMEDIA_SDP_NEG_STATE_*``."""

    IDLE = "IDLE"
    LOCAL_OFFER = "LOCAL_OFFER"
    REMOTE_OFFER = "REMOTE_OFFER"
    DONE = "DONE"

    __hash__ = object.__hash__  # identity, in C (see TransactionState)


class NegotiationInput(enum.Enum):
    """Inputs to :class:`OfferAnswerState`. ``SEND_*`` are ours; ``RECV_*`` are the peer's."""

    SEND_OFFER = "SEND_OFFER"
    RECV_OFFER = "RECV_OFFER"
    SEND_ANSWER = "SEND_ANSWER"
    RECV_ANSWER = "RECV_ANSWER"
    SEND_REJECT = "SEND_REJECT"
    RECV_REJECT = "RECV_REJECT"

    __hash__ = object.__hash__  # identity, in C (see TransactionState)


_S = NegotiationState
_I = NegotiationInput
#: (state, input) -> next state, or None for "back to where the offer started".
_TRANSITIONS: dict[tuple[NegotiationState, NegotiationInput], NegotiationState | None] = {
    (_S.IDLE, _I.SEND_OFFER): _S.LOCAL_OFFER,
    (_S.IDLE, _I.RECV_OFFER): _S.REMOTE_OFFER,
    (_S.DONE, _I.SEND_OFFER): _S.LOCAL_OFFER,
    (_S.DONE, _I.RECV_OFFER): _S.REMOTE_OFFER,
    (_S.LOCAL_OFFER, _I.RECV_ANSWER): _S.DONE,
    (_S.LOCAL_OFFER, _I.RECV_REJECT): None,
    (_S.REMOTE_OFFER, _I.SEND_ANSWER): _S.DONE,
    (_S.REMOTE_OFFER, _I.SEND_REJECT): None,
}
# The status to answer an offer that comes at the wrong time (RFC 3261 section 14.2).
_OFFER_CLASH_STATUS = {_S.LOCAL_OFFER: 491, _S.REMOTE_OFFER: 500}


class OfferAnswerState:
    """The offer/answer state of one dialog. See the theory of operation above.

    :ivar local: our SDP from the last completed exchange, or ``None``.
    :ivar remote: the peer's SDP from the last completed exchange, or ``None``.
    :ivar offer: the offer in progress, or ``None``.
    """

    def __init__(self) -> None:
        self.state = NegotiationState.IDLE
        self.local: SessionDescription | None = None
        self.remote: SessionDescription | None = None
        self.offer: SessionDescription | None = None
        self._origin_state = NegotiationState.IDLE
        self._last_sent: SessionDescription | None = None

    def process_input(self, input_: NegotiationInput) -> NegotiationState:
        """Apply one input to the transition table and return the new state.

        :raises LocalProtocolError: for a ``SEND_*`` input that is not allowed now.
        :raises RemoteProtocolError: for a ``RECV_*`` input that is not allowed now.
            An offer that arrives while another is in progress carries status 491
            or 500 (RFC 3261 section 14.2).
        """
        key = (self.state, input_)
        if key not in _TRANSITIONS:
            message = f"{input_.name} not allowed in state {self.state.name}"
            if input_.name.startswith("SEND_"):
                raise LocalProtocolError(message)
            status = _OFFER_CLASH_STATUS.get(self.state, 400) if input_ is _I.RECV_OFFER else 400
            raise RemoteProtocolError(message, status=status)
        next_state = _TRANSITIONS[key]
        if self.state in (_S.IDLE, _S.DONE):
            self._origin_state = self.state
        self.state = self._origin_state if next_state is None else next_state
        return self.state

    def send_offer(self, offer: SessionDescription) -> SessionDescription:
        """Record an offer of ours and return it with our ``o=`` line applied. Send the returned copy.

        :raises LocalProtocolError: if an offer is already in progress, or if the
            offer has fewer ``m=`` lines than our current SDP (RFC 3264 section 8).
        """
        if self.local is not None and len(offer.media) < len(self.local.media):
            raise LocalProtocolError("a new offer must not remove m= lines (RFC 3264 section 8)")
        self.process_input(_I.SEND_OFFER)
        self.offer = self._stamp(offer)
        return self.offer.copy()

    def receive_offer(self, offer: SessionDescription, *, owned: bool = False) -> bool:
        """Record the peer's offer.

        :returns: whether it differs from the peer's current SDP in anything
            other than the origin line. ``False`` means a session refresh, which
            needs no change to media. Content is compared rather than
            ``sess-version``, because some peers do not increment it.
        :raises RemoteProtocolError: if an offer is in progress (status 491 or 500),
            or if the offer removes ``m=`` lines.

        ``owned``: the caller hands ``offer`` over (it made it for this call
        and never changes it again), so it is kept without a copy.
        """
        if self.remote is not None and len(offer.media) < len(self.remote.media):
            raise RemoteProtocolError("offer removes m= lines")
        self.process_input(_I.RECV_OFFER)
        self.offer = offer if owned else offer.copy()
        return self.remote is None or dataclasses.replace(offer, origin=self.remote.origin) != self.remote

    def send_answer(self, answer: SessionDescription) -> SessionDescription:
        """Record our answer to the peer's offer and return it with our ``o=`` line applied."""
        self.record_answer(answer)
        assert self.local is not None
        return self.local.copy()

    def record_answer(self, answer: SessionDescription, *, owned: bool = False) -> None:
        """:meth:`send_answer` for a caller that does not need the stamped copy back.

        ``owned``: as for :meth:`receive_offer`, the caller hands ``answer``
        over (it never changes it again): the first SDP we send is then
        kept without a copy (there is no o= line of ours to apply yet)."""
        self.process_input(_I.SEND_ANSWER)
        self.local, self.remote, self.offer = self._stamp(answer, owned), self.offer, None

    def receive_answer(self, answer: SessionDescription) -> None:
        """Record the peer's answer to our offer. Read it with :func:`process_answer`."""
        self.process_input(_I.RECV_ANSWER)
        self.local, self.remote, self.offer = self.offer, answer.copy(), None

    def reject_offer(self) -> None:
        """Roll back the offer in progress, ours or the peer's, after a non-2xx final response or CANCEL."""
        own = self.state is _S.LOCAL_OFFER
        self.process_input(_I.RECV_REJECT if own else _I.SEND_REJECT)
        self.offer = None

    def _stamp(self, sdp: SessionDescription, owned: bool = False) -> SessionDescription:
        """Copy ``sdp`` with our o= line and the right sess-version (RFC 3264 section 8);
        an ``owned`` first SDP is taken as it is (nothing to apply, nobody else changes it)."""
        last = self._last_sent
        if last is not None or not owned:
            sdp = sdp.copy()
        if last is not None:
            sdp.origin = dataclasses.replace(last.origin)
            if sdp != last:
                sdp.origin.sess_version += 1
        # Kept as is: the machine never changes an SDP it holds in place
        # (it replaces them), and hands callers copies.
        self._last_sent = sdp
        return sdp
