"""The objects every RTP packet and every media tick touch, per leg, keep
their attributes in slots: with a thousand legs, a separate attribute dict
per object is one more cache miss each time (measured with an in-process
A/B of the receive path and the pull: 10% of their cost at 1,000 legs)."""

from __future__ import annotations

import socket

import pytest

from engine.calls.rtp_stream import MediaSession
from engine.media.clock import MediaClock
from engine.media.jitterbuffer import JitterBuffer
from engine.media.rtcp import ReceiverStats
from engine.media.rtcp_session import RtcpSession
from engine.media.rtp import RtpReceiverLatch, RtpSender
from engine.transport.rtp_transport import RtpTransport


@pytest.fixture
def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_the_per_leg_media_objects_have_no_attribute_dict(udp) -> None:
    session = MediaSession(udp, MediaClock())
    sender = RtpSender()
    hot = [session, session.transport, sender, RtcpSession(sender), ReceiverStats(1, 8000), JitterBuffer(),
           RtpReceiverLatch({0}, initial_addr=("127.0.0.1", 4000))]
    assert [type(o).__name__ for o in hot if hasattr(o, "__dict__")] == []


def test_a_slotted_session_still_refuses_an_unknown_attribute(udp) -> None:
    """Slots also catch a misspelt attribute that would otherwise be a new one."""
    session = MediaSession(udp, MediaClock())
    with pytest.raises(AttributeError):
        session.grpah_driven = True  # type: ignore[attr-defined]
    transport = RtpTransport(udp, lambda data, addr: None)
    with pytest.raises(AttributeError):
        transport.recieved = 1  # type: ignore[attr-defined]
