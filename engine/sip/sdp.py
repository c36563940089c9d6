"""SDP session descriptions (RFC 8866, which replaced RFC 4566): parse and serialize.

This module reads and writes SDP. It does not negotiate: see
:mod:`engine.sip.offer_answer` for RFC 3264.

What the parser accepts:

- Lines may end in CRLF or a bare LF. Trailing spaces and tabs are removed,
  and blank lines are skipped. :meth:`SessionDescription.to_bytes` always
  writes CRLF (RFC 8866 section 5).
- ``v=0``, ``o=`` and ``s=`` are required and must be the first three lines,
  in that order. The parser is strict here because every stack gets these right.
- A missing ``t=`` is accepted. Some phones leave it out. SIP sessions are always
  ``t=0 0`` (RFC 3264 section 5), so a missing ``t=`` is read as ``t=0 0`` and
  written back that way.
- After ``s=``, the lines of a section may come in any order. Output uses the
  order of RFC 8866 section 5, so well-formed input round-trips byte for byte,
  apart from trailing whitespace and LF-only line ends.
- RFC 8866 section 5 lets a parser ignore or reject a description that
  contains an unknown type letter. We keep such lines instead, because
  GB28181 cameras send ``y=`` and ``f=``. They are stored in ``extra`` and
  written again at the end of their section. Known lines that we do not model
  (``i= u= e= p= z= k=``) and repeated ``c=`` lines are also kept in ``extra``.
- Attributes keep their order and are never interpreted while parsing. The
  exceptions are ``a=rtpmap``, which is checked because payload types cannot be
  read without it, and ``a=crypto`` (RFC 4568 section 9.1), checked so that a
  malformed SDES key is refused with the line that carries it.

Peer errors raise :class:`~engine.sip.errors.RemoteProtocolError` with status
400, and the message names the line, e.g. ``"SDP line 3: missing '='"``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Literal

from engine.sip.errors import LocalProtocolError, RemoteProtocolError
from engine.sip.memo import Memo

__all__ = [
    "Attribute",
    "Connection",
    "CryptoAttribute",
    "SRTP_SUITES",
    "Direction",
    "DIRECTIONS",
    "MediaDescription",
    "Origin",
    "RtpMap",
    "SessionDescription",
    "Timing",
    "media_direction",
    "parse_crypto",
    "parse_sdp",
    "read_sdp",
    "rtp_address",
]

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
#: The RFC 8866 section 6.7 direction attributes.
DIRECTIONS: tuple[Direction, ...] = ("sendrecv", "sendonly", "recvonly", "inactive")

#: ``(name, value)``; the value is ``None`` for a property attribute (``a=sendrecv``).
Attribute = tuple[str, str | None]

# RFC 8866 section 5: the order of lines within each section. r= travels
# with its t=. Letters outside these strings (unknown ones) go last.
_SESSION_ORDER = "vosiuepcbtzka"
_MEDIA_ORDER = "micbka"
_KNOWN = frozenset("vosiuepcbtrzkam")
_SESSION_ONLY = frozenset("vostruepz")
#: An IP4/IP6 ``c=`` address (RFC 8866 section 9, ``connection-address``).
_ADDRESS = re.compile(r"[A-Za-z0-9.:-]+(/[0-9]+){0,2}")


@dataclass
class Origin:
    """The ``o=`` line (RFC 8866 section 5.2).

    ``sess_id`` is kept as text because it is only ever compared. ``sess_version``
    is an integer because RFC 3264 section 8 requires us to increment it.
    """

    username: str
    sess_id: str
    sess_version: int
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "127.0.0.1"


@dataclass
class Connection:
    """A ``c=`` line (RFC 8866 section 5.7).

    The address is stored as written, including any multicast ``/ttl`` suffix.
    """

    nettype: str
    addrtype: str
    address: str


@dataclass
class Timing:
    """A ``t=`` line and the ``r=`` lines that follow it (RFC 8866 sections 5.9, 5.10)."""

    start: int = 0
    stop: int = 0
    repeats: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RtpMap:
    """The value of ``a=rtpmap`` (RFC 8866 section 6.6), without the payload type.

    :param encoding_name: e.g. ``"PCMU"`` or ``"telephone-event"``; compare it
        without regard to case.
    :param channels: 1 when the rtpmap does not give a channel count.
    """

    encoding_name: str
    clock_rate: int
    channels: int = 1

    def __str__(self) -> str:
        text = f"{self.encoding_name}/{self.clock_rate}"
        return text if self.channels == 1 else f"{text}/{self.channels}"


#: Parsed rtpmap values by text: every call's offer repeats the same few
#: (``"0 PCMU/8000"``), and the answer reads them again. RtpMap is frozen, so
#: the results are shared.
_RTPMAPS: Memo[str, tuple[int, RtpMap]] = Memo(256)


def _parse_rtpmap(value: str) -> tuple[int, RtpMap]:
    """Parse ``"96 opus/48000/2"``; raise :class:`ValueError` if malformed."""
    return _RTPMAPS.parsed(value, _read_rtpmap)


def _read_rtpmap(value: str) -> tuple[int, RtpMap]:
    pt, _, encoding = value.partition(" ")
    parts = encoding.strip().split("/")
    if not (pt.isascii() and pt.isdecimal() and len(pt) <= 3) or len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(value)
    # digits bounded: int() of a 16,000-digit string raises (found by the fuzz run)
    if not all(p.isascii() and p.isdecimal() and len(p) <= 10 for p in parts[1:]):
        raise ValueError(value)
    channels = int(parts[2]) if len(parts) == 3 else 1
    return int(pt), RtpMap(parts[0], int(parts[1]), channels)


#: The SDES crypto-suites we know (RFC 4568 section 6.2, RFC 7714 section 14.2)
#: and the length of their inline key: master key plus master salt, in bytes.
SRTP_SUITES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": 16 + 14,
    "AES_CM_128_HMAC_SHA1_32": 16 + 14,
    "AEAD_AES_128_GCM": 16 + 12,
}
_CRYPTO_TAG = re.compile(r"[0-9]{1,9}")
_CRYPTO_SUITE = re.compile(r"[A-Za-z0-9_]{1,64}")
_LIFETIME = re.compile(r"(2\^)?[0-9]{1,20}")
_MKI = re.compile(r"([0-9]{1,20}):([0-9]{1,3})")


@dataclass(frozen=True)
class CryptoAttribute:
    """An ``a=crypto`` attribute for SDES-keyed SRTP (RFC 4568 section 9.1).

    ``a=crypto:<tag> <crypto-suite> inline:<key||salt>[|<lifetime>][|<MKI>:<length>] [<session-param>...]``

    Only the first key parameter of a line is kept (several need an MKI,
    which :mod:`engine.media.srtp` does not support; see :attr:`mki`).

    :param tag: the attribute's tag (1 to 9 digits), repeated in the answer.
    :param suite: the crypto-suite name, e.g. ``AES_CM_128_HMAC_SHA1_80``.
    :param key: the master key followed by the master salt (decoded base64).
    :param lifetime: the key's lifetime as written (``2^31`` or a number), or ``None``.
    :param mki: ``(value, length)`` of the master key identifier, or ``None``.
    :param session_params: the session parameters as written (RFC 4568 section 6.3).
    """

    tag: int
    suite: str
    key: bytes
    lifetime: str | None = None
    mki: tuple[int, int] | None = None
    session_params: tuple[str, ...] = ()

    def __str__(self) -> str:
        params = "inline:" + base64.b64encode(self.key).decode("ascii")
        if self.lifetime is not None:
            params += "|" + self.lifetime
        if self.mki is not None:
            params += f"|{self.mki[0]}:{self.mki[1]}"
        return " ".join([str(self.tag), self.suite, params, *self.session_params])

    def __repr__(self) -> str:  # never print the key (design.md: no secrets in logs)
        return f"CryptoAttribute(tag={self.tag}, suite={self.suite!r}, key=<{len(self.key)} bytes>)"


def parse_crypto(value: str) -> CryptoAttribute:
    """Parse the value of an ``a=crypto`` attribute (RFC 4568 section 9.1).

    An unknown crypto-suite is not an error (the answerer skips it, RFC 4568
    section 7.1.1); a known one must carry a key of its length.

    :raises ValueError: naming what is wrong (never the key itself).
    """
    parts = value.split()
    if len(parts) < 3:
        raise ValueError("needs '<tag> <crypto-suite> inline:<key>'")
    tag, suite, key_params, *session = parts
    if not _CRYPTO_TAG.fullmatch(tag):
        raise ValueError(f"bad tag {_short(tag)!r}")
    if not _CRYPTO_SUITE.fullmatch(suite):
        raise ValueError(f"bad crypto-suite {_short(suite)!r}")
    first = key_params.split(";")[0]
    method, colon, info = first.partition(":")
    if not colon or method.lower() != "inline":
        raise ValueError(f"key method must be 'inline', got {_short(method)!r}")
    key_text, *rest = info.split("|")
    if len(rest) > 2:
        raise ValueError("too many '|' fields in the key parameters")
    try:
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("key is not valid base64") from None
    lifetime: str | None = None
    mki: tuple[int, int] | None = None
    for field_ in rest:
        match = _MKI.fullmatch(field_)
        if match and mki is None:
            mki = (int(match[1]), int(match[2]))
        elif _LIFETIME.fullmatch(field_) and lifetime is None and mki is None:
            lifetime = field_
        else:
            raise ValueError(f"bad lifetime or MKI {_short(field_)!r}")
    wanted = SRTP_SUITES.get(suite)
    if wanted is not None and len(key) != wanted:
        raise ValueError(f"{suite} needs a {wanted}-byte key and salt, got {len(key)} bytes")
    return CryptoAttribute(int(tag), suite, key, lifetime, mki, tuple(session))


def _int_or_none(value: str | None) -> int | None:
    # Leniently read a number, accepting "20.0" as 20 (some phones write that).
    try:
        return int(float(value.split()[0])) if value else None
    except (ValueError, OverflowError):
        return None


class _Section:
    """What the session level and a media section have in common: attributes."""

    attributes: list[Attribute]

    def attribute(self, name: str) -> str | None:
        """Return the value of the first ``a=name:value``, or ``None``."""
        for n, v in self.attributes:  # a loop, not next() of a generator: read several times an answer
            if n == name and v is not None:
                return v
        return None

    @property
    def direction(self) -> Direction | None:
        """The direction attribute written at this level, or ``None`` if there is none.

        Use :func:`media_direction` for the effective direction of a stream.
        Setting this property replaces any existing direction attribute, and
        ``None`` removes it.
        """
        for n, _ in self.attributes:
            if n in DIRECTIONS:
                return n
        return None

    @direction.setter
    def direction(self, value: Direction | None) -> None:
        self.attributes = [a for a in self.attributes if a[0] not in DIRECTIONS]
        if value is not None:
            self.attributes.append((value, None))


@dataclass
class MediaDescription(_Section):
    """One ``m=`` section (RFC 8866 section 5.14) with its lines.

    :param kind: the media type: ``"audio"``, ``"video"``, ...
    :param formats: the formats as written. For RTP these are payload type numbers.
    :param extra: lines kept verbatim as ``(letter, value)``; see the module notes.
    """

    kind: str
    port: int
    proto: str
    formats: list[str]
    port_count: int = 1
    connection: Connection | None = None
    bandwidths: dict[str, int] = field(default_factory=dict)
    attributes: list[Attribute] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rtpmap(self) -> dict[int, RtpMap]:
        """``a=rtpmap`` by payload type. Static types without an rtpmap are not included."""
        result: dict[int, RtpMap] = {}
        for name, value in self.attributes:
            if name == "rtpmap" and value is not None:
                try:
                    pt, rtpmap = _parse_rtpmap(value)
                except ValueError:
                    # parse_sdp rejects bad rtpmaps, so this one was added by us.
                    raise LocalProtocolError(f"bad rtpmap {value!r}") from None
                result.setdefault(pt, rtpmap)
        return result

    @property
    def fmtp(self) -> dict[int, str]:
        """``a=fmtp`` parameters by payload type (RFC 8866 section 6.15)."""
        result: dict[int, str] = {}
        for name, value in self.attributes:
            if name != "fmtp" or value is None:
                continue
            pt, _, params = value.partition(" ")
            if pt.isascii() and pt.isdecimal() and len(pt) <= 3:
                result.setdefault(int(pt), params.strip())
        return result

    @property
    def crypto(self) -> list[CryptoAttribute]:
        """The ``a=crypto`` attributes (RFC 4568) in the order written."""
        result = []
        for name, value in self.attributes:
            if name == "crypto" and value is not None:
                try:
                    result.append(parse_crypto(value))
                except ValueError as exc:
                    # parse_sdp rejects bad crypto lines, so this one was added by us.
                    raise LocalProtocolError(f"bad crypto attribute: {exc}") from None
        return result

    @property
    def ptime(self) -> int | None:
        """``a=ptime`` in milliseconds (RFC 8866 section 6.4), or ``None`` if absent or unreadable."""
        return _int_or_none(self.attribute("ptime"))

    @property
    def rtcp(self) -> int | None:
        """The RTCP port from ``a=rtcp`` (RFC 3605), or ``None`` (also when it
        is no port number)."""
        port = _int_or_none(self.attribute("rtcp"))
        return port if port is not None and 0 < port <= 65535 else None

    def _lines(self) -> list[str]:
        port = str(self.port) if self.port_count == 1 else f"{self.port}/{self.port_count}"
        m_line = " ".join([f"m={self.kind}", port, self.proto, *self.formats])
        if not self.extra:  # the usual case, already in RFC 8866 order: m= c= b= a=
            return [m_line, *_connection_lines(self), *_attribute_lines(self)]
        return _ordered(_MEDIA_ORDER, [("m", [m_line]), *_section_chunks(self)])


@dataclass
class SessionDescription(_Section):
    """A whole session description (RFC 8866 section 5).

    Serialize it with :meth:`to_bytes` or ``bytes(sdp)``. Parse one with :func:`parse_sdp`.
    """

    origin: Origin
    session_name: str = "-"
    connection: Connection | None = None
    timing: list[Timing] = field(default_factory=lambda: [Timing()])
    bandwidths: dict[str, int] = field(default_factory=dict)
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=list)
    version: int = 0

    def copy(self) -> SessionDescription:
        """A deep copy that knows the description's shape: what
        ``copy.deepcopy`` gives, about ten times cheaper (offer/answer copies
        each description it keeps, several times a call). Attributes and
        ``extra`` lines are tuples of strings, shared as they are."""
        o, c = self.origin, self.connection
        return SessionDescription(
            origin=Origin(o.username, o.sess_id, o.sess_version, o.nettype, o.addrtype, o.address),
            session_name=self.session_name,
            connection=None if c is None else Connection(c.nettype, c.addrtype, c.address),
            timing=[Timing(t.start, t.stop, list(t.repeats)) for t in self.timing],
            bandwidths=dict(self.bandwidths),
            attributes=list(self.attributes),
            media=[MediaDescription(
                kind=m.kind, port=m.port, proto=m.proto, formats=list(m.formats), port_count=m.port_count,
                connection=None if m.connection is None else Connection(
                    m.connection.nettype, m.connection.addrtype, m.connection.address),
                bandwidths=dict(m.bandwidths), attributes=list(m.attributes), extra=list(m.extra),
            ) for m in self.media],
            extra=list(self.extra),
            version=self.version,
        )

    def to_bytes(self) -> bytes:
        """Serialize with CRLF line ends, in RFC 8866 section 5 order.

        :raises LocalProtocolError: if a value contains CR or LF.
        """
        o = self.origin
        head = [
            f"v={self.version}",
            f"o={o.username} {o.sess_id} {o.sess_version} {o.nettype} {o.addrtype} {o.address}",
            # RFC 8866 section 5.3: s= must not be empty; "s= " stands for no name.
            f"s={self.session_name or ' '}",
        ]
        timing = [_timing_lines(t) for t in self.timing or [Timing()]]
        if not self.extra:  # the usual case, already in RFC 8866 order: v= o= s= c= b= t= r= a=
            lines = [*head, *_connection_lines(self)]
            for t_lines in timing:
                lines += t_lines
            if self.attributes:
                lines += _attribute_lines(self)
        else:
            chunks = [("v", head[:1]), ("o", head[1:2]), ("s", head[2:]), *_section_chunks(self)]
            chunks += [("t", t_lines) for t_lines in timing]
            lines = _ordered(_SESSION_ORDER, chunks)
        for media in self.media:
            lines += media._lines()
        text = "\r\n".join(lines)
        # Each separator holds one CR and one LF; any other came from a value.
        if text.count("\r") != len(lines) - 1 or text.count("\n") != len(lines) - 1:
            line = next(line for line in lines if "\r" in line or "\n" in line)
            raise LocalProtocolError(f"SDP line contains CR or LF: {line!r}")
        return (text + "\r\n").encode("utf-8", "surrogateescape")

    def __bytes__(self) -> bytes:
        return self.to_bytes()


def _timing_lines(timing: Timing) -> list[str]:
    """A ``t=`` line and its ``r=`` lines."""
    t_line = f"t={timing.start} {timing.stop}"
    return [t_line, *[f"r={r}" for r in timing.repeats]] if timing.repeats else [t_line]


def _connection_lines(section: SessionDescription | MediaDescription) -> list[str]:
    """The section's ``c=`` and ``b=`` lines, in that order."""
    c = section.connection
    lines = [] if c is None else [f"c={c.nettype} {c.addrtype} {c.address}"]
    if section.bandwidths:
        lines += [f"b={name}:{value}" for name, value in section.bandwidths.items()]
    return lines


def _attribute_lines(section: SessionDescription | MediaDescription) -> list[str]:
    return [f"a={n}" if v is None else f"a={n}:{v}" for n, v in section.attributes]


def _section_chunks(section: SessionDescription | MediaDescription) -> list[tuple[str, list[str]]]:
    # Each line under its type letter, its first character.
    chunks = [(line[0], [line]) for line in _connection_lines(section)]
    chunks += [("a", [line]) for line in _attribute_lines(section)]
    chunks += [(letter, [f"{letter}={value}"]) for letter, value in section.extra]
    return chunks


def _ordered(order: str, chunks: list[tuple[str, list[str]]]) -> list[str]:
    # A stable sort, so lines with the same letter keep their relative order.
    def rank(chunk: tuple[str, list[str]]) -> int:
        index = order.find(chunk[0])
        return index if index >= 0 else len(order)

    return [line for _, lines in sorted(chunks, key=rank) for line in lines]


#: The last descriptions parsed, by body: a call's offer is read by the
#: INVITE session (which keeps its own :meth:`~SessionDescription.copy`, a
#: tenth of a parse) and by the media layer (which only reads it:
#: :func:`read_sdp`). Bounded; a malformed body is never kept.
_PARSED: Memo[bytes | str, SessionDescription] = Memo(64)


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse a session description. The module docstring says what is tolerated.

    :param data: the SIP message body. Bytes that are not valid UTF-8 are
        kept, so they come back unchanged from :meth:`SessionDescription.to_bytes`.
    :returns: a description the caller owns (changing it changes no other).
    :raises RemoteProtocolError: (status 400) if the description is malformed.
    """
    return read_sdp(data).copy()


def read_sdp(data: bytes | str) -> SessionDescription:
    """:func:`parse_sdp` for a caller that only reads the result and keeps
    it no longer than it needs it: the remembered description itself, shared
    with every other reader of the same body (no copy, which costs as much
    as the rest of answering an offer). Never change it; use
    :func:`parse_sdp` for a description to change or to keep.

    :raises RemoteProtocolError: (status 400) if the description is malformed.
    """
    return _PARSED.parsed(data, _parse)


def _parse(data: bytes | str) -> SessionDescription:
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    records: list[tuple[int, str, str]] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip(" \t\r")
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise _error(number, "missing '='")
        if not "a" <= line[0] <= "z":
            raise _error(number, f"bad type letter {line[0]!r}")
        records.append((number, line[0], line[2:]))
    if not records:
        raise RemoteProtocolError("SDP is empty")

    # RFC 8866 section 5: v=, o=, s= come first, in this order.
    for (number, letter, _), wanted in zip(records, "vos"):
        if letter != wanted:
            raise _error(number, f"expected '{wanted}=', got '{letter}='")
    if len(records) < 3:
        raise RemoteProtocolError(f"SDP has no '{'vos'[len(records)]}=' line")
    (v_number, _, v_value), (o_number, _, o_value), (_, _, s_value) = records[:3]
    if v_value != "0":
        raise _error(v_number, f"unsupported version {v_value!r}")
    fields = o_value.split()
    if len(fields) != 6:
        raise _error(o_number, f"o= needs 6 fields, got {len(fields)}")
    origin = Origin(fields[0], fields[1], _int(o_number, "sess-version", fields[2]), *fields[3:])
    sdp = SessionDescription(origin=origin, session_name=s_value, timing=[])

    media: MediaDescription | None = None
    for number, letter, value in records[3:]:
        section: SessionDescription | MediaDescription = sdp if media is None else media
        if letter == "m":
            media = _parse_media(number, value)
            sdp.media.append(media)
        elif letter in "vos" or (media is not None and letter in _SESSION_ONLY):
            where = "in a media section" if media is not None else "here"
            raise _error(number, f"'{letter}=' not allowed {where}")
        elif letter == "c" and section.connection is None:
            parts = value.split()
            if len(parts) != 3:
                raise _error(number, f"c= needs 3 fields, got {len(parts)}")
            if parts[1] in ("IP4", "IP6") and not _ADDRESS.fullmatch(parts[2]):
                # RFC 8866 section 9: an IP4/IP6 connection-address is an IP
                # literal or an FQDN (alphanumerics, '-', '.'), with an optional
                # multicast /ttl/count. A NUL here reached the RTP socket's
                # sendto as a host name and raised there (found by bench/fuzz.py).
                raise _error(number, f"bad connection address {_short(parts[2])!r}")
            section.connection = Connection(*parts)
        elif letter == "b":
            name, colon, bandwidth = value.partition(":")
            if not name or not colon:
                raise _error(number, f"bad bandwidth {_short(value)!r}")
            section.bandwidths[name] = _int(number, "bandwidth", bandwidth)
        elif letter == "a":
            name, colon, attr_value = value.partition(":")
            if not name:
                raise _error(number, "empty attribute name")
            if name == "rtpmap" and media is not None:
                try:
                    _parse_rtpmap(attr_value)
                except ValueError:
                    raise _error(number, f"bad rtpmap {_short(attr_value)!r}") from None
            if name == "crypto" and media is not None:
                try:
                    parse_crypto(attr_value)
                except ValueError as exc:
                    raise _error(number, f"bad crypto attribute: {exc}") from None
            section.attributes.append((name, attr_value if colon else None))
        elif letter == "t":
            start, _, stop = value.partition(" ")
            sdp.timing.append(Timing(_int(number, "start time", start), _int(number, "stop time", stop.strip())))
        elif letter == "r":
            if not sdp.timing:
                raise _error(number, "'r=' before 't='")
            sdp.timing[-1].repeats.append(value)
        else:
            section.extra.append((letter, value))
    if not sdp.timing:
        sdp.timing = [Timing()]  # t= was missing; see the module docstring
    return sdp


def _parse_media(number: int, value: str) -> MediaDescription:
    # RFC 8866 section 5.14: m=<media> <port>[/<number of ports>] <proto> <fmt> ...
    # Zero formats are tolerated; RFC 8866 requires at least one.
    parts = value.split()
    if len(parts) < 3:
        raise _error(number, f"bad m= line {_short(value)!r}")
    port, slash, count = parts[1].partition("/")
    media = MediaDescription(parts[0], _int(number, "port", port), parts[2], parts[3:])
    if media.port > 65535:
        raise _error(number, f"bad port {port!r}")
    if slash:
        media.port_count = _int(number, "port count", count)
    return media


def _int(number: int, what: str, value: str) -> int:
    # 20 digits hold any 64-bit value (o= session versions are NTP times);
    # more is malformed, and int() of a huge string raises ValueError
    if not (value.isascii() and value.isdecimal() and len(value) <= 20):
        raise _error(number, f"bad {what} {_short(value)!r}")
    return int(value)


def _short(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "..."


def _error(number: int, message: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"SDP line {number}: {message}")


def media_direction(media: MediaDescription, session: SessionDescription) -> Direction:
    """Return the effective direction of a stream.

    The media-level attribute wins over the session-level one, and the default
    is ``sendrecv`` (RFC 8866 section 6.7). An address of ``0.0.0.0`` is not
    considered here; :mod:`engine.sip.offer_answer` handles that.
    """
    return media.direction or session.direction or "sendrecv"


def rtp_address(media: MediaDescription, session: SessionDescription) -> tuple[str, int]:
    """Return the ``(address, port)`` that RTP for ``media`` should go to.

    A media-level ``c=`` overrides the session-level one (RFC 8866 section 5.7).
    Any multicast ``/ttl`` suffix is removed from the address.

    :raises RemoteProtocolError: if neither level has a ``c=`` line.
    """
    connection = media.connection or session.connection
    if connection is None:
        raise RemoteProtocolError(f"SDP has no c= line for m={media.kind}")
    return connection.address.split("/")[0], media.port
