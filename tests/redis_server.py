"""A ``redis-server`` of the test's own: loopback, a free port, a temporary
directory, nothing saved (``--save '' --appendonly no``), started and
stopped by the tests (CI starts nothing; never the Debian service).

``redis-server`` comes from debian-packages.txt; a missing binary fails the
test loudly through :func:`tools.require_tool`, it is never skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from serve_process import free_port
from tools import require_tool

__all__ = ["RedisServer"]


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1``.

    ``start()`` waits until it answers ``PING``; ``stop()`` ends it (and
    removes its directory). ``pause()``/``resume()`` freeze and thaw it
    (``SIGSTOP``/``SIGCONT``: the connection stays open and nothing
    answers, as over a broken network).

    :param workdir: where its directory goes (a temporary one when ``None``).
    """

    #: Tries with a new port when the one chosen was taken before
    #: redis-server bound it (another process may get a port we checked).
    PORT_TRIES = 5

    def __init__(self, workdir: Path | None = None) -> None:
        self.binary = require_tool("redis-server")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="callbridge-redis-")
            workdir = Path(self._tmp.name)
        self.dir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        """What the server logged so far."""
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start on a free port and wait until it answers ``PING``.

        :raises RuntimeError: it exited or did not answer within ``timeout``
            seconds (with its log).
        """
        for _ in range(self.PORT_TRIES):
            self.port = free_port()
            (self.dir / "redis.log").write_text("")
            self.process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                 "--save", "", "--appendonly", "no", "--daemonize", "no",
                 "--logfile", str(self.dir / "redis.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if self._wait_ready(timeout):
                return self
            if "Address already in use" not in self.log:
                break
        log = self.log
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.process is not None
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0,
                             socket_connect_timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.ConnectionError:
                    pass
                time.sleep(0.02)
        finally:
            client.close()
        self.process.kill()
        self.process.wait()
        return False

    def client(self) -> redis.Redis:
        """A client of this server (strings decoded); close it after use."""
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=2.0)

    def flush(self) -> None:
        """Forget every key (between tests sharing the server)."""
        with self.client() as client:
            client.flushall()

    def pause(self) -> None:
        """Freeze the server: connections stay open, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """End the server (a paused one too) and remove its directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()  # nothing to save; SIGKILL also ends a stopped process
            process.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
