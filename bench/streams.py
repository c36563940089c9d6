"""bench/streams: N concurrent calls streamed to local bots, next to the same calls without.

Two phases in one run, each with ``bench/media.py``'s load generator (one
RTP packet per leg every 20 ms, 50 pps, its own process) against engine
legs paired in two-party conferences:

1. *plain*: ``bench/media.py``'s engine server as is (the plain-RTP figures);
2. *streams*: the same, plus every leg streamed (``start_stream``,
   Twilio format, ``direction="inbound"``) to an echo bot in a separate
   process (aiohttp, many sockets), which sends every media frame back:
   the bot's audio is queued and mixed into the leg each tick.

Printed: CPU per leg in each phase and their ratio, CPU per stream (the
difference), the generator's RTP lateness p99 in each phase, and the p99
and max lateness of frames to the bot (tick due to ``send_str`` done) with
frames dropped by the send queue. Bounded: each phase stops after
``--warmup + --seconds`` and every process is joined with a timeout.

Usage: ``python bench/streams.py [--legs 100] [--seconds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402

import media as mediabench  # noqa: E402


def bot_server(conn: Connection) -> None:
    """An echo bot: every inbound media frame straight back (any number of sockets)."""
    mediabench._install_uvloop()
    import json

    from aiohttp import WSMsgType, web

    async def bot(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and '"media"' in msg.data:
                frame = json.loads(msg.data)
                await ws.send_str(json.dumps({"event": "media", "streamSid": frame["streamSid"],
                                              "media": {"payload": frame["media"]["payload"]}}))
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", bot)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        conn.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # told to stop
        await runner.cleanup()

    asyncio.run(main())


def stream_server(conn: Connection, plan: Any, bot_url: str) -> None:
    """bench/media.py's engine, every leg also streamed to the bot."""
    mediabench._install_uvloop()
    from engine.calls.conference import MediaGraph
    from engine.calls.media_stream import start_stream
    from engine.media.clock import MediaClock

    pairs = mediabench.engine_ports(conn, plan)
    client_ports = conn.recv()

    async def main() -> dict[str, Any]:
        clock = MediaClock()
        graph = MediaGraph(clock, recordings_dir=tempfile.mkdtemp(prefix="bench-streams-"))
        sessions, calls = mediabench.bench_legs(plan, pairs, client_ports, clock, graph)
        streams = [start_stream(call, graph, bot_url, direction="inbound") for call in calls]
        conn.send("ready")
        w0, w1, end = conn.recv()
        await asyncio.sleep(max(0.0, w0 - time.monotonic()))
        for s in streams:  # measure the window only
            s.client.lateness = type(s.client.lateness)()
        dropped0 = sum(s.queue.dropped for s in streams)
        c0 = mediabench._cpu()
        await asyncio.sleep(max(0.0, w1 - time.monotonic()))
        c1 = mediabench._cpu()
        late = np.concatenate([np.fromiter(s.client.lateness._values, dtype=np.float64) for s in streams])
        result = {
            "cpu": c1 - c0, "wall": w1 - w0, "origin": clock.origin, "skipped": clock.skipped,
            "stream_lateness": late, "send_dropped": sum(s.queue.dropped for s in streams) - dropped0,
            "connected": sum(1 for s in streams if s.client.connections > 0),
            "bot_frames": sum(s.codec.received["media"] for s in streams),
        }
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        for s in streams:
            s.stop()
        await asyncio.sleep(0.3)
        await clock.stop()
        for s in sessions:
            s.close()
        return result

    result = asyncio.run(main())
    for p in pairs:
        p.close()
    conn.send(result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    legs = args.legs + args.legs % 2
    plan = mediabench.make_plan(legs, 0, 2, 2)

    plain_s, plain_g = mediabench.run_phase(mediabench.engine_server, (plan, False), plan,
                                            args.warmup, args.seconds, [], True)
    ctx = mp.get_context("spawn")
    b_conn, b_child = ctx.Pipe()
    bot = ctx.Process(target=bot_server, args=(b_child,), daemon=True)
    bot.start()
    try:
        if not b_conn.poll(30):
            raise SystemExit("bot did not start")
        url = f"ws://127.0.0.1:{b_conn.recv()}/"
        stream_s, stream_g = mediabench.run_phase(stream_server, (plan, url), plan,
                                                  args.warmup, args.seconds, [], True)
    finally:
        b_conn.send("stop")
        bot.join(10)
        if bot.is_alive():
            bot.terminate()
            bot.join(5)

    def per_leg(res: dict[str, Any]) -> float:
        return res["cpu"] / res["wall"] / legs * 1e6  # µs of CPU per leg per second

    def rtp_p99(sres: dict[str, Any], gres: dict[str, Any]) -> tuple[float, int, int]:
        expected, missing, _grid, cadence = mediabench.frames_and_lateness(sres, gres)
        return mediabench.pct(cadence, 99) * 1e3, missing, expected

    a, b = per_leg(plain_s), per_leg(stream_s)
    pa, ma, ea = rtp_p99(plain_s, plain_g)
    pb, mb, eb = rtp_p99(stream_s, stream_g)
    late = stream_s["stream_lateness"]
    print(f"legs {legs} at 50 pps each, {args.seconds:.0f} s measured per phase")
    print(f"{'':36} {'plain RTP':>12} {'streamed':>12} {'ratio':>8}")
    print(f"{'CPU per leg (us/s)':36} {a:12.0f} {b:12.0f} {b / a:8.2f}")
    print(f"{'CPU per stream, extra (us/s)':36} {'':12} {b - a:12.0f}")
    print(f"{'RTP lateness p99, cadence (ms)':36} {pa:12.2f} {pb:12.2f} {pb / pa if pa else float('nan'):8.2f}")
    print(f"{'RTP frames missing / expected':36} {f'{ma}/{ea}':>12} {f'{mb}/{eb}':>12}")
    print(f"{'frames to the bot: lateness p99 (ms)':36} {'':12} {mediabench.pct(late, 99) * 1e3:12.2f}")
    print(f"{'frames to the bot: lateness max (ms)':36} {'':12} {(late.max() if late.size else 0) * 1e3:12.2f}")
    sent = f"{late.size}, {stream_s['send_dropped']}"
    back = f"{stream_s['connected']}, {stream_s['bot_frames']}"
    print(f"{'frames to the bot (window), dropped':36} {'':12} {sent:>12}")
    print(f"{'streams connected, bot frames back':36} {'':12} {back:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
