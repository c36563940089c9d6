"""Tests for :mod:`engine.sip.uri`: SIP, SIPS, tel and opaque URIs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sip.errors import RemoteProtocolError
from engine.sip.uri import (
    AbsoluteUri,
    SipUri,
    TelUri,
    _parse_sip,
    _parse_sip_slowly,
    format_host,
    parse_uri,
)


def sip(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


def test_full_sip_uri() -> None:
    """Check every part of a SIP URI is split out (RFC 3261 §19.1.1)."""
    uri = sip("sip:alice:secretword@atlanta.com:5061;transport=TCP;lr?subject=project%20x&priority=urgent")
    assert uri == SipUri(
        host="atlanta.com",
        user="alice",
        password="secretword",
        port=5061,
        params={"transport": "TCP", "lr": None},
        headers={"subject": "project x", "priority": "urgent"},
        scheme="sip",
    )
    assert uri.transport == "TCP"
    assert uri.host_port == "atlanta.com:5061"


def test_sips_scheme_is_lowercased() -> None:
    """Check the scheme is case-insensitive and stored lower-case."""
    uri = sip("SIPS:bob@biloxi.example.com")
    assert uri.scheme == "sips"
    assert str(uri) == "sips:bob@biloxi.example.com"


def test_host_only_and_default_transport() -> None:
    """Check a URI without user part, and UDP as the default transport."""
    uri = sip("sip:registrar.example.com")
    assert (uri.user, uri.password, uri.port, uri.params) == (None, None, None, {})
    assert uri.transport == "UDP"


def test_user_escapes_are_decoded() -> None:
    """Check %XX in the user part is decoded (RFC 4475 §3.1.1.3)."""
    assert sip("sip:%75se%72@example.com").user == "user"
    assert sip("sip:sips%3Auser%40example.com@example.net").user == "sips:user@example.com"
    assert sip("sip:I%20have%20spaces@example.net").user == "I have spaces"


def test_escaped_null_in_user() -> None:
    """Check %00 decodes to a NUL character (RFC 4475 §3.1.1.4)."""
    assert sip("sip:null-%00-null@example.com").user == "null-\x00-null"
    assert str(sip("sip:%00%00@host5.example.com")) == "sip:%00%00@host5.example.com"


def test_password_escapes_are_decoded() -> None:
    """Check %XX in the password is decoded and re-escaped."""
    uri = sip("sip:alice:p%40ss%3A1@example.com")
    assert uri.password == "p@ss:1"
    assert str(uri) == "sip:alice:p%40ss%3A1@example.com"


def test_param_escapes_are_decoded() -> None:
    """Check escaped parameter names and values (RFC 4475 §3.1.1.3 Contact)."""
    uri = sip("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    assert uri.user == "caller"
    assert uri.params == {"lr": None, "name": "value%41"}
    assert str(uri) == "sip:caller@host5.example.net;lr;name=value%2541"


def test_header_escapes_are_decoded() -> None:
    """Check escaped URI headers (RFC 4475 §3.3.14), and re-escaping on output."""
    uri = sip("sip:user@example.com?Route=%3Csip:sip.example.com%3E")
    assert uri.headers == {"Route": "<sip:sip.example.com>"}
    assert str(uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_header_with_empty_value() -> None:
    """Check ``?name=`` is a header with an empty value."""
    assert sip("sip:a@b?body=").headers == {"body": ""}


def test_semicolon_in_user_part() -> None:
    """Check a user part holding ``;par=`` is not taken for parameters
    (RFC 4475 §3.1.1.9)."""
    uri = sip("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u@example.net"
    assert uri.host == "example.com"
    assert uri.params == {}
    assert str(uri) == "sip:user;par=u%40example.net@example.com"


def test_unusual_user_and_password_characters() -> None:
    """Check the RFC 4475 §3.1.1.2 Request-URI with every allowed character."""
    uri = sip(
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    )
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"


def test_params_names_lowercased_values_kept() -> None:
    """Check parameter names are lower-cased and values keep their case."""
    assert sip("sip:h;Transport=TLS;MADDR=Example.COM").params == {
        "transport": "TLS",
        "maddr": "Example.COM",
    }


def test_ipv6_without_port() -> None:
    """Check an IPv6 reference is stored without brackets (RFC 5118 §4.1)."""
    uri = sip("sip:[2001:db8::10]")
    assert (uri.host, uri.port) == ("2001:db8::10", None)
    assert str(uri) == "sip:[2001:db8::10]"


def test_ipv6_with_port() -> None:
    """Check the port after the bracket (RFC 5118 §4.4)."""
    uri = sip("sip:[2001:db8::10]:5070")
    assert (uri.host, uri.port) == ("2001:db8::10", 5070)
    assert uri.host_port == "[2001:db8::10]:5070"


def test_ipv6_port_ambiguous() -> None:
    """Check ``[2001:db8::10:5070]`` is all address, no port (RFC 5118 §4.3)."""
    uri = sip("sip:[2001:db8::10:5070]")
    assert (uri.host, uri.port) == ("2001:db8::10:5070", None)


def test_ipv6_with_user_params_and_headers() -> None:
    """Check a ``;`` inside the brackets would not start parameters."""
    uri = sip("sip:user@[2001:db8::1]:5060;transport=tcp?h=v")
    assert (uri.user, uri.host, uri.port) == ("user", "2001:db8::1", 5060)
    assert uri.params == {"transport": "tcp"}
    assert uri.headers == {"h": "v"}


def test_ipv6_three_colons_tolerated() -> None:
    """Check the RFC 3261 ABNF bug form (RFC 5118 §4.10) and the right one."""
    assert sip("sip:user@[2001:db8:::192.0.2.1]").host == "2001:db8:::192.0.2.1"
    assert sip("sip:user@[2001:db8::192.0.2.1]").host == "2001:db8::192.0.2.1"


def test_ipv4_mapped_ipv6() -> None:
    """Check an IPv4-mapped IPv6 address (RFC 5118 §4.9)."""
    assert sip("sip:ted@[::ffff:192.0.2.2]").host == "::ffff:192.0.2.2"


def test_ipv6_without_brackets_refused() -> None:
    """Check the RFC 5118 §4.2 Request-URI is refused with a clear reason."""
    with pytest.raises(RemoteProtocolError, match="^IPv6 address without brackets in URI$"):
        parse_uri("sip:2001:db8::10")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sip:host:65536", "bad port in URI"),
        ("sip:host:0x50", "bad port in URI"),
        ("sip:host:", "bad port in URI"),
        ("sip:host:123456", "bad port in URI"),
        ("sip:host:5\u00b2", "bad port in URI"),  # a Unicode digit int() refuses
        ("sip:host:\u0665\u0660", "bad port in URI"),  # Arabic-Indic digits int() accepts
        ("sip:-host.example.com", "bad host in URI"),
        ("sip:host-.example.com", "bad host in URI"),
        ("sip:a..b", "bad host in URI"),
        ("sip:10.10.10.256", "bad host in URI"),
        ("sip:1.2.3", "bad host in URI"),
        ("sip:user@", "bad host in URI"),
        ("sip:[2001:db8::1]x", "bad host in URI"),
        ("sip:[2001:db8::1", "bad IPv6 reference in URI"),
        ("sip:[2001:db8::g]", "bad IPv6 reference in URI"),
        ("sip:[1:2:3]", "bad IPv6 reference in URI"),
        ("sip:[]", "bad IPv6 reference in URI"),
        ("sip:us{er@host", "bad user part in URI"),
        ("sip:@host", "bad user part in URI"),
        ("sip:us%4ger@host", "bad user part in URI"),
        ("sip:user:pa@ss@host", "bad host in URI"),
        ("sip:user:p#ss@host", "bad password in URI"),
        ("sip:host;", "bad parameter in URI"),
        ("sip:host;=x", "bad parameter in URI"),
        ("sip:host;a=", "bad parameter in URI"),
        ("sip:host;a=b=c", "bad parameter in URI"),
        ("sip:host?noequals", "bad header in URI"),
        ("sip:host?=v", "bad header in URI"),
        ("sip:host?a=b&", "bad header in URI"),
        ("sip:host?a=<b>", "bad character in URI"),
        ("sip:user@host name", "bad character in URI"),
        ("sip:user@host\t", "bad character in URI"),
        ("sip:user@ho\x00st", "bad character in URI"),
        ('sip:"user"@host', "bad character in URI"),
        ("<sip:user@host>", "bad character in URI"),
        ("sip:", "bad URI"),
        ("sip", "bad URI"),
        ("", "bad URI"),
        ("1sip:user@host", "bad URI"),
        (":user@host", "bad URI"),
        ("tel:", "bad URI"),
        ("tel:xyz", "bad number in tel URI"),
        ("tel:+", "bad number in tel URI"),
        ("tel:+-", "bad number in tel URI"),
        ("tel:--", "bad number in tel URI"),
        ("tel:+1 212", "bad character in URI"),
        ("tel:+1212;", "bad parameter in tel URI"),
    ],
)
def test_bad_uri_reasons(text: str, reason: str) -> None:
    """Check malformed URIs are refused with the exact reason phrase."""
    with pytest.raises(RemoteProtocolError) as info:
        parse_uri(text)
    assert str(info.value) == reason
    assert info.value.status == 400


def test_tel_global_number() -> None:
    """Check a global tel number keeps its visual separators (RFC 3966)."""
    uri = parse_uri("tel:+1-212-555-0100")
    assert isinstance(uri, TelUri)
    assert (uri.number, uri.is_global, uri.user, uri.params) == ("+1-212-555-0100", True, "+1-212-555-0100", {})
    assert str(uri) == "tel:+1-212-555-0100"


def test_tel_local_number_with_phone_context() -> None:
    """Check a local number and its phone-context (RFC 3966 §5.1.5)."""
    uri = parse_uri("tel:7042;Phone-Context=example.com;ext=22")
    assert isinstance(uri, TelUri)
    assert uri.number == "7042"
    assert not uri.is_global
    assert uri.phone_context == "example.com"
    assert uri.params == {"phone-context": "example.com", "ext": "22"}
    assert str(uri) == "tel:7042;phone-context=example.com;ext=22"


def test_tel_phone_context_global_digits_and_escapes() -> None:
    """Check a phone-context of global digits and an escaped value round trip."""
    uri = parse_uri("tel:*23#;phone-context=+1-212;x=a%20b")
    assert isinstance(uri, TelUri)
    assert uri.phone_context == "+1-212"
    assert uri.params["x"] == "a b"
    assert str(uri) == "tel:*23#;phone-context=+1-212;x=a%20b"
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(
    "text",
    [
        "isbn:2983792873",
        "http://www.example.com",
        "name:John_Smith",
        "nobodyKnowsThisScheme:totallyopaquecontent",
        "soap.beep://192.0.2.103:3002",
        "urn:service:sos",
        "cid:my%20header3@example.org",
    ],
)
def test_unknown_schemes_kept_verbatim(text: str) -> None:
    """Check other schemes are kept as written (RFC 4475 §3.3.2, §3.3.4)."""
    uri = parse_uri(text)
    assert isinstance(uri, AbsoluteUri)
    assert str(uri) == text
    assert uri.scheme == text.partition(":")[0].lower()
    assert uri.user is None


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "sips:alice:pw@atlanta.com:5061;transport=tls;lr?subject=a%20b&x=",
        "sip:user@[2001:db8::10]:5070;maddr=[2001:db8::1]",
        "sip:+1-212-555-0100@gw.example.com;user=phone",
        "sip:%00@h",
        "sip:host;lr",
        "sip:a_b.c-d.example.:5060",
        "sip:255.255.255.255",
        "tel:+44-(0)20-7946-0000;isub=1234",
    ],
)
def test_str_round_trip(text: str) -> None:
    """Check str() writes a URI that parses back equal, and the same text
    when the input used no needless escapes."""
    uri = parse_uri(text)
    assert str(uri) == text
    assert parse_uri(str(uri)) == uri


def test_needless_escapes_are_dropped_on_output() -> None:
    """Check ``%61lice`` and ``alice`` give the same text (RFC 3261 §19.1.4)."""
    assert str(parse_uri("sip:%61lice@h")) == "sip:alice@h"


def test_copy_replaces_fields() -> None:
    """Check copy() replaces some fields and does not share the dicts."""
    uri = sip("sip:alice@h;lr")
    other = uri.copy(port=5070)
    other.params["x"] = "1"
    assert uri.params == {"lr": None}
    assert str(other) == "sip:alice@h:5070;lr;x=1"


def test_format_host() -> None:
    """Check IPv6 hosts get brackets and others do not."""
    assert format_host("2001:db8::1") == "[2001:db8::1]"
    assert format_host("192.0.2.1") == "192.0.2.1"
    assert format_host("example.com") == "example.com"


def test_long_inputs_are_linear() -> None:
    """Check huge hosts, users and parameters parse or fail without
    pathological backtracking (PROTOS sends 64 KiB fields)."""
    big = "a." * 40000 + "com"
    assert sip("sip:" + big).host == big
    for text in (
        "sip:" + "a" * 100000 + "-",
        "sip:" + "a-" * 50000,
        "sip:" + "1." * 50000,
        "sip:" + "a:" * 50000,
        "sip:x:" + "b" * 100000,
        "sip:h;" + "p=v;" * 30000,
        "tel:+" + "1" * 100000 + "x",
        "sip:[" + "1:" * 50000,
    ):
        with pytest.raises(RemoteProtocolError):
            parse_uri(text)


_URI_ALPHABET = "ab9:@;=?&%[].-_+AF0 *x"


@given(st.text(alphabet=_URI_ALPHABET, max_size=40))
@settings(max_examples=800, deadline=None)
def test_fast_path_agrees_with_detailed_path(rest: str) -> None:
    """Check the one-regex fast path of sip URI parsing accepts exactly what
    the step-by-step path accepts, with the same result."""
    try:
        slow: SipUri | str = _parse_sip_slowly("sip", rest)
    except RemoteProtocolError as exc:
        slow = str(exc)
    try:
        fast: SipUri | str = _parse_sip("sip", rest)
    except RemoteProtocolError as exc:
        fast = str(exc)
    assert fast == slow


@given(st.text(max_size=60) | st.text(alphabet=_URI_ALPHABET + "<>\"tel", max_size=60).map(lambda t: "sip:" + t))
@settings(max_examples=800, deadline=None)
def test_parse_uri_only_raises_remote_protocol_error(text: str) -> None:
    """Check arbitrary text either parses, and then round trips through
    str(), or raises RemoteProtocolError with a short printable reason."""
    try:
        uri = parse_uri(text)
    except RemoteProtocolError as exc:
        reason = str(exc)
        assert reason.isascii() and reason.isprintable() and len(reason) < 60
        return
    assert parse_uri(str(uri)) == uri


def test_parse_memo_is_bounded_and_keeps_errors_out() -> None:
    """Check repeated URIs and name-addrs are parsed once (the same object
    back), a flood of distinct ones keeps the memo at its bound, and a
    malformed text is refused every time, never remembered."""
    from engine.sip import headers, uri as uri_module
    from engine.sip.errors import RemoteProtocolError
    from engine.sip.headers import parse_name_addr
    from engine.sip.uri import parse_uri

    assert parse_uri("sip:memo@example.com") is parse_uri("sip:memo@example.com")
    one = parse_name_addr("<sip:memo@example.com>;tag=1")
    assert parse_name_addr("<sip:memo@example.com>;tag=1") is one and one.tag == "1"
    for i in range(3 * uri_module.URI_MEMO.size):
        parse_uri(f"sip:u{i}@example.com")
        parse_name_addr(f"<sip:u{i}@example.com>;tag={i}")
    assert len(uri_module.URI_MEMO) <= uri_module.URI_MEMO.size
    assert len(headers.NAME_ADDR_MEMO) <= headers.NAME_ADDR_MEMO.size
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            parse_uri("sip:bad user@example.com")
        with pytest.raises(RemoteProtocolError):
            parse_name_addr("<sip:x@example.com")
    assert "sip:bad user@example.com" not in uri_module.URI_MEMO
    from engine.sip.headers import parse_cseq

    assert parse_cseq("7 INVITE") is parse_cseq("7 INVITE")
    for _ in range(2):
        with pytest.raises(RemoteProtocolError, match="bad CSeq"):
            parse_cseq("7 IN VITE")
    assert "7 IN VITE" not in headers.CSEQ_MEMO


def test_memo_forgets_the_oldest_first() -> None:
    """Check a full memo drops its oldest entry for a new one, keeps the
    others, replaces a known key without dropping anything, and refuses a
    size below one."""
    from engine.sip.memo import Memo

    memo: Memo[str, int] = Memo(2)
    memo.put("a", 1)
    memo.put("b", 2)
    memo.put("b", 3)
    assert len(memo) == 2 and memo.get("a") == 1 and memo.get("b") == 3
    memo.put("c", 4)
    assert "a" not in memo and memo.get("b") == 3 and memo.get("c") == 4 and memo.get("a") is None
    with pytest.raises(ValueError):
        Memo(0)
