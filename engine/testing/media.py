"""The engine's media graph, on a clock that steps only when something happens.

Theory of operation
-------------------
Scenario tests run the engine's own :class:`~engine.calls.conference.MediaGraph`:
``create_conference``, ``send_media_to``, ``send_media_between``,
conference ``add``/``remove``/``set_mute``, conference and internal-call
playback and recording all edit and compile the real graph, and its
:meth:`~engine.calls.conference.MediaGraph.tick` mixes. Only the clock differs.

In ``serve`` a :class:`~engine.media.clock.MediaClock` ticks the
graph every 20 ms while it has work: a conference with people in it ticks
for as long as they talk. On the virtual clock that would cost 50 ticks a
virtual second, and a test's ``wait()`` of an hour 180 000 of them. Nothing
a test can observe changes between two graph edits except playbacks
ending, so :class:`SteppedClock` ticks the graph:

- on the next turn of the loop after each edit (the graph registers itself
  with its clock on every change, which is the signal), and
- when the earliest finite playback in the graph is due to end.

For that the graph subclass :class:`HarnessGraph` hands the engine's
graph every player wrapped in a :class:`TimedSource`, which plays on the
virtual clock instead of by frames read: it ends (``PlaybackFinished``,
through the graph's own code path) at ``start + duration``. Recordings are
padded with silence for the time between two steps, so their length is
the virtual time they lasted.

After each step the harness reads the graph (:meth:`MediaGraph.flows`, wires
resolved as the graph resolves them) to learn which players reach which
simulated calls (:class:`GraphPlayer`), and which conferences each
simulated call's audio reaches.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from engine.calls.call import Call, InternalCall, Playback
from engine.calls.conference import Conference, MediaGraph, Node, Recording
from engine.media.pcm import Pcm
from engine.media.players import FrameSource, PlaybackFinished
from engine.media.clock import TICK, ClockSink, MediaClock
from engine.testing.calls import describe_source, source_duration

__all__ = ["SteppedClock", "HarnessGraph", "TimedSource", "GraphPlayer", "graph_edges", "reach", "targets"]

logger = logging.getLogger(__name__)

#: A playback this close to its end counts as ended.
_EPSILON = 1e-6
#: Steps in a row at one instant after which the clock gives up (an engine bug).
_MAX_SPINS = 100


class SteppedClock(MediaClock):
    """A :class:`MediaClock` for the virtual-time loop: each sink ticks on
    the turn after it registers, then only when ``next_due()`` (virtual
    time, ``None``: never) says; ``on_step()`` runs after every step.

    A sink that raises is dropped and the error goes to the loop's exception
    handler, which the harness turns into a test failure (an engine bug).
    """

    def __init__(self) -> None:
        super().__init__()
        self.next_due: Callable[[], float | None] = lambda: None
        self.on_step: Callable[[], None] = lambda: None
        self._stepped: dict[ClockSink, None] = {}
        self._soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._spins = 0

    def __len__(self) -> int:
        return len(self._stepped)

    def __contains__(self, sink: object) -> bool:
        return sink in self._stepped

    def add(self, sink: ClockSink) -> None:
        self._stepped[sink] = None
        if self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._step)

    def discard(self, sink: ClockSink) -> None:
        self._stepped.pop(sink, None)

    async def stop(self) -> None:
        self._stepped.clear()
        self._cancel()

    def _cancel(self) -> None:
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        self._soon = self._timer = None

    def _step(self) -> None:
        self._cancel()
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.ticks += 1
        for sink in list(self._stepped):
            try:
                keep = sink.tick(now)
            except Exception as exc:
                self._stepped.pop(sink, None)
                loop.call_exception_handler({"message": f"media graph tick failed ({sink!r})",
                                             "exception": exc})
                continue
            if not keep:
                self._stepped.pop(sink, None)
        self.on_step()
        due = self.next_due()
        if due is None or not self._stepped:
            return
        self._spins = self._spins + 1 if due <= now else 0
        if self._spins > _MAX_SPINS:  # a playback due that no tick ends: never hang the test
            self._stepped.clear()
            loop.call_exception_handler({"message": f"a playback due at {due} does not end at {now}: "
                                                    "the media graph stopped stepping"})
            return
        self._timer = loop.call_at(max(due, now), self._step)


class TimedSource:
    """A player on the virtual clock: ``inner``'s frames until ``end``
    (``None``: as long as ``inner`` plays, i.e. endless), then
    :class:`PlaybackFinished`."""

    def __init__(self, inner: FrameSource, now: Callable[[], float], duration: float | None) -> None:
        self.inner = inner
        self.rate = inner.rate
        self.now = now
        self.end = None if duration is None else now() + duration

    def read(self, samples: int) -> Pcm:
        if self.end is not None and self.now() >= self.end - _EPSILON:
            raise PlaybackFinished
        try:
            return np.asarray(self.inner.read(samples), dtype=np.int16)
        except PlaybackFinished:
            if self.end is None:
                raise
            return np.zeros(samples, dtype=np.int16)


@dataclass(eq=False)
class GraphPlayer:
    """One playback in the media graph (a conference's, or an internal
    call's, heard through the wire).

    :ivar node: the conference or internal call playing.
    :ivar kind: ``"say"`` or ``"playback"``.
    :ivar description: the text said, or what plays (a file name, ``"tone 425 Hz"``).
    :ivar duration: seconds (``None``: endless).
    :ivar heard_by: the simulated calls it reached, in order.
    """

    node: Node
    kind: str
    description: str
    source: FrameSource
    at: float
    duration: float | None
    playback: Playback | None
    heard_by: list[Call] = field(default_factory=list)
    #: ``None`` while it plays, then whether it played to the end.
    completed: bool | None = None
    #: Whether it reaches a simulated call now (updated at each step).
    audible: bool = False

    @property
    def active(self) -> bool:
        return self.completed is None


class HarnessGraph(MediaGraph):
    """The engine's media graph with players on the virtual clock and a
    record of every playback (:attr:`players`); see the module docstring.

    :param on_step: called after each step of the graph's clock.
    """

    def __init__(self, on_step: Callable[[], None] = lambda: None) -> None:
        clock = SteppedClock()
        super().__init__(clock)
        clock.next_due = self._next_due
        clock.on_step = on_step
        self.stepped = clock
        self.players: list[GraphPlayer] = []
        self._timed: dict[GraphPlayer, TimedSource] = {}
        self._padded: dict[Recording, float] = {}  # recording -> virtual time written up to

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def start_player(self, node: Node, source: FrameSource, done: Callable[[bool], None] | None = None) -> None:
        duration = source_duration(source)
        timed = TimedSource(source, self._now, duration)
        pb = node.playback if isinstance(node, (Call, Conference)) else None
        if pb is not None and pb.kind == "say" and pb.what:
            kind, description = "say", pb.what
        elif pb is not None and pb.what:
            kind, description = "playback", Path(pb.what).name or pb.what
        else:
            kind, description = "playback", describe_source(source)
        record = GraphPlayer(node, kind, description, source, self._now(), duration, pb)

        def finished(completed: bool) -> None:
            record.completed = completed
            self._timed.pop(record, None)
            if done is not None:
                done(completed)

        self.players.append(record)
        self._timed[record] = timed
        super().start_player(node, timed, finished)

    def _next_due(self) -> float | None:
        ends = [t.end for t in self._timed.values() if t.end is not None]
        return min(ends) if ends else None

    def playing_to(self, legs: Iterable[Call]) -> bool:
        """Whether a finite playback reaches one of ``legs`` now."""
        wanted = set(legs)
        return any(r.audible and r.duration is not None and any(c in wanted for c in r.heard_by)
                   for r in self._timed)

    # -- recordings: silence for the time between steps ----------------------------

    def start_recording(self, node: Node, path: str | Path | None = None) -> Recording:
        rec = super().start_recording(node, path)
        self._padded[rec] = self._now()
        return rec

    def tick(self, now: float) -> bool:
        for rec, since in list(self._padded.items()):
            self._pad(rec, since, now)
            self._padded[rec] = now + TICK  # the tick writes one frame
        return super().tick(now)

    def _pad(self, rec: Recording, since: float, now: float) -> None:
        """Write the silence between ``since`` (written up to) and ``now``."""
        frames = int(round((now - since) / TICK))
        if frames > 0 and not rec.done():
            rec.recorder.write(np.zeros(frames * self.samples, dtype=np.int16))

    def _stop_recording(self, rec: Recording) -> None:
        since = self._padded.pop(rec, None)
        if since is not None:
            try:
                self._pad(rec, since, self._now())
            except RuntimeError:  # no running loop: nothing to pad
                pass
        super()._stop_recording(rec)


# -- reading the graph ------------------------------------------------------------------


def graph_edges(graph: MediaGraph) -> dict[Node, list[Node]]:
    """Flows that carry audio now (``flows()`` minus muted and deaf members)."""
    out: dict[Node, list[Node]] = {}
    for src, dst in graph.flows():
        if isinstance(dst, Conference) and src in dst and dst.is_muted(src):
            continue
        if isinstance(src, Conference) and dst in src and src.is_deaf(dst):
            continue
        out.setdefault(src, []).append(dst)
    return out


def targets(edges: dict[Node, list[Node]], src: Node) -> list[tuple[Node, list[InternalCall]]]:
    """Where ``src``'s audio goes one hop on: calls and conferences, each
    with the internal-call wires it passed (audio sent into one end of an
    internal call comes out of the other end, as the graph compiles it)."""
    found: list[tuple[Node, list[InternalCall]]] = []

    def walk(node: Node, wires: list[InternalCall], seen: set[InternalCall]) -> None:
        for dst in edges.get(node, ()):
            if isinstance(dst, InternalCall):
                peer = dst.peer
                if peer is None or peer in seen or peer.state.ended:
                    continue
                seen.add(peer)
                walk(peer, [*wires, dst], seen)
            else:
                found.append((dst, wires))

    if isinstance(src, InternalCall):  # a player on a wire: heard where the other end sends
        peer = src.peer
        if peer is not None and not peer.state.ended:
            walk(peer, [src], {peer})
    else:
        walk(src, [], set())
    return found


def reach(edges: dict[Node, list[Node]], src: Node) -> list[Node]:
    """Every call and conference ``src``'s audio reaches: through wires,
    and on through the conferences it reaches (their mixes go out to their
    receivers). Calls are where audio ends: a call that hears something
    does not pass it on."""
    seen: dict[Node, None] = {}
    todo = [src]
    while todo:
        node = todo.pop(0)
        for dst, _wires in targets(edges, node):
            if dst not in seen and dst is not src:
                seen[dst] = None
                if isinstance(dst, Conference):
                    todo.append(dst)
    return list(seen)

