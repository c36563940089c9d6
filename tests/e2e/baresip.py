"""Drive baresip (Debian package ``baresip``) as a real softphone in tests,
the way ../shared/peers.md describes: headless, everything on 127.0.0.1,
commands over UDP to its ``cons`` module, a WAV file as the microphone
(``aufile``) and the ``sndfile`` module writing what it hears to
``dump-*-dec.wav``.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import wave
from pathlib import Path

import numpy as np

from tools import require_tool

MODULES = Path("/usr/lib/baresip/modules")


# Ports this process has handed out: the kernel may give a port it gave a
# moment ago (nothing is bound on it until baresip starts), so two phones
# built one after the other could be handed the same one.
_HANDED_OUT: set[int] = set()


def free_udp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free UDP port on 127.0.0.1")


def free_port_pair() -> int:
    """A port P with P and P+1 free on TCP and UDP (baresip binds TLS on P+1)."""
    for _ in range(50):
        port = free_udp_port()
        if port % 2 == 0 and port < 65000 and port + 1 not in _HANDED_OUT:
            try:
                for p in (port, port + 1):
                    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                        with socket.socket(socket.AF_INET, kind) as s:
                            s.bind(("127.0.0.1", p))
                _HANDED_OUT.add(port + 1)
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair on 127.0.0.1")


def write_tone_wav(path: Path, freq: float, seconds: float = 60.0, level: float = 0.2) -> None:
    t = np.arange(int(seconds * 8000)) / 8000
    pcm = np.round(np.sin(2 * np.pi * freq * t) * level * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())


class Baresip:
    """One baresip phone in its own folder.

    :param freq: the tone its microphone sends (Hz).
    :param cafile: a CA certificate (PEM) to verify SIP-over-TLS servers
        with (``sip_cafile``); dial ``sip:...;transport=tls`` to use TLS.
    :param mediaenc: the account's ``mediaenc`` (``srtp-mand``: SDES-keyed
        SRTP only, RFC 4568; loads the ``srtp`` module).
    """

    def __init__(self, workdir: Path, name: str, freq: float, *, cafile: Path | None = None,
                 mediaenc: str | None = None) -> None:
        require_tool("baresip")
        if not (MODULES / "sndfile.so").exists():
            raise AssertionError(f"baresip's modules are missing under {MODULES}: install the baresip package")
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.rec = self.dir / "rec"
        self.rec.mkdir()
        self.name = name
        self.freq = freq
        self.cafile = cafile
        self.mediaenc = mediaenc
        write_tone_wav(self.dir / "mic.wav", freq)
        self._configure()
        self.log = self.dir / "out.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def _configure(self) -> None:
        """Choose its ports and write its config and account."""
        self.sip_port = free_port_pair()
        self.cons_port = free_udp_port()
        (self.dir / "config").write_text("\n".join([
            f"module_path {MODULES}",
            "module g711.so", "module aufile.so", "module sndfile.so", "module cons.so",
            *(["module srtp.so"] if self.mediaenc else []),
            "module_app account.so", "module_app menu.so",
            *([f"sip_cafile {self.cafile}"] if self.cafile is not None else []),
            f"cons_listen 127.0.0.1:{self.cons_port}",
            f"sip_listen 127.0.0.1:{self.sip_port}",
            "net_interface 127.0.0.1",
            f"audio_source aufile,{self.dir / 'mic.wav'}",
            f"snd_path {self.rec}",
            "",
        ]))
        (self.dir / "accounts").write_text(
            f"<sip:{self.name}@127.0.0.1:{self.sip_port}>;regint=0;answermode=manual;audio_codecs=PCMU"
            + (f";mediaenc={self.mediaenc}" if self.mediaenc else "") + "\n")

    async def start(self) -> None:
        """Start it; when a port it was given was taken in the meantime (by
        another program on the machine: nothing holds a port between choosing
        it and baresip binding it), choose new ones and start again, twice at
        most."""
        for attempt in range(3):
            self._out = open(self.log, "wb")
            self.proc = subprocess.Popen(["baresip", "-f", str(self.dir)], stdout=self._out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                await self.wait_for("baresip is ready", 10)
                return
            except AssertionError:
                if attempt == 2 or "Address already in use" not in self.output():
                    raise
                self.proc.kill()
                self.proc.wait(5)
                self._out.close()
                self._configure()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for(self, text: str, timeout: float, *, after: int = 0) -> str:
        """The output once ``text`` is in it more than ``after`` times (a
        line the phone logged before a command does not count for it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            out = self.output()
            if out.count(text) > after:
                return out
            if self.proc is not None and self.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        raise AssertionError(f"baresip {self.name}: no {text!r} within {timeout} s; output:\n{self.output()[-3000:]}")

    def command(self, text: str) -> None:
        self._sock.sendto(text.encode(), ("127.0.0.1", self.cons_port))

    async def dial(self, uri: str) -> None:
        """``/dial uri`` on the console, confirmed: baresip logs ``call:
        connecting to`` when it takes the command; without that within 10 s
        the failure names this phone, not the far end (a CI run once waited
        in vain for the callee to ring, with no sign of which side failed).
        Not sent twice: a slow phone would place two calls."""
        line = f"call: connecting to '{uri}"
        before = self.output().count(line)
        self.command(f"/dial {uri}\n")
        await self.wait_for(line, 10.0, after=before)

    async def press(self, digits: str, gap: float = 0.4) -> None:
        """Type ``digits`` on the keypad: RFC 4733 events, one by one."""
        for d in digits:
            self.command(d)
            await asyncio.sleep(gap)

    def heard(self) -> np.ndarray:
        """Everything it decoded from the call (the sndfile dump), as float."""
        dumps = sorted(self.rec.glob("dump-*-dec.wav"))
        if not dumps:
            return np.zeros(0)
        with wave.open(str(dumps[-1])) as w:
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)

    def heard_so_far(self) -> np.ndarray:
        """What it decoded until now, read while the call goes on (the WAV
        header's sizes are only written at the end: read to the file's end)."""
        dumps = sorted(self.rec.glob("dump-*-dec.wav"))
        if not dumps:
            return np.zeros(0)
        data = dumps[-1].read_bytes()
        start = data.find(b"data")
        if start < 0:
            return np.zeros(0)
        body = data[start + 8:]
        body = body[: len(body) // 2 * 2]
        return np.frombuffer(body, dtype="<i2").astype(np.float64)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.command("/quit\n")
            try:
                await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                self.proc.wait()
        self._sock.close()
        if hasattr(self, "_out"):
            self._out.close()
