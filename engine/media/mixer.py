"""Conference mixing and directed media flows, whole-array NumPy.

A conference is a set of legs; every 20 ms the media clock hands the mixer
one decoded frame per leg as a 2D ``int16`` array (legs x samples) and gets
back one frame per leg: the *mix-minus*, the sum of everybody else.

* mute (no audio in): the leg contributes nothing;
* deaf (no audio out): the leg receives silence;
* volume: a linear gain on what the leg contributes (1.0 = as is).

Sums are taken in ``int32`` and saturated to ``int16`` once, at the end.
Several conferences can be mixed in one call by passing each leg's
conference number as ``groups``.

:class:`FlowMatrix` is the general case (pjmedia's conference matrix): a
sparse set of directed, weighted edges source -> sink, applied as one gather
plus one segmented sum. Mix-minus is the special case "every other member".
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Hashable, Union

import numpy as np
import numpy.typing as npt

from .codecs.g711 import ULAW_DECODE, ULAW_ENCODE

__all__ = [
    "ConferenceMixer",
    "FlowMatrix",
    "benchmark_mix",
    "mix_minus",
    "stack_frames",
]

Pcm = npt.NDArray[np.int16]
FrameInput = Union[Pcm, Sequence[Pcm]]


def stack_frames(frames: FrameInput) -> Pcm:
    """``frames`` as a 2D ``int16`` array (legs x samples).

    :raises ValueError: frames of different lengths or not 1D/2D.
    """
    arr = np.asarray(frames, dtype=np.int16) if len(frames) else np.zeros((0, 0), dtype=np.int16)
    if arr.ndim != 2:
        raise ValueError(f"frames must be legs x samples, got shape {arr.shape}")
    return arr


def _contributions(
    arr: Pcm, mute: npt.ArrayLike | None, volume: npt.ArrayLike | None
) -> npt.NDArray[np.int32]:
    n = arr.shape[0]
    if volume is None:
        contrib = arr.astype(np.int32)
    else:
        gain = np.broadcast_to(np.asarray(volume, dtype=np.float32), (n,))
        contrib = np.rint(arr * gain[:, None]).astype(np.int32)
    if mute is not None:
        m = np.broadcast_to(np.asarray(mute, dtype=bool), (n,))
        contrib[m] = 0
    return contrib


def _saturate(x: npt.NDArray[np.int32]) -> Pcm:
    np.clip(x, -32768, 32767, out=x)
    return x.astype(np.int16)


def mix_minus(
    frames: FrameInput,
    *,
    mute: npt.ArrayLike | None = None,
    deaf: npt.ArrayLike | None = None,
    volume: npt.ArrayLike | None = None,
    groups: npt.ArrayLike | None = None,
) -> Pcm:
    """Each leg's mix of all the *other* legs of its conference.

    :param frames: legs x samples ``int16`` (or a list of equal-length frames).
    :param mute: per-leg bool: contributes nothing.
    :param deaf: per-leg bool: receives silence.
    :param volume: per-leg linear gain on its contribution.
    :param groups: per-leg conference number (any integers); ``None`` = one conference.
    :return: legs x samples ``int16``, saturated.
    """
    arr = stack_frames(frames)
    contrib = _contributions(arr, mute, volume)
    if groups is None:
        total = contrib.sum(axis=0, dtype=np.int32)[None, :]
    else:
        g = np.asarray(groups)
        _, inverse = np.unique(g, return_inverse=True)
        inverse = inverse.reshape(-1)
        sums = np.zeros((int(inverse.max()) + 1 if inverse.size else 0, arr.shape[1]), dtype=np.int32)
        if inverse.size < 64:
            np.add.at(sums, inverse, contrib)
        else:
            _segment_sum(sums, inverse, contrib)
        total = sums[inverse]
    out = total - contrib
    if deaf is not None:
        out[np.broadcast_to(np.asarray(deaf, dtype=bool), (arr.shape[0],))] = 0
    return _saturate(out)


def _segment_sum(sums: npt.NDArray[np.int32], index: npt.NDArray[np.intp], rows: npt.NDArray[np.int32]) -> None:
    """``sums[index[i]] += rows[i]`` via sort + reduceat (faster than add.at for many rows)."""
    order = np.argsort(index, kind="stable")
    sorted_idx = index[order]
    starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
    sums[sorted_idx[starts]] += np.add.reduceat(rows[order], starts, axis=0, dtype=np.int32)


class FlowMatrix:
    """Directed media flows: each sink hears the weighted sum of its sources.

    Built once from edges ``(source, sink)`` or ``(source, sink, gain)``;
    :meth:`apply` then costs one gather and one segmented sum per tick.

    :param num_sources: number of rows of the frames given to :meth:`apply`.
    :param num_sinks: number of output rows.
    :raises ValueError: an index out of range.
    """

    def __init__(
        self,
        num_sources: int,
        num_sinks: int,
        edges: Iterable[tuple[int, int] | tuple[int, int, float]],
    ) -> None:
        src: list[int] = []
        dst: list[int] = []
        gain: list[float] = []
        for edge in edges:
            s, d = int(edge[0]), int(edge[1])
            if not (0 <= s < num_sources and 0 <= d < num_sinks):
                raise ValueError(f"flow {s}->{d} out of range ({num_sources} sources, {num_sinks} sinks)")
            src.append(s)
            dst.append(d)
            gain.append(float(edge[2]) if len(edge) > 2 else 1.0)
        self.num_sources = num_sources
        self.num_sinks = num_sinks
        order = np.argsort(np.asarray(dst, dtype=np.intp), kind="stable")
        self._src = np.asarray(src, dtype=np.intp)[order]
        d_sorted = np.asarray(dst, dtype=np.intp)[order]
        self._gain = np.asarray(gain, dtype=np.float32)[order]
        self._unity = bool(np.all(self._gain == 1.0))
        # Whole-number gains (mix-minus subtracts a receiver's own voice with
        # -1) stay in integer arithmetic: no float round trip per sample.
        whole = bool(np.all(self._gain == np.round(self._gain)))
        self._int_gain = self._gain.astype(np.int32) if whole and not self._unity else None
        self._starts = np.flatnonzero(np.r_[True, d_sorted[1:] != d_sorted[:-1]]) if d_sorted.size else d_sorted
        self._sinks = d_sorted[self._starts] if d_sorted.size else d_sorted

    @property
    def num_edges(self) -> int:
        """How many flows there are."""
        return int(self._src.size)

    def apply(self, frames: FrameInput) -> Pcm:
        """Sink frames (num_sinks x samples ``int16``) for source ``frames``."""
        arr = stack_frames(frames)
        return _saturate(self.apply_raw(arr))

    def apply_raw(self, arr: npt.NDArray[np.integer]) -> npt.NDArray[np.int32]:
        """Like :meth:`apply` on a 2D integer array (``int16`` frames or
        ``int32`` partial sums), without saturating: for chaining stages
        (conference sums, then each receiver's mix)."""
        if arr.ndim != 2 or arr.shape[0] != self.num_sources:
            raise ValueError(f"expected {self.num_sources} source frames, got {arr.shape[0] if arr.ndim == 2 else arr.shape}")
        out = np.zeros((self.num_sinks, arr.shape[1]), dtype=np.int32)
        if self._src.size:
            rows = arr[self._src].astype(np.int32, copy=False)
            if self._unity:
                contrib = rows
            elif self._int_gain is not None:
                contrib = rows * self._int_gain[:, None]
            else:
                contrib = np.rint(rows * self._gain[:, None]).astype(np.int32)
            out[self._sinks] = np.add.reduceat(contrib, self._starts, axis=0, dtype=np.int32)
        return out


@dataclass
class _Member:
    mute: bool = False
    deaf: bool = False
    volume: float = 1.0


@dataclass
class ConferenceMixer:
    """A conference's members by id, with mute, deaf and volume, mixed by :func:`mix_minus`.

    :param samples: frame length (160 = 20 ms at 8 kHz); absent frames are silence.
    """

    samples: int = 160
    _members: dict[Hashable, _Member] = field(default_factory=dict)

    def add(self, member: Hashable, *, mute: bool = False, deaf: bool = False, volume: float = 1.0) -> None:
        """Add (or reset) a member."""
        self._members[member] = _Member(mute, deaf, volume)

    def remove(self, member: Hashable) -> None:
        """Remove a member (no error if absent)."""
        self._members.pop(member, None)

    @property
    def members(self) -> list[Hashable]:
        """Member ids in joining order."""
        return list(self._members)

    def set_mute(self, member: Hashable, mute: bool) -> None:
        """Stop (or resume) taking audio from ``member``."""
        self._members[member].mute = mute

    def set_deaf(self, member: Hashable, deaf: bool) -> None:
        """Stop (or resume) sending audio to ``member``."""
        self._members[member].deaf = deaf

    def set_volume(self, member: Hashable, volume: float) -> None:
        """Linear gain on what ``member`` contributes."""
        self._members[member].volume = volume

    def mix(self, frames: dict[Hashable, Pcm]) -> dict[Hashable, Pcm]:
        """Each member's mix-minus for this tick; frames of non-members are ignored."""
        ids = list(self._members)
        if not ids:
            return {}
        arr = np.zeros((len(ids), self.samples), dtype=np.int16)
        for i, m in enumerate(ids):
            f = frames.get(m)
            if f is not None:
                arr[i, : min(f.size, self.samples)] = f[: self.samples]
        members = [self._members[m] for m in ids]
        out = mix_minus(
            arr,
            mute=[m.mute for m in members],
            deaf=[m.deaf for m in members],
            volume=[m.volume for m in members],
        )
        return dict(zip(ids, out))


def benchmark_mix(legs: int = 1000, conference_size: int = 10, ticks: int = 200, samples: int = 160) -> float:
    """Milliseconds per 20 ms tick to µ-law decode, mix-minus (grouped into
    conferences of ``conference_size``) and µ-law encode ``legs`` legs.

    For ``bench/``; it reads the clock, so it is not for the media path.
    """
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(legs, samples), dtype=np.uint8)
    groups = np.arange(legs) // max(1, conference_size)

    def tick() -> npt.NDArray[np.uint8]:
        pcm = ULAW_DECODE[codes]
        out = mix_minus(pcm, groups=groups)
        return ULAW_ENCODE[out.view(np.uint16)]

    tick()
    start = time.perf_counter()
    for _ in range(ticks):
        tick()
    return (time.perf_counter() - start) / ticks * 1000
