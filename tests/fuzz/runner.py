"""Send generated SIP messages and SDK frames to a live ``callbridge serve``
and report what happened.

The engine runs as its own process (:class:`serve_process.ServeProcess`)
with the shipped rules.yaml and scenarios, its own data directory, free
loopback ports, ``--trusted 127.0.0.1`` (the rate limiter and bans stay in
place for everyone else, but would otherwise stop the fuzz after the first
burst) and ``--log-level error``: every line it writes is then an error
line or a traceback, i.e. a finding.

- SIP: most messages over UDP, a share (``tcp_share``) over TCP, several
  pipelined in one connection and written in random pieces (partial frames).
  UDP is sent in a bounded window: at most ``window`` messages ahead of the
  answers; a message that gets none (most malformed ones) frees its slot
  after 20 ms of silence. Requests the engine sends back (BYE from the
  answering scenario) are answered 200; its 2xx to INVITEs are ACKed and the
  dialog is used by later requests (:meth:`fuzz.sip.SipFuzzer.learn`).
- WebSocket: ``ws_sockets`` sockets, each reconnecting when the engine
  closes it (allowed: oversized frames do that); every 16 frames a ``ping``
  must get its ``pong`` (5 s), so a stuck handler shows.
- Every ``check_every`` SIP messages: the process is alive, an OPTIONS from
  a fresh socket is answered, ``/healthz`` is 200, and VmRSS is sampled.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from serve_process import ROOT, ServeProcess

from .corpus import load_seeds
from .sip import SipFuzzer
from .ws import WsFuzzer

__all__ = ["FuzzConfig", "FuzzReport", "Finding", "run_fuzz", "scan_log"]

_STATUS = re.compile(rb"(?:^|\r\n)SIP/2\.0 ([1-6])\d\d ")


@dataclass
class FuzzConfig:
    """What to send.

    :param sip: SIP messages to send.
    :param ws: WebSocket frames to send.
    :param seed: the generators' seed.
    :param tcp_share: the share of SIP messages sent over TCP.
    :param window: UDP messages in flight at most.
    :param check_every: SIP messages between liveness checks.
    :param ws_sockets: WebSocket sockets at once.
    :param protos_step: take every n-th PROTOS case as a seed (1: all).
    :param progress: print a line at each check.
    """

    sip: int
    ws: int
    seed: int = 1
    tcp_share: float = 0.1
    window: int = 32
    check_every: int = 5000
    ws_sockets: int = 8
    protos_step: int = 1
    progress: bool = False


@dataclass
class Finding:
    """One kind of error the engine logged: how often, and the first one."""

    count: int
    example: str


@dataclass
class FuzzReport:
    sip_udp: int = 0
    sip_tcp: int = 0
    tcp_connections: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    ws_sent: int = 0
    ws_received: Counter[str] = field(default_factory=Counter)
    ws_connections: int = 0
    ws_closed_by_engine: int = 0
    checks: int = 0
    failed_checks: list[str] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    exited: int | None = None  #: exit code, when the engine died during the run
    stop_code: int | None = None  #: exit code after SIGTERM at the end
    findings: dict[str, Finding] = field(default_factory=dict)
    #: ``scenario X failed: CallError ...``: a shipped scenario acting on a
    #: call the caller already left (answer after CANCEL, reject after BYE).
    #: No traceback, nothing the engine failed at; reported, not fatal.
    scenario_errors: dict[str, Finding] = field(default_factory=dict)
    seconds: float = 0.0
    log_path: Path | None = None

    @property
    def crashed(self) -> bool:
        return self.exited is not None or self.stop_code not in (0, None)

    @property
    def ok(self) -> bool:
        return not self.crashed and not self.findings and not self.failed_checks

    def summary(self) -> str:
        sent = self.sip_udp + self.sip_tcp
        rate = sent / self.seconds if self.seconds else 0.0
        rss = self.rss_kb or [0]
        lines = [
            f"SIP messages sent: {sent} ({self.sip_udp} UDP, {self.sip_tcp} TCP in {self.tcp_connections} connections)"
            f" in {self.seconds:.0f} s: {rate:.0f}/s",
            "SIP answers: " + (", ".join(f"{k}: {v}" for k, v in sorted(self.answers.items())) or "none"),
            f"WebSocket frames sent: {self.ws_sent} over {self.ws_connections} connections"
            f" ({self.ws_closed_by_engine} closed by the engine)",
            "WebSocket frames received: " + (", ".join(f"{k}: {v}" for k, v in self.ws_received.most_common(12)) or "none"),
            f"liveness checks: {self.checks} ({len(self.failed_checks)} failed)",
            f"RSS: start {rss[0] // 1024} MB, peak {max(rss) // 1024} MB, end {rss[-1] // 1024} MB",
            f"crashes: {1 if self.crashed else 0}"
            + (f" (exited with {self.exited} during the run)" if self.exited is not None else "")
            + (f" (exit code {self.stop_code} at SIGTERM)" if self.stop_code not in (0, None) else ""),
            f"findings (error lines and tracebacks in the engine's stderr): {sum(f.count for f in self.findings.values())}"
            f" in {len(self.findings)} group(s)",
        ]
        lines.append(f"scenario CallErrors (caller gone before the scenario acted): "
                     f"{sum(f.count for f in self.scenario_errors.values())}")
        for signature, finding in sorted(self.scenario_errors.items(), key=lambda kv: -kv[1].count):
            lines.append(f"  {finding.count} x {signature}")
        for failure in self.failed_checks[:10]:
            lines.append(f"  failed check: {failure}")
        for signature, finding in sorted(self.findings.items(), key=lambda kv: -kv[1].count):
            lines.append(f"  {finding.count} x {signature}")
            lines += ["      " + ln for ln in finding.example.splitlines()[-12:]]
        if self.log_path and not self.ok:
            lines.append(f"engine stderr: {self.log_path}")
        return "\n".join(lines)


def scan_log(text: str) -> dict[str, Finding]:
    """Group the engine's error lines and tracebacks by message and exception
    (numbers and ids blanked), keeping the first of each group."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("ts="):
            records.append([line])
        elif records:
            records[-1].append(line)
        else:
            records.append([line])
    found: dict[str, Finding] = {}
    for record in records:
        head = record[0]
        if head.startswith("ts=") and not re.search(r"level=(error|critical)", head) and not any(
                "Traceback" in ln for ln in record):
            continue
        msg = re.search(r'msg="(.*)"$', head)
        text_ = msg.group(1) if msg else head
        exc = next((ln for ln in reversed(record) if ln and not ln.startswith(" ")), "") if len(record) > 1 else ""
        where = next((ln.strip() for ln in reversed(record) if ln.strip().startswith("File ")), "")
        signature = re.sub(r"0x[0-9a-f]+|\b[0-9a-f]{6,}\b|\d+", "N", f"{text_} | {exc} | {where}")[:300]
        if signature in found:
            found[signature].count += 1
        else:
            found[signature] = Finding(1, "\n".join(record)[:4000])
    return found


class _Sip(asyncio.DatagramProtocol):
    """The fuzzer's UDP socket: counts answers, answers the engine's requests."""

    def __init__(self, report: FuzzReport, fuzzer: SipFuzzer) -> None:
        self.report = report
        self.fuzzer = fuzzer
        self.transport: asyncio.DatagramTransport | None = None
        self.in_flight = 0
        self.answered = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.startswith(b"SIP/2.0 "):
            self.report.answers[f"{data[8:9].decode(errors='replace')}xx"] += 1
            self.fuzzer.learn(data)
        else:
            self.report.answers["requests from the engine"] += 1
            if not data.startswith(b"ACK ") and self.transport:
                self.transport.sendto(_ok_for(data), addr)
        self.in_flight = max(0, self.in_flight - 1)
        self.answered.set()

    def error_received(self, exc: Exception) -> None:
        pass


def _ok_for(request: bytes) -> bytes:
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    keep = [ln for ln in head[1:] if re.match(rb"(?i)(via|v|from|f|to|t|call-id|i|cseq)\s*:", ln)]
    return b"\r\n".join([b"SIP/2.0 200 OK", *keep, b"Content-Length: 0"]) + b"\r\n\r\n"


class _Options(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.answers.put_nowait(data)


async def _options_answered(port: int, n: int) -> bool:
    """An OPTIONS from a fresh socket gets 200 (three tries, 2 s each)."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Options, local_addr=("127.0.0.1", 0))
    try:
        local = transport.get_extra_info("sockname")[1]
        for attempt in range(3):
            msg = (f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-alive{n}-{attempt};rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:alive@127.0.0.1>;tag=a{n}\r\nTo: <sip:ping@127.0.0.1>\r\n"
                   f"Call-ID: alive-{n}-{attempt}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
            transport.sendto(msg, ("127.0.0.1", port))
            try:
                while True:
                    data = await asyncio.wait_for(proto.answers.get(), 2.0)
                    if data.startswith(b"SIP/2.0 200"):
                        return True
            except asyncio.TimeoutError:
                continue
        return False
    finally:
        transport.close()


class _Run:
    def __init__(self, config: FuzzConfig, serve: ServeProcess, report: FuzzReport) -> None:
        self.config = config
        self.serve = serve
        self.report = report
        self.rng = random.Random(config.seed ^ 0x5EED)
        self.tcp_slots = asyncio.Semaphore(8)
        self.tasks: set[asyncio.Task[None]] = set()
        self.dead = False
        self.started = time.monotonic()

    async def check(self, n: int) -> None:
        report = self.report
        report.checks += 1
        code = self.serve.proc.poll()
        if code is not None:
            report.exited = code
            self.dead = True
            return
        if not await _options_answered(self.serve.sip_port, n):
            report.failed_checks.append(f"after {n} SIP messages: OPTIONS not answered")
        status = await asyncio.to_thread(self.serve.healthz, 5.0)
        if status != 200:
            report.failed_checks.append(f"after {n} SIP messages: /healthz {status}")
        report.rss_kb.append(self.serve.rss_kb())
        if self.config.progress:
            elapsed = time.monotonic() - self.started
            print(f"  {n} SIP ({n / elapsed:.0f}/s), {report.ws_sent} WS, RSS {report.rss_kb[-1] // 1024} MB, "
                  f"answers {dict(report.answers)}", flush=True)

    async def sip(self, fuzzer: SipFuzzer) -> None:
        config, report = self.config, self.report
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(lambda: _Sip(report, fuzzer),
                                                               local_addr=("127.0.0.1", 0))
        udp_port = transport.get_extra_info("sockname")[1]
        target = ("127.0.0.1", self.serve.sip_port)
        try:
            n = 0
            while n < config.sip and not self.dead:
                if self.rng.random() < config.tcp_share / 4:  # a batch averages 4 messages
                    count = self.rng.randint(1, min(7, config.sip - n))  # never past the budget
                    await self.tcp_slots.acquire()
                    task = asyncio.create_task(self.tcp_batch(fuzzer, count))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                    n += count
                else:
                    while proto.in_flight >= config.window:
                        proto.answered.clear()
                        try:
                            await asyncio.wait_for(proto.answered.wait(), 0.02)
                        except asyncio.TimeoutError:
                            proto.in_flight = config.window // 2
                    fuzzer.port = udp_port
                    msg = fuzzer.message("UDP")[:65000]
                    transport.sendto(msg, target)
                    proto.in_flight += 1
                    report.sip_udp += 1
                    n += 1
                if n // config.check_every != (n - 1) // config.check_every or n >= config.sip:
                    await self.check(n)
            if self.tasks:
                await asyncio.gather(*self.tasks)
            await asyncio.sleep(0.5)  # the last answers
        finally:
            transport.close()

    async def tcp_batch(self, fuzzer: SipFuzzer, count: int) -> None:
        report = self.report
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.serve.sip_port)
        except OSError as exc:
            report.failed_checks.append(f"TCP connect failed: {exc}")
            self.tcp_slots.release()
            return
        try:
            report.tcp_connections += 1
            fuzzer.port = writer.get_extra_info("sockname")[1]
            stream = b"".join(fuzzer.message("TCP") for _ in range(count))
            report.sip_tcp += count
            cuts = sorted(self.rng.randrange(len(stream) + 1) for _ in range(self.rng.choice((0, 1, 3))))
            pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                if len(pieces) > 1:
                    await asyncio.sleep(0.002)
            received = b""
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), 0.3)
                except asyncio.TimeoutError:
                    break
                if not chunk:
                    break
                received += chunk
            for m in _STATUS.finditer(received):
                report.answers[f"{m.group(1).decode()}xx"] += 1
        except (OSError, asyncio.IncompleteReadError):
            pass  # the engine may close a connection that sent garbage
        finally:
            writer.close()
            self.tcp_slots.release()

    async def ws(self) -> None:
        config = self.config
        budget = [config.ws]
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self.ws_socket(session, i, budget) for i in range(config.ws_sockets)))

    async def ws_socket(self, session: aiohttp.ClientSession, index: int, budget: list[int]) -> None:
        report = self.report
        fuzzer = WsFuzzer(self.config.seed * 1000 + index)
        rng = random.Random(self.config.seed * 1000 + index + 1)
        url = f"http://127.0.0.1:{self.serve.http_port}/ws"
        failures = 0
        while budget[0] > 0 and not self.dead:
            try:
                ws = await session.ws_connect(url, max_msg_size=0, autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=2))
            except (aiohttp.ClientError, OSError) as exc:
                failures += 1
                if failures >= 20:
                    report.failed_checks.append(f"WebSocket connect failed 20 times: {exc!r}")
                    return
                await asyncio.sleep(0.2)
                continue
            report.ws_connections += 1
            pong = asyncio.Event()
            reader = asyncio.create_task(self.ws_read(ws, pong))
            try:
                frames: list[str | bytes] = list(fuzzer.opening())
                sent_here = 0
                while budget[0] > 0 and not ws.closed:
                    frame = frames.pop(0) if frames else fuzzer.frame()
                    budget[0] -= 1
                    report.ws_sent += 1
                    sent_here += 1
                    try:
                        if isinstance(frame, bytes):
                            await ws.send_bytes(frame)
                        else:
                            await ws.send_str(frame)
                        if sent_here % 16 == 0:
                            pong.clear()
                            await ws.send_str(json.dumps({"type": "ping", "ts": sent_here}))
                            try:
                                await asyncio.wait_for(pong.wait(), 5.0)
                            except asyncio.TimeoutError:
                                if not ws.closed:
                                    report.failed_checks.append("WebSocket: no pong within 5 s")
                    except (aiohttp.ClientError, ConnectionError, RuntimeError):
                        break
                    if rng.random() < 1 / 300:
                        break  # start over: hello, login, new calls
            finally:
                if ws.closed and ws.close_code not in (None, 1000):
                    report.ws_closed_by_engine += 1
                await ws.close()
                await reader

    async def ws_read(self, ws: aiohttp.ClientWebSocketResponse, pong: asyncio.Event) -> None:
        received = self.report.ws_received
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                frame = json.loads(msg.data)
                kind = frame.get("type", "?")
                if kind == "error":
                    kind = f"error {frame.get('code')}"
            except (ValueError, AttributeError):
                kind = "unparseable"
            received[kind] += 1
            if kind == "pong":
                pong.set()


async def run_fuzz(config: FuzzConfig, workdir: Path | None = None) -> FuzzReport:
    """Start ``callbridge serve``, send what ``config`` says, stop it with
    SIGTERM, and report (the engine's stderr stays in ``workdir``)."""
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="callbridge-fuzz-"))
    seeds = load_seeds(protos_step=config.protos_step)
    serve = ServeProcess(workdir, ["--rules", str(ROOT / "rules.yaml"), "--scenarios", str(ROOT / "scenarios"),
                                   "--trusted", "127.0.0.1", "--log-level", "error", "--rtp-ports", "20000-60000"])
    report = FuzzReport(log_path=serve.log_path)
    started = time.monotonic()
    try:
        await asyncio.to_thread(serve.wait_healthy, 30.0)
        report.rss_kb.append(serve.rss_kb())
        run = _Run(config, serve, report)
        fuzzer = SipFuzzer(config.seed, seeds, "127.0.0.1", 0, f"127.0.0.1:{serve.sip_port}")
        await asyncio.gather(run.sip(fuzzer), run.ws())
        if not run.dead:
            await run.check(config.sip)
    finally:
        report.seconds = time.monotonic() - started
        report.stop_code = await asyncio.to_thread(serve.stop)
    for signature, finding in scan_log(serve.log_path.read_text(errors="replace")).items():
        scenario = signature.startswith("scenario ") and "failed: CallError" in signature and " | " + " | " in signature
        (report.scenario_errors if scenario else report.findings)[signature] = finding
    return report
