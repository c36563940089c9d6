"""Tests for :mod:`engine.sip.parser` and :mod:`engine.sip.message`.

Parser fixtures are files: our own torture cases in ``tests/unit/data/sip``
(see its README) and the public corpora in ``shared/corpora`` beside the
checkout (RFC 4475, RFC 5118, PROTOS c07-sip, pjsip fuzz seeds), which are
read where they are and never copied (their README asks so; some are GPL).
Missing corpora fail the run (see ``tests/corpora.py``); ``CALLBRIDGE_CORPORA``
points elsewhere.
"""

from __future__ import annotations

import csv
import os
import re
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sip.errors import RemoteProtocolError
from engine.sip.headers import _parse_name_addr, parse_name_addr
from engine.sip.message import Headers, SipRequest, SipResponse
from engine.sip.parser import (
    DEFAULT_MAX_MESSAGE,
    ParseError,
    StreamFramer,
    parse_message,
    parse_unvalidated,
    validate_message,
)
from engine.sip.uri import AbsoluteUri, SipUri, TelUri, parse_uri

from corpora import corpora_dir

DATA = Path(__file__).parent / "data" / "sip"
CORPORA = corpora_dir()

Message = SipRequest | SipResponse


def corpus(*parts: str) -> Path:
    """A path in the shared corpora; a missing file fails the test."""
    path = CORPORA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"corpus file missing: {path}", pytrace=False)
    return path


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def tsv_params(path: Path, key: str) -> list[object]:
    """One pytest param per row of an index (a missing index fails collection)."""
    if not path.exists():
        pytest.fail(f"corpus index missing: {path}", pytrace=False)
    return [pytest.param(row, id=row[key]) for row in read_tsv(path)]


def assert_safe_reason(reason: str) -> None:
    """A reason phrase must be short printable ASCII: it goes on the wire."""
    assert reason and reason.isascii() and reason.isprintable() and len(reason) < 80, reason


def expected_headers(msg: Message) -> list[tuple[str, str]]:
    """The headers ``msg.to_bytes()`` writes: Content-Length from the body,
    in place of the first one, or last."""
    out: list[tuple[str, str]] = []
    length = str(len(msg.body))
    for name, value in msg.headers:
        if name == "Content-Length":
            if length:
                out.append((name, length))
                length = ""
        else:
            out.append((name, value))
    if length:
        out.append(("Content-Length", length))
    return out


def assert_round_trip(msg: Message) -> None:
    """Check parse -> to_bytes -> parse keeps start line, headers and body."""
    again = parse_message(msg.to_bytes())
    assert type(again) is type(msg)
    assert again.start_line() == msg.start_line()
    assert list(again.headers) == expected_headers(msg)
    assert again.body == msg.body
    assert again.to_bytes() == msg.to_bytes()


_MANDATORY_LINE_RE = re.compile(rb"(?im)^(via|v|from|f|to|t|call-id|i|cseq)[ \t]*:")
_MANDATORY_NAMES = {
    b"via": "Via", b"v": "Via", b"from": "From", b"f": "From", b"to": "To", b"t": "To",
    b"call-id": "Call-ID", b"i": "Call-ID", b"cseq": "CSeq",
}


def assert_answerable(exc: ParseError, data: bytes) -> None:
    """Check a refused request can still be answered: ``partial`` is a request
    holding every Via, From, To, Call-ID and CSeq the bytes had, and the
    answer built from it copies them and serializes."""
    assert exc.is_request
    partial = exc.partial
    assert isinstance(partial, SipRequest)
    present = {_MANDATORY_NAMES[m.group(1).lower()] for m in _MANDATORY_LINE_RE.finditer(data)}
    for name in present:
        assert partial.headers.get(name) is not None, name
    response = partial.create_response(exc.status, str(exc))
    assert (response.status, response.reason) == (exc.status, str(exc))
    for name in present:
        assert response.headers.get(name) == partial.headers.get(name), name
    assert response.headers.get_all("Via") == partial.headers.get_all("Via")
    assert response.to_bytes().startswith(b"SIP/2.0 %d %s\r\n" % (exc.status, str(exc).encode()))


# -- RFC 4475 ---------------------------------------------------------------------------

RFC4475 = CORPORA / "rfc4475"

# The exact reason for every message we refuse.
RFC4475_REASONS = {
    "badinv01.dat": "empty element in header list",
    "clerr.dat": "Content-Length larger than message",
    "ncl.dat": "bad Content-Length",
    "scalar02.dat": "CSeq number too large",
    "scalarlg.dat": "CSeq number too large",
    "quotbal.dat": "To: unterminated quoted string",
    "ltgtruri.dat": "Request-URI: bad character in URI",
    "lwsruri.dat": "malformed Request-Line",
    "lwsstart.dat": "malformed Request-Line",
    "trws.dat": "malformed Request-Line",
    "escruri.dat": "headers not allowed in Request-URI",
    "baddate.dat": "bad Date header",
    "regbadct.dat": "Contact: URI with '?', ',' or spaces must be enclosed in <>",
    "badaspec.dat": "To: bad character in URI",
    "baddn.dat": "From: display name has characters that need quoting",
    "badvers.dat": "SIP version not supported",
    "mismatch01.dat": "CSeq method does not match Request-Line",
    "mismatch02.dat": "CSeq method does not match Request-Line",
    "bigcode.dat": "bad status code",
    "insuf.dat": "missing From header",
    "unkscm.dat": "unsupported URI scheme",
    "novelsc.dat": "unsupported URI scheme",
    "multi01.dat": "more than one From header",
    "mcl01.dat": "more than one Content-Length header",
    "test.dat": "malformed Request-Line",
}


def expectation_4475(row: dict[str, str]) -> tuple[str, int | None]:
    """What the parser must do with one RFC 4475 message, from index.tsv:
    ``("parse", None)``, ``("reject", status)`` or ``("drop", None)``.

    Statuses the parser produces (400, 416, 505) are its business; others
    named in the index (405, 415, 420...) belong to the application.
    """
    handling = row["expected_handling"]
    if "drop response" in handling:
        return "drop", None
    codes = re.findall(r"\b(400|416|505)\b", handling)
    if codes:
        return "reject", int(codes[0])
    if row["verdict"] == "invalid":  # test.dat: not an RFC case, but malformed
        return "reject", 400
    return "parse", None


@pytest.mark.parametrize("row", tsv_params(RFC4475 / "index.tsv", "filename"))
def test_rfc4475(row: dict[str, str]) -> None:
    """Check each RFC 4475 message gets the handling its index names: valid
    ones parse and round trip; refused requests raise ParseError with the
    index's status, the exact reason and a ``partial`` usable for the
    answer; refused responses are marked as responses, to be dropped."""
    data = (RFC4475 / row["filename"]).read_bytes()
    expect, status = expectation_4475(row)
    if expect == "parse":
        assert row["filename"] not in RFC4475_REASONS
        assert_round_trip(parse_message(data))
        return
    with pytest.raises(ParseError) as info:
        parse_message(data)
    exc = info.value
    assert str(exc) == RFC4475_REASONS[row["filename"]]
    assert_safe_reason(str(exc))
    if expect == "drop":
        assert not exc.is_request
    else:
        assert exc.status == status
        assert_answerable(exc, data)


def load_4475(name: str) -> Message:
    return parse_message(corpus("rfc4475", name).read_bytes())


def test_rfc4475_wsinv_values() -> None:
    """Check the values of RFC 4475 §3.1.1.1 (folding, odd whitespace,
    compact forms): three Vias, two from one folded ``v:`` line, escaped
    display name, Max-Forwards text ``0068``."""
    msg = load_4475("wsinv.dat")
    assert isinstance(msg, SipRequest)
    assert [(v.transport, v.host, v.branch) for v in msg.via] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.to.tag == "1918181833n"
    assert msg.to.display_name is None
    assert msg.headers.get("Max-Forwards") == "0068"
    assert msg.cseq.number == 9 and msg.cseq.method == "INVITE"
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert msg.headers.get("Subject") == ""
    (contact,) = msg.contact
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    (route,) = msg.name_addrs("Route")
    assert isinstance(route.uri, SipUri)
    assert route.uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    assert isinstance(msg.uri, SipUri) and msg.uri.params == {"unknownparam": None}
    assert len(msg.body) == 150


def test_rfc4475_intmeth_values() -> None:
    """Check RFC 4475 §3.1.1.2: unknown method of token characters, escaped
    controls in a quoted display name, unquoted token display name, quoted
    UTF-8 parameter value."""
    msg = load_4475("intmeth.dat")
    assert isinstance(msg, SipRequest)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.cseq.method == msg.method
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.from_.params["fromparam''~+*_!.-%"] == '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"'
    assert isinstance(msg.uri, SipUri) and msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"


def test_rfc4475_esc01_user_unescaped() -> None:
    """Check escapes in Request-URI, To, From and Contact (RFC 4475 §3.1.1.3)."""
    msg = load_4475("esc01.dat")
    assert isinstance(msg, SipRequest) and isinstance(msg.uri, SipUri)
    assert (msg.uri.user, msg.uri.host) == ("sips:user@example.com", "example.net")
    assert isinstance(msg.to.uri, SipUri) and msg.to.uri.user == "user"
    assert isinstance(msg.from_.uri, SipUri) and msg.from_.uri.user == "I have spaces"
    (contact,) = msg.contact
    assert isinstance(contact.uri, SipUri)
    assert contact.uri.user == "caller"
    assert contact.uri.params == {"lr": None, "name": "value%41"}


def test_rfc4475_escnull_null_bytes() -> None:
    """Check %00 in user parts decodes to NUL (RFC 4475 §3.1.1.4)."""
    msg = load_4475("escnull.dat")
    assert isinstance(msg.to.uri, SipUri) and msg.to.uri.user == "null-\x00-null"
    users = [c.uri.user for c in msg.contact]
    assert users == ["\x00", "\x00\x00"]


def test_rfc4475_esc02_percent_not_escape() -> None:
    """Check RE%47IST%45R is an unknown method, not REGISTER, and
    ``C%6Fntact`` an unknown header (RFC 4475 §3.1.1.5)."""
    msg = load_4475("esc02.dat")
    assert isinstance(msg, SipRequest)
    assert msg.method == "RE%47IST%45R"
    assert msg.to.display_name == "%Z%45"
    assert len(msg.contact) == 2
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_rfc4475_lwsdisp_display_name() -> None:
    """Check a display name directly followed by ``<`` (RFC 4475 §3.1.1.6)."""
    msg = load_4475("lwsdisp.dat")
    assert msg.from_.display_name == "caller"
    assert msg.from_.tag == "323"


def test_rfc4475_longreq_values() -> None:
    """Check long values and 34 Vias in any case and spacing (RFC 4475 §3.1.1.7)."""
    msg = load_4475("longreq.dat")
    hosts = [v.host for v in msg.via]
    assert hosts == [f"sip{n}.example.com" for n in range(33, 0, -1)] + ["host.example.com"]
    assert msg.via[-1].branch is not None and msg.via[-1].branch.endswith("longbranchvalue")
    assert msg.to.display_name is not None and msg.to.display_name.startswith("I have a user name of extreme")
    assert msg.from_.tag is not None and len(msg.from_.tag) > 100


def test_rfc4475_dblreq_trailing_request_ignored() -> None:
    """Check octets after Content-Length 0 in a datagram are ignored, so the
    second request is not seen (RFC 4475 §3.1.1.8)."""
    msg = load_4475("dblreq.dat")
    assert isinstance(msg, SipRequest)
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert msg.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def test_rfc4475_semiuri_user_part() -> None:
    """Check a Request-URI user part holding ``;par=`` (RFC 4475 §3.1.1.9)."""
    msg = load_4475("semiuri.dat")
    assert isinstance(msg, SipRequest) and isinstance(msg.uri, SipUri)
    assert (msg.uri.user, msg.uri.host, msg.uri.params) == ("user;par=u@example.net", "example.com", {})
    assert msg.headers.get_all("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed",
        "multipart/signed", "message/sip", "message/sipfrag",
    ]


def test_rfc4475_transports() -> None:
    """Check known and unknown Via transports (RFC 4475 §3.1.1.10)."""
    msg = load_4475("transports.dat")
    assert [v.transport for v in msg.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_rfc4475_mpart01_body() -> None:
    """Check a binary multipart body is kept byte for byte (RFC 4475 §3.1.1.11)."""
    msg = load_4475("mpart01.dat")
    assert len(msg.body) == 553
    assert msg.content_type == "multipart/mixed"
    assert msg.body.startswith(b"--7a9cbec02ceef655\r\n") and msg.body.endswith(b"--7a9cbec02ceef655--\r\n")


def test_rfc4475_unreason_reason_phrase() -> None:
    """Check a UTF-8 reason phrase (RFC 4475 §3.1.1.12)."""
    msg = load_4475("unreason.dat")
    assert isinstance(msg, SipResponse)
    assert msg.status == 200
    assert msg.reason == (
        "= 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e\u0441\u0442\u043e "
        "\u0434\u0435\u0432\u044f\u0442\u044c - \u043f\u0440\u043e\u0441\u0442\u043e\u0435"
    )


def test_rfc4475_noreason_empty_reason() -> None:
    """Check an empty reason phrase (RFC 4475 §3.1.1.13)."""
    msg = load_4475("noreason.dat")
    assert isinstance(msg, SipResponse)
    assert (msg.status, msg.reason) == (100, "")


def test_rfc4475_application_layer_values() -> None:
    """Check values the layers above rely on in RFC 4475 §3.2-3.4."""
    assert load_4475("badbranch.dat").top_via.branch == "z9hG4bK"
    unksm2 = load_4475("unksm2.dat")
    assert isinstance(unksm2.to.uri, AbsoluteUri) and str(unksm2.to.uri) == "isbn:2983792873"
    assert isinstance(unksm2.from_.uri, AbsoluteUri)
    assert isinstance(unksm2.contact[0].uri, AbsoluteUri)
    assert load_4475("zeromf.dat").headers.get("Max-Forwards") == "0"
    bcast = load_4475("bcast.dat")
    assert [v.host for v in bcast.via] == ["192.0.2.198", "255.255.255.255"]
    cparam01 = load_4475("cparam01.dat").contact[0]
    assert isinstance(cparam01.uri, SipUri) and cparam01.uri.params == {}
    assert cparam01.params == {"unknownparam": None}
    cparam02 = load_4475("cparam02.dat").contact[0]
    assert isinstance(cparam02.uri, SipUri) and cparam02.uri.params == {"unknownparam": None}
    regescrt = load_4475("regescrt.dat").contact[0]
    assert isinstance(regescrt.uri, SipUri) and regescrt.uri.headers == {"Route": "<sip:sip.example.com>"}
    assert load_4475("bext01.dat").headers.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert load_4475("regaut01.dat").headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"
    inv2543 = load_4475("inv2543.dat")
    assert inv2543.top_via.branch is None
    assert inv2543.body.startswith(b"v=0\r\n") and "Content-Length" not in inv2543.headers


def test_rfc4475_partial_for_bad_request_line() -> None:
    """Check a request refused for its Request-Line still yields a request
    with what could be read (RFC 4475 §3.1.2.9), so the 400 can be sent."""
    with pytest.raises(ParseError) as info:
        load_4475("lwsstart.dat")
    partial = info.value.partial
    assert isinstance(partial, SipRequest)
    assert (partial.method, partial.uri_text) == ("INVITE", "sip:user@example.com")
    assert partial.headers.get("CSeq") == "1893884 INVITE"


def test_rfc4475_multi01_answer_has_one_of_each() -> None:
    """Check the 400 to a request with two From, To, Call-ID and CSeq copies
    only the first of each (RFC 4475 §3.3.8)."""
    with pytest.raises(ParseError) as info:
        load_4475("multi01.dat")
    partial = info.value.partial
    assert isinstance(partial, SipRequest)
    response = partial.create_response(400)
    for name in ("From", "To", "Call-ID", "CSeq"):
        assert response.headers.get_all(name) == partial.headers.get_all(name)[:1]


# -- RFC 5118 --------------------------------------------------------------------------

RFC5118 = CORPORA / "rfc5118"
# Shipped with a Content-Length that matches neither the LF nor the CRLF body
# (see /work/shared/corpora/PROVENANCE.md).
RFC5118_WRONG_LENGTH = {"ipv6-in-sdp", "mult-ip-in-sdp", "ipv4-mapped-ipv6"}


def load_5118(name: str) -> bytes:
    """Read an RFC 5118 message; for the three archive files whose
    Content-Length is wrong, set it to the real length of the (LF) body."""
    data = corpus("rfc5118", name).read_bytes()
    if name in RFC5118_WRONG_LENGTH:
        head, sep, body = data.partition(b"\n\n")
        assert sep
        head = re.sub(rb"(?im)^Content-Length: *[0-9]+$", b"Content-Length: %d" % len(body), head)
        data = head + sep + body
    return data


@pytest.mark.parametrize("row", tsv_params(RFC5118 / "index.tsv", "filename"))
def test_rfc5118(row: dict[str, str]) -> None:
    """Check every RFC 5118 IPv6 message parses and round trips, except
    ipv6-bad (§4.2), refused with 400 and an answerable partial.

    ipv6-in-sdp, mult-ip-in-sdp and ipv4-mapped-ipv6 ship with a wrong
    Content-Length and LF line ends: the Content-Length is fixed up to the
    real body length before parsing (the LF line ends are left alone)."""
    data = load_5118(row["filename"])
    if row["verdict"] == "invalid":
        with pytest.raises(ParseError) as info:
            parse_message(data)
        assert str(info.value) == "Request-URI: IPv6 address without brackets in URI"
        assert info.value.status == 400
        assert_answerable(info.value, data)
        return
    assert_round_trip(parse_message(data))


def test_rfc5118_as_shipped_lengths_are_refused() -> None:
    """Check the archive copies with a Content-Length beyond the datagram are
    refused as they are (which is why the test above fixes them)."""
    for name in ("ipv6-in-sdp", "mult-ip-in-sdp"):
        with pytest.raises(ParseError, match="^Content-Length larger than message$"):
            parse_message(corpus("rfc5118", name).read_bytes())


def test_rfc5118_values() -> None:
    """Check the IPv6 values RFC 5118 is about."""
    good = parse_message(load_5118("ipv6-good"))
    assert isinstance(good, SipRequest) and isinstance(good.uri, SipUri)
    assert (good.uri.host, good.uri.port) == ("2001:db8::10", None)
    assert good.top_via.host == "2001:db8::9:1"
    assert isinstance(good.contact[0].uri, SipUri) and good.contact[0].uri.host == "2001:db8::1"
    ambiguous = parse_message(load_5118("port-ambiguous"))
    assert isinstance(ambiguous, SipRequest) and isinstance(ambiguous.uri, SipUri)
    assert (ambiguous.uri.host, ambiguous.uri.port) == ("2001:db8::10:5070", None)
    unambiguous = parse_message(load_5118("port-unambiguous"))
    assert isinstance(unambiguous, SipRequest) and isinstance(unambiguous.uri, SipUri)
    assert (unambiguous.uri.host, unambiguous.uri.port) == ("2001:db8::10", 5070)
    for name in ("via-received-param-with-delim", "via-received-param-no-delim"):
        assert parse_message(load_5118(name)).top_via.params["received"] == "2001:db8::9:255"
    mixed = parse_message(load_5118("mult-ip-in-header"))
    assert [(v.host, v.port) for v in mixed.via] == [
        ("2001:db8::9:1", 6050), ("192.0.2.1", None), ("2001:db8::9:255", None),
    ]
    mapped = parse_message(load_5118("ipv4-mapped-ipv6"))
    assert mapped.top_via.sent_by == ("::ffff:192.0.2.10", 19823)
    assert b"c=IN IP6 ::ffff:192.0.2.2\n" in mapped.body
    three = parse_message(load_5118("ipv6-bug-abnf-3-colons"))
    assert isinstance(three, SipRequest) and isinstance(three.uri, SipUri)
    assert three.uri.host == "2001:db8:::192.0.2.1"


# -- our own torture fixtures ------------------------------------------------------------


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_fixture_index_lists_every_file() -> None:
    """Check index.tsv and the README describe exactly the fixture files."""
    files = {p.name for p in DATA.glob("*.sip")}
    assert {row["file"] for row in read_tsv(DATA / "index.tsv")} == files
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert all(f"| {name} |" in readme for name in files)


@pytest.mark.parametrize("row", tsv_params(DATA / "index.tsv", "file"))
def test_fixture(row: dict[str, str]) -> None:
    """Check each fixture gets the handling and exact reason its index row
    names, and that accepted ones round trip."""
    data = fixture(row["file"])
    if row["expect"] == "parse":
        assert_round_trip(parse_message(data))
        return
    with pytest.raises(ParseError) as info:
        parse_message(data)
    exc = info.value
    assert (str(exc), exc.status) == (row["reason"], int(row["status"]))
    assert_safe_reason(str(exc))
    if row["expect"] == "drop":
        assert not exc.is_request
    elif row["expect"] == "ignore":
        assert exc.is_request and exc.partial is None
    else:
        assert row["expect"] == "reject"
        assert_answerable(exc, data)


SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\nm=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def test_fixture_folding() -> None:
    """Check folded lines join with one space wherever the fold is."""
    msg = parse_message(fixture("fold-everywhere.sip"))
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert msg.headers.get("Via") == "SIP/2.0/UDP pc33.example.com:5060 ;branch=z9hG4bK776asdhds"
    assert msg.headers.get("Max-Forwards") == "70"
    assert msg.to.display_name == "Bob"
    assert msg.from_.tag == "1928301774"
    assert (msg.cseq.number, msg.cseq.method) == (314159, "INVITE")
    assert msg.headers.get("Subject") == "I know you're there, pick up the phone and talk to me!"
    assert msg.body == SDP


def test_fixture_compact_forms() -> None:
    """Check every compact name lands under its full name."""
    msg = parse_message(fixture("compact-forms.sip"))
    names = [name for name, _ in msg.headers]
    assert names == [
        "Via", "Max-Forwards", "To", "From", "Call-ID", "CSeq", "Contact", "Content-Type",
        "Content-Encoding", "Subject", "Supported", "Supported", "Event", "Refer-To",
        "Referred-By", "Allow-Events", "Allow-Events", "Session-Expires", "Accept-Contact",
        "Reject-Contact", "Request-Disposition", "Identity", "Identity-Info", "Content-Length",
    ]
    assert msg.headers.get_all("k") == ["100rel", "timer"]
    assert msg.call_id == "compact.1@pc33.example.com"
    assert msg.content_type == "application/sdp"
    assert msg.body == SDP


def test_fixture_case_insensitive_names() -> None:
    """Check names in any case are canonicalised, unknown ones kept."""
    msg = parse_message(fixture("case-insensitive-names.sip"))
    assert [name for name, _ in msg.headers] == [
        "Via", "Max-Forwards", "To", "From", "Call-ID", "CSeq", "Contact",
        "x-CUSTOM-header", "Accept", "Content-Length",
    ]
    assert msg.headers.custom() == {"x-CUSTOM-header": "kept as written"}
    assert msg.headers.get("X-Custom-Header") == "kept as written"


def test_fixture_multi_valued_one_line_equals_several_lines() -> None:
    """Check lists in one line and in several lines give the same entries."""
    one = parse_message(fixture("multi-one-line.sip"))
    several = parse_message(fixture("multi-several-lines.sip"))
    assert list(one.headers) == list(several.headers)
    assert [(v.host, v.port, v.params) for v in one.via] == [
        ("proxy2.example.net", None, {"branch": "z9hG4bKp2"}),
        ("proxy1.example.com", 5061, {"branch": "z9hG4bKp1", "received": "192.0.2.5"}),
        ("pc33.example.com", None, {"branch": "z9hG4bK776asdhds", "rport": "5062"}),
    ]
    assert [c.display_name for c in one.contact] == ["Alice, at home", None]
    assert [c.params["q"] for c in one.contact] == ["0.7", "0.3"]
    assert one.headers.get_all("Allow") == ["INVITE", "ACK", "CANCEL", "OPTIONS", "BYE"]
    assert one.headers.get_all("Supported") == ["100rel", "timer", "replaces"]
    assert [str(r.uri) for r in one.name_addrs("Record-Route")] == [
        "sip:proxy2.example.net;lr", "sip:proxy1.example.com;lr;transport=tcp",
    ]


def test_fixture_quoted_display_names() -> None:
    """Check escaped quotes, backslashes, commas and ``<>`` in display names,
    and a Contact list split only outside quotes and brackets."""
    msg = parse_message(fixture("quoted-display-names.sip"))
    assert msg.to.display_name == 'Watson, Thomas "Tom"'
    assert msg.from_.display_name == "C:\\Users\\alice <admin>, root"
    contacts = msg.contact
    assert [c.display_name for c in contacts] == ["a,b", "<sip:fake@x>", "c"]
    assert [str(c.uri) for c in contacts] == ["sip:a@h1.example.com", "sip:b@h2.example.com", "sip:c@h3.example.com"]
    assert contacts[1].params == {"x": '"1,2"'}
    assert msg.headers.get_all("Reply-To") == ['"Bell, Alexander" <sip:a.g.bell@example.com>']
    assert msg.body == b'Hello, "Bob".\r\n'


def test_fixture_content_length_framing() -> None:
    """Check Content-Length, not the empty line, ends the body; extra octets
    in a datagram are dropped; without Content-Length a datagram's body is
    the rest, but a stream frame is refused."""
    assert parse_message(fixture("content-length-body-crlf.sip")).body == b"Signal=5\r\nDuration=160\r\n\r\n\r\n"
    assert parse_message(fixture("content-length-trailing-octets.sip")).body == b""
    data = fixture("no-content-length-datagram.sip")
    assert parse_message(data).body == b"the rest of the datagram is the body\r\n"
    with pytest.raises(ParseError, match="^missing Content-Length on a stream$") as info:
        parse_message(data, stream=True)
    assert_answerable(info.value, data)


def test_fixture_lf_and_leading_crlf() -> None:
    """Check bare-LF line ends (folding included) and leading CRLFs."""
    lf = parse_message(fixture("lf-line-ends.sip"))
    assert lf.headers.get("Subject") == "folded over LF"
    assert lf.cseq.number == 6
    leading = parse_message(fixture("leading-crlf.sip"))
    assert isinstance(leading, SipRequest) and leading.method == "OPTIONS"


def test_fixture_tel_uris() -> None:
    """Check tel URIs in the Request-URI, To and From."""
    msg = parse_message(fixture("tel-uris.sip"))
    assert isinstance(msg, SipRequest) and isinstance(msg.uri, TelUri)
    assert msg.uri.number == "+1-212-555-0100"
    assert isinstance(msg.from_.uri, TelUri)
    assert (msg.from_.uri.number, msg.from_.uri.phone_context) == ("7042", "example.com")


def test_fixture_ipv6_vias() -> None:
    """Check rport with and without a value and a bracketed received."""
    msg = parse_message(fixture("ipv6-via-rport-received.sip"))
    first, second = msg.via
    assert (first.host, first.port) == ("2001:db8::1", 5070)
    assert first.params == {"rport": "5071", "received": "2001:db8::9", "branch": "z9hG4bKv6"}
    assert (second.transport, second.host, second.params["rport"]) == ("TCP", "2001:db8::2", None)
    assert isinstance(msg.to.uri, SipUri) and msg.to.uri.host_port == "[2001:db8::10]:5080"


def test_fixture_transaction_and_application_values() -> None:
    """Check an odd branch with ttl and maddr, Contact ``*`` and an RFC 2543
    request."""
    via = parse_message(fixture("txn-branch-odd-token.sip")).top_via
    assert via.branch == "z9hG4bK-.!%66*_+`'~"
    assert (via.params["ttl"], via.params["maddr"]) == ("16", "192.0.2.200")
    star = parse_message(fixture("app-contact-star.sip"))
    assert star.contact[0].wildcard and star.headers.get("Expires") == "0"
    old = parse_message(fixture("compat-rfc2543-no-branch.sip"))
    assert old.top_via.branch is None and old.from_.tag is None
    assert old.body == SDP


# -- message API -------------------------------------------------------------------------

INVITE = (
    b"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-12345-1-0\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=12345SIPpTag001\r\n"
    b"To: service <sip:service@127.0.0.1:5060>\r\n"
    b"Call-ID: 1-12345@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.1:5061\r\n"
    b"Max-Forwards: 70\r\n"
    b"Subject: Performance Test\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 129\r\n"
    b"\r\n"
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def test_sipp_invite() -> None:
    """Check a sipp uac INVITE parses into the expected typed values."""
    msg = parse_message(INVITE)
    assert isinstance(msg, SipRequest)
    assert (msg.method, msg.uri_text, msg.version) == ("INVITE", "sip:service@127.0.0.1:5060", "SIP/2.0")
    assert msg.from_.tag == "12345SIPpTag001" and msg.to.tag is None
    assert msg.call_id == "1-12345@127.0.0.1"
    assert str(msg.contact[0].uri) == "sip:sipp@127.0.0.1:5061"
    assert len(msg.body) == 129
    assert_round_trip(msg)


def test_typed_views_follow_header_edits() -> None:
    """Check a typed view is re-parsed after the header text changes, and a
    cached view of one type is never returned for another."""
    msg = parse_message(INVITE)
    assert msg.top_via.port == 5061
    msg.headers.set("Via", "SIP/2.0/TCP 192.0.2.9:5070;branch=z9hG4bKnew")
    assert (msg.top_via.transport, msg.top_via.port) == ("TCP", 5070)
    with pytest.raises(RemoteProtocolError):
        msg.name_addrs("Via")  # a Via is not a name-addr, cache or not
    msg.headers.remove("From")
    with pytest.raises(RemoteProtocolError, match="^missing From header$"):
        msg.from_  # noqa: B018
    # via keeps its first for top_via: the same object, and dropped by an edit.
    vias = msg.via
    assert msg.top_via is vias[0]
    msg.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKtop")
    assert msg.top_via.host == "192.0.2.7"
    msg.headers.remove("Via")
    assert msg.via == []
    with pytest.raises(RemoteProtocolError, match="^missing Via header$"):
        msg.top_via  # noqa: B018


@pytest.mark.parametrize(("vias", "reason"), [
    (b"Via: SIP/2.0/UDP 10.0.0.256;branch=z9hG4bKa\r\n", "bad host in Via"),
    (b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\nVia: SIP/2.0/UDP ;branch=b\r\n", "bad Via"),
    (b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa, SIP/2.0/UDP h:70000\r\n", "bad port in Via"),
    (b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\nRoute: <sip:r>\r\nRoute: <sip:s>\r\n"
     b"Via: SIP/2.0/UDP h;rport=x\r\n", "bad rport in Via"),
])
def test_every_via_is_validated(vias: bytes, reason: str) -> None:
    """Check validation parses every Via, not only the top one it keeps: a
    malformed one anywhere refuses the message with its reason."""
    data = INVITE.replace(b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-12345-1-0\r\n", vias)
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert str(info.value) == reason


def test_create_response() -> None:
    """Check a response copies Via, From, To, Call-ID, CSeq, adds the To tag
    once, copies Record-Route only for 101-299, Timestamp only on 100."""
    data = INVITE.replace(
        b"Subject: Performance Test\r\n",
        b"Record-Route: <sip:p1.example.com;lr>\r\nTimestamp: 54\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb\r\n",
    )
    request = parse_message(data)
    assert isinstance(request, SipRequest)
    ringing = request.create_response(180, to_tag="totag1")
    assert (ringing.status, ringing.reason) == (180, "Ringing")
    assert ringing.headers.get_all("Via") == request.headers.get_all("Via")
    assert ringing.to.tag == "totag1"
    assert ringing.headers.get("Record-Route") == "<sip:p1.example.com;lr>"
    assert "Timestamp" not in ringing.headers
    trying = request.create_response(100, to_tag="totag1")
    assert trying.to.tag is None and trying.headers.get("Timestamp") == "54"
    assert "Record-Route" not in trying.headers
    tagged = parse_message(data.replace(b"To: service <sip:service@127.0.0.1:5060>", b"To: <sip:s@h> ; TAG = x"))
    assert isinstance(tagged, SipRequest)
    assert tagged.create_response(200, to_tag="y").to.tag == "x"
    display = parse_message(data.replace(b"To: service", b'To: "a;tag=b"'))
    assert isinstance(display, SipRequest)
    assert display.create_response(200, to_tag="y").to.tag == "y"
    final = request.create_response(486)
    assert final.reason == "Busy Here" and "Record-Route" not in final.headers
    assert request.create_response(499).reason == "Unknown"
    assert_round_trip(parse_message(ringing.to_bytes()))


def test_to_bytes_writes_content_length_from_body() -> None:
    """Check Content-Length is rewritten in place from the body, and added
    last when missing."""
    msg = parse_message(INVITE)
    msg.body = b"x" * 7
    assert b"\r\nContent-Length: 7\r\n\r\nxxxxxxx" in msg.to_bytes()
    response = SipResponse(200, "OK", Headers([("Via", "SIP/2.0/UDP h"), ("l", "99")]))
    assert bytes(response) == b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nContent-Length: 0\r\n\r\n"
    bare = SipRequest("OPTIONS", parse_uri("sip:h"))
    assert bare.to_bytes() == b"OPTIONS sip:h SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    assert repr(bare) == "<SipRequest OPTIONS sip:h>" and repr(response) == "<SipResponse 200 OK>"



def test_to_bytes_follows_every_change() -> None:
    """Check the bytes of a message follow a change of a header, the
    headers object, the body or the start line."""
    msg = parse_message(INVITE)
    assert isinstance(msg, SipRequest)
    assert msg.to_bytes() == INVITE
    msg.headers.set("Subject", "changed")
    assert b"\r\nSubject: changed\r\n" in msg.to_bytes()
    msg.headers = msg.headers.copy()
    msg.headers.add("X-Extra", "1")
    assert b"\r\nX-Extra: 1\r\n" in msg.to_bytes()
    msg.body = b"v=0\r\n"
    assert b"\r\nContent-Length: 5\r\n" in msg.to_bytes() and msg.to_bytes().endswith(b"\r\n\r\nv=0\r\n")
    msg.method = "OPTIONS"
    msg.uri = parse_uri("sip:other@example.com")
    assert msg.to_bytes().startswith(b"OPTIONS sip:other@example.com SIP/2.0\r\n")


@pytest.mark.parametrize(
    "to",
    [
        "<sip:s@h>",
        "service <sip:s@h> ;x=1",
        '"A \\"q\\"" <sip:s@h;transport=tcp>;x="a;b"',
        "sip:s@h;x",
        "sip:s@h ",
    ],
)
@pytest.mark.parametrize("tag", ["t1", "a b", "x;y=1", "q\""])
def test_tagged_to_is_what_parsing_gives(to: str, tag: str) -> None:
    """Check the To a response tags parses to what the response's To view
    gives (that view is built from the request's, not parsed)."""
    data = INVITE.replace(b"To: service <sip:service@127.0.0.1:5060>", f"To: {to}".encode())
    request = parse_message(data)
    assert isinstance(request, SipRequest)
    response = request.create_response(200, to_tag=tag)
    text = response.headers.get("To")
    assert text is not None and text.endswith(f";tag={tag}")
    try:
        parsed = _parse_name_addr(text)
    except RemoteProtocolError:
        return  # not a token: the view parses it, and refuses it the same way
    assert response.to == parsed


# -- specific parser behaviour ------------------------------------------------------------

BASE = (
    "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\n"
    "To: <sip:b@example.com>\r\n"
    "From: <sip:a@example.com>;tag=1\r\n"
    "Call-ID: c1\r\n"
)


def request(start: str = "OPTIONS sip:b@example.com SIP/2.0", extra: str = "", cseq: str = "1 OPTIONS") -> bytes:
    return f"{start}\r\n{BASE}CSeq: {cseq}\r\n{extra}Content-Length: 0\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("data", "reason", "status"),
    [
        (request("OPT/IONS sip:b@example.com SIP/2.0", cseq="1 OPT/IONS"), "bad method in Request-Line", 400),
        (request("OPTIONS sip:b@example.com SIP/2"), "bad SIP version in Request-Line", 400),
        (request("OPTIONS sip:b@example.com HTTP/1.1"), "bad SIP version in Request-Line", 400),
        (request("OPTIONS sip:b@example.com SIP/\u0662.0"), "bad SIP version in Request-Line", 400),
        (request("OPTIONS sip:b@example.com sip/2.0"), "", 0),  # SIP-Version is case-insensitive
        (request("OPTIONS\tsip:b@example.com\tSIP/2.0"), "malformed Request-Line", 400),
        (request("OPTIONS"), "malformed Request-Line", 400),
        (request(extra="Max-Forwards: 0256\r\n"), "bad Max-Forwards", 400),
        (request(extra="Max-Forwards: 00000000000000000000070\r\n"), "", 0),
        (request(extra="Max-Forwards: " + "9" * 5000 + "\r\n"), "bad Max-Forwards", 400),
        (request(extra="Max-Forwards: \u00b2\r\n"), "bad Max-Forwards", 400),
        (request(extra="Expires: 4294967295\r\n"), "", 0),
        (request(extra="Expires: 4294967296\r\n"), "bad Expires", 400),
        (request(extra="Expires: " + "1" * 10000 + "\r\n"), "bad Expires", 400),
        (request(extra="Expires: 1\r\nExpires: 2\r\n"), "more than one Expires header", 400),
        (request(extra="Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"), "", 0),
        (request(extra="Date: Sat, 13 Nov 2010 23:29:00 PST\r\n"), "bad Date header", 400),
        (request().replace(b"Content-Length: 0", "Content-Length: \u0665".encode()), "bad Content-Length", 400),
        (request(extra="Route: <sip:a;lr>, ,<sip:b;lr>\r\n"), "empty element in header list", 400),
        (request("OPTIONS sip:b@example.com?h=v SIP/2.0"), "headers not allowed in Request-URI", 400),
        (request("OPTIONS urn:service:sos SIP/2.0"), "unsupported URI scheme", 416),
        (request("OPTIONS tel:+1-212 SIP/2.0"), "", 0),
        (request(cseq="1 INVITE"), "CSeq method does not match Request-Line", 400),
        (request(cseq="1\x1cOPTIONS"), "bad CSeq", 400),
        (request(extra="Contact: <sip:a@h>,\r\n"), "empty element in header list", 400),
        (request(extra="Contact: <sip:a@h>;expires=60, *\r\n"), "", 0),
        (request(extra="Via: SIP/2.0/UDP h2;branch=z9hG4bKy;received=[::1\r\n"), "bad received in Via", 400),
        (request(extra="Contact: sip:a@h x\r\n"), "Contact: URI with '?', ',' or spaces must be enclosed in <>", 400),
        (request(extra="Route: <sip:a;lr\r\n"), "", 0),  # Route stays text until asked for
        (request().replace(b"Call-ID: c1", b"Call-ID: c 1"), "bad Call-ID", 400),
        (request().replace(b"Call-ID: c1", b"Call-ID: c\x001"), "bad Call-ID", 400),
        (request().replace(b"To: <sip:b@example.com>\r\n", b""), "missing To header", 400),
        (request().replace(b"Via:", b"Via :\r\n "), "", 0),
    ],
)
def test_request_checks(data: bytes, reason: str, status: int) -> None:
    """Check individual Request-Line and header checks, with exact reasons
    (an empty reason means the request is accepted)."""
    if not reason:
        assert_round_trip(parse_message(data))
        return
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert (str(info.value), info.value.status) == (reason, status)
    assert_answerable(info.value, data)


@pytest.mark.parametrize(
    ("start", "reason"),
    [
        ("SIP/2.0 99 Too Low", "bad status code"),
        ("SIP/2.0 700 Too High", "bad status code"),
        ("SIP/2.0 2000 OK", "bad status code"),
        ("SIP/2.0 2\u00b20 OK", "bad status code"),
        ("SIP/2.0", "bad status code"),
        ("SIP/2.x 200 OK", "bad Status-Line"),
        ("SIP/3.0 200 OK", "SIP version not supported"),
    ],
)
def test_bad_responses_are_dropped(start: str, reason: str) -> None:
    """Check malformed responses are marked as responses (never answered)."""
    data = f"{start}\r\n{BASE}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n".encode()
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert str(info.value) == reason
    assert not info.value.is_request


def test_response_variants() -> None:
    """Check a lower-case version, a reason with extra spaces and no reason."""
    for start, reason in (("sip/2.0 200 OK", "OK"), ("SIP/2.0 200  so  ok ", " so  ok "), ("SIP/2.0 183", "")):
        msg = parse_message(f"{start}\r\n{BASE}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n".encode())
        assert isinstance(msg, SipResponse) and (msg.status, msg.reason) == (int(start.split()[1]), reason)
        assert_round_trip(msg)


def test_partial_keeps_other_headers_after_bad_line() -> None:
    """Check a malformed header line does not hide the headers after it, and
    its own continuation lines are skipped."""
    data = request(extra="Bad Header: x\r\n continued\r\nSubject: s\r\n")
    with pytest.raises(ParseError, match="^malformed header line$") as info:
        parse_message(data)
    partial = info.value.partial
    assert partial is not None
    assert partial.headers.get("Subject") == "s"
    assert partial.headers.get("CSeq") == "1 OPTIONS"
    assert_answerable(info.value, data)


def test_parse_unvalidated_leaves_checks_to_validate_message() -> None:
    """Check parse_unvalidated reads a message lacking mandatory headers, and
    validate_message then refuses it with the message as ``partial``."""
    msg = parse_unvalidated(b"OPTIONS sip:h SIP/2.0\r\nSubject: x\r\n\r\n")
    assert isinstance(msg, SipRequest) and msg.headers.get("Subject") == "x" and msg.body == b""
    with pytest.raises(ParseError, match="^missing Via header$") as info:
        validate_message(msg)
    assert info.value.partial is msg


def test_validate_message_on_built_messages() -> None:
    """Check validate_message also works on messages built in code."""
    msg = parse_message(INVITE)
    validate_message(msg)
    msg.headers.add("CSeq", "2 INVITE")
    with pytest.raises(ParseError, match="^more than one CSeq header$") as info:
        validate_message(msg)
    assert info.value.partial is msg


def test_parse_error_defaults() -> None:
    """Check ParseError is a RemoteProtocolError with a 400 default."""
    exc = ParseError("x")
    assert isinstance(exc, RemoteProtocolError)
    assert (exc.status, exc.partial, exc.is_request) == (400, None, True)


# -- stream framing ----------------------------------------------------------------------

FRAME_A = request()
FRAME_B = INVITE


def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for chunk in chunks:
        out += framer.feed(chunk)
    return out


def test_framer_every_split_point() -> None:
    """Check two messages and a ping split at every byte boundary come out
    whole, in order, once."""
    stream = FRAME_A + b"\r\n\r\n" + FRAME_B
    for cut in range(len(stream) + 1):
        framer = StreamFramer()
        assert feed_all(framer, [stream[:cut], stream[cut:]]) == [FRAME_A, None, FRAME_B], cut
        assert framer.buffered == 0


def test_framer_several_messages_in_one_chunk() -> None:
    """Check several messages in one chunk, and a partial one kept."""
    framer = StreamFramer()
    assert framer.feed(FRAME_A + FRAME_B + FRAME_A + FRAME_B[:10]) == [FRAME_A, FRAME_B, FRAME_A]
    assert framer.buffered == 10
    assert framer.feed(FRAME_B[10:]) == [FRAME_B]


def test_framer_keepalives() -> None:
    """Check CRLFCRLF is a ping (RFC 5626 §3.5.1), a lone CRLF (pong) or
    stray line ends before a start line are skipped (RFC 3261 §7.5)."""
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [None]
    assert framer.feed(b"\r\n\r\n\r\n\r\n") == [None, None]
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r\n") == [None]
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n\r") == []
    assert framer.feed(b"\n") == [None]
    assert framer.feed(b"\r\n" + FRAME_A) == [FRAME_A]
    assert framer.feed(b"\n\n" + FRAME_A) == [FRAME_A]
    assert framer.buffered == 0


def test_framer_slow_trickle() -> None:
    """Check bytes fed one at a time give each message exactly once."""
    framer = StreamFramer()
    stream = FRAME_B + b"\r\n\r\n" + FRAME_A + FRAME_B
    got = feed_all(framer, [stream[i : i + 1] for i in range(len(stream))])
    assert got == [FRAME_B, None, FRAME_A, FRAME_B]


def test_framer_trickle_of_large_head_is_linear() -> None:
    """Check a 60 KB head fed byte by byte is framed (each byte is scanned
    once, so this stays fast)."""
    head = b"OPTIONS sip:b@h SIP/2.0\r\n" + b"X-Pad: " + b"a" * 60000 + b"\r\nContent-Length: 3\r\n\r\n"
    framer = StreamFramer()
    got = feed_all(framer, [head[i : i + 1] for i in range(len(head))] + [b"abc"])
    assert got == [head + b"abc"]


def test_framer_content_length_forms() -> None:
    """Check compact, folded, spaced and LF-only Content-Length headers."""
    for head in (
        b"OPTIONS sip:h SIP/2.0\r\nl: 2\r\n\r\n",
        b"OPTIONS sip:h SIP/2.0\r\nCONTENT-length   :\r\n   2\r\n\r\n",
        b"OPTIONS sip:h SIP/2.0\nContent-Length: 2\n\n",
        b"OPTIONS sip:h SIP/2.0\r\nContent-Length: 0002\r\n\r\n",
    ):
        framer = StreamFramer()
        assert framer.feed(head + b"okEXTRA") == [head + b"ok"], head
        assert framer.buffered == 5


def test_framed_messages_parse() -> None:
    """Check frames parse with ``stream=True``."""
    framer = StreamFramer()
    frames = framer.feed(FRAME_A + FRAME_B)
    assert [type(parse_message(f, stream=True)) for f in frames if f is not None] == [SipRequest, SipRequest]


@pytest.mark.parametrize(
    ("data", "reason", "status"),
    [
        (b"OPTIONS sip:h SIP/2.0\r\nVia: x\r\n\r\n", "missing Content-Length on a stream", 400),
        (b"OPTIONS sip:h SIP/2.0\r\nContent-Length: -1\r\n\r\n", "bad Content-Length", 400),
        (b"OPTIONS sip:h SIP/2.0\r\nContent-Length: 1 2\r\n\r\n", "bad Content-Length", 400),
        (b"OPTIONS sip:h SIP/2.0\r\nl: 1\r\nContent-Length: 1\r\n\r\n", "more than one Content-Length header", 400),
        (b"OPTIONS sip:h SIP/2.0\r\nContent-Length: 70000\r\n\r\n", "message too large", 513),
        (b"OPTIONS sip:h SIP/2.0\r\nContent-Length: 99999999999999999999\r\n\r\n", "message too large", 513),
        (b"OPTIONS sip:h SIP/2.0\r\nX: " + b"a" * DEFAULT_MAX_MESSAGE, "message head too large", 513),
    ],
)
def test_framer_errors(data: bytes, reason: str, status: int) -> None:
    """Check unframeable input raises with the exact reason and status, and
    the framer stays broken afterwards."""
    framer = StreamFramer()
    with pytest.raises(ParseError) as info:
        framer.feed(data)
    assert (str(info.value), info.value.status) == (reason, status)
    with pytest.raises(ParseError) as again:
        framer.feed(FRAME_A)
    assert again.value is info.value


def test_framer_limit_is_whole_message() -> None:
    """Check the limit counts head and body: exactly max_message passes."""
    head = b"OPTIONS sip:h SIP/2.0\r\nContent-Length: %d\r\n\r\n"
    size = 300
    body_len = size - len(head % 100)
    ok = (head % body_len) + b"b" * body_len
    assert len(ok) == size
    assert StreamFramer(max_message=size).feed(ok) == [ok]
    with pytest.raises(ParseError, match="^message too large$"):
        StreamFramer(max_message=size).feed((head % (body_len + 1)) + b"b")


# -- robustness: Hypothesis --------------------------------------------------------------

SEEDS = [INVITE, FRAME_A] + [fixture(p.name) for p in sorted(DATA.glob("*.sip"))]


def _frames_alone(data: bytes) -> bool:
    try:
        return StreamFramer().feed(data) == [data.lstrip(b"\r\n")]
    except ParseError:
        return False


STREAM_SEEDS = [seed for seed in SEEDS if _frames_alone(seed)]
_INTERESTING = [
    b"\r\n", b"\n", b"\r", b" ", b"\t", b",", b";", b":", b"=", b'"', b"<", b">", b"\\", b"%", b"%0",
    b"\x00", b"\xff", b"\xc3", b"\r\n ", b"@", b"[", b"]", b"/", b"?", b"\xc2\xb2", b"\xd9\xa5",
    b"Content-Length: 9\r\n", b"l:5\r\n", b"v: SIP/2.0/UDP h\r\n", b"9" * 40,
]


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid message with a few bytes flipped, inserted, deleted or
    duplicated, or truncated."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(_INTERESTING) | st.binary(min_size=1, max_size=6))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 12))]
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 60))]
    return bytes(data)


def check_parse_outcome(data: bytes, *, stream: bool = False) -> None:
    """parse_message either succeeds, and the message round trips, or raises
    ParseError with a safe reason and, for requests, a partial that can be
    answered."""
    try:
        msg = parse_message(data, stream=stream)
    except ParseError as exc:
        assert_safe_reason(str(exc))
        if exc.partial is not None:
            assert exc.partial.to_bytes()
            if isinstance(exc.partial, SipRequest):
                exc.partial.create_response(exc.status, str(exc)).to_bytes()
        return
    assert_round_trip(msg)


@given(st.binary(max_size=3000))
@settings(max_examples=1000, deadline=None)
def test_arbitrary_bytes_only_raise_parse_error(data: bytes) -> None:
    """Check arbitrary bytes never raise anything but ParseError."""
    check_parse_outcome(data)
    check_parse_outcome(data, stream=True)


@given(st.lists(st.sampled_from(_INTERESTING + [b"INVITE sip:a@b SIP/2.0", b"SIP/2.0 200 OK", b"Via", b"To"]), max_size=60))
@settings(max_examples=1000, deadline=None)
def test_token_soup_only_raises_parse_error(parts: list[bytes]) -> None:
    """Check strings of SIP delimiters and fragments never raise anything but
    ParseError."""
    check_parse_outcome(b"".join(parts))


@given(mutated_messages())
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_messages_only_raise_parse_error(data: bytes) -> None:
    """Check mutations of valid messages (flip, insert, delete, duplicate,
    truncate) either parse and round trip or raise ParseError."""
    check_parse_outcome(data)


@given(st.lists(st.binary(max_size=200), max_size=20), st.lists(st.sampled_from(STREAM_SEEDS), max_size=4))
@settings(max_examples=500, deadline=None)
def test_framer_only_raises_parse_error(chunks: list[bytes], messages: list[bytes]) -> None:
    """Check the framer on arbitrary chunks only raises ParseError, and that
    whole messages however chunked come out unchanged."""
    framer = StreamFramer()
    try:
        for chunk in chunks:
            for frame in framer.feed(chunk):
                assert frame is None or len(frame) <= DEFAULT_MAX_MESSAGE
    except ParseError as exc:
        assert_safe_reason(str(exc))
    stream = b"".join(messages)
    framer = StreamFramer()
    cut = len(stream) // 3
    frames = [f for f in feed_all(framer, [stream[:cut], stream[cut:]]) if f is not None]
    assert frames == [m.lstrip(b"\r\n") for m in messages]


# -- PROTOS c07-sip ----------------------------------------------------------------------

PROTOS_VALUES = {
    b"<To>": b"bob@192.0.2.2",
    b"<From>": b"alice@192.0.2.1",
    b"<From-Address>": b"192.0.2.1",
    b"<From-IP>": b"192.0.2.1",
    b"<Local-Port>": b"5060",
    b"<Branch-ID>": b"7",
    b"<Call-ID>": b"protos-7",
    b"<CSeq>": b"1",
    b"<Teardown-Method>": b"CANCEL",
}


def protos_messages(raw: bytes) -> list[bytes]:
    """Cut a case file into its "<len> <template>" parts and fill in the
    placeholders; <Content-Length> becomes the length of the body."""
    out = []
    i = 0
    while i < len(raw):
        space = raw.index(b" ", i)
        size = int(raw[i:space])
        template = raw[space + 1 : space + 1 + size]
        i = space + 1 + size
        for key, value in PROTOS_VALUES.items():
            template = template.replace(key, value)
        if b"<Content-Length>" in template:
            end = template.find(b"\r\n\r\n")
            body = len(template) - end - 4 if end >= 0 else 0
            template = template.replace(b"<Content-Length>", b"%d" % body)
        out.append(template)
    return out


def test_protos_c07_sip() -> None:
    """Check all 4,527 PROTOS c07-sip INVITEs and their teardowns either
    parse or raise ParseError with a safe reason; the unmutated case and
    every case that only mutates the SDP body parse (the body is not the SIP
    parser's business)."""
    root = corpus("protos-c07-sip")
    groups = [(row["group"], int(row["first_case"]), int(row["count"])) for row in read_tsv(root / "groups.tsv")]
    body_only = {n for g, first, count in groups if g.startswith("sdp-") or g == "valid" for n in range(first, first + count)}
    cases = sorted((root / "cases").iterdir())
    assert len(cases) == 4527 == sum(count for _, _, count in groups)
    parsed = rejected = 0
    for path in cases:
        invite, teardown = protos_messages(path.read_bytes())
        try:
            parse_message(invite)
            parsed += 1
        except ParseError as exc:
            assert_safe_reason(str(exc))
            assert int(path.name) not in body_only, (path.name, str(exc))
            rejected += 1
        try:
            parse_message(teardown)
        except ParseError as exc:
            assert_safe_reason(str(exc))
    assert parsed + rejected == 4527
    assert parsed >= len(body_only)


# -- pjsip fuzz seeds ----------------------------------------------------------------------


def zip_members(name: str) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(corpus("pjsip-fuzz-seeds", name)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist() if not info.is_dir()]


def test_pjsip_sip_seeds() -> None:
    """Check pjsip's SIP and dialog fuzz seeds parse or raise ParseError, and
    that the plain well-formed ones parse."""
    members = zip_members("fuzz-sip_seed_corpus.zip") + zip_members("fuzz-sip-dialog_seed_corpus.zip")
    outcome = {}
    for filename, data in members:
        if filename.endswith(".txt"):
            continue
        try:
            parse_message(data)
            outcome[filename.rsplit("/", 1)[-1]] = "ok"
        except ParseError as exc:
            assert_safe_reason(str(exc))
            outcome[filename.rsplit("/", 1)[-1]] = str(exc)
    for name in ("basic_invite.sip", "minimal_invite.sip", "invite_with_routes.sip", "tel_uri_basic.sip",
                 "routing_complex.sip", "auth_digest.sip", "session_timers.sip"):
        assert outcome[name] == "ok", (name, outcome[name])


def test_pjsip_uri_seeds() -> None:
    """Check pjsip's URI fuzz seeds parse or raise RemoteProtocolError."""
    members = zip_members("fuzz-uri_seed_corpus.zip") + zip_members("fuzz-sip-dialog_seed_corpus.zip")
    texts = [data.decode("utf-8", "surrogateescape").strip() for name, data in members if not name.endswith(".sip")]
    assert texts
    for text in texts:
        for parse in (parse_uri, parse_name_addr):
            try:
                parse(text)
            except RemoteProtocolError as exc:
                assert_safe_reason(str(exc))
