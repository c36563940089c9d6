"""Paced sending (engine.transport.rtp_pace) with real UDP sockets on a real event loop."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from engine.media import clock as clock_module
from engine.media.clock import MediaClock, run_due
from engine.transport.rtp_pace import EARLY_SLEEP, TickPacer
from engine.transport.rtp_transport import RtpTransport

_opened: list[socket.socket] = []


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    _opened.append(sock)
    return sock


def _waiting(sock: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    """Every datagram queued on ``sock`` now."""
    got = []
    while True:
        try:
            got.append(sock.recvfrom(2048))
        except BlockingIOError:
            return got


@pytest.fixture(autouse=True)
def _cleanup():
    yield
    RtpTransport.batch = None
    while _opened:
        _opened.pop().close()


def _leg() -> tuple[RtpTransport, socket.socket]:
    """An attached transport and the peer socket it sends to."""
    transport = RtpTransport(_udp(), lambda data, addr: None)
    transport.attach()
    return transport, _udp()


async def test_a_ticks_datagrams_leave_at_its_due_time_from_each_legs_port() -> None:
    """Check what is sent between begin() and end(due) is held (nothing on
    the wire, yet counted sent) and leaves once ``due`` has passed, never
    before it, from each leg's own port."""
    pacer = TickPacer()
    legs = [_leg() for _ in range(3)]
    pacer.begin(time.monotonic())
    for i, (transport, peer) in enumerate(legs):
        transport.sendto(b"frame%d" % i, peer.getsockname())
    due = time.monotonic() + 0.030
    pacer.end(due)
    assert RtpTransport.batch is None
    assert pacer.held_until == due
    assert all(transport.sent == 1 for transport, _ in legs)
    assert all(_waiting(peer) == [] for _, peer in legs)
    while pacer.held_until != float("inf"):
        await asyncio.sleep(0.002)
    released = time.monotonic()
    assert released >= due
    for i, (transport, peer) in enumerate(legs):
        assert _waiting(peer) == [(b"frame%d" % i, transport.sock.getsockname())]
    assert (pacer.ticks, pacer.packets, pacer.overruns) == (1, 3, 0)
    # outside a tick the transport sends at once
    transport, peer = legs[0]
    transport.sendto(b"now", peer.getsockname())
    assert _waiting(peer) == [(b"now", transport.sock.getsockname())]


async def test_a_timer_that_fires_early_sleeps_the_rest_or_waits_again() -> None:
    """Check the release timer fired a little early (uvloop counts whole
    milliseconds) sleeps until the due time and then sends; fired earlier
    than EARLY_SLEEP it sends nothing and waits again."""
    pacer = TickPacer()
    transport, peer = _leg()
    pacer.begin(time.monotonic())
    transport.sendto(b"a", peer.getsockname())
    pacer.end(time.monotonic() + 1.0)
    pacer.held_until = due = time.monotonic() + EARLY_SLEEP / 2
    pacer._on_timer()
    assert time.monotonic() >= due
    assert [d for d, _ in _waiting(peer)] == [b"a"]

    pacer.begin(time.monotonic())
    transport.sendto(b"b", peer.getsockname())
    pacer.end(time.monotonic() + 1.0)
    pacer.held_until = time.monotonic() + 0.050
    pacer._on_timer()  # 50 ms early: armed again
    assert _waiting(peer) == [] and pacer._timer is not None
    pacer.release()
    assert [d for d, _ in _waiting(peer)] == [b"b"]


async def test_a_tick_ready_after_its_due_time_is_sent_at_once() -> None:
    """Check a tick whose preparing overran its due time sends at end() and is counted."""
    pacer = TickPacer()
    transport, peer = _leg()
    pacer.begin(time.monotonic() - 0.010)
    transport.sendto(b"late", peer.getsockname())
    pacer.end(time.monotonic() - 0.001)
    assert [d for d, _ in _waiting(peer)] == [b"late"]
    assert pacer.overruns == 1 and pacer.held_until == float("inf")


async def test_the_lead_follows_how_long_preparing_took() -> None:
    """Check the lead is the recent worst preparing time plus a millisecond, at most max_lead."""
    pacer = TickPacer(max_lead=0.010)
    start = time.monotonic()
    pacer.begin(start - 0.004)  # planned 4 ms ago: preparing took 4 ms
    pacer.end(start + 1.0)
    assert 0.005 <= pacer.lead < 0.006
    pacer.begin(time.monotonic() - 0.050)
    pacer.end(time.monotonic() + 1.0)
    assert pacer.lead == 0.010


async def test_a_leg_detached_while_held_is_not_sent_and_errors_are_counted() -> None:
    """Check a datagram whose transport detached meanwhile (its socket may
    serve another call by then) is dropped, and a send the system refuses is
    counted on its transport, not raised."""
    pacer = TickPacer()
    gone, gone_peer = _leg()
    failing, _ = _leg()
    fine, fine_peer = _leg()
    pacer.begin(time.monotonic())
    gone.sendto(b"x", gone_peer.getsockname())
    failing.sendto(b"y", ("127.0.0.1", 0))  # port 0: EINVAL from the kernel
    fine.sendto(b"z", fine_peer.getsockname())
    pacer.end(time.monotonic() + 1.0)
    gone.detach()
    pacer.release()
    assert _waiting(gone_peer) == []
    assert failing.send_errors == 1
    assert [d for d, _ in _waiting(fine_peer)] == [b"z"]


async def test_a_pinned_legs_datagram_goes_out_on_the_connected_socket() -> None:
    """Check a leg pinned to its peer sends with send() (the same address object)."""
    pacer = TickPacer()
    transport, peer = _leg()
    addr = peer.getsockname()
    peer.sendto(b"hello", transport.sock.getsockname())
    transport.pin(addr)
    for _ in range(50):
        await asyncio.sleep(0.002)
        if transport.pinned:
            break
    assert transport.pinned
    sent_with = []
    real_send = transport._send
    transport._send = lambda data: sent_with.append(data) or real_send(data)  # type: ignore[method-assign]
    pacer.begin(time.monotonic())
    transport.sendto(b"pinned", transport.peer)
    pacer.end(time.monotonic() + 1.0)
    pacer.release()
    assert sent_with == [b"pinned"]
    assert [d for d, _ in _waiting(peer)] == [b"pinned"]


async def test_a_reader_releases_held_datagrams_once_due() -> None:
    """Check readers see the held datagrams' due time (next_tick_at) and
    run_due() sends them and cancels the timer, as it starts a due tick."""
    clock = MediaClock()
    pacer = TickPacer()
    clock.dispatch = pacer

    class Quiet:
        def tick(self, now: float) -> bool:
            return True

    clock.add(Quiet())
    try:
        transport, peer = _leg()
        pacer.begin(time.monotonic())
        transport.sendto(b"held", peer.getsockname())
        due = time.monotonic() + 0.003
        pacer.end(due)
        assert clock_module.next_tick_at[0] <= due
        run_due()  # not yet due: nothing
        assert _waiting(peer) == []
        while time.monotonic() < due:
            pass  # the loop is busy elsewhere
        run_due()
        assert [d for d, _ in _waiting(peer)] == [b"held"]
        assert pacer._timer is None and pacer.held_until == float("inf")
        assert clock_module.next_tick_at[0] > due
    finally:
        await clock.stop()


async def test_datagrams_still_held_leave_when_the_next_tick_begins() -> None:
    """Check a tick that begins while the last one's datagrams are held sends them first."""
    pacer = TickPacer()
    transport, peer = _leg()
    pacer.begin(time.monotonic())
    transport.sendto(b"one", peer.getsockname())
    pacer.end(time.monotonic() + 1.0)
    pacer.begin(time.monotonic())
    assert [d for d, _ in _waiting(peer)] == [b"one"]
    transport.sendto(b"two", peer.getsockname())
    pacer.stop()  # stopping sends what is held
    assert [d for d, _ in _waiting(peer)] == [b"two"]
    assert RtpTransport.batch is None


async def test_the_clock_with_a_pacer_sends_every_frame_on_the_grid() -> None:
    """Check, with the clock driving the pacer, each tick's frame is read by
    its peer no earlier than the tick's due time on the clock's grid, and
    within a few milliseconds of it."""
    clock = MediaClock()
    pacer = TickPacer()
    clock.dispatch = pacer
    transport, peer = _leg()
    arrivals: list[float] = []
    dues: list[float] = []

    class Sender:
        sent = 0

        def tick(self, now: float) -> bool:
            Sender.sent += 1
            dues.append(clock._due)
            transport.sendto(b"%d" % Sender.sent, peer.getsockname())
            return Sender.sent < 20

    loop = asyncio.get_running_loop()
    loop.add_reader(peer.fileno(), lambda: arrivals.extend(time.monotonic() for _ in _waiting(peer)))
    try:
        clock.add(Sender())
        deadline = time.monotonic() + 5
        while len(arrivals) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        loop.remove_reader(peer.fileno())
        await clock.stop()
    assert len(arrivals) == 20
    late = [a - d for a, d in zip(arrivals, dues)]
    assert min(late) >= 0.0
    assert sorted(late)[10] < 0.005  # the median: sent at the due time, not a tick later


async def test_an_engine_whose_send_workers_are_given_up_paces_instead(make_engine) -> None:
    """Check an engine with send workers puts a pacer in the clock's
    dispatch when the workers are given up, and stops it on shutdown;
    with --media-pacing off it leaves the loop sending as made."""
    engine = await make_engine("rules: []\n", {}, media_send_workers=1)
    workers = engine.send_workers
    assert workers is not None and engine.media_clock.dispatch is workers and engine.pacer is None
    workers._give_up()
    assert isinstance(engine.pacer, TickPacer) and engine.media_clock.dispatch is engine.pacer
    unpaced = await make_engine("rules: []\n", {}, media_send_workers=1, media_pacing=False)
    assert unpaced.send_workers is not None
    unpaced.send_workers._give_up()
    assert unpaced.pacer is None and unpaced.media_clock.dispatch is unpaced.send_workers
