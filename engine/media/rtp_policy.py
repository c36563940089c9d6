"""How strictly a call leg accepts RTP sources (:class:`RtpSourcePolicy`).

Apart from :mod:`engine.media.rtp`, which is compiled (:mod:`engine.native`):
the compiled code trusts annotations, so its ``isinstance`` checks of a
field annotated ``int`` would be compiled away, and a policy of 2.5 or
``True`` packets no longer refused. Checks of outside input stay in
interpreted modules.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PIN_AFTER", "PROBATION", "SEND_GRACE", "RtpSourcePolicy"]

#: Consecutive packets a new RTP source must send before it is latched
#: (Asterisk's ``strictrtp`` probation, ``probation=4`` in rtp.conf).
PROBATION = 4
#: Seconds media may be sent to the SDP address before anything confirmed it.
SEND_GRACE = 3.0
#: Packets accepted (a second of 20 ms audio) before a leg's socket is
#: connected to its latched source (:class:`RtpSourcePolicy`).
PIN_AFTER = 50


@dataclass(frozen=True, slots=True)
class RtpSourcePolicy:
    """How strictly a call leg accepts RTP sources and where it may send.

    :param strict: latch a source other than the SDP address only after
        :attr:`probation` consistent packets, and stop sending to an
        unconfirmed address after :attr:`send_grace` (``False``: the old
        behaviour, the first acceptable packet latches and media always goes
        to the SDP address until then).
    :param probation: consecutive packets (one source, one SSRC, sequence
        numbers each one more than the last) that latch a new source.
    :param send_grace: seconds from media start during which media goes to
        the SDP address although nothing came from it yet.
    :param pin_after: packets accepted after which the socket is connected
        to the latched source, so that the kernel drops everyone else's
        (:meth:`engine.transport.rtp_transport.RtpTransport.pin`); 0: never.
    :raises ValueError: a knob out of range (the message names it).
    """

    strict: bool = True
    probation: int = PROBATION
    send_grace: float = SEND_GRACE
    pin_after: int = PIN_AFTER

    def __post_init__(self) -> None:
        if isinstance(self.probation, bool) or not isinstance(self.probation, int) or self.probation < 1:
            raise ValueError(f"rtp_probation must be a whole number of packets, 1 or more, got {self.probation!r}")
        if not self.send_grace >= 0:  # also refuses NaN
            raise ValueError(f"rtp_send_grace must be 0 or more seconds, got {self.send_grace!r}")
        if isinstance(self.pin_after, bool) or not isinstance(self.pin_after, int) or self.pin_after < 0:
            raise ValueError(f"rtp_pin_after must be a whole number of packets, 0 or more, got {self.pin_after!r}")
