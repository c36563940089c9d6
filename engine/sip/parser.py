"""Parsing SIP messages from bytes, and framing them on stream transports.

Two steps, kept apart as pjsip keeps ``pjsip_find_msg`` and
``pjsip_parse_msg``: :class:`StreamFramer` cuts a TCP byte stream into whole
messages by Content-Length (RFC 3261 §18.3); :func:`parse_message` turns one
message (a datagram, or a frame) into a :class:`SipRequest` or
:class:`SipResponse`; :func:`validate_message` checks what a transaction needs
(mandatory headers present once, typed values well formed, CSeq method equal
to the request method) so that a bad message is refused with a reason.

When a message is refused, the :class:`ParseError` carries in ``partial``
the message as far as it was parsed, so a server can still build the ``400``
from its Via, From, To, Call-ID and CSeq. A malformed Request-Line or header
line does not stop the parse: the other headers still reach ``partial``.

Cost: the head is decoded once and split into lines; each line costs one
``partition`` and one anchored token match. Values stay text until
:func:`validate_message` (or a caller) asks for a typed view; no regular
expression ever runs over the whole message, and every step is linear in
the input.

Error reasons are short fixed phrases, never echoing the input, because they
become the reason phrase of the ``400``.
"""

from __future__ import annotations

import re
from operator import itemgetter

from engine.sip.errors import RemoteProtocolError
from engine.sip.headers import MULTI_VALUED, WRITTEN_NAMES, canonical_name, split_header_values
from engine.sip.message import Headers, SipMessage, SipRequest, SipResponse
from engine.sip.uri import AbsoluteUri, SipUri

__all__ = [
    "ParseError",
    "parse_message",
    "parse_unvalidated",
    "validate_message",
    "StreamFramer",
    "DEFAULT_MAX_MESSAGE",
]

DEFAULT_MAX_MESSAGE = 65535

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_VERSION_RE = re.compile(r"[Ss][Ii][Pp]/[0-9]+\.[0-9]+")
# RFC 3261 §25.1 SIP-date = rfc1123-date (ABNF strings are case-insensitive).
_DATE_RE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),[ \t]+[0-9]{2}[ \t]+"
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[ \t]+[0-9]{4}[ \t]+"
    r"[0-9]{2}:[0-9]{2}:[0-9]{2}[ \t]+GMT",
    re.IGNORECASE,
)
# Call-ID is echoed into every answer and keys dialogs: refuse it empty or with
# whitespace or control characters (RFC 3261 §25.1 callid = word ["@" word]).
_BAD_CALL_ID_RE = re.compile(r"[\x00-\x20\x7f]")
_USUAL_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK",
     "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH"}
)
_NAME_OF = itemgetter(0)  # of a (name, value) header entry
_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")
_SINGLE = (
    "From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length",
    "Content-Type", "Expires", "Date",
)


class ParseError(RemoteProtocolError):
    """A message that could not be parsed or is invalid.

    :param message: the reason (short, printable, no input echoed).
    :param status: the status to answer a request with (400, 416, 505, or
        513 from the framer).
    :param partial: the message as far as it could be parsed (``None`` when
        not even the start line could be read). A server answers a request
        with ``status`` when ``partial`` has the headers needed.
    :param is_request: whether the bytes looked like a request (responses are
        never answered, only dropped).
    """

    def __init__(
        self,
        message: str,
        status: int = 400,
        partial: SipMessage | None = None,
        is_request: bool = True,
    ) -> None:
        super().__init__(message, status)
        self.partial = partial
        self.is_request = is_request


def _find_head_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """Find the empty line that ends the head.

    Lines may end in CRLF or, tolerated, a bare LF; so the head ends at the
    first ``LF CRLF`` or ``LF LF``.

    :returns: the end of the last header line (its line end excluded) and the
        start of the body, or ``(-1, -1)`` when there is no empty line.
    """
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        end, body = lf, lf + 2
    elif crlf >= 0:
        end, body = crlf, crlf + 3
    else:
        return -1, -1
    if end > 0 and data[end - 1] == 0x0D:  # the CR of the last header line
        end -= 1
    return end, body


def _digits_value(text: str, max_digits: int) -> int | None:
    """The value of an all-ASCII-digit string, or ``None`` when it is not one
    or has more than ``max_digits`` significant digits (so that :func:`int`
    never sees a huge string)."""
    if not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > max_digits:
        return None
    return int(digits)


def parse_message(data: bytes, *, stream: bool = False) -> SipRequest | SipResponse:
    """Parse one SIP message and validate it with :func:`validate_message`.

    :param data: one datagram, or one frame cut by :class:`StreamFramer`.
    :param stream: the bytes came from a stream framer, so Content-Length is
        mandatory (RFC 3261 §18.3).
    :raises ParseError: with the reason and the status to answer with.
    """
    msg = parse_unvalidated(data, stream=stream)
    validate_message(msg)
    return msg


def parse_unvalidated(data: bytes, *, stream: bool = False) -> SipRequest | SipResponse:
    """Parse start line, headers and body, checking only syntax and framing.

    CRLFs before the start line are skipped (RFC 3261 §7.5); lines may end in
    CRLF or LF; folded lines are joined with one space (RFC 3261 §7.3.1);
    header names are canonicalised and multi-valued headers split into one
    entry per value. In a datagram, octets after Content-Length are discarded
    and a missing Content-Length means "the rest" (RFC 3261 §18.3).

    :raises ParseError: for a malformed start line or header line, a bare CR,
        an empty element in a header list, or a bad, repeated or too large
        Content-Length. ``partial`` is set whenever the start line was read.
    """
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    end, body_start = _find_head_end(data)
    if end < 0:
        # No empty line (the RFC 5118 §4.10 archive copies): all head.
        head_bytes, rest = data.rstrip(b"\r\n"), b""
    else:
        head_bytes, rest = data[:end], data[body_start:]
    head = head_bytes.decode("utf-8", errors="surrogateescape")
    if "\r" in head:
        head = head.replace("\r\n", "\n")
        if "\r" in head:
            # A bare CR ends a line for some parsers and not for others: never
            # echo such a header into an answer.
            raise ParseError("bare CR in message head", is_request=head[:4].upper() != "SIP/")
    lines = head.split("\n")
    start = lines[0]
    error: str | None = None
    # The usual method and version are known to match their expressions.
    if start[:4].upper() == "SIP/":
        is_request = False
        version, _, after = start.partition(" ")
        code, _, reason = after.partition(" ")
        if version != "SIP/2.0" and not _VERSION_RE.fullmatch(version):
            raise ParseError("bad Status-Line", is_request=False)
        number = _digits_value(code, 3)
        if len(code) != 3 or number is None or not 100 <= number <= 699:
            raise ParseError("bad status code", is_request=False)
        status = number
    else:
        is_request = True
        parts = start.split(" ")
        if len(parts) == 3 and parts[0] and parts[1] and parts[2]:
            method, uri, version = parts
            if method not in _USUAL_METHODS and not _TOKEN_RE.fullmatch(method):
                error = "bad method in Request-Line"
            elif version != "SIP/2.0" and not _VERSION_RE.fullmatch(version):
                error = "bad SIP version in Request-Line"
        else:
            # Keep what can be read, so that the 400 still gets its headers.
            error = "malformed Request-Line"
            words = start.split()
            method = words[0] if words else ""
            uri = words[1] if len(words) > 1 else ""
            version = words[-1] if len(words) > 2 else "SIP/2.0"

    items = _usual_header_lines(lines)
    if items is None:
        items, line_error = _header_lines(lines)
        error = error or line_error
    if "," in head:  # else no value has a list to split
        entries: list[tuple[str, str]] = []
        for name, value in items:
            if name in MULTI_VALUED and "," in value:
                try:
                    values = split_header_values(value)
                except RemoteProtocolError as exc:
                    if error is None:
                        error = str(exc)
                    entries.append((name, value))
                    continue
                for one in values:
                    entries.append((name, one))
            else:
                entries.append((name, value))
    else:
        entries = items
    headers = Headers._from_canonical(entries)
    msg: SipRequest | SipResponse
    if is_request:
        msg = SipRequest(method, uri, headers, version=version)
    else:
        msg = SipResponse(status, reason, headers, version=version)
    if error is not None:
        raise ParseError(error, 400, msg, is_request)

    # The index of the first values, which the views and validate_message
    # read too: some name repeats only when it has fewer entries than there
    # are headers.
    first = headers.first_values()
    length_text = first.get("Content-Length")
    if (length_text is not None and len(first) < len(entries)
            and list(map(_NAME_OF, entries)).count("Content-Length") > 1):
        raise ParseError("more than one Content-Length header", 400, msg, is_request)
    if length_text is not None:
        length = _digits_value(length_text, 9)
        if length is None:
            raise ParseError("bad Content-Length", 400, msg, is_request)
        if length > len(rest):
            raise ParseError("Content-Length larger than message", 400, msg, is_request)
        # RFC 3261 §18.3: octets beyond Content-Length in a datagram are discarded.
        msg.body = rest[:length] if length < len(rest) else rest
    elif stream:
        raise ParseError("missing Content-Length on a stream", 400, msg, is_request)
    else:
        msg.body = rest
    return msg


class _UnusualLine(Exception):
    """A header line that :func:`_usual_header_lines` leaves to :func:`_header_lines`."""


def _other_name(name: str) -> str:
    """The canonical name of a header name not in WRITTEN_NAMES, when it is a
    token (an ``X-`` header, a name in another case).

    :raises _UnusualLine: otherwise (a fold, spaces before the colon, a
        malformed name): the slow path reads it and names the fault.
    """
    if _TOKEN_RE.fullmatch(name):
        return canonical_name(name)
    raise _UnusualLine


def _usual_header_lines(lines: list[str]) -> list[tuple[str, str]] | None:
    """The header lines (``lines[1:]``) as ``(name, value)`` pairs, when every
    one is ``name: value`` with a token name (no fold, no space before the
    colon); else ``None``, and :func:`_header_lines` reads them.

    The messages of a call look like this: read in two comprehensions, not a
    loop with a branch for each case of a line.
    """
    parts = [line.partition(":") for line in lines[1:]]
    written = WRITTEN_NAMES
    try:
        # A fold or a name followed by spaces is not a token: _UnusualLine.
        items = [
            (written.get(name) or _other_name(name), value.strip(" \t"))
            for name, colon, value in parts
            if colon
        ]
    except _UnusualLine:
        return None
    return items if len(items) == len(parts) else None  # a line without a colon


def _header_lines(lines: list[str]) -> tuple[list[tuple[str, str]], str | None]:
    """The header lines (``lines[1:]``) as ``(name, value)`` pairs, folds
    joined, and the first error found (the refused lines are left out).
    """
    items: list[tuple[str, str]] = []
    error: str | None = None
    name: str | None = None
    value = ""
    folded: list[str] | None = None  # the pieces of a folded header, once it is
    written = WRITTEN_NAMES
    for line in lines[1:]:
        first = line[:1]
        if first == " " or first == "\t":
            # RFC 3261 §7.3.1: a line starting with whitespace continues the
            # previous header; the fold counts as one SP.
            if name is None:
                if not items and error is None:
                    error = "continuation line before any header"
                continue  # also swallows the folds of a refused line
            more = line.strip(" \t")
            if more:
                if folded is None:
                    folded = [value] if value else []
                folded.append(more)
            continue
        if name is not None:
            items.append((name, value if folded is None else " ".join(folded)))
            folded = None
        text_name, colon, value = line.partition(":")
        name = written.get(text_name)  # a usual spelling: known to be a token
        if name is None:
            text_name = text_name.rstrip(" \t")
            name = written.get(text_name)
            if name is None:
                if not colon or not _TOKEN_RE.fullmatch(text_name):
                    if error is None:
                        error = "malformed header line"
                    continue  # name is None: the refused line's folds are swallowed
                name = canonical_name(text_name)
        if not colon:
            if error is None:
                error = "malformed header line"
            name = None
            continue
        value = value.strip(" \t")
    if name is not None:
        items.append((name, value if folded is None else " ".join(folded)))

    return items, error


def validate_message(msg: SipRequest | SipResponse) -> None:
    """Check what transactions and dialogs rely on.

    In order: the SIP version (505); Via, From, To, Call-ID and CSeq present,
    and single-valued headers present at most once; Call-ID not empty and
    free of whitespace and control characters; every Via, From, To,
    CSeq and Contact well formed; CSeq method equal to the request method;
    Max-Forwards (0-255), Expires (below 2**32) and Date (RFC 1123, GMT)
    well formed; then the Request-URI: well formed, without URI headers
    (RFC 3261 §19.1.1), and of a scheme we serve (sip, sips, tel) else 416.

    :raises ParseError: naming the first problem, with ``partial`` set to
        ``msg``; reasons about a URI or name-addr start with the header name
        (``From: unterminated quoted string``).
    """
    is_request = isinstance(msg, SipRequest)
    try:
        if msg.version != "SIP/2.0" and msg.version.upper() != "SIP/2.0":
            raise RemoteProtocolError("SIP version not supported", 505)
        headers = msg.headers
        first = headers.first_values()  # each name present, and its first value
        for name in _MANDATORY:
            if name not in first:
                raise RemoteProtocolError(f"missing {name} header")
        repeats = len(first) < len(headers)  # some name (a Via, a Route...) is there twice
        if repeats:  # which?
            names = list(map(_NAME_OF, headers._items))
            for name in _SINGLE:
                if names.count(name) > 1:
                    raise RemoteProtocolError(f"more than one {name} header")
        call_id = first["Call-ID"]
        if not call_id or _BAD_CALL_ID_RE.search(call_id):
            raise RemoteProtocolError("bad Call-ID")
        # Parse every Via, the top one first (its view is kept for the
        # transaction): when no name repeats, it is the only one.
        msg.top_via  # noqa: B018
        if repeats:
            msg.via  # noqa: B018
        # From and To are there once (checked above): their views parse them
        # and keep them for the many reads to come.
        name = "From"
        try:
            msg.from_  # noqa: B018
            name = "To"
            msg.to  # noqa: B018
            name = "Contact"
            msg.name_addrs("Contact")
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"{name}: {exc}") from None
        cseq = msg.cseq
        text = first.get("Max-Forwards")
        if text is not None:
            mf = _digits_value(text, 3)
            if mf is None or mf > 255:
                raise RemoteProtocolError("bad Max-Forwards")
        text = first.get("Expires")
        if text is not None:
            expires = _digits_value(text, 10)
            if expires is None or expires > 2**32 - 1:
                raise RemoteProtocolError("bad Expires")
        text = first.get("Date")
        if text is not None and not _DATE_RE.fullmatch(text):
            raise RemoteProtocolError("bad Date header")
        if isinstance(msg, SipRequest):
            if cseq.method != msg.method:
                raise RemoteProtocolError("CSeq method does not match Request-Line")
            try:
                uri = msg.uri
            except RemoteProtocolError as exc:
                raise RemoteProtocolError(f"Request-URI: {exc}") from None
            if isinstance(uri, SipUri) and uri.headers:
                raise RemoteProtocolError("headers not allowed in Request-URI")
            if isinstance(uri, AbsoluteUri):
                raise RemoteProtocolError("unsupported URI scheme", 416)
    except RemoteProtocolError as exc:
        raise ParseError(str(exc), exc.status, msg, is_request) from None


class StreamFramer:
    """Cut a stream of bytes into SIP messages by Content-Length.

    :meth:`feed` returns the complete messages found so far; a ``None`` in
    the list is a CRLF keep-alive ping (RFC 5626 §3.5.1), which the transport
    answers with a single CRLF. Lone CRLFs between messages are skipped
    (RFC 3261 §7.5). Input is bounded: a head longer than ``max_message``
    without its end, or a Content-Length that takes the message beyond it,
    raises :class:`ParseError` with status 513; a missing, repeated or bad
    Content-Length raises it with 400. After an error the framer stays
    broken: every later :meth:`feed` raises the same error, and the
    connection should be closed.

    Each byte is scanned for the end of the head once, however the stream is
    cut, so a slow trickle costs no more than one large chunk.

    :param max_message: the largest message accepted, head and body.
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known not to hold the end of the head
        self._need = 0  # size of the message at the front, once its head is read
        self._error: ParseError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | None]:
        """Add received bytes; return the messages (and pings) now complete.

        :raises ParseError: when the stream cannot be framed.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except ParseError as exc:
            self._error = exc
            raise

    def _feed(self, data: bytes) -> list[bytes | None]:
        buf = self._buf
        buf += data
        out: list[bytes | None] = []
        while buf:
            if self._need:
                if len(buf) < self._need:
                    break
                out.append(bytes(buf[: self._need]))
                del buf[: self._need]
                self._need = self._scanned = 0
                continue
            if buf[0] == 0x0D or buf[0] == 0x0A:
                if buf.startswith(b"\r\n\r\n"):
                    del buf[:4]
                    out.append(None)
                    continue
                if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                    break  # a ping may be arriving in pieces
                if buf.startswith(b"\r\n"):
                    del buf[:2]
                else:
                    del buf[:1]  # a stray CR or LF before a start line
                self._scanned = 0
                continue
            end, body_start = _find_head_end(buf, max(0, self._scanned - 2))
            if end < 0:
                if len(buf) > self.max_message:
                    raise ParseError("message head too large", 513)
                self._scanned = len(buf)
                break
            length = self._content_length(bytes(buf[:end]))
            total = body_start + length
            if total > self.max_message:
                raise ParseError("message too large", 513)
            self._need = total
        return out

    def _content_length(self, head: bytes) -> int:
        """The Content-Length of a head (full or compact name, any case,
        folded or not).

        :raises ParseError: when it is missing, repeated or not a number (400),
            or too large (513).
        """
        found: int | None = None
        lines = head.split(b"\n")
        for i in range(1, len(lines)):
            name, colon, value = lines[i].partition(b":")
            if not colon or name[:1] in (b" ", b"\t"):
                continue
            if name.rstrip(b" \t").lower() not in (b"content-length", b"l"):
                continue
            value = value.strip(b" \t\r")
            j = i + 1
            while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
                value = (value + b" " + lines[j].strip(b" \t\r")).strip(b" ")
                j += 1
            if found is not None:
                raise ParseError("more than one Content-Length header")
            if not value.isdigit():  # bytes.isdigit is ASCII only
                raise ParseError("bad Content-Length")
            digits = value.lstrip(b"0")
            if len(digits) > 9 or int(digits or b"0") > self.max_message:
                raise ParseError("message too large", 513)
            found = int(digits or b"0")
        if found is None:
            raise ParseError("missing Content-Length on a stream")
        return found
