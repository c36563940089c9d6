"""RTP send workers (engine.transport.rtp_send) with real worker processes and real UDP sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import sys
import time

import pytest

from engine.media.clock import MediaClock
from engine.transport.rtp_send import MAX_RESTARTS, PEER, SWEEP_EVERY, SendWorkers, encode_address, iter_records
from engine.transport.rtp_transport import RtpTransport, disconnect


_opened: list[socket.socket] = []


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    _opened.append(sock)
    return sock


def _recv_all(sock: socket.socket, count: int, timeout: float = 5.0) -> list[tuple[bytes, tuple[str, int]]]:
    """``count`` datagrams from ``sock`` (fewer if ``timeout`` passes first)."""
    sock.settimeout(timeout)
    got = []
    try:
        while len(got) < count:
            got.append(sock.recvfrom(2048))
    except TimeoutError:
        pass
    return got


def _nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recvfrom(2048)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


@pytest.fixture
def workers():
    made: list[SendWorkers] = []

    def factory(count: int) -> SendWorkers:
        w = SendWorkers(count)
        w.start()
        made.append(w)
        return w

    yield factory
    for w in made:
        w.stop()
    RtpTransport.batch = None
    while _opened:
        _opened.pop().close()


def _tick(w: SendWorkers, sends: list[tuple[RtpTransport, bytes, tuple[str, int]]], delay: float = 0.0) -> None:
    w.begin(time.monotonic())
    for transport, data, addr in sends:
        transport.sendto(data, addr)
    w.end(time.monotonic() + delay)


def _one_leg(w: SendWorkers, first: bytes) -> tuple[RtpTransport, socket.socket, tuple[str, int]]:
    """A leg and its peer, after one tick that sent ``first`` through ``w``
    (checked: it arrived from the leg's port)."""
    leg = RtpTransport(_udp(), lambda d, a: None)
    peer = _udp()
    dest = peer.getsockname()
    _tick(w, [(leg, first, dest)])
    assert _recv_all(peer, 1) == [(first, leg.sock.getsockname())]
    return leg, peer, dest


def test_a_tick_leaves_from_each_legs_own_port_after_end(workers) -> None:
    """Datagrams offered during a tick are held until end() (nothing reaches
    the receiver before), then each arrives once, unchanged, from the port
    of the socket that offered it (symmetric RTP), spread over two workers."""
    w = workers(2)
    legs = [RtpTransport(_udp(), lambda d, a: None) for _ in range(4)]
    peer = _udp()
    dest = peer.getsockname()
    w.begin(time.monotonic())
    for i, leg in enumerate(legs):
        leg.sendto(b"frame-%d" % i, dest)
    assert _nothing_waiting(peer)
    w.end(time.monotonic() + 0.01)
    got = _recv_all(peer, 4)
    assert sorted(data for data, _ in got) == [b"frame-%d" % i for i in range(4)]
    by_data = {data: src for data, src in got}
    for i, leg in enumerate(legs):
        assert by_data[b"frame-%d" % i] == leg.sock.getsockname()
        assert leg.sent == 1
    assert w.packets == 4 and w.fallbacks == 0
    assert len({pid for pid in w.pids}) == 2
    for leg in legs:
        leg.sock.close()


def test_outside_a_tick_the_transport_sends_itself(workers) -> None:
    """RTCP and anything sent between ticks go out at once, not through a worker."""
    w = workers(1)
    leg = RtpTransport(_udp(), lambda d, a: None)
    peer = _udp()
    leg.sendto(b"now", peer.getsockname())
    assert _recv_all(peer, 1, timeout=2) == [(b"now", leg.sock.getsockname())]
    assert w.packets == 0
    leg.sock.close()


def _flagged(leg: RtpTransport) -> bool:
    """Whether ``leg``'s batch records tell its worker that the socket is connected."""
    assert leg.batch_memo is not None
    _slot, aid = struct.unpack("<II", leg.batch_memo[2])
    return bool(aid & PEER)


async def test_a_pinned_legs_frames_are_sent_on_the_connected_socket(workers) -> None:
    """A leg pinned to its peer (RtpTransport.pin) has its records flagged,
    so that its worker sends with ``send`` on the connected socket: the
    frames arrive from the leg's port. Unpinning forgets the flag; and a
    record flagged for a socket no longer connected (the engine disconnected
    it after the tick was prepared) falls back to ``sendto`` and still arrives."""
    w = workers(1)
    leg, peer, dest = _one_leg(w, b"first")
    assert not _flagged(leg)
    leg.sock.setblocking(False)  # as the engine's RTP sockets
    leg.attach()
    leg.pin(dest)
    await asyncio.sleep(0.01)
    assert leg.pinned and leg.batch_memo is None
    _tick(w, [(leg, b"pinned", leg.peer)])
    assert _recv_all(peer, 1) == [(b"pinned", leg.sock.getsockname())]
    assert _flagged(leg)
    disconnect(leg.sock)  # behind the transport's back: its records still say connected
    _tick(w, [(leg, b"stale", leg.peer)])
    assert _recv_all(peer, 1) == [(b"stale", leg.sock.getsockname())]
    leg.unpin()
    assert leg.batch_memo is None
    _tick(w, [(leg, b"unpinned", dest)])
    assert _recv_all(peer, 1) == [(b"unpinned", leg.sock.getsockname())]
    assert not _flagged(leg)
    assert w.fallbacks == 0
    leg.detach()
    leg.sock.close()


def test_a_killed_worker_is_replaced_before_the_next_tick(workers, caplog) -> None:
    """A worker that dies between ticks is found dead when the next tick
    begins: an error is logged naming it, a new worker starts, and that
    tick goes through the new one, the socket handed over again."""
    w = workers(1)
    leg, peer, dest = _one_leg(w, b"one")
    old = w.pids[0]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while w._workers[0].proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    _tick(w, [(leg, b"two", dest)])
    assert _recv_all(peer, 1) == [(b"two", leg.sock.getsockname())]
    assert w.restarts == 1 and w.pids[0] != old and w.fallbacks == 0
    assert "RTP send worker 0" in caplog.text and "exited with code -9" in caplog.text


def test_a_worker_gone_at_the_end_of_a_tick_costs_nothing_of_it(workers) -> None:
    """A worker whose pair is closed when the tick ends: the engine sends
    that tick itself (nothing of it lost), and starts another worker."""
    w = workers(1)
    leg, peer, dest = _one_leg(w, b"one")
    w.begin(time.monotonic())
    leg.sendto(b"two", dest)
    w._workers[0].ctl.shutdown(socket.SHUT_WR)  # the pair breaks mid-tick
    w.end(time.monotonic())
    assert _recv_all(peer, 1) == [(b"two", leg.sock.getsockname())]
    assert w.fallbacks == 1 and w.restarts == 1


def test_a_closed_socket_is_let_go_by_its_worker(workers) -> None:
    """A socket the engine closes is forgotten at the next sweep: the worker
    closes its copy, so the port can be bound again (without the sweep the
    worker would hold it bound)."""
    w = workers(1)
    sock = _udp()
    port = sock.getsockname()[1]
    leg = RtpTransport(sock, lambda d, a: None)
    peer = _udp()
    _tick(w, [(leg, b"x", peer.getsockname())])
    assert len(_recv_all(peer, 1)) == 1
    sock.close()
    with pytest.raises(OSError):  # the worker's copy still holds the port
        _udp_on(port).close()
    for _ in range(SWEEP_EVERY):
        _tick(w, [])
    deadline = time.monotonic() + 5
    while True:
        try:
            _udp_on(port).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the worker kept the closed socket's port"
            time.sleep(0.02)


def _udp_on(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def test_a_worker_skips_bad_messages_and_goes_on(workers) -> None:
    """Malformed messages on the pair (short, unknown tags, a record naming an
    unknown slot or address, a truncated record, an address that is not
    UTF-8) are skipped; the worker still sends the next good batch."""
    w = workers(1)
    leg, peer, dest = _one_leg(w, b"first")
    ctl = w._workers[0].ctl
    for bad in (b"B", b"S", b"F\x01", b"A\x00", b"Zzz", b"A" + struct.pack("<IH", 7, 9) + b"\xff\xfe",
                b"B" + struct.pack("<dB", 0.0, 1) + struct.pack("<IIH", 999, 0, 3) + b"abc",
                b"B" + struct.pack("<dB", 0.0, 1) + struct.pack("<IIH", 0, 0, 50) + b"short"):
        ctl.send(bad)
    _tick(w, [(leg, b"second", dest)])
    assert [d for d, _ in _recv_all(peer, 1)] == [b"second"]
    assert w._workers[0].proc.poll() is None
    leg.sock.close()


def test_stop_ends_the_workers(workers) -> None:
    """stop() closes the pairs; each worker exits with code 0."""
    w = workers(2)
    procs = [x.proc for x in w._workers]
    w.stop()
    assert [p.returncode for p in procs] == [0, 0]


def test_records_round_trip_and_a_damaged_chunk_stops() -> None:
    """The batch format: records read back in order; a record longer than
    the chunk ends the reading without raising."""
    rec = lambda slot, aid, data: struct.pack("<IIH", slot, aid, len(data)) + data  # noqa: E731
    chunk = b"B" + struct.pack("<dB", 1.5, 1) + rec(1, 2, b"ab") + rec(3, 4, b"") + rec(5, 6, b"xyz")
    assert [(s, a, bytes(d)) for s, a, d in iter_records(memoryview(chunk))] == [(1, 2, b"ab"), (3, 4, b""),
                                                                                 (5, 6, b"xyz")]
    assert [s for s, _, _ in iter_records(memoryview(chunk[:-1]))] == [1, 3]
    assert encode_address(7, ("::1", 5004, 0, 0)) == b"A" + struct.pack("<IH", 7, 5004) + b"::1"


def test_bad_worker_count() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SendWorkers(0)


class _Sink:
    def __init__(self, dispatch: "_Dispatch") -> None:
        self.dispatch = dispatch
        self.ticks = 0

    def tick(self, now: float) -> bool:
        self.dispatch.events.append("tick")
        self.ticks += 1
        return self.ticks < 5


class _Dispatch:
    lead = 0.004
    held_until = float("inf")  # holds nothing in this process

    def release(self) -> None:
        pass

    def __init__(self) -> None:
        self.events: list[object] = []

    def begin(self, planned: float) -> None:
        self.events.append(("begin", planned))

    def end(self, due: float) -> None:
        self.events.append(("end", due))


async def test_the_clock_starts_a_tick_lead_early_and_hands_its_due_time() -> None:
    """With a dispatch the clock calls begin() before the sinks and end(due)
    after them; each due is on the 20 ms grid from the clock's origin and
    ``lead`` after the planned start given to begin()."""
    clock = MediaClock()
    dispatch = _Dispatch()
    clock.dispatch = dispatch
    sink = _Sink(dispatch)
    clock.add(sink)
    while clock.running:
        await asyncio.sleep(0.02)
    assert sink.ticks == 5
    events = dispatch.events
    assert len(events) == 15
    for i in range(5):
        begin, tick, end = events[3 * i: 3 * i + 3]
        assert begin[0] == "begin" and tick == "tick" and end[0] == "end"
        assert end[1] - begin[1] == pytest.approx(dispatch.lead)
        assert (end[1] - clock.origin) / clock.interval == pytest.approx(i + 1)


class _Dying(SendWorkers):
    """Workers that exit at once (a broken installation)."""

    def _command(self, fd: int) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.exit(3)"]


def test_workers_that_keep_dying_are_given_up(caplog) -> None:
    """Workers that cannot stay up are restarted at most MAX_RESTARTS times
    in RESTART_WINDOW seconds, then given up: the engine sends the ticks'
    datagrams itself, the clock's lead goes back to 0, and no more
    processes are started."""
    w = _Dying(1)
    given_up: list[bool] = []
    w.on_give_up = lambda: given_up.append(w.given_up)
    w.start()
    leg = RtpTransport(_udp(), lambda d, a: None)
    peer = _udp()
    dest = peer.getsockname()
    try:
        for _ in range(4 * MAX_RESTARTS):  # each tick finds the worker dead and starts another
            deadline = time.monotonic() + 5
            while w._workers and w._workers[0].proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            _tick(w, [])
            if w.given_up:
                break
        _tick(w, [(leg, b"after", dest)])
        assert [d for d, _ in _recv_all(peer, 1)] == [b"after"]
        assert w.given_up and w.pids == [] and w.lead == 0.0
        assert w.restarts == MAX_RESTARTS
        assert given_up == [True]  # told once, after giving up
        assert "giving the send workers up" in caplog.text
        w.start()
        assert w.pids == []
    finally:
        w.stop()
        RtpTransport.batch = None
        while _opened:
            _opened.pop().close()


def test_workers_end_when_the_engine_is_killed(tmp_path) -> None:
    """An engine killed outright (SIGKILL: no stop()) leaves no worker
    behind: each sees its pair close and exits."""
    import subprocess

    code = ("import sys, time\n"
            "from engine.transport.rtp_send import SendWorkers\n"
            "w = SendWorkers(2); w.start()\n"
            "print(*w.pids, flush=True)\n"
            "time.sleep(60)\n")
    engine = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        pids = [int(p) for p in engine.stdout.readline().split()]
        assert len(pids) == 2
        engine.kill()
        engine.wait(10)
        deadline = time.monotonic() + 10
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [p for p in pids if _running(p)]
            time.sleep(0.02)
        assert alive == [], "workers outlived their engine"
    finally:
        if engine.poll() is None:
            engine.kill()
        engine.stdout.close()


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, already exited, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
