"""One call leg's media: RTP in, DTMF out (RFC 4733 and in-band), audio out.

:class:`MediaSession` joins the sans-IO blocks of :mod:`engine.media` to a
call's RTP socket (:class:`~engine.transport.rtp_transport.RtpTransport`) and
the engine's single :class:`~engine.media.clock.MediaClock`:

- every datagram is parsed and passed through an
  :class:`~engine.media.rtp.RtpReceiverLatch` that knows the negotiated
  payload types (audio codec and telephone-event), which gives symmetric RTP
  (:attr:`MediaSession.remote_addr` is where to send) without RTP Bleed:
  the SDP address is accepted at once, another source only after a
  probation (:class:`~engine.media.rtp.RtpSourcePolicy`); what it refuses
  never reaches decoding, DTMF or the RTCP statistics, and the first
  source it refuses outright is logged once per call
  (``security event=rtp_source_refused``);
- nothing is sent to an address that nothing confirmed (no packet from it
  and no source latched) once the policy's grace after media start has
  passed: the frames are dropped and counted
  (:attr:`~engine.media.rtp.RtpReceiverLatch.unsent`), so a ``c=`` line
  naming a victim gets at most the grace's worth of packets;
- telephone-event packets go to a
  :class:`~engine.media.codecs.telephone_event.TelephoneEventReceiver`; its
  timeout (an event whose end packets were all lost) is one ``loop.call_at``
  armed only while an event is open; an event's first packet is reported at
  once as an onset (barge-in), its digit at its end;
- audio packets go to a :class:`~engine.media.jitterbuffer.JitterBuffer`
  only while someone consumes audio (now: in-band DTMF detection); the
  session then joins the media clock, which pulls one frame every 20 ms,
  decodes it (concealing missing frames) and runs the
  :class:`~engine.media.dtmf.DtmfDetector`. A session whose audio stopped
  for :data:`IDLE_AFTER` seconds leaves the clock again.

In-band detection runs only when telephone-event was *not* negotiated: a
phone that can send RFC 4733 does so, and many also leave the tone in the
audio, which would report each digit twice. A phone that offers
telephone-event but still sends tones only in band is not served (rare).

Outgoing audio comes from a player (:mod:`engine.media.players`) given to
:meth:`MediaSession.start_playback`: while one is set the session stays on
the clock, and each tick pulls one frame from it, encodes it with the
negotiated codec and sends it with an :class:`~engine.media.rtp.RtpSender`
(marker bit on the first packet of each talkspurt) to :attr:`remote_addr`.
While the session may not send (the stream is recvonly/inactive or the peer
holds it) frames are still pulled, so playback time passes, but nothing is
sent and the RTP timestamp skips over them.

When the call takes part in media routing (:mod:`engine.calls.conference`), the
media graph drives the session instead (:meth:`graph_attach`): each graph
tick calls :meth:`pull` (the received frame, decoded or concealed, after
in-band detection) and :meth:`push` (the mix for this leg plus its own
player, encoded and sent), and the session no longer ticks itself.

The socket is read only while a tone listener is set, the graph drives the
session (:meth:`set_tone_listener`, :meth:`graph_attach`) or RTCP runs
(:attr:`MediaSession.rtcp`, which needs every arrival for its statistics
and the RTP inactivity timeout; see :mod:`engine.calls.sip_media`):
a call whose scenario wants no media pays nothing for the RTP it receives,
which the kernel drops once its buffer is full. Digits sent just before the
listener is set wait in that buffer and are still reported.

SRTP (RFC 3711, keys from SDES): when the negotiated stream carries keys,
:attr:`MediaSession.srtp` (an :class:`~engine.media.srtp.SrtpContext`)
protects each datagram just before it is sent and unprotects each one just
after it is read, before parsing and latching; a packet failing
authentication or replay is dropped and counted there, so a forged packet
never latches a source.

Outgoing RFC 4733 digits (:attr:`MediaSession.dtmf`) take the player's
place on each tick while they are sent: the player is paused, not pulled,
and the stream's timestamp advances under the events.

Silence suppression (:mod:`engine.media.dtx`, ``--silence-suppression``):
while the graph's mix for this leg is silence the session sends nothing
(:meth:`MediaSession.begin_silence`: one RFC 3389 comfort-noise packet when
CN was negotiated, refreshed now and then), and the first packet after it
has the marker bit and a timestamp advanced by the silence
(:meth:`MediaSession.end_silence`, RFC 3551 section 4.1). A session with
no audio to pull sleeps (:meth:`MediaSession.sleep_until_audio`) until its
next audio packet calls :attr:`MediaSession.audio_waker`. CN packets from
the peer are accepted (they keep the stream latched and alive for the RTP
timeout) and otherwise ignored: they never reach the jitter buffer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from engine.media.codecs import CodecError, Decoder, Encoder, get_decoder, get_encoder
from engine.media.codecs.g711 import G711Decoder, G711Encoder
from engine.media.codecs.telephone_event import ONSET_MODE, DigitStarted, TelephoneEventError, TelephoneEventReceiver
from engine.media.dtmf import DtmfDetector
from engine.media.dtx import SilencePeriod, cn_payload
from engine.media.jitterbuffer import JitterBuffer
from engine.media.players import FrameSource, PlaybackFinished
from engine.media.rtcp_session import RtcpSession
from engine.media.rtp import RtpError, RtpPacket, RtpReceiverLatch, RtpSender, RtpSourcePolicy, ts_diff
from engine.media.srtp import SrtpContext
from engine.security_log import security_event
from engine.sip.offer_answer import NegotiatedMedia
from engine.media.clock import ClockSink, MediaClock
from engine.transport.rtp_transport import RtpTransport
from engine.media.pcm import Pcm

__all__ = ["MediaSession", "ToneListener", "PlaybackDone", "IDLE_AFTER"]

logger = logging.getLogger(__name__)

#: ``listener(digit, mode)`` with mode ``"rfc4733"`` or ``"inband"`` for a
#: digit, or :data:`~engine.media.codecs.telephone_event.ONSET_MODE` when an
#: RFC 4733 event starts (its digit follows at its end; barge-in acts on the start).
ToneListener = Callable[[str, str], None]

#: ``done(completed)``: the player ended (``True``) or was stopped or replaced (``False``).
PlaybackDone = Callable[[bool], None]


#: An RTP header's fields after its first octet (RFC 3550 §5.1): M+PT,
#: sequence number, timestamp, SSRC.
_FIXED_HEADER = struct.Struct("!BHII")


def _ignore(data: bytes, addr: Any) -> None:
    """The handler of a closed session's transport."""


#: Seconds without audio after which a session leaves the media clock.
IDLE_AFTER = 0.5


class MediaSession:
    """RTP reception and DTMF detection for one call leg.

    :param sock: the leg's reserved RTP socket (owned by its port pair).
    :param clock: the engine's media clock.
    :param policy: which RTP sources are accepted and for how long media
        goes to an unconfirmed SDP address (the defaults when ``None``).
    :param call_id: the call's id, for the security log.
    """

    # Slots: a packet and a tick each read a dozen of these per leg; kept in the
    # object, not a separate dict, they cost fewer cache misses with 1,000 legs.
    # The ones a packet or a graph tick reads come first (adjacent cache lines).
    __slots__ = ("latch", "graph_driven", "rtcp", "_listener", "srtp", "event_pt", "audio_pt", "jitter", "detector",
                 "decoder", "_last_audio", "audio_waker", "_g711_decoder", "closed", "_frame_samples",
                 "_g711_pending", "decode_table", "_encode_table", "player", "dtmf", "negotiated", "last_sent",
                 "sender", "_talkspurt", "transport", "_event_timer", "_player_done", "_refusal_logged", "_silence",
                 "call_id", "clock", "encoder", "events", "malformed", "policy", "send_waker", "_skips_seen",
                 "_skips_pulled", "__weakref__")

    def __init__(self, sock: socket.socket, clock: MediaClock, *, policy: RtpSourcePolicy | None = None,
                 call_id: str | None = None) -> None:
        self.transport = RtpTransport(sock, self._on_datagram)
        self.transport.on_stale = self._on_stale
        self.clock = clock
        self.policy = policy or RtpSourcePolicy()
        self.call_id = call_id
        self._refusal_logged = False
        self.negotiated: NegotiatedMedia | None = None
        self.latch: RtpReceiverLatch | None = None
        self.audio_pt: int | None = None
        self.event_pt: int | None = None
        self.decoder: Decoder | None = None
        self.jitter: JitterBuffer | None = None
        self.events: TelephoneEventReceiver | None = None
        self.detector: DtmfDetector | None = None
        self._listener: ToneListener | None = None
        self._event_timer: asyncio.TimerHandle | None = None
        self._last_audio = 0.0
        self._frame_samples = 160
        self.malformed = 0
        self.closed = False
        self.encoder: Encoder | None = None
        self.sender = RtpSender()
        self.player: FrameSource | None = None
        self._player_done: PlaybackDone | None = None
        self._talkspurt = False
        #: The clock's count of skipped ticks when this stream's timestamp
        #: last caught up with it (see :meth:`_after_skip`).
        self._skips_seen = clock.skipped
        #: The same for the playout of what is received (:meth:`_skip_playout`).
        self._skips_pulled = clock.skipped
        #: Driven by the media graph (:mod:`engine.calls.conference`) instead of ticking itself.
        self.graph_driven = False
        #: The last frame :meth:`push` sent (``None``: it sent nothing), for recordings.
        self.last_sent: Pcm | None = None
        #: RTCP statistics and RTP inactivity (set by engine.calls.sip_media); while
        #: set, the socket is read for every call, tone listener or not.
        self.rtcp: RtcpSession | None = None
        #: RFC 4733 digits being sent (engine.calls.sip_media.DtmfPlayout): its
        #: tick replaces the player's while it returns True.
        self.dtmf: ClockSink | None = None
        #: The G.711 decode table when the codec is table-driven (see :meth:`pull_payload`).
        self.decode_table: npt.NDArray[np.int16] | None = None
        self._g711_decoder: G711Decoder | None = None
        #: The last payload pull_payload returned undecoded, not yet given to
        #: the decoder (:meth:`_tell_g711` does, when a loss is concealed).
        self._g711_pending: bytes | None = None
        self._encode_table: npt.NDArray[np.uint8] | None = None
        #: SRTP for this leg (set by :meth:`configure` from the negotiated keys), or ``None``.
        self.srtp: SrtpContext | None = None
        #: Silence suppression (engine.media.dtx): called once, then cleared,
        #: on the next audio packet (the graph pulls the session again) ...
        self.audio_waker: Callable[[], None] | None = None
        #: ... and when the session must send although its mix is quiet (a player or digits started).
        self.send_waker: Callable[[], None] | None = None
        self._silence: SilencePeriod | None = None

    # -- configuration -----------------------------------------------------------

    def configure(self, negotiated: NegotiatedMedia, now: float | None = None) -> None:
        """Apply (re-)negotiated parameters. The latch is kept across
        re-INVITEs with the same payload types and address, so the stream
        stays latched; a new address is preferred from then on, with a new
        send grace from ``now`` (the loop's time when ``None``)."""
        if now is None:
            now = asyncio.get_running_loop().time()
        self.transport.unpin()  # the address may change; a steady source is pinned again
        self.negotiated = negotiated
        keys = negotiated.srtp
        if keys is None:
            self.srtp = None
        elif self.srtp is None or self.srtp.keys != (keys.suite, keys.send_key, keys.recv_key):
            # new keys (a re-INVITE may rekey); the same keys keep the replay state
            self.srtp = SrtpContext(keys.suite, keys.send_key, keys.recv_key)
        codec = negotiated.codec
        pts = {codec.payload_type}
        if negotiated.telephone_event_pt is not None:
            pts.add(negotiated.telephone_event_pt)
        if negotiated.comfort_noise_pt is not None:
            pts.add(negotiated.comfort_noise_pt)  # RFC 3389: accepted (liveness), never decoded
        payload_types = {pt for pt in pts if pt is not None}
        initial = (negotiated.remote_address, negotiated.remote_port)
        if self.latch is None or self.latch.payload_types != frozenset(payload_types):
            self.latch = RtpReceiverLatch(payload_types, initial_addr=initial, policy=self.policy, now=now)
        else:
            self.latch.set_signalled(initial, now)
        self.audio_pt = self.transport.stale_pt = codec.payload_type
        if self.event_pt != negotiated.telephone_event_pt or self.events is None:
            self.event_pt = negotiated.telephone_event_pt
            self.events = TelephoneEventReceiver(clock_rate=codec.clock_rate) if self.event_pt is not None else None
        try:
            self.decoder = get_decoder(codec.name)
        except CodecError:
            self.decoder = None
            logger.warning("no decoder for %s: audio is ignored", codec.name)
        try:
            self.encoder = get_encoder(codec.name)
        except CodecError:
            self.encoder = None
            logger.warning("no encoder for %s: nothing is played", codec.name)
        self._frame_samples = codec.clock_rate * 20 // 1000
        # One octet a sample: a payload of a whole frame decodes by one table lookup.
        self._g711_decoder = self.decoder if isinstance(self.decoder, G711Decoder) else None
        self._g711_pending = None
        self.decode_table = self._g711_decoder.table if self._g711_decoder is not None else None
        self._encode_table = self.encoder.table if isinstance(self.encoder, G711Encoder) else None
        if self.jitter is None:
            self.jitter = JitterBuffer(clock_rate=codec.clock_rate)
        self._update_detector()

    @property
    def remote_addr(self) -> Any:
        """The peer's RTP address: the latched source, else the SDP address
        (whether it may be sent to now: :meth:`destination`)."""
        return self.latch.remote_addr if self.latch is not None else None

    def destination(self, now: float) -> Any:
        """Where RTP may go at ``now``: :attr:`remote_addr` once confirmed
        or within the send grace, else ``None``."""
        return self.latch.destination(now) if self.latch is not None else None

    def send(self, data: bytes) -> bool:
        """Send one RTP (or RTCP-muxed) datagram to :attr:`remote_addr`
        (symmetric RTP); ``False`` when there is nowhere to send yet, or
        nothing confirmed the address and the grace is over (counted)."""
        latch = self.latch
        if latch is None or self.closed:
            return False
        addr = latch.remote_addr if latch.confirmed else latch.send_to(asyncio.get_running_loop().time())
        if addr is None:
            return False
        if self.srtp is not None:
            protected = self.srtp.protect_rtp(data)
            if protected is None:
                return False
            data = protected
        self.transport.sendto(data, addr)
        return True

    def set_tone_listener(self, listener: ToneListener | None) -> None:
        """Report DTMF to ``listener`` (``None``: stop, and stop reading the
        socket unless the media graph still wants the audio)."""
        self._listener = listener
        self._update_detector()
        self._update_reading()

    def _update_reading(self) -> None:
        """Read the socket while someone consumes what arrives."""
        if self.closed:
            return
        if self._listener is not None or self.graph_driven or self.rtcp is not None:
            self.transport.attach()
        else:
            self.transport.detach()
            if self.player is None and self.dtmf is None:
                self.clock.discard(self)

    @property
    def wants_audio(self) -> bool:
        """Whether received audio is buffered and decoded (for in-band
        detection or for the media graph)."""
        return self.decoder is not None and (self.detector is not None or self.graph_driven)

    def graph_attach(self) -> None:
        """From now on the media graph pulls and pushes this session's frames
        (:meth:`pull`, :meth:`push`) in its own tick; the session stops
        ticking itself."""
        self.graph_driven = True
        self.clock.discard(self)
        self._update_reading()

    def graph_detach(self) -> None:
        """The media graph lets go: tick alone again if there is a player
        or a detector to run."""
        if not self.graph_driven:
            return
        self.graph_driven = False
        self._leave_silence()
        self._update_reading()
        if not self.closed and (self.player is not None or self.detector is not None):
            self.clock.add(self)

    @property
    def inband(self) -> bool:
        """Whether in-band detection runs (see the module notes)."""
        return self._listener is not None and self.decoder is not None and self.event_pt is None

    def _update_detector(self) -> None:
        if self.inband:
            if self.detector is None:
                rate = self.negotiated.codec.clock_rate if self.negotiated else 8000
                self.detector = DtmfDetector(rate)
        else:
            self.detector = None

    # -- sending -----------------------------------------------------------------

    @property
    def may_send(self) -> bool:
        """Whether audio may be sent: negotiated sending, not held by the peer."""
        neg = self.negotiated
        return neg is not None and neg.send and not neg.on_hold and self.encoder is not None

    def start_playback(self, player: FrameSource, done: PlaybackDone | None = None) -> None:
        """Send ``player``'s frames from the next tick on, replacing (and
        stopping) any current player; ``done`` is called once at its end.
        A replaced player's stream continues without a new marker bit."""
        talkspurt = self._talkspurt
        self.stop_playback()
        self._talkspurt = talkspurt and not self.closed
        if self.closed:
            if done is not None:
                done(False)
            return
        self.player = player
        self._player_done = done
        if not self.graph_driven:
            self.clock.add(self)
        elif self.send_waker is not None:
            self.want_to_send()

    def stop_playback(self) -> None:
        """Stop the current player, if any (its ``done(False)`` runs)."""
        self._end_player(False)

    def _end_player(self, completed: bool) -> None:
        done = self._player_done
        self.player = None
        self._player_done = None
        self._talkspurt = False
        if done is not None:
            try:
                done(completed)
            except Exception:
                logger.exception("playback callback failed")

    def _player_frame(self, samples: int) -> Pcm | None:
        player = self.player
        if player is None:
            return None
        try:
            return player.read(samples)
        except PlaybackFinished:
            self._end_player(True)
        except Exception:
            logger.exception("player %r failed; stopped", player)
            self._end_player(False)
        return None

    def push(self, frame: Pcm | None) -> bool:
        """Send one frame: ``frame`` (the media graph's mix for this leg,
        ``None`` when the leg receives nothing) plus the current player's
        frame. Nothing is sent when both are absent. While the session may
        not send, the RTP timestamp skips the frame instead.

        :return: whether a frame was due (sent or skipped).
        """
        samples = self._frame_samples
        if self.clock.skipped != self._skips_seen:
            self._after_skip()
        if self.dtmf is not None and self.dtmf.tick(asyncio.get_running_loop().time()):
            self.last_sent = None
            return True  # RFC 4733 events take this frame's place (the player waits)
        played = self._player_frame(samples)
        if played is not None:
            played = np.asarray(played, dtype=np.int16)
            if frame is None:
                frame = played
            else:
                mixed = frame.astype(np.int32) + played
                np.clip(mixed, -32768, 32767, out=mixed)
                frame = mixed.astype(np.int16)
        self.last_sent = frame
        if frame is None:
            self._talkspurt = False
            return False
        encoder, neg = self.encoder, self.negotiated
        if not self.may_send or encoder is None or neg is None or neg.codec.payload_type is None:
            self.sender.skip(samples)
            self._talkspurt = False
            return True
        payload = encoder.encode(frame)
        header = self.sender.next_header(neg.codec.payload_type, samples, len(payload), marker=not self._talkspurt)
        self._talkspurt = True
        self.send(header + payload)
        return True

    @property
    def encode_table(self) -> npt.NDArray[np.uint8] | None:
        """The G.711 encode table when this tick's frame may be handed to
        :meth:`push_payload` already encoded (the media graph encodes all
        its legs in one lookup); ``None`` when it must go through :meth:`push`
        (a player to mix in, nothing to send, another codec)."""
        table = self._encode_table
        if table is None or self.player is not None or self.dtmf is not None:
            return None
        neg = self.negotiated  # self.may_send, inlined (per leg per tick)
        if neg is None or not neg.send or neg.on_hold or self.audio_pt is None:
            return None
        return table

    def push_payload(self, payload: bytes) -> None:
        """:meth:`push` for a frame already encoded with :attr:`encode_table`
        (call it only while that is not ``None``): send it as the next packet."""
        pt = self.audio_pt
        assert pt is not None
        if self.clock.skipped != self._skips_seen:
            self._after_skip()
        self.last_sent = None  # the graph knows the frame (its mix row)
        data: bytes | None = self.sender.next_datagram(pt, self._frame_samples, payload, not self._talkspurt)
        self._talkspurt = True
        latch = self.latch  # self.send, inlined
        if latch is None or self.closed:
            return
        addr = latch.remote_addr if latch.confirmed else latch.send_to(asyncio.get_running_loop().time())
        if addr is not None:
            if self.srtp is not None:
                data = self.srtp.protect_rtp(data)  # type: ignore[arg-type]
            if data is not None:
                self.transport.sendto(data, addr)

    def close(self) -> None:
        self.closed = True
        self.audio_waker = self.send_waker = None
        self._listener = None
        self._end_player(False)
        self.transport.detach()
        self.transport.handler = _ignore  # break session <-> transport: freed by refcounting
        self.transport.on_stale = None
        self.clock.discard(self)
        if self._event_timer is not None:
            self._event_timer.cancel()
            self._event_timer = None

    # -- receiving ---------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        latch = self.latch
        if latch is None:
            return
        graph_driven = self.graph_driven
        rtcp = self.rtcp
        if not graph_driven and self._listener is None and rtcp is None:
            return
        if self.srtp is not None:
            plain = self.srtp.unprotect_rtp(data)
            if plain is None:
                return  # forged, replayed or damaged: counted in srtp.stats
            data = plain
        # Per packet: the header's fields straight from the bytes; no packet
        # object (RtpPacket.parse, which also strips CSRCs, an extension or
        # padding, runs only for a header that has them, or is malformed).
        if len(data) >= 12 and data[0] == 0x80:
            second, seq, timestamp, ssrc = _FIXED_HEADER.unpack_from(data, 1)
            pt = second & 0x7F
            payload = data[12:]
        else:
            try:
                packet = RtpPacket.parse(data)
            except RtpError:
                self.malformed += 1
                return
            pt, seq, timestamp, ssrc = packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc
            payload = packet.payload
        now = self.transport.loop_time()  # the reading loop's time (see RtpTransport.loop_time)
        if not latch.accept_header(pt, seq, ssrc, addr, now):
            if latch.refused is not None and not self._refusal_logged:
                self._refusal_logged = True
                security_event("rtp_source_refused", str(latch.refused[0]), port=latch.refused[1],
                               call=self.call_id)
            return
        if addr is not self.transport.peer and self.policy.pin_after:
            self._consider_pin(latch)
        if rtcp is not None:
            rtcp.on_rtp_header(pt, seq, timestamp, ssrc, len(payload), now)
            if self._listener is None and not graph_driven:
                return  # read for the statistics only
        if pt == self.event_pt and self.events is not None:
            try:
                digits = self.events.receive_events(payload, timestamp, now)
            except TelephoneEventError:
                self.malformed += 1
                return
            for d in digits:
                self._report(d.digit, ONSET_MODE if isinstance(d, DigitStarted) else "rfc4733")
            self._arm_event_timer(asyncio.get_running_loop())
        elif pt == self.audio_pt:
            jitter = self.jitter
            if jitter is not None and (graph_driven or self.detector is not None) and self.decoder is not None:
                # self.wants_audio, inlined
                jitter.put_frame(ssrc, seq, timestamp, payload, now)
                self._last_audio = now
                if not graph_driven:
                    self.clock.add(self)
                elif self.audio_waker is not None:  # asleep under silence suppression
                    self.audio_arrived()

    def _on_stale(self, count: int) -> None:
        """The transport dropped ``count`` datagrams as too old to play."""
        if self.jitter is not None:
            self.jitter.count_late(count)

    def _consider_pin(self, latch: RtpReceiverLatch) -> None:
        """A packet from the latched source came through an unpinned socket:
        pin it to that source once the policy's count of packets is reached
        (the latch moved to the packet's address when it accepted it)."""
        if latch.accepted >= self.policy.pin_after and latch.latched and not self.closed:
            self.transport.pin(latch.remote_addr)

    def _arm_event_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._event_timer is not None:
            self._event_timer.cancel()
            self._event_timer = None
        when = self.events.get_timer() if self.events is not None else None
        if when is not None:
            self._event_timer = loop.call_at(when, self._on_event_timer)

    def _on_event_timer(self) -> None:
        self._event_timer = None
        if self.events is None:
            return
        loop = asyncio.get_running_loop()
        for d in self.events.handle_timer(loop.time()):
            self._report(d.digit, "rfc4733")
        self._arm_event_timer(loop)

    def tick(self, now: float) -> bool:
        """One 20 ms frame when not driven by the media graph: receive (pull,
        decode or conceal, detect), then send a frame of the current player."""
        if self.closed or self.graph_driven:
            return False
        receiving = False
        if self.detector is not None:
            self.pull(now)
            receiving = self._receiving(now)
        sending = self.push(None)
        return receiving or sending or self.player is not None

    def _receiving(self, now: float) -> bool:
        jitter = self.jitter
        return now - self._last_audio < IDLE_AFTER or (jitter is not None and jitter.depth_ms > 0)

    def pull(self, now: float) -> Pcm | None:
        """This tick's received frame (decoded, or concealed when a packet
        is missing), after in-band DTMF detection; ``None`` when the leg
        has sent no audio for :data:`IDLE_AFTER` seconds (silence)."""
        frame = self._pull(now, False)
        assert not isinstance(frame, bytes)
        return frame

    def pull_payload(self, now: float) -> bytes | Pcm | None:
        """:meth:`pull` for a caller that decodes many legs at once (the
        media graph): when this tick's packet is a whole frame of a table
        codec (:attr:`decode_table` is set) and nothing here needs its
        samples (no in-band detection), its payload, undecoded; the decoder
        is told, so a later lost frame is concealed as after :meth:`pull`.
        A lost frame of such a leg comes as its concealment's payload
        (:meth:`~engine.media.codecs.g711.G711Decoder.conceal_payload`).
        Otherwise what :meth:`pull` returns."""
        g711, jitter = self._g711_decoder, self.jitter
        if self.clock.skipped != self._skips_pulled:
            self._skip_playout()
        if g711 is None or jitter is None or self.detector is not None or self.closed:
            return self._pull(now, True)
        # self._pull(now, True) for a G.711 leg without detection, inlined (per leg per tick)
        if now - self._last_audio >= IDLE_AFTER and not jitter.depth_ms:
            return None
        payload = jitter.get(now)
        if payload is None:
            self._tell_g711()
            return g711.conceal_payload(self._frame_samples)  # decoded with the rest, as cheap as a good frame
        if len(payload) == self._frame_samples:
            self._g711_pending = payload  # g711.remember(payload), when a loss needs it
            return payload
        self._g711_pending = None
        return np.asarray(g711.decode(payload), dtype=np.int16)

    def _tell_g711(self) -> None:
        """Hand the G.711 decoder the last payload :meth:`pull_payload`
        returned undecoded (:meth:`~engine.media.codecs.g711.G711Decoder.remember`),
        before it conceals or decodes: the call per frame is saved."""
        pending = self._g711_pending
        if pending is not None:
            self._g711_pending = None
            if self._g711_decoder is not None:
                self._g711_decoder.remember(pending)

    def _skip_playout(self) -> None:
        """The media clock skipped ticks: nothing was pulled for them, so
        the jitter buffer drops their frames (they arrive in a burst once
        the loop runs again). Kept, they would be played one a tick from
        then on, the call's audio that much later until the buffer trims
        it, a frame a second."""
        skipped = self.clock.skipped
        if self.jitter is not None:
            self.jitter.skip_frames(skipped - self._skips_pulled)
        self._skips_pulled = skipped

    def _pull(self, now: float, coded: bool) -> bytes | Pcm | None:
        if self.clock.skipped != self._skips_pulled:
            self._skip_playout()
        jitter, decoder = self.jitter, self.decoder
        if jitter is None or decoder is None or self.closed:
            return None
        if now - self._last_audio >= IDLE_AFTER and not self._receiving(now):
            return None
        payload = jitter.get(now)
        if payload is None:
            self._tell_g711()
            pcm = decoder.conceal(self._frame_samples)
        else:
            g711 = self._g711_decoder
            if coded and g711 is not None and self.detector is None and len(payload) == self._frame_samples:
                self._g711_pending = payload
                return payload
            self._g711_pending = None
            pcm = decoder.decode(payload)
        pcm = np.asarray(pcm, dtype=np.int16)
        detector = self.detector
        if detector is not None:
            for tone in detector.process(pcm):
                self._report(tone.digit, "inband")
        return pcm

    # -- silence suppression (engine.media.dtx) --------------------------------------

    def audio_arrived(self) -> None:
        """Call :attr:`audio_waker` once (audio came for a sleeping session)."""
        waker, self.audio_waker = self.audio_waker, None
        if waker is not None:
            waker()

    def want_to_send(self) -> None:
        """Call :attr:`send_waker` once (a player or digits started while quiet)."""
        waker, self.send_waker = self.send_waker, None
        if waker is not None:
            waker()

    def sleep_until_audio(self, now: float) -> bool:
        """Whether :meth:`pull` and :meth:`pull_payload` return ``None`` from
        now until an audio packet arrives (no audio for :data:`IDLE_AFTER`
        and nothing buffered; only :meth:`_on_datagram` changes that)."""
        return self.jitter is None or self.decoder is None or self.closed or not self._receiving(now)

    def begin_silence(self, now: float, level: int) -> bool:
        """Send nothing from the frame due at ``now`` on: one RFC 3389 CN
        packet (noise ``level``, -dBov) when CN was negotiated, then silence
        until :meth:`end_silence`. ``False`` (nothing changes) while the
        session's own player or digits must still be sent.

        :raises ValueError: ``level`` is not 0..127.
        """
        if self.player is not None or self.dtmf is not None or self.closed:
            return False
        if self._silence is None:
            payload = cn_payload(level)
            self._silence = SilencePeriod(now, self.sender.timestamp, level)
            self._talkspurt = False
            self.last_sent = None
            self._send_cn(now, payload)
        return True

    def refresh_silence(self, now: float) -> None:
        """The periodic packet of a silence (see
        :data:`engine.media.dtx.REFRESH_INTERVAL`): CN again, or without CN
        one frame of encoded silence (a one-frame talkspurt: marker bit) as
        a keepalive."""
        period = self._silence
        if period is None or not self.may_send:
            return
        neg = self.negotiated
        if neg is not None and neg.comfort_noise_pt is not None:
            self._send_cn(now, cn_payload(period.level))
            return
        encoder, pt = self.encoder, self.audio_pt
        if encoder is None or pt is None:
            return
        samples = self._frame_samples
        self._jump_to(period.timestamp_at(now, samples))
        payload = encoder.encode(np.zeros(samples, dtype=np.int16))
        self.send(self.sender.next_datagram(pt, samples, payload, True))

    def end_silence(self, now: float) -> None:
        """The frame due at ``now`` is sent again: its timestamp is advanced
        over the silence and it carries the marker bit (RFC 3551 section 4.1)."""
        period, self._silence = self._silence, None
        if period is None:
            return
        self.send_waker = None
        self._jump_to(period.timestamp_at(now, self._frame_samples))
        self._talkspurt = False

    def _leave_silence(self) -> None:
        """The graph lets go: end a silence and drop the graph's wakers."""
        self.audio_waker = None
        if self._silence is not None:
            try:
                now = asyncio.get_running_loop().time()
            except RuntimeError:
                now = self._silence.started
            self.end_silence(now)

    def _jump_to(self, timestamp: int) -> None:
        """Advance the sender's timestamp to ``timestamp`` (never back): a
        timestamp taken from the time now, so the clock's skips so far are
        in it."""
        self._skips_seen = self.clock.skipped
        ahead = ts_diff(self.sender.timestamp, timestamp)
        if ahead > 0:
            self.sender.skip(ahead)

    def _after_skip(self) -> None:
        """The media clock skipped ticks (its loop was blocked for longer
        than it catches up): the frames of those ticks were never made, so
        the timestamp jumps over them and the next packet starts a
        talkspurt (marker bit), as after silence (RFC 3551 section 4.1).
        Without the jump every later packet would carry a timestamp behind
        its sending time by the skipped frames, for the rest of the call:
        to the far end's jitter buffer, a delay that never goes away."""
        skipped = self.clock.skipped
        self.sender.skip(((skipped - self._skips_seen) * self._frame_samples) & 0xFFFFFFFF)
        self._skips_seen = skipped
        self._talkspurt = False

    def _send_cn(self, now: float, payload: bytes) -> None:
        """One CN packet stamped at ``now``'s frame (RFC 3389 section 4: the
        timestamp of the noise period; no marker), when CN was negotiated
        and the session may send."""
        neg, period = self.negotiated, self._silence
        if neg is None or neg.comfort_noise_pt is None or period is None or not self.may_send:
            return
        self._jump_to(period.timestamp_at(now, self._frame_samples))
        self.send(self.sender.next_datagram(neg.comfort_noise_pt, 0, payload, False))

    def _report(self, digit: str, mode: str) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            listener(digit, mode)
        except Exception:
            logger.exception("tone listener failed")
