"""Whether the engine takes new calls: the overload detector of the SIP
endpoint (sans-IO; the endpoint feeds it and acts on its level).

Theory of operation
-------------------
A server past its capacity must shed new work, not everything: a call it
accepted is finished by an ACK, a BYE and their responses, and losing those
in a full socket receive queue is what turns an overload into a collapse (a
2xx never ACKed is retransmitted for 64*T1 and then the call fails,
RFC 3261 §13.3.1.4). So the endpoint sorts arriving datagrams, as early and
as cheaply as it can, into *new* INVITEs and everything else, and the
detector tells it what to do with the new ones.

Five signals, each sampled by the endpoint every ``probe`` seconds:

- **loop lag**: how late a callback scheduled on the event loop ran. It is
  smoothed (an exponentially weighted mean, :data:`LAG_WEIGHT` per sample,
  so a sustained lag shows in a few hundred ms and one pause of a GC or a
  slow handler does not).
- **receive queue**: the fill of the fullest SIP UDP socket's receive
  buffer, a share of its size (Linux ``SO_MEMINFO``; left out elsewhere):
  what is certainly still queued, the kernel's count less the quarter of
  the buffer it may go on charging for datagrams already read
  (:func:`engine.transport.sip_endpoint.udp_queue_fill`).
  uvloop reads a bounded batch of datagrams per loop pass, so a saturated
  loop can show little lag while its queue grows: this is the signal that
  sees what the queue is about to drop. Not smoothed: the kernel's queue is
  already an integral of the load.
- **calls being set up**: INVITE server transactions not answered finally
  yet (ringing calls included; a scenario that never answers costs one).
- **RTP read backlog**: bytes waiting in the kernel for the media readers,
  on the median of a sample of the calls' RTP sockets
  (:func:`engine.transport.rtp_transport.rtp_backlog`). Media load
  saturates the loop differently from signalling: the RTP readers fall
  behind the phones on every socket at once while the loop's lag stays
  small (ticks are started by the readers themselves), and every call's
  audio breaks up. A new call would only add to it, so this signal
  refuses (it never drops: parsing an INVITE is not what costs here).
  Not smoothed, as the queue is already an integral of the load.
- **late legs**: the share of the calls whose jitter buffer got a frame
  after its time in each of the last two whole seconds
  (:func:`engine.media.jitterbuffer.late_buffers`, over the media
  transports read). Near saturation the readers are late for most legs
  every second while their queues, read just before the probe, look
  empty; this is the signal that sees it. Counted only from
  :data:`LATE_MIN_LEGS` legs on: a few calls cannot saturate a loop, and
  one of them on a bad network would be a large share. Refuses only.

Each has two bounds; the level is the highest any signal reaches::

              any signal >= its refuse bound      any >= its drop bound
     NORMAL ---------------------------------> REFUSE ----------------> DROP
        ^                                        | ^                      |
        +----------------------------------------+ +----------------------+
          every signal < EXIT_RATIO x its refuse     every signal < EXIT_RATIO x
          bound, for ``hold`` seconds                its drop bound, for ``hold``

Rising is immediate; falling needs every signal under a lower mark
(:data:`EXIT_RATIO` of the bound) for ``hold`` seconds, so the level does
not flap between two samples. In REFUSE a new INVITE is answered with a
stateless 503 and Retry-After (RFC 3261 §21.5.4, §20.33); in DROP it is
dropped before it is parsed (a 503 still costs a send). An *episode* runs
from leaving NORMAL to coming back to it; :meth:`OverloadDetector.update`
says when one begins and ends so that the endpoint logs once per episode,
not once per refused request.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["EXIT_RATIO", "LAG_WEIGHT", "LATE_MIN_LEGS", "OverloadBounds", "OverloadDetector", "OverloadLevel"]

#: A level is left once every signal is under this share of its bound.
EXIT_RATIO = 0.5
#: Weight of one lag sample in the smoothed lag.
LAG_WEIGHT = 0.2
#: Legs read (media transports) below which the late-legs signal is 0: media
#: saturates a loop here from about 1,000 legs, and with fewer than this a
#: few callers on bad networks, or one who placed several calls and sends
#: his frames late on purpose, would be half of them.
LATE_MIN_LEGS = 50


class OverloadLevel(enum.IntEnum):
    """What becomes of a new out-of-dialog INVITE."""

    #: Processed.
    NORMAL = 0
    #: Answered with a stateless 503 and Retry-After.
    REFUSE = 1
    #: Dropped before it is parsed.
    DROP = 2


@dataclass(frozen=True)
class OverloadBounds:
    """The bounds of the three signals (0 turns one bound off).

    :param lag: seconds of smoothed loop lag from which new INVITEs are refused.
    :param drop_lag: seconds of smoothed loop lag from which they are dropped.
    :param queue: share (0-1) of a SIP UDP socket's receive buffer filled
        from which new INVITEs are refused.
    :param drop_queue: share from which they are dropped.
    :param setup_calls: INVITE server transactions awaiting their final
        answer from which new INVITEs are refused.
    :param media_backlog: bytes queued for the RTP readers on the median
        sampled socket from which new INVITEs are refused.
    :param late_legs: share (0-1) of the legs that got a frame late in
        each of the last two seconds from which new INVITEs are refused.
    :param hold: seconds every signal must stay under its exit mark before
        the level falls.

    Why these defaults (on by default: the engine protects itself):

    - ``lag`` 100 ms smoothed is a fifth of T1: a loop that far behind
      delays every retransmission timer and answer noticeably, and the
      smoothing keeps a single pause (a GC, a slow handler, a test machine's
      scheduler) from refusing anything; ``drop_lag`` 500 ms is T1 itself:
      callers are retransmitting by then, and even a 503 costs a send.
    - ``queue`` 25% of the receive buffer certainly queued (4 MB asked, 8
      granted: about a second of datagrams at the engine's capacity; the
      kernel then counts at most half the buffer, as it may still charge a
      quarter for datagrams already read) leaves half of it for the ACKs
      and BYEs of accepted calls; at 50% (the kernel counting at most 75%)
      new INVITEs are not even looked at. Measured (bench/overload, 1,200
      calls/s against an engine that holds 500-800): the queue is the
      signal that fires, at a loop lag of only ~15 ms, because uvloop reads
      a bounded batch per pass. (That run read the kernel's own count,
      up to a quarter fuller than the queue.) Again with what is certainly
      queued (2026-12-06, 1,350 calls/s for 60 s against 900): 40,441
      calls accepted, all completed; 40,559 refused with 503, 6,988
      dropped, no datagram lost in a full buffer.
    - ``setup_calls`` 1000 calls awaiting their answer is far above what an
      answering engine holds (a handful) and below the 5000 sessions of
      ``max_sessions``: it refuses when scenarios stall, not when they ring.
    - ``hold`` 0.5 s: with 1 s, 523 calls/s were accepted in that run, with
      0.2 s, 600 and half again as many episodes; 0.5 s took 606 with 12
      episodes in 30 s. Zero accepted calls failed with each.
    - ``media_backlog`` 8 KiB: ten RTP datagrams on loopback (the kernel
      charges about 830 bytes for each), 200 ms of a phone's audio, the
      jitter buffers' most. Measured (``bench/media.py``, 2026-12-06): an
      engine keeping up with 1,000 legs showed 0 at the median sample and
      832 bytes (one datagram) at most; one saturated at 1,150-1,300 legs,
      concealing 72-86% of the inbound frames, showed 65-82 KB.
    - ``late_legs`` 0.5: at saturation nearly every leg is late, second
      after second (the same runs: 90-100% in the late seconds); half
      leaves room for calls on bad networks, whose buffers grow after a
      late frame and are late again only after they shrink, 5 s later.
    """

    lag: float = 0.1
    drop_lag: float = 0.5
    queue: float = 0.25
    drop_queue: float = 0.5
    setup_calls: int = 1000
    hold: float = 0.5
    media_backlog: int = 8192
    late_legs: float = 0.5

    def __post_init__(self) -> None:
        for name in ("lag", "drop_lag", "queue", "drop_queue", "setup_calls", "hold", "media_backlog", "late_legs"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"overload bound {name} must be 0 (off) or more, not {value!r}")
        if self.lag and self.drop_lag and self.drop_lag < self.lag:
            raise ValueError(f"overload drop_lag ({self.drop_lag}) must not be below lag ({self.lag})")
        if self.queue and self.drop_queue and self.drop_queue < self.queue:
            raise ValueError(f"overload drop_queue ({self.drop_queue}) must not be below queue ({self.queue})")
        if self.queue > 1 or self.drop_queue > 1:
            raise ValueError("overload queue bounds are shares of the buffer: 0 to 1")
        if self.late_legs > 1:
            raise ValueError("overload late_legs is a share of the legs: 0 to 1")


def _over(value: float, bound: float, ratio: float = 1.0) -> bool:
    return bound > 0 and value >= bound * ratio


class OverloadDetector:
    """The level of overload from samples of lag, queue fill and calls
    being set up (see the module notes). Time is always an argument.

    :param bounds: where the levels begin.
    """

    def __init__(self, bounds: OverloadBounds) -> None:
        self.bounds = bounds
        self.level = OverloadLevel.NORMAL
        #: Smoothed loop lag, seconds.
        self.lag = 0.0
        #: Last receive-queue fill (0-1) and calls being set up.
        self.queue = 0.0
        self.setup_calls = 0
        #: Last RTP read backlog, bytes on the median sampled socket.
        self.media_backlog = 0
        #: Share of the legs late in each of the last two whole seconds (0 under LATE_MIN_LEGS legs).
        self.late_legs = 0.0
        #: Episodes begun since start.
        self.episodes = 0
        #: Since when every signal has been under the current level's exit marks.
        self._calm_since: float | None = None

    def sample(self, now: float, *, lag: float, queue: float = 0.0, setup_calls: int = 0,
               media_backlog: int = 0, late_legs: int = 0, legs: int = 0) -> int:
        """Take one sample of each signal and update :attr:`level`.

        :param lag: seconds the probe callback ran late (raw; smoothed here).
        :param queue: receive-buffer fill of the fullest socket, 0-1.
        :param setup_calls: INVITE server transactions without a final answer.
        :param media_backlog: bytes queued for the RTP readers, median sampled socket.
        :param late_legs: jitter buffers that got a late frame in each of the last two whole seconds.
        :param legs: media transports read.
        :returns: ``1`` when an episode began with this sample, ``-1`` when
            one ended, else ``0``.
        """
        self.lag += LAG_WEIGHT * (max(0.0, lag) - self.lag)
        self.queue = queue
        self.setup_calls = setup_calls
        self.media_backlog = media_backlog
        self.late_legs = min(1.0, late_legs / legs) if legs >= LATE_MIN_LEGS else 0.0
        before = self.level
        target = self._level_for(1.0)
        if target > self.level:
            self.level = target
            self._calm_since = None
        elif self.level > OverloadLevel.NORMAL:
            if self._level_for(EXIT_RATIO) >= self.level:
                self._calm_since = None  # not calm enough to leave
            elif self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= self.bounds.hold:
                self.level = OverloadLevel(self.level - 1)
                self._calm_since = now if self.level > OverloadLevel.NORMAL else None
        if before == OverloadLevel.NORMAL and self.level > OverloadLevel.NORMAL:
            self.episodes += 1
            return 1
        if before > OverloadLevel.NORMAL and self.level == OverloadLevel.NORMAL:
            return -1
        return 0

    def _level_for(self, ratio: float) -> OverloadLevel:
        """The level the signals reach against the bounds scaled by ``ratio``."""
        b = self.bounds
        if _over(self.lag, b.drop_lag, ratio) or _over(self.queue, b.drop_queue, ratio):
            return OverloadLevel.DROP
        if (_over(self.lag, b.lag, ratio) or _over(self.queue, b.queue, ratio)
                or _over(self.setup_calls, b.setup_calls, ratio)
                or _over(self.media_backlog, b.media_backlog, ratio)
                or _over(self.late_legs, b.late_legs, ratio)):
            return OverloadLevel.REFUSE
        return OverloadLevel.NORMAL

    def describe(self) -> dict[str, str]:
        """The signals as log fields (lag in ms, queue in percent)."""
        return {"level": self.level.name.lower(), "lag_ms": f"{self.lag * 1000:.0f}",
                "queue_pct": f"{self.queue * 100:.0f}", "setup_calls": str(self.setup_calls),
                "media_backlog_bytes": str(self.media_backlog), "late_legs_pct": f"{self.late_legs * 100:.0f}"}
