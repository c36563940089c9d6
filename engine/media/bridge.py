"""The conference bridge: ports pulled, mixed and pushed on the media clock.

pjmedia's conference bridge (``conference.h``) in whole-array NumPy. The
call layer (:class:`~engine.calls.conference.MediaGraph`) decides *who hears
whom* and compiles that into a :class:`BridgePlan`: numbered source rows
(legs, then players), two :class:`~engine.media.mixer.FlowMatrix` stages
and the recorders. This module only runs a plan, one 20 ms frame a tick:

1. *pull*: one frame from every source leg's :class:`~engine.media.ports.AudioPort`
   (G.711 payloads of all :class:`~engine.media.ports.BatchAudioPort` legs
   decoded together, one table lookup per codec), then one from each player;
2. *mix*: stage 1 sums the rows flowing into each conference (``int32``);
   stage 2 gives each receiver its direct sources plus, per conference it
   hears, that sum minus its own row (mix-minus as one subtraction);
   saturation to ``int16`` happens once, at the end;
3. *push*: each receiver its frame (encoded together where the ports take
   G.711), each other source leg ``None`` (its own player only);
4. *record*: a leg's recorder gets what it heard plus what it said, a
   conference's its sum; a *tap* (a sink that only receives, such as a
   speech recogniser) gets what its leg said.

Legs are opaque keys (:class:`~engine.media.ports.PortOwner`): the bridge
asks each for its port once, attaches it, and keeps it in :attr:`Bridge.attached`
until the call layer detaches it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from engine.media.mixer import FlowMatrix
from engine.media.pcm import FRAME_SAMPLES, Pcm
from engine.media.players import FrameSource, PlaybackFinished
from engine.media.ports import AudioPort, BatchAudioPort, PortOwner

if TYPE_CHECKING:
    from engine.media.dtx import Suppressor

__all__ = ["Bridge", "BridgePlan", "FrameSink", "MAX_GAP_TICKS", "TrackSink", "SILENCE_PEAK"]

logger = logging.getLogger(__name__)

#: A tick whose source rows all stay within ±this (−72 dBFS: G.711's
#: quietest codes, what a phone sends for silence; A-law has no zero) is
#: not mixed: every receiver gets silence.
SILENCE_PEAK = 8

K = TypeVar("K", bound=PortOwner)

#: Most ticks skipped by the clock that recordings and taps are given
#: silence for (:meth:`Bridge.record_gap`); a longer stall loses the rest.
MAX_GAP_TICKS = 500


class FrameSink(Protocol):
    """Where a recording's frames go (:class:`~engine.media.recorder.WavRecorder`)."""

    def write(self, frame: Pcm) -> None:
        """Append ``frame``."""


class TrackSink(Protocol):
    """Where a tapped leg's two tracks go each tick, apart (a media stream
    to a bot, :mod:`engine.calls.media_stream`)."""

    def write_tracks(self, inbound: Pcm | None, outbound: Pcm | None) -> None:
        """What the leg said (``None``: no row) and what it was sent."""


class BridgePlan(Generic[K]):
    """One compiled routing: what the bridge pulls, mixes, pushes and
    records each tick. Rows ``0..S-1`` are :attr:`sources`, ``S..S+P-1``
    :attr:`players`; stage 1 maps rows to conference sums, stage 2 rows
    plus sums to :attr:`receivers`.

    A plain class, not a dataclass: this module is compiled
    (:mod:`engine.native`), and a generic dataclass built by mypyc 2.4.1
    fails at import."""

    def __init__(self, sources: list[K], players: list[FrameSource], receivers: list[K],
                 stage1: FlowMatrix, stage2: FlowMatrix,
                 leg_rec: list[tuple[FrameSink, K, int | None, int | None]],
                 mix_rec: list[tuple[FrameSink, int]],
                 silent: list[K] | None = None,
                 leg_taps: list[tuple[TrackSink, K, int | None, int | None]] | None = None,
                 taps: list[tuple[FrameSink, int]] | None = None) -> None:
        self.sources = sources                # rows 0..S-1: legs pulled
        self.players = players                # rows S..S+P-1
        self.receivers = receivers            # stage-2 sinks
        self.stage1 = stage1
        self.stage2 = stage2
        self.leg_rec = leg_rec                # (sink, leg, source row, receiver row)
        self.mix_rec = mix_rec                # (sink, conference row)
        self.silent: list[K] = silent if silent is not None else []  # sources that receive nothing
        self.leg_taps: list[tuple[TrackSink, K, int | None, int | None]] = \
            leg_taps if leg_taps is not None else []  # as leg_rec
        self.taps: list[tuple[FrameSink, int]] = taps if taps is not None else []  # (sink, source row): what a leg said
        # Filled on the first tick (and again while a leg has no audio port yet):
        self.ports_pending = True
        self.src_batch: list[tuple[int, BatchAudioPort]] = []
        self.src_plain: list[tuple[int, AudioPort]] = []
        self.recv_batch: list[tuple[int, BatchAudioPort]] = []
        self.recv_plain: list[tuple[int, AudioPort]] = []
        self.silent_ports: list[AudioPort] = []
        # Buffers reused every tick: fresh arrays of this size cost page faults
        # (glibc hands them back to the kernel), 0.7 ms a tick at 1,000 legs.
        self.rows: Pcm | None = None
        self.stacked: npt.NDArray[np.int32] | None = None
        self.mixed: npt.NDArray[np.int32] | None = None
        self.quiet: tuple[npt.NDArray[np.int32], Pcm] | None = None  # Bridge.silence's zero sums and frames

    @property
    def idle(self) -> bool:
        """Nothing to pull, push or record."""
        return not (self.sources or self.receivers or self.players or self.leg_rec or self.mix_rec
                    or self.leg_taps or self.taps)


class Bridge(Generic[K]):
    """Runs a :class:`BridgePlan` each tick over the legs' ports.

    :param samples: samples per frame (20 ms at the internal rate).
    """

    def __init__(self, samples: int = FRAME_SAMPLES) -> None:
        self.samples = samples
        #: Each leg whose port is attached, and that port.
        self.attached: dict[K, AudioPort] = {}
        #: When a list (benches): each tick appends ``(start, pull, mix, push)``,
        #: its ``perf_counter`` start and the seconds each phase took.
        self.tick_times: list[tuple[float, float, float, float]] | None = None
        #: Ticks run and the seconds they took in all (two clock reads a
        #: tick; the engine's metrics read them).
        self.ticks = 0
        self.busy_seconds = 0.0
        #: Ticks in which nothing was mixed: every source row was silence.
        self.quiet_ticks = 0
        self._silence: dict[int, tuple[npt.NDArray[np.uint8], bytes]] = {}
        #: Silence suppression (:mod:`engine.media.dtx`), which then runs
        #: each tick; ``None`` (the default): every receiver is sent a frame
        #: every tick.
        self.dtx: Suppressor | None = None

    # -- ports ------------------------------------------------------------------

    def port(self, leg: K) -> AudioPort | None:
        """``leg``'s port, attached on first use (``None``: it has none yet)."""
        port = self.attached.get(leg)
        if port is None:
            port = leg.media_port()
            if port is not None:
                port.graph_attach()
                self.attached[leg] = port
        return port

    def detach(self, leg: K) -> None:
        """Let go of ``leg``'s port (nothing if it is not attached)."""
        port = self.attached.pop(leg, None)
        if port is not None:
            port.graph_detach()

    def _resolve_ports(self, plan: BridgePlan[K]) -> None:
        """Attach the plan's legs and sort their ports into batched and plain."""
        pending = False

        def split(legs: list[K], batch: list[tuple[int, BatchAudioPort]],
                  plain: list[tuple[int, AudioPort]]) -> None:
            nonlocal pending
            batch.clear()
            plain.clear()
            for i, leg in enumerate(legs):
                port = self.port(leg)
                if port is None:
                    pending = True
                elif isinstance(port, BatchAudioPort):
                    batch.append((i, port))
                else:
                    plain.append((i, port))

        split(plan.sources, plan.src_batch, plan.src_plain)
        split(plan.receivers, plan.recv_batch, plan.recv_plain)
        plan.silent_ports = [port for port in map(self.attached.get, plan.silent) if port is not None]
        plan.ports_pending = pending

    # -- one tick ---------------------------------------------------------------

    def tick(self, plan: BridgePlan[K], now: float) -> list[int]:
        """One frame of ``plan``: pull, mix, push, record. When no source
        row peaks above :data:`SILENCE_PEAK` (nobody speaking, or nobody
        sending), nothing is mixed or encoded: every receiver is sent
        silence (G.711 legs a payload encoded once per codec).

        :return: the indices (in :attr:`BridgePlan.players`) of the players
            that ended or failed during this tick.
        """
        times = self.tick_times
        t0 = time.perf_counter()
        dtx = self.dtx
        if dtx is not None and dtx.start(self, plan, now):
            self.ticks += 1
            return []
        rows, finished = self.pull(plan, now)
        t1 = time.perf_counter() if times is not None else 0.0
        if rows.size and (rows.max() > SILENCE_PEAK or rows.min() < -SILENCE_PEAK):
            if dtx is not None:
                dtx.loud(now)
            sums, out = self.mix(plan, rows)
            t2 = time.perf_counter() if times is not None else 0.0
            self.push(plan, out)
        else:
            self.quiet_ticks += 1
            sums, out = self.silence(plan)
            t2 = time.perf_counter() if times is not None else 0.0
            if dtx is None:
                self.push_silence(plan)
            else:
                dtx.push_quiet(self, plan, rows, out, now)
        if dtx is not None:
            dtx.finish(plan, now)
        if plan.leg_rec or plan.mix_rec or plan.taps or plan.leg_taps:
            self.record(plan, rows, sums, out)
        t3 = time.perf_counter()
        self.ticks += 1
        self.busy_seconds += t3 - t0
        if times is not None:
            times.append((t0, t1 - t0, t2 - t1, t3 - t2))
        return finished

    def pull(self, plan: BridgePlan[K], now: float) -> tuple[Pcm, list[int]]:
        """This tick's source rows: each source leg's received frame, then
        each player's frame (silence where there is none). G.711 payloads of
        all legs are decoded together, one table lookup per codec.

        :return: the rows, and the indices of the players that ended.
        """
        if plan.ports_pending:
            self._resolve_ports(plan)
        n = self.samples
        num_legs = len(plan.sources)
        rows = plan.rows
        if rows is None or rows.shape[1] != n:
            rows = plan.rows = np.zeros((num_legs + len(plan.players), n), dtype=np.int16)
        else:
            rows.fill(0)
        coded: dict[int, tuple[npt.NDArray[np.int16], list[int], list[bytes]]] = {}
        last_table: npt.NDArray[np.int16] | None = None
        index: list[int] = []
        payloads: list[bytes] = []
        for i, bport in plan.src_batch:
            got = bport.pull_payload(now)
            if got is None:
                continue
            if got.__class__ is bytes:
                table = bport.decode_table
                if table is not last_table:  # most legs share one codec: one lookup a tick
                    assert table is not None
                    group = coded.get(id(table))
                    if group is None:
                        group = coded[id(table)] = (table, [], [])
                    last_table, index, payloads = table, group[1], group[2]
                index.append(i)
                payloads.append(got)
            else:
                rows[i, : got.shape[0]] = got[:n]  # type: ignore[union-attr]
        for table, index, payloads in coded.values():
            codes = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(len(payloads), -1)[:, :n]
            first, last = index[0], index[-1]
            if last - first + 1 == len(index) and codes.shape[1] == n:
                # rows first..last in a row (every leg sent its frame, the common
                # case): decode straight into them, no temporary, no scatter
                np.take(table, codes, out=rows[first : last + 1])
            else:
                rows[index, : codes.shape[1]] = np.take(table, codes)
        for i, port in plan.src_plain:
            frame = port.pull(now)
            if frame is not None:
                rows[i, : frame.shape[0]] = frame[:n]
        finished: list[int] = []
        for p, source in enumerate(plan.players):
            try:
                frame = np.asarray(source.read(n), dtype=np.int16)
                rows[num_legs + p, : frame.shape[0]] = frame[:n]
            except PlaybackFinished:
                finished.append(p)
            except Exception:
                logger.exception("player %r failed; stopped", source)
                finished.append(p)
        return rows, finished

    def mix(self, plan: BridgePlan[K], rows: Pcm) -> tuple[npt.NDArray[np.int32], Pcm]:
        """The two stages: conference sums (``int32``) and each receiver's
        saturated frame."""
        num_rows, n = rows.shape
        stacked, mixed = plan.stacked, plan.mixed
        if stacked is None or mixed is None or stacked.shape[1] != n:
            stacked = plan.stacked = np.empty((num_rows + plan.stage1.num_sinks, n), dtype=np.int32)
            mixed = plan.mixed = np.empty((len(plan.receivers), n), dtype=np.int32)
        stacked[:num_rows] = rows
        sums = plan.stage1.apply_raw(rows, out=stacked[num_rows:])
        plan.stage2.apply_raw(stacked, out=mixed)
        np.clip(mixed, -32768, 32767, out=mixed)
        return sums, mixed.astype(np.int16)

    def silence(self, plan: BridgePlan[K]) -> tuple[npt.NDArray[np.int32], Pcm]:
        """What :meth:`mix` returns for rows that are all silence: zero
        conference sums and zero frames (kept in the plan, read-only)."""
        if plan.quiet is None:
            sums = np.zeros((plan.stage1.num_sinks, self.samples), dtype=np.int32)
            out = np.zeros((len(plan.receivers), self.samples), dtype=np.int16)
            sums.flags.writeable = out.flags.writeable = False
            plan.quiet = (sums, out)
        return plan.quiet

    def silence_payload(self, table: npt.NDArray[np.uint8]) -> bytes:
        """One frame of silence encoded with ``table`` (encoded once)."""
        cached = self._silence.get(id(table))
        if cached is None or cached[0] is not table:
            cached = self._silence[id(table)] = (table, table[np.zeros(self.samples, np.uint16)].tobytes())
        return cached[1]

    def push_silence(self, plan: BridgePlan[K]) -> None:
        """:meth:`push` for a tick where every receiver's frame is silence:
        G.711 legs get a payload encoded once, the others a zero frame
        (their own player still mixed in)."""
        if plan.ports_pending:
            self._resolve_ports(plan)
        zero = self.silence(plan)[1]
        for k, port in plan.recv_plain:
            port.push(zero[k])
        last_table: npt.NDArray[np.uint8] | None = None
        payload = b""
        for k, bport in plan.recv_batch:
            table = bport.encode_table
            if table is None:
                bport.push(zero[k])
                continue
            if table is not last_table:
                last_table, payload = table, self.silence_payload(table)
            bport.push_payload(payload)
        for port in plan.silent_ports:
            port.push(None)  # its own player, if any

    def push(self, plan: BridgePlan[K], out: Pcm) -> None:
        """Each receiver its frame; each other source leg only its own player.
        Frames of legs that take them encoded are encoded together, one
        table lookup per codec."""
        if plan.ports_pending:
            self._resolve_ports(plan)
        for k, port in plan.recv_plain:
            port.push(out[k])
        coded: dict[int, tuple[npt.NDArray[np.uint8], list[int], list[BatchAudioPort]]] = {}
        last_table: npt.NDArray[np.uint8] | None = None
        index: list[int] = []
        ports: list[BatchAudioPort] = []
        for k, bport in plan.recv_batch:
            table = bport.encode_table
            if table is None:
                bport.push(out[k])
                continue
            if table is not last_table:  # most legs share one codec: one lookup a tick
                group = coded.get(id(table))
                if group is None:
                    group = coded[id(table)] = (table, [], [])
                last_table, index, ports = table, group[1], group[2]
            index.append(k)
            ports.append(bport)
        n = out.shape[1]
        for table, index, ports in coded.values():
            frames = out if len(index) == out.shape[0] else out[index]
            data = table[frames.view(np.uint16)].tobytes()
            start = 0
            for bport in ports:
                end = start + n
                bport.push_payload(data[start:end])
                start = end
        for port in plan.silent_ports:
            port.push(None)  # its own player, if any

    def record(self, plan: BridgePlan[K], rows: Pcm, sums: npt.NDArray[np.int32], out: Pcm) -> None:
        """A recorded leg: what it was sent plus what it said; a recorded
        conference: its sum; a tapped leg (speech recognition, streams):
        only what it said."""
        n = self.samples
        for sink, row in plan.taps:
            sink.write(rows[row].copy())
        for sink, leg, src_row, recv_row in plan.leg_rec:
            heard = self._heard(leg, recv_row, out)
            if src_row is not None:
                heard += rows[src_row]
            np.clip(heard, -32768, 32767, out=heard)
            sink.write(heard.astype(np.int16))
        for sink, ci in plan.mix_rec:
            total = np.clip(sums[ci], -32768, 32767).astype(np.int16)
            sink.write(total)
        for tap, leg, src_row, recv_row in plan.leg_taps:
            sent = self._heard(leg, recv_row, out)
            np.clip(sent, -32768, 32767, out=sent)
            tap.write_tracks(rows[src_row] if src_row is not None else None, sent.astype(np.int16))

    def record_gap(self, plan: BridgePlan[K], ticks: int) -> None:
        """The clock skipped ``ticks`` (its loop was blocked): no frame was
        made for them, so each recording and tap gets a frame of silence
        for each (at most :data:`MAX_GAP_TICKS`), one write a frame as on a
        tick: a recording keeps the call's time, and what a recogniser or a
        bot hears stays aligned with it."""
        if ticks <= 0 or not (plan.leg_rec or plan.mix_rec or plan.taps or plan.leg_taps):
            return
        n = self.samples
        for _ in range(min(ticks, MAX_GAP_TICKS)):
            for sink, _row in plan.taps:
                sink.write(np.zeros(n, np.int16))
            for sink, _leg, _src, _recv in plan.leg_rec:
                sink.write(np.zeros(n, np.int16))
            for sink, _ci in plan.mix_rec:
                sink.write(np.zeros(n, np.int16))
            for tap, _leg, _src, _recv in plan.leg_taps:
                tap.write_tracks(np.zeros(n, np.int16), np.zeros(n, np.int16))

    def _heard(self, leg: K, recv_row: int | None, out: Pcm) -> npt.NDArray[np.int32]:
        """What ``leg`` was sent this tick: its own player mixed in by
        push(), or (batched legs, which have no player) its row of the mix."""
        n = self.samples
        port = self.attached.get(leg)
        sent = getattr(port, "last_sent", None) if port is not None else None
        if sent is not None:
            heard = np.zeros(n, np.int32)
            heard[: sent.shape[0]] += sent[:n]
        elif recv_row is not None:
            heard = out[recv_row].astype(np.int32)
        else:
            heard = np.zeros(n, np.int32)
        return heard
