"""RTP port pairs: the allocator's pool of released pairs (real sockets on 127.0.0.1)."""

from __future__ import annotations

import socket
import time

import pytest

from engine.transport.rtp_socket import NoPortsAvailable, RtpPortAllocator, disconnect


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_released_pair_is_reused_only_after_its_quarantine_and_emptied() -> None:
    """Check a released pair stays bound (nobody else can take the port),
    comes back only once it has rested, and comes back with the old call's
    late packets discarded."""
    clock = Clock()
    ports = RtpPortAllocator("127.0.0.1", 44000, 44100, pool=4, quarantine=2.0, clock=clock)
    try:
        first = ports.allocate()
        port = first.rtp_port
        ports.release(first)
        assert ports.pooled == 1 and port not in ports.in_use
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))  # still ours: bound
        late = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        late.sendto(b"late rtp", ("127.0.0.1", port))
        late.sendto(b"late rtcp", ("127.0.0.1", port + 1))
        late.close()
        second = ports.allocate()  # too soon: a new pair
        assert second.rtp_port != port
        clock.now += 2.0
        third = ports.allocate()
        assert third is first and port in ports.in_use and ports.pooled == 0
        for sock in (third.rtp, third.rtcp):
            with pytest.raises(BlockingIOError):
                sock.recv(2048)  # emptied before reuse
        ports.release(second)
        ports.release(third)
    finally:
        ports.close()
    assert first.rtp.fileno() == -1 and second.rtcp.fileno() == -1  # close() closed the pool


def test_the_pool_is_bounded_and_off_by_default() -> None:
    """Check a full pool closes what is released beyond it, and an
    allocator without a pool closes every released pair at once."""
    pooled = RtpPortAllocator("127.0.0.1", 44200, 44300, pool=2)
    pairs = [pooled.allocate() for _ in range(3)]
    for pair in pairs:
        pooled.release(pair)
    assert pooled.pooled == 2 and pairs[2].rtp.fileno() == -1 and pairs[0].rtp.fileno() >= 0
    pooled.close()
    assert pooled.pooled == 0 and pairs[0].rtp.fileno() == -1
    plain = RtpPortAllocator("127.0.0.1", 44300, 44400)
    pair = plain.allocate()
    plain.release(pair)
    assert plain.pooled == 0 and pair.rtp.fileno() == -1


def test_pooled_pairs_count_as_taken_when_the_range_runs_out() -> None:
    """Check a range whose every pair rests in the pool refuses a new one
    rather than binding over a pooled socket."""
    ports = RtpPortAllocator("127.0.0.1", 44400, 44404, pool=8, quarantine=60.0)
    try:
        pairs = [ports.allocate(), ports.allocate()]
        for pair in pairs:
            ports.release(pair)
        with pytest.raises(NoPortsAvailable):
            ports.allocate()
    finally:
        ports.close()


def test_bad_pool_settings_are_refused() -> None:
    """Check negative pool sizes and quarantines are named."""
    with pytest.raises(ValueError, match="pool and quarantine"):
        RtpPortAllocator("127.0.0.1", 44500, 44600, pool=-1)


def test_a_pooled_pair_is_emptied_of_rtcp_alone_and_of_queued_errors() -> None:
    """Check reuse empties a pair whose RTP socket has nothing waiting but
    whose RTCP socket has a late report, and one whose RTP socket holds a
    queued ICMP error (port unreachable) and a late packet."""
    ports = RtpPortAllocator("127.0.0.1", 44600, 44700, pool=4, quarantine=0.0)
    try:
        pair = ports.allocate()
        ports.release(pair)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as late:
            late.sendto(b"late rtcp", ("127.0.0.1", pair.rtp_port + 1))
        again = ports.allocate()
        assert again is pair
        with pytest.raises(BlockingIOError):
            pair.rtcp.recv(2048)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
            closed.bind(("127.0.0.1", 0))
            nowhere = closed.getsockname()
        pair.rtp.connect(nowhere)
        pair.rtp.send(b"to a closed port")  # the kernel queues ECONNREFUSED on the socket
        time.sleep(0.01)
        disconnect(pair.rtp)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as late:
            late.sendto(b"late rtp", ("127.0.0.1", pair.rtp_port))
        ports.release(pair)
        assert ports.allocate() is pair
        with pytest.raises(BlockingIOError):
            pair.rtp.recv(2048)
        ports.release(pair)
    finally:
        ports.close()
