"""bench/sip_tls: calls per second over SIP-over-TLS next to UDP, same run.

One ``callbridge serve`` (its own process) with a TLS listener (a dev
certificate made here) and the bench scenario that answers, waits 1 s and
hangs up (``scenarios/answer_hangup.py``). First sipp places calls over UDP
(``tests/e2e/sipp/uac_wait_bye.xml``) at ``--rate`` calls/s for
``--seconds``; then our own TLS client (``ssl`` + asyncio; Debian's sipp has
no TLS) places the same calls (INVITE, 200, ACK, the engine's BYE, 200) at
the same rate over ``--connections`` TLS connections. It prints the calls
completed per second of each and their ratio (TLS / UDP). Bounded: each
side stops after ``--seconds`` plus 15 s of grace.

Usage: ``python bench/sip_tls.py [--rate 50] [--seconds 10] [--connections 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from serve_process import ServeProcess, free_port  # noqa: E402
from sip_cps import UAC_XML, run_sipp  # noqa: E402
from tls_ca import make_certs  # noqa: E402

from engine.sip.message import SipRequest, SipResponse  # noqa: E402
from engine.sip.parser import StreamFramer, parse_message  # noqa: E402

SDP = ("v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class TlsCaller:
    """One TLS connection placing calls; each call's messages are routed
    to it by Call-ID."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self.calls: dict[str, asyncio.Queue[SipRequest | SipResponse]] = {}

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context, server_hostname="127.0.0.1")
        self.local = self.writer.get_extra_info("sockname")[:2]
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        framer = StreamFramer()
        while data := await self.reader.read(65536):
            for frame in framer.feed(data):
                if frame is None:
                    continue
                msg = parse_message(frame, stream=True)
                queue = self.calls.get(msg.call_id)
                if queue is not None:
                    queue.put_nowait(msg)

    def _request(self, method: str, call_id: str, cseq: int, to_tag: str | None, body: str = "") -> bytes:
        host, port = self.local
        lines = [
            f"{method} sips:bench@127.0.0.1:{self.port} SIP/2.0",
            f"Via: SIP/2.0/TLS {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport",
            "Max-Forwards: 70", f"From: <sip:b@{host}>;tag=f{call_id[:8]}",
            f"To: <sips:bench@127.0.0.1>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id}", f"CSeq: {cseq} {method}",
            f"Contact: <sip:b@{host}:{port};transport=tls>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    async def call(self) -> bool:
        call_id = secrets.token_hex(10)
        queue: asyncio.Queue[SipRequest | SipResponse] = asyncio.Queue()
        self.calls[call_id] = queue
        try:
            self.writer.write(self._request("INVITE", call_id, 1, None, SDP))
            while True:
                msg = await asyncio.wait_for(queue.get(), 10)
                if isinstance(msg, SipResponse) and msg.status >= 200:
                    break
            if msg.status != 200:
                return False
            self.writer.write(self._request("ACK", call_id, 1, msg.to.tag))
            while True:
                msg = await asyncio.wait_for(queue.get(), 10)
                if isinstance(msg, SipRequest) and msg.method == "BYE":
                    self.writer.write(msg.create_response(200).to_bytes())
                    return True
        except (asyncio.TimeoutError, ConnectionError):
            return False
        finally:
            self.calls.pop(call_id, None)


async def run_tls(port: int, ca: Path, rate: int, seconds: int, connections: int) -> tuple[int, int, float]:
    """Place ``rate * seconds`` calls at ``rate``; return (ok, failed, seconds taken)."""
    context = ssl.create_default_context(cafile=str(ca))
    callers = [TlsCaller(port, context) for _ in range(connections)]
    for caller in callers:
        await caller.open()
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = []
    for i in range(rate * seconds):
        await asyncio.sleep(max(0.0, started + i / rate - loop.time()))
        tasks.append(loop.create_task(callers[i % connections].call()))
    results = await asyncio.wait_for(asyncio.gather(*tasks), seconds + 15)
    taken = loop.time() - started
    for caller in callers:
        caller.writer.close()
        caller.task.cancel()
    return sum(results), len(results) - sum(results), taken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed: ./run.sh bench installs sip-tester")
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        workdir = Path(tmp)
        certs = make_certs(workdir / "certs", "bench")
        rules = workdir / "rules.yaml"
        rules.write_text('rules:\n  - {name: Bench, pattern: "bench", scenarios: [answer_hangup]}\n')
        tls_port = free_port()
        serve = ServeProcess(workdir, [
            "--rules", str(rules), "--scenarios", str(ROOT / "scenarios"), "--trusted", "127.0.0.1",
            "--log-level", "warning", "--rtp-ports", "20000-32000", "--tls-cert", str(certs.cert),
            "--tls-key", str(certs.key), "--sip-tls-port", str(tls_port)], ca=certs.ca)
        try:
            serve.wait_healthy(10)
            begun = time.monotonic()
            ok_udp, failed_udp = run_sipp(["-sf", str(UAC_XML), "-s", "bench", f"127.0.0.1:{serve.sip_port}"],
                                          args.rate, args.seconds, workdir)
            udp_cps = ok_udp / max(args.seconds, time.monotonic() - begun - 1.5)
            print(f"UDP (sipp): ok={ok_udp} failed={failed_udp} {udp_cps:.1f} calls/s", flush=True)
            time.sleep(2)
            ok_tls, failed_tls, taken = asyncio.run(
                run_tls(tls_port, certs.ca, args.rate, args.seconds, args.connections))
            tls_cps = ok_tls / max(args.seconds, taken - 1.0)
            print(f"TLS (own client, {args.connections} connections): ok={ok_tls} failed={failed_tls}"
                  f" {tls_cps:.1f} calls/s", flush=True)
            ratio = tls_cps / udp_cps if udp_cps else 0.0
            print(f"TLS/UDP ratio at {args.rate} calls/s offered: {ratio:.2f}", flush=True)
            return 0 if failed_udp == 0 and failed_tls == 0 else 1
        finally:
            serve.stop()
            errors = [line for line in serve.log_path.read_text(errors="replace").splitlines()
                      if "level=error" in line or "Traceback" in line]
            print("\n".join(errors[-5:]), file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
