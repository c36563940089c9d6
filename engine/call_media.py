"""The SDP side of a call's media: offer/answer over a reserved RTP port.

:class:`SdpMediaHandler` is the :class:`~engine.calls.MediaHandler` the engine
gives each SIP call: it reserves an RTP/RTCP port pair, makes offers and
answers with PCMU, PCMA and telephone-event (RFC 3264), and keeps what was
negotiated in :attr:`negotiated`. The media layer attaches RTP to the
reserved sockets and the negotiated parameters.
"""

from __future__ import annotations

import secrets

from .sip.offer_answer import PCMA, PCMU, Codec, NegotiatedMedia, create_answer, create_offer, process_answer
from .sip.sdp import SessionDescription, parse_sdp
from .transport.rtp_socket import RtpPortAllocator, RtpPortPair

__all__ = ["SdpMediaHandler", "DEFAULT_CODECS"]

DEFAULT_CODECS: tuple[Codec, ...] = (PCMU, PCMA)


class SdpMediaHandler:
    """Offer/answer for one call leg on one reserved port pair."""

    def __init__(self, ports: RtpPortAllocator, address: str, codecs: tuple[Codec, ...] = DEFAULT_CODECS) -> None:
        self.ports = ports
        self.address = address
        self.codecs = codecs
        self.pair: RtpPortPair | None = None
        self.session_id = secrets.randbelow(2**31)
        self.version = 0
        self.local_offer: SessionDescription | None = None
        self.negotiated: NegotiatedMedia | None = None
        self.remote: SessionDescription | None = None

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
        return answer.to_bytes()

    def set_answer(self, answer: bytes) -> None:
        if self.local_offer is None:
            return
        remote = parse_sdp(answer)
        self.negotiated = process_answer(self.local_offer, remote)
        self.remote = remote

    def close(self) -> None:
        if self.pair is not None:
            self.ports.release(self.pair)
            self.pair = None
