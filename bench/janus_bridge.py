"""bench/janus_bridge: Janus's AudioBridge as a named peer for ``bench/media.py --janus``.

The same plan of conferences ``bench/media.py`` gives the engine (one of
100 legs, the rest 3-10) is built in Janus 1.x's AudioBridge plugin (C,
Debian's ``janus``; ``./run.sh bench`` installs it from
``bench-packages.txt``): one room a conference, PCMU at 8 kHz, every leg a
*plain RTP participant* (``"rtp": {"ip", "port", "payload_type"}`` in the
``join``), so the load generator's legs talk RTP to Janus exactly as to the
engine, and Janus mixes each room minus each listener. The process's CPU
(all its threads, from ``/proc``) over the measured window, divided by the
packets received, is Janus's CPU per packet, next to the echo's and the
engine's in the same run.

Janus is started here with a configuration written into a temporary
directory (only the AudioBridge plugin and the HTTP transport, bound to
127.0.0.1 on a free port, logging off) and stopped at the end of the
phase, whatever happens. It is driven through its HTTP API with the
standard library: a session, a handle per room to create it, a handle per
leg to join it; the ``joined`` event of each leg (read by long poll) names
the port Janus receives that leg on.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_process import free_port, stop_process  # noqa: E402

from media import proc_cpu  # noqa: E402  (bench/media.py, which runs this phase)

__all__ = ["janus_server"]

_CONFIG = """general: {{
    configs_folder = "{conf}"
    plugins_folder = "{lib}/plugins"
    transports_folder = "{lib}/transports"
    events_folder = "{lib}/events"
    loggers_folder = "{lib}/loggers"
    debug_level = 2
    session_timeout = 0
}}
plugins: {{ disable = "{plugins}" }}
transports: {{ disable = "{transports}" }}
loggers: {{ disable = "libjanus_jsonlog.so" }}
events: {{ broadcast = false }}
media: {{ rtp_port_range = "{rtp_lo}-{rtp_hi}" }}
"""
_HTTP = """general: {{ json = "compact" base_path = "/janus" http = true port = {port} ip = "127.0.0.1" https = false }}
admin: {{ admin_http = false }}
"""
_AUDIOBRIDGE = """general: {{ rtp_port_range = "{rtp_lo}-{rtp_hi}" local_ip = "127.0.0.1" }}
"""


def _lib() -> str:
    """Debian's Janus module folder (``/usr/lib/<triplet>/janus``)."""
    found = [p for p in glob.glob("/usr/lib/*/janus") if os.path.isdir(os.path.join(p, "plugins"))]
    if shutil.which("janus") is None or not found:
        raise SystemExit("bench/media --janus: Janus is not installed (./run.sh bench installs it, "
                         "bench-packages.txt)")
    return found[0]


class _Api:
    """Janus's HTTP API, one session."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/janus"
        self.session = 0

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body, transaction=secrets.token_hex(6))
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer: dict[str, Any] = json.load(resp)
        if answer.get("janus") == "error":
            raise SystemExit(f"Janus refused {body}: {answer}")
        return answer

    def events(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.base}/{self.session}?maxev=50", timeout=40) as resp:
            got = json.load(resp)
        return got if isinstance(got, list) else [got]

    def start(self, deadline: float) -> None:
        while True:
            try:
                self.session = self.post("", {"janus": "create"})["data"]["id"]
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("Janus did not answer on its HTTP port within 20 s") from None
                time.sleep(0.1)

    def attach(self) -> int:
        answer = self.post(f"/{self.session}", {"janus": "attach", "plugin": "janus.plugin.audiobridge"})
        return int(answer["data"]["id"])

    def message(self, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        return self.post(f"/{self.session}/{handle}", {"janus": "message", "body": body})


def janus_server(conn: Connection, conf_of: list[int], sizes: list[int]) -> None:
    """The ``bench/media.py`` phase protocol: the generator's ports in,
    Janus's ports out, ``"ready"``, then the window ``(w0, w1, end)`` in and
    ``{"cpu", "wall", "threads", "version"}`` out."""
    client_ports: list[int] = conn.recv()
    lib = _lib()
    work = tempfile.mkdtemp(prefix="bench-janus-")
    plugins = sorted(os.path.basename(p) for p in glob.glob(f"{lib}/plugins/*.so")
                     if "audiobridge" not in p)
    transports = sorted(os.path.basename(p) for p in glob.glob(f"{lib}/transports/*.so") if "http" not in p)
    http_port = free_port()
    rtp_lo, rtp_hi = 41000, 49999
    Path(work, "janus.jcfg").write_text(_CONFIG.format(
        conf=work, lib=lib, plugins=",".join(plugins), transports=",".join(transports),
        rtp_lo=rtp_lo, rtp_hi=rtp_hi))
    Path(work, "janus.transport.http.jcfg").write_text(_HTTP.format(port=http_port))
    Path(work, "janus.plugin.audiobridge.jcfg").write_text(_AUDIOBRIDGE.format(rtp_lo=rtp_lo, rtp_hi=rtp_hi))
    log = open(Path(work, "janus.log"), "wb")
    proc = subprocess.Popen(["janus", "-F", work, "-o"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        api = _Api(http_port)
        api.start(time.monotonic() + 20)
        admin = api.attach()
        rooms = []
        for ci in range(len(sizes)):
            answer = api.message(admin, {"request": "create", "room": 9000 + ci, "audiocodec": "pcmu",
                                         "sampling_rate": 8000, "allow_rtp_participants": True})
            data = answer["plugindata"]["data"]
            if data.get("audiobridge") != "created":
                raise SystemExit(f"Janus did not create room {9000 + ci}: {data}")
            rooms.append(9000 + ci)
        handles: dict[int, int] = {}
        for leg, cport in enumerate(client_ports):
            handle = api.attach()
            handles[handle] = leg
            api.message(handle, {"request": "join", "room": rooms[conf_of[leg]], "codec": "pcmu",
                                 "rtp": {"ip": "127.0.0.1", "port": cport, "payload_type": 0}})
        ports: list[int | None] = [None] * len(client_ports)
        deadline = time.monotonic() + 60
        while any(p is None for p in ports):
            if time.monotonic() > deadline:
                raise SystemExit(f"Janus named no RTP port for {ports.count(None)} legs within 60 s")
            for event in api.events():
                data = event.get("plugindata", {}).get("data", {})
                leg = handles.get(event.get("sender", 0))
                if leg is not None and data.get("audiobridge") == "joined" and "rtp" in data:
                    ports[leg] = int(data["rtp"]["port"])
        conn.send(ports)
        conn.send("ready")
        w0, w1, end = conn.recv()
        time.sleep(max(0.0, w0 - time.monotonic()))
        c0 = proc_cpu(proc.pid)
        time.sleep(max(0.0, w1 - time.monotonic()))
        c1 = proc_cpu(proc.pid)
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        time.sleep(max(0.0, end - time.monotonic()))
        version = subprocess.run(["janus", "--version"], capture_output=True, text=True, timeout=10).stdout
        conn.send({"cpu": c1 - c0, "wall": w1 - w0, "threads": threads,
                   "version": version.strip().splitlines()[0] if version.strip() else "janus"})
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
