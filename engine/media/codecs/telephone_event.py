"""RFC 4733 telephone-events (DTMF over RTP): payload, sender and receiver.

Payload format (RFC 4733 section 2.3)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     event     |E|R| volume    |          duration             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

All packets of one event carry the same RTP timestamp (the event's start);
the first has the RTP marker bit set; ``duration`` (in timestamp units)
grows with each update; the end is sent three times with E set
(RFC 4733 section 2.5.1.4).

Theory of operation of :class:`TelephoneEventReceiver`: at most one event is
*open*, identified by its RTP timestamp. A packet with a new timestamp opens a
new event (the marker is not needed, so a lost start packet does no harm) and
first reports the open one if its end never came. A packet with E set reports
the open event and remembers its timestamp, so repeated end packets and late
updates of an event already reported are dropped. An open event that hears
nothing for :attr:`~TelephoneEventReceiver.timeout` seconds is reported by
:meth:`~TelephoneEventReceiver.handle_timer` (the sans-IO timer shape:
:meth:`~TelephoneEventReceiver.get_timer` says when). Each digit is reported
once, with the longest duration seen.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

__all__ = [
    "DIGIT_TO_EVENT",
    "EVENT_TO_DIGIT",
    "DigitReceived",
    "DigitStarted",
    "ONSET_MODE",
    "TelephoneEvent",
    "TelephoneEventError",
    "TelephoneEventPacket",
    "TelephoneEventReceiver",
    "generate_event_packets",
]

logger = logging.getLogger(__name__)

#: RFC 4733 section 3.2: DTMF digits and their event codes 0-15.
DIGIT_TO_EVENT: dict[str, int] = {
    **{str(d): d for d in range(10)},
    "*": 10,
    "#": 11,
    "A": 12,
    "B": 13,
    "C": 14,
    "D": 15,
}
#: Event codes 0-15 to DTMF digits.
EVENT_TO_DIGIT: dict[int, str] = {code: digit for digit, code in DIGIT_TO_EVENT.items()}


class TelephoneEventError(ValueError):
    """A telephone-event payload or parameter is invalid."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 event payload.

    :param event: event code 0-255 (0-15 are DTMF digits).
    :param end: the E bit: this is an end packet.
    :param volume: power level in -dBm0, 0-63 (10 means -10 dBm0).
    :param duration: duration so far in RTP timestamp units, 0-65535.
    """

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.event <= 255:
            raise TelephoneEventError(f"event out of range 0-255: {self.event}")
        if not 0 <= self.volume <= 63:
            raise TelephoneEventError(f"volume out of range 0-63: {self.volume}")
        if not 0 <= self.duration <= 0xFFFF:
            raise TelephoneEventError(f"duration out of range 0-65535: {self.duration}")

    def serialize(self) -> bytes:
        """The 4-byte payload."""
        return bytes(
            (self.event, (0x80 if self.end else 0) | self.volume, self.duration >> 8, self.duration & 0xFF)
        )

    @classmethod
    def parse(cls, data: bytes) -> TelephoneEvent:
        """Parse a payload; only the first event block is read (redundant blocks
        of RFC 4733 section 2.5.1.5 may follow). The R bit is ignored.

        :raises TelephoneEventError: the payload is shorter than 4 bytes.
        """
        if len(data) < 4:
            raise TelephoneEventError(f"telephone-event payload too short: {len(data)} bytes, need 4")
        return cls(
            event=data[0],
            end=bool(data[1] & 0x80),
            volume=data[1] & 0x3F,
            duration=(data[2] << 8) | data[3],
        )

    @property
    def digit(self) -> str | None:
        """The DTMF digit for event codes 0-15, else ``None``."""
        return EVENT_TO_DIGIT.get(self.event)


@dataclass(frozen=True, slots=True)
class TelephoneEventPacket:
    """One packet to send for an event.

    :param marker: set the RTP marker bit (first packet of the event).
    :param payload: the event payload.
    :param send_offset: when to send it, in timestamp units after the event
        start. Every packet of the event uses the event start as its RTP timestamp.
    """

    marker: bool
    payload: TelephoneEvent
    send_offset: int


def generate_event_packets(
    digit: str,
    *,
    duration: float = 0.1,
    clock_rate: int = 8000,
    packet_time: float = 0.02,
    volume: int = 10,
    end_repeats: int = 3,
) -> list[TelephoneEventPacket]:
    """The packet sequence for one DTMF digit (RFC 4733 section 2.5.1).

    The first packet carries the marker, then one update per packet time with
    a growing duration, then ``end_repeats`` end packets with the final
    duration, one per packet time.

    :param digit: one of ``0-9 * # A-D`` (``a-d`` accepted).
    :param duration: tone length in seconds (at most 65535 timestamp units).
    :raises TelephoneEventError: bad digit or duration.
    """
    code = DIGIT_TO_EVENT.get(digit.upper())
    if code is None:
        raise TelephoneEventError(f"not a DTMF digit: {digit!r}")
    total = round(duration * clock_rate)
    step = round(packet_time * clock_rate)
    if total <= 0 or step <= 0:
        raise TelephoneEventError("duration and packet_time must be positive")
    if total > 0xFFFF:
        raise TelephoneEventError(f"duration too long for one event: {total} > 65535 timestamp units")
    if end_repeats < 1:
        raise TelephoneEventError("end_repeats must be at least 1")
    packets: list[TelephoneEventPacket] = []
    elapsed = step
    while elapsed < total:
        payload = TelephoneEvent(code, False, volume, elapsed)
        packets.append(TelephoneEventPacket(not packets, payload, elapsed - step))
        elapsed += step
    end = TelephoneEvent(code, True, volume, total)
    first_end = packets[-1].send_offset + step if packets else 0
    for i in range(end_repeats):
        packets.append(TelephoneEventPacket(not packets, end, first_end + i * step))
    return packets


@dataclass(frozen=True, slots=True)
class DigitReceived:
    """A DTMF digit received by RFC 4733.

    :param digit: ``0-9 * # A-D``.
    :param duration: seconds (the longest duration the packets announced).
    :param timestamp: the event's RTP timestamp.
    :param ended: ``False`` when no end packet arrived (reported on a new event or timeout).
    """

    digit: str
    duration: float
    timestamp: int
    ended: bool = True


@dataclass(frozen=True, slots=True)
class DigitStarted:
    """The first packet of a DTMF event arrived: the key is down now; its
    :class:`DigitReceived` follows at the event's end (RFC 4733 §2.5.1.2:
    an event's packets carry its start timestamp and a growing duration).
    A prompt that a digit interrupts (barge-in) stops on this, not on the
    digit's end, which comes as late as the key is held.

    :param digit: ``0-9 * # A-D``.
    :param timestamp: the event's RTP timestamp.
    """

    digit: str
    timestamp: int


#: The tone listener's ``mode`` for a :class:`DigitStarted` (engine.calls.rtp_stream).
ONSET_MODE = "rfc4733-onset"


class TelephoneEventReceiver:
    """Turns received telephone-event packets into :class:`DigitReceived`, each once.

    :param clock_rate: RTP clock rate of the telephone-event payload type.
    :param timeout: seconds without packets after which an open event is reported.
    """

    def __init__(self, clock_rate: int = 8000, timeout: float = 0.25) -> None:
        self.clock_rate = clock_rate
        self.timeout = timeout
        self._open_ts: int | None = None
        self._open_event = 0
        self._open_duration = 0
        self._last_packet = 0.0
        # Timestamps of the last 16 reported events; made by the first one
        # (a deque's first block is ~600 bytes, and most calls get no digit).
        self._done: deque[int] | None = None

    def receive(self, payload: bytes, timestamp: int, now: float) -> list[DigitReceived]:
        """Feed one packet; the digits it completes (see :meth:`receive_events`).

        :param payload: the RTP payload.
        :param timestamp: the packet's RTP timestamp.
        :param now: the current time in seconds (any monotonic origin).
        :raises TelephoneEventError: the payload is malformed.
        """
        return [e for e in self.receive_events(payload, timestamp, now) if isinstance(e, DigitReceived)]

    def receive_events(self, payload: bytes, timestamp: int, now: float) -> list[DigitStarted | DigitReceived]:
        """Feed one packet; a :class:`DigitStarted` when it opens an event,
        then each digit it completes (a :class:`DigitReceived`, once per event).

        :param payload: the RTP payload.
        :param timestamp: the packet's RTP timestamp.
        :param now: the current time in seconds (any monotonic origin).
        :raises TelephoneEventError: the payload is malformed.
        """
        ev = TelephoneEvent.parse(payload)
        out: list[DigitStarted | DigitReceived] = []
        if self._done is not None and timestamp in self._done:
            return out  # repeated end packet or late update of a reported event
        if ev.digit is None:
            logger.debug("ignoring non-DTMF telephone-event %d", ev.event)
            return out
        if self._open_ts is not None and self._open_ts != timestamp:
            out.extend(self._finish(ended=False))
        if self._open_ts is None:
            self._open_ts = timestamp
            self._open_event = ev.event
            self._open_duration = 0
            out.append(DigitStarted(EVENT_TO_DIGIT[ev.event], timestamp))
        self._open_duration = max(self._open_duration, ev.duration)
        self._last_packet = now
        if ev.end:
            out.extend(self._finish(ended=True))
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should be called, or ``None``."""
        if self._open_ts is None:
            return None
        return self._last_packet + self.timeout

    def handle_timer(self, now: float) -> list[DigitReceived]:
        """Report the open event if it has timed out."""
        timer = self.get_timer()
        if timer is None or now < timer:
            return []
        return self._finish(ended=False)

    def _finish(self, *, ended: bool) -> list[DigitReceived]:
        assert self._open_ts is not None
        digit = DigitReceived(
            EVENT_TO_DIGIT[self._open_event],
            self._open_duration / self.clock_rate,
            self._open_ts,
            ended,
        )
        if self._done is None:
            self._done = deque(maxlen=16)
        self._done.append(self._open_ts)
        self._open_ts = None
        return [digit]
