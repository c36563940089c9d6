"""bench/media: many concurrent G.711 legs mixed in conferences, against a bare UDP echo.

Runs in one go, on this machine, two servers over the same number of UDP
sockets on 127.0.0.1, each driven by the same load generator (its own
process, an epoll loop like ``../shared/probes/echo_probe.py``'s client)
sending one 172-byte RTP packet per leg every 20 ms:

1. *echo*: the baseline. A bare uvloop ``DatagramProtocol`` per socket
   that sends every datagram back. Its CPU per packet (in + out) is what
   Python plus uvloop cost for the packet rate alone, so
   ``1 / (CPU per packet)`` is the packet-rate ceiling of one core. It
   runs before the engine and again after it, and the engine is compared
   with the mean of the two: this machine's speed moves by a fifth and
   more within minutes (the echo measured 8.2 and 9.7 us a packet in two
   runs a few minutes apart), and the drift between the two echo phases
   is printed, so a ratio measured while the machine changed speed shows
   as such.
2. *engine*: every leg a real :class:`~engine.calls.rtp_stream.MediaSession`
   on an :class:`~engine.transport.rtp_socket.RtpPortAllocator` socket
   (PCMU, latch, jitter buffer, decoder, encoder, RTP sender), joined to
   conferences of varied size (one of ``--big`` parties, the rest
   ``--sizes`` at random) of one real :class:`~engine.calls.conference.MediaGraph`
   (its :class:`~engine.media.bridge.Bridge` mixing) ticked by the engine's :class:`~engine.media.clock.MediaClock`
   under uvloop, as ``callbridge serve`` runs it (frames paced onto the
   grid by :class:`~engine.transport.rtp_pace.TickPacer`, serve's default).

The generator sends each leg a tone of its own (µ-law), reads what comes
back with the kernel's receive timestamp (``SO_TIMESTAMPNS``, so its own
scheduling does not count) and measures:

- *dropped frames*: 20 ms ticks of the engine's clock inside the measured
  window for which a leg got no frame;
- *lateness*: when each frame arrived after the tick it belongs to was due
  on the engine's 20 ms grid (p50/p99/max over all frames of all legs);
- *inbound frames concealed and discarded*: the engine's jitter buffers'
  counts of frames they had no packet for, though the generator sent every
  one (a stall caught up badly, or a read backlog, shows here first), and
  of frames they dropped to cut their delay (each an audible cut);
- *mixing is real*: for a sample of legs, one second of what they heard is
  checked by Goertzel, each half second alone: every other member's tone
  present in one half at least, their own absent from both (a frame cut
  midway, as each leg's jitter buffer cuts one when its delay first
  shrinks, shifts the tone's phase, and a whole second's level fell below
  half for a tenth of a 100-party conference's tones in 2 runs of 12);
- *the generator's own lateness*: how late, against its schedule, it began
  sending each millisecond's packets inside the window; frames it sent
  late reach the engine late through no fault of the engine's.

The engine process reports its CPU (``getrusage``) per leg, the clock's
own wake-up lateness, and per tick the time spent pulling (receive side:
jitter buffer + decode), mixing (the two flow stages) and pushing (encode
+ RTP + ``sendto``); then it times one conference's mix alone for several
sizes (100 included).

With ``--rounds N`` the engine and the echo run N times, alternated (echo,
engine, echo, engine, ... echo): the first round is reported in full as
above, the others by their CPU a packet, and each engine phase is compared
with the mean of the echo phases on either side of it. The ratios and
their median are printed: one engine phase against one echo moves by a
tenth and more from run to run here (the machine changes speed within
minutes), and the median of a few rounds is what says whether a change
moved the engine.

With ``--stall MS`` the engine's loop is blocked once, a second before the
window (a long collector pass, a slow handler, the host taking the core):
the window then shows whether the engine got back to on-time frames.

With ``--silence-suppression`` the graph runs the engine's silence
suppression (:mod:`engine.media.dtx`) and each leg has CN negotiated (as a
phone that offers it): with ``--idle``, what nobody speaking costs then.

Usage: ``./run.sh bench media [--legs 1000] [--seconds 10] [--big 100]
[--sizes 3-10] [--only echo|engine|janus] [--janus] [--profile] [--metrics]
[--idle silence|nothing] [--silence-suppression] [--send-workers N]
[--media-pacing on|off] [--stall MS] [--rounds N]``
(or ``python bench/media.py ...``). Every run is bounded: the generator
stops after ``--warmup + --seconds`` and every process is joined with a
timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import random
import resource
import select
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.media.codecs.g711 import ULAW_DECODE, ULAW_ENCODE  # noqa: E402
from engine.transport.overload import OverloadBounds  # noqa: E402

RATE = 8000
#: The overload detector's default media bound (bytes queued on the median leg)...
MEDIA_BACKLOG = OverloadBounds().media_backlog
#: ... and its late-legs bound (a share of the legs).
LATE_LEGS = OverloadBounds().late_legs
FRAME = 160
TICK = 0.020
SLOTS = 20  # send phases per 20 ms
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: SCM_TIMESTAMPNS == SO_TIMESTAMPNS
_RTP = struct.Struct("!BBHII")
_TIMESPEC = struct.Struct("@qq")


# -- the plan: conferences and tones ------------------------------------------------


@dataclass
class Plan:
    sizes: list[int]          # conference sizes, legs numbered in order
    conf_of: list[int]        # leg -> conference
    freq: list[float]         # leg -> its tone (Hz, integer: periodic in one second)
    amp: list[float]          # leg -> its tone's amplitude


def make_plan(legs: int, big: int, lo: int, hi: int, seed: int = 1) -> Plan:
    """One conference of ``big`` (if that many legs), the rest ``lo..hi`` at random."""
    rng = random.Random(seed)
    sizes: list[int] = []
    left = legs
    if big and left >= big:
        sizes.append(big)
        left -= big
    while left > 0:
        size = min(left, rng.randint(lo, hi))
        if left - size < lo and left - size > 0:  # no conference smaller than lo at the end
            size = left if left <= hi else left - lo
        sizes.append(size)
        left -= size
    conf_of, freq, amp = [], [], []
    for ci, size in enumerate(sizes):
        for j in range(size):
            conf_of.append(ci)
            if size > 12:  # 30 Hz apart from 300 Hz; quiet enough that 99 of them never clip
                freq.append(300.0 + 30 * j)
                amp.append(min(1500.0, 25000.0 / size))
            else:
                freq.append(400.0 + 200 * j)
                amp.append(1500.0)
    return Plan(sizes, conf_of, freq, amp)


def tone_payloads(freq: float, amp: float) -> list[bytes]:
    """One second of a tone as 50 PCMU payloads (integer Hz: loops seamlessly)."""
    t = np.arange(RATE) / RATE
    pcm = np.rint(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    codes = ULAW_ENCODE[pcm.view(np.uint16)]
    return [codes[i * FRAME:(i + 1) * FRAME].tobytes() for i in range(RATE // FRAME)]


def level(pcm: np.ndarray, freq: float) -> float:
    """Amplitude of ``freq`` in ``pcm`` (one Goertzel/DFT bin)."""
    t = np.arange(pcm.size) / RATE
    return float(abs(np.dot(pcm.astype(np.float64), np.exp(-2j * np.pi * freq * t))) * 2 / pcm.size)


# -- the load generator ----------------------------------------------------------------


def generator(conn: Connection, plan: Plan, sample: list[int], record: bool,
              idle: str | None = None) -> None:
    """Send each leg its tone at 50 packets/s (``idle``: ``"silence"``, µ-law
    silence instead; ``"nothing"``, no packets); receive and timestamp what
    comes back. Its ports go to the server first (Janus must know where to
    send before it names its own ports), then it connects each leg's socket
    to the server's port it is given."""
    socks = []
    for _ in plan.conf_of:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        if record:
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        socks.append(s)
    conn.send([s.getsockname()[1] for s in socks])
    for s, port in zip(socks, conn.recv()):
        s.connect(("127.0.0.1", port))
    conn.send("connected")
    start, stop_send, stop_recv = conn.recv()
    cache: dict[tuple[float, float], list[bytes]] = {}
    for key in zip(plan.freq, plan.amp):
        if key not in cache:
            cache[key] = tone_payloads(*key)
    payloads = [cache[key] for key in zip(plan.freq, plan.amp)]
    if idle:
        payloads = [[b"\xff" * FRAME] * 50 for _ in payloads]
    rng = random.Random(7)
    ssrc = [rng.getrandbits(32) for _ in socks]
    seq0 = [rng.getrandbits(16) for _ in socks]
    ts0 = [rng.getrandbits(32) for _ in socks]
    fd_leg = {s.fileno(): i for i, s in enumerate(socks)}
    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    arrivals: list[list[float]] = [[] for _ in socks]
    stamps: list[list[int]] = [[] for _ in socks]
    heard: dict[int, dict[int, bytes]] = {i: {} for i in sample}
    got = [0] * len(socks)
    sent = 0
    send_late: list[tuple[float, float]] = []  # each slot's due time, and how late its sends began
    # kernel timestamps are CLOCK_REALTIME; the engine's grid is CLOCK_MONOTONIC
    mono_off = time.time() - time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    pack = _RTP.pack
    unpack_from = _RTP.unpack_from
    ts_unpack = _TIMESPEC.unpack
    wait = max(0.0, start - time.monotonic())
    time.sleep(wait)
    # Each leg has its own phase (its leg number mod 20, in ms), as independent
    # phones do: one packet in 20 ms per leg, 50 legs a millisecond.
    phases: list[list[int]] = [[] for _ in range(SLOTS)]
    for i in range(len(socks)):
        phases[i % SLOTS].append(i)
    slot = 0
    while True:
        now = time.monotonic()
        if now >= stop_recv:
            break
        due = start + slot * (TICK / SLOTS)
        if now >= due and due < stop_send:
            send_late.append((due, now - due))
            frame = slot // SLOTS
            k = frame % 50
            # "nothing": a second of silence first (latches each leg: the engine
            # sends only to a source that confirmed itself), then no packets
            for i in phases[slot % SLOTS] if idle != "nothing" or due < start + 1.0 else ():
                pkt = pack(0x80, 0, (seq0[i] + frame) & 0xFFFF, (ts0[i] + frame * FRAME) & 0xFFFFFFFF,
                           ssrc[i]) + payloads[i][k]
                try:
                    socks[i].send(pkt)
                    sent += 1
                except (BlockingIOError, ConnectionRefusedError):
                    pass
            slot += 1
            continue
        timeout = (due if due < stop_send else stop_recv) - time.monotonic()
        for fd, _ in ep.poll(max(0.0, timeout)):
            i = fd_leg[fd]
            s = socks[i]
            while True:
                try:
                    data, anc, _flags, _addr = s.recvmsg(2048, 64)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                got[i] += 1
                if not record:
                    continue
                _b0, _b1, _seq, ts, _ssrc = unpack_from(data)
                if anc:
                    sec, nsec = ts_unpack(anc[0][2][:16])
                    arrivals[i].append(sec + nsec * 1e-9 - mono_off)
                else:
                    arrivals[i].append(time.monotonic())
                stamps[i].append(ts)
                if i in heard:
                    heard[i][ts] = data[12:]
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    conn.send({
        "sent": sent, "got": got, "cpu": cpu, "wall": stop_recv - start,
        "send_late": np.asarray(send_late, dtype=np.float64).reshape(-1, 2),
        "arrivals": [np.asarray(a, dtype=np.float64) for a in arrivals] if record else None,
        "stamps": [np.asarray(t, dtype=np.int64) for t in stamps] if record else None,
        "heard": heard,
    })
    for s in socks:
        s.close()


# -- the servers -----------------------------------------------------------------------


def _install_uvloop() -> None:
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def echo_server(conn: Connection, legs: int) -> None:
    """The baseline: a bare uvloop DatagramProtocol echo per socket."""
    _install_uvloop()
    conn.recv()  # the generator's ports (unused: echo answers the source)
    socks = []
    for _ in range(legs):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    conn.send([s.getsockname()[1] for s in socks])
    count = [0]

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            count[0] += 1
            self.transport.sendto(data, addr)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        for s in socks:
            await loop.create_datagram_endpoint(Echo, sock=s)
        conn.send("ready")
        w0, w1, end = conn.recv()
        await asyncio.sleep(max(0.0, w0 - time.monotonic()))
        c0, n0 = _cpu(), count[0]
        await asyncio.sleep(max(0.0, w1 - time.monotonic()))
        c1, n1 = _cpu(), count[0]
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        return {"cpu": c1 - c0, "wall": w1 - w0, "packets": n1 - n0}

    conn.send(asyncio.run(main()))


def _scraped(text: bytes) -> dict[str, float]:
    """The unlabelled samples of a ``/metrics`` exposition, by name."""
    from prometheus_client.parser import text_string_to_metric_families

    return {sample.name: sample.value for family in text_string_to_metric_families(text.decode())
            for sample in family.samples if not sample.labels}


def engine_ports(conn: Connection, plan: Plan) -> list[Any]:
    """The engine's RTP port pairs, one a leg; their ports go to the load
    generator (whose own ports came first)."""
    from engine.transport.rtp_socket import RtpPortAllocator

    ports = RtpPortAllocator("127.0.0.1", 20000, 60000)
    pairs = [ports.allocate() for _ in range(len(plan.conf_of))]
    conn.send([p.rtp_port for p in pairs])
    return pairs


def bench_legs(plan: Plan, pairs: list[Any], client_ports: list[int], clock: Any, graph: Any,
               rtcp: bool = False, cn: bool = False, pin_after: int | None = None) -> tuple[list[Any], list[Any]]:
    """The engine side of the load, as bench/media and bench/streams both run
    it: a PCMU ``MediaSession`` to its generator port and a connected call
    a leg, in the plan's conferences of ``graph``; with ``rtcp``, each
    session gets the RTCP session a SIP leg has (engine.calls.sip_media:
    the receive statistics /metrics reads); with ``cn``, RFC 3389 CN is
    negotiated (payload type 13); ``pin_after``: the RTP source policy's
    (engine.media.rtp.RtpSourcePolicy), its default when ``None``.
    Returns (sessions, calls)."""
    from engine.calls.call import Call, CallState
    from engine.calls.rtp_stream import MediaSession
    from engine.media.rtp import RtpSourcePolicy
    from engine.media.rtcp_session import RtcpSession
    from engine.sip.offer_answer import Codec, NegotiatedMedia

    class BenchLeg(Call):
        def __init__(self, session: MediaSession) -> None:
            super().__init__(direction="inbound", number="bench", callerid="gen")
            self.session = session
            self._set_state(CallState.CONNECTED)

        def media_port(self) -> MediaSession:
            return self.session

    pcmu = Codec("PCMU", RATE, payload_type=0)
    policy = RtpSourcePolicy() if pin_after is None else RtpSourcePolicy(pin_after=pin_after)
    sessions, calls = [], []
    for pair, cport in zip(pairs, client_ports):
        session = MediaSession(pair.rtp, clock, policy=policy)
        if rtcp:
            session.rtcp = RtcpSession(session.sender, interval=5.0, wall_offset=time.time() - time.monotonic())
        session.configure(NegotiatedMedia(
            index=0, remote_address="127.0.0.1", remote_port=cport, remote_rtcp_port=cport + 1,
            codec=pcmu, telephone_event_pt=101, ptime=20, send=True, recv=True, on_hold=False,
            comfort_noise_pt=13 if cn else None))
        sessions.append(session)
        calls.append(BenchLeg(session))
    first = 0
    for size in plan.sizes:
        conf = graph.create_conference()
        for call in calls[first:first + size]:
            conf.add(call)
        first += size
    return sessions, calls


def proc_cpu(pid: int) -> float:
    """utime + stime of process ``pid`` (a send worker, Janus: all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_server(conn: Connection, plan: Plan, profile: bool, metrics: bool = False, dtx: bool = False,
                  send_workers: int = 0, pin_after: int | None = None, pacing: bool = True,
                  stall: float = 0.0) -> None:
    """The engine: MediaSessions in conferences of a MediaGraph on the MediaClock
    (``metrics``: with the engine's Prometheus figures scraped every second;
    ``dtx``: with silence suppression, CN negotiated; ``send_workers``: that
    many RTP send workers, as ``--media-send-workers``, whose CPU is counted
    with the engine's; ``pin_after``: as ``--rtp-pin-after``, the engine's
    default when ``None``; ``pacing``: as ``--media-pacing``, frames held
    and sent at their tick's due time when there are no send workers;
    ``stall``: seconds the loop is blocked once, a second before the window)."""
    _install_uvloop()
    from engine.calls.conference import MediaGraph
    from engine.media.clock import MediaClock

    client_ports = conn.recv()
    pairs = engine_ports(conn, plan)

    workers = None
    if send_workers:
        from engine.transport.rtp_send import SendWorkers

        workers = SendWorkers(send_workers)
        workers.start()

    pacer = None
    if pacing and workers is None:
        from engine.transport.rtp_pace import TickPacer

        pacer = TickPacer()

    def cpu() -> float:
        return _cpu() + (sum(proc_cpu(pid) for pid in workers.pids) if workers is not None else 0.0)

    async def main() -> dict[str, Any]:
        clock = MediaClock()
        clock.dispatch = workers if workers is not None else pacer
        tmp = tempfile.mkdtemp(prefix="bench-media-")
        graph = MediaGraph(clock, recordings_dir=tmp, silence_suppression=dtx)
        sessions, _ = bench_legs(plan, pairs, client_ports, clock, graph, rtcp=metrics, cn=dtx, pin_after=pin_after)
        scraper = None
        if metrics:
            from engine.web.metrics import EngineMetrics, MetricsSources

            figures = EngineMetrics(MetricsSources(clock=clock, graph=graph))

            async def scrape() -> None:
                while True:
                    figures.render()
                    await asyncio.sleep(1.0)

            scraper = asyncio.get_running_loop().create_task(scrape())
        conn.send("ready")
        w0, w1, end = conn.recv()
        if stall:
            # a transient (a long collector pass, a slow handler, the host):
            # does the engine get back to on-time frames within a second?
            await asyncio.sleep(max(0.0, w0 - 1.0 - time.monotonic()))
            time.sleep(stall)
        await asyncio.sleep(max(0.0, w0 - time.monotonic()))
        skipped0, inline0, ticks0 = clock.skipped, clock.ticks_inline, clock.ticks
        quiet0 = graph.bridge.quiet_ticks
        dormant0 = graph.bridge.dtx.dormant_ticks if graph.bridge.dtx else 0
        scraped0 = _scraped(figures.render()) if metrics else None
        recv0 = sum(s.transport.received for s in sessions)
        stale0 = sum(s.transport.stale for s in sessions)
        sent0 = sum(s.transport.sent for s in sessions)
        def jitter_totals() -> tuple[int, int, int, int]:
            """Frames concealed, discarded and late, and resyncs, summed over every
            leg's jitter buffer (one stats copy a leg)."""
            stats = [s.jitter.stats for s in sessions if s.jitter is not None]
            return (sum(x.concealed for x in stats), sum(x.discarded for x in stats), sum(x.late for x in stats),
                    sum(x.resyncs for x in stats))

        conc0, disc0, late0, resync0 = jitter_totals()
        clock.lateness = []
        graph.tick_times = []
        prof = None
        if profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        import gc
        pauses: list[tuple[int, float]] = []
        gc_start = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_start[0] = time.perf_counter()
            else:
                pauses.append((info["generation"], time.perf_counter() - gc_start[0]))

        gc.callbacks.append(on_gc)
        from engine.media.jitterbuffer import late_buffers
        from engine.transport.rtp_transport import rtp_backlog, watched_transports

        backlog: list[int] = []
        late_share: list[float] = []

        async def sample_backlog() -> None:
            """The overload detector's media signals, every 50 ms as its probe takes them."""
            while True:
                media = watched_transports()
                value = rtp_backlog(media)
                if value is not None:
                    backlog.append(value)
                late_share.append(late_buffers() / max(1, len(media)))
                await asyncio.sleep(0.05)

        sampler = asyncio.get_running_loop().create_task(sample_backlog())
        c0 = cpu()
        await asyncio.sleep(max(0.0, w1 - time.monotonic()))
        c1 = cpu()
        sampler.cancel()
        gc.callbacks.remove(on_gc)
        if prof is not None:
            prof.disable()
        scraped1 = _scraped(figures.render()) if metrics else None
        conc1, disc1, late1, resync1 = jitter_totals()
        lateness, clock.lateness = clock.lateness, None
        times, graph.tick_times = graph.tick_times, None
        result = {
            "cpu": c1 - c0, "wall": w1 - w0, "origin": clock.origin,
            "received": sum(s.transport.received for s in sessions) - recv0,
            "sent": sum(s.transport.sent for s in sessions) - sent0,
            "concealed": conc1 - conc0,
            "discarded": disc1 - disc0,
            "late": late1 - late0, "resyncs": resync1 - resync0,
            "stale": sum(s.transport.stale for s in sessions) - stale0,
            "skipped": clock.skipped - skipped0,
            # legs whose socket is connected to its source at the end (RtpTransport.pin)
            "pinned": sum(1 for s in sessions if s.transport.pinned),
            # ticks started by an RTP reader that saw them due (engine.media.clock.run_due)
            "inline_ticks": (clock.ticks_inline - inline0, clock.ticks - ticks0),
            "quiet_ticks": graph.bridge.quiet_ticks - quiet0,
            "dormant_ticks": (graph.bridge.dtx.dormant_ticks - dormant0) if graph.bridge.dtx else 0,
            "clock_lateness": lateness, "tick_times": times,
            # engine.transport.rtp_transport.rtp_backlog every 50 ms: bytes queued on the median sampled leg
            "backlog": backlog,
            # late_buffers() / the legs read: the share of legs late in each of the last two whole seconds
            "late_share": late_share,
            "conferences": len(plan.sizes), "gc": pauses,
            # what /metrics said at the window's start and end (--metrics)
            "scraped": (scraped0, scraped1) if metrics else None,
        }
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        if scraper is not None:
            scraper.cancel()
        await clock.stop()
        for s in sessions:
            s.close()
        if prof is not None:
            import io
            import pstats
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
            result["profile"] = out.getvalue()
        return result

    result = asyncio.run(main())
    if workers is not None:
        result["send_workers"] = {"lead_ms": workers.lead * 1000, "fallbacks": workers.fallbacks,
                                  "restarts": workers.restarts, "packets": workers.packets}
        workers.stop()
    if pacer is not None:
        result["pacer"] = {"lead_ms": pacer.lead * 1000, "overruns": pacer.overruns, "ticks": pacer.ticks}
    result["mix_alone"] = mix_alone([3, 10, 100], MediaGraph)
    for p in pairs:
        p.close()
    conn.send(result)


def mix_alone(sizes: list[int], graph_cls: Any) -> dict[int, float]:
    """Milliseconds per tick of the mixing stage of one conference of each size."""
    from engine.calls.call import Call, CallState
    from engine.media.clock import MediaClock

    class Wire(Call):
        def __init__(self) -> None:
            super().__init__(direction="inbound", number="bench", callerid="gen")
            self._set_state(CallState.CONNECTED)

    out: dict[int, float] = {}
    rng = np.random.default_rng(0)
    for size in sizes:
        graph = graph_cls(MediaClock())
        conf = graph.create_conference()
        for _ in range(size):
            conf.add(Wire())
        plan = graph._compile().bridge
        rows = rng.integers(-3000, 3000, size=(len(plan.sources), FRAME)).astype(np.int16)
        graph.bridge.mix(plan, rows)
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            graph.bridge.mix(plan, rows)
        out[size] = (time.perf_counter() - t0) / n * 1000
    return out


# -- running a phase ---------------------------------------------------------------------


def run_phase(server: Any, server_args: tuple[Any, ...], plan: Plan, warmup: float, seconds: float,
              sample: list[int], record: bool, idle: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    ctx = mp.get_context("spawn")
    s_conn, s_child = ctx.Pipe()
    g_conn, g_child = ctx.Pipe()
    gen = ctx.Process(target=generator, args=(g_child, plan, sample, record, idle), daemon=True)
    gen.start()
    srv = None
    limit = warmup + seconds + 60
    try:
        if not g_conn.poll(30):
            raise SystemExit("generator did not start")
        srv = ctx.Process(target=server, args=(s_child, *server_args), daemon=True)
        srv.start()
        s_conn.send(g_conn.recv())  # the generator's ports, then the server's back
        if not s_conn.poll(120):
            raise SystemExit("server did not start")
        g_conn.send(s_conn.recv())
        if not g_conn.poll(30):
            raise SystemExit("generator did not connect")
        g_conn.recv()
        if not s_conn.poll(30):
            raise SystemExit("server did not get ready")
        s_conn.recv()
        start = time.monotonic() + 0.5
        w0, w1 = start + warmup, start + warmup + seconds
        stop_send = w1 + 0.2
        stop_recv = w1 + 0.5
        g_conn.send((start, stop_send, stop_recv))
        s_conn.send((w0, w1, stop_recv + 0.2))
        if not g_conn.poll(limit):
            raise SystemExit("generator did not finish")
        gres = g_conn.recv()
        if not s_conn.poll(limit):
            raise SystemExit("server did not finish")
        sres = s_conn.recv()
        sres["window"] = (w0, w1)
        return sres, gres
    finally:
        for proc in (gen, srv):
            if proc is not None:
                proc.join(10)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)


# -- analysis --------------------------------------------------------------------------------


def frames_and_lateness(sres: dict[str, Any], gres: dict[str, Any]) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Expected frames, frames missing, and two lateness views of every frame of the window.

    Each leg's frames are placed on the engine's 20 ms grid by their RTP
    timestamps (one frame = 160 samples = one tick), anchored at the latest
    tick no frame of the leg arrived before. *Grid lateness* is arrival minus
    that tick's due time: it includes where in the tick the leg's frame was
    sent (the tick's processing so far). *Cadence lateness* is measured from
    the leg's own earliest phase instead: how far a frame strays from a
    perfect 20 ms cadence for its stream, which is what the receiver's jitter
    buffer sees."""
    origin = sres["origin"]
    w0, w1 = sres["window"]
    n_lo = math.ceil((w0 - origin) / TICK)
    n_hi = math.floor((w1 - origin) / TICK) - 1
    expected = missing = 0
    grid: list[np.ndarray] = []
    cadence: list[np.ndarray] = []
    for arr, ts in zip(gres["arrivals"], gres["stamps"]):
        expected += n_hi - n_lo + 1
        if arr.size == 0:
            missing += n_hi - n_lo + 1
            continue
        k = ((ts - ts[0] + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)  # wrap-aware
        k = k // FRAME
        rel = (arr - origin) / TICK - k
        anchor = np.floor(rel.min())
        tick = anchor + k
        inside = (tick >= n_lo) & (tick <= n_hi)
        present = np.unique(tick[inside]).size
        missing += (n_hi - n_lo + 1) - present
        grid.append(((rel - anchor) * TICK)[inside])
        cadence.append(((rel - rel[inside].min()) * TICK)[inside] if inside.any() else rel[:0])
    empty = np.zeros(0)
    return (expected, missing, np.concatenate(grid) if grid else empty,
            np.concatenate(cadence) if cadence else empty)


def last_second(gres: dict[str, Any], w_end: float) -> dict[int, list[int]]:
    """Each sampled leg's RTP timestamps of the last 50 frames that arrived
    by ``w_end`` (the ``last`` of :func:`check_mixing`)."""
    return {leg: [int(t) for t in gres["stamps"][leg][gres["arrivals"][leg] <= w_end][-50:]]
            for leg in gres["heard"]}


def check_mixing(plan: Plan, heard: dict[int, dict[int, bytes]],
                 last: dict[int, list[int]]) -> tuple[int, int, list[str]]:
    """Legs whose last second has every other member's tone and not their own.

    ``last``: each sampled leg's RTP timestamps of that second, the last 50
    frames that arrived inside the measured window (not the last 50 heard,
    which include the wind-down after the generator stopped sending)."""
    ok = 0
    problems: list[str] = []
    members: dict[int, list[int]] = {}
    for leg, ci in enumerate(plan.conf_of):
        members.setdefault(ci, []).append(leg)
    for leg, frames in heard.items():
        keys = [t for t in last.get(leg, []) if t in frames]
        if len(keys) < 50:
            problems.append(f"leg {leg}: only {len(keys)} frames")
            continue
        codes = np.frombuffer(b"".join(frames[t] for t in keys), dtype=np.uint8)
        pcm = ULAW_DECODE[codes]
        halves = (pcm[: pcm.size // 2], pcm[pcm.size // 2 :])
        others = [m for m in members[plan.conf_of[leg]] if m != leg]
        # each half second on its own: a tone's level over the whole second
        # falls below half when a frame of it was cut midway (the phase jumps),
        # as every leg's jitter buffer does once, when its delay first shrinks
        weak = [plan.freq[m] for m in others
                if max(level(half, plan.freq[m]) for half in halves) < 0.5 * plan.amp[m]]
        own = max(level(half, plan.freq[leg]) for half in halves)
        # absent: well under its level (µ-law intermodulation of 99 tones on
        # a 30 Hz grid lands some energy on every grid frequency)
        if weak or own > 0.2 * plan.amp[leg]:
            problems.append(f"leg {leg} (conference of {len(others) + 1}): "
                            f"{len(weak)} of {len(others)} tones missing, own tone at {own:.0f}")
        else:
            ok += 1
    return ok, len(heard), problems


def janus_phase(plan: Plan, args: argparse.Namespace, echo: dict[str, Any] | None,
                sample: list[int]) -> dict[str, Any]:
    """The plan's conferences in Janus's AudioBridge (``bench/janus_bridge.py``),
    driven by the same generator: Janus's CPU per packet, its jitter, and
    the same mixing check. Returns the figures it printed."""
    from janus_bridge import janus_server

    legs = len(plan.conf_of)
    sres, gres = run_phase(janus_server, (plan.conf_of, plan.sizes), plan, args.warmup, args.seconds, sample, True)
    w0, w1 = sres["window"]
    packets = legs * (w1 - w0) / TICK  # what the generator sent Janus in the window
    us = sres["cpu"] / packets * 1e6
    core = sres["cpu"] / sres["wall"]
    sres["origin"] = w0  # Janus's own grid is unknown: only each stream's cadence is measured
    _expected, missing, _late, cadence = frames_and_lateness(sres, gres)
    ok, checked, problems = check_mixing(plan, gres["heard"], last_second(gres, w1))
    print(f"janus  : {sres['version']}, AudioBridge, plain RTP PCMU: {legs} legs at {core * 100:.0f}% of a core = "
          f"{us:.1f} us/packet (in + out), {sres['threads']:,} threads; generator sent {gres['sent']:,}, "
          f"got back {sum(gres['got']):,}", flush=True)
    print(f"  lateness vs each stream's own 20 ms cadence (jitter): p50 {pct(cadence * 1000, 50):.2f} / "
          f"p99 {pct(cadence * 1000, 99):.2f} ms; frames missing in the window {missing:,}")
    print(f"  mixing is real: {ok} of {checked} sampled legs hear every other member's tone and not their own")
    for p in problems[:5]:
        print(f"    {p}")
    if echo is not None:
        e_us = us_per_packet(echo)
        print(f"  janus vs echo: CPU per packet {us / e_us:.2f}x ({us:.1f} vs {e_us:.1f} us)", flush=True)
    return {"us_per_packet": us, "core": core, "p99_cadence_ms": pct(cadence * 1000, 99), "mixing_ok": ok,
            "mixing_checked": checked}


def us_per_packet(res: dict[str, Any], count: str = "packets") -> float:
    """A phase's CPU microseconds per packet (``count``: the echo's
    ``packets``, the engine's ``received``)."""
    return float(res["cpu"]) / max(1, res[count]) * 1e6


def pct(a: Any, q: float) -> float:
    return float(np.percentile(np.asarray(a), q)) if len(a) else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window of each phase")
    parser.add_argument("--warmup", type=float, default=4.0,
                        help="seconds before the measured window: all legs start at once, and the read backlog "
                             "of the engine's first second is cut by the jitter buffers at about 2.7 s")
    parser.add_argument("--big", type=int, default=100, help="size of the one big conference (0: none)")
    parser.add_argument("--sizes", default="3-10", help="sizes of the other conferences, LO-HI")
    parser.add_argument("--sample", type=int, default=24, help="legs whose audio is checked for the tones")
    parser.add_argument("--only", choices=("echo", "engine", "janus"))
    parser.add_argument("--janus", action="store_true",
                        help="add a phase: the same conferences in Janus's AudioBridge (bench/janus_bridge.py)")
    parser.add_argument("--profile", action="store_true", help="cProfile the engine during the window")
    parser.add_argument("--idle", choices=("silence", "nothing"),
                        help="nobody speaks: the generator sends µ-law silence, or no packets at all")
    parser.add_argument("--send-workers", type=int, default=0,
                        help="RTP send workers, as serve's --media-send-workers (their CPU counts as the engine's)")
    parser.add_argument("--media-pacing", choices=("on", "off"), default="on",
                        help="as serve's --media-pacing: without send workers, each tick's datagrams are held "
                             "and sent at its due time (engine.transport.rtp_pace)")
    parser.add_argument("--silence-suppression", action="store_true",
                        help="the graph suppresses silence (engine.media.dtx), CN negotiated on every leg")
    parser.add_argument("--rtp-pin-after", type=int, default=None,
                        help="as serve's --rtp-pin-after (0: legs' sockets are never connected to their source)")
    parser.add_argument("--metrics", action="store_true",
                        help="scrape the engine's Prometheus figures every second during the run")
    parser.add_argument("--stall", type=float, default=0.0, metavar="MS",
                        help="block the engine's loop this long once, a second before the window")
    parser.add_argument("--rounds", type=int, default=1,
                        help="engine and echo phases alternated this many times; the ratios' median is printed")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    lo, hi = (int(x) for x in args.sizes.split("-"))
    plan = make_plan(args.legs, args.big, lo, hi)
    legs = len(plan.conf_of)
    rng = random.Random(3)
    sample = sorted(rng.sample(range(legs), min(args.sample, legs)))
    if args.big and legs >= args.big:  # two of the big conference, always
        sample = sorted(set(sample) | {0, args.big - 1})
    n_small = len(plan.sizes) - (1 if args.big and legs >= args.big else 0)
    print(f"bench/media: {legs} legs, {len(plan.sizes)} conferences "
          f"({'one of %d, ' % args.big if args.big and legs >= args.big else ''}{n_small} of {lo}-{hi}), "
          f"50 packets/s each, {args.seconds:g} s measured after {args.warmup:g} s warm-up, uvloop", flush=True)

    echo = None
    if args.only != "engine":
        sres, gres = run_phase(echo_server, (legs,), plan, args.warmup, args.seconds, [], False)
        echo = sres
        pps = sres["packets"] / sres["wall"]
        core = sres["cpu"] / sres["wall"]
        us = us_per_packet(sres)
        print(f"echo   : {pps:,.0f} packets/s in (and out) at {core * 100:.0f}% of a core = "
              f"{us:.1f} us/packet; ceiling {1e6 / us:,.0f} packets/s a core "
              f"(generator sent {gres['sent']:,}, got back {sum(gres['got']):,})", flush=True)
    janus = None
    if args.janus or args.only == "janus":
        janus = janus_phase(plan, args, echo, sample)
    if args.only in ("echo", "janus"):
        return 0

    engine_args = (plan, args.profile, args.metrics, args.silence_suppression, args.send_workers,
                   args.rtp_pin_after, args.media_pacing == "on", args.stall / 1000)
    sres, gres = run_phase(engine_server, engine_args, plan, args.warmup, args.seconds,
                           [] if args.idle else sample, True, args.idle)
    after_us = 0.0
    if echo is not None and args.only != "engine":
        after, _ = run_phase(echo_server, (legs,), plan, args.warmup, args.seconds, [], False)
        before_us, after_us = us_per_packet(echo), us_per_packet(after)
        print(f"echo again, after the engine: {after_us:.1f} us/packet ({(after_us / before_us - 1) * 100:+.0f}% "
              f"on the first; the engine is compared with their mean)", flush=True)
        echo = {"cpu": echo["cpu"] + after["cpu"], "packets": echo["packets"] + after["packets"],
                "wall": echo["wall"] + after["wall"], "drift": after_us / before_us - 1}
    wall = sres["wall"]
    core = sres["cpu"] / wall
    pps = sres["received"] / wall
    us_pkt = us_per_packet(sres, "received")
    e_us = us_per_packet(echo) if echo is not None else math.nan  # the two echo phases together
    expected, missing, late, cadence = frames_and_lateness(sres, gres)
    times = np.asarray(sres["tick_times"]) if sres["tick_times"] else np.zeros((0, 4))
    # the clock's own figure (time.monotonic): each tick's start against when
    # it was planned, its due time or, with send workers, the lead before it
    wake = np.asarray(sres["clock_lateness"]) * 1000
    w0, w_end = sres["window"]
    ok, checked, problems = check_mixing(plan, gres["heard"], last_second(gres, w_end))
    ms = lambda a: f"p50 {pct(a, 50):.2f} / p99 {pct(a, 99):.2f} / max {pct(a, 100):.2f} ms"  # noqa: E731
    print(f"engine : {legs} legs at {core * 100:.0f}% of a core = {core / legs * 1e6:.0f} us CPU per leg per "
          f"second ({core / legs * 1000 * 100:.1f}% of a core per 1,000 legs); {pps:,.0f} packets/s in, "
          f"{sres['sent'] / wall:,.0f} out; {us_pkt:.1f} us/packet (in + out)")
    if "send_workers" in sres:
        sw = sres["send_workers"]
        print(f"  send workers: {args.send_workers}, lead {sw['lead_ms']:.2f} ms at the end, "
              f"{sw['packets']:,} packets through them, {sw['fallbacks']} ticks sent by the engine, "
              f"{sw['restarts']} restarts")
    if "pacer" in sres:
        pc = sres["pacer"]
        print(f"  paced: frames held and sent at each tick's due time, lead {pc['lead_ms']:.2f} ms at the end, "
              f"{pc['overruns']} of {pc['ticks']:,} ticks ready only after their due time")
    else:
        print("  not paced: each frame sent as it was made (--media-pacing off or send workers)")
    if args.idle:
        dtx = (f", silence suppressed ({sres['dormant_ticks']:,} ticks dormant)" if args.silence_suppression
               else "")
        print(f"  idle ({args.idle}{dtx}): {sres['quiet_ticks']:,} of {len(sres['clock_lateness']):,} ticks mixed "
              f"nothing; {core / legs * 1e6:.0f} us CPU per leg per second")
    print(f"  RTP sockets connected to their source (--rtp-pin-after): {sres['pinned']} of {legs} legs")
    # every leg's frame of every tick in the window (the generator sends them all, on loopback)
    concealed_pct = sres["concealed"] / max(1, expected) * 100
    # frames a jitter buffer dropped to cut its delay: each an audible cut
    discarded_pct = sres["discarded"] / max(1, expected) * 100
    print(f"  frames out : {expected - missing:,} of {expected:,} due in the window, "
          f"{missing:,} dropped ({missing / max(1, expected) * 100:.3f}%); clock skipped {sres['skipped']} ticks; "
          f"inbound frames concealed {sres['concealed']:,} ({concealed_pct:.3f}%), "
          f"discarded {sres['discarded']:,} ({discarded_pct:.3f}%); late {sres.get('late', 0):,} "
          f"(of which read and dropped as stale {sres.get('stale', 0):,}), resyncs {sres.get('resyncs', 0):,}")
    print(f"  lateness of frames at the generator vs the clock's 20 ms grid: {ms(late * 1000)}")
    print(f"                  vs each stream's own 20 ms cadence (jitter): {ms(cadence * 1000)}")
    inline, ticked = sres.get("inline_ticks", (0, 0))
    # the overload detector's media signals, sampled every 50 ms as its probe takes them
    for key, what, bound, scale, unit in (
            ("backlog", "RTP read backlog (bytes queued on the median of 16 sampled legs)", MEDIA_BACKLOG, 1, ""),
            ("late_share", "legs late in each of the last two seconds", LATE_LEGS, 100, "%")):
        values = np.asarray(sres.get(key, []), dtype=float)
        if values.size:
            print(f"  {what}: p50 {pct(values, 50) * scale:,.1f}{unit} / p99 {pct(values, 99) * scale:,.1f}{unit} / "
                  f"max {pct(values, 100) * scale:,.1f}{unit}; {int(np.sum(values >= bound))} of {values.size} "
                  f"samples at or over the refuse bound ({bound * scale:,.0f}{unit})")
    print(f"  clock wake-up lateness, against each tick's planned start: {ms(wake)}"
          f" ({inline} of {ticked} ticks started by a reader)")
    if times.size:
        tot = times[:, 1:].sum(axis=1) * 1000
        print(f"  per tick: pull {ms(times[:, 1] * 1000)}")
        print(f"            mix  {ms(times[:, 2] * 1000)} "
              f"({pct(times[:, 2], 50) * 1e6 / sres['conferences']:.1f} us per conference)")
        print(f"            push {ms(times[:, 3] * 1000)}")
        print(f"            all  {ms(tot)} = {pct(tot, 50) / 20 * 100:.0f}% of the 20 ms tick")
    if sres.get("scraped"):
        a, b = sres["scraped"]
        d = {k: b.get(k, 0.0) - a.get(k, 0.0) for k in b}
        ticks = d.get("callbridge_media_clock_ticks_total", 0.0)
        mean_scraped = d.get("callbridge_media_clock_lateness_seconds_total", 0.0) / max(1.0, ticks) * 1000
        print("  /metrics over the window vs the bench's own figures:")
        print(f"    clock ticks       : scrape {ticks:,.0f} vs bench {len(sres['clock_lateness']):,} "
              f"(+ {sres['skipped']} skipped)")
        print(f"    skipped ticks     : scrape {d.get('callbridge_media_clock_skipped_ticks_total', 0.0):,.0f}"
              f" vs bench {sres['skipped']}")
        print(f"    clock lateness    : scrape mean {mean_scraped:.2f} ms, max since start "
              f"{b.get('callbridge_media_clock_lateness_max_seconds', 0.0) * 1000:.2f} ms vs bench mean "
              f"{float(np.mean(clock_late)) * 1000 if clock_late.size else 0.0:.2f} ms, max "
              f"{pct(clock_late, 100) * 1000:.2f} ms")
        print(f"    RTP received      : scrape {d.get('callbridge_rtp_packets_received_total', 0.0):,.0f} vs bench "
              f"{sres['received']:,}")
        print(f"    RTP lost (A.3)    : scrape {d.get('callbridge_rtp_packets_lost_total', 0.0):,.0f} vs bench: "
              f"{missing:,} frames the generator missed, {sres['concealed']:,} inbound frames concealed")
    gcs = sres["gc"]
    full = [d for g, d in gcs if g == 2]
    print(f"  garbage collector: {len(gcs)} collections in the window, longest "
          f"{max((d for _, d in gcs), default=0) * 1000:.2f} ms; {len(full)} full, longest "
          f"{max(full, default=0) * 1000:.2f} ms")
    mix = sres["mix_alone"]
    print("  one conference mixed alone: " + ", ".join(f"{k} parties {v:.3f} ms/tick" for k, v in mix.items()))
    print(f"  mixing is real: {ok} of {checked} sampled legs hear every other member's tone and not their own")
    for p in problems[:5]:
        print(f"    {p}")
    slots = gres["send_late"]
    slate = slots[(slots[:, 0] >= w0) & (slots[:, 0] < w_end), 1] * 1000
    print(f"  generator: sent {gres['sent']:,}, got {sum(gres['got']):,}, "
          f"{gres['cpu'] / gres['wall'] * 100:.0f}% of a core; in the window its sends began late against "
          f"its own schedule by {ms(slate)}, {int((slate >= 20).sum())} of {slate.size} slots 20 ms or more")
    if echo is not None:
        e_pps = echo["packets"] / echo["wall"]
        print(f"ratios vs echo: packets/s {pps / e_pps:.2f}; CPU per packet {us_pkt / e_us:.2f}x "
              f"({us_pkt:.1f} vs {e_us:.1f} us); legs a core could carry: engine {legs / core:,.0f}, "
              f"echo {1e6 / e_us / 50:,.0f}")
    p99_grid, p99_cadence = pct(late * 1000, 99), pct(cadence * 1000, 99)
    checks = [
        ("1,000 legs within one core", legs >= 1000 and core < 1.0, f"{legs} legs at {core * 100:.0f}%"),
        ("p99 lateness < 5 ms vs the clock's grid", p99_grid < 5.0, f"{p99_grid:.2f} ms"),
        ("p99 lateness < 5 ms vs each stream's cadence", p99_cadence < 5.0, f"{p99_cadence:.2f} ms"),
        ("no dropped frames", missing == 0 or args.silence_suppression,
         f"{missing} dropped" + (" (suppressed silence is not sent)" if args.silence_suppression else "")),
        # a stall caught up badly or a read backlog shows here first (the jitter
        # buffers find frames late); a leg whose packets race the tick's pull
        # conceals about a frame in 5 s by design (its jitter buffer's minimum depth)
        ("inbound frames concealed or discarded < 0.5%", concealed_pct + discarded_pct < 0.5 or bool(args.idle),
         f"{concealed_pct:.3f}% + {discarded_pct:.3f}%"),
        ("100-party mix < 2 ms a tick", mix.get(100, 99.0) < 2.0, f"{mix.get(100, float('nan')):.3f} ms"),
        ("mixing verified", ok == checked, f"{ok}/{checked}"),
    ]
    print("aim: " + "; ".join(f"{name}: {'yes' if good else 'NO'} ({fig})" for name, good, fig in checks))
    if "profile" in sres:
        print(sres["profile"])
    ratios = [us_pkt / e_us] if echo is not None else []
    if echo is not None and args.rounds > 1:
        last_echo = after_us
        for r in range(2, args.rounds + 1):
            eres, _ = run_phase(engine_server, engine_args, plan, args.warmup, args.seconds,
                                [] if args.idle else sample, True, args.idle)
            eres_us = us_per_packet(eres, "received")
            ores, _ = run_phase(echo_server, (legs,), plan, args.warmup, args.seconds, [], False)
            echo_us = us_per_packet(ores)
            ratios.append(eres_us / ((last_echo + echo_us) / 2))
            print(f"round {r}: engine {eres_us:.1f} us/packet, echo before and after {last_echo:.1f} and "
                  f"{echo_us:.1f}: {ratios[-1]:.2f}x", flush=True)
            last_echo = echo_us
        print(f"CPU per packet against the echo, {len(ratios)} rounds: "
              f"{', '.join(f'{r:.2f}x' for r in ratios)}; median {statistics.median(ratios):.2f}x")
    from results import figure, save  # bench/results.py: the figures as JSON, for --compare

    figs = {"engine_core_share": figure(core * 100, "% of a core", "lower"),
            "engine_us_per_packet": figure(us_pkt, "us", "lower"),
            "dropped_frames": figure(missing, "frames", "lower"),
            "concealed_inbound_frames": figure(sres["concealed"], "frames", "lower"),
            "discarded_inbound_frames": figure(sres["discarded"], "frames", "lower"),
            "p50_lateness_grid": figure(pct(late * 1000, 50), "ms", "lower"),
            "p99_lateness_grid": figure(p99_grid, "ms", "lower"),
            "p99_lateness_cadence": figure(p99_cadence, "ms", "lower"),
            "mix_100_parties": figure(mix.get(100, math.nan), "ms/tick", "lower"),
            "mixing_verified_legs": figure(ok, "legs", "higher"),
            "generator_p99_send_lateness": figure(pct(slate, 99), "ms", "lower")}
    if echo is not None:
        figs["echo_us_per_packet"] = figure(e_us, "us", "lower")
        # the echo after the engine against the one before: the machine's drift during the run
        figs["echo_drift"] = figure(abs(echo["drift"]) * 100, "%", "lower")
        figs["ratio_engine_echo_us_per_packet"] = figure(us_pkt / e_us, "x", "lower")
        if len(ratios) > 1:
            figs["ratio_engine_echo_median_of_rounds"] = figure(statistics.median(ratios), "x", "lower")
    if janus is not None:
        figs["janus_us_per_packet"] = figure(janus["us_per_packet"], "us", "lower")
        figs["ratio_engine_janus_us_per_packet"] = figure(us_pkt / janus["us_per_packet"], "x", "lower")
    # a run with send workers is its own bench for --compare (its figures are another configuration's)
    save(f"media_send_workers_{args.send_workers}" if args.send_workers
         else "media" if args.media_pacing == "on" else "media_pacing_off",
         {k: v for k, v in figs.items() if math.isfinite(v["value"])},
         {"legs": legs, "seconds": args.seconds, "warmup": args.warmup, "big": args.big, "sizes": args.sizes,
          "send_workers": args.send_workers, "media_pacing": args.media_pacing, "rounds": args.rounds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
