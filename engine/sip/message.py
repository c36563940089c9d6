"""SIP requests and responses (RFC 3261 §7).

A message keeps its headers as an ordered list of ``(name, value)`` text
pairs with canonical names; multi-valued headers hold one entry per value.
Typed views (:attr:`SipMessage.via`, :attr:`SipMessage.from_`...) are parsed
from the text when asked for and cached by the text, so editing a header
never leaves a stale typed value behind.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

from engine import entropy
from engine.sip.errors import RemoteProtocolError
from engine.sip.headers import (
    _TOKEN_RE,
    KNOWN_NAMES as _KNOWN_EXACT,
    NAME_ADDR_MEMO,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    parse_cseq,
    parse_name_addr,
    parse_via,
)
from engine.sip.uri import Uri, parse_uri

__all__ = [
    "Headers",
    "SipMessage",
    "SipRequest",
    "SipResponse",
    "REASONS",
    "new_branch",
    "new_tag",
    "new_call_id",
]

BRANCH_MAGIC = "z9hG4bK"

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 421: "Extension Required", 423: "Interval Too Brief",
    429: "Too Many Requests",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete",
    485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}


def new_branch() -> str:
    """A fresh RFC 3261 branch id (magic cookie + 64 random bits)."""
    return BRANCH_MAGIC + entropy.token_hex(8)


def new_tag() -> str:
    """A fresh From/To tag (48 random bits)."""
    return entropy.token_hex(6)


def new_call_id() -> str:
    """A fresh Call-ID (96 random bits)."""
    return entropy.token_hex(12)


class Headers:
    """An ordered multi-map of header names to text values.

    Names are stored canonically (:func:`~engine.sip.headers.canonical_name`:
    compact forms expanded, known names in their registry spelling, unknown
    names verbatim); lookups are case-insensitive and accept compact names.
    Iteration yields ``(name, value)`` pairs in message order.

    :param items: initial ``(name, value)`` pairs; names are canonicalised.

    ``version`` counts the changes made through the methods (a message's
    typed views are kept while it stays the same); code that changes
    ``_items`` itself must call :meth:`_changed`.

    Lookups of a registry name go through an index of each name's first
    value, made on the first lookup and dropped by every change: a message
    is read dozens of times (its Call-ID, CSeq, Via, a Record-Route or a
    User-Agent that is not there) and changed seldom, and a scan of its
    headers costs several times a dict lookup. It holds one entry a name,
    so it is no larger than the headers.
    """

    __slots__ = ("_items", "version", "_first")

    def __init__(self, items: Iterable[tuple[str, str]] | None = None) -> None:
        # A registry spelling (the usual case) is its own canonical name:
        # found by one dict lookup, without calling canonical_name.
        exact = _KNOWN_EXACT.get
        self._items: list[tuple[str, str]] = (
            [(exact(k) or canonical_name(k), v) for k, v in items] if items is not None else []
        )
        self.version = 0
        self._first: dict[str, str] | None = None

    @classmethod
    def _from_canonical(cls, items: list[tuple[str, str]]) -> Headers:
        """Adopt ``items`` whose names are already canonical (parser use)."""
        headers = cls.__new__(cls)
        headers._items = items
        headers.version = 0
        headers._first = None
        return headers

    def _changed(self) -> None:
        """Note a change of ``_items``: a new version, the index dropped."""
        self.version += 1
        self._first = None

    def first_values(self) -> dict[str, str]:
        """Each canonical name present mapped to its first value (the index
        of the lookups; read it, never change it). An unknown name is there
        as written: compare it case-insensitively, as :meth:`get` does."""
        first = self._first
        if first is None:
            # Later entries overwrite earlier ones: reversed, the first wins.
            first = self._first = dict(reversed(self._items))
        return first

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def _indexes(self, canon: str) -> Iterator[int]:
        """Positions of the entries called ``canon`` (a canonical name), in order."""
        items = self._items
        if canon in _KNOWN_EXACT:
            for i in range(len(items)):
                if items[i][0] == canon:
                    yield i
        else:
            key = canon.lower()
            for i in range(len(items)):
                if items[i][0].lower() == key:
                    yield i

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        canon = _KNOWN_EXACT.get(name)  # a registry spelling: the common case, inlined
        if canon is None:
            canon = canonical_name(name)
            if canon not in _KNOWN_EXACT:
                key = canon.lower()
                for k, v in self._items:
                    if k.lower() == key:
                        return v
                return default
        first = self._first  # first_values(), without its call when made already
        if first is None:
            first = self.first_values()
        return first.get(canon, default)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order (one per list element)."""
        canon = _KNOWN_EXACT.get(name)
        if canon is None:
            canon = canonical_name(name)
            if canon not in _KNOWN_EXACT:
                key = canon.lower()
                return [v for k, v in self._items if k.lower() == key]
        first = self._first
        if first is None:
            first = self.first_values()
        value = first.get(canon)
        if value is None:
            return []
        if len(first) == len(self._items):  # every name once: no other value
            return [value]
        return [v for k, v in self._items if k == canon]

    def add(self, name: str, value: str) -> None:
        """Append a value after any existing ones."""
        self._items.append((_KNOWN_EXACT.get(name) or canonical_name(name), value))
        self._changed()

    def prepend(self, name: str, value: str) -> None:
        """Insert a value before the first one of the same name (or first)."""
        canon = _KNOWN_EXACT.get(name) or canonical_name(name)
        self._changed()
        for i in self._indexes(canon):
            self._items.insert(i, (canon, value))
            return
        self._items.insert(0, (canon, value))

    def set(self, name: str, value: str) -> None:
        """Replace all values of ``name`` with one, keeping its position."""
        canon = _KNOWN_EXACT.get(name) or canonical_name(name)
        self._changed()
        found = list(self._indexes(canon))
        if not found:
            self._items.append((canon, value))
            return
        self._items[found[0]] = (canon, value)
        for i in reversed(found[1:]):
            del self._items[i]

    def remove(self, name: str) -> None:
        """Remove every value of ``name``."""
        self._changed()
        for i in reversed(list(self._indexes(canonical_name(name)))):
            del self._items[i]

    def remove_first(self, name: str) -> None:
        """Remove the first value of ``name``, if any."""
        self._changed()
        for i in self._indexes(canonical_name(name)):
            del self._items[i]
            return

    def replace_first(self, name: str, value: str) -> None:
        """Put ``value`` in place of the first value of ``name``, as
        :meth:`remove_first` then :meth:`prepend` would: before the next value
        of ``name``, else first of all.

        A request's Via lines nearly always come first and together: then the
        first is replaced where it stands, without the two searches.
        """
        canon = _KNOWN_EXACT.get(name)
        items = self._items
        if canon is not None and items and items[0][0] == canon:
            following = 1  # where the next value is (1 when there is none)
            for i in range(1, len(items)):
                if items[i][0] == canon:
                    following = i
                    break
            if following == 1:
                items[0] = (canon, value)
                self._changed()
                return
        self.remove_first(name)
        self.prepend(name, value)

    def copy(self) -> Headers:
        """A copy that can be changed independently."""
        return Headers._from_canonical(list(self._items))

    def custom(self) -> dict[str, str]:
        """The ``X-`` headers, as a dict (the call object exposes these)."""
        if self.first_values().keys() <= _KNOWN_EXACT.keys():
            return {}  # registry names only, and none of them is an X- name
        return {k: v for k, v in self._items if k[:2] in _X_PREFIXES}


_T = TypeVar("_T")
_X_PREFIXES = frozenset({"X-", "x-"})
assert not any(name[:2] in _X_PREFIXES for name in _KNOWN_EXACT)


class SipMessage:
    """What requests and responses share: headers, body and typed views.

    Typed views are parsed on first access and cached by the header text, so
    editing a header never leaves a stale value behind. The cached objects
    are shared: change a copy, then write it back with :meth:`Headers.set`.

    The views a call reads most (top Via, From, To, Call-ID, CSeq: dozens of
    reads a call) are also kept with the headers object and its
    :attr:`Headers.version` they came from, and served without a lookup
    while both stay the same.
    """

    __slots__ = ("headers", "body", "_typed", "_v_top_via", "_v_from", "_v_to", "_v_call_id", "_v_cseq",
                 "__weakref__")

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self._typed: dict[tuple[object, str], object] = {}
        self._v_top_via: tuple[Headers, int, Via] | None = None
        self._v_from: tuple[Headers, int, NameAddr] | None = None
        self._v_to: tuple[Headers, int, NameAddr] | None = None
        self._v_call_id: tuple[Headers, int, str] | None = None
        self._v_cseq: tuple[Headers, int, CSeq] | None = None

    def _cached(self, parse: Callable[[str], _T], value: str) -> _T:
        key = (parse, value)
        hit = self._typed.get(key)
        if hit is None:
            hit = self._typed[key] = parse(value)
        return hit  # type: ignore[return-value]  # what parse returned (cast() would be a call each time)

    def remember(self, parse: Callable[[str], _T], value: str, parsed: _T) -> None:
        """Record ``parsed`` as what ``parse(value)`` gives, for the typed
        views (a header the caller rewrote from an object it holds)."""
        self._typed[(parse, value)] = parsed
        self._v_top_via = self._v_from = self._v_to = self._v_call_id = self._v_cseq = None

    def _one(self, name: str) -> str:
        """The first value of ``name``, a registry spelling (read from the
        index without :meth:`Headers.get`'s name lookup)."""
        value = self.headers.first_values().get(name)
        if value is None:
            raise RemoteProtocolError(f"missing {name} header")
        return value

    def _parsed_one(self, parse: Callable[[str], _T], name: str) -> _T:
        """``_cached(parse, _one(name))`` in one call (the kept views' miss)."""
        # _one(name), without its call and first_values' (a view's miss is
        # frequent: each kept view of each message).
        first = self.headers._first
        if first is None:
            first = self.headers.first_values()
        value = first.get(name)
        if value is None:
            raise RemoteProtocolError(f"missing {name} header")
        key = (parse, value)
        hit = self._typed.get(key)
        if hit is None:
            hit = self._typed[key] = parse(value)
        return hit  # type: ignore[return-value]  # as in _cached

    @property
    def via(self) -> list[Via]:
        """Every Via value, top first.

        :raises RemoteProtocolError: when one is malformed.
        """
        headers = self.headers
        vias = [self._cached(parse_via, v) for v in headers.get_all("Via")]
        if vias:  # the top one is what top_via would parse: kept for it
            self._v_top_via = (headers, headers.version, vias[0])
        return vias

    @property
    def top_via(self) -> Via:
        """The first Via value.

        :raises RemoteProtocolError: when missing or malformed.
        """
        # The same lines in each kept view: a shared helper would cost the
        # Python call these save.
        kept, headers = self._v_top_via, self.headers
        if kept is not None and kept[0] is headers and kept[1] == headers.version:
            return kept[2]
        value = self._parsed_one(parse_via, "Via")
        self._v_top_via = (headers, headers.version, value)
        return value

    @property
    def from_(self) -> NameAddr:
        """The From value (``from`` is a Python keyword)."""
        kept, headers = self._v_from, self.headers
        if kept is not None and kept[0] is headers and kept[1] == headers.version:
            return kept[2]
        value = self._parsed_one(parse_name_addr, "From")
        self._v_from = (headers, headers.version, value)
        return value

    @property
    def to(self) -> NameAddr:
        """The To value."""
        kept, headers = self._v_to, self.headers
        if kept is not None and kept[0] is headers and kept[1] == headers.version:
            return kept[2]
        value = self._parsed_one(parse_name_addr, "To")
        self._v_to = (headers, headers.version, value)
        return value

    @property
    def call_id(self) -> str:
        """The Call-ID text."""
        kept, headers = self._v_call_id, self.headers
        if kept is not None and kept[0] is headers and kept[1] == headers.version:
            return kept[2]
        value = self._one("Call-ID")
        self._v_call_id = (headers, headers.version, value)
        return value

    @property
    def cseq(self) -> CSeq:
        """The CSeq value."""
        kept, headers = self._v_cseq, self.headers
        if kept is not None and kept[0] is headers and kept[1] == headers.version:
            return kept[2]
        value = self._parsed_one(parse_cseq, "CSeq")
        self._v_cseq = (headers, headers.version, value)
        return value

    @property
    def contact(self) -> list[NameAddr]:
        """Every Contact value (one ``wildcard`` entry for ``Contact: *``)."""
        return [self._cached(parse_name_addr, v) for v in self.headers.get_all("Contact")]

    def name_addrs(self, name: str) -> list[NameAddr]:
        """Parse every value of a name-addr header (Route, Record-Route...)."""
        return [self._cached(parse_name_addr, v) for v in self.headers.get_all(name)]

    @property
    def content_type(self) -> str | None:
        """The media type of the body, lower-cased, without parameters."""
        value = self.headers.get("Content-Type")
        return value.split(";", 1)[0].strip(" \t").lower() if value else None

    def start_line(self) -> str:
        """The Request-Line or Status-Line, without CRLF."""
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialize with CRLF line ends.

        Content-Length is always written from the body: in the place of the
        first Content-Length header, or last when there was none.
        """
        length = f"Content-Length: {len(self.body)}"
        # One comprehension (no call a header); every Content-Length header
        # becomes ``length``, and only the first of them is kept.
        lines = [self.start_line(),
                 *[f"{name}: {value}" if name != "Content-Length" else length
                   for name, value in self.headers._items]]
        found = lines.count(length)
        if not found:
            lines.append(length)
        elif found > 1:
            first = lines.index(length)
            lines[first + 1:] = [line for line in lines[first + 1:] if line != length]
        lines.append("\r\n")
        head = "\r\n".join(lines)
        return head.encode("utf-8", errors="surrogateescape") + self.body

    __bytes__ = to_bytes


class SipRequest(SipMessage):
    """A request: method, Request-URI (text and parsed), headers, body."""

    __slots__ = ("method", "uri_text", "version", "_uri", "received_at", "origin")

    def __init__(
        self,
        method: str,
        uri: str | Uri,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri_text = str(uri)
        self.version = version
        self._uri: Uri | None = None if isinstance(uri, str) else uri
        #: ``time.monotonic()`` when the transport read it (``None``: made here).
        self.received_at: float | None = None
        #: Where the caller sent it from, as a front proxy the engine trusts
        #: reported it (``(transport, host, port)`` from the Via below the
        #: proxy's); ``None`` when it came straight from the caller, whose
        #: address is then the transport's.
        self.origin: tuple[str, str, int] | None = None

    @property
    def uri(self) -> Uri:
        """The Request-URI, parsed on first use.

        :raises RemoteProtocolError: when ``uri_text`` is malformed.
        """
        if self._uri is None:
            self._uri = parse_uri(self.uri_text)
        return self._uri

    @uri.setter
    def uri(self, value: Uri) -> None:
        self._uri = value
        self.uri_text = str(value)

    def start_line(self) -> str:
        """The Request-Line, without CRLF."""
        return f"{self.method} {self.uri_text} {self.version}"

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.uri_text}>"

    def create_response(
        self, status: int, reason: str | None = None, *, to_tag: str | None = None
    ) -> SipResponse:
        """Build a response (RFC 3261 §8.2.6).

        Copies every Via, the first From, To, Call-ID and CSeq (a request
        refused for carrying two of them still gets a well-formed answer), and
        Record-Route for 101-299; adds ``to_tag`` to To when given and the To
        has no tag yet (never on 100). Works on the ``partial`` message of a
        :class:`~engine.sip.parser.ParseError`: nothing is parsed but To.

        :param reason: the reason phrase; the standard one when ``None``.
        """
        headers: list[tuple[str, str]] = []
        seen: set[str] = set()
        tagged_to: tuple[str, NameAddr] | None = None
        for name, value in self.headers:
            if name == "Via":
                headers.append((name, value))
            elif name in _ECHOED_ONCE:
                if name in seen:
                    continue
                seen.add(name)
                if name == "To" and to_tag and status != 100:
                    with_tag = _to_with_tag(value, to_tag)
                    if with_tag is not None:
                        value, to = with_tag
                        if to is not None:
                            tagged_to = (value, to)
                headers.append((name, value))
            elif name == "Record-Route" and 100 < status < 300:
                headers.append((name, value))
        if status == 100:
            timestamp = self.headers.get("Timestamp")
            if timestamp is not None:
                headers.append(("Timestamp", timestamp))
        response = SipResponse(
            status, reason or REASONS.get(status, "Unknown"), Headers._from_canonical(headers)
        )
        # The response echoes these texts: what they parsed to here (the Via,
        # From, CSeq the transaction and dialog read) needs no parsing there.
        typed = response._typed = self._typed.copy()
        if tagged_to is not None:
            typed[(parse_name_addr, tagged_to[0])] = tagged_to[1]
        return response


_ECHOED_ONCE = frozenset({"From", "To", "Call-ID", "CSeq"})


def _to_with_tag(to_value: str, tag: str) -> tuple[str, NameAddr | None] | None:
    """A To value with ``tag`` added, and what it parses to when that is
    known without parsing it; ``None`` when the To carries a tag already
    (parsed; text search if malformed).
    """
    try:
        to = parse_name_addr(to_value)
    except RemoteProtocolError:
        if ";tag=" in to_value.lower().replace(" ", "").replace("\t", ""):
            return None
        return f"{to_value};tag={tag}", None
    if to.tag is not None:
        return None
    text = f"{to_value};tag={tag}"
    if to.wildcard or not _TOKEN_RE.fullmatch(tag):
        return text, None
    # A token tag after the parameters (or the addr-spec, whose ``;`` starts
    # the header parameters): parse_name_addr(text) gives the same display
    # name and URI, the same parameters and then the tag. Remembered by the
    # memo too, for the ACK and the requests that echo it.
    tagged = NameAddr(to.uri, to.display_name, {**to.params, "tag": tag})
    NAME_ADDR_MEMO.put(text, tagged)
    return text, tagged


class SipResponse(SipMessage):
    """A response: status code, reason phrase, headers, body."""

    __slots__ = ("status", "reason", "version")

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason
        self.version = version

    def start_line(self) -> str:
        """The Status-Line, without CRLF."""
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason}>"
