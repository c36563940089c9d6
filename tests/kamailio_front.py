"""Kamailio (Debian package) as the front of several ``callbridge serve``
nodes, with the shipped ``deploy/kamailio/dispatcher.cfg``: its ``@...@``
places filled in, run in the foreground, stopped with SIGTERM.

Used by ``tests/e2e/test_cluster.py`` and ``bench/sip_cps.py --nodes``;
scripts outside pytest put ``tests/`` on ``sys.path`` to import it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Sequence

from serve_process import stop_process

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "kamailio" / "dispatcher.cfg"

__all__ = ["CONFIG", "KamailioFront"]


class KamailioFront:
    """One Kamailio dispatching to ``nodes`` (``(host, port)`` each), on
    ``udp:host:port``.

    :param workdir: where its config, node list, pid file and log go.
    :param children: its worker processes.
    """

    def __init__(self, workdir: Path, host: str, port: int, nodes: Sequence[tuple[str, int]],
                 children: int = 2) -> None:
        binary = shutil.which("kamailio")
        if binary is None:
            raise RuntimeError("kamailio is not installed: ./run.sh test installs it (debian-packages.txt)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self.log_path = workdir / "kamailio.log"
        nodes_file = workdir / "dispatcher.list"
        nodes_file.write_text("".join(f"1 sip:{h}:{p}\n" for h, p in nodes))
        config = workdir / "kamailio.cfg"
        text = CONFIG.read_text()
        for key, value in (("ADDRESS", f"{host}:{port}"), ("CHILDREN", str(children)),
                           ("NODES", str(nodes_file))):
            text = text.replace(f"@{key}@", value)
        config.write_text(text)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "-f", str(config), "-DD", "-E", "-m", "64", "-M", "8",
             "-P", str(workdir / "kamailio.pid"), "-Y", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=self._log)
        self._wait_listening(10.0)

    def _wait_listening(self, seconds: float) -> None:
        """Until an OPTIONS to it is answered (by a node, through it)."""
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        probe.settimeout(0.2)
        lport = probe.getsockname()[1]
        deadline = time.monotonic() + seconds
        try:
            n = 0
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                n += 1
                probe.sendto((f"OPTIONS sip:ping@{self.host}:{self.port} SIP/2.0\r\n"
                              f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bKfront{n};rport\r\n"
                              f"From: <sip:probe@127.0.0.1>;tag=p{n}\r\nTo: <sip:ping@{self.host}>\r\n"
                              f"Call-ID: front-probe-{n}\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 5\r\n"
                              "Content-Length: 0\r\n\r\n").encode(), (self.host, self.port))
                try:
                    if probe.recv(65535).startswith(b"SIP/2.0 200"):
                        return
                except OSError:
                    pass
        finally:
            probe.close()
        self.stop()
        raise RuntimeError(f"kamailio did not answer through its nodes; its log ends:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()
