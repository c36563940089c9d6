"""RTP send workers: the media clock's datagrams sent at their due time by other processes.

At 1,000 conference legs a tick ends with 1,000 ``sendto`` calls, and on
this kind of machine each costs 4-5 µs, most of it in the kernel (the
loopback or NIC path runs in the sender's system call). Sent from the
event loop after pulling and mixing, the last leg's frame left 10-14 ms
after its tick was due (``bench/media.py``: p99 13 ms against the 20 ms
grid), and no trimming of Python can take the system calls out of that
serial path. So with ``--media-send-workers N`` the clock prepares each
tick a little *before* it is due (:attr:`SendWorkers.lead`, learnt from
how long preparing took), every RTP datagram the tick produces is written
into a batch instead of sent, and the batch goes to N worker processes,
which sleep until the tick's due time and then send it: the frames leave
on the grid, the system calls run on another core, and the event loop is
free for the next packets as soon as the batch is handed over.

Why processes and a socket pair, not threads or shared memory: the GIL
would serialise a sending thread with the loop, and a batch of 1,000
frames is about 180 KB, one ``sendmsg`` of a few 64 KB chunks on a
``SOCK_SEQPACKET`` pair, cheaper than any locking of a shared buffer. The
workers get the RTP sockets themselves once (``SCM_RIGHTS``), so a packet
leaves from the leg's own port as before (symmetric RTP, RFC 4961).

Wire format on the pair (each message one datagram, little-endian):

- ``S`` slot:u32, with one descriptor: the socket of ``slot``;
- ``F`` slot:u32: forget that socket (closed in the engine);
- ``A`` id:u32 port:u16 host: a destination address;
- ``B`` due:f64 last:u8, then records slot:u32 addr:u32 len:u16 data:
  a chunk of the batch due at ``due`` (``time.monotonic``); the worker
  sends once the ``last`` chunk arrived and ``due`` passed. An address id
  with its top bit (:data:`PEER`) set names the address the slot's socket
  is connected to (:meth:`RtpTransport.pin`): the worker calls ``send``, which
  skips the route lookup (``sendto`` if that fails: the engine may have
  disconnected the socket since).

A worker found dead when a tick begins is replaced (an error logged, the
sockets handed to the new one as they are used); one whose pair is broken
or full when a tick ends has that tick sent by the engine. A worker that
dies after taking a batch loses that one tick (20 ms of audio, as a lost
packet would). More than :data:`MAX_RESTARTS` restarts in
:data:`RESTART_WINDOW` seconds and the workers are given up: the event
loop sends, as without them (paced, when the engine's
:attr:`SendWorkers.on_give_up` puts a :class:`~engine.transport.rtp_pace.TickPacer`
in their place). Nothing outside this process can reach the pair; the
worker checks every message anyway and skips what it cannot read.

Only the stdlib is used: the worker is a tight loop of ``recvmsg`` and
``sendto`` that no library does better, and it must start in milliseconds.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import struct
import subprocess
import sys
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.transport.rtp_transport import RtpTransport

__all__ = ["PEER", "SendWorkers", "encode_address", "iter_records", "worker_main"]

logger = logging.getLogger(__name__)

#: Bytes of one batch chunk at most (well inside the pair's buffer).
CHUNK = 64 * 1024
#: The pair's buffers: many ticks of 1,000 legs, so a slow worker is seen, not blocked on.
PAIR_BUFFER = 4 * 1024 * 1024
#: Distinct destinations remembered per worker before the table starts over.
MAX_ADDRESSES = 65_536
#: Ticks between sweeps for sockets closed in the engine (their worker copies closed too).
SWEEP_EVERY = 50
#: More restarts than this within :data:`RESTART_WINDOW` seconds (a worker
#: that cannot start, or keeps dying) and the workers are given up: the event
#: loop sends the clock's frames itself from then on, as without workers.
MAX_RESTARTS = 3
RESTART_WINDOW = 10.0

_SLOT = struct.Struct("<I")
_ADDR = struct.Struct("<IH")
_BATCH = struct.Struct("<dB")
_RECORD = struct.Struct("<IIH")
_SLOT_ADDR = struct.Struct("<II")
_LENGTH = struct.Struct("<H")
#: The address id's flag: the slot's socket is connected to that address.
PEER = 0x8000_0000


def encode_address(aid: int, addr: Any) -> bytes:
    """The ``A`` message naming destination ``aid``: ``(host, port[, ...])``."""
    return b"A" + _ADDR.pack(aid, int(addr[1])) + str(addr[0]).encode()


def iter_records(chunk: memoryview, offset: int = 1 + _BATCH.size) -> Any:
    """``(slot, address id, data)`` of each record of a ``B`` chunk; stops
    at the first record that does not fit (a damaged chunk sends what it has)."""
    end = len(chunk)
    unpack = _RECORD.unpack_from
    size = _RECORD.size
    while offset + size <= end:
        slot, aid, length = unpack(chunk, offset)
        offset += size
        if offset + length > end:
            return
        yield slot, aid, chunk[offset:offset + length]
        offset += length


# -- the worker ---------------------------------------------------------------------------


def worker_main(fd: int) -> int:
    """Serve the pair on ``fd`` until the engine closes it; the return code."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine stops us by closing the pair
    ctl = socket.socket(fileno=fd)
    ctl.setblocking(True)
    socks: dict[int, socket.socket] = {}
    addrs: dict[int, tuple[str, int]] = {}
    buf = bytearray(CHUNK + 4096)
    view = memoryview(buf)
    pending: list[bytes] = []
    fds = array.array("i")
    while True:
        try:
            nbytes, ancdata, _flags, _ = ctl.recvmsg_into([buf], socket.CMSG_SPACE(fds.itemsize))
        except InterruptedError:
            continue
        except OSError:
            return 1
        if nbytes == 0:
            return 0  # the engine closed its end
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(data[: len(data) - len(data) % got.itemsize])
                fds.extend(got)
        msg = view[:nbytes]
        tag = buf[0]
        try:
            if tag == 0x42:  # B: a chunk of a batch
                pending.append(bytes(msg))
                due, last = _BATCH.unpack_from(msg, 1)
                if last:
                    _send_batch(pending, due, socks, addrs)
                    pending = []
            elif tag == 0x53 and fds:  # S: a socket for a slot
                (slot,) = _SLOT.unpack_from(msg, 1)
                old = socks.pop(slot, None)
                if old is not None:
                    old.close()
                socks[slot] = socket.socket(fileno=fds.pop(0))
            elif tag == 0x46:  # F: forget a slot
                (slot,) = _SLOT.unpack_from(msg, 1)
                old = socks.pop(slot, None)
                if old is not None:
                    old.close()
            elif tag == 0x41:  # A: a destination
                aid, port = _ADDR.unpack_from(msg, 1)
                addrs[aid] = (bytes(msg[1 + _ADDR.size:]).decode(), port)
            elif tag == 0x52:  # R: the destinations start over
                addrs.clear()
        except (struct.error, UnicodeDecodeError, OSError) as exc:
            print(f"rtp send worker: skipped a bad message ({exc})", file=sys.stderr)
        while fds:  # descriptors no S message claimed
            os.close(fds.pop())


def _send_batch(chunks: list[bytes], due: float, socks: dict[int, socket.socket],
                addrs: dict[int, tuple[str, int]]) -> None:
    """Sleep until ``due``, then send every record of ``chunks``."""
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    sget, aget = socks.get, addrs.get
    for chunk in chunks:
        for slot, aid, data in iter_records(memoryview(chunk)):
            sock = sget(slot)
            if sock is None:
                continue
            if aid & PEER:
                try:
                    sock.send(data)
                    continue
                except OSError:
                    aid &= ~PEER  # disconnected meanwhile, or an ICMP error: sendto
            addr = aget(aid)
            if addr is not None:
                try:
                    sock.sendto(data, addr)
                except OSError:
                    pass  # UDP: as the engine's own sendto, an error is a lost packet


# -- the engine's side ----------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen[bytes]
    ctl: socket.socket
    #: slot -> a weak reference to the engine's socket it stands for
    slots: dict[int, weakref.ref[socket.socket]] = field(default_factory=dict)
    addrs: dict[Any, int] = field(default_factory=dict)
    batch: bytearray = field(default_factory=bytearray)
    count: int = 0


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """End a worker that failed: killed if still running, and waited for
    (a killed process is gone within milliseconds; a rare pause of a tick)."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(1.0)
    except subprocess.TimeoutExpired:
        logger.error("RTP send worker (pid %d) did not end when killed", proc.pid)


def _start_batch(w: _Worker) -> None:
    """Empty ``w``'s batch: its header alone (the due time is filled in when it ships)."""
    w.batch.clear()
    w.batch += b"B" + _BATCH.pack(0.0, 0)
    w.count = 0


class SendWorkers:
    """The engine's end: batches the clock's datagrams for ``count`` workers.

    The media clock calls :meth:`begin` before a tick and :meth:`end` after
    it; in between, :class:`~engine.transport.rtp_transport.RtpTransport`
    offers each datagram to :meth:`add` (through its class attribute
    ``batch``) before sending it itself.

    :param count: worker processes (at least 1).
    :param max_lead: the most the clock prepares a tick ahead of its due time.
    """

    def __init__(self, count: int, *, max_lead: float = 0.010) -> None:
        if count < 1:
            raise ValueError("send workers: count must be at least 1")
        self.count = count
        self.max_lead = max_lead
        #: How far ahead of its due time the clock starts a tick (seconds).
        self.lead = 0.002
        #: Nothing is held in this process (the workers hold the batches).
        self.held_until = float("inf")
        self._peak = 0.0
        self._workers: list[_Worker] = []
        self._next_slot = 0
        #: id(socket) -> (its weak reference, worker index, slot)
        self._registry: dict[int, tuple[weakref.ref[socket.socket], int, int]] = {}
        self._rr = 0
        #: Replaced whenever a worker or an address table starts over: the
        #: transports' memos of where their datagrams go are then stale.
        self._epoch = object()
        self._begun = 0.0
        self.batches = 0
        self.packets = 0
        #: Ticks the engine sent itself because a worker failed or fell behind.
        self.fallbacks = 0
        self.restarts = 0
        #: Whether the workers were given up (see :data:`MAX_RESTARTS`).
        self.given_up = False
        #: Called once when the workers are given up, inside the tick that
        #: gives them up (the engine puts its pacer in their place).
        self.on_give_up: Callable[[], None] | None = None
        self._restart_times: deque[float] = deque()

    # -- processes -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers (idempotent; nothing once they were given up)."""
        while not self.given_up and len(self._workers) < self.count:
            self._workers.append(self._spawn())

    def _command(self, fd: int) -> list[str]:
        """The worker's command line, serving the pair on ``fd``."""
        return [sys.executable, "-m", "engine.transport.rtp_send", str(fd)]

    def _spawn(self) -> _Worker:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (mine, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PAIR_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PAIR_BUFFER)
        fd = theirs.fileno()
        proc = subprocess.Popen(self._command(fd), pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        theirs.close()
        mine.setblocking(False)
        worker = _Worker(proc, mine)
        _start_batch(worker)
        return worker

    def stop(self, timeout: float = 2.0) -> None:
        """Close the pairs and wait for the workers to end (killed after ``timeout``)."""
        workers, self._workers = self._workers, []
        self._registry.clear()
        for w in workers:
            w.ctl.close()
        for w in workers:
            try:
                w.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    # -- one tick ------------------------------------------------------------------------

    def begin(self, planned: float) -> None:
        """A tick starts; ``planned`` is when it was meant to (its due time
        minus :attr:`lead`). A worker found dead is replaced first."""
        for i, w in enumerate(list(self._workers)):
            if w.proc.poll() is not None and not self.given_up:
                self._replace(i, f"it exited with code {w.proc.returncode}")
        RtpTransport.batch = self if self._workers else None
        self._begun = planned
        for w in self._workers:
            _start_batch(w)

    def add(self, transport: RtpTransport, data: bytes, addr: Any) -> bool:
        """Queue ``data`` for ``addr`` from ``transport``'s socket in this
        tick's batch; ``False``: the caller sends it itself (no worker could
        take it)."""
        memo = transport.batch_memo  # (epoch, worker, slot and address packed, address)
        if memo is None or memo[0] is not self._epoch or memo[3] != addr:
            memo = self._memo(transport, addr)
            if memo is None:
                return False
        w = memo[1]
        batch = w.batch
        if len(batch) + len(data) > CHUNK - _RECORD.size:
            self._ship(w, last=False, due=0.0)
        batch += memo[2]
        batch += _LENGTH.pack(len(data))
        batch += data
        w.count += 1
        return True

    def _memo(self, transport: RtpTransport, addr: Any) -> tuple[object, _Worker, bytes, Any] | None:
        """Where ``transport``'s datagrams to ``addr`` go (registering its
        socket and the address with a worker on first use)."""
        sock = transport.sock
        entry = self._registry.get(id(sock))
        if entry is None or entry[0]() is not sock:
            entry = self._register(sock)
            if entry is None:
                return None
        w = self._workers[entry[1]]
        aid = w.addrs.get(addr)
        if aid is None:
            aid = self._address(w, addr)
            if aid is None:
                return None
        if addr is transport.peer:
            aid |= PEER  # the socket is connected to it (RtpTransport.pin): the worker may send()
        memo = transport.batch_memo = (self._epoch, w, _SLOT_ADDR.pack(entry[2], aid), addr)
        return memo

    def end(self, due: float) -> None:
        """Hand this tick's batches over, to be sent at ``due`` (``time.monotonic``)."""
        RtpTransport.batch = None
        ready = time.monotonic()
        for i, w in enumerate(list(self._workers)):
            if self.given_up:
                self._send_directly(w, w.batch)  # the rest of this tick, after giving up
                continue
            if w.count:
                state = self._ship(w, last=True, due=due)
                if state != "sent":
                    self._fail(i, state)
            self.packets += w.count
        self.batches += 1
        if self.given_up:
            self.lead = 0.0  # ticks run at their due time again
            return
        # Lead: how long after the planned start the batch was ready, at its
        # recent worst (decaying 2% a tick), plus a millisecond of margin.
        took = ready - self._begun
        self._peak = max(took, self._peak * 0.98)
        self.lead = min(self.max_lead, self._peak + 0.001)
        if self.batches % SWEEP_EVERY == 0:
            self._sweep()

    def release(self) -> None:
        """Nothing to do: the workers send the batches at their due time."""

    def _ship(self, w: _Worker, *, last: bool, due: float) -> str:
        """Send the chunk in ``w.batch``: ``"sent"``, ``"full"`` (the worker
        is behind) or ``"broken"`` (it has gone). A middle chunk that cannot
        go is sent from here, and the batch goes on."""
        batch = w.batch
        _BATCH.pack_into(batch, 1, due, 1 if last else 0)
        try:
            w.ctl.send(batch)
            state = "sent"
        except BlockingIOError:
            state = "full"
        except OSError:
            state = "broken"
        if state != "sent" and not last:
            self._send_directly(w, batch)
            self.fallbacks += 1
        if state == "sent" or not last:
            del batch[1 + _BATCH.size:]
        return state

    def _fail(self, index: int, state: str) -> None:
        """Send worker ``index``'s batch from here; replace the worker when it has gone."""
        w = self._workers[index]
        self._send_directly(w, w.batch)
        self.fallbacks += 1
        if state == "full" and w.proc.poll() is None:
            return  # alive but behind: the next tick tries again
        self._replace(index, f"its pair is {state}")

    def _replace(self, index: int, why: str) -> None:
        """Start a new worker in place of ``index`` (its sockets are handed
        over again as they are used), or give them all up after
        :data:`MAX_RESTARTS` in :data:`RESTART_WINDOW` seconds."""
        w = self._workers[index]
        now = time.monotonic()
        times = self._restart_times
        times.append(now)
        while now - times[0] > RESTART_WINDOW:
            times.popleft()
        if len(times) > MAX_RESTARTS:
            logger.error("RTP send worker %d (pid %d) failed (%s), the %d time in %g s: giving the send "
                         "workers up; the event loop sends the media clock's frames",
                         index, w.proc.pid, why, len(times), RESTART_WINDOW)
            self._give_up()
            return
        logger.error("RTP send worker %d (pid %d) failed (%s); the engine sent its tick, starting another",
                     index, w.proc.pid, why)
        w.ctl.close()
        _reap(w.proc)
        for key, (_ref, wi, _slot) in list(self._registry.items()):
            if wi == index:
                del self._registry[key]
        self._workers[index] = self._spawn()
        self._epoch = object()
        self.restarts += 1

    def _give_up(self) -> None:
        """Stop every worker without waiting on them (we are inside a tick)."""
        workers, self._workers = self._workers, []
        self._registry.clear()
        self._epoch = object()
        self.given_up = True
        for w in workers:
            w.ctl.close()
            _reap(w.proc)
        if self.on_give_up is not None:
            try:
                self.on_give_up()
            except Exception:
                logger.exception("after giving the send workers up")

    def _send_directly(self, w: _Worker, batch: bytearray) -> None:
        by_aid = {aid: addr for addr, aid in w.addrs.items()}
        for slot, aid, data in iter_records(memoryview(batch)):
            ref = w.slots.get(slot)
            sock = ref() if ref is not None else None
            addr = by_aid.get(aid & ~PEER)
            if sock is None or addr is None or sock.fileno() < 0:
                continue
            try:
                sock.sendto(data, addr)
            except OSError:
                pass

    def _register(self, sock: socket.socket) -> tuple[weakref.ref[socket.socket], int, int] | None:
        if not self._workers or sock.fileno() < 0:
            return None
        index = self._rr % len(self._workers)
        self._rr += 1
        w = self._workers[index]
        slot = self._next_slot
        self._next_slot += 1
        try:
            socket.send_fds(w.ctl, [b"S" + _SLOT.pack(slot)], [sock.fileno()])
        except OSError:
            return None
        ref = weakref.ref(sock)
        w.slots[slot] = ref
        entry = (ref, index, slot)
        self._registry[id(sock)] = entry
        return entry

    def _address(self, w: _Worker, addr: Any) -> int | None:
        if len(w.addrs) >= MAX_ADDRESSES:
            try:
                w.ctl.send(b"R")
            except OSError:
                return None
            w.addrs.clear()
            self._epoch = object()
        aid = len(w.addrs)
        try:
            w.ctl.send(encode_address(aid, addr))
        except (OSError, IndexError, ValueError):
            return None
        w.addrs[addr] = aid
        return aid

    def _sweep(self) -> None:
        """Forget sockets the engine closed, so the workers close their copies
        (until then the port stays bound in the worker)."""
        for key, (ref, index, slot) in list(self._registry.items()):
            sock = ref()
            if sock is None or sock.fileno() < 0:
                del self._registry[key]
                w = self._workers[index]
                w.slots.pop(slot, None)
                try:
                    w.ctl.send(b"F" + _SLOT.pack(slot))
                except OSError:
                    pass


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1])))
