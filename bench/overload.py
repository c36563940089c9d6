"""bench/overload: the engine above its capacity degrades, it does not collapse.

Places calls at ``--factor`` (1.5) times the engine's highest rate with zero
failed calls (``--max-rate``; found with short steps when not given) for
``--seconds`` (60), with ``bench/sipp/uac_wait_bye_or_503.xml``: the
caller of ``bench/sip_cps`` (INVITE, 200, ACK, the engine's BYE after 1 s,
200) that takes a 503 as a clean outcome of its own. It prints, and
:func:`run_overload` returns:

- ``accepted``: calls the engine answered with 200 (sipp's trace counts);
- ``failed_accepted``: accepted calls that did not end normally (must be
  0: their ACKs and BYEs are never shed);
- ``refused_503``: calls refused with 503 and Retry-After, from sipp's
  counts and, to cross-check, the engine's ``/metrics``
  (``callbridge_sip_overload_refused_total``);
- ``dropped``: new INVITEs the engine dropped unparsed (its metrics), and
  ``unanswered``: calls sipp gave up on after its INVITE retransmissions
  (those it dropped each time);
- the engine's overload episodes, the UDP datagrams its kernel dropped on
  full receive buffers, and its CPU seconds.

Usage: ``python bench/overload.py [--max-rate 800] [--seconds 60] [--factor 1.5]``;
:mod:`bench.sip_cps` runs it after its search with ``--overload``.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_process import ServeProcess, free_port  # noqa: E402
from sipp_load import serve_answer_hangup  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sip_cps import bracket  # noqa: E402

UAC_XML = Path(__file__).resolve().parent / "sipp" / "uac_wait_bye_or_503.xml"


def start_engine(workdir: Path, metrics_port: int, extra: list[str]) -> ServeProcess:
    """The bench's answering engine (:func:`sipp_load.serve_answer_hangup`)
    with ``/metrics`` on ``metrics_port``."""
    return serve_answer_hangup(workdir, ["--metrics-listen", f"127.0.0.1:{metrics_port}", *extra])


def scrape(metrics_port: int) -> dict[str, float]:
    """The engine's unlabelled metrics by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(callbridge_[a-z_]+) ([0-9.e+-]+)", line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (/proc), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def _last_row(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    return rows[-1] if rows else {}


def sipp_calls(port: int, rate: int, seconds: int, workdir: Path) -> dict[str, int]:
    """Run sipp at ``rate`` calls/s for ``seconds`` against ``port``; its
    figures from ``-trace_stat`` (calls) and ``-trace_counts`` (messages)."""
    for old in workdir.glob("uac_wait_bye_or_503_*"):
        old.unlink()
    total = rate * seconds
    cmd = ["sipp", "-sf", str(UAC_XML), "-s", "bench", f"127.0.0.1:{port}", "-i", "127.0.0.1",
           "-r", str(rate), "-m", str(total), "-l", str(rate * 4), "-nostdin",
           "-timeout", f"{seconds + 40}s", "-timeout_error", "-max_socket", "50000",
           "-trace_stat", "-fd", "5", "-trace_counts"]
    with open(workdir / "sipp-overload.log", "w") as fh:
        try:
            subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=seconds + 60, cwd=workdir)
        except subprocess.TimeoutExpired:
            pass
    stat_files = [p for p in workdir.glob("uac_wait_bye_or_503_*_.csv")]
    count_files = list(workdir.glob("uac_wait_bye_or_503_*_counts.csv"))
    if not stat_files or not count_files:
        log = (workdir / "sipp-overload.log").read_text(errors="replace")
        raise SystemExit(f"sipp wrote no statistics; its output ends: {log[-1500:]}")
    stat, counts = _last_row(stat_files[0]), _last_row(count_files[0])

    def cumulated(name: str) -> int:
        return int(stat.get(f"{name}(C)", "0") or 0)

    def message(suffix: str) -> int:
        # Columns are "<index>_<message>_<what>", e.g. "3_503_Recv".
        return sum(int(v or 0) for k, v in counts.items() if k and k.endswith(suffix))

    return {
        "placed": int(stat.get("TotalCallCreated", "0") or 0),
        "successful": cumulated("SuccessfulCall"),
        "failed": cumulated("FailedCall"),
        "failed_max_retrans": cumulated("FailedMaxUDPRetrans"),
        "ok_200": message("_200_Recv"),  # the INVITE's (the 200 to the BYE is "_200_Sent")
        "recv_503": message("_503_Recv"),
        "invite_retrans": sum(int(v or 0) for k, v in counts.items() if k and k.endswith("_INVITE_Retrans")),
    }


def find_max_rate(workdir: Path, seconds: int = 10, start: int = 250, ceiling: int = 4000) -> int:
    """Highest rate with zero failed calls in ``seconds`` steps, a fresh
    engine each (a quick estimate with sip_cps's :func:`~sip_cps.bracket`;
    bench/sip_cps searches properly, 60 s a step)."""

    def step(rate: int) -> bool:
        serve = start_engine(workdir, free_port(), [])
        try:
            calls = sipp_calls(serve.sip_port, rate, seconds, workdir)
        finally:
            serve.stop()
        passed = calls["failed"] == 0 and calls["successful"] == rate * seconds
        print(f"  search {rate:6d} calls/s for {seconds} s: ok={calls['successful']} "
              f"failed={calls['failed']} {'PASS' if passed else 'FAIL'}", flush=True)
        return passed

    return bracket(step, start, ceiling, pause=0.0)


def run_overload(max_rate: int, seconds: int = 60, workdir: Path | None = None, *,
                 factor: float = 1.5, serve_args: list[str] | None = None) -> dict[str, Any]:
    """Place calls at ``factor`` × ``max_rate`` for ``seconds`` against a
    fresh engine; print and return the figures (see the module notes).

    ``failed_accepted`` counts the calls answered 200 that did not end as
    the scenario says: those answered less those completed, or sipp's
    failed calls less those it gave up on unanswered
    (``FailedMaxUDPRetrans``: INVITEs dropped every time), the larger.
    """
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed: ./run.sh bench installs sip-tester")
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        work = workdir or Path(tmp)
        rate = max(1, round(max_rate * factor))
        metrics_port = free_port()
        serve = start_engine(work, metrics_port, serve_args or [])
        try:
            cpu0 = cpu_seconds(serve.pid)
            started = time.monotonic()
            calls = sipp_calls(serve.sip_port, rate, seconds, work)
            wall = time.monotonic() - started
            cpu = cpu_seconds(serve.pid) - cpu0
            metrics = scrape(metrics_port)
        finally:
            serve.stop()
    completed = calls["successful"] - calls["recv_503"]
    # An accepted call that did not complete failed, whether sipp counted it
    # failed or was still waiting when its -timeout stopped it.
    failed_accepted = max(calls["ok_200"] - completed, calls["failed"] - calls["failed_max_retrans"])
    figures: dict[str, Any] = {
        "max_rate": max_rate, "rate": rate, "seconds": seconds,
        "placed": calls["placed"],
        "accepted": calls["ok_200"],
        "completed": completed,
        "failed_accepted": failed_accepted,
        "refused_503": calls["recv_503"],
        "refused_503_engine": int(metrics.get("callbridge_sip_overload_refused_total", 0)),
        "dropped_engine": int(metrics.get("callbridge_sip_overload_dropped_total", 0)),
        "unanswered": calls["failed_max_retrans"],
        "invite_retransmissions": calls["invite_retrans"],
        "episodes": int(metrics.get("callbridge_sip_overload_episodes_total", 0)),
        "udp_receive_dropped": int(metrics.get("callbridge_sip_udp_receive_dropped_total", 0)),
        "engine_cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1),
        "accepted_per_second": round(calls["ok_200"] / seconds, 1),
    }
    print(f"overload: {rate} calls/s ({factor:g} x {max_rate}) for {seconds} s: "
          f"placed {figures['placed']}, accepted {figures['accepted']} "
          f"({figures['accepted_per_second']}/s), completed {figures['completed']}, "
          f"failed among accepted {failed_accepted}; refused with 503 {figures['refused_503']} "
          f"(engine: {figures['refused_503_engine']}), dropped {figures['dropped_engine']}, "
          f"unanswered {figures['unanswered']}; {figures['episodes']} overload episode(s), "
          f"{figures['udp_receive_dropped']} datagrams lost in full receive buffers; "
          f"engine CPU {figures['engine_cpu_seconds']} s in {figures['wall_seconds']} s"
          f" -> {'PASS' if failed_accepted == 0 else 'FAIL'}", flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-rate", type=int, help="the engine's highest rate with zero failed calls"
                                                     " (found with 10 s steps when not given)")
    parser.add_argument("--seconds", type=int, default=60, help="duration of the overload run")
    parser.add_argument("--factor", type=float, default=1.5, help="the rate placed, times --max-rate")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="an extra `callbridge serve` argument (repeat), e.g. --serve-arg=--overload-lag-ms=50")
    args = parser.parse_args()
    if args.seconds < 1 or args.factor <= 0 or (args.max_rate is not None and args.max_rate < 1):
        raise SystemExit("--seconds, --factor and --max-rate must be positive")
    max_rate = args.max_rate
    if max_rate is None:
        with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
            max_rate = find_max_rate(Path(tmp))
        if not max_rate:
            raise SystemExit("no rate passed with zero failed calls")
    run_overload(max_rate, args.seconds, factor=args.factor, serve_args=args.serve_arg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
