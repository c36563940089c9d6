"""Malformed input over UDP: the RFC 4475 torture messages, answered as the
corpus index says, and 1,000 random malformed datagrams that leave the
server answering and holding no transaction, call or RTP port."""

from __future__ import annotations

import asyncio
import csv
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.server import Engine
from engine.sip.message import REASONS, SipRequest, SipResponse
from engine.sip.parser import ParseError, parse_message
from engine.sip.transaction import server_transaction_key

from corpora import corpora_dir

from .conftest import EngineFactory, FAST_TIMERS, PeerFactory, use_timers, wait_until
from .sip_peer import UdpPeer, request, sdp_offer

CORPUS = corpora_dir() / "rfc4475"

RULES = """
rules:
  - {name: Echo, pattern: "echo", scenarios: [answer_wait_hangup]}
"""

#: Statuses that refuse a request as malformed.
REFUSALS = {400, 414, 416, 505}


@dataclass
class Expectation:
    """What the index asks of one file: no answer at all, one of
    ``statuses``, or (``statuses`` None) any answer that is not a refusal."""

    answer: bool
    statuses: set[int] | None = None


def expectation(handling: str, verdict: str) -> Expectation:
    """Read the index's ``expected_handling`` column."""
    text = handling.lower()
    if text.startswith("drop") or "must not forward response" in text:
        return Expectation(False)
    if verdict == "invalid" and "not an rfc test case" in text:
        return Expectation(False)  # test.dat: no Via, so nothing can be answered
    if text.startswith("accept"):
        codes = re.findall(r"\b([1-6][0-9]{2})\b", text)
        return Expectation(True, {int(c) for c in codes} or None)
    if text.startswith("uas/registrar processes it"):
        return Expectation(True)  # answered as any request; 483 is a proxy's
    # "reject 400", "parse; respond 416", "parse; 401 challenge / ..."
    codes = re.findall(r"\b([1-6][0-9]{2})\b", text.split("/")[0] if "401" in text else text)
    assert codes, f"cannot read expected handling {handling!r}"
    return Expectation(True, {int(codes[0])})


def corpus() -> list[tuple[str, str, Expectation]]:
    with open(CORPUS / "index.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [(r["filename"], r["description"], expectation(r["expected_handling"], r["verdict"]))
            for r in rows]


def transaction_key(data: bytes) -> tuple[object, ...] | None:
    try:
        msg = parse_message(data)
    except ParseError:
        return None
    return server_transaction_key(msg) if isinstance(msg, SipRequest) else None


async def final_response(peer: UdpPeer, timeout: float = 2.0) -> SipResponse | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            raw = await peer.recv_raw(max(0.01, deadline - loop.time()))
        except asyncio.TimeoutError:
            return None
        try:
            msg = parse_message(raw)
        except ParseError as exc:
            # A refusal echoes the request's Via headers (RFC 3261 §8.2.6.2),
            # broken ones included (badinv01): read it as far as it parses.
            msg = exc.partial  # type: ignore[assignment]
        assert isinstance(msg, SipResponse), f"the server sent a request: {raw[:80]!r}"
        if msg.status >= 200:
            return msg


async def assert_options_answered(engine: Engine, peers: PeerFactory) -> None:
    peer = await peers.udp(engine)
    peer.send(request("OPTIONS", f"sip:echo@127.0.0.1:{engine.ua.port}", local=peer.local))
    ok = await peer.expect(200)
    assert "INVITE" in (ok.headers.get("Allow") or "")


async def test_rfc4475_corpus_answered_as_indexed(make_engine: EngineFactory, peers: PeerFactory) -> None:
    """Every RFC 4475 message, each from its own socket, gets what index.tsv
    says: refusals carry 400/505/416 with a reason phrase naming the fault,
    bext01 a 420 with Unsupported, invut a 415 with Accept, sdp01 a 406,
    responses and unanswerable garbage get nothing; afterwards OPTIONS is
    still answered."""
    files = corpus()
    on_disk = {p.name for p in CORPUS.glob("*.dat")}
    assert {name for name, _, _ in files} == on_disk, "index.tsv and the corpus disagree"
    engine = await make_engine(RULES)
    use_timers(engine, FAST_TIMERS)  # messages that share a branch wait less
    server = f"127.0.0.1:{engine.ua.port}"
    seen_keys: set[tuple[object, ...]] = set()
    silent: list[tuple[str, UdpPeer]] = []
    answered: dict[str, tuple[UdpPeer, SipResponse]] = {}
    problems: list[str] = []
    for name, description, want in files:
        data = (CORPUS / name).read_bytes()
        if data.startswith(b"SIP/"):
            want = Expectation(False)  # a response: a UAS answers no response
        key = transaction_key(data)
        if key is not None and key in seen_keys:
            # Same branch, sent-by and method as an earlier file: until that
            # transaction ends this one is its retransmission (RFC 3261 §17.2.3).
            assert await wait_until(lambda: len(engine.ua.endpoint.layer) == 0, 5.0)
        if key is not None:
            seen_keys.add(key)
        peer = await peers.udp(engine)
        peer.send(data)
        if not want.answer:
            silent.append((name, peer))
            continue
        resp = await final_response(peer)
        if resp is None:
            problems.append(f"{name} ({description}): no answer, wanted {want.statuses or 'one'}")
            continue
        answered[name] = (peer, resp)
        if want.statuses is not None and resp.status not in want.statuses:
            problems.append(f"{name}: got {resp.status} {resp.reason}, wanted {want.statuses}")
        if want.statuses is None and (resp.status in REFUSALS or resp.status in (500, 503)):
            problems.append(f"{name}: valid message refused with {resp.status} {resp.reason}")
        if resp.status in REFUSALS and resp.reason in ("", REASONS[resp.status]):
            problems.append(f"{name}: {resp.status} without a reason naming the fault")
    for name, peer in silent:
        try:
            await peer.silence(0.2)
        except AssertionError as exc:
            problems.append(f"{name}: {exc}")
    assert not problems, "\n".join(problems)

    bext = answered["bext01.dat"][1]
    assert bext.status == 420
    unsupported = {t.strip() for v in bext.headers.get_all("Unsupported") for t in v.split(",")}
    assert unsupported == {"nothingSupportsThis", "nothingSupportsThisEither"}, unsupported
    invut = answered["invut.dat"][1]
    assert invut.status == 415 and "application/sdp" in (invut.headers.get("Accept") or "")
    assert answered["sdp01.dat"][1].status == 406
    assert answered["unkscm.dat"][1].status == 416
    assert answered["novelsc.dat"][1].status == 416
    assert answered["badvers.dat"][1].status == 505
    assert answered["insuf.dat"][1].status == 400
    # RFC 4475 §3.1.1.8: the octets after Content-Length are ignored, so the
    # REGISTER is answered and the INVITE glued after it is not.
    peer, dbl = answered["dblreq.dat"]
    assert dbl.cseq.method == "REGISTER"
    for raw in peer.drain():
        assert b"CSeq: 8 REGISTER" in raw  # the INVITE glued after it is "8 INVITE"
    assert engine.ua.endpoint.stats["malformed"] >= 20
    await assert_options_answered(engine, peers)


def _valid_invite(rng: random.Random, port: int, local: tuple[str, int]) -> bytes:
    return request(
        "INVITE", f"sip:echo@127.0.0.1:{port}", local=local,
        branch=f"z9hG4bK{rng.getrandbits(64):016x}", call_id=f"{rng.getrandbits(64):016x}",
        body=sdp_offer(local[0]), headers=[("User-Agent", "fuzz/1.0")],
    )


_GARBAGE_NAMES = ["Via", "v", "From", "To", "t", "Call-ID", "CSeq", "Contact", "m",
                  "Content-Length", "l", "Max-Forwards", "Expires", "Route", "Require",
                  "Content-Type", "X-\x00", "", " ", "Date", "Authorization"]
_GARBAGE_VALUES = ["", " ", ";;;", "<sip:", "<>", '"unterminated', "SIP/2.0/UDP", "-1",
                   "99999999999999999999", "sip:a@b;tag=", "\x01\x02", "a,,b", "1 INVITE",
                   "%%%", "[::1", "<sip:x@[::1]>", "\xff\xfe", "*", "SIP/2.0/UDP h;branch=",
                   "Mon, 32 Foo 2024 99:99:99 EST", "Digest realm=", "\t", "x" * 300]


def _garbage_headers(rng: random.Random, port: int, local: tuple[str, int]) -> bytes:
    """A valid request whose headers get random garbage: values replaced,
    lines inserted with odd separators, the head ended oddly."""
    method = rng.choice(["INVITE", "OPTIONS", "REGISTER", "BYE", "CANCEL", "ACK", "MESSAGE", "FOO"])
    valid = request(method, f"sip:echo@127.0.0.1:{port}", local=local,
                    branch=f"z9hG4bK{rng.getrandbits(64):016x}")
    lines = valid.decode().split("\r\n")[:-2]
    for _ in range(rng.randint(1, 4)):
        value = rng.choice(_GARBAGE_VALUES)
        if rng.random() < 0.5:
            i = rng.randrange(1, len(lines))
            lines[i] = lines[i].partition(":")[0] + ": " + value
        else:
            sep = rng.choice([": ", ":", " : ", " ", "\n ", ": \r\n "])
            lines.insert(rng.randrange(1, len(lines) + 1), f"{rng.choice(_GARBAGE_NAMES)}{sep}{value}")
    ending = rng.choice(["\r\n\r\n", "\r\n\r\n", "\r\n", "\n\n", "\r\r", ""])
    body = rng.randbytes(rng.randint(0, 40)) if rng.random() < 0.3 else b""
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + ending.encode() + body


def fuzz_datagrams(rng: random.Random, port: int, local: tuple[str, int]) -> list[bytes]:
    """1,000 datagrams: random bytes, truncated and byte-flipped INVITEs,
    and request lines with random header garbage."""
    out: list[bytes] = []
    for i in range(1000):
        kind = i % 4
        if kind == 0:
            out.append(rng.randbytes(rng.randint(1, 1400)))
        elif kind == 1:
            valid = _valid_invite(rng, port, local)
            out.append(valid[: rng.randint(1, len(valid) - 1)])
        elif kind == 2:
            data = bytearray(_valid_invite(rng, port, local))
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            out.append(bytes(data))
        else:
            out.append(_garbage_headers(rng, port, local))
    return out


async def test_random_malformed_datagrams_leak_nothing(make_engine: EngineFactory, peers: PeerFactory, caplog: pytest.LogCaptureFixture) -> None:
    """1,000 seeded random malformed datagrams (random bytes, truncations
    and byte flips of a valid INVITE, random header garbage): no handler
    error is logged, OPTIONS is still answered, and once the (shortened)
    timers have run no transaction, call, session or RTP port is left."""
    engine = await make_engine(RULES)
    use_timers(engine, FAST_TIMERS)
    port = engine.ua.port
    fuzzer = await peers.udp(engine)
    rng = random.Random(4475)
    caplog.set_level(logging.ERROR, logger="engine")
    for i, data in enumerate(fuzz_datagrams(rng, port, fuzzer.local)):
        fuzzer.send(data)
        if i % 10 == 9:
            await asyncio.sleep(0.002)  # let the engine read (no drops in the socket buffer)
    await assert_options_answered(engine, peers)
    layer = engine.ua.endpoint.layer
    settled = await wait_until(
        lambda: len(layer) == 0 and not engine.ua.calls and not engine.runtime.sessions, 10.0
    )
    assert settled, (len(layer), engine.ua.calls, engine.runtime.sessions)
    assert not engine.ua._by_invite
    assert not any(p.in_use for p in engine.ports.values())
    stats = engine.ua.endpoint.stats
    assert stats["malformed"] > 300, stats
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors[:5]]


@pytest.mark.parametrize(("header", "reason"), [(("Record-Route", "<sip:>"), "bad URI"),
                                                (("Record-Route", "<sip:a@b:x>"), "bad port in URI")])
async def test_malformed_header_read_by_the_ua_gets_400(make_engine: EngineFactory, peers: PeerFactory,
                                                        caplog: pytest.LogCaptureFixture,
                                                        header: tuple[str, str], reason: str) -> None:
    """An INVITE whose Record-Route the parser keeps verbatim
    but the UA cannot read as a URI is answered 400 naming the problem, and
    no handler error is logged (the fuzz run found it left unanswered, with
    a traceback)."""
    engine = await make_engine(RULES)
    peer = await peers.udp(engine)
    caplog.set_level(logging.ERROR, logger="engine")
    uri = f"sip:echo@127.0.0.1:{engine.ua.port}"
    peer.send(request("INVITE", uri, local=peer.local, headers=[header]))
    response = await peer.expect(400)
    assert response.reason == reason
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
