"""How many datagrams one wake-up of RtpTransport reads (engine.transport.rtp_transport), on a real socket."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Callable

import pytest
import uvloop

from engine.media.clock import MediaClock
from engine.media.rtp import RtpPacket
from engine.transport import rtp_transport
from engine.transport.overload import OverloadBounds
from engine.transport.rtp_transport import AWAY_GAP, FRESH_KEEP, MAX_READS_PER_WAKEUP, RtpTransport, rtp_backlog
from tests.clock_fakes import LeadDispatch


def _queued(count: int) -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        tx.sendto(b"%d" % i, rx.getsockname())
    # loopback queues each datagram before sendto returns
    return rx, tx


class _Clock:
    """The transport's clock (``rtp_transport._monotonic``), moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 100.0
        monkeypatch.setattr(rtp_transport, "_monotonic", lambda: self.now)


def test_one_read_at_a_call_pace_then_a_bounded_drain_in_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wake-up a frame after the last read (a phone's steady pace) reads
    one datagram; one that comes within the burst gap drains what is
    queued, in order, but at most MAX_READS_PER_WAKEUP, so a flooded port
    cannot hold the loop; an empty socket reads nothing and raises nothing."""
    clock = _Clock(monkeypatch)
    rx, tx = _queued(3 * MAX_READS_PER_WAKEUP)
    got: list[bytes] = []
    transport = RtpTransport(rx, lambda data, addr: got.append(data))
    transport._last_read = clock.now - 0.020
    transport._on_readable()
    assert got == [b"0"]
    clock.now += 0.001  # right after the last read: a burst
    transport._on_readable()
    assert len(got) == 1 + MAX_READS_PER_WAKEUP
    assert got == [b"%d" % i for i in range(len(got))]
    assert transport.received == len(got)
    for _ in range(3):
        clock.now += 0.001
        transport._on_readable()
    assert len(got) == 3 * MAX_READS_PER_WAKEUP and transport.stale == 0
    rx.close()
    tx.close()


def _rtp(i: int, pt: int = 0) -> bytes:
    """An RTP datagram of payload type ``pt``, sequence number ``i``, saying ``i``."""
    return RtpPacket(pt, i, 160 * i, 7, b"%d" % i).serialize()


def _numbers(got: list[bytes]) -> list[int]:
    return [int(data[12:]) for data in got]


def test_after_an_absence_the_queue_is_drained_and_only_the_freshest_are_handed_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket not read for longer than AWAY_GAP (a loaded loop comes round
    every socket slower than a burst gap) holds what queued meanwhile. One
    datagram a turn would never empty it: the phone refills it as fast,
    and every frame would stay as late as the stall made it. The wake-up
    reads it all and hands over the newest FRESH_KEEP in order; of the
    older ones, the audio frames (stale_pt) are dropped as stale and
    counted, the rest (here a DTMF event's packet) handed over too. The next
    turn finds only what is new."""
    clock = _Clock(monkeypatch)
    rx, tx = _queued(0)
    for i in range(FRESH_KEEP + 15):
        tx.sendto(_rtp(i, 101 if i == 3 else 0), rx.getsockname())
    got: list[bytes] = []
    told: list[int] = []
    transport = RtpTransport(rx, lambda data, addr: got.append(data))
    transport.on_stale = told.append
    transport.stale_pt = 0
    transport._last_read = clock.now - AWAY_GAP - 0.005
    transport._on_readable()
    assert _numbers(got) == [3, *range(15, FRESH_KEEP + 15)]
    assert transport.stale == 14 and told == [14] and transport.received == FRESH_KEEP + 15
    tx.sendto(_rtp(100), rx.getsockname())
    clock.now += 0.020
    transport._on_readable()
    assert _numbers(got)[-1] == 100 and transport.stale == 14 and told == [14]
    # a few queued after an absence: every one is handed over, none is stale
    for i in range(101, 104):
        tx.sendto(_rtp(i), rx.getsockname())
    clock.now += 0.100
    transport._on_readable()
    assert _numbers(got)[-3:] == [101, 102, 103] and transport.stale == 14 and told == [14]
    rx.close()
    tx.close()


def test_a_transport_without_a_stale_payload_type_drops_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """RTCP, or a stream not negotiated yet (stale_pt None): a drain after an
    absence hands every datagram over."""
    clock = _Clock(monkeypatch)
    rx, tx = _queued(0)
    for i in range(FRESH_KEEP + 5):
        tx.sendto(_rtp(i), rx.getsockname())
    got: list[bytes] = []
    transport = RtpTransport(rx, lambda data, addr: got.append(data))
    transport._last_read = clock.now - 1.0
    transport._on_readable()
    assert _numbers(got) == list(range(FRESH_KEEP + 5)) and transport.stale == 0
    rx.close()
    tx.close()


async def test_what_was_queued_before_attaching_is_all_handed_over() -> None:
    """Attaching is no absence: datagrams sent before it (a phone quicker
    than our 200 OK) are read as a burst, none dropped as stale."""
    rx, tx = _queued(0)
    for i in range(FRESH_KEEP + 5):
        tx.sendto(_rtp(i), rx.getsockname())
    got: list[bytes] = []
    transport = RtpTransport(rx, lambda data, addr: got.append(data))
    transport.stale_pt = 0
    transport.attach()
    for _ in range(100):
        if len(got) == FRESH_KEEP + 5:
            break
        await asyncio.sleep(0.002)
    transport.detach()
    assert _numbers(got) == list(range(FRESH_KEEP + 5)) and transport.stale == 0
    rx.close()
    tx.close()


def test_a_flood_after_an_absence_costs_one_bounded_read_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: a port flooded while the loop was away. One wake-up reads
    MAX_READS_PER_WAKEUP datagrams at most and runs the handler on
    FRESH_KEEP of them; the rest waits for the next turns."""
    clock = _Clock(monkeypatch)
    rx, tx = _queued(0)
    for i in range(3 * MAX_READS_PER_WAKEUP):
        tx.sendto(_rtp(i), rx.getsockname())
    got: list[bytes] = []
    transport = RtpTransport(rx, lambda data, addr: got.append(data))
    transport.stale_pt = 0
    transport._last_read = clock.now - 1.0
    transport._on_readable()
    assert _numbers(got) == list(range(MAX_READS_PER_WAKEUP - FRESH_KEEP, MAX_READS_PER_WAKEUP))
    assert transport.received == MAX_READS_PER_WAKEUP
    assert transport.stale == MAX_READS_PER_WAKEUP - FRESH_KEEP
    rx.close()
    tx.close()


def test_a_failing_handler_does_not_stop_the_reading() -> None:
    """A handler that raises is logged; the next datagrams are still read."""
    rx, tx = _queued(3)
    seen: list[bytes] = []

    def handler(data: bytes, addr: object) -> None:
        seen.append(data)
        if data == b"0":
            raise RuntimeError("boom")

    transport = RtpTransport(rx, handler)
    transport._on_readable()
    transport._on_readable()
    assert seen == [b"0", b"1", b"2"]
    rx.close()
    tx.close()


async def test_a_due_media_tick_starts_in_the_reader_not_after_the_other_readers() -> None:
    """With send workers and the loop behind (here: blocked past the tick's
    due time, then one datagram ready), the reader that notices the tick is due starts it
    right after its own datagram, before the loop's timers run."""
    order: list[str] = []

    class Sink:
        def tick(self, now: float) -> bool:
            order.append("tick")
            return False

    clock = MediaClock()
    clock.dispatch = LeadDispatch()  # as send workers: readers may start its ticks
    clock.add(Sink())
    rx, tx = _queued(0)
    transport = RtpTransport(rx, lambda data, addr: order.append("read"))
    transport.attach()
    try:
        tx.sendto(b"x", rx.getsockname())
        while time.monotonic() < clock.next_at + 0.003:  # the loop is busy elsewhere
            pass
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert order == ["read", "tick"]
        assert clock.ticks == 1 and clock.ticks_inline == 1
    finally:
        await clock.stop()
        transport.detach()
        rx.close()
        tx.close()


LEGS, STALLED_TICKS = 5, 3


def _catch_up(loop_name: str, start: Callable[[MediaClock, list[tuple[socket.socket, socket.socket]]], None],
              stall_on: bytes | None = None) -> list[list[int]]:
    """Five legs read by RtpTransports and a clock with a lead (readers may
    start its ticks) on a fresh ``loop_name`` loop; ``start(clock, pairs)``
    sets the stall going (and sends what the phones send meanwhile); with
    ``stall_on``, leg 0's handler runs :func:`_stall` on that datagram.
    Returns, for each of the first STALLED_TICKS + 1 ticks, how many
    datagrams each leg had read when it started."""

    async def main() -> list[list[int]]:
        reads = [0] * LEGS
        seen: list[list[int]] = []
        clock = MediaClock()
        pairs = [_queued(0) for _ in range(LEGS)]

        class Sink:
            def tick(self, now: float) -> bool:
                seen.append(list(reads))
                return len(seen) <= STALLED_TICKS

        transports = []
        for i, (rx, _tx) in enumerate(pairs):
            def handler(data: bytes, addr: object, i: int = i) -> None:
                reads[i] += 1
                if i == 0 and data == stall_on:
                    _stall(clock, pairs, skip_leg=0)
            transports.append(RtpTransport(rx, handler))
        clock.dispatch = LeadDispatch()
        clock.add(Sink())
        for t in transports:
            t.attach()
        try:
            start(clock, pairs)
            for _ in range(300):
                if len(seen) > STALLED_TICKS:
                    break
                await asyncio.sleep(0.001)
            return seen
        finally:
            await clock.stop()
            for t in transports:
                t.detach()
            for rx, tx in pairs:
                rx.close()
                tx.close()

    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        seen = runner.run(main())
    assert len(seen) == STALLED_TICKS + 1
    return seen


def _stall(clock: MediaClock, pairs: list[tuple[socket.socket, socket.socket]], skip_leg: int | None = None) -> None:
    """The phones send frames 1 to STALLED_TICKS + 1 (``skip_leg``: its
    frame 1 is already read) while the loop is stuck past STALLED_TICKS
    intervals after the first tick's planned start."""
    for frame in range(1, STALLED_TICKS + 2):
        for k, (rx, tx) in enumerate(pairs):
            if k != skip_leg or frame > 1:
                tx.sendto(b"%d" % frame, rx.getsockname())
    while time.monotonic() < clock.next_at + STALLED_TICKS * clock.interval + 0.003:
        pass


def _assert_each_tick_had_its_frames(seen: list[list[int]]) -> None:
    # tick j plays frame j: by then every leg must have read j datagrams
    for j, counts in enumerate(seen, start=1):
        assert min(counts) >= j, f"tick {j} started with only {counts} datagrams read per leg"


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_after_a_stall_no_catch_up_tick_starts_before_its_frames_are_read(loop_name: str) -> None:
    """The loop stalls for three tick intervals while every leg's phone
    keeps sending: each socket holds the frames of the ticks now overdue.
    A reader must not start the overdue ticks one after another from
    inside the same read-out (each after one more datagram): the frames not
    yet read would be late, the jitter buffers grow, and audio is concealed
    (measured: a 90 ms stall concealed about 12,000 frames of 800 legs with
    that, none without)."""
    seen = _catch_up(loop_name, lambda clock, pairs: _stall(clock, pairs))
    _assert_each_tick_had_its_frames(seen)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_stall_inside_a_reader_does_not_start_the_overdue_tick_before_the_others_are_read(
        loop_name: str) -> None:
    """The stall happens in one leg's read (a collector pass, the machine
    taking the core away), while the other legs' frames arrive. The first
    overdue tick then waits for the loop to read them, rather than run
    from its timer with all of them still queued."""

    def start(clock: MediaClock, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
        rx0, tx0 = pairs[0]
        tx0.sendto(b"1", rx0.getsockname())  # leg 0's frame 1, read before the tick: the stall

    seen = _catch_up(loop_name, start, stall_on=b"1")
    _assert_each_tick_had_its_frames(seen)


async def test_backlog_is_the_median_of_the_attached_media_sockets() -> None:
    """``rtp_backlog`` reads the kernel's queues of the attached media
    transports: 0 when every reader kept up, the median queue when most
    fell behind, not moved by one flooded socket among quiet ones; an RTCP
    transport (``watched=False``) and a detached one are not sampled, and
    with none attached there is no figure."""
    assert rtp_backlog() is None
    rigs = [_queued(0) for _ in range(5)]
    media = [RtpTransport(rx, lambda data, addr: None) for rx, _ in rigs]
    rtcp_rx, rtcp_tx = _queued(0)
    rtcp = RtpTransport(rtcp_rx, lambda data, addr: None, watched=False)
    for transport in (*media, rtcp):
        transport.attach()
    try:
        assert rtp_backlog() == 0
        for transport in media:
            transport.pause_reading()  # a saturated loop reaches no reader
        flooded, tx = rigs[0]
        for _ in range(200):
            tx.sendto(b"\x80" * 172, flooded.getsockname())
        assert rtp_backlog() == 0  # one socket of five: the median stays quiet

        def fall_behind(rig: tuple[socket.socket, socket.socket]) -> None:
            for _ in range(10):
                rig[1].sendto(b"\x80" * 172, rig[0].getsockname())

        fall_behind(rigs[1])
        assert rtp_backlog() == 0  # two of five
        fall_behind(rigs[2])
        behind = rtp_backlog()
        assert behind is not None and behind >= 10 * 172  # the kernel charges more than the payload
        assert rtp_backlog(sample=5) == behind
        for _ in range(300):
            rtcp_tx.sendto(b"\x81" * 60, rtcp_rx.getsockname())
        media[1].detach()  # left: flooded, behind, quiet, quiet
        assert rtp_backlog() == 0  # median_low of four
        fall_behind(rigs[3])
        assert rtp_backlog() == behind
        media[1].attach()
        for transport in media:
            if transport is not media[1]:
                transport.resume_reading()
        await asyncio.sleep(0.1)  # the readers drain every queue
        assert rtp_backlog() == 0
    finally:
        for transport in (*media, rtcp):
            transport.detach()
        for rx, tx in (*rigs, (rtcp_rx, rtcp_tx)):
            rx.close()
            tx.close()
    assert rtp_backlog() is None


async def test_backlog_of_a_reader_that_keeps_up_stays_under_the_refuse_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's count (``SO_MEMINFO``) includes datagrams already read
    until the socket's reader queue is empty (Linux's UDP forward deficit):
    a wake-up that reads a socket empty leaves it at 0, and one that reads
    one datagram of a few queued is over by that one, far under the refuse
    bound. A burst is drained to the end, so the over-count never outlives
    the wake-up that read it."""
    clock = _Clock(monkeypatch)
    bound = OverloadBounds().media_backlog
    rx, tx = _queued(0)
    for _ in range(30):
        tx.sendto(b"\x80" * 172, rx.getsockname())
    transport = RtpTransport(rx, lambda data, addr: None)
    transport.attach()  # watched, so sampled ...
    transport.pause_reading()  # ... but read by hand below, not by the loop
    try:
        transport._last_read = clock.now - 0.001  # readable again at once: a burst, drained
        transport._on_readable()
        assert transport.received == 30
        assert rtp_backlog([transport]) == 0
        for _ in range(3):
            tx.sendto(b"\x80" * 172, rx.getsockname())
        transport._last_read = clock.now - 0.020  # a phone's pace: one read
        transport._on_readable()
        assert transport.received == 31
        counted = rtp_backlog([transport])
        assert counted is not None and 0 < counted < bound
        clock.now += 0.001  # readable again at once: the rest is drained
        transport._on_readable()
        assert transport.received == 33
        assert rtp_backlog([transport]) == 0
    finally:
        transport.detach()
        rx.close()
        tx.close()


async def test_the_loop_comes_back_between_two_batches_of_ready_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The RTP sockets are one reader of the loop (the media poll), which
    reads POLL_BATCH ready sockets a wake-up and gives the loop back: what
    the loop has to run meanwhile (here a callback the first read
    scheduled) runs before the next batch. One reader a socket ran every
    ready socket first, and libuv kept polling without running its timers
    while 1,024 were ready at once."""
    monkeypatch.setattr(rtp_transport, "POLL_BATCH", 10)
    loop = asyncio.get_running_loop()
    order: list[str] = []

    def handler(data: bytes, addr: object) -> None:
        if not order:
            loop.call_soon(order.append, "loop")
        order.append("read")

    rigs = [_queued(1) for _ in range(30)]
    transports = [RtpTransport(rx, handler) for rx, _ in rigs]
    for transport in transports:
        transport.attach()
    poll = rtp_transport.media_poll(loop)
    assert len(poll) == 30
    for _ in range(100):
        if order.count("read") == 30:
            break
        await asyncio.sleep(0.002)
    assert order.index("loop") == 10 and order.count("read") == 30
    for transport in transports:
        transport.detach()
    assert rtp_transport._polls[0] is None  # the last one out closes the poll
    for rx, tx in rigs:
        rx.close()
        tx.close()


async def test_a_socket_number_taken_again_is_read_for_its_new_transport() -> None:
    """A transport whose socket was closed before it was detached leaves its
    number in the media poll; a new socket that gets the number is read
    for its own transport, and the old one's late detach removes nothing."""
    keep_rx, keep_tx = _queued(0)  # keeps the poll open throughout
    keeper = RtpTransport(keep_rx, lambda data, addr: None)
    keeper.attach()
    old_rx, old_tx = _queued(0)
    old = RtpTransport(old_rx, lambda data, addr: None)
    old.attach()
    number = old_rx.fileno()
    old_rx.close()
    got: list[bytes] = []
    new_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    new_rx.bind(("127.0.0.1", 0))
    new_rx.setblocking(False)
    assert new_rx.fileno() == number  # the lowest free number
    new = RtpTransport(new_rx, lambda data, addr: got.append(data))
    new.attach()
    old.detach()
    keep_tx.sendto(_rtp(1), new_rx.getsockname())
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.002)
    assert _numbers(got) == [1]
    for transport in (new, keeper):
        transport.detach()
    for sock in (new_rx, keep_rx, keep_tx, old_tx):
        sock.close()
