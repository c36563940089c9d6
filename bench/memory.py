"""bench/memory: the memory of a live idle call with its scenario session.

``callbridge serve`` (its own process, uvloop, the tuned collector: the
real command, through ``tests/serve_process.py``) runs
``bench/scenarios/answer_hold.py``, which answers and never hangs up; sipp
places ``--calls`` calls at ``--rate`` with ``bench/sipp/uac_hold_bye.xml``
(INVITE, 200, ACK, a pause of ``--hold`` seconds, then the caller's BYE).

The engine's RSS (``/proc/PID/status`` VmRSS) is read:

- *before*: once healthy, before the first call;
- *idle*: ``--settle`` seconds (default 35) after the last call was placed,
  so that every INVITE server transaction has passed Timer L (64*T1 = 32 s,
  RFC 6026 section 8.7) and is gone: what remains is the calls, their
  dialogs, media sessions (RTP/RTCP sockets, the RTP-timeout watch) and
  scenario sessions. The live calls and sessions are read from
  ``/metrics`` at the same moment, so the figure is per call actually up;
- *after*: 5 s after sipp finished (every call ended).

KB per live idle call = (idle - before) / live calls. RSS includes what
the allocator keeps and the sockets' kernel side is not in it (socket
buffers are kernel memory).

With ``--tracemalloc`` a second, identical run starts the engine with
``bench/memprobe`` on ``PYTHONPATH`` (its ``sitecustomize`` starts
tracemalloc, with ``--frames`` frames, and dumps a snapshot on SIGUSR2):
the Python-level bytes per call (traced memory) and the top lines that
hold them (snapshot at *idle* compared to *before*) are printed.

Usage: ``python bench/memory.py [--calls 2000] [--rate 200] [--tracemalloc]``

Returns (and prints as JSON) ``{"rss_per_idle_call_kb": {...}}``; when
``bench/results.py`` is there, the figures are saved with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))
from serve_process import ServeProcess, free_port  # noqa: E402

UAC_XML = BENCH / "sipp" / "uac_hold_bye.xml"
SCENARIOS = BENCH / "scenarios"
PROBE = BENCH / "memprobe"


def start_engine(workdir: Path, rtp_timeout: float, metrics_port: int) -> ServeProcess:
    """``callbridge serve`` routing every number to ``answer_hold``."""
    rules = workdir / "rules.yaml"
    rules.write_text("rules:\n  - {name: Bench, pattern: \"bench\", scenarios: [answer_hold]}\n")
    serve = ServeProcess(workdir, ["--rules", str(rules), "--scenarios", str(SCENARIOS),
                                   "--trusted", "127.0.0.1", "--log-level", "warning",
                                   "--rtp-ports", "20000-60000", "--rtp-timeout", str(rtp_timeout),
                                   "--metrics-listen", f"127.0.0.1:{metrics_port}"])
    serve.wait_healthy(90)
    return serve


def live_counts(metrics_port: int) -> dict[str, int]:
    """``callbridge_sip_calls_live`` and ``callbridge_sessions_live``."""
    with urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, int] = {}
    for name in ("callbridge_sip_calls_live", "callbridge_sessions_live"):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        out[name] = int(float(m.group(1))) if m else -1
    return out


def sipp_stats(log: Path) -> tuple[int, int]:
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", log.read_text(errors="replace"))

    def stat(name: str) -> int:
        values = [int(m.group(1)) for m in re.finditer(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", text)]
        return values[-1] if values else 0

    return stat("Successful call"), stat("Failed call")


def run_once(args: argparse.Namespace, workdir: Path, probe: bool) -> dict[str, Any]:
    """One engine, one sipp run; with ``probe``, tracemalloc snapshots."""
    placing = args.calls / args.rate
    hold = placing + args.settle + 10
    env_before = dict(os.environ)
    snap = workdir / "snap"
    if probe:
        os.environ["PYTHONPATH"] = str(PROBE) + os.pathsep + os.environ.get("PYTHONPATH", "")
        os.environ["CALLBRIDGE_MEMPROBE"] = str(snap)
        os.environ["PYTHONTRACEMALLOC"] = str(args.frames)
    metrics_port = free_port()
    try:
        serve = start_engine(workdir, max(60.0, hold + 30), metrics_port)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    try:
        time.sleep(2)
        if probe:
            serve.proc.send_signal(signal.SIGUSR2)
            _wait_file(snap.with_name("snap-1.txt"))
        rss_before = serve.rss_kb()
        log = workdir / "sipp.log"
        cmd = ["sipp", "-sf", str(UAC_XML), "-s", "bench", f"127.0.0.1:{serve.sip_port}",
               "-i", "127.0.0.1", "-r", str(args.rate), "-m", str(args.calls), "-l", str(args.calls),
               "-d", str(int(hold * 1000)), "-nostdin", "-timeout", f"{int(hold + placing + 60)}s",
               "-timeout_error", "-max_socket", "50000"]
        with open(log, "w") as fh:
            sipp = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir)
            try:
                time.sleep(placing + args.settle)
                live = live_counts(metrics_port)
                rss_idle = serve.rss_kb()
                if probe:
                    serve.proc.send_signal(signal.SIGUSR2)
                    _wait_file(snap.with_name("snap-2.txt"))
                sipp.wait(timeout=hold + placing + 90)
            finally:
                if sipp.poll() is None:
                    sipp.kill()
                    sipp.wait()
        time.sleep(5)
        rss_after = serve.rss_kb()
        ok, failed = sipp_stats(log)
    finally:
        serve.stop()
    calls = live["callbridge_sip_calls_live"]
    result: dict[str, Any] = {
        "calls": args.calls, "rate": args.rate, "settle_s": args.settle, "live_calls": calls,
        "live_sessions": live["callbridge_sessions_live"], "ok": ok, "failed": failed,
        "rss_before_kb": rss_before, "rss_idle_kb": rss_idle, "rss_after_kb": rss_after,
        "rss_per_idle_call_kb": round((rss_idle - rss_before) / max(calls, 1), 2),
    }
    if probe:
        result.update(_traced(snap, calls, args.top))
    return result


def _wait_file(path: Path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            time.sleep(0.5)
            return
        time.sleep(0.2)
    raise RuntimeError(f"the probe wrote no {path.name}: is bench/memprobe on PYTHONPATH?")


def _traced(snap: Path, calls: int, top: int) -> dict[str, Any]:
    """Traced bytes per call and the top lines, idle snapshot against before."""
    import tracemalloc

    before = tracemalloc.Snapshot.load(str(snap.with_name("snap-1.snap")))
    idle = tracemalloc.Snapshot.load(str(snap.with_name("snap-2.snap")))
    traced0 = int(snap.with_name("snap-1.txt").read_text().split()[0])
    traced1 = int(snap.with_name("snap-2.txt").read_text().split()[0])
    n = max(calls, 1)
    out: dict[str, Any] = {"traced_per_idle_call_kb": round((traced1 - traced0) / n / 1024, 2)}
    for key in ("lineno", "filename"):
        rows = []
        for stat in idle.compare_to(before, key)[:top]:
            frame = stat.traceback[0]
            where = _short(frame.filename) + (f":{frame.lineno}" if key == "lineno" else "")
            rows.append({"where": where, "bytes_per_call": round(stat.size_diff / n),
                         "blocks_per_call": round(stat.count_diff / n, 2)})
        out[f"top_{key}"] = rows
    return out


def _short(filename: str) -> str:
    for marker in ("/engine/", "/site-packages/", "/lib/python3"):
        i = filename.find(marker)
        if i >= 0:
            return filename[i + 1:]
    return filename


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls placed and held")
    parser.add_argument("--rate", type=int, default=200, help="calls placed per second")
    parser.add_argument("--settle", type=float, default=35.0,
                        help="seconds after the last call before the idle reading (Timer L is 32 s)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="then a second run under tracemalloc: Python bytes per call, top lines")
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc frames (with --tracemalloc)")
    parser.add_argument("--top", type=int, default=15, help="lines listed (with --tracemalloc)")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed: ./run.sh bench installs sip-tester")
    figures: dict[str, Any] = {}  # what the results file keeps (results.figure)
    details: dict[str, Any] = {}  # every reading, printed as JSON at the end
    with tempfile.TemporaryDirectory(prefix="memory-") as tmp:
        rss = run_once(args, Path(tmp), probe=False)
        print(f"RSS: {rss['rss_before_kb'] // 1024} MB before, {rss['rss_idle_kb'] // 1024} MB with "
              f"{rss['live_calls']} live idle calls ({rss['live_sessions']} sessions), "
              f"{rss['rss_after_kb'] // 1024} MB after they ended; sipp ok={rss['ok']} failed={rss['failed']}",
              flush=True)
        print(f"RSS per live idle call: {rss['rss_per_idle_call_kb']} KB", flush=True)
        details["rss"] = rss
        figures["rss_per_idle_call_kb"] = {"value": rss["rss_per_idle_call_kb"], "unit": "KB", "better": "lower"}
    if args.tracemalloc:
        with tempfile.TemporaryDirectory(prefix="memory-tm-") as tmp:
            tm = run_once(args, Path(tmp), probe=True)
        print(f"tracemalloc: {tm['traced_per_idle_call_kb']} KB traced per live idle call "
              f"({tm['live_calls']} calls; RSS under tracemalloc {tm['rss_per_idle_call_kb']} KB)", flush=True)
        for key in ("lineno", "filename"):
            print(f"  top by {key} (bytes, blocks per call):")
            for row in tm[f"top_{key}"]:
                print(f"    {row['bytes_per_call']:7d} B {row['blocks_per_call']:7.2f}  {row['where']}")
        details["tracemalloc"] = tm
        figures["traced_per_idle_call_kb"] = {"value": tm["traced_per_idle_call_kb"], "unit": "KB",
                                              "better": "lower"}
    try:
        import results  # type: ignore[import-not-found]

        results.save("memory", figures)
    except ImportError:
        pass
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if not kk.startswith("top_")}
                      for k, v in details.items()}))
    return details


if __name__ == "__main__":
    main()
