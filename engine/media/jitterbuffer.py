"""A fixed-frame adaptive jitter buffer for 20 ms RTP audio frames.

Packets go in with :meth:`JitterBuffer.put` as they arrive; the media clock
pulls one frame per tick with :meth:`JitterBuffer.get`, which returns the
payload or ``None`` for a frame that is missing (the codec layer conceals
it). Frames are keyed by RTP timestamp: slot = timestamp / samples-per-frame,
counted from the stream's first packet with wrap-aware 32-bit arithmetic, so
sequence and timestamp wrap, silence suppression (timestamp gaps) and
reordering need no special cases. Storage is one list used as a ring,
indexed by slot: an entry holds the frame waiting for that slot or the
mark that the slot was played (which tells a duplicate from a late
packet) or skipped (:meth:`JitterBuffer.skip_frames`), so put and get are
O(1) and touch one entry of one list (with a thousand legs, the memory a
packet touches is most of its cost).

Playout delay: playback starts ``target`` after the first packet arrives and
then advances one slot a tick; if more than ``target`` + 1 frames are
waiting by then (they came in a burst: queued before the socket was read),
it starts at the newest of those, the older ones discarded before anything
is played. The target is adaptive between
``min_depth_ms`` and ``max_depth_ms``: a packet that arrives after its slot
was played is counted late and raises the target one frame, which is paid
for at once by playing one extra missing frame (the head waits a tick). When
no packet has been late for ``shrink_after`` seconds the target drops a
frame; whenever the fullness of the buffer stayed above the target + 1
frames for a whole second, the frames beyond that are discarded at once
to cut the delay (one cut, where a frame a second made as many cuts as
frames of excess: ``bench/media.py --legs 1000``, a read backlog at
start left some legs 6 frames deep, cut over 6 seconds).

A new SSRC, or a timestamp more than ``resync_ms`` away from the playout
point, restarts the buffer on the new stream (a resync).

Late frames, engine-wide (:func:`late_buffers`): a buffer that gets a
frame after its slot was played is counted, once a window (a second),
and leaves the count if it is freed in that window (a count, not a set of
weak references: the compiled buffer has none, :mod:`engine.native`); the
overload detector reads how many buffers were counted in each of the last
two whole seconds (the fewer of the two: one stall, a collector's pass,
makes every leg late once, and the calls go on). A loop saturated by
media has nearly every leg late, second after second (``bench/media.py``
at 1,000-1,300 legs on a slow machine, 9-36% of the frames concealed),
while the readers' kernel queues, read just before the probe runs, often
look empty; one caller who sends stale frames on purpose is one buffer,
however many he sends. The count costs nothing on time: only the late
path and a buffer's end touch it.

Sans-IO: ``now`` is passed in (seconds, any monotonic origin).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from time import monotonic

from engine.media.rtp import RtpPacket, seq_diff, ts_diff

__all__ = ["JitterBuffer", "JitterStats", "late_buffers"]

_RING = 64
#: Frames played between two moves of the timestamp reference (:meth:`JitterBuffer.get`):
#: far below 2**31 samples at any clock rate, so the signed difference stays exact.
_REBASE = 4096


@dataclass(slots=True)
class JitterStats:
    """Counters of a :class:`JitterBuffer`.

    ``late`` counts packets that came after their slot was played, and those
    the transport dropped as too old before they reached the buffer
    (:meth:`JitterBuffer.count_late`);
    ``lost`` counts packets the sender sent that were never played (missing
    or too late), from gaps in the sequence numbers of the frames played, so
    silence suppression (a timestamp gap with continuous sequence numbers)
    is not loss; ``concealed`` counts the ticks that returned None once
    playing; ``discarded`` counts frames dropped to cut the delay or on
    overflow.
    """

    received: int = 0
    late: int = 0
    duplicate: int = 0
    lost: int = 0
    concealed: int = 0
    discarded: int = 0
    resyncs: int = 0
    depth_ms: int = 0
    target_ms: int = 0


class JitterBuffer:
    """Reorders, de-duplicates and delays one RTP audio stream."""

    # Slots: every packet and every tick reads this object; without a
    # separate attribute table it costs one cache miss less per leg.
    __slots__ = ("frame_ms", "samples_per_frame", "_min", "_max", "_target", "_shrink_after", "_resync",
                 "_counters", "_received", "_ring", "_mask", "_last_seq", "_ssrc", "_ref_ts",
                 "_ref_index", "_head", "_low", "_high", "_first_arrival", "_grow_pending",
                 "_last_adjust", "_window_start", "_window_min", "_late_epoch")

    def __init__(
        self,
        *,
        clock_rate: int = 8000,
        frame_ms: int = 20,
        min_depth_ms: int = 20,
        max_depth_ms: int = 200,
        initial_depth_ms: int = 40,
        shrink_after: float = 5.0,
        resync_ms: int = 1000,
    ) -> None:
        self.frame_ms = frame_ms
        self.samples_per_frame = clock_rate * frame_ms // 1000
        self._min = max(1, min_depth_ms // frame_ms)
        self._max = max(self._min, max_depth_ms // frame_ms)
        self._target = min(self._max, max(self._min, initial_depth_ms // frame_ms))
        self._shrink_after = shrink_after
        self._resync = max(self._max * 2, resync_ms // frame_ms)
        self._counters = JitterStats()
        self._received = 0  # kept apart from _counters: the one counter every packet moves
        # One ring for the frames waiting and the slots played: at slot & mask
        # either (slot, seq, payload), waiting, or slot, played, or None. Twice
        # the resync distance, so a waiting frame and a late one never share
        # an entry (anything farther resyncs).
        size = _RING
        while size < 2 * self._resync + 2:
            size *= 2
        self._mask = size - 1
        self._ring: list[tuple[int, int, bytes] | int | None] = [None] * size
        self._last_seq: int | None = None  # sequence number of the last frame played
        self._ssrc: int | None = None
        self._ref_ts = 0  # the RTP timestamp of slot _ref_index
        self._ref_index = 0
        self._head: int | None = None  # next slot to play, once playing
        self._low = 0  # lowest slot received before playout started
        self._high = 0  # highest slot received
        self._first_arrival: float | None = None
        self._grow_pending = 0
        self._last_adjust: float | None = None
        self._window_start = 0.0
        self._window_min: int | None = None
        self._late_epoch = -1  # the late window this buffer was counted in (late_buffers)

    @property
    def target_ms(self) -> int:
        return self._target * self.frame_ms

    @property
    def depth_ms(self) -> int:
        """How far ahead of the playout point the buffer reaches."""
        if self._first_arrival is None:
            return 0
        base = self._low if self._head is None else self._head
        return max(0, self._high - base + 1) * self.frame_ms

    @property
    def stats(self) -> JitterStats:
        """A snapshot of the counters with the current depth and target."""
        return dataclasses.replace(self._counters, received=self._received, depth_ms=self.depth_ms,
                                   target_ms=self.target_ms)

    def _slot(self, timestamp: int) -> int:
        half = self.samples_per_frame // 2
        return self._ref_index + (ts_diff(self._ref_ts, timestamp) + half) // self.samples_per_frame

    def _restart(self, ssrc: int, timestamp: int, now: float) -> None:
        self._counters.discarded += sum(1 for e in self._ring if e.__class__ is tuple)
        self._ring = [None] * (self._mask + 1)
        self._ssrc = ssrc
        self._ref_ts = timestamp
        self._ref_index = 0
        self._head = None
        self._low = self._high = 0
        self._first_arrival = now
        self._grow_pending = 0
        self._window_min = None
        self._last_seq = None
        if self._last_adjust is None:
            self._last_adjust = now

    def put(self, packet: RtpPacket, now: float) -> bool:
        """Store an arrived packet; False if it was late or a duplicate."""
        return self.put_frame(packet.ssrc, packet.sequence_number, packet.timestamp, packet.payload, now)

    def put_frame(self, ssrc: int, seq: int, timestamp: int, payload: bytes, now: float) -> bool:
        """:meth:`put` from a packet's header fields and payload (a receiver
        that parses no packet object, per packet)."""
        if ssrc != self._ssrc:
            if self._ssrc is not None:
                self._counters.resyncs += 1
            self._restart(ssrc, timestamp, now)
        spf = self.samples_per_frame
        # self._slot(timestamp), inlined (per packet)
        slot = self._ref_index + (
            (((timestamp - self._ref_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000) + (spf >> 1)) // spf
        head = self._head
        ahead = slot - (self._low if head is None else head)
        resync = self._resync
        if ahead > resync or ahead < -resync:
            self._counters.resyncs += 1
            self._restart(ssrc, timestamp, now)
            slot = 0
            head = self._head
        elif head is not None and ahead < 0:
            c = self._counters
            mark = self._ring[slot & self._mask]
            if mark == slot:  # its played mark
                c.duplicate += 1
            elif mark == ~slot:  # the frame of a skipped tick (skip_frames)
                c.discarded += 1
                last = self._last_seq
                if last is None or 0 < ((seq - last) & 0xFFFF) < 0x8000:
                    self._last_seq = seq  # not lost: the next frame played follows it
            else:
                self.count_late(1)
                self._last_adjust = now
                if self._target < self._max:
                    self._target += 1
                    self._grow_pending += 1
            return False
        ring = self._ring
        i = slot & self._mask
        entry = ring[i]
        if entry.__class__ is tuple and entry[0] == slot:
            self._counters.duplicate += 1
            return False
        ring[i] = (slot, seq, payload)
        self._received += 1
        if slot > self._high:
            self._high = slot
        elif head is None and slot < self._low:
            self._low = slot
        return True

    def count_late(self, count: int) -> None:
        """Count ``count`` frames late, and join this window's late buffers
        (:func:`late_buffers`): a packet that came after its slot was
        played (:meth:`put_frame`), or datagrams of this stream the
        transport read and dropped as too old to play (a drain after the
        loop was away: :class:`~engine.transport.rtp_transport.RtpTransport`),
        which never reach the buffer."""
        self._counters.late += count
        if self._late_epoch != _late_epoch[0]:  # once a window
            self._late_epoch = _late_epoch[0]
            _late_count[0] += 1

    def __del__(self) -> None:
        # a buffer freed in the window it was late in leaves the count (a
        # call that ends is not counted; no weak reference: a compiled
        # buffer cannot be weakly referenced, see engine.native)
        if self._late_epoch == _late_epoch[0] and _late_count[0] > 0:
            _late_count[0] -= 1

    def get(self, now: float) -> bytes | None:
        """The frame for this tick, or None when it is missing."""
        head = self._head
        if head is None:
            if self._first_arrival is None:
                return None
            if now - self._first_arrival < self._target * self.frame_ms / 1000 - 1e-9:
                return None
            head = self._low
            excess = self._high - head - self._target
            if excess > 0:
                # More than target + 1 frames came before the first is played
                # (queued before the socket was read: a burst): start at the
                # newest of them. Nothing was played yet, so the cut is not
                # heard; from the oldest, the call would run that much late
                # until trimmed, a frame (an audible cut) a second.
                head = self._skip(head, excess, mark=True)
            self._head = head
            self._window_start = now
        if self._grow_pending:
            self._grow_pending -= 1
            self._counters.concealed += 1
            return None
        # the per-tick part of self._adapt, inlined; the rest once a second
        avail = self._high - head + 1
        window_min = self._window_min
        if window_min is None or avail < window_min:
            self._window_min = avail
        if now - self._window_start >= 1.0 - 1e-9:
            head = self._adapt(now, head)
            avail = self._high - head + 1
        if avail > self._max + 2:  # overflow: cut back to the target at once
            head = self._skip(head, avail - self._target - 1)
        ring = self._ring
        i = head & self._mask
        entry = ring[i]
        frame = None
        if entry.__class__ is not tuple or entry[0] != head:
            self._counters.concealed += 1
        else:
            _, seq, frame = entry
            last = self._last_seq
            if last is not None:
                gap = (((seq - last + 0x8000) & 0xFFFF) - 0x8000) - 1  # seq_diff(last, seq) - 1
                if 0 < gap < 3000:
                    self._counters.lost += gap
            self._last_seq = seq
            ring[i] = head  # played
        head += 1
        self._head = head
        if head - self._ref_index >= _REBASE:
            # keep the timestamp reference near the playout point, so that
            # put_frame's signed 32-bit difference never wraps
            self._ref_ts = (self._ref_ts + (head - self._ref_index) * self.samples_per_frame) & 0xFFFFFFFF
            self._ref_index = head
        return frame

    def skip_frames(self, count: int) -> None:
        """``count`` ticks went by without a :meth:`get` (the media clock
        skipped them): playout moves on by ``count`` slots, so it stays as
        far behind the sender as before, not ``count`` frames later for
        good. Their frames are discarded, those waiting and those still to
        come (marked ``~slot``: counted discarded on arrival, not late, so
        a burst read after the stall does not grow the target)."""
        head = self._head
        if head is not None and count > 0:
            self._head = self._skip(head, min(count, self._mask + 1), mark=True)

    def _adapt(self, now: float, head: int) -> int:
        """Shrink the target after a quiet spell; once a second, if the
        buffer never ran below target + 1 frames, discard a frame."""
        avail = self._high - head + 1
        if self._window_min is None or avail < self._window_min:
            self._window_min = avail
        if now - self._window_start < 1.0 - 1e-9:
            return head
        last = self._last_adjust if self._last_adjust is not None else now
        if now - last >= self._shrink_after - 1e-9 and self._target > self._min:
            self._target -= 1
            self._last_adjust = now
        if self._window_min > self._target + 1:
            # the whole excess in one cut (it was there all second long), not
            # a frame a second: one audible cut, and the delay back at once
            head = self._skip(head, self._window_min - self._target - 1)
        self._window_start = now
        self._window_min = None
        return head

    def _skip(self, head: int, count: int, mark: bool = False) -> int:
        """Discard the frames of ``count`` slots from ``head``; ``mark``:
        mark each slot skipped (``~slot``, see :meth:`skip_frames`)."""
        ring, mask = self._ring, self._mask
        for slot in range(head, head + count):
            entry = ring[slot & mask]
            if entry.__class__ is tuple and entry[0] == slot:
                ring[slot & mask] = None
                self._counters.discarded += 1
                self._last_seq = entry[1]
            if mark:
                ring[slot & mask] = ~slot
        return head + count


#: ``[n]``: buffers still alive that got a late frame since :data:`_late_window`'s start.
_late_count = [0]
#: ``[start, last, before]``: when the current window began
#: (``time.monotonic``), and how many buffers were late in the last whole
#: window and in the one before it.
_late_window = [monotonic(), 0.0, 0.0]
#: ``[n]``: the number of the current window.
_late_epoch = [0]


def late_buffers() -> int:
    """How many jitter buffers got a frame after its slot was played in
    each of the last two whole windows (the fewer; a window is one second,
    or longer when nobody asked for a while). Every caller shares the
    windows: the engine's endpoints read them once each per overload
    probe."""
    now = monotonic()
    if now - _late_window[0] >= 1.0:
        _late_window[:] = [now, float(_late_count[0]), _late_window[1]]
        _late_count[0] = 0
        _late_epoch[0] += 1
    return int(min(_late_window[1], _late_window[2]))
