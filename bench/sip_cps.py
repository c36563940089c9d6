"""bench/sip_cps: the highest SIP call rate with zero failed calls, held.

Runs in one go, on this machine, against three servers, each in its own
phase (a ``phase_*`` function returning its figures; :data:`PHASES`):

1. ``callbridge``: ``callbridge serve`` (its own process, uvloop) with a
   scenario that answers, waits 1 s and hangs up
   (``scenarios/answer_hangup.py``); sipp places calls with
   ``tests/e2e/sipp/uac_wait_bye.xml`` (INVITE, 200, ACK, the engine's BYE,
   200), so every call costs the engine a session, a dialog, two server
   transactions, a client transaction and a timer. Then, in a fresh engine,
   the best rate once more, sampling its RSS every second.
2. ``probe``: ``bench/uas_probe.py``, a bare uvloop UDP UAS that parses
   nothing: the ceiling of Python itself, not a SIP server.
3. ``kamailio`` (Debian package), answering INVITE and BYE statelessly with
   ``sl_send_reply`` and dropping ACK: the C ceiling on the same cores.

With ``--nodes N`` (opt-in, after callbridge's search and from its best
rate): ``nodes``, N ``callbridge serve`` processes behind Kamailio's
dispatcher with the shipped ``deploy/kamailio/dispatcher.cfg`` (each node
``--sip-proxies 127.0.0.1``), sipp's same scenario against Kamailio: what
the engine makes of both cores when one process is not enough.

The probe and Kamailio are driven by sipp's built-in ``uac`` with ``-d 0``
(the caller sends BYE at once); sipp shares the 2 cores with the server
under test.

Each rate is held for ``--seconds`` (default 60: a 200 OK whose ACK was lost
fails only after 64×T1 = 32 s, so 10-second steps overstate what a server
holds). A rate passes when every call placed succeeded. The search is
bounded: double from ``--start`` (the probe and Kamailio start from
callbridge's best) up to ``--max-rate`` (×4 for the probe and Kamailio),
then bisect until the bracket is within max(50, 10%) calls/s. A step
lasts its ``--seconds`` plus the last calls' end (a few seconds; up to 40 s
more when calls fail), so at 60 s steps a full run takes about 40 minutes
(about 7 steps for callbridge plus its RSS run, about 10 each for the probe
and Kamailio, which start from callbridge's best); ``--seconds 10``
shortens it by hand to about 10. A step in which no call at all succeeds
(a broken setup) ends that search.

RSS per call = (RSS at the end − RSS at the start) / calls live at the end,
in the fresh engine: "at the end" is the last one-second sample taken while
sipp was still placing calls (at least 1 s before its last call), and the
calls live then are rate × 1 s (Little's law: calls arrive at ``rate`` and
each lasts the scenario's 1 s between answer and BYE). It is an upper bound
of a live call's own cost: it also carries what recently ended calls leave
behind for a while (transactions in their RFC 3261 17.2.1 / RFC 6026 wait
states, call records).

Figures are printed and saved through ``bench/results.py``
(``bench/results/<stamp>-sip_cps.json``).

``--rounds N`` runs the selected phases N times in turn (``--only
nodes,probe --rounds 3``: nodes, probe, nodes, probe, nodes, probe), each
round with fresh servers, and prints each round's figures and ratios. The
saved figures are then the medians: each rate the median of the rounds',
each ratio the median of the rounds' own ratios (every round compares two
servers measured minutes apart; the two drift with the machine, sipp's
probe by a factor of two between runs here). Each round's figures go into
the result file's settings (``each_round``).

Opt-in phases, after callbridge's search and from its best rate:
``--latency`` (``bench/latency.py``: the INVITE -> CallAlerting histogram
at 100 calls/s and at 80% of the best rate) and ``--overload``
(``bench/overload.py``: 1.5 x the best rate, accepted calls all complete and
the rest are refused with 503).

Usage: ``./run.sh bench [--seconds 60] [--start 250] [--max-rate 4000]
[--only PHASE,...] [--nodes N] [--latency] [--overload] [--rounds N]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_process import free_port, stop_process  # noqa: E402
from kamailio_front import KamailioFront  # noqa: E402
from sipp_load import answer_hangup_sipp, run_sipp_load, serve_answer_hangup, sipp_binary  # noqa: E402

from results import Figures, figure, median_of_rounds, save  # noqa: E402

PROBE = Path(__file__).resolve().parent / "uas_probe.py"
HOLD = 1.0  # seconds scenarios/answer_hangup.py holds each call

Phase = Callable[[argparse.Namespace, Path, Figures], Figures]

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


def bracket(step: Callable[[int], bool | None], start: int, max_rate: int, pause: float = 2.0) -> int:
    """Highest rate for which ``step(rate)`` passes: double from ``start`` up
    to ``max_rate``, then bisect until the bracket is within max(50, 10%),
    ``pause`` seconds between bisection steps. ``step`` returns ``None`` to
    end the search (a broken setup, not a capacity)."""
    best, low = 0, 0
    high: int | None = None
    rate = min(start, max_rate)
    while True:
        passed = step(rate)
        if passed is None:
            break
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
        time.sleep(pause)
    return best


def search(label: str, sipp_args: list[str], seconds: int, start: int, max_rate: int,
           workdir: Path) -> int:
    """Highest rate with zero failed calls (:func:`bracket`), each rate a
    sipp run of ``seconds``; a run in which no call succeeded ends it."""

    def step(rate: int) -> bool | None:
        run = run_sipp_load(sipp_args, rate, seconds, workdir)
        unfinished = run.placed - run.successful - run.failed  # placed, never ended (sipp timed out)
        print(f"  {label:10} {rate:6d} calls/s for {seconds} s: ok={run.successful} failed={run.failed}"
              f"{f' unfinished={unfinished}' if unfinished else ''} {'PASS' if run.passed else 'FAIL'}",
              flush=True)
        if run.successful == 0:  # nothing answered at all: a broken setup, not a capacity
            print(f"  {label}: no call succeeded; stopping the search (see {run.log})", flush=True)
            return None
        return run.passed

    return bracket(step, start, max_rate)


def uac_sipp(port: int) -> list[str]:
    """sipp's built-in caller, sending BYE as soon as the call is up."""
    return ["-sn", "uac", "-s", "bench", "-d", "0", f"127.0.0.1:{port}"]


def phase_callbridge(args: argparse.Namespace, workdir: Path, results: Figures) -> Figures:
    """Search callbridge's best rate; then, in a fresh engine, hold that rate
    once more, sampling RSS every second: RSS at start, at the end of the
    calls (see the module docstring), right after and after 5 s idle."""
    print("callbridge serve (uvloop), answer + 1 s + BYE:", flush=True)
    serve = serve_answer_hangup(workdir)
    try:
        best = search("callbridge", answer_hangup_sipp(serve.sip_port), args.seconds, args.start,
                      args.max_rate, workdir)
    finally:
        serve.stop()
    figures = {"callbridge_cps": figure(best, "calls/s", "higher")}
    if not best:
        print("callbridge: no rate passed", flush=True)
        return figures
    serve = serve_answer_hangup(workdir)
    try:
        rss_start = serve.rss_kb()
        samples: list[tuple[float, int]] = []
        run = run_sipp_load(answer_hangup_sipp(serve.sip_port), best, args.seconds, workdir,
                            on_second=lambda t: samples.append((t, serve.rss_kb())))
        rss_after = serve.rss_kb()
        time.sleep(5)
        rss_idle = serve.rss_kb()
    finally:
        serve.stop()
    during = [rss for t, rss in samples if t <= args.seconds - 1.0]
    rss_end = during[-1] if during else rss_after
    live = best * HOLD
    per_call = (rss_end - rss_start) / live
    print(f"  callbridge {best:6d} calls/s again in a fresh engine: ok={run.successful} failed={run.failed}",
          flush=True)
    print(f"callbridge: {best} calls/s with 0 failed; RSS {rss_start / 1024:.0f} MB at start, "
          f"{rss_end / 1024:.0f} MB at the end of the calls ({live:.0f} live: {best}/s × {HOLD:g} s), "
          f"{rss_after / 1024:.0f} MB once they ended, {rss_idle / 1024:.0f} MB after 5 s idle; "
          f"{per_call:.1f} KB per live call", flush=True)
    figures.update({
        "callbridge_rss_start": figure(round(rss_start / 1024, 1), "MB", "lower"),
        "callbridge_rss_end": figure(round(rss_end / 1024, 1), "MB", "lower"),
        "callbridge_rss_idle": figure(round(rss_idle / 1024, 1), "MB", "lower"),
        "callbridge_rss_per_call": figure(round(per_call, 1), "KB", "lower"),
        "callbridge_failed_at_best": figure(run.failed + (run.placed - run.successful - run.failed),
                                            "calls", "lower"),
    })
    return figures


def phase_nodes(args: argparse.Namespace, workdir: Path, results: Figures) -> Figures:
    """``--nodes N`` callbridge processes behind Kamailio with the shipped
    ``deploy/kamailio/dispatcher.cfg`` (stateless, Call-ID hashed; each
    node ``--sip-proxies 127.0.0.1``, its own RTP ports), the same sipp
    scenario against Kamailio: how far more processes on the same cores go."""
    print(f"{args.nodes} callbridge nodes behind Kamailio's dispatcher (deploy/kamailio), "
          "answer + 1 s + BYE:", flush=True)
    span = 40000 // args.nodes
    nodes = []
    front = None
    try:
        for i in range(args.nodes):
            node_dir = workdir / f"node{i}"
            node_dir.mkdir()
            nodes.append(serve_answer_hangup(node_dir, ["--sip-proxies", "127.0.0.1"],
                                             rtp_ports=f"{20000 + i * span}-{20000 + (i + 1) * span - 1}"))
        front = KamailioFront(workdir / "front", "127.0.0.1", free_port(),
                              [("127.0.0.1", n.sip_port) for n in nodes])
        start = max(args.start, best_callbridge(results))
        best = search("nodes", answer_hangup_sipp(front.port), args.seconds, start, args.max_rate, workdir)
    finally:
        if front is not None:
            front.stop()
        for node in nodes:
            node.stop()
    print(f"{args.nodes} nodes: {best} calls/s with 0 failed", flush=True)
    return {"nodes_cps": figure(best, "calls/s", "higher"), "nodes": figure(args.nodes, "processes", "higher")}


def phase_probe(args: argparse.Namespace, workdir: Path, results: Figures) -> Figures:
    """The bare UAS probe's best rate under sipp's ``uac -d 0``."""
    print("bare UAS probe (bench/uas_probe.py, uvloop, parses nothing), sipp uac -d 0:", flush=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(PROBE), str(port)], stdout=subprocess.PIPE,
                            stderr=open(workdir / "probe.log", "w"), text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "listening":
            raise SystemExit(f"uas_probe did not start: {(workdir / 'probe.log').read_text()[-2000:]}")
        best = search_ceiling("probe", port, args, workdir, results)
        if proc.poll() is not None:
            raise SystemExit(f"uas_probe exited: {(workdir / 'probe.log').read_text()[-2000:]}")
    finally:
        stop_process(proc)
    return report_ceiling("probe", best, args)


def phase_kamailio(args: argparse.Namespace, workdir: Path, results: Figures) -> Figures:
    """Kamailio's best rate (stateless replies) under sipp's ``uac -d 0``."""
    print("kamailio (stateless sl_send_reply), sipp uac -d 0:", flush=True)
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
        best = search_ceiling("kamailio", port, args, workdir, results)
    finally:
        stop_process(proc)
    return report_ceiling("kamailio", best, args)


def search_ceiling(label: str, port: int, args: argparse.Namespace, workdir: Path, results: Figures) -> int:
    """A ceiling's best rate under sipp's ``uac -d 0``, searched from
    callbridge's best (or ``--start``) up to 4 x ``--max-rate``."""
    start = max(args.start, best_callbridge(results))
    return search(label, uac_sipp(port), args.seconds, start, args.max_rate * 4, workdir)


def report_ceiling(label: str, best: int, args: argparse.Namespace) -> Figures:
    """Print a ceiling's best rate and return it as ``<label>_cps``."""
    capped = " (the highest rate tried: sipp itself is near its limit there)" if best >= args.max_rate * 4 else ""
    print(f"{label}: {best} calls/s with 0 failed{capped}", flush=True)
    return {f"{label}_cps": figure(best, "calls/s", "higher")}




def best_callbridge(results: Figures) -> int:
    """callbridge's best rate found by an earlier phase of this run (0: none)."""
    return int(results.get("callbridge_cps", {}).get("value", 0))


def phase_latency(args: argparse.Namespace, workdir: Path, results: Figures) -> Figures:
    """INVITE read -> the scenario's CallAlerting handler entered, from the
    engine's histogram (``bench/latency.py``), at 100 calls/s and at 80% of
    callbridge's best rate (or of ``--max-rate`` without a callbridge phase)."""
    import latency  # bench/latency.py

    best = best_callbridge(results) or args.max_rate
    runs = latency.bench_latency(workdir, latency.default_rates(best), max(args.seconds, 10))
    out: Figures = {}
    for run in runs["invite_to_alerting"]["runs"]:
        for key in ("p50_ms", "p99_ms"):
            if run.get(key) is not None:
                out[f"invite_to_alerting_{key}_at_{run['rate']}"] = figure(run[key], "ms", "lower")
        if run.get("sipp_invite_to_200_p99_ms") is not None:
            out[f"sipp_invite_to_200_p99_ms_at_{run['rate']}"] = figure(
                run["sipp_invite_to_200_p99_ms"], "ms", "lower")
    return out


def phase_overload(args: argparse.Namespace, workdir: Path, results: Figures) -> Figures:
    """1.5 x callbridge's best rate (``bench/overload.py``): the calls the
    engine accepts must all complete, the rest be refused with 503."""
    from overload import run_overload  # bench/overload.py

    best = best_callbridge(results) or args.max_rate
    got = run_overload(best, max(args.seconds, 30))
    return {
        "overload_failed_accepted": figure(got["failed_accepted"], "calls", "lower"),
        "overload_accepted_per_second": figure(got["accepted_per_second"], "calls/s", "higher"),
        "overload_refused_503": figure(got["refused_503"], "calls", "lower"),
        "overload_unanswered": figure(got["unanswered"], "calls", "lower"),
    }


# every phase, in the order they run; each returns its figures and sees the
# figures of the phases before it
PHASES: dict[str, Phase] = {
    "callbridge": phase_callbridge,
    "nodes": phase_nodes,
    "probe": phase_probe,
    "kamailio": phase_kamailio,
    "latency": phase_latency,
    "overload": phase_overload,
}
#: Phases a run does only when asked (``--nodes``, ``--latency``, ``--overload`` or ``--only``).
OPT_IN = ("nodes", "latency", "overload")


def selected(args: argparse.Namespace) -> list[str]:
    """The phases this run does: ``--only NAME``, or every phase but the
    opt-in ones not asked for (those run after callbridge's search, from
    its best rate)."""
    if args.only:
        wanted = set(args.only.split(","))
        return [name for name in PHASES if name in wanted]
    return [name for name in PHASES if name not in OPT_IN or getattr(args, name, False)]


def ratios(results: Figures) -> Figures:
    """callbridge's rate (one process, and ``--nodes`` behind Kamailio) as a
    fraction of the probe's and of Kamailio's."""
    out: Figures = {}
    for ours in ("callbridge", "nodes"):
        cb = results.get(f"{ours}_cps", {}).get("value", 0)
        for other in ("probe", "kamailio"):
            theirs = results.get(f"{other}_cps", {}).get("value", 0)
            if cb and theirs:
                out[f"ratio_{ours}_{other}"] = figure(round(cb / theirs, 4), "ratio", "higher")
    return out


def report(results: Figures, seconds: int) -> None:
    """The summary table: calls/s of each server held ``seconds`` with zero
    failed calls, the ratios, RSS per live call."""
    print(f"summary (calls/s with 0 failed calls, each rate held {seconds} s):")
    nodes = f"{results['nodes']['value']:.0f} nodes" if "nodes" in results else "nodes"
    for key, label in (("callbridge_cps", "callbridge"), ("nodes_cps", f"{nodes} + kamailio"),
                       ("probe_cps", "bare UAS probe"), ("kamailio_cps", "kamailio")):
        if key in results:
            print(f"  {label:20} {results[key]['value']:6.0f} calls/s")
    for key, label in (("ratio_callbridge_probe", "callbridge/probe"),
                       ("ratio_callbridge_kamailio", "callbridge/kamailio"),
                       ("ratio_nodes_probe", f"{nodes}/probe"), ("ratio_nodes_kamailio", f"{nodes}/kamailio")):
        if key in results:
            print(f"  {label:20} {results[key]['value']:.3f}")
    if "callbridge_rss_per_call" in results:
        print(f"  RSS per live call: {results['callbridge_rss_per_call']['value']:.1f} KB "
              f"((RSS at the end - at the start) / (rate x {HOLD:g} s))")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="how long each rate is held (default 60)")
    parser.add_argument("--start", type=int, default=250, help="first rate tried (default 250)")
    parser.add_argument("--max-rate", type=int, default=4000,
                        help="highest rate tried for callbridge; ×4 for the probe and Kamailio (default 4000)")
    parser.add_argument("--only", help=f"run these phases, comma-separated, in their usual order ({', '.join(PHASES)})")
    parser.add_argument("--nodes", type=int, default=0, metavar="N",
                        help="also N callbridge processes behind Kamailio's dispatcher (N >= 2)")
    parser.add_argument("--latency", action="store_true",
                        help="also INVITE -> CallAlerting latency at 100/s and 80%% of the best rate")
    parser.add_argument("--overload", action="store_true",
                        help="also 1.5x the best rate: accepted calls complete, the rest get 503")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the selected phases this many times in turn and save the medians (default 1)")
    args = parser.parse_args()
    if args.seconds < 2 or args.start < 1 or args.max_rate < 1 or args.rounds < 1:
        parser.error("--seconds must be at least 2, --start and --max-rate at least 1, --rounds at least 1")
    unknown = set(args.only.split(",")) - set(PHASES) if args.only else set()
    if unknown:
        parser.error(f"--only: no phase {', '.join(sorted(unknown))} (phases: {', '.join(PHASES)})")
    if args.nodes == 1 or args.nodes < 0 or ("nodes" in selected(args) and args.nodes < 2):
        parser.error("--nodes must be at least 2")
    try:
        sipp_binary()
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    rounds: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="sip_cps-") as tmp:
        for n in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {n} of {args.rounds}:", flush=True)
            workdir = Path(tmp) / f"round{n}"
            workdir.mkdir()
            results: Figures = {}
            for name in selected(args):
                results.update(PHASES[name](args, workdir, results))
            results.update(ratios(results))
            rounds.append(results)
            if args.rounds > 1:
                print(f"round {n} of {args.rounds}, ", end="")
                report(results, args.seconds)
    results = median_of_rounds(rounds)
    if args.rounds > 1:
        print(f"medians of {args.rounds} rounds (each ratio the median of the rounds' ratios), ", end="")
    report(results, args.seconds)
    settings = {"seconds": args.seconds, "start": args.start, "max_rate": args.max_rate,
                "phases": selected(args), "nodes": args.nodes, "rounds": args.rounds}
    if args.rounds > 1:
        settings["each_round"] = [{name: fig["value"] for name, fig in r.items()} for r in rounds]
    save("sip_cps", results, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
