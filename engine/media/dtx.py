"""Silence suppression (DTX) for the legs the bridge feeds, sans-IO.

Theory of operation
-------------------
RFC 3551 section 4.1 lets audio be sent discontinuously on any payload
format: while a leg would be sent only silence, nothing is sent, and the
first packet after the silence has the marker bit set and a timestamp
advanced by the silence's duration. A :class:`Suppressor` takes part in
the bridge's tick (:meth:`engine.media.bridge.Bridge.tick` calls its
:meth:`~Suppressor.start`, :meth:`~Suppressor.loud`,
:meth:`~Suppressor.push_quiet` and :meth:`~Suppressor.finish` when one is
set; off by default, as SIP trunks expect continuous RTP):

- a *quiet* tick (no source row above
  :data:`~engine.media.bridge.SILENCE_PEAK`) no longer sends each receiver
  a silence packet: each port that can go quiet
  (:class:`SilentPort`, a SIP leg's
  :class:`~engine.calls.rtp_stream.MediaSession` with no player and no
  digits of its own) is told :meth:`SilentPort.begin_silence` once, which
  sends one RFC 3389 comfort-noise packet when CN was negotiated, and is
  then left alone; ports that cannot (a browser leg, a leg playing its
  own prompt) get their silence frame as before;
- every :data:`REFRESH_INTERVAL` seconds or so (randomised per leg, as
  RFC 3550 section 6.3.1 spreads RTCP, so that a thousand legs that fell
  silent on one tick do not refresh on one tick) a quiet port is told
  :meth:`SilentPort.refresh_silence`: another CN packet, or, without CN,
  one frame of encoded silence as a keepalive (see the constant);
- a *loud* tick ends every silence (:meth:`SilentPort.end_silence`: the
  timestamp jumps over it, the next packet has the marker bit) and mixes
  and pushes as without suppression; so does a leg's own player or
  digits starting while it is quiet (the port calls its ``send_waker``);
- sources: a leg whose port has had no audio for a while (it would return
  ``None`` from every pull until a packet arrives, which
  :meth:`SilentPort.sleep_until_audio` tells) is no longer pulled; the
  suppressor arms its ``audio_waker``, which the port calls on its next
  audio packet, and it is pulled again from the
  next tick on (the way :class:`~engine.media.clock.MediaClock` drops a
  sink that returns ``False`` and a media session adds itself back);
- when nothing is left to pull (no awake source, no player, no browser
  leg), nothing to record or tap, and every receiver is quiet, a tick is
  *dormant*: it does nothing but look at the refresh heap.

Players (conference prompts, TTS, music) are sources like legs: while one
plays anything above the silence peak the tick is loud. Recordings and
taps get a frame every tick, as before.

Comfort noise (RFC 3389): the payload is the noise level byte only (no
spectral coefficients, section 3), the level in -dBov of what the quiet
tick's loudest source carried (:func:`noise_level`). RFC 3389 section 4
leaves the update rate to the implementation; ours is
:data:`REFRESH_INTERVAL`.
"""

from __future__ import annotations

import heapq
import math
import random as _random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from engine.media.bridge import SILENCE_PEAK
from engine.media.pcm import FRAME_SECONDS, Pcm

if TYPE_CHECKING:
    from engine.media.bridge import Bridge, BridgePlan
    from engine.media.ports import AudioPort, BatchAudioPort

__all__ = [
    "CN_REFERENCE",
    "REFRESH_INTERVAL",
    "SilencePeriod",
    "SilentPort",
    "Suppressor",
    "cn_level",
    "cn_payload",
    "noise_level",
]

#: RFC 3389 section 3.1: 0 dBov is the overload point; for µ-law the
#: reference is a square wave of ±8031 (14-bit), ±32124 in our 16-bit PCM.
CN_REFERENCE = 32124.0

#: Seconds between comfort-noise refreshes of a quiet leg (randomised
#: 0.5..1.5 times). RFC 3389 section 4 leaves the rate to the
#: implementation. The mix of a quiet tick does not change, so a refresh
#: only repairs a lost CN packet and keeps the path alive: 5 s makes a
#: quiet leg cost 0.2 packets a second instead of 50 and stays well inside
#: the NAT UDP timeouts seen in practice (30 s and more; RFC 4787 REQ-5
#: asks for 2 min) and the RTP inactivity timeouts peers hang up on (ours
#: is 60 s). Without CN the refresh is one frame of encoded silence (a
#: one-frame talkspurt, marker bit set), which every peer accepts: RFC 6263
#: section 4 lists such RTP packets among the NAT keepalives.
REFRESH_INTERVAL = 5.0

#: Ticks between looks for sources that went idle (then put to sleep).
SLEEP_CHECK_TICKS = 10


def noise_level(frames: Pcm) -> int:
    """The RFC 3389 noise level of the loudest frame (a row of ``frames``):
    its RMS in -dBov, 0..127 (127 for digital silence, section 3.1)."""
    if frames.size == 0:
        return 127
    flat = frames.reshape(-1, frames.shape[-1]).astype(np.float64)
    power = float((flat * flat).mean(axis=1).max())
    if power <= 0.0:
        return 127
    dbov = -10.0 * math.log10(power / (CN_REFERENCE * CN_REFERENCE))
    return max(0, min(127, round(dbov)))


def cn_payload(level: int) -> bytes:
    """An RFC 3389 CN payload: the noise level byte alone (section 3.1: the
    magnitude of -dBov in the seven low bits, the top bit 0; no spectral
    coefficients, which section 3 makes optional).

    :raises ValueError: ``level`` is not 0..127.
    """
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 127:
        raise ValueError(f"CN noise level must be 0..127 (-dBov), got {level!r}")
    return bytes((level,))


def cn_level(payload: bytes) -> int:
    """The noise level (-dBov) of an RFC 3389 CN payload (spectral
    coefficients after it are ignored; section 3.1: the top bit is unused).

    :raises ValueError: an empty payload.
    """
    if not payload:
        raise ValueError("CN payload is empty: RFC 3389 section 3 needs at least the noise level byte")
    return payload[0] & 0x7F


@dataclass(slots=True)
class SilencePeriod:
    """One stretch of silence on a sending stream (kept by the port).

    :param started: loop time of the first frame not sent.
    :param timestamp: the RTP timestamp that frame would have carried.
    :param level: the RFC 3389 noise level to send.
    """

    started: float
    timestamp: int
    level: int

    def timestamp_at(self, now: float, samples: int) -> int:
        """The RTP timestamp of the frame due at ``now``: the silence's
        duration in whole frames of ``samples`` later (RFC 3551 section 4.1)."""
        frames = max(0, round((now - self.started) / FRAME_SECONDS))
        return (self.timestamp + frames * samples) & 0xFFFFFFFF


class SilentPort(Protocol):
    """A port that can go quiet (:class:`~engine.calls.rtp_stream.MediaSession`)."""

    #: Called (once, then cleared) on the next audio packet after :meth:`sleep_until_audio`.
    audio_waker: Callable[[], None] | None
    #: Called (once, then cleared) when the port must send again although
    #: the mix is quiet (its own player or digits started).
    send_waker: Callable[[], None] | None

    def begin_silence(self, now: float, level: int) -> bool:
        """Stop sending from the frame due at ``now`` (one CN packet when
        negotiated); ``False`` when the port must keep sending (a player)."""

    def refresh_silence(self, now: float) -> None:
        """Send the periodic CN (or keepalive) packet of the silence."""

    def end_silence(self, now: float) -> None:
        """The frame due at ``now`` is sent again: jump the timestamp over
        the silence and set the marker bit on it."""

    def sleep_until_audio(self, now: float) -> bool:
        """Whether every pull would return ``None`` until an audio packet
        arrives (then :attr:`audio_waker` is called on that packet)."""


def _can_go_quiet(port: object) -> bool:
    return callable(getattr(port, "begin_silence", None))


class Suppressor:
    """Silence suppression for one :class:`~engine.media.bridge.Bridge` (see
    the module notes).

    :param refresh: seconds between CN refreshes of a quiet leg (randomised
        by ``random() + 0.5``).
    :param random: ``random()`` in [0, 1) (tests pass a fixed one).
    """

    def __init__(self, refresh: float = REFRESH_INTERVAL,
                 random: Callable[[], float] = _random.random) -> None:
        if not refresh > 0:
            raise ValueError(f"CN refresh interval must be more than 0 seconds, got {refresh!r}")
        self.refresh = refresh
        self._random = random
        #: Quiet receivers and the time of their next refresh.
        self.quiet: dict[Any, float] = {}
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = 0
        #: Sources not pulled until their next audio packet.
        self.asleep: dict[Any, None] = {}
        self._woken: list[Any] = []
        self._wanting: list[Any] = []
        self._plan: BridgePlan[Any] | None = None
        self._all_sources: list[tuple[int, BatchAudioPort]] = []
        self._awake_quiet: list[tuple[int, Any]] = []       # receivers that may go quiet, sending now
        self._always: list[tuple[int, AudioPort]] = []      # receivers that cannot go quiet
        self._since_sleep_check = 0
        self._level: int | None = None  # the noise level of this quiet stretch
        #: Ticks that did nothing but look at the refresh heap.
        self.dormant_ticks = 0
        #: CN (or keepalive) refreshes sent.
        self.refreshes = 0

    # -- wakers (called by the ports, outside the tick) -------------------------------

    def _audio_arrived(self, port: Any) -> Callable[[], None]:
        return lambda: self._woken.append(port)

    def _send_wanted(self, port: Any) -> Callable[[], None]:
        return lambda: self._wanting.append(port)

    # -- the plan ---------------------------------------------------------------------

    def _adopt(self, bridge: Bridge[Any], plan: BridgePlan[Any], now: float) -> None:
        """Take a new (or newly resolved) plan: which sources to pull, which
        receivers may go quiet; quiet ports that left it send again."""
        if plan.ports_pending:
            bridge._resolve_ports(plan)
        self._plan = plan
        self._all_sources = list(plan.src_batch)
        plan.src_batch = [(i, p) for i, p in self._all_sources if p not in self.asleep]
        present = {id(p) for _, p in self._all_sources}
        for port in [p for p in self.asleep if id(p) not in present]:
            del self.asleep[port]
            port.audio_waker = None
        receivers: list[tuple[int, Any]] = [*plan.recv_batch, *plan.recv_plain]
        self._awake_quiet = [(k, p) for k, p in receivers if _can_go_quiet(p) and p not in self.quiet]
        self._always = [(k, p) for k, p in receivers if not _can_go_quiet(p)]
        receiving = {id(p) for _, p in receivers}
        for port in [p for p in self.quiet if id(p) not in receiving]:
            self._end(port, now)

    def _end(self, port: Any, now: float) -> None:
        self.quiet.pop(port, None)
        port.send_waker = None
        port.end_silence(now)

    # -- one tick ---------------------------------------------------------------------

    def start(self, bridge: Bridge[Any], plan: BridgePlan[Any], now: float) -> bool:
        """The start of :meth:`~engine.media.bridge.Bridge.tick`: take a new
        plan, wake what asked to be woken; ``True`` when the tick has nothing
        to pull, send or record (it is then done: only refreshes are due)."""
        if plan is not self._plan or plan.ports_pending:
            self._adopt(bridge, plan, now)
        if self._woken or self._wanting:
            self._wake(plan, now)
        if (not plan.src_batch and not plan.src_plain and not plan.players and not self._awake_quiet
                and not self._always and not plan.silent_ports and not plan.leg_rec and not plan.mix_rec
                and not plan.taps and not plan.leg_taps):
            self.dormant_ticks += 1
            bridge.quiet_ticks += 1
            self._refresh_due(now)
            return True
        return False

    def loud(self, now: float) -> None:
        """Someone speaks this tick: every quiet leg is sent its mix again."""
        self._level = None
        if self.quiet:
            self._end_all(now)

    def finish(self, plan: BridgePlan[Any], now: float) -> None:
        """The end of a tick: refreshes that are due, and now and then, the
        sources with no audio put to sleep."""
        self._refresh_due(now)
        self._since_sleep_check += 1
        if self._since_sleep_check >= SLEEP_CHECK_TICKS:
            self._since_sleep_check = 0
            self._sleep_idle(plan, now)

    def _wake(self, plan: BridgePlan[Any], now: float) -> None:
        """Sources whose audio arrived are pulled again; quiet receivers
        whose own player or digits started send again."""
        woken, self._woken = self._woken, []
        for port in woken:
            if port in self.asleep:
                del self.asleep[port]
                plan.src_batch.extend((i, p) for i, p in self._all_sources if p is port)
        wanting, self._wanting = self._wanting, []
        for port in wanting:
            if port in self.quiet:
                self._end(port, now)
                self._awake_quiet.extend((k, p) for k, p in [*plan.recv_batch, *plan.recv_plain] if p is port)

    def _end_all(self, now: float) -> None:
        """A loud tick: every quiet receiver sends again (timestamp jump, marker)."""
        for port in list(self.quiet):
            self._end(port, now)
        self._heap.clear()
        plan = self._plan
        assert plan is not None
        self._awake_quiet = [(k, p) for k, p in [*plan.recv_batch, *plan.recv_plain] if _can_go_quiet(p)]

    def push_quiet(self, bridge: Bridge[Any], plan: BridgePlan[Any], rows: Pcm, zero: Pcm, now: float) -> None:
        """A quiet tick: receivers that can go quiet do (once); the others
        get silence as :meth:`~engine.media.bridge.Bridge.push_silence` sends it."""
        if self._awake_quiet:
            level = self._level
            if level is None:  # once a quiet stretch: the floor of a quiet tick hardly moves
                level = self._level = noise_level(rows)
            keep: list[tuple[int, Any]] = []
            for k, port in self._awake_quiet:
                if port.begin_silence(now, level):
                    due = now + self.refresh * (0.5 + self._random())
                    self.quiet[port] = due
                    self._seq += 1
                    heapq.heappush(self._heap, (due, self._seq, port))
                    port.send_waker = self._send_wanted(port)
                else:
                    keep.append((k, port))
                    _push_silence_frame(bridge, port, zero[k])
            self._awake_quiet = keep
        for k, port in self._always:
            _push_silence_frame(bridge, port, zero[k])
        for port in plan.silent_ports:
            port.push(None)  # its own player, if any

    def _refresh_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, port = heapq.heappop(heap)
            if self.quiet.get(port) != due:
                continue  # ended (or rescheduled) since
            port.refresh_silence(now)
            self.refreshes += 1
            nxt = now + self.refresh * (0.5 + self._random())
            self.quiet[port] = nxt
            self._seq += 1
            heapq.heappush(heap, (nxt, self._seq, port))

    def _sleep_idle(self, plan: BridgePlan[Any], now: float) -> None:
        """Stop pulling the sources that will have nothing until a packet comes."""
        keep = []
        for i, port in plan.src_batch:
            sleep = getattr(port, "sleep_until_audio", None)
            if sleep is not None and port not in self.asleep and sleep(now):
                self.asleep[port] = None
                sleeper: Any = port
                sleeper.audio_waker = self._audio_arrived(port)
            else:
                keep.append((i, port))
        if len(keep) != len(plan.src_batch):
            plan.src_batch = keep


def _push_silence_frame(bridge: Bridge[Any], port: Any, zero: Pcm) -> None:
    """One receiver's silence, as :meth:`~engine.media.bridge.Bridge.push_silence`
    sends it: an encoded payload (cached per codec) or a zero frame."""
    table = getattr(port, "encode_table", None)
    if table is None:
        port.push(zero)
    else:
        port.push_payload(bridge.silence_payload(table))

