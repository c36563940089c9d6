"""Header names and typed header values (RFC 3261 §20, §25.1).

Messages keep header values as text (unknown headers verbatim); the typed
classes here are parsed from that text when a caller asks for them:
:class:`NameAddr` (From, To, Contact, Route, Record-Route), :class:`Via`,
:class:`CSeq`. Names are canonicalised through one registry that also maps
the compact forms (``v`` is Via, ``i`` is Call-ID, ...).

Every parser here raises :class:`~engine.sip.errors.RemoteProtocolError` with
a short fixed reason that never echoes the input, and none of them uses a
regular expression that can backtrack more than linearly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.sip.errors import RemoteProtocolError
from engine.sip.memo import Memo
from engine.sip.uri import _HOST, SipUri, Uri, _is_digits, _parse_hostport, format_host, parse_uri

__all__ = [
    "canonical_name",
    "is_known_name",
    "MULTI_VALUED",
    "split_header_values",
    "parse_params",
    "format_params",
    "unquote",
    "NameAddr",
    "Via",
    "CSeq",
    "parse_name_addr",
    "parse_via",
    "parse_cseq",
]

# RFC 3261 §7.3.3 and the IANA registry of compact forms.
_COMPACT = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
_SPELLING = [
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language",
    "Accept-Resource-Priority", "Alert-Info", "Allow", "Allow-Events",
    "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language",
    "Content-Length", "Content-Type", "CSeq", "Date", "Diversion",
    "Error-Info", "Event", "Expires", "From", "History-Info", "Identity",
    "Identity-Info", "In-Reply-To", "Join", "Max-Forwards", "MIME-Version",
    "Min-Expires", "Min-SE", "Organization", "P-Access-Network-Info",
    "P-Asserted-Identity", "P-Called-Party-ID", "P-Charging-Vector",
    "P-Preferred-Identity", "Path", "Priority", "Privacy",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck",
    "Reason", "Record-Route", "Refer-Sub", "Refer-To", "Referred-By",
    "Reject-Contact", "Remote-Party-ID", "Replaces", "Reply-To",
    "Request-Disposition", "Require", "Resource-Priority", "Retry-After",
    "Route", "RSeq", "Security-Client", "Security-Server", "Security-Verify",
    "Server", "Service-Route", "Session-Expires", "SIP-ETag", "SIP-If-Match",
    "Subject", "Subscription-State", "Supported", "Target-Dialog", "Timestamp",
    "To", "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
]
_CANONICAL: dict[str, str] = {name.lower(): name for name in _SPELLING}
_CANONICAL.update(_COMPACT)
# Canonical spellings map to themselves: the common case needs no lower().
_EXACT: dict[str, str] = {name: name for name in _SPELLING}
_KNOWN = frozenset(_SPELLING)
#: Each registry spelling mapped to itself: the fast path of header lookups
#: in :mod:`engine.sip.message`. Never change it.
KNOWN_NAMES = _EXACT
#: Header names as they are usually written (the registry's spelling, lower
#: case, compact forms) mapped to their canonical spelling: the parser's fast
#: path, which needs no token check for these (every key is a token). Never
#: change it.
WRITTEN_NAMES: dict[str, str] = {**_CANONICAL, **{k.upper(): v for k, v in _COMPACT.items()}, **_EXACT}

# Headers whose comma-separated values are split into separate entries
# (RFC 3261 §7.3.1). Authentication headers are deliberately absent: their
# values contain commas between parameters.
MULTI_VALUED = frozenset(
    {
        "Via", "Route", "Record-Route", "Contact", "Allow", "Supported",
        "Require", "Proxy-Require", "Unsupported", "Accept",
        "Accept-Encoding", "Accept-Language", "Allow-Events",
        "Content-Encoding", "Path", "Service-Route",
    }
)
assert MULTI_VALUED <= _KNOWN

_TOKEN = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN_RE = re.compile(rf"[{_TOKEN}]+")
# gen-value = token / host / quoted-string (RFC 3261 §25.1); host adds ':' and
# the IPv6 brackets.
_GEN_VALUE_RE = re.compile(rf"[{_TOKEN}:\[\]]+")
# quoted-string content, the unrolled-loop form (linear, no nested repeats).
_QUOTED_RE = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"', re.DOTALL)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
# display-name = *(token LWS): tokens separated by spaces or tabs.
_DISPLAY_RE = re.compile(rf"[{_TOKEN}]+(?:[ \t]+[{_TOKEN}]+)*")
# sent-protocol and the LWS after it (RFC 3261 §20.42; SLASH = SWS "/" SWS).
_VIA_PROTOCOL_RE = re.compile(
    rf"([{_TOKEN}]+)[ \t]*/[ \t]*([{_TOKEN}]+)[ \t]*/[ \t]*([{_TOKEN}]+)[ \t]+"
)
_SWS_COLON_RE = re.compile(r"[ \t]*:[ \t]*")
# The usual shape of a Via, in two parts: sent-protocol without spaces, one
# space, a hostname or IPv4 address, a port (none of them holds a ``;``, so
# this is the text before the first ``;``); then parameters without spaces or
# quotes. Whatever they do not match (IPv6, spaces, quoted values, faults)
# takes the step-by-step path, which names the fault. Each part is delimited
# (``/``, `` ``, ``:``, ``;``, ``=``), so a failing match is linear.
_VIA_SENT_RE = re.compile(rf"([{_TOKEN}]+)/([{_TOKEN}]+)/([{_TOKEN}]+) ({_HOST})(?::([0-9]{{1,5}}))?")
_VIA_USUAL_PARAMS_RE = re.compile(rf"(?:;[{_TOKEN}]+(?:=[{_TOKEN}:\[\]]+)?)*")
#: The longest Via tried with the usual shape (a proxy's or a phone's is well
#: under: host, port, branch, rport, received).
_VIA_USUAL_MAX = 512
# Header parameters without quoted strings, every one well formed: what
# parse_params can split without looking at each character. Possessive
# quantifiers (Python 3.11): a run of spaces is never given back and tried
# again elsewhere, so a failing match is linear in the text (a peer's long
# run of spaces before a bad character would otherwise cost quadratic time:
# tests/unit/test_headers.py times it). Only the runs are possessive, not
# the optional value or the repeated group around them: Debian 12's Python
# (3.11.2) matches ``;`` alone with a possessive repeat of a group holding
# a possessive run (fixed in 3.11.3), and giving back a whole parameter
# costs no more than a step per parameter.
_PLAIN_PARAMS_RE = re.compile(
    rf"[ \t]*+(?:;[ \t]*+[{_TOKEN}]++(?:[ \t]*+=[ \t]*+[{_TOKEN}:\[\]]++)?[ \t]*+)*"
)
_CSEQ_RE = re.compile(rf"([0-9]+)[ \t]+([{_TOKEN}]+)")


def canonical_name(name: str) -> str:
    """Return the canonical spelling of a header name (compact forms expanded).

    Unknown names are returned in the case they were given, so they are
    re-emitted verbatim; comparisons must go through :func:`str.lower`.
    """
    exact = _EXACT.get(name)
    if exact is not None:
        return exact
    return _CANONICAL.get(name.lower(), name)


def is_known_name(name: str) -> bool:
    """Whether ``name`` is a canonical spelling from the registry.

    Known names are always stored in that spelling, so they can be compared
    exactly; unknown names need a case-insensitive comparison.
    """
    return name in _KNOWN


def split_header_values(text: str) -> list[str]:
    """Split a header value on commas outside quotes and angle brackets.

    :raises RemoteProtocolError: ``empty element in header list`` for
        ``a,,b`` or a trailing comma (RFC 4475 §3.1.2.1 wants them refused).
    """
    if "," not in text:
        return [text.strip(" \t")]
    if '"' not in text and "<" not in text:
        out = [part.strip(" \t") for part in text.split(",")]
    else:
        out = []
        start = 0
        quoted = angle = False
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if quoted:
                if c == "\\":
                    i += 1
                elif c == '"':
                    quoted = False
            elif c == '"':
                quoted = True
            elif c == "<":
                angle = True
            elif c == ">":
                angle = False
            elif c == "," and not angle:
                out.append(text[start:i].strip(" \t"))
                start = i + 1
            i += 1
        out.append(text[start:].strip(" \t"))
    if not all(out):
        raise RemoteProtocolError("empty element in header list")
    return out


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read a quoted-string starting at ``text[start] == '"'``.

    :returns: the unescaped content and the index after the closing quote.
    :raises RemoteProtocolError: ``unterminated quoted string``.
    """
    m = _QUOTED_RE.match(text, start)
    if m is None:
        raise RemoteProtocolError("unterminated quoted string")
    content = m[1]
    if "\\" in content:
        content = _QUOTED_PAIR_RE.sub(r"\1", content)
    return content, m.end()


def parse_params(text: str, what: str) -> dict[str, str | None]:
    """Parse ``;name=value;flag`` header parameters.

    ``text`` starts at the first ``;``, spaces aside (or is empty). Values may be tokens,
    hosts (IPv6 in brackets) or quoted strings, which are returned with their
    quotes so that they serialize unchanged. Names are lower-cased. Spaces and
    tabs are allowed around ``;`` and ``=`` (RFC 3261 §25.1 SEMI and EQUAL).

    :param what: where the parameters are, for the reason phrase.
    :raises RemoteProtocolError: ``bad parameters in <what>`` (no ``;``),
        ``bad parameter in <what>`` (not a token name), ``bad parameter value
        in <what>`` or ``unterminated quoted string``.
    """
    params: dict[str, str | None] = {}
    if _PLAIN_PARAMS_RE.fullmatch(text):  # the common case, checked at once
        for part in text.split(";")[1:]:
            name, eq, value = part.partition("=")
            params[name.strip(" \t").lower()] = value.strip(" \t") if eq else None
        return params
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == " " or c == "\t":
            i += 1
            continue
        if c != ";":
            raise RemoteProtocolError(f"bad parameters in {what}")
        i += 1
        j = i
        while j < n and text[j] != ";" and text[j] != "=":
            j += 1
        name = text[i:j].strip(" \t")
        if not _TOKEN_RE.fullmatch(name):
            raise RemoteProtocolError(f"bad parameter in {what}")
        if j < n and text[j] == "=":
            j += 1
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == '"':
                _, end = _read_quoted(text, j)
                value = text[j:end]
                j = end
                while j < n and text[j] in " \t":
                    j += 1
            else:
                k = j
                j = text.find(";", j)
                if j < 0:
                    j = n
                value = text[k:j].rstrip(" \t")
                if not _GEN_VALUE_RE.fullmatch(value):
                    raise RemoteProtocolError(f"bad parameter value in {what}")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
        i = j
    return params


def format_params(params: dict[str, str | None]) -> str:
    """Serialize header parameters (values are written as stored)."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def unquote(value: str | None) -> str | None:
    """Strip the quotes of a quoted parameter value, decoding escapes."""
    if value is not None and value.startswith('"'):
        return _read_quoted(value, 0)[0]
    return value


def _quote_display(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@dataclass
class NameAddr:
    """``[display-name] <uri>;params``: From, To, Contact, Route values.

    :param uri: the parsed URI.
    :param display_name: the unescaped display name, or ``None``.
    :param params: header parameters (``tag``, ``expires``, ``q``...).
    :param wildcard: the ``*`` of ``Contact: *`` (RFC 3261 §10.2.2).
    """

    uri: Uri
    display_name: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter, or ``None``."""
        return self.params.get("tag")

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        display = f"{_quote_display(self.display_name)} " if self.display_name else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


#: Name-addrs parsed lately, by their text: a call's messages repeat their
#: From, To and Contact (and a trunk repeats its own across calls). The
#: objects are shared, as a message's typed views already are: change a copy.
NAME_ADDR_MEMO: Memo[str, NameAddr] = Memo(512)


def parse_name_addr(text: str) -> NameAddr:
    """Parse a name-addr or addr-spec with header parameters (RFC 3261 §20.10).

    The result is shared with other callers that parsed the same text: do
    not change it in place.

    In the addr-spec form (no ``<>``) everything after the first ``;`` is a
    header parameter, never a URI parameter.

    :raises RemoteProtocolError: on an unterminated quote, a display name with
        non-token characters (RFC 4475 §3.1.2.15), an unenclosed URI
        containing ``?``, ``,`` or whitespace (RFC 4475 §3.1.2.13-14) or a bad
        URI or parameter.
    """
    return NAME_ADDR_MEMO.parsed(text, _parse_name_addr)


def _parse_name_addr(text: str) -> NameAddr:
    text = text.strip(" \t")
    if text == "*":
        return NameAddr(uri=SipUri(host="*"), wildcard=True)
    display: str | None = None
    if text.startswith('"'):
        display, end = _read_quoted(text, 0)
        rest = text[end:].lstrip(" \t")
        if not rest.startswith("<"):
            raise RemoteProtocolError("quoted display name not followed by <URI>")
    else:
        lt = text.find("<")
        if lt >= 0:
            words = text[:lt].rstrip(" \t")
            if words:
                if not _DISPLAY_RE.fullmatch(words):
                    raise RemoteProtocolError("display name has characters that need quoting")
                display = " ".join(words.split())
            rest = text[lt:]
        else:
            rest = ""
    if rest:
        gt = rest.find(">")
        if gt < 0:
            raise RemoteProtocolError("missing '>' after URI")
        uri = parse_uri(rest[1:gt])
        params = parse_params(rest[gt + 1 :].lstrip(" \t"), "header") if gt + 1 < len(rest) else {}
    else:
        semi = text.find(";")
        spec = (text if semi < 0 else text[:semi]).rstrip(" \t")
        if any(c in spec for c in " \t?,"):
            raise RemoteProtocolError("URI with '?', ',' or spaces must be enclosed in <>")
        uri = parse_uri(spec)
        params = parse_params(text[semi:], "header") if semi >= 0 else {}
    return NameAddr(uri, display, params)


@dataclass
class Via:
    """One Via value (RFC 3261 §20.42, RFC 3581 rport).

    :param transport: the transport, upper-cased (``UDP``, ``TCP``, ``TLS``,
        ``WS``... or any token).
    :param host: the sent-by host; IPv6 without brackets.
    :param port: the sent-by port, or ``None``.
    :param params: ``branch``, ``received`` (IPv6 without brackets, RFC 5118
        §4.5), ``rport`` (``None`` when present without a value), ``maddr``,
        ``ttl`` and any others, in order.
    :param protocol: ``SIP/2.0``.
    """

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        """The ``branch`` parameter, or ``None``."""
        return self.params.get("branch")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """``(host, port)`` of the sent-by."""
        return self.host, self.port

    def __str__(self) -> str:
        host = format_host(self.host)
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {host}{port}{format_params(self.params)}"


#: The usual sent-protocol and sent-by parts (the text before the first
#: ``;``) parsed lately, as ``(transport, host, port, protocol)``: a peer
#: repeats its own in every Via it sends, only the parameters (the branch)
#: change. A part not of the usual shape is never kept.
VIA_SENT_MEMO: Memo[str, tuple[str, str, int | None, str]] = Memo(256)


def _usual_via_sent(sent: str) -> tuple[str, str, int | None, str] | None:
    """``(transport, host, port, protocol)`` of a sent-protocol and sent-by
    of the usual shape (:data:`_VIA_SENT_RE`, a port up to 65535), else
    ``None``: what the step-by-step path of :func:`parse_via` gives for it."""
    m = _VIA_SENT_RE.fullmatch(sent)
    if m is None or (m[5] is not None and int(m[5]) > 65535):
        return None
    parsed = (m[3].upper(), m[4], None if m[5] is None else int(m[5]), f"{m[1].upper()}/{m[2]}")
    VIA_SENT_MEMO.put(sent, parsed)
    return parsed


def parse_via(text: str) -> Via:
    """Parse one Via value (``SIP/2.0/UDP host:port;branch=...``).

    Whitespace is allowed around the slashes of the sent-protocol and around
    the colon of the sent-by (RFC 3261 §25.1 SLASH and COLON), as RFC 4475
    §3.1.1.1 exercises.

    :raises RemoteProtocolError: ``bad Via`` (sent-protocol or missing
        sent-by), ``bad host in Via``, ``bad port in Via``, ``bad IPv6
        reference in Via``, parameter errors, ``bad received in Via`` or
        ``bad rport in Via``.
    """
    text = text.strip(" \t")
    # A usual Via is short: a long one (odd or hostile) goes straight to the
    # step-by-step path, so a malformed one costs no more than it did.
    usual = None
    if len(text) <= _VIA_USUAL_MAX:
        sent = text.partition(";")[0]
        usual = VIA_SENT_MEMO.get(sent) or _usual_via_sent(sent)
        if usual is not None and not _VIA_USUAL_PARAMS_RE.fullmatch(text, len(sent)):
            usual = None
    if usual is not None:
        # What the step-by-step path below gives for this shape, without its
        # calls: the host matched _HOST as _parse_hostport checks it, the
        # parameters are what parse_params splits at once.
        transport, host, port, protocol = usual
        params: dict[str, str | None] = {}
        if len(sent) < len(text):
            for part in text[len(sent) + 1 :].split(";"):
                name, eq, value = part.partition("=")
                params[name.lower()] = value if eq else None
    else:
        m = _VIA_PROTOCOL_RE.match(text)
        if m is None:
            raise RemoteProtocolError("bad Via")
        rest = text[m.end() :]
        semi = rest.find(";")
        sentby = (rest if semi < 0 else rest[:semi]).rstrip(" \t")
        if not sentby:
            raise RemoteProtocolError("bad Via")
        if " " in sentby or "\t" in sentby:
            sentby = _SWS_COLON_RE.sub(":", sentby)
        host, port = _parse_hostport(sentby, "Via")
        params = parse_params(rest[semi:], "Via") if semi >= 0 else {}
        transport, protocol = m[3].upper(), f"{m[1].upper()}/{m[2]}"
    received = params.get("received")
    if received is not None and received[:1] == "[":
        # RFC 5118 §4.5: tolerate the bracketed form, store the bare address.
        if len(received) < 3 or received[-1] != "]":
            raise RemoteProtocolError("bad received in Via")
        params["received"] = received[1:-1]
    rport = params.get("rport")
    if rport is not None and (not _is_digits(rport) or len(rport) > 5 or int(rport) > 65535):
        raise RemoteProtocolError("bad rport in Via")
    return Via(transport, host, port, params, protocol)


@dataclass(frozen=True)
class CSeq:
    """A CSeq value: sequence number and method (RFC 3261 §20.16)."""

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


#: CSeq values parsed lately, by their text: a few (``1 INVITE``, ``1 ACK``,
#: ``2 BYE``...) make most of a trunk's. CSeq is frozen, so sharing is safe.
CSEQ_MEMO: Memo[str, CSeq] = Memo(256)


def parse_cseq(text: str) -> CSeq:
    """Parse a CSeq value; the number must be below 2**31 (RFC 3261 §8.1.1.5).

    :raises RemoteProtocolError: ``bad CSeq`` or ``CSeq number too large``.
    """
    return CSEQ_MEMO.parsed(text, _parse_cseq)


def _parse_cseq(text: str) -> CSeq:
    m = _CSEQ_RE.fullmatch(text.strip(" \t"))
    if m is None:
        raise RemoteProtocolError("bad CSeq")
    digits = m[1].lstrip("0") or "0"
    if len(digits) > 10 or int(digits) > 2**31 - 1:
        raise RemoteProtocolError("CSeq number too large")
    return CSeq(int(digits), m[2])
