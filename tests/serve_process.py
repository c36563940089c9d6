"""``callbridge serve`` as its own process, for benches and long-running
checks that need the real command (uvloop, the tuned collector, signal
handling): free loopback ports, a data directory of its own, stderr to a
file, ``/healthz`` polled until it answers, RSS read from ``/proc``.

Used by ``bench/sip_cps.py`` and the fuzz runner (``tests/fuzz``); bench
scripts put ``tests/`` on ``sys.path`` to import it."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "ServeProcess", "free_port", "rss_kb", "stop_process"]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports, each free for both UDP and TCP on 127.0.0.1
    (the engine binds both on its SIP port; HTTP and SIP over TLS are TCP).
    Every port is held until all are chosen, so no two are the same."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held += [udp, tcp]
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
        return ports
    finally:
        for sock in held:
            sock.close()


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (see :func:`free_ports`)."""
    return free_ports(1)[0]


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def stop_process(proc: subprocess.Popen[Any]) -> int | None:
    """SIGTERM, then SIGKILL after 10 s; return the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ServeProcess:
    """One ``callbridge serve`` on free loopback ports.

    :param workdir: where the data directory (``data/``) and the stderr log
        (``callbridge.log``) go.
    :param args: further ``serve`` flags (``--rules``, ``--trusted``...).
    :param ca: with ``--tls-cert``, the CA that signed it: ``/healthz`` is
        then polled over HTTPS, verified against it.
    :param sip_port: this SIP port instead of a free one.
    """

    def __init__(self, workdir: Path, args: list[str], ca: Path | None = None, sip_port: int | None = None) -> None:
        self.workdir = workdir
        self.context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
        self.sip_port, self.http_port = free_ports(2)
        if sip_port is not None:  # a node coming back on the port it had
            self.sip_port = sip_port
        self.log_path = workdir / "callbridge.log"
        cmd = [sys.executable, "-m", "engine", "serve", "--sip-port", str(self.sip_port),
               "--http-port", str(self.http_port), "--data-dir", str(workdir / "data"), *args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def healthz(self, timeout: float = 2.0) -> int | None:
        """The status of ``GET /healthz``, or None when it does not answer."""
        try:
            scheme = "https" if self.context is not None else "http"
            with urlopen(f"{scheme}://127.0.0.1:{self.http_port}/healthz", timeout=timeout,
                         context=self.context) as resp:
                return int(resp.status)
        except OSError:
            return None

    def wait_healthy(self, seconds: float = 20.0) -> None:
        """Poll ``/healthz`` until 200; stop the process and raise on failure."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.healthz(1.0) == 200:
                return
            time.sleep(0.1)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"callbridge serve did not become healthy; its stderr ends:\n{tail}")

    def rss_kb(self) -> int:
        return rss_kb(self.proc.pid)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; return the exit code."""
        code = stop_process(self.proc)
        self._log.close()
        return code
