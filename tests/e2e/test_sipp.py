"""End-to-end: sipp (Debian's sip-tester) against a real engine on loopback.

Each test starts an engine in-process (``make_engine``) on ephemeral ports and
drives it with sipp, the SIP peer that carriers and PBX vendors test with.
"""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import pytest

from engine.runtime.dialout import DialPolicy
from engine.server import Engine
from engine.transport.sip_endpoint import SecurityPolicy

from corpora import corpora_dir
from logs import wait_for_log

from .sipp import run_sipp, start_sipp

pytestmark = pytest.mark.e2e

RULES = """
rules:
  - {name: Hangup, pattern: "100|echo", scenarios: [answer_wait_hangup]}
  - {name: Ring, pattern: "ring", scenarios: [ring_only]}
  - {name: Raise, pattern: "raise", scenarios: [raises]}
  - {name: InDialog, pattern: "talk", scenarios: [in_dialog]}
  - {name: Trunk, pattern: "dialout", scenarios: [dial_trunk]}
"""


def target(engine: Engine) -> str:
    return f"127.0.0.1:{engine.ua.port}"


async def test_uac_completes_100_calls(make_engine) -> None:
    """sipp's uac places 100 calls; the scenario answers and the engine hangs
    up each one (BYE from the engine, 200 from sipp): all 100 succeed."""
    engine = await make_engine(RULES)
    result = await run_sipp(
        ["-s", "100", "-m", "100", "-r", "50", "-l", "50"], scenario="uac_wait_bye.xml",
        target=target(engine), timeout=60,
    )
    assert result.returncode == 0, result.output[-2000:] + result.errors
    assert result.successful == 100
    assert result.failed == 0
    await asyncio.sleep(0.1)
    assert not engine.ua.calls  # every call ended and was forgotten


async def _calls_total(engine: Engine, key: str) -> float:
    """``callbridge_calls_total{kind="sip",direction="inbound",outcome="connected"}``
    as ``GET /metrics`` shows it (scraped over HTTP with a metrics key)."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{engine.http_port}/metrics",
                            headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200
            text = await resp.text()
    wanted = {"kind": "sip", "direction": "inbound", "outcome": "connected"}
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "callbridge_calls_total" and s.labels == wanted)


async def test_metrics_count_exactly_the_calls_sipp_places(make_engine) -> None:
    """sipp places 40 calls (10 a second) while /metrics is scraped: the
    connected-calls counter never goes down during the run and ends exactly
    40 above where it started (each call counted once, none lost)."""
    engine = await make_engine(RULES)
    assert engine.store is not None
    key_record, secret = engine.store.create_api_key(["metrics"])
    key = f"{key_record.key_id}.{secret}"
    before = await _calls_total(engine, key)
    uac = asyncio.ensure_future(run_sipp(
        ["-s", "100", "-m", "40", "-r", "10", "-l", "20"], scenario="uac_wait_bye.xml",
        target=target(engine), timeout=60))
    seen = [before]
    while not uac.done():
        seen.append(await _calls_total(engine, key))
        await asyncio.sleep(0.5)
    result = await uac
    assert result.returncode == 0 and result.successful == 40, result.output[-2000:] + result.errors
    for _ in range(50):  # the last BYE's 200 may still be on its way
        after = await _calls_total(engine, key)
        if after - before == 40:
            break
        await asyncio.sleep(0.1)
    assert after - before == 40, (before, after)
    assert seen == sorted(seen) and seen[-1] <= after, seen
    assert any(before < v < after for v in seen), f"no scrape saw the counter mid-run: {seen}"


async def test_builtin_uac_over_tcp(make_engine) -> None:
    """sipp's built-in uac over TCP (the caller sends the BYE) completes 20 calls."""
    engine = await make_engine(RULES)
    result = await run_sipp(
        ["-sn", "uac", "-s", "echo", "-t", "t1", "-m", "20", "-r", "20"], target=target(engine), timeout=30,
    )
    assert result.returncode == 0, result.output[-2000:] + result.errors
    assert result.successful == 20


async def test_cancel_before_answer(make_engine) -> None:
    """The caller cancels while the scenario rings: 200 to the CANCEL, 487 to
    the INVITE, and the scenario sees Disconnected with code 487."""
    engine = await make_engine(RULES)
    result = await run_sipp(["-s", "ring", "-m", "1"], scenario="uac_cancel.xml",
                            target=target(engine), timeout=15)
    assert result.returncode == 0, result.output[-2000:] + result.errors
    logs = await wait_for_log(engine, "ended Disconnected 487")
    assert "ended Disconnected 487" in logs


async def test_options(make_engine) -> None:
    """OPTIONS gets 200 with Allow (INVITE among them) and Accept: application/sdp."""
    engine = await make_engine(RULES)
    result = await run_sipp(["-s", "anyone", "-m", "1"], scenario="options.xml",
                            target=target(engine), timeout=10)
    assert result.returncode == 0, result.output[-2000:] + result.errors


async def test_in_dialog_info_message_and_hold(make_engine) -> None:
    """INFO and MESSAGE inside a call reach the scenario, a sendonly
    re-INVITE (hold) is answered recvonly, and the caller's BYE ends it."""
    engine = await make_engine(RULES)
    result = await run_sipp(["-s", "talk", "-m", "1"], scenario="uac_info_message.xml",
                            target=target(engine), timeout=15)
    assert result.returncode == 0, result.output[-2000:] + result.errors
    logs = await wait_for_log(engine, "ended Disconnected")
    assert "info application/dtmf-relay b'Signal=5\\r\\nDuration=160" in logs
    assert "message 'hello engine\\r\\n' room=blue" in logs, logs  # sipp ends bodies with CRLF
    assert "reinvite" in logs
    assert "ended Disconnected 200" in logs


def _xml_expect_final(tmp_path: Path, code: int) -> Path:
    """A uac that expects ``code`` to its INVITE (then ACKs it)."""
    text = (Path(__file__).parent / "sipp" / "uac_cancel.xml").read_text()
    head = text.split("<recv response=\"180\"/>")[0]
    body = head + f"""  <recv response="180" optional="true"/>
  <recv response="{code}"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <timewait milliseconds="200"/>
</scenario>
"""
    path = tmp_path / f"uac_expect_{code}.xml"
    path.write_text(body)
    return path


async def test_unknown_number_gets_404(make_engine, tmp_path: Path) -> None:
    """A number no rule matches is answered 404 Not Found."""
    engine = await make_engine(RULES)
    xml = _xml_expect_final(tmp_path, 404)
    result = await run_sipp(["-sf", str(xml), "-s", "nobody-here", "-m", "1"],
                            target=target(engine), timeout=10)
    assert result.returncode == 0, result.output[-2000:] + result.errors


async def test_scenario_that_raises_gets_500_and_engine_goes_on(make_engine, tmp_path: Path) -> None:
    """A scenario raising in CallAlerting: the call gets 500, the traceback
    lands in the session log, and the next call to another rule works."""
    engine = await make_engine(RULES)
    xml = _xml_expect_final(tmp_path, 500)
    result = await run_sipp(["-sf", str(xml), "-s", "raise", "-m", "1"],
                            target=target(engine), timeout=10)
    assert result.returncode == 0, result.output[-2000:] + result.errors
    logs = await wait_for_log(engine, "scenario bug on purpose")
    assert "RuntimeError: scenario bug on purpose" in logs
    assert "Traceback" in logs
    again = await run_sipp(["-s", "100", "-m", "3", "-r", "10"], scenario="uac_wait_bye.xml",
                           target=target(engine), timeout=20)
    assert again.successful == 3, again.output[-2000:]


async def test_call_pstn_through_trunk_with_digest(make_engine, tmp_path: Path) -> None:
    """A scenario dials out with call_pstn; sipp, the carrier behind the
    trunk, challenges with 401, verifies the digest answer (its verifyauth),
    answers, and hangs up after a second: the scenario logs ringing,
    connected and the carrier's BYE."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    user, password = "acct42", "pa55-word"
    creds = tmp_path / "creds.csv"
    creds.write_text(f"SEQUENTIAL\n{user};{password}\n")
    uas = await start_sipp(
        ["-p", str(port), "-m", "1", "-inf", str(creds)], scenario="uas_auth.xml", timeout=20,
    )
    try:
        engine = await make_engine(RULES, trunk=f"sip:{user}:{password}@127.0.0.1:{port}",
                                   dial_policy=DialPolicy(allow=(r"[0-9]+",)))
        await asyncio.sleep(0.3)  # let sipp bind
        rule = engine.rules.match("dialout")
        session = engine.runtime.start_session(rule, custom_data="5551234")
        out, err = await asyncio.wait_for(uas.communicate(), 30)
        assert uas.returncode == 0, out.decode(errors="replace")[-2000:] + err.decode(errors="replace")
        logs = await wait_for_log(engine, "ended Disconnected 200")
        assert "ringing" in logs and "connected" in logs, logs
        assert "ended Disconnected 200" in logs, logs
        assert session.id in logs
    finally:
        if uas.returncode is None:
            uas.kill()
            await uas.wait()


async def test_call_pstn_wrong_trunk_password_fails_403(make_engine, tmp_path: Path) -> None:
    """With a wrong trunk password the carrier refuses (403) and the
    scenario's outbound call ends in Failed with that code."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    creds = tmp_path / "creds.csv"
    creds.write_text("SEQUENTIAL\nacct42;right-password\n")
    uas = await start_sipp(["-p", str(port), "-m", "1", "-inf", str(creds)], scenario="uas_auth.xml",
                           timeout=20)
    try:
        engine = await make_engine(RULES, trunk=f"sip:acct42:wrong@127.0.0.1:{port}",
                                   dial_policy=DialPolicy(allow=(r"[0-9]+",)))
        await asyncio.sleep(0.3)
        engine.runtime.start_session(engine.rules.match("dialout"), custom_data="5551234")
        logs = await wait_for_log(engine, "ended Failed 403", timeout=10)
        assert "ended Failed 403" in logs, logs
    finally:
        if uas.returncode is None:
            uas.kill()
        await uas.wait()


async def test_malformed_flood_then_options(make_engine) -> None:
    """1,000 random malformed datagrams (garbage, truncated and mutated
    INVITEs, RFC 4475 torture messages) do not stop the server: sipp's
    OPTIONS is answered afterwards."""
    engine = await make_engine(RULES, policy=SecurityPolicy(trusted=frozenset({"127.0.0.1"})))
    rng = random.Random(4475)
    corpus = corpora_dir() / "rfc4475"
    torture = [p.read_bytes() for p in sorted(corpus.glob("*.dat"))]
    assert torture, f"RFC 4475 corpus missing at {corpus}"
    valid = (
        b"INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        for i in range(1000):
            kind = i % 4
            if kind == 0:
                data = rng.randbytes(rng.randint(1, 1500))
            elif kind == 1:
                data = valid[: rng.randint(1, len(valid) - 1)]
            elif kind == 2:
                buf = bytearray(valid)
                for _ in range(rng.randint(1, 8)):
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
                data = bytes(buf)
            else:
                data = rng.choice(torture)
            try:
                sock.sendto(data, ("127.0.0.1", engine.ua.port))
            except BlockingIOError:
                await asyncio.sleep(0.01)
            if i % 10 == 0:
                await asyncio.sleep(0.002)  # the engine shares this loop: let it read
    finally:
        sock.close()
    await asyncio.sleep(0.2)
    stats = engine.ua.endpoint.stats
    assert stats["received"] >= 900, stats
    assert stats["malformed"] >= 400, stats
    result = await run_sipp(["-s", "anyone", "-m", "1"], scenario="options.xml",
                            target=target(engine), timeout=10)
    assert result.returncode == 0, result.output[-2000:] + result.errors
