"""A flood of unauthenticated CANCELs and out-of-dialog MESSAGEs against a
real ``callbridge serve`` (its own process) leaves its memory bounded: no
transaction per CANCEL of nothing, no session per MESSAGE beyond the
MESSAGE limit and ``--max-sessions``, and the engine still answers."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.request import urlopen

import pytest

from serve_process import free_ports

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

RULES = """\
rules:
  - {name: Inbox, pattern: "inbox", scenarios: [inbox]}
"""

INBOX = '''\
"""Take MESSAGEs and keep the session (until the idle timeout)."""
from engine.runtime.scenario import AppEvents, VoxEngine

VoxEngine.add_event_listener(AppEvents.MessageReceived, lambda e: None)
'''

#: Datagrams in the flood (half CANCEL, half MESSAGE) and the sockets
#: (source ports) they come from.
FLOOD = 20_000
SOURCES = 4
#: Requests a source has unanswered at once: the flood runs as fast as the
#: engine answers, without overrunning the socket buffer (a datagram the
#: kernel drops would test nothing).
WINDOW = 64

#: RSS growth allowed over the flood. Without the bounds the flood holds
#: 10,000 CANCEL transactions for Timer J (a parsed request and its 481 each,
#: some 3 KB: 30 MB) and 10,000 sessions (a scenario namespace, an event
#: emitter, a context and a log each, over 10 KB: 100 MB). With them what
#: stays is at most --max-sessions sessions and the MESSAGE transactions the
#: MESSAGE limit lets through; 40 MB leaves room for the allocator's arenas
#: and the logging of the refusals.
RSS_GROWTH_MB = 40


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def health(http: int) -> dict[str, object]:
    with urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def datagram(method: str, sip: int, local: tuple[str, int]) -> bytes:
    host, port = local
    body = b"hello" if method == "MESSAGE" else b""
    lines = [
        f"{method} sip:inbox@127.0.0.1:{sip} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70",
        f"From: <sip:flood@{host}>;tag={secrets.token_hex(4)}",
        f"To: <sip:inbox@127.0.0.1:{sip}>",
        f"Call-ID: {secrets.token_hex(10)}",
        f"CSeq: 1 {method}",
    ]
    if body:
        lines.append("Content-Type: text/plain")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def flood_from(sip: int, count: int, statuses: Counter[str], lock: threading.Lock) -> None:
    """Send ``count`` requests (CANCEL and MESSAGE in turn) from one socket,
    at most :data:`WINDOW` unanswered; count the answers by method and
    status. Ends by itself: every wait has a timeout."""
    got: Counter[str] = Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1.0)
        local = sock.getsockname()
        sent = 0
        while sent < count:
            batch = min(WINDOW, count - sent)
            for i in range(batch):
                sock.sendto(datagram("CANCEL" if (sent + i) % 2 else "MESSAGE", sip, local),
                            ("127.0.0.1", sip))
            sent += batch
            for _ in range(batch):
                try:
                    data = sock.recv(65535)
                except socket.timeout:
                    got["lost"] += 1
                    break
                status = data.split(b" ", 2)[1].decode()
                method = data.split(b"CSeq: 1 ", 1)[1].split(b"\r\n", 1)[0].decode()
                got[f"{method} {status}"] += 1
    with lock:
        statuses.update(got)


def test_cancel_and_message_flood_leaves_memory_bounded(tmp_path: Path) -> None:
    """20,000 CANCEL (matching nothing) and out-of-dialog MESSAGE datagrams
    from four source ports of 127.0.0.1 (the general rate limit set above
    the flood, so that the bounds are what is tested, not the ban): every
    CANCEL gets 481 and no transaction stays; the MESSAGEs beyond the
    MESSAGE limit get 503; the sessions stay within --max-sessions, the
    live transactions within --max-transactions, the RSS grows less than
    RSS_GROWTH_MB, and the engine still answers OPTIONS."""
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "inbox.py").write_text(textwrap.dedent(INBOX))
    sip, http = free_ports(2)
    args = [sys.executable, "-m", "engine", "serve", "--sip-port", str(sip), "--http-port", str(http),
            "--rules", str(tmp_path / "rules.yaml"), "--scenarios", str(tmp_path / "scenarios"),
            "--data-dir", str(tmp_path / "data"), "--rate-limit", "100000", "--rate-burst", "100000",
            "--max-sessions", "100", "--max-transactions", "500", "--idle-timeout", "120",
            "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        status: dict[str, object] = {}
        while time.monotonic() < deadline and status.get("status") != "ok":
            try:
                status = health(http)
            except OSError:
                time.sleep(0.1)
        assert status.get("status") == "ok", (tmp_path / "serve.log").read_text()[-2000:]
        statuses: Counter[str] = Counter()
        lock = threading.Lock()
        flood_from(sip, 2 * WINDOW, statuses, lock)  # warm up: first-use allocations
        before = rss_kib(proc.pid)
        statuses.clear()
        threads = [threading.Thread(target=flood_from, args=(sip, FLOOD // SOURCES, statuses, lock))
                   for _ in range(SOURCES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not any(thread.is_alive() for thread in threads)
        after = rss_kib(proc.pid)
        stats = health(http)
        assert statuses["CANCEL 481"] >= 9_000, statuses
        assert statuses["MESSAGE 503"] >= 9_000, statuses
        assert statuses["MESSAGE 200"] <= 100, statuses
        assert set(statuses) <= {"CANCEL 481", "MESSAGE 200", "MESSAGE 503", "lost"}, statuses
        assert isinstance(stats["sessions"], int) and stats["sessions"] <= 100, stats
        assert isinstance(stats["sip_transactions"], int) and stats["sip_transactions"] <= 500, stats
        assert (after - before) / 1024 < RSS_GROWTH_MB, (before, after)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5.0)
            sock.sendto(datagram("OPTIONS", sip, sock.getsockname()), ("127.0.0.1", sip))
            assert sock.recv(65535).startswith(b"SIP/2.0 200 ")
        print(f"flood: {dict(statuses)}; RSS {before} -> {after} KiB; health {stats}")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
