"""bench/media_paths: what one RTP packet costs on each path of the engine,
against the bare socket calls on the same sockets, at few and many legs.

``bench/media.py`` measures the whole engine against an echo, but on two
shared cores its figures move by 10% from run to run: too much to see a
change of a few per cent. This bench runs in one process with nothing else
going on, so it can. For each leg count (``--legs``, default 50 and 1000)
it builds that many graph-driven PCMU :class:`~engine.calls.rtp_stream.MediaSession`\\ s
on real loopback sockets, in conferences as ``bench/media`` plans them (one
big one, the rest 3-10), and a client socket. Then, every tick, it times
per leg:

- *read*: a bare ``recvfrom`` of a datagram the client sent to the leg's
  socket (the floor of receiving, Python's socket call included);
- *receive*: :meth:`RtpTransport._on_readable` of the next datagram: the
  read plus everything the engine does with a packet (latch, RTCP
  statistics with ``--rtcp``, jitter buffer);
- *pull*, *mix*, *push*: the media graph's tick, as the bridge times it
  (:attr:`engine.media.bridge.Bridge.tick_times`);
- *send*: a bare ``sendto`` of a 172-byte datagram from each leg's socket
  (the floor of the push's sending).

It prints microseconds per packet, the engine's paths against the bare
calls, and each path at many legs against the same path at few: the
difference is what the working set costs (the same code, more memory
touched), which is what measured the case for ``__slots__`` on the per-leg
objects. The ticks run back to back on a virtual loop clock that advances
20 ms a tick (the jitter buffer sees a steady 20 ms cadence); the loop is
asyncio's own (its ``time`` can be replaced; the loop runs nothing here).
Bounded: ``--ticks`` per leg count, 300 by default.

With ``--pinned`` every leg's socket is connected to the client, as
:meth:`~engine.transport.rtp_transport.RtpTransport.pin` leaves a leg with a
steady source, and the bare calls are ``recv`` and ``send``.

``--instructions`` counts instead of timing, for the engine's paths alone
(receive and the tick; no bare calls): this script runs under valgrind
(``cachegrind``, no cache simulation, hash seed fixed) for 50 and for 250
ticks of 200 legs, and the difference is divided by 200 ticks and the
legs: instructions a leg a tick, the same to about 1% from run to run where
timing moves by 10%. It does so twice, with the compiled media modules
(:mod:`engine.native`) and with ``CALLBRIDGE_NATIVE=0`` (the sources), and
prints both and their ratio. System calls are not counted (they are the
kernel's), so it says what the Python side costs, not a packet's whole CPU.
Minutes, not seconds.

Usage: ``./run.sh bench media_paths [--legs 50,1000] [--ticks 300] [--rtcp] [--pinned] [--instructions]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import resource
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import valgrind  # noqa: E402  (bench/valgrind.py)
from media import make_plan, tone_payloads  # noqa: E402  (bench/media.py)

_HEADER = struct.Struct("!BBHII")
WARMUP = 30


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def measure(legs: int, ticks: int, rtcp: bool, pinned: bool = False, count: bool = False) -> dict[str, float]:
    """Microseconds per packet (per leg and tick) of each path, medians over the ticks.

    With ``count``, only the engine's paths run (no bare read or send) and
    nothing is timed: what :func:`instructions` counts."""
    from engine.calls.conference import MediaGraph
    from engine.media.clock import MediaClock
    from engine.transport.rtp_socket import RtpPortAllocator
    from media import bench_legs

    plan = make_plan(legs, min(100, legs // 2), 3, 10)
    allocator = RtpPortAllocator("127.0.0.1", 20000, 60000)
    pairs = [allocator.allocate() for _ in range(legs)]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    tones = [tone_payloads(400.0 + 200 * (i % 5), 1500.0) for i in range(5)]
    packet = bytes(172)
    virtual = [1000.0]

    async def run() -> dict[str, list[float]]:
        loop = asyncio.get_running_loop()
        loop.time = lambda: virtual[0]  # type: ignore[method-assign]
        clock = MediaClock()
        graph = MediaGraph(clock, recordings_dir=tempfile.mkdtemp(prefix="bench-paths-"))
        # unpinned: as --rtp-pin-after 0 (detached transports never pin by themselves)
        sessions, _ = bench_legs(plan, pairs, [client.getsockname()[1]] * legs, clock, graph, rtcp=rtcp,
                                 pin_after=None if pinned else 0)
        await clock.stop()  # the bench ticks the graph itself
        transports = [s.transport for s in sessions]
        for t in transports:
            t.detach()  # read by hand below, not by the loop
        socks = [t.sock for t in transports]
        dests = [s.getsockname() for s in socks]
        client_addr = client.getsockname()
        if pinned:  # what RtpTransport.pin leaves (pin itself needs the loop reading)
            for session, t in zip(sessions, transports):
                assert session.latch is not None
                t.sock.connect(client_addr)
                t.peer = session.latch.remote_addr
        graph.tick_times = []
        times: dict[str, list[float]] = {"read": [], "receive": [], "send": []}

        def send_round(tick: int) -> None:
            for i, dest in enumerate(dests):
                client.sendto(_HEADER.pack(0x80, 0, (100 + tick) & 0xFFFF, (5000 + 160 * tick) & 0xFFFFFFFF,
                                           1234 + i) + tones[i % 5][tick % 50], dest)

        def drain_client() -> None:
            try:
                while True:
                    client.recv(4096)
            except BlockingIOError:
                pass

        def receive_all() -> None:
            paced = time.monotonic() - 0.02  # a phone's pace: one read a wake-up, no drain
            for t in transports:
                t._last_read = paced
                t._on_readable()

        def tick_graph() -> None:
            drain_client()
            virtual[0] += 0.019
            graph.tick(virtual[0])
            drain_client()

        gc.collect()
        gc.disable()
        try:
            for tick in range(ticks):
                if count:  # the engine's paths alone, untimed
                    send_round(tick)
                    virtual[0] += 0.001
                    receive_all()
                    tick_graph()
                    continue
                send_round(tick)  # one datagram each for the bare read
                t0 = time.perf_counter()
                if pinned:
                    for sock in socks:
                        sock.recv(2048)
                else:
                    for sock in socks:
                        sock.recvfrom(2048)
                t1 = time.perf_counter()
                send_round(tick)  # the same packet again, for the engine
                virtual[0] += 0.001
                t2 = time.perf_counter()
                receive_all()
                t3 = time.perf_counter()
                if pinned:
                    for sock in socks:
                        sock.send(packet)
                else:
                    for sock in socks:
                        sock.sendto(packet, client_addr)
                t4 = time.perf_counter()
                tick_graph()
                if tick >= WARMUP:
                    times["read"].append(t1 - t0)
                    times["receive"].append(t3 - t2)
                    times["send"].append(t4 - t3)
        finally:
            gc.enable()
        ticked = graph.tick_times[WARMUP:] if graph.tick_times else []
        times["pull"] = [t[1] for t in ticked]
        times["mix"] = [t[2] for t in ticked]
        times["push"] = [t[3] for t in ticked]
        concealed = sum(s.jitter.stats.concealed for s in sessions if s.jitter is not None)
        if concealed:
            raise RuntimeError(f"{concealed} frames concealed: the legs did not get every packet")
        for s in sessions:
            s.close()
        return times

    try:
        times = asyncio.run(run())
    finally:
        client.close()
        for pair in pairs:
            pair.close()
    if count:
        return {}
    return {path: statistics.median(values) / legs * 1e6 for path, values in times.items() if values}


#: Legs and the two tick counts of ``--instructions``.
COUNT_LEGS, COUNT_TICKS = 200, (50, 250)


def instructions(compiled: bool, rtcp: bool, pinned: bool) -> float:
    """Instructions a leg a tick of the engine's receive and tick paths,
    counted by valgrind: the difference of two runs (:data:`COUNT_TICKS`),
    so that start-up cancels out."""
    counts = []
    for ticks in COUNT_TICKS:
        args = [__file__, "--count", str(ticks), "--legs", str(COUNT_LEGS)]
        args += ["--rtcp"] * rtcp + ["--pinned"] * pinned
        found, stdout = valgrind.count(args, f"{ticks} ticks", 900,
                                       {"CALLBRIDGE_NATIVE": "1" if compiled else "0"})
        native = stdout.strip().splitlines()[-1:] == ["native True"]
        if native != compiled:
            raise RuntimeError("the compiled media modules are not in use (not built, or built from other "
                               "sources: ./run.sh bench builds them)"
                               if compiled else "CALLBRIDGE_NATIVE=0 still loaded the compiled modules")
        counts.append(found)
    return (counts[1] - counts[0]) / (COUNT_TICKS[1] - COUNT_TICKS[0]) / COUNT_LEGS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legs", default="50,1000", help="leg counts, few first, comma-separated")
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--rtcp", action="store_true", help="each leg keeps RTCP receive statistics, as a SIP leg")
    parser.add_argument("--pinned", action="store_true",
                        help="each leg's socket connected to its source, as RtpTransport.pin leaves it")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions (valgrind), compiled modules against the sources")
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)  # one run under valgrind
    args = parser.parse_args()
    _raise_fd_limit()
    if args.count is not None:
        if not args.legs.isdigit() or int(args.legs) < 2 or args.count < 1:
            parser.error("--count needs one leg count of 2 or more (--legs) and ticks")
        measure(int(args.legs), args.count, args.rtcp, args.pinned, count=True)
        from engine import native

        print(f"native {native.loaded()}")
        return 0
    if args.instructions:
        return count_instructions(args.rtcp, args.pinned)
    counts = [int(n) for n in args.legs.split(",")]
    if len(counts) < 1 or any(n < 2 for n in counts) or args.ticks <= WARMUP:
        parser.error(f"--legs needs counts of 2 or more and --ticks more than {WARMUP}")
    results = {n: measure(n, args.ticks, args.rtcp, args.pinned) for n in counts}
    paths = ["read", "receive", "pull", "mix", "push", "send"]
    print(f"bench/media_paths: us per packet (median tick / legs), {args.ticks} ticks, "
          f"RTCP statistics {'on' if args.rtcp else 'off'}, sockets {'pinned' if args.pinned else 'unconnected'}")
    print("legs   " + "".join(f"{p:>9}" for p in paths) + "   receive/read  push/send")
    for n, r in results.items():
        print(f"{n:<7}" + "".join(f"{r[p]:9.2f}" for p in paths)
              + f"   {r['receive'] / r['read']:12.2f}  {r['push'] / r['send']:9.2f}")
    few, many = counts[0], counts[-1]
    if many != few:
        a, b = results[few], results[many]
        print(f"{many} legs against {few} (the working set's cost): "
              + ", ".join(f"{p} {b[p] / a[p]:.2f}x" for p in paths))
    from results import figure, save  # bench/results.py

    r = results[many]
    figs = {f"{p}_us_{many}_legs": figure(r[p], "us", "lower") for p in paths}
    figs["ratio_receive_read"] = figure(r["receive"] / r["read"], "x", "lower")
    figs["ratio_push_send"] = figure(r["push"] / r["send"], "x", "lower")
    if many != few:
        base = results[few]
        figs["ratio_receive_pull_many_few"] = figure(
            (r["receive"] + r["pull"]) / (base["receive"] + base["pull"]), "x", "lower")
    save("media_paths" + ("_rtcp" if args.rtcp else "") + ("_pinned" if args.pinned else ""),
         {k: v for k, v in figs.items() if math.isfinite(v["value"])},
         {"legs": counts, "ticks": args.ticks, "rtcp": args.rtcp, "pinned": args.pinned})
    return 0


def count_instructions(rtcp: bool, pinned: bool) -> int:
    """``--instructions``: the compiled modules and the sources, counted."""
    compiled = instructions(True, rtcp, pinned)
    source = instructions(False, rtcp, pinned)
    print(f"bench/media_paths --instructions: {COUNT_LEGS} legs, receive + tick, "
          f"RTCP statistics {'on' if rtcp else 'off'}, sockets {'pinned' if pinned else 'unconnected'}")
    print(f"  compiled modules   {compiled:10,.0f} instructions a leg a tick")
    print(f"  sources            {source:10,.0f}")
    print(f"  compiled / sources {compiled / source:10.2f}x")
    from results import figure, save  # bench/results.py

    save("media_instructions" + ("_rtcp" if rtcp else "") + ("_pinned" if pinned else ""), {
        "compiled_instructions_per_leg_tick": figure(compiled, "instructions", "lower"),
        "source_instructions_per_leg_tick": figure(source, "instructions", "lower"),
        "ratio_compiled_source": figure(compiled / source, "x", "lower"),
    }, {"legs": COUNT_LEGS, "ticks": list(COUNT_TICKS), "rtcp": rtcp, "pinned": pinned})
    return 0


if __name__ == "__main__":
    sys.exit(main())
