"""SIP, SIPS and tel URIs (RFC 3261 §19.1 and §25.1, RFC 3966).

:func:`parse_uri` turns text into a :class:`SipUri`, :class:`TelUri` or, for
any other scheme, an :class:`AbsoluteUri` that is kept verbatim (RFC 4475
§3.3.4: unknown schemes in header fields must be accepted). Escapes are
decoded on parse (``SipUri.user`` is the unescaped user part) and applied again
on serialization, so ``sip:%61lice@h`` and ``sip:alice@h`` come out the same,
as RFC 3261 §19.1.4 says they compare.

Error reasons are short fixed phrases (they become the reason phrase of a
``400``): they never echo the input.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

from engine.sip.errors import RemoteProtocolError
from engine.sip.memo import Memo

__all__ = ["SipUri", "TelUri", "AbsoluteUri", "Uri", "parse_uri", "format_host"]

_ESC = r"%[0-9A-Fa-f]{2}"
# RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved )
_USER_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|{_ESC})+")
_PASSWORD_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|{_ESC})*")
# host = hostname / IPv4address (RFC 3261 §25.1). The top label of a hostname
# starts with a letter, so digits-and-dots can only be an IPv4 address, whose
# octets must also be at most 255. Underscores are not in the ABNF but real
# devices use them.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[0-9]{1,2}|0[0-9]{2})"
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?"
_TOPLABEL = r"[A-Za-z_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?"
_HOST = rf"{_OCTET}(?:\.{_OCTET}){{3}}|(?:{_LABEL}\.)*{_TOPLABEL}\.?"
_HOSTNAME_RE = re.compile(_HOST)
# IPv6reference content, checked further with :mod:`ipaddress`.
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+")
_PARAM_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|{_ESC})+")
_HEADER_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|{_ESC})*")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# RFC 3966 §3 phonedigit(-hex) and visual separators; "p" and "w" (RFC 2806
# pause and wait) are tolerated. A separate search requires one real digit.
_TEL_GLOBAL_RE = re.compile(r"\+[0-9\-.()pwPW]+")
_TEL_LOCAL_RE = re.compile(r"[0-9A-Fa-f*#\-.()pwPW]+")
_TEL_DIGIT_RE = re.compile(r"[0-9A-Fa-f*#]")
# Whitespace, controls and the delimiters that end a URI in a header field.
_BAD_URI_CHAR_RE = re.compile(r'[\x00-\x20\x7f<>"]')

# The common shape of a sip URI after the scheme, checked in one pass:
# [user[:password]@]hostname[:port][;params][?headers]. Whatever it does not
# match (IPv6 references, errors) takes the detailed path, which names the fault.
_SIP_FAST_RE = re.compile(
    rf"(?:((?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|{_ESC})+)(?::((?:[A-Za-z0-9\-_.!~*'()&=+$,]|{_ESC})*))?@)?"
    rf"({_HOST})(?::([0-9]{{1,5}}))?"
    rf"((?:;(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|{_ESC})+(?:=(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|{_ESC})+)?)*)"
    rf"(?:\?((?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|{_ESC})+=(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|{_ESC})*"
    rf"(?:&(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|{_ESC})+=(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|{_ESC})*)*))?"
)

_USER_SAFE = "-_.!~*'()&=+$,;?/"
_PASSWORD_SAFE = "-_.!~*'()&=+$,"
_PARAM_SAFE = "-_.!~*'()[]/:&+$"
_HEADER_SAFE = "-_.!~*'()[]/?:+$"
# What :func:`urllib.parse.quote` never escapes, whatever ``safe`` says.
_ALWAYS_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
# Each ``safe`` set with those: a text made only of these characters is its
# own escaped form, found with one ``rstrip`` instead of a call to ``quote``.
_PLAIN = {safe: _ALWAYS_SAFE + safe for safe in (_USER_SAFE, _PASSWORD_SAFE, _PARAM_SAFE, _HEADER_SAFE)}


def _unescape(text: str) -> str:
    """Decode ``%XX`` escapes; bytes that are not UTF-8 survive as surrogates."""
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("utf-8", errors="surrogateescape")


def _escape(text: str, safe: str) -> str:
    if not text.rstrip(_PLAIN[safe]):  # nothing to escape: the usual case
        return text
    return quote(text.encode("utf-8", errors="surrogateescape"), safe=safe)


def _is_digits(text: str) -> bool:
    """Whether ``text`` is one or more ASCII digits (``str.isdigit`` takes any
    Unicode digit, which ``int`` may then refuse)."""
    return text.isascii() and text.isdigit()


def format_host(host: str) -> str:
    """Return ``host`` as it is written in a URI or Via: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


def _check_ipv6(host: str, what: str) -> None:
    """Refuse an IPv6 reference that is not an IPv6 address.

    RFC 5118 §4.10: the RFC 3261 ABNF allowed a third colon before an embedded
    IPv4 address (``2001:db8:::192.0.2.1``), so that form is tolerated.
    """
    if _IPV6_RE.fullmatch(host):
        for candidate in (host, host.replace(":::", "::", 1)):
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            return
    raise RemoteProtocolError(f"bad IPv6 reference in {what}")


def _parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    """Parse ``host[:port]``; IPv6 references are returned without brackets.

    :param what: where the host was found (``URI``, ``Via``), for the reason.
    :raises RemoteProtocolError: ``bad host in <what>``, ``bad port in
        <what>``, ``bad IPv6 reference in <what>`` or, for an IPv6 address
        written without brackets (RFC 5118 §4.2), ``IPv6 address without
        brackets in <what>``.
    """
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RemoteProtocolError(f"bad IPv6 reference in {what}")
        host, rest = text[1:end], text[end + 1 :]
        _check_ipv6(host, what)
        if rest and rest[0] != ":":
            raise RemoteProtocolError(f"bad host in {what}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, after = text.partition(":")
        if sep and ":" in after and _IPV6_RE.fullmatch(text):
            raise RemoteProtocolError(f"IPv6 address without brackets in {what}")
        port_text = after if sep else None
        if not _HOSTNAME_RE.fullmatch(host):
            raise RemoteProtocolError(f"bad host in {what}")
    port: int | None = None
    if port_text is not None:
        if not _is_digits(port_text) or len(port_text) > 5 or int(port_text) > 65535:
            raise RemoteProtocolError(f"bad port in {what}")
        port = int(port_text)
    return host, port


def _parse_uri_params(text: str, what: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not _PARAM_RE.fullmatch(name) or (eq and not _PARAM_RE.fullmatch(value)):
            raise RemoteProtocolError(f"bad parameter in {what}")
        params[_unescape(name).lower()] = _unescape(value) if eq else None
    return params


def _format_uri_params(params: dict[str, str | None]) -> str:
    out = []
    for name, value in params.items():
        out += [";", _escape(name, _PARAM_SAFE)]
        if value is not None:
            out += ["=", _escape(value, _PARAM_SAFE)]
    return "".join(out)


@dataclass
class SipUri:
    """A ``sip:`` or ``sips:`` URI.

    :param host: host name or address; IPv6 without brackets.
    :param user: the unescaped user part, or ``None``.
    :param password: the unescaped password, or ``None``.
    :param port: the port, or ``None`` when absent.
    :param params: URI parameters, names lower-cased, value ``None`` for a
        flag such as ``;lr``.
    :param headers: URI headers (``?name=value&...``), unescaped.
    :param scheme: ``sip`` or ``sips``.
    """

    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    scheme: str = "sip"

    @property
    def transport(self) -> str:
        """The ``transport`` parameter, upper-cased (UDP when absent)."""
        return (self.params.get("transport") or "udp").upper()

    @property
    def host_port(self) -> str:
        """``host[:port]`` as written in a URI (IPv6 in brackets)."""
        host = format_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        # Dialogs write their URIs into every request: the common parts are
        # formatted here without a call each (host_port, format_host).
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        if self.port is not None:
            host = f"{host}:{self.port}"
        user = self.user
        if user is not None:
            user = _escape(user, _USER_SAFE)
            if self.password is not None:
                user = f"{user}:{_escape(self.password, _PASSWORD_SAFE)}"
            host = f"{user}@{host}"
        text = f"{self.scheme}:{host}"
        if self.params:
            text += _format_uri_params(self.params)
        if self.headers:
            text += "?" + "&".join(
                f"{_escape(k, _HEADER_SAFE)}={_escape(v, _HEADER_SAFE)}" for k, v in self.headers.items()
            )
        return text

    def copy(self, **changes: object) -> SipUri:
        """Return a copy with some fields replaced."""
        fields: dict[str, object] = {
            "host": self.host,
            "user": self.user,
            "password": self.password,
            "port": self.port,
            "params": dict(self.params),
            "headers": dict(self.headers),
            "scheme": self.scheme,
        }
        fields.update(changes)
        return SipUri(**fields)  # type: ignore[arg-type]  # field types checked by the dataclass caller


@dataclass
class TelUri:
    """A ``tel:`` URI (RFC 3966): a number and its parameters.

    Local numbers without a ``phone-context`` parameter are accepted, although
    RFC 3966 §5.1.5 requires one: devices send them.

    :param number: the number as written, visual separators included.
    :param params: parameters (``phone-context``, ``ext``, ``isub``...),
        names lower-cased, values unescaped.
    """

    number: str
    params: dict[str, str | None] = field(default_factory=dict)
    scheme: str = "tel"

    @property
    def user(self) -> str:
        """The number, so that routing can treat tel and sip alike."""
        return self.number

    @property
    def is_global(self) -> bool:
        """Whether the number is global (``+`` and a country code)."""
        return self.number.startswith("+")

    @property
    def phone_context(self) -> str | None:
        """The ``phone-context`` of a local number, or ``None``."""
        return self.params.get("phone-context")

    def __str__(self) -> str:
        return f"tel:{self.number}{_format_uri_params(self.params)}"


@dataclass
class AbsoluteUri:
    """A URI of a scheme we do not interpret, kept verbatim."""

    raw: str

    @property
    def scheme(self) -> str:
        """The scheme, lower-cased."""
        return self.raw.partition(":")[0].lower()

    @property
    def user(self) -> None:
        """Always ``None``: the URI is opaque."""
        return None

    def __str__(self) -> str:
        return self.raw


Uri = SipUri | TelUri | AbsoluteUri


#: URIs parsed lately, by their text (a trunk's Request-URIs and contacts
#: repeat): the objects are shared, so change a copy, never one in place.
URI_MEMO: Memo[str, Uri] = Memo(512)


def parse_uri(text: str) -> Uri:
    """Parse a URI (shared with other callers of the same text: do not
    change the result in place).

    :raises RemoteProtocolError: when a sip, sips or tel URI is malformed or
        any URI has no scheme, is empty, or contains whitespace, a control
        character or one of ``<>"`` (``bad character in URI``).
    """
    return URI_MEMO.parsed(text, _parse_uri)


def _parse_uri(text: str) -> Uri:
    if _BAD_URI_CHAR_RE.search(text):
        raise RemoteProtocolError("bad character in URI")
    scheme, colon, rest = text.partition(":")
    if not colon or not rest or not _SCHEME_RE.fullmatch(scheme):
        raise RemoteProtocolError("bad URI")
    scheme = scheme.lower()
    if scheme == "sip" or scheme == "sips":
        return _parse_sip(scheme, rest)
    if scheme == "tel":
        return _parse_tel(rest)
    return AbsoluteUri(text)


def _parse_tel(rest: str) -> TelUri:
    number, semi, params = rest.partition(";")
    number_re = _TEL_GLOBAL_RE if number.startswith("+") else _TEL_LOCAL_RE
    if not number_re.fullmatch(number) or not _TEL_DIGIT_RE.search(number):
        raise RemoteProtocolError("bad number in tel URI")
    return TelUri(number, _parse_uri_params(params, "tel URI") if semi else {})


def _parse_sip(scheme: str, rest: str) -> SipUri:
    m = _SIP_FAST_RE.fullmatch(rest)
    if m is not None:
        user_text, pass_text, host, port_text, param_text, header_text = m.groups()
        port = int(port_text) if port_text is not None else None
        if port is None or port <= 65535:
            headers: dict[str, str] = {}
            if header_text is not None:
                for item in header_text.split("&"):
                    name, _, value = item.partition("=")
                    headers[_unescape(name)] = _unescape(value)
            return SipUri(
                host,
                None if user_text is None else _unescape(user_text),
                None if pass_text is None else _unescape(pass_text),
                port,
                _parse_uri_params(param_text[1:], "URI") if param_text else {},
                headers,
                scheme,
            )
    return _parse_sip_slowly(scheme, rest)


def _parse_sip_slowly(scheme: str, rest: str) -> SipUri:
    """Parse a sip URI step by step, naming the first fault found."""
    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user_text, sep, pass_text = userinfo.partition(":")
        if not _USER_RE.fullmatch(user_text):
            raise RemoteProtocolError("bad user part in URI")
        if sep and not _PASSWORD_RE.fullmatch(pass_text):
            raise RemoteProtocolError("bad password in URI")
        user = _unescape(user_text)
        password = _unescape(pass_text) if sep else None
    rest, qmark, header_text = rest.partition("?")
    if rest.startswith("["):
        close = rest.find("]")
        split = rest.find(";", close if close >= 0 else 0)
    else:
        split = rest.find(";")
    hostport, param_text = (rest, "") if split < 0 else (rest[:split], rest[split + 1 :])
    host, port = _parse_hostport(hostport, "URI")
    params = _parse_uri_params(param_text, "URI") if split >= 0 else {}
    headers: dict[str, str] = {}
    if qmark:
        for item in header_text.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq or not _HEADER_RE.fullmatch(name) or not _HEADER_RE.fullmatch(value):
                raise RemoteProtocolError("bad header in URI")
            headers[_unescape(name)] = _unescape(value)
    return SipUri(host, user, password, port, params, headers, scheme)
