"""Sending DTMF digits as RFC 4733 telephone-events, one 20 ms frame at a time.

Theory of operation
-------------------
:class:`DtmfSender` is a passive port of the media clock, like a player:
the clock asks it for one frame per tick (:meth:`DtmfSender.tick`) and it
answers with the RTP packets of that frame, made with the call's own
:class:`~engine.media.rtp.RtpSender`. Events therefore use the audio
stream's SSRC and sequence space (RFC 4733 section 2.1), and the stream's
timestamp advances by one frame on every tick, whether a packet went out or
not, so audio sent after the digits continues on the same clock.

The digits are a list of *items*, each a number of ticks long::

    digit   tick 0       1       2       3       4       5       6   ...gap...
            start(M)  update  update  update  end     end     end
            ts=T      ts=T    ts=T    ts=T    ts=T    ts=T    ts=T

- a digit is one event (:func:`~engine.media.codecs.telephone_event.generate_event_packets`):
  the first packet has the marker bit, every packet carries the timestamp
  ``T`` of the tick the event started on, the duration field grows by one
  frame per packet and the end packet is sent three times;
- after a digit that is not the last item, nothing is sent until ``gap``
  seconds after the tone ended (never before the last end packet went out,
  since the next event needs a later timestamp);
- ``,`` is :data:`PAUSE` seconds of nothing.

The sender is finished once its last item's last tick has passed: after the
last digit's third end packet, or after a trailing pause.
:meth:`DtmfSender.stop` ends early without leaving the receiver with a tone
that never ends: an event in progress gets its three end packets (with the
duration reached so far), and nothing after it is sent.

Sans-IO: no clock, no socket. The caller (the call's media session) sends
what :meth:`~DtmfSender.tick` returns, or drops it while the stream is on hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.media.codecs.telephone_event import TelephoneEvent, TelephoneEventError, TelephoneEventPacket, generate_event_packets
from engine.media.rtp import RtpPacket, RtpSender

__all__ = [
    "DIGITS",
    "PAUSE",
    "DtmfSender",
    "DtmfSenderError",
    "validate_digits",
]

#: The digits that can be sent (lower-case ``a-d`` are accepted too).
DIGITS = "0123456789*#ABCD"
#: Seconds of silence for each ``,`` in a digit string.
PAUSE = 0.5
#: The longest tone: RFC 4733's duration field holds 65535 units (8.19 s at 8 kHz).
MAX_DURATION = 5.0
#: Digit strings longer than this are refused (a runaway loop, not a phone number).
MAX_DIGITS = 256


class DtmfSenderError(ValueError):
    """A digit string or a timing parameter cannot be sent (the message says which)."""


def validate_digits(digits: str) -> str:
    """Return ``digits`` with ``a-d`` upper-cased.

    :raises DtmfSenderError: naming the first character that is neither a
        DTMF digit nor ``,``, and its position (counted from 1).
    """
    if not digits:
        raise DtmfSenderError("no digits to send")
    if len(digits) > MAX_DIGITS:
        raise DtmfSenderError(f"too many digits: {len(digits)}, at most {MAX_DIGITS}")
    for position, char in enumerate(digits, 1):
        if char.upper() not in DIGITS and char != ",":
            raise DtmfSenderError(
                f"{char!r} at position {position} is not a DTMF digit (0-9 * # A-D, ',' pauses)"
            )
    return digits.upper()


def _ticks(seconds: float, frame: float) -> int:
    """Whole frames covering ``seconds`` (a hair of float error is not a frame)."""
    return max(0, math.ceil(seconds / frame - 1e-9))


@dataclass
class _Item:
    digit: str | None  # None: a pause
    length: int  # ticks
    packets: dict[int, TelephoneEventPacket]  # tick -> packet (digits only)


class DtmfSender:
    """The RFC 4733 packets of a digit string, frame by frame (see the module notes).

    :param digits: digits and ``,`` pauses (see :func:`validate_digits`).
    :param payload_type: the negotiated telephone-event payload type.
    :param clock_rate: its RTP clock rate (that of the audio codec).
    :param duration: tone length of each digit, seconds.
    :param gap: silence between the end of one tone and the next, seconds.
    :param volume: power level in -dBm0 (RFC 4733 section 2.3.4).
    :param frame: seconds per tick of the media clock.
    :raises DtmfSenderError: bad digits, duration or gap.
    """

    def __init__(
        self,
        digits: str,
        *,
        payload_type: int,
        clock_rate: int = 8000,
        duration: float = 0.1,
        gap: float = 0.07,
        volume: int = 10,
        frame: float = 0.02,
    ) -> None:
        digits = validate_digits(digits)
        if not 0 < duration <= MAX_DURATION:
            raise DtmfSenderError(f"duration must be more than 0 and at most {MAX_DURATION} s, got {duration}")
        if not 0 <= gap <= MAX_DURATION:
            raise DtmfSenderError(f"gap must be 0 to {MAX_DURATION} s, got {gap}")
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.frame_samples = round(frame * clock_rate)
        self._volume = volume
        self.items: list[_Item] = []
        for index, char in enumerate(digits):
            if char == ",":
                self.items.append(_Item(None, _ticks(PAUSE, frame), {}))
                continue
            try:
                packets = generate_event_packets(
                    char, duration=duration, clock_rate=clock_rate, packet_time=frame, volume=volume
                )
            except TelephoneEventError as exc:
                raise DtmfSenderError(str(exc)) from None
            by_tick = {p.send_offset // self.frame_samples: p for p in packets}
            length = max(by_tick) + 1
            if index < len(digits) - 1:
                length = max(length, _ticks(duration + gap, frame))
            self.items.append(_Item(char, length, by_tick))
        self._index = 0
        self._tick = 0
        self._event_ts = 0
        #: The digits whose end packet has been sent, in order.
        self.sent = ""
        #: Whether everything was sent (or :meth:`stop` ended it).
        self.finished = False
        self.stopped = False

    @property
    def total_ticks(self) -> int:
        """Frames from the first tick to the finish, when not stopped."""
        return sum(item.length for item in self.items)

    def tick(self, sender: RtpSender) -> list[RtpPacket] | None:
        """One frame: the packets to send now (often none), stamped by
        ``sender``, whose timestamp then advances by one frame. ``None``
        (and ``sender`` untouched) once finished: the frame is free for audio.
        """
        if self.finished:
            return None
        item = self.items[self._index]
        if self._tick == 0 and item.digit is not None:
            self._event_ts = sender.timestamp
        out: list[RtpPacket] = []
        packet = item.packets.get(self._tick)
        if packet is not None:
            out.append(sender.packet_at(packet.payload.serialize(), self.payload_type, self._event_ts, packet.marker))
            if packet.payload.end and item.digit is not None and self._is_last_end(item, self._tick):
                self.sent += item.digit
        sender.skip(self.frame_samples)
        self._tick += 1
        if self._tick >= item.length:
            self._index += 1
            self._tick = 0
            if self._index >= len(self.items):
                self.finished = True
        return out

    @staticmethod
    def _is_last_end(item: _Item, tick: int) -> bool:
        return all(t <= tick for t, p in item.packets.items() if p.payload.end)

    def stop(self) -> None:
        """End early: an event in progress still gets its three end packets
        (over the next three ticks), nothing after it is sent."""
        if self.finished:
            return
        self.stopped = True
        item = self.items[self._index]
        del self.items[self._index + 1:]
        if item.digit is None or self._tick == 0:
            self.finished = True  # between events: nothing is open
            return
        ends = [t for t, p in item.packets.items() if p.payload.end]
        if ends and min(ends) < self._tick:
            item.length = max(ends) + 1  # its end packets are already going out
            if self._tick >= item.length:
                self.finished = True
            return
        # The event is open: end it with the duration reached so far.
        first = next(iter(item.packets.values())).payload
        duration = min(0xFFFF, self._tick * self.frame_samples)
        end = TelephoneEvent(first.event, True, self._volume, duration)
        item.packets = {self._tick + i: TelephoneEventPacket(False, end, 0) for i in range(3)}
        item.length = self._tick + 3
