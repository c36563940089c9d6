"""bench/sip_cps: the highest SIP call rate with zero failed calls.

Runs in one go, on this machine, against two servers:

1. ``callbridge serve`` (its own process, uvloop) with a scenario that
   answers, waits 1 s and hangs up (``scenarios/answer_hangup.py``); sipp
   places calls with ``tests/e2e/sipp/uac_wait_bye.xml`` (INVITE, 200, ACK,
   the engine's BYE, 200), so every call costs the engine a session, a
   dialog, two server transactions, a client transaction and a timer.
2. Kamailio (Debian package), answering INVITE and BYE statelessly with
   ``sl_send_reply`` and dropping ACK: the C ceiling of "answer a call" on
   the same cores, driven by sipp's built-in ``uac`` (the caller sends BYE).

For each, rates are tried upwards (doubling, then bisecting) for
``--seconds`` each; a rate passes when every call succeeded. It prints the
best rate of each, their ratio, and callbridge's RSS at start, at the end
and its growth. sipp shares the 2 cores with the server under test, as in
``../shared/probes/cps.sh``.

Usage: ``./run.sh bench [--seconds 20] [--max-rate 4000] [--only callbridge|kamailio]``
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_process import ServeProcess, free_port  # noqa: E402

UAC_XML = ROOT / "tests" / "e2e" / "sipp" / "uac_wait_bye.xml"

KAMAILIO_CFG = """#!KAMAILIO
debug=0
log_stderror=yes
memdbg=5
memlog=5
children={children}
listen=udp:127.0.0.1:{port}
mpath="{mpath}"
loadmodule "sl.so"
loadmodule "textops.so"
request_route {{
    if (is_method("ACK")) {{ exit; }}
    sl_send_reply("200", "OK");
    exit;
}}
"""


def run_sipp(args: list[str], rate: int, seconds: int, workdir: Path) -> tuple[int, int]:
    """Run sipp at ``rate`` calls/s for ``seconds``; return (successful, failed)."""
    total = rate * seconds
    cmd = ["sipp", *args, "-i", "127.0.0.1", "-r", str(rate), "-m", str(total),
           "-l", str(rate * 4), "-nostdin", "-timeout", f"{seconds + 40}s", "-timeout_error",
           "-max_socket", "50000"]
    out = workdir / f"sipp-{rate}.log"
    with open(out, "w") as fh:
        try:
            subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=seconds + 60, cwd=workdir)
        except subprocess.TimeoutExpired:
            pass
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out.read_text(errors="replace"))

    def stat(name: str) -> int:
        values = [int(m.group(1)) for m in re.finditer(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", text)]
        return values[-1] if values else 0

    return stat("Successful call"), stat("Failed call")


def search(label: str, sipp_args: list[str], seconds: int, start: int, max_rate: int,
           workdir: Path, on_step=None) -> int:
    """Highest rate with zero failed calls: double from ``start``, then bisect."""
    best, low, high = 0, 0, None
    rate = start
    while True:
        ok, failed = run_sipp(sipp_args, rate, seconds, workdir)
        passed = failed == 0 and ok == rate * seconds
        print(f"  {label:10} {rate:6d} calls/s for {seconds} s: ok={ok} failed={failed}"
              f" {'PASS' if passed else 'FAIL'}", flush=True)
        if on_step:
            on_step()
        if passed:
            best = low = rate
            if high is None:
                if rate >= max_rate:
                    break
                rate = min(rate * 2, max_rate)
                continue
        else:
            high = rate
        if high is None or high - low <= max(50, low // 10):
            break
        rate = (low + high) // 2
        time.sleep(2)
    return best


def start_callbridge(workdir: Path) -> tuple[ServeProcess, int]:
    rules = workdir / "rules.yaml"
    rules.write_text("rules:\n  - {name: Bench, pattern: \"bench\", scenarios: [answer_hangup]}\n")
    serve = ServeProcess(workdir, ["--rules", str(rules), "--scenarios", str(ROOT / "scenarios"),
                                   "--trusted", "127.0.0.1", "--log-level", "warning",
                                   "--rtp-ports", "20000-60000"])
    serve.wait_healthy(10)
    return serve, serve.sip_port


def stop(serve: ServeProcess) -> None:
    serve.stop()


def bench_callbridge(args: argparse.Namespace, workdir: Path) -> tuple[int, int, int, int]:
    """Search the best rate; then, in a fresh engine, run that rate once
    more and read the RSS before, at the end of the calls and after 5 s idle."""
    proc, port = start_callbridge(workdir)
    try:
        best = search("callbridge", ["-sf", str(UAC_XML), "-s", "bench", f"127.0.0.1:{port}"],
                      args.seconds, args.start, args.max_rate, workdir)
    finally:
        stop(proc)
    if not best:
        return 0, 0, 0, 0
    proc, port = start_callbridge(workdir)
    try:
        rss_start = proc.rss_kb()
        ok, failed = run_sipp(["-sf", str(UAC_XML), "-s", "bench", f"127.0.0.1:{port}"],
                              best, args.seconds, workdir)
        rss_end = proc.rss_kb()
        time.sleep(5)
        rss_idle = proc.rss_kb()
        print(f"  callbridge {best:6d} calls/s again in a fresh engine: ok={ok} failed={failed}", flush=True)
        return best, rss_start, rss_end, rss_idle
    finally:
        stop(proc)


def bench_kamailio(args: argparse.Namespace, workdir: Path) -> int:
    if shutil.which("kamailio") is None:
        raise SystemExit("kamailio is not installed: ./run.sh bench installs it")
    mpath = next((p for p in ("/usr/lib/x86_64-linux-gnu/kamailio/modules",
                              "/usr/lib/aarch64-linux-gnu/kamailio/modules",
                              "/usr/lib/kamailio/modules") if Path(p).is_dir()), None)
    if mpath is None:
        raise SystemExit("kamailio modules directory not found")
    port = free_port()
    cfg = workdir / "kamailio.cfg"
    cfg.write_text(KAMAILIO_CFG.format(port=port, mpath=mpath, children=2))
    proc = subprocess.Popen(["kamailio", "-f", str(cfg), "-DD", "-E", "-m", "64", "-M", "8",
                             "-P", str(workdir / "kamailio.pid"), "-Y", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "kamailio.log", "w"))
    try:
        time.sleep(1.0)
        if proc.poll() is not None:
            raise SystemExit(f"kamailio exited: {(workdir / 'kamailio.log').read_text()[-2000:]}")
        return search("kamailio", ["-sn", "uac", "-s", "bench", "-d", "0", f"127.0.0.1:{port}"],
                      args.seconds, args.start, args.max_rate * 4, workdir)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="duration of each rate step")
    parser.add_argument("--start", type=int, default=250, help="first rate tried")
    parser.add_argument("--max-rate", type=int, default=4000)
    parser.add_argument("--only", choices=("callbridge", "kamailio"))
    parser.add_argument("--latency", action="store_true",
                        help="then bench/latency.py: INVITE -> CallAlerting at 100/s and 80%% of the best rate")
    parser.add_argument("--overload", action="store_true",
                        help="then place 1.5x callbridge's best rate (bench/overload.py)")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed: ./run.sh bench installs sip-tester")
    with tempfile.TemporaryDirectory(prefix="sip_cps-") as tmp:
        workdir = Path(tmp)
        cb = kam = 0
        if args.only != "kamailio":
            print("callbridge serve (uvloop), answer + 1 s + BYE:", flush=True)
            cb, rss0, rss1, rss2 = bench_callbridge(args, workdir)
            print(f"callbridge: {cb} calls/s with 0 failed; RSS at that rate {rss0 // 1024} MB at start, "
                  f"{rss1 // 1024} MB after {args.seconds} s of calls (growth {(rss1 - rss0) // 1024} MB), "
                  f"{rss2 // 1024} MB after 5 s idle", flush=True)
            if args.latency and cb:
                import latency
                latency.bench_latency(workdir, latency.default_rates(cb))
            if args.overload and cb:
                from overload import run_overload  # bench/overload.py
                run_overload(cb, max(args.seconds, 30))
        if args.only != "callbridge":
            print("kamailio (stateless sl_send_reply), sipp uac:", flush=True)
            kam = bench_kamailio(args, workdir)
            capped = " (the highest rate tried: sipp itself is near its limit there)" if kam >= args.max_rate * 4 else ""
            print(f"kamailio: {kam} calls/s with 0 failed{capped}", flush=True)
        if cb and kam:
            print(f"ratio callbridge/kamailio: {cb / kam:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
