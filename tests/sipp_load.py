"""sipp placing calls at a steady rate against a server on loopback, for the
load benches (``bench/sip_cps.py``, ``bench/soak.py``) and the soak test:
bounded in time, its final counters read back from its screen, and a
callback once a second while it runs (to sample the server's RSS).

Bench scripts put ``tests/`` on ``sys.path`` to import it, as they do for
:mod:`serve_process`."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from serve_process import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
UAC_WAIT_BYE = ROOT / "tests" / "e2e" / "sipp" / "uac_wait_bye.xml"

__all__ = ["UAC_WAIT_BYE", "SippLoad", "answer_hangup_sipp", "run_sipp_load", "serve_answer_hangup", "sipp_binary"]


def serve_answer_hangup(workdir: Path, extra: Sequence[str] = (), rtp_ports: str = "20000-60000") -> ServeProcess:
    """``callbridge serve`` (its own process, uvloop) routing the service
    ``bench`` to ``scenarios/answer_hangup.py`` (answer, 1 s, BYE), sipp's
    address trusted (no rate limit: the engine's own capacity is under
    test), with ``extra`` flags (``--metrics-listen``...); healthy."""
    rules = workdir / "rules.yaml"
    rules.write_text("rules:\n  - {name: Bench, pattern: \"bench\", scenarios: [answer_hangup]}\n")
    serve = ServeProcess(workdir, ["--rules", str(rules), "--scenarios", str(ROOT / "scenarios"),
                                   "--trusted", "127.0.0.1", "--log-level", "warning",
                                   "--rtp-ports", rtp_ports, *extra])
    serve.wait_healthy(10)
    return serve


def answer_hangup_sipp(port: int) -> list[str]:
    """sipp's arguments for calls to :func:`serve_answer_hangup`'s engine:
    ``uac_wait_bye.xml`` (INVITE, 200, ACK, the engine's BYE, 200)."""
    return ["-sf", str(UAC_WAIT_BYE), "-s", "bench", f"127.0.0.1:{port}"]


def sipp_binary() -> str:
    """The sipp binary; RuntimeError when it is not installed."""
    path = shutil.which("sipp")
    if path is None:
        raise RuntimeError("sipp is not installed: ./run.sh test or ./run.sh bench installs it (sip-tester)")
    return path


@dataclass(frozen=True)
class SippLoad:
    """What one sipp run did: ``placed`` calls asked for (rate × seconds),
    ``successful`` and ``failed`` from its final screen, its log file."""

    rate: int
    seconds: int
    successful: int
    failed: int
    log: Path

    @property
    def placed(self) -> int:
        return self.rate * self.seconds

    @property
    def passed(self) -> bool:
        """Every call placed completed and none failed."""
        return self.failed == 0 and self.successful == self.placed


def run_sipp_load(args: list[str], rate: int, seconds: int, workdir: Path,
                  on_second: Callable[[float], None] | None = None, local_ip: str = "127.0.0.1") -> SippLoad:
    """Run sipp (``args``: scenario, service, target) at ``rate`` calls/s
    for ``seconds`` of calls, then until those calls end; calls that have
    not ended 40 s after the last one was placed count as failed (sipp's
    ``-timeout_error``), and sipp is killed 60 s after. ``on_second`` gets
    the time since sipp started, about once a second while it runs.
    ``local_ip``: the loopback address sipp binds (its calls come from it)."""
    total = rate * seconds
    cmd = [sipp_binary(), *args, "-i", local_ip, "-r", str(rate), "-m", str(total),
           "-l", str(max(rate * 4, 100)), "-nostdin", "-timeout", f"{seconds + 40}s", "-timeout_error",
           "-max_socket", "50000"]
    log = workdir / f"sipp-{rate}-{time.monotonic_ns()}.log"
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir)
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - start
                if elapsed > seconds + 60:
                    proc.kill()
                    proc.wait()
                    break
                if on_second is not None:
                    on_second(elapsed)
                try:
                    proc.wait(max(0.0, 1.0 - (time.monotonic() - start - elapsed)))
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", log.read_text(errors="replace"))

    def stat(name: str) -> int:
        values = [int(m.group(1)) for m in re.finditer(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", text)]
        return values[-1] if values else 0

    return SippLoad(rate, seconds, stat("Successful call"), stat("Failed call"), log)
