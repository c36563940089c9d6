"""The SDP side of a call's media: offer/answer over a reserved RTP port.

:class:`SdpMediaHandler` is the :class:`~engine.calls.MediaHandler` the engine
gives each SIP call: it reserves an RTP/RTCP port pair, makes offers and
answers with PCMU, PCMA and telephone-event (RFC 3264), and keeps what was
negotiated in :attr:`negotiated`. Once something is negotiated and a tone
listener is set (:meth:`SdpMediaHandler.set_tone_listener`), it runs a
:class:`~engine.media_session.MediaSession` on the reserved RTP socket with
the engine's media clock, which reports DTMF to that listener. The session
is made only then, so a call whose scenario uses no media costs no more
than SDP.
"""

from __future__ import annotations

import secrets

from .sip.offer_answer import PCMA, PCMU, Codec, NegotiatedMedia, create_answer, create_offer, process_answer
from .sip.sdp import SessionDescription, parse_sdp
from .media.players import FrameSource
from .media.tts import TtsCache
from .transport.audio_fetch import AudioLoader
from .media_session import MediaSession, PlaybackDone, ToneListener
from .transport.media_clock import MediaClock
from .transport.rtp_socket import RtpPortAllocator, RtpPortPair

__all__ = ["SdpMediaHandler", "DEFAULT_CODECS"]

DEFAULT_CODECS: tuple[Codec, ...] = (PCMU, PCMA)


class SdpMediaHandler:
    """Offer/answer for one call leg on one reserved port pair."""

    def __init__(self, ports: RtpPortAllocator, address: str, codecs: tuple[Codec, ...] = DEFAULT_CODECS,
                 clock: MediaClock | None = None, tts: TtsCache | None = None,
                 audio: AudioLoader | None = None) -> None:
        self.ports = ports
        self.address = address
        self.codecs = codecs
        self.pair: RtpPortPair | None = None
        self.session_id = secrets.randbelow(2**31)
        self.version = 0
        self.local_offer: SessionDescription | None = None
        self.negotiated: NegotiatedMedia | None = None
        self.remote: SessionDescription | None = None
        self.clock = clock
        self.session: MediaSession | None = None
        self._tone_listener: ToneListener | None = None
        #: Speech for :meth:`engine.calls.Call.say` (``None``: the default cache).
        self.tts = tts
        #: Files and URLs for :meth:`engine.calls.Call.start_playback` (``None``: the default loader).
        self.audio = audio

    def _port(self) -> int:
        if self.pair is None:
            self.pair = self.ports.allocate()
        return self.pair.rtp_port

    def create_offer(self) -> bytes:
        self.version += 1
        self.local_offer = create_offer(
            self.address, self._port(), self.codecs, session_id=self.session_id,
            session_version=self.version,
        )
        return self.local_offer.to_bytes()

    def create_answer(self, offer: bytes) -> bytes:
        remote = parse_sdp(offer)
        self.version += 1
        answer, negotiated = create_answer(
            remote, self.address, self._port(), self.codecs, session_id=self.session_id,
            session_version=self.version,
        )
        self.remote = remote
        self.negotiated = negotiated
        self._media_changed()
        return answer.to_bytes()

    def set_answer(self, answer: bytes) -> None:
        if self.local_offer is None:
            return
        remote = parse_sdp(answer)
        self.negotiated = process_answer(self.local_offer, remote)
        self.remote = remote
        self._media_changed()

    def _media_changed(self) -> None:
        """Start or reconfigure the media session for :attr:`negotiated`."""
        if self.negotiated is None or self.pair is None or self.clock is None:
            return
        if self.session is None:
            if self._tone_listener is None:
                return  # made when first needed: a call without media use costs nothing
            self.session = MediaSession(self.pair.rtp, self.clock)
        self.session.configure(self.negotiated)
        self.session.set_tone_listener(self._tone_listener)

    def set_tone_listener(self, listener: ToneListener | None) -> None:
        """Report RTP DTMF (RFC 4733, in-band) as ``listener(digit, mode)``;
        ``None`` stops. Kept until media is negotiated if it is not yet."""
        self._tone_listener = listener
        if self.session is not None:
            self.session.set_tone_listener(listener)
        else:
            self._media_changed()

    def audio_port(self) -> MediaSession | None:
        """The call's media session for the media graph, made now if media
        is negotiated (``None`` before)."""
        if self.negotiated is None or self.pair is None or self.clock is None:
            return None
        if self.session is None:
            self.session = MediaSession(self.pair.rtp, self.clock)
            self.session.configure(self.negotiated)
            self.session.set_tone_listener(self._tone_listener)
        return self.session

    def start_playback(self, player: FrameSource, done: PlaybackDone | None = None) -> bool:
        """Play ``player`` into the call; ``False`` (and nothing else) when
        no media is negotiated yet."""
        session = self.audio_port()
        if session is None:
            return False
        session.start_playback(player, done)
        return True

    def stop_playback(self) -> None:
        if self.session is not None:
            self.session.stop_playback()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.pair is not None:
            self.ports.release(self.pair)
            self.pair = None
