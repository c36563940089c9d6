"""Audio ports: a leg's audio as the bridge (:mod:`engine.media.bridge`)
drives it, one 20 ms frame pulled and one pushed per tick of the media clock.

Ports are passive (pjmedia ``port.h``): they never read a clock of their
own; whoever drives them calls :meth:`AudioPort.pull` and
:meth:`AudioPort.push` once a tick. A SIP leg's port is its
:class:`~engine.calls.rtp_stream.MediaSession`, a browser leg's its
:class:`~engine.calls.webrtc.LegAudio`; the media layer knows them only
through these protocols.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from engine.media.pcm import Pcm

__all__ = ["AudioPort", "BatchAudioPort", "PortOwner"]


class AudioPort(Protocol):
    """A leg's audio as the bridge drives it."""

    def graph_attach(self) -> None:
        """The bridge drives this port from now on (its own player, if any,
        is mixed in by :meth:`push` instead of ticking by itself)."""

    def graph_detach(self) -> None:
        """The bridge lets go of this port."""

    def pull(self, now: float) -> Pcm | None:
        """The next frame received (``None``: none, silence)."""

    def push(self, frame: Pcm | None) -> bool:
        """Send ``frame`` (``None``: only the port's own player, if any);
        ``False`` when nothing was sent."""

    #: What the last :meth:`push` sent, the leg's own player included.
    last_sent: Pcm | None


@runtime_checkable
class BatchAudioPort(AudioPort, Protocol):
    """An audio port whose G.711 frames the bridge decodes and encodes for
    all such ports at once, one table lookup per tick instead of one per
    port (:class:`~engine.calls.rtp_stream.MediaSession`)."""

    #: The decode table for payloads :meth:`pull_payload` returns (``None``: never bytes).
    decode_table: npt.NDArray[np.int16] | None

    @property
    def encode_table(self) -> npt.NDArray[np.uint8] | None:
        """The table :meth:`push_payload` payloads are encoded with
        (``None``: the port takes PCM through :meth:`push`)."""

    def pull_payload(self, now: float) -> bytes | Pcm | None:
        """The next frame received, still encoded when it can be (bytes
        for :attr:`decode_table`), else PCM or ``None``."""

    def push_payload(self, payload: bytes) -> None:
        """Send one frame already encoded with :attr:`encode_table`."""


class PortOwner(Protocol):
    """What the bridge mixes: a leg whose port appears once its media is up
    (a call; the bridge keys its attached ports by it)."""

    def media_port(self) -> AudioPort | None:
        """This leg's port (``None``: none yet, or no media of its own)."""
