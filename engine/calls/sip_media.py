"""The SDP side of a call's media: offer/answer over a reserved RTP port.

:class:`SipLegMedia` is the :class:`~engine.calls.call.MediaHandler` the engine
gives each SIP call: it reserves an RTP/RTCP port pair, makes offers and
answers with PCMU, PCMA and telephone-event (RFC 3264), and keeps what was
negotiated in :attr:`negotiated`. Once something is negotiated and media is
wanted, it runs a :class:`~engine.calls.rtp_stream.MediaSession` on the
reserved RTP socket with the engine's media clock, and beside it RTCP
(:class:`~engine.media.rtcp_session.RtcpSession` on the pair's RTCP socket,
driven by :class:`~engine.transport.rtcp_transport.RtcpTransport`).

Media is wanted when a tone listener is set
(:meth:`SipLegMedia.set_tone_listener`), something is played or digits
are sent, or, once the call is connected, when the engine has an RTP
inactivity timeout (:meth:`SipLegMedia.watch_rtp`; ``rtp_timeout``,
60 s by default). Until then a call costs no more than SDP.

The timeout needs to see arrivals, so with it every connected call reads
its RTP socket. Measured on the 2-core machine (stock asyncio): reading,
parsing, latching and counting a packet costs about 2.7 µs beyond the
event loop's wake-up (0.9 µs for ``recvfrom`` alone, 2.4 µs with parse and
latch), some 0.14 s of CPU per second for 1,000 legs at 50 packets/s; and
starting the session adds about 0.09 ms to a call (answer, start, close:
0.16 ms against 0.07 ms without; mostly the two epoll registrations and
the session objects). ``rtp_timeout=0`` turns all of it off, and media is
then made only on demand. The timeout is checked on the RTCP timer (one
``loop.call_at`` per call), never per packet, and it is suspended while
the peer holds the call or the stream is not received
(:meth:`SipLegMedia._configure`).

SRTP with SDES keys (RFC 3711, RFC 4568) follows the leg's policy
(``srtp``: ``mandatory``, ``optional`` or ``off``; see
:mod:`engine.sip.offer_answer`): offers are ``RTP/SAVP`` unless it is
``off``, and answers take what the policy allows. Keys travel in the SDP,
so they may only be sent or accepted over TLS signalling
(``secure_signalling``): an SDES offer that came over plain UDP or TCP is
refused with 488 and logged (``security event=sdes_over_plain``), and we
do not offer keys over it either. Our key for a suite is made once per leg
and kept across re-INVITEs, so a re-offer does not rekey our stream.

:class:`DtmfPlayout` sends outgoing RFC 4733 digits
(:class:`~engine.media.dtmf_sender.DtmfSender`) on the session's ticks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Callable

from engine import entropy
from engine.security_log import security_event
from engine.sip.errors import LocalProtocolError, RemoteProtocolError
from engine.sip.offer_answer import (
    PCMA,
    PCMU,
    SRTP_POLICIES,
    Codec,
    NegotiatedMedia,
    SrtpPolicy,
    create_answer,
    create_offer,
    new_srtp_key,
    process_answer,
)
from engine.sip.sdp import SRTP_SUITES, CryptoAttribute, SessionDescription, read_sdp
from engine.media.dtmf_sender import DtmfSender
from engine.media.players import FrameSource
from engine.media.rtp import RtpSourcePolicy
from engine.media.rtcp_session import MIN_INTERVAL, MediaStats, MediaTimedOut, RtcpSession
from engine.media.tts import TtsCache
from engine.transport.audio_fetch import AudioLoader
from engine.calls.rtp_stream import MediaSession, PlaybackDone, ToneListener
from engine.media.clock import MediaClock
from engine.transport.rtcp_transport import RtcpTransport
from engine.transport.rtp_socket import RtpPortAllocator, RtpPortPair

__all__ = ["SipLegMedia", "DtmfPlayout", "DEFAULT_CODECS"]

logger = logging.getLogger(__name__)

DEFAULT_CODECS: tuple[Codec, ...] = (PCMU, PCMA)

#: ``done(completed)``: the digits were all sent (``True``) or not.
DigitsDone = Callable[[bool], None]


class DtmfPlayout:
    """Sends a :class:`DtmfSender`'s packets through a media session.

    It is the session's :attr:`~engine.calls.rtp_stream.MediaSession.dtmf`
    while it runs: each tick it takes the frame (the player waits) and sends
    the frame's packets, unless the session may not send now (hold), when
    they are dropped and time still passes. ``done`` is called once: at the
    last end packet, or with ``False`` from :meth:`stop` or :meth:`abort`.
    """

    def __init__(self, session: MediaSession, sender: DtmfSender, done: DigitsDone | None = None) -> None:
        self.session = session
        self.sender = sender
        self._done = done
        self._previous: DtmfPlayout | None = None

    def start(self) -> None:
        """Take over the session's digits: ones still being sent are stopped,
        and their open event's end packets go out before ours start."""
        previous = self.session.dtmf
        if isinstance(previous, DtmfPlayout):
            previous.stop()
            if not previous.sender.finished:
                self._previous = previous
        self.session.dtmf = self
        self.session.clock.add(self.session)
        self.session.want_to_send()  # quiet under silence suppression: send again

    def tick(self, now: float) -> bool:
        session = self.session
        previous = self._previous
        if previous is not None:
            if previous.tick(now):
                return True
            self._previous = None
        packets = self.sender.tick(session.sender)
        if packets is None:
            self._detach()
            return False
        if packets and session.may_send:
            for packet in packets:
                session.send(packet.serialize())
        if self.sender.finished:
            self._detach()
            self._report(not self.sender.stopped)
        return True

    def stop(self) -> None:
        """Stop after ending the event in progress (``done(False)`` now)."""
        self.sender.stop()
        if self.sender.finished:
            self._detach()
        self._report(False)

    def abort(self) -> None:
        """Stop at once, sending nothing more (the call is ending)."""
        self._detach()
        self._report(False)

    def _detach(self) -> None:
        session = self.session
        if session.dtmf is self:
            session.dtmf = None
            # Audio that follows starts a new talkspurt: its timestamp jumped.
            session._talkspurt = False

    def _report(self, completed: bool) -> None:
        done, self._done = self._done, None
        if done is not None:
            try:
                done(completed)
            except Exception:
                logger.exception("digits callback failed")


class SipLegMedia:
    """Offer/answer for one call leg on one reserved port pair.

    :param rtp_timeout: seconds without RTP or RTCP after which
        :meth:`watch_rtp`'s callback runs (0: never; see the module notes).
    :param rtp_policy: which RTP sources are latched and how long media goes
        to an unconfirmed SDP address (:class:`~engine.media.rtp.RtpSourcePolicy`;
        the defaults when ``None``). RTCP reports follow the same gate.
    :param call_id: the call's id, for the security log.
    :param srtp: the leg's SRTP policy (see the module notes).
    :param secure_signalling: whether the SDP travels over TLS (or plain
        signalling is allowed to carry keys: ``--srtp-allow-plain-signalling``).
    :param source: the peer's address, for the security log.
    :param comfort_noise: offer RFC 3389 CN, and accept it when offered
        (the engine's silence suppression, :mod:`engine.media.dtx`).
    """

    def __init__(self, ports: RtpPortAllocator, address: str, codecs: tuple[Codec, ...] = DEFAULT_CODECS,
                 clock: MediaClock | None = None, tts: TtsCache | None = None,
                 audio: AudioLoader | None = None, rtp_timeout: float = 0.0,
                 rtp_policy: RtpSourcePolicy | None = None, call_id: str | None = None,
                 srtp: str = "off", secure_signalling: bool = False,
                 source: str | None = None, comfort_noise: bool = False) -> None:
        if srtp not in SRTP_POLICIES:
            raise ValueError(f"srtp must be one of {', '.join(SRTP_POLICIES)}, not {srtp!r}")
        self.ports = ports
        self.address = address
        self.codecs = codecs
        self.pair: RtpPortPair | None = None
        self.session_id = entropy.randbelow(2**31)
        self.version = 0
        self.local_offer: SessionDescription | None = None
        #: The SDP we sent last (offer or answer), as built: the INVITE
        #: session records it without parsing our own body back.
        self.local_sdp: SessionDescription | None = None
        self.negotiated: NegotiatedMedia | None = None
        #: The peer's last SDP as parsed (:func:`~engine.sip.sdp.read_sdp`:
        #: shared with other readers of the same body, so read only).
        self.remote: SessionDescription | None = None
        self.clock = clock
        self.session: MediaSession | None = None
        self.rtcp: RtcpTransport | None = None
        self.dtmf: DtmfPlayout | None = None
        self.rtp_timeout = rtp_timeout
        self.rtp_policy = rtp_policy
        self.call_id = call_id
        self.srtp: SrtpPolicy = srtp  # narrowed by the check above
        self.secure_signalling = secure_signalling
        self.source = source
        self.comfort_noise = comfort_noise
        self._srtp_keys: dict[str, bytes] = {}
        #: RTCP's report interval (RFC 3550 section 6.2's 5 s; tests shorten it).
        self.rtcp_interval = MIN_INTERVAL
        self._tone_listener: ToneListener | None = None
        self._on_rtp_timeout: Callable[[MediaTimedOut], None] | None = None
        self._final_stats: MediaStats | None = None
        #: Speech for :meth:`engine.calls.call.Call.say` (``None``: the default cache).
        self.tts = tts
        #: Files and URLs for :meth:`engine.calls.call.Call.start_playback` (``None``: the default loader).
        self.audio = audio

    def _port(self) -> int:
        if self.pair is None:
            self.pair = self.ports.allocate()
        return self.pair.rtp_port

    def _srtp_key(self, suite: str) -> bytes:
        """Our key for ``suite``: made once per leg (see the module notes)."""
        key = self._srtp_keys.get(suite)
        if key is None:
            key = self._srtp_keys[suite] = new_srtp_key(suite)
        return key

    def create_offer(self) -> bytes:
        """Our offer: ``RTP/SAVP`` with a key per suite when the policy asks
        and the signalling is secure; ``optional`` over plain signalling
        offers plain RTP.

        :raises LocalProtocolError: SRTP is mandatory but the signalling is not secure."""
        crypto: list[CryptoAttribute] = []
        if self.srtp == "mandatory" and not self.secure_signalling:
            raise LocalProtocolError("SRTP keys (SDES) may only be offered over TLS signalling")
        if self.srtp != "off" and self.secure_signalling:
            crypto = [CryptoAttribute(tag, suite, self._srtp_key(suite)) for tag, suite in enumerate(SRTP_SUITES, 1)]
        self.version += 1
        self.local_offer = self.local_sdp = create_offer(
            self.address, self._port(), self.codecs, session_id=self.session_id,
            session_version=self.version, crypto=crypto, comfort_noise=self.comfort_noise,
        )
        return self.local_offer.to_bytes()

    def create_answer(self, offer: bytes) -> bytes:
        """:raises RemoteProtocolError: 400 for malformed SDP, 488 when
        nothing is acceptable or SDES keys came over plain signalling."""
        remote = read_sdp(offer)  # only read (create_answer copies nothing of it)
        if self.srtp != "off" and not self.secure_signalling and any(
            m.port != 0 and m.proto.startswith("RTP/SAVP") and m.attribute("crypto") is not None
            for m in remote.media
        ):
            # RFC 4568 section 8.3: SDES keys need a secure signalling path.
            security_event("sdes_over_plain", self.source, call=self.call_id)
            raise RemoteProtocolError("SDES keys over plain signalling (use TLS)", status=488)
        self.version += 1
        answer, negotiated = create_answer(
            remote, self.address, self._port(), self.codecs, session_id=self.session_id,
            session_version=self.version, srtp=self.srtp, srtp_key=self._srtp_key,
            comfort_noise=self.comfort_noise,
        )
        self.remote = remote
        self.negotiated = negotiated
        self.local_sdp = answer
        self._media_changed()
        return answer.to_bytes()

    def set_answer(self, answer: bytes) -> None:
        if self.local_offer is None:
            return
        remote = read_sdp(answer)  # only read by process_answer
        self.negotiated = process_answer(self.local_offer, remote)
        self.remote = remote
        self._media_changed()

    @property
    def telephone_event(self) -> bool:
        """Whether RFC 4733 telephone-event was negotiated."""
        return self.negotiated is not None and self.negotiated.telephone_event_pt is not None

    def _media_changed(self) -> None:
        """Start or reconfigure the media session for :attr:`negotiated`."""
        if self.negotiated is None or self.pair is None or self.clock is None:
            return
        if self.session is None:
            if self._tone_listener is None and self._on_rtp_timeout is None:
                return  # made when first needed: a call without media use costs nothing
            self._ensure_session()
            return
        self._configure(self.session)

    def _ensure_session(self) -> MediaSession:
        """The media session with its RTCP, made and started if need be
        (only once something is negotiated: the callers check)."""
        if self.session is not None:
            return self.session
        assert self.negotiated is not None and self.pair is not None and self.clock is not None
        session = MediaSession(self.pair.rtp, self.clock, policy=self.rtp_policy, call_id=self.call_id)
        now = asyncio.get_running_loop().time()
        rtcp = RtcpSession(session.sender, interval=self.rtcp_interval, wall_offset=time.time() - now)
        session.rtcp = rtcp
        self.session = session
        self.rtcp = RtcpTransport(self.pair.rtcp, rtcp, self._rtcp_destination, self._rtp_timed_out,
                                  may_send=self._rtcp_may_send, on_source=self._on_rtcp_source,
                                  protector=lambda: session.srtp)
        self._configure(session, now)
        if self._on_rtp_timeout is not None:
            # before the start, whose one timer then includes the deadline
            rtcp.set_inactivity_timeout(self.rtp_timeout, now)
        self.rtcp.start()
        return session

    def _configure(self, session: MediaSession, now: float | None = None) -> None:
        """Apply :attr:`negotiated` to the session and its RTCP at ``now``
        (the loop's time when ``None``)."""
        neg = self.negotiated
        assert neg is not None
        if now is None:
            now = asyncio.get_running_loop().time()
        session.configure(neg, now)
        session.set_tone_listener(self._tone_listener)
        rtcp = session.rtcp
        if rtcp is not None:
            rtcp.clock_rate = neg.codec.clock_rate
            rtcp.event_pt = neg.telephone_event_pt
            # Hold (RFC 3264 section 8.4) or a stream we do not receive:
            # no RTP is due, so its absence is no reason to hang up.
            rtcp.set_media_expected(neg.recv and not neg.on_hold, now)
        if self.rtcp is not None:
            self.rtcp.update()

    def _rtcp_destination(self) -> Any:
        """The peer's RTCP address: the SDP's (``a=rtcp`` or RTP port + 1,
        RFC 3605 and RFC 3550 section 11) while RTP comes from the SDP
        address; once RTP latched elsewhere (NAT), that address's port + 1."""
        neg, session = self.negotiated, self.session
        if neg is None or session is None:
            return None
        rtp = session.remote_addr
        if rtp is None or rtp[0] in ("0.0.0.0", "::"):  # RFC 2543 hold: nowhere to send
            return None
        if rtp[0] == neg.remote_address and rtp[1] == neg.remote_port:
            port = neg.remote_rtcp_port
        else:
            port = rtp[1] + 1
        if not 0 < port <= 65535:  # RTP on port 65535 has no port + 1 (found by the fuzz run)
            return None
        return (rtp[0], port, *rtp[2:])

    def _rtcp_may_send(self) -> bool:
        """RTCP reports go only where RTP may go (the send gate of
        :class:`~engine.media.rtp.RtpReceiverLatch`)."""
        session = self.session
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # closed outside the loop: no BYE
            return False
        return session is not None and session.destination(now) is not None

    def _on_rtcp_source(self, addr: Any) -> None:
        """RTCP came from ``addr``: from the SDP's own RTCP address, that
        confirms the SDP address for sending (a phone that only receives
        sends no RTP, but its RTCP)."""
        neg, session = self.negotiated, self.session
        if (neg is None or session is None or session.latch is None
                or addr[0] != neg.remote_address or addr[1] != neg.remote_rtcp_port):
            return
        if session.latch.signalled == (neg.remote_address, neg.remote_port):
            session.latch.confirm()

    def _rtp_timed_out(self, event: MediaTimedOut) -> None:
        if self._on_rtp_timeout is not None:
            self._on_rtp_timeout(event)

    def watch_rtp(self, on_timeout: Callable[[MediaTimedOut], None]) -> None:
        """The call is connected: run media (with RTCP) and call
        ``on_timeout`` once no RTP nor RTCP came for ``rtp_timeout`` seconds
        while media was expected. Nothing happens with ``rtp_timeout`` 0."""
        if self.rtp_timeout <= 0:
            return
        self._on_rtp_timeout = on_timeout
        if self.session is None:
            self._media_changed()
            return
        if self.session.rtcp is not None and self.rtcp is not None:
            self.session.rtcp.set_inactivity_timeout(self.rtp_timeout, asyncio.get_running_loop().time())
            self.rtcp.update()

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
        return self._ensure_session()

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

    def start_digits(self, digits: str, duration: float, gap: float, done: DigitsDone | None = None) -> bool:
        """Send ``digits`` as RFC 4733 events (replacing digits being sent);
        ``False`` (and nothing else) unless telephone-event was negotiated.

        :raises engine.media.dtmf_sender.DtmfSenderError: bad digits or timing.
        """
        neg = self.negotiated
        if neg is None or neg.telephone_event_pt is None or self.pair is None or self.clock is None:
            return False
        sender = DtmfSender(digits, payload_type=neg.telephone_event_pt, clock_rate=neg.codec.clock_rate,
                            duration=duration, gap=gap)
        self.dtmf = DtmfPlayout(self._ensure_session(), sender, done)
        self.dtmf.start()
        return True

    def stop_digits(self) -> None:
        """Stop the digits being sent (the event in progress is ended properly)."""
        if self.dtmf is not None:
            self.dtmf.stop()
            self.dtmf = None

    def srtp_stats(self) -> dict[str, int]:
        """SRTP packets dropped on this leg (:attr:`engine.media.srtp.SrtpContext.stats`;
        empty without SRTP)."""
        srtp = self.session.srtp if self.session is not None else None
        return dict(srtp.stats) if srtp is not None else {}

    def media_stats(self) -> MediaStats:
        """Statistics of the media session (zeros if none ran), with its
        SRTP drops (:meth:`srtp_stats`); kept after :meth:`close`."""
        if self.session is not None and self.session.rtcp is not None:
            stats = self.session.rtcp.stats()
            srtp = self.srtp_stats()
            return dataclasses.replace(stats, **srtp) if srtp else stats
        return self._final_stats or MediaStats()

    def close(self) -> None:
        # the timeout callback is the call's bound method: drop it so the
        # call and this handler are freed by reference counting, not by a
        # full garbage collection (which `serve` runs rarely)
        self._on_rtp_timeout = None
        if self.dtmf is not None:
            self.dtmf.abort()
            self.dtmf = None
        if self.session is not None:
            if self.rtcp is not None:
                self.rtcp.close()  # RTCP BYE, before the socket goes
                self.rtcp = None
            if self.session.rtcp is not None:
                self._final_stats = self.media_stats()
            self.session.close()
            self.session = None
        if self.pair is not None:
            self.ports.release(self.pair)
            self.pair = None
