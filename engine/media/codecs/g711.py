"""ITU-T G.711 µ-law (PCMU) and A-law (PCMA), table driven.

The 256-entry decode tables and the 65536-entry encode tables (indexed by
the ``int16`` sample reinterpreted as ``uint16``) are built once at import
with NumPy, following the segment arithmetic of ITU-T G.711 (the same
results as the classic Sun reference ``g711.c``). Encoding and decoding a
frame is then one table lookup over the whole array.

Packet-loss concealment here is a *simple* PLC, not G.711 Appendix I: a lost
frame is replaced by the last good frame, attenuated, fading linearly to
silence over :data:`PLC_FADE_FRAMES` frames.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

from engine.media.codecs.base import Decoder, Encoder
from engine.media.pcm import Pcm

__all__ = [
    "ALAW_DECODE",
    "ALAW_ENCODE",
    "PLC_FADE_FRAMES",
    "ULAW_DECODE",
    "ULAW_ENCODE",
    "G711Decoder",
    "G711Encoder",
    "PcmaDecoder",
    "PcmaEncoder",
    "PcmuDecoder",
    "PcmuEncoder",
    "SimplePlc",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]

_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _all_int16() -> npt.NDArray[np.int32]:
    # index i of an encode table is the int16 whose bit pattern is uint16 i
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    pcm = _all_int16() >> 2  # 14-bit
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + (0x84 >> 2)
    seg = np.searchsorted(_SEG_UEND, mag, side="left").astype(np.int32)
    code = (seg << 4) | ((mag >> (seg + 1)) & 0x0F)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    pcm = _all_int16() >> 3  # 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_SEG_AEND, mag, side="left").astype(np.int32)
    shift = np.where(seg < 2, 1, seg)
    code = (seg << 4) | ((mag >> shift) & 0x0F)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


#: µ-law code -> linear sample.
ULAW_DECODE: npt.NDArray[np.int16] = _build_ulaw_decode()
#: linear sample (as ``uint16`` bit pattern) -> µ-law code.
ULAW_ENCODE: npt.NDArray[np.uint8] = _build_ulaw_encode()
#: A-law code -> linear sample.
ALAW_DECODE: npt.NDArray[np.int16] = _build_alaw_decode()
#: linear sample (as ``uint16`` bit pattern) -> A-law code.
ALAW_ENCODE: npt.NDArray[np.uint8] = _build_alaw_encode()
for _table in (ULAW_DECODE, ULAW_ENCODE, ALAW_DECODE, ALAW_ENCODE):
    _table.flags.writeable = False


def ulaw_encode(pcm: Pcm) -> npt.NDArray[np.uint8]:
    """µ-law codes for ``int16`` samples (any shape)."""
    return ULAW_ENCODE[np.asarray(pcm, dtype=np.int16).view(np.uint16)]


def ulaw_decode(codes: npt.NDArray[np.uint8]) -> Pcm:
    """``int16`` samples for µ-law codes (any shape)."""
    return ULAW_DECODE[codes]


def alaw_encode(pcm: Pcm) -> npt.NDArray[np.uint8]:
    """A-law codes for ``int16`` samples (any shape)."""
    return ALAW_ENCODE[np.asarray(pcm, dtype=np.int16).view(np.uint16)]


def alaw_decode(codes: npt.NDArray[np.uint8]) -> Pcm:
    """``int16`` samples for A-law codes (any shape)."""
    return ALAW_DECODE[codes]


#: Number of concealed frames over which :class:`SimplePlc` fades to silence.
PLC_FADE_FRAMES = 5


class SimplePlc:
    """Simple packet-loss concealment (not G.711 Appendix I).

    Each lost frame repeats the last good frame with a gain that falls
    linearly, sample by sample, from 1 to 0 over ``fade_frames`` frames;
    after that, silence. A good frame resets the fade.
    """

    def __init__(self, fade_frames: int = PLC_FADE_FRAMES) -> None:
        if fade_frames < 1:
            raise ValueError("fade_frames must be at least 1")
        self.fade_frames = fade_frames
        self._last: Pcm | None = None
        self._lost = 0

    def good_frame(self, pcm: Pcm) -> None:
        """Remember a correctly received frame."""
        self._last = pcm
        self._lost = 0

    def conceal(self, num_samples: int) -> Pcm:
        """A frame to play for one lost packet."""
        last = self._last
        lost = self._lost
        self._lost += 1
        if last is None or lost >= self.fade_frames or last.size == 0:
            return np.zeros(num_samples, dtype=np.int16)
        src = last if last.size == num_samples else np.resize(last, num_samples)
        out: npt.NDArray[np.float32] = np.multiply(src, _fade(self.fade_frames, num_samples)[lost],
                                                   dtype=np.float32)
        np.rint(out, out=out)
        return out.astype(np.int16)


@lru_cache(maxsize=16)
def _fade(fade_frames: int, num_samples: int) -> npt.NDArray[np.float32]:
    """The gains of :meth:`SimplePlc.conceal`, one row per lost frame (computed
    once per size: a loss under load must not cost more than a good frame)."""
    total = fade_frames * num_samples
    gain: npt.NDArray[np.float32] = (1.0 - (np.arange(0, total, dtype=np.float32) + 1) / total).astype(np.float32)
    gain = gain.reshape(fade_frames, num_samples)
    gain.flags.writeable = False
    return gain


class G711Decoder(Decoder):
    """A table decoder: :attr:`table` maps each code to its sample, so a
    caller may decode many payloads in one lookup (the media graph does, for
    all its legs at once) and tell the decoder with :meth:`remember`."""

    #: code (0..255) -> ``int16`` sample.
    table: npt.NDArray[np.int16]

    def __init__(self) -> None:
        self.plc = SimplePlc()
        self._pending: bytes | None = None  # a good payload the PLC has not decoded yet

    def decode(self, payload: bytes) -> Pcm:
        self._pending = None
        pcm = self.table[np.frombuffer(payload, dtype=np.uint8)]
        self.plc.good_frame(pcm)
        return pcm

    def remember(self, payload: bytes) -> None:
        """``payload`` was decoded elsewhere with :attr:`table`: concealment
        repeats it as if :meth:`decode` had run (decoded only if needed)."""
        self._pending = payload

    def conceal(self, num_samples: int) -> Pcm:
        pending = self._pending
        if pending is not None:
            self._pending = None
            self.plc.good_frame(self.table[np.frombuffer(pending, dtype=np.uint8)])
        return self.plc.conceal(num_samples)


class G711Encoder(Encoder):
    """A table encoder: :attr:`table` maps each ``int16`` sample (as its
    ``uint16`` bit pattern) to its code, for encoding many frames at once."""

    #: ``uint16`` bit pattern of a sample -> code.
    table: npt.NDArray[np.uint8]

    def encode(self, pcm: Pcm) -> bytes:
        return self.table[np.asarray(pcm, dtype=np.int16).view(np.uint16)].tobytes()


class PcmuEncoder(G711Encoder):
    """G.711 µ-law encoder (``audio/PCMU``, static payload type 0)."""

    table = ULAW_ENCODE


class PcmuDecoder(G711Decoder):
    """G.711 µ-law decoder with simple PLC."""

    table = ULAW_DECODE


class PcmaEncoder(G711Encoder):
    """G.711 A-law encoder (``audio/PCMA``, static payload type 8)."""

    table = ALAW_ENCODE


class PcmaDecoder(G711Decoder):
    """G.711 A-law decoder with simple PLC."""

    table = ALAW_DECODE
