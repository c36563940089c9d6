"""Codec interfaces: :class:`Encoder` and :class:`Decoder` (aiortc ``codecs/base.py`` style).

Internal audio is 16-bit signed mono PCM held in one-dimensional NumPy
``int16`` arrays at the codec's clock rate (160 samples = 20 ms at 8 kHz).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from engine.media.pcm import Pcm

"""One frame of 16-bit mono PCM."""


class CodecError(ValueError):
    """Raised for an unknown codec or a payload the codec cannot handle."""


class Encoder(ABC):
    """Turns PCM frames into RTP payloads."""

    #: RTP clock rate in Hz.
    clock_rate: int = 8000

    @abstractmethod
    def encode(self, pcm: Pcm) -> bytes:
        """Encode one frame.

        :param pcm: ``int16`` samples at :attr:`clock_rate`.
        :return: the RTP payload.
        """


class Decoder(ABC):
    """Turns RTP payloads into PCM frames and conceals lost ones."""

    #: RTP clock rate in Hz.
    clock_rate: int = 8000

    @abstractmethod
    def decode(self, payload: bytes) -> Pcm:
        """Decode one RTP payload into ``int16`` samples."""

    def conceal(self, num_samples: int) -> Pcm:
        """Return a frame to play in place of a lost packet.

        The default is silence; codecs with packet-loss concealment override it.

        :param num_samples: length of the missing frame in samples.
        """
        return np.zeros(num_samples, dtype=np.int16)
