"""bench/call_paths: what one call costs the engine in CPU, in one quiet
process, next to the bare UAS probe driven the same way.

``bench/sip_cps.py`` finds the rate the engine holds against sipp, and the
CPU per call it implies moves by 4% and more from run to run (sipp and the
engine share the two cores, and the kernel's loopback delivery lands on
either): too much to see a change of a few per cent in the engine. This
bench runs the engine (:class:`~engine.server.Engine`, uvloop, the
collector tuned as ``serve`` tunes it, ``scenarios/answer_hangup.py``: a
session, a dialog, answer with SDP, a media session, 1 s, BYE) and a small
UAC in one process and measures the process's CPU time per call at a
steady rate below the engine's capacity. The UAC is a few byte-string
templates: INVITE with SDP; ACK to the 200; 200 to the engine's BYE.

The baseline, in the same run: the same UAC against
:class:`bench/uas_probe.ProbeProtocol` (no parsing, no state; the UAC sends
the BYE itself after the same second). ``probe`` is then what the UAC and
Python's datagram round trips cost a call, and ``engine - probe`` what the
engine adds. The modes alternate ``--repeat`` times and the lowest figure of
each is kept (noise only ever adds).

With ``--profile`` one more engine run is made under :mod:`cProfile`, and
the time of the calls is printed by area (parsing, transactions, the
session...): shares, since the profiler itself slows Python calls down.

``--instructions`` counts instead of timing: each mode runs under valgrind
(no cache simulation, hash seed fixed) for 50 calls and twice for 450, at
10 calls/s, and the difference over 400 calls is printed: exact to about
2%, where timing moves by 5% here. Minutes, not seconds.

Usage: ``./run.sh bench call_paths [--calls 3000] [--rate 300] [--repeat 3] [--profile] [--instructions]``.
Bounded: each run lasts ``calls / rate`` seconds plus the second of the
last call, and gives up after ``calls / rate + 30`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import valgrind  # noqa: E402  (bench/valgrind.py)
from uas_probe import ProbeProtocol, reply  # noqa: E402  (bench/uas_probe.py)

HOLD = 1.0  # seconds between the 200 and the BYE, as answer_hangup holds
SDP = (b"v=0\r\no=uac 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")

#: Where the profiled time goes, by the first matching piece of the file name.
AREAS: list[tuple[str, str]] = [
    ("engine/sip/parser", "parsing"), ("engine/sip/headers", "parsing"),
    ("engine/sip/message", "parsing"), ("engine/sip/uri", "parsing"),
    ("engine/sip/transaction", "transactions"),
    ("engine/sip/dialog", "dialog + INVITE session"), ("engine/sip/invite_session", "dialog + INVITE session"),
    ("engine/sip/sdp", "SDP"), ("engine/sip/offer_answer", "SDP"),
    ("engine/sip/", "SIP, other"),
    ("engine/transport/sip_endpoint", "SIP transport"), ("engine/transport/admission", "SIP transport"),
    ("engine/transport/overload", "SIP transport"),
    ("engine/transport/rtp", "media"), ("engine/transport/rtcp", "media"), ("engine/media/", "media"),
    ("engine/calls/sip_media", "media"), ("engine/calls/rtp_stream", "media"),
    ("engine/calls/", "calls"),
    ("engine/runtime/records", "call records + metrics"), ("engine/web/metrics", "call records + metrics"),
    ("engine/state/store", "call records + metrics"), ("json/", "call records + metrics"),
    ("engine/runtime/", "scenario runtime"), ("engine/scenario", "scenario runtime"),
    ("scenarios/", "scenario runtime"),
    ("pyee/", "pyee"), ("logging/", "logging"),
    ("engine/entropy", "entropy"), ("secrets", "entropy"),
    ("engine/", "engine, other"),
    ("bench/", "the UAC"),
    ("asyncio/", "asyncio"), ("uvloop", "asyncio"),
]


class Uac(asyncio.DatagramProtocol):
    """Places ``calls`` calls at ``rate`` a second to ``target``; ACKs each
    200 to an INVITE; answers BYE with 200, or (``send_bye``) sends the BYE
    itself ``HOLD`` seconds after the 200. ``done`` is set when every call
    ended (its BYE answered) and ``failed`` counts the unexpected."""

    def __init__(self, target: tuple[str, int], calls: int, rate: float, send_bye: bool) -> None:
        self.target = target
        self.calls = calls
        self.rate = rate
        self.send_bye = send_bye
        self.placed = 0
        self.ended = 0
        self.failed: list[str] = []
        self.done = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None
        self.local = b""
        self._started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = b"%s:%d" % (host.encode(), port)

    def start(self) -> None:
        self._started = asyncio.get_running_loop().time()
        self._place()

    def _place(self) -> None:
        """Place the calls due by now, then come back at the next one's time."""
        loop = asyncio.get_running_loop()
        # uvloop's timers have millisecond resolution and may fire that early
        due = min(self.calls, int((loop.time() - self._started + 0.001) * self.rate) + 1)
        while self.placed < due:
            self.placed += 1
            self._invite(self.placed)
        if self.placed < self.calls:
            loop.call_at(self._started + self.placed / self.rate, self._place)

    def _head(self, method: bytes, n: int, branch: bytes, cseq: int, to: bytes) -> bytes:
        host, port = self.target
        return (b"%s sip:bench@%s:%d SIP/2.0\r\n"
                b"Via: SIP/2.0/UDP %s;branch=z9hG4bK-%d-%s;rport\r\n"
                b"From: uac <sip:uac@%s>;tag=%duac\r\n%s\r\n"
                b"Call-ID: %d-call-paths@127.0.0.1\r\nCSeq: %d %s\r\n"
                b"Contact: <sip:uac@%s>\r\nMax-Forwards: 70\r\n"
                % (method, host.encode(), port, self.local, n, branch, self.local, n, to,
                   n, cseq, method, self.local))

    def _invite(self, n: int) -> None:
        assert self.transport is not None
        host, port = self.target
        to = b"To: <sip:bench@%s:%d>" % (host.encode(), port)
        head = self._head(b"INVITE", n, b"i", 1, to)
        self.transport.sendto(head + b"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(SDP), SDP), self.target)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        assert self.transport is not None
        if data.startswith(b"SIP/2.0 "):
            status = data[8:11]
            if status == b"100" or status == b"180":
                return
            call_id = _line(data, b"Call-ID:").split(b":", 1)[1].strip()
            n = int(call_id.split(b"-", 1)[0])
            cseq = _line(data, b"CSeq:")
            if status == b"200" and cseq.endswith(b"INVITE"):
                to = _line(data, b"To:")
                self.transport.sendto(self._head(b"ACK", n, b"a", 1, to) + b"Content-Length: 0\r\n\r\n",
                                      self.target)
                if self.send_bye:
                    asyncio.get_running_loop().call_later(HOLD, self._bye, n, to)
            elif status == b"200" and cseq.endswith(b"BYE") and self.send_bye:
                self._end()
            else:
                self.failed.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
                self._end()
        elif data.startswith(b"BYE "):
            self.transport.sendto(reply(data, b"200 OK"), addr)
            self._end()
        else:
            self.failed.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))

    def _bye(self, n: int, to: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(self._head(b"BYE", n, b"b", 2, to) + b"Content-Length: 0\r\n\r\n", self.target)

    def _end(self) -> None:
        self.ended += 1
        if self.ended >= self.calls:
            self.done.set()


def _line(data: bytes, name: bytes) -> bytes:
    """The header line ``name`` (as the engine and the probe write it) of ``data``."""
    start = data.find(b"\r\n" + name)
    if start < 0:
        raise ValueError(f"no {name.decode()} line in {data[:80]!r}")
    end = data.find(b"\r\n", start + 2)
    return data[start + 2:end]


async def _drive(target: tuple[str, int], calls: int, rate: float, send_bye: bool,
                 profile: cProfile.Profile | None = None) -> tuple[float, Uac]:
    """Run ``calls`` calls to ``target``; the process's CPU seconds they took."""
    loop = asyncio.get_running_loop()
    transport, uac = await loop.create_datagram_endpoint(
        lambda: Uac(target, calls, rate, send_bye), local_addr=("127.0.0.1", 0))
    try:
        await asyncio.sleep(0.2)
        cpu0 = time.process_time()
        if profile is not None:
            profile.enable()
        uac.start()
        try:
            await asyncio.wait_for(uac.done.wait(), calls / rate + HOLD + 30)
        except asyncio.TimeoutError:
            raise RuntimeError(f"only {uac.ended} of {calls} calls ended in time "
                               f"({len(uac.failed)} failed: {uac.failed[:3]})") from None
        await asyncio.sleep(0.05)  # the last 200 to a BYE, handled
        if profile is not None:
            profile.disable()
        cpu = time.process_time() - cpu0
    finally:
        transport.close()
    if uac.failed:
        raise RuntimeError(f"{len(uac.failed)} of {calls} calls failed: {uac.failed[:3]}")
    return cpu, uac


async def run_probe(calls: int, rate: float) -> float:
    """CPU seconds of ``calls`` calls against the bare probe, in this process."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: ProbeProtocol(0), local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        cpu, _ = await _drive(("127.0.0.1", port), calls, rate, send_bye=True)
    finally:
        transport.close()
    return cpu


async def run_engine(calls: int, rate: float, workdir: Path, profile: cProfile.Profile | None = None,
                     overload: bool = True) -> float:
    """CPU seconds of ``calls`` calls against an engine started in this process."""
    from engine.cli import _tune_gc
    from engine.transport.admission import SecurityPolicy
    from engine.server import Engine, EngineConfig

    workdir.mkdir(parents=True, exist_ok=True)
    rules = workdir / "rules.yaml"
    rules.write_text("rules:\n  - {name: Bench, pattern: \"bench\", scenarios: [answer_hangup]}\n")
    config = EngineConfig(sip_hosts=["127.0.0.1"], sip_port=0, http_port=0, sip_tls_port=0,
                          rules=rules, scenarios=ROOT / "scenarios", data_dir=workdir / "data",
                          rtp_port_start=20000, rtp_port_end=60000,
                          policy=SecurityPolicy(trusted=frozenset({"127.0.0.1"}),
                                                overload_probe=SecurityPolicy.overload_probe if overload else 0.0))
    engine = Engine(config)
    await engine.start()
    try:
        _tune_gc()
        cpu, _ = await _drive(("127.0.0.1", engine.ua.port), calls, rate, send_bye=False, profile=profile)
    finally:
        await engine.stop()
    return cpu


def areas(profile: cProfile.Profile) -> dict[str, float]:
    """Seconds of own time by area (:data:`AREAS`), from ``profile``."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    out: dict[str, float] = {}
    for (filename, _line_no, func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = filename.replace("\\", "/")
        area = next((a for piece, a in AREAS if piece in name), None)
        if area is None:
            area = "asyncio" if name == "~" and "loop" in func.lower() else "builtins, other"
        out[area] = out.get(area, 0.0) + tottime
    return out


def instructions(mode: str, calls: int, rate: float) -> int:
    """Instructions the whole process runs for ``calls`` calls of ``mode``,
    counted by valgrind (``bench/valgrind.py``)."""
    found, _ = valgrind.count([__file__, "--only", mode, "--calls", str(calls), "--rate", str(rate),
                               "--overload", "off"], mode, calls / rate + 300)
    return found


def count_instructions(small: int, large: int, rate: float) -> dict[str, float]:
    """Instructions a call of each mode: the difference of a run of
    ``large`` calls and one of ``small``, over ``large - small`` (start-up
    and shut-down cancel out). The large run is made twice and the lower
    count kept: a one-off that depends on timing (the store writing a
    batch, a collection of the older generations) lands in some runs only."""
    out: dict[str, float] = {}
    for mode in ("probe", "engine"):
        a = instructions(mode, small, rate)
        b1, b2 = instructions(mode, large, rate), instructions(mode, large, rate)
        b = min(b1, b2)
        out[mode] = (b - a) / (large - small)
        print(f"{mode}: {a:,} instructions for {small} calls, {b1:,} and {b2:,} for {large}: "
              f"{out[mode]:,.0f} a call", flush=True)
    return out


def _loop_run(main: Callable[[], Any]) -> Any:
    try:
        import uvloop
    except ImportError as exc:  # serve uses uvloop when installed; so does this bench
        raise RuntimeError("uvloop is not installed: ./run.sh bench installs it") from exc
    return uvloop.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=300.0, help="calls a second (keep it well below capacity)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode, alternated; the lowest kept")
    parser.add_argument("--profile", action="store_true", help="one more engine run under cProfile, by area")
    parser.add_argument("--only", choices=("engine", "probe"),
                        help="run one mode once and print its CPU a call (for valgrind and A/B scripts)")
    parser.add_argument("--overload", choices=("on", "off"), default="on",
                        help="the engine's overload refusal (off under valgrind, whose slowness it would refuse)")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions a call under valgrind instead of timing (exact, slow: minutes)")
    args = parser.parse_args()
    if args.instructions:
        from results import figure, save  # bench/results.py

        counts = count_instructions(50, 450, 10.0)
        p, e = counts["probe"], counts["engine"]
        print(f"bench/call_paths: instructions a call (valgrind), 400 calls at 10/s")
        print(f"  probe  (UAC + bare UAS)  {p:12,.0f}")
        print(f"  engine (UAC + engine)    {e:12,.0f}")
        print(f"  the engine adds          {e - p:12,.0f}; engine / probe {e / p:.2f}x")
        save("call_paths_instructions", {
            "engine_instructions_per_call": figure(e, "instructions", "lower"),
            "probe_instructions_per_call": figure(p, "instructions", "lower"),
            "engine_added_instructions_per_call": figure(e - p, "instructions", "lower"),
            "ratio_engine_probe": figure(e / p, "x", "lower"),
        }, {"small": 50, "large": 450, "rate": 10.0})
        return 0
    if args.calls < 10 or args.rate <= 0 or args.repeat < 1:
        parser.error("--calls at least 10, --rate above 0, --repeat at least 1")
    gc.collect()
    if args.only is not None:
        with tempfile.TemporaryDirectory(prefix="call_paths-") as tmp:
            run = (lambda: run_engine(args.calls, args.rate, Path(tmp), overload=args.overload == "on")) \
                if args.only == "engine" \
                else (lambda: run_probe(args.calls, args.rate))
            print(f"{args.only} {_loop_run(run) / args.calls * 1e6:.1f} us a call")
        return 0
    probe: list[float] = []
    engine: list[float] = []
    with tempfile.TemporaryDirectory(prefix="call_paths-") as tmp:
        for i in range(args.repeat):
            probe.append(_loop_run(lambda: run_probe(args.calls, args.rate)) / args.calls * 1e6)
            engine.append(_loop_run(lambda: run_engine(args.calls, args.rate, Path(tmp) / f"e{i}"))
                          / args.calls * 1e6)
            print(f"run {i + 1}: probe {probe[-1]:7.1f} us a call, engine {engine[-1]:7.1f}", flush=True)
        shares: dict[str, float] = {}
        if args.profile:
            prof = cProfile.Profile()
            # the profiler slows every call down; the overload guard would refuse what it slows
            _loop_run(lambda: run_engine(args.calls, args.rate, Path(tmp) / "profiled", prof, overload=False))
            shares = areas(prof)
    p, e = min(probe), min(engine)
    print(f"bench/call_paths: CPU a call, {args.calls} calls at {args.rate:g}/s, lowest of {args.repeat}")
    print(f"  probe  (UAC + bare UAS)  {p:8.1f} us   (runs {', '.join(f'{v:.1f}' for v in probe)})")
    print(f"  engine (UAC + engine)    {e:8.1f} us   (runs {', '.join(f'{v:.1f}' for v in engine)})")
    print(f"  the engine adds          {e - p:8.1f} us a call; engine / probe {e / p:.2f}x")
    if shares:
        total = sum(shares.values())
        print("  profiled (cProfile; shares of the profiled time, the UAC included):")
        for area, secs in sorted(shares.items(), key=lambda kv: -kv[1]):
            print(f"    {area:<26} {secs / total * 100:5.1f}%")
    from results import figure, save  # bench/results.py

    save("call_paths", {
        "engine_us_per_call": figure(e, "us", "lower"),
        "probe_us_per_call": figure(p, "us", "lower"),
        "engine_added_us_per_call": figure(e - p, "us", "lower"),
        "ratio_engine_probe": figure(e / p, "x", "lower"),
        "engine_spread": figure((max(engine) - e) / e if len(engine) > 1 else 0.0, "x", "lower"),
    }, {"calls": args.calls, "rate": args.rate, "repeat": args.repeat,
        "median_engine_us": statistics.median(engine)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
