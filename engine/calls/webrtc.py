"""A browser leg's media, terminated by the engine with aiortc.

A browser that calls a number routed to a scenario sends a WebRTC offer over
the SDK's WebSocket (:mod:`engine.web.ws`); :class:`BrowserMediaLeg` answers
it with an aiortc :class:`~aiortc.RTCPeerConnection` and turns the audio into
the engine's own currency, 20 ms frames of 16-bit mono PCM at 8 kHz, through
a :class:`WebRtcAudioPort`:

- :meth:`WebRtcAudioPort.read_frame` returns what the browser said: aiortc
  decodes Opus (48 kHz stereo) or PCMU, a PyAV resampler brings it to 8 kHz
  mono, and a short FIFO (:data:`MAX_BUFFERED` frames; the oldest are
  dropped) holds it until the media graph pulls it;
- :meth:`WebRtcAudioPort.write_frame` queues audio for the browser. The outgoing
  track (:class:`PortAudioTrack`) hands queued frames to aiortc, which
  resamples and encodes them. It does not pace itself: the engine's one
  media clock (:class:`~engine.media.clock.MediaClock`) drives
  writers, so nothing is sent while nothing is written and the RTP
  timestamps skip over the gap (a new talkspurt).

The port is passive, like a pjmedia port: one :class:`LegAudio` per call
reads and writes it once per tick, driven by the media clock (the call's
own playback) or by the media graph (conferences and media routes, with
the call's playback mixed in). :class:`PortPlayer` is the bare
player-to-port sink, for tools and tests.

Video the browser offers is answered ``inactive``: browser-to-browser video
goes peer to peer (the engine relays signalling only) and conference video
is not mixed yet.

ICE: aioice leaves loopback out of its host candidates, so a browser on the
same machine (the tests, a developer's laptop) could not reach the engine.
:func:`add_ice_host_addresses` adds addresses (127.0.0.1 by default in
:class:`~engine.server.EngineConfig`) to what aioice gathers. Candidates
are all in the engine's answer (aiortc gathers before answering); the
browser's arrive trickled (:meth:`BrowserMediaLeg.add_remote_candidate`).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from typing import Any, Callable, Sequence

import aioice.ice
import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCIceCandidate, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame, AudioResampler

from engine.media.players import FrameSource, PlaybackFinished
from engine.media.clock import MediaClock
from engine.media.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm

__all__ = [
    "WebRtcAudioPort",
    "BrowserMediaLeg",
    "LegAudio",
    "PortAudioTrack",
    "PortPlayer",
    "add_ice_host_addresses",
    "parse_candidate",
    "FRAME_SAMPLES",
    "TRIM_WINDOW",
]

logger = logging.getLogger(__name__)


#: Frames a :class:`WebRtcAudioPort` buffers each way (200 ms); older ones are dropped.
MAX_BUFFERED = 10

#: Reads of a browser's frames in a trimming window (one a tick: a second).
TRIM_WINDOW = 50
#: When every read of a window found at least this many frames waiting, the
#: surplus is dropped: the browser's clock runs ahead of ours (or a burst was
#: never drained), and it would otherwise stay as delay for the whole call.
TRIM_ABOVE = 3

#: A gap longer than this between written frames starts a new talkspurt
#: (RTP timestamps jump by the wall-clock gap instead of one frame).
TALKSPURT_GAP = 0.06

_extra_hosts: list[str] = []
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = list(_original_get_host_addresses(use_ipv4, use_ipv6))
    for host in _extra_hosts:
        if host in addresses:
            continue
        if (":" in host and use_ipv6) or (":" not in host and use_ipv4):
            addresses.append(host)
    return addresses


def add_ice_host_addresses(hosts: Sequence[str]) -> None:
    """Offer ``hosts`` as ICE host candidates besides the machine's own
    interface addresses (which aioice gathers, loopback excluded).

    It applies to the whole process (aioice has no per-connection setting),
    so it is idempotent and only ever adds.
    """
    for host in hosts:
        if host not in _extra_hosts:
            _extra_hosts.append(host)
    aioice.ice.get_host_addresses = _get_host_addresses


def _silence() -> Pcm:
    return np.zeros(FRAME_SAMPLES, dtype=np.int16)


class WebRtcAudioPort:
    """Audio of one browser leg as 20 ms frames of 8 kHz int16 mono PCM.

    :ivar frames_in: frames received from the browser so far.
    :ivar frames_out: frames handed to the browser's track so far.
    """

    rate = SAMPLE_RATE
    samples = FRAME_SAMPLES

    def __init__(self) -> None:
        self._in = bytearray()
        self._out: asyncio.Queue[Pcm | None] = asyncio.Queue()
        self.frames_in = 0
        self.frames_out = 0
        #: Frames from the browser dropped to cut a standing delay (:meth:`read_frame`).
        self.frames_trimmed = 0
        self._reads = 0
        self._fewest = MAX_BUFFERED  # fewest frames waiting at a read of this window
        self.closed = False
        #: Whether aiortc has started pulling the outgoing track (ICE and
        #: DTLS are up): writers may hold back until then, so that the start
        #: of a prompt is not played into the void.
        self.sending = False
        self._on_sending: list[Callable[[], None]] = []

    # -- from the browser ---------------------------------------------------------

    @property
    def available(self) -> int:
        """Whole frames received and not read yet."""
        return len(self._in) // (2 * FRAME_SAMPLES)

    def read_frame(self) -> Pcm:
        """The next 20 ms from the browser; silence when none is buffered.

        Nothing paces what the browser sends but its own clock, and reading
        follows ours: when one runs ahead (sound cards differ by up to 100
        ppm: a frame every few minutes) or a burst came, frames wait, and
        what waits is delay. When every read of :data:`TRIM_WINDOW` found
        :data:`TRIM_ABOVE` or more waiting, the oldest are dropped at once,
        down to one frame fewer than that: one frame for a clock running
        ahead, the whole surplus of a burst in one cut rather than one cut
        a second (the jitter buffer of RTP legs trims the same way)."""
        size = 2 * FRAME_SAMPLES
        waiting = len(self._in) // size
        if waiting < self._fewest:
            self._fewest = waiting
        self._reads += 1
        if self._reads >= TRIM_WINDOW:
            if self._fewest >= TRIM_ABOVE:
                surplus = self._fewest - (TRIM_ABOVE - 1)
                del self._in[:size * surplus]
                self.frames_trimmed += surplus
            self._reads, self._fewest = 0, MAX_BUFFERED
        if len(self._in) < size:
            return _silence()
        data = bytes(self._in[:size])
        del self._in[:size]
        return np.frombuffer(data, dtype=np.int16).copy()

    def _received(self, pcm: bytes) -> None:
        self._in += pcm
        limit = 2 * FRAME_SAMPLES * MAX_BUFFERED
        if len(self._in) > limit:
            del self._in[: len(self._in) - limit]
        self.frames_in += len(pcm) // (2 * FRAME_SAMPLES)

    # -- to the browser -----------------------------------------------------------

    def write_frame(self, pcm: npt.ArrayLike) -> None:
        """Queue 20 ms (160 samples) for the browser. When the browser's
        track falls behind, the oldest queued frames are dropped."""
        if self.closed:
            return
        frame = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"a frame is {FRAME_SAMPLES} samples, not {len(frame)}")
        while self._out.qsize() >= MAX_BUFFERED:
            self._out.get_nowait()
        self._out.put_nowait(frame)

    async def _next_out(self) -> Pcm | None:
        if not self.sending:
            self.sending = True
            callbacks, self._on_sending = self._on_sending, []
            for cb in callbacks:
                cb()
        return await self._out.get()

    def when_sending(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the outgoing track is pulled (now if it is)."""
        if self.sending:
            callback()
        else:
            self._on_sending.append(callback)

    def close(self) -> None:
        self.closed = True
        self._on_sending.clear()
        self._out.put_nowait(None)  # wake the track, which then ends


class PortAudioTrack(MediaStreamTrack):
    """The outgoing audio track: frames written to a :class:`WebRtcAudioPort`."""

    kind = "audio"

    def __init__(self, port: WebRtcAudioPort) -> None:
        super().__init__()
        self.port = port
        self._pts = 0
        self._last: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pcm = await self.port._next_out()
        if pcm is None:
            self.stop()
            raise MediaStreamError
        now = asyncio.get_running_loop().time()
        if self._last is not None:
            gap = now - self._last
            step = FRAME_SAMPLES
            if gap > TALKSPURT_GAP:
                step = max(FRAME_SAMPLES, int(round(gap * SAMPLE_RATE / FRAME_SAMPLES)) * FRAME_SAMPLES)
            self._pts += step
        self._last = now
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.port.frames_out += 1
        return frame


class PortPlayer:
    """A media clock sink that plays a player into a :class:`WebRtcAudioPort`
    (what :class:`~engine.calls.rtp_stream.MediaSession` does for RTP legs).

    Frames are pulled only once the port is sending, so a prompt started as
    the call connects is heard from its start; ``done(completed)`` is called
    once, at the end or on :meth:`stop`.
    """

    def __init__(self, port: WebRtcAudioPort, player: FrameSource, done: Callable[[bool], None]) -> None:
        self.port = port
        self.player = player
        self._done: Callable[[bool], None] | None = done

    def tick(self, now: float) -> bool:
        if self._done is None or self.port.closed:
            self.stop()
            return False
        if not self.port.sending:
            return True
        try:
            frame = self.player.read(FRAME_SAMPLES)
        except PlaybackFinished:
            self._finish(True)
            return False
        except Exception:
            logger.exception("player %r failed; stopped", self.player)
            self._finish(False)
            return False
        self.port.write_frame(frame)
        return True

    def stop(self) -> None:
        self._finish(False)

    def _finish(self, completed: bool) -> None:
        done, self._done = self._done, None
        if done is not None:
            try:
                done(completed)
            except Exception:
                logger.exception("playback callback failed")


class LegAudio:
    """A browser leg's audio as the engine drives it: the
    :class:`~engine.media.ports.AudioPort` of the media graph, and the
    call's own player (``say()``, ``start_playback()``).

    Exactly one writer feeds the outgoing track each 20 ms:

    - standalone (no media routing), this object is a sink of the media
      clock while a player is set, and :meth:`tick` writes the player's
      frame (as :class:`PortPlayer` does);
    - once the media graph drives the leg (:meth:`graph_attach`), it leaves
      the clock, and the graph's :meth:`push` writes the mix for this leg
      plus the player's frame, summed; :meth:`graph_detach` hands back to
      the clock if a player is still set.

    Nothing is pulled from the player and nothing written before the track
    is sending (ICE and DTLS up), so a prompt is heard from its start.
    :meth:`pull` gives the graph the next frame received from the browser
    (``None`` when none is buffered: silence).
    """

    def __init__(self, port: WebRtcAudioPort, clock: MediaClock) -> None:
        self.port = port
        self.clock = clock
        self.player: FrameSource | None = None
        self._done: Callable[[bool], None] | None = None
        #: Whether the media graph drives this leg (see the class notes).
        self.graph_driven = False
        #: What the last :meth:`push` wrote (``None``: nothing), for recordings.
        self.last_sent: Pcm | None = None
        #: The clock's skipped ticks already dropped from what the browser sent.
        self._skips_pulled = clock.skipped

    # -- the player ----------------------------------------------------------------

    def start_playback(self, player: FrameSource, done: Callable[[bool], None]) -> None:
        """Play ``player`` (replacing and stopping any current one);
        ``done(completed)`` is called once, at its end or when stopped."""
        self.stop_playback()
        if self.port.closed:
            done(False)
            return
        self.player, self._done = player, done
        if not self.graph_driven:
            self.clock.add(self)

    def stop_playback(self) -> None:
        """Stop the current player, if any (its ``done(False)`` runs)."""
        self._end_player(False)
        if not self.graph_driven:
            self.clock.discard(self)

    def _end_player(self, completed: bool) -> None:
        done, self._done, self.player = self._done, None, None
        if done is not None:
            try:
                done(completed)
            except Exception:
                logger.exception("playback callback failed")

    def _player_frame(self) -> Pcm | None:
        player = self.player
        if player is None:
            return None
        try:
            return np.asarray(player.read(FRAME_SAMPLES), dtype=np.int16)
        except PlaybackFinished:
            self._end_player(True)
        except Exception:
            logger.exception("player %r failed; stopped", player)
            self._end_player(False)
        return None

    def tick(self, now: float) -> bool:
        """Standalone playback (a media clock sink): one player frame."""
        if self.graph_driven:
            return False
        if self.port.closed:
            self._end_player(False)
            return False
        if self.player is None:
            return False
        if not self.port.sending:
            return True
        frame = self._player_frame()
        if frame is not None:
            self.port.write_frame(frame)
        return self.player is not None

    def close(self) -> None:
        self.stop_playback()
        self.clock.discard(self)

    # -- the media graph (engine.media.ports.AudioPort) ------------------------------

    def graph_attach(self) -> None:
        """From now on the graph writes the track (:meth:`push`)."""
        self.graph_driven = True
        self.clock.discard(self)

    def graph_detach(self) -> None:
        """The graph lets go: the player, if any, is ticked by the clock again."""
        if not self.graph_driven:
            return
        self.graph_driven = False
        self.last_sent = None
        if self.player is not None and not self.port.closed:
            self.clock.add(self)

    def pull(self, now: float) -> Pcm | None:
        """The next 20 ms received from the browser; ``None`` when none is
        buffered. After the media clock skipped ticks (its loop was blocked),
        as many buffered frames are dropped: nothing was pulled for those
        ticks, and kept they would make the rest of the call that much later."""
        skipped = self.clock.skipped
        if skipped != self._skips_pulled:
            for _ in range(min(skipped - self._skips_pulled, self.port.available)):
                self.port.read_frame()
            self._skips_pulled = skipped
        if self.port.closed or not self.port.available:
            return None
        return self.port.read_frame()

    def push(self, frame: Pcm | None) -> bool:
        """Write ``frame`` (the graph's mix for this leg; ``None``: none)
        plus the player's frame to the browser; ``False`` when nothing was
        written (nothing to send, or the track is not sending yet)."""
        if self.port.closed or not self.port.sending:
            self.last_sent = None
            return False
        played = self._player_frame()
        if played is not None:
            if frame is None:
                frame = played
            else:
                mixed = frame.astype(np.int32)
                mixed[: played.shape[0]] += played[: mixed.shape[0]]
                np.clip(mixed, -32768, 32767, out=mixed)
                frame = mixed.astype(np.int16)
        self.last_sent = frame
        if frame is None:
            return False
        self.port.write_frame(frame)
        return True


def parse_candidate(init: dict[str, Any] | None) -> RTCIceCandidate | None:
    """A browser's ``RTCIceCandidateInit`` (as JSON) as aiortc's candidate;
    ``None`` (and an empty candidate, WebRTC 1.0) mean the end of candidates.

    :raises ValueError: the candidate line is malformed.
    """
    if init is None:
        return None
    text = str(init.get("candidate") or "")
    if not text:
        return None
    if text.startswith("candidate:"):
        text = text[len("candidate:"):]
    try:
        candidate = candidate_from_sdp(text)
    except (AssertionError, ValueError, IndexError) as exc:  # aiortc asserts on short lines
        raise ValueError(f"malformed candidate {text[:80]!r}") from exc
    mid, index = init.get("sdpMid"), init.get("sdpMLineIndex")
    candidate.sdpMid = mid if isinstance(mid, str) else None
    candidate.sdpMLineIndex = index if isinstance(index, int) else None
    if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
        candidate.sdpMLineIndex = 0
    return candidate


class BrowserMediaLeg:
    """One aiortc peer connection answering a browser's offer.

    :param on_failed: called once if ICE or DTLS fails or the connection
        closes from the browser's side (the call should end).
    """

    #: The browser only listens (a ``subscriber``): its offer is answered
    #: ``a=sendonly`` (RFC 3264 section 6.1), so the browser is told to send
    #: no audio at all, besides the media graph leaving it out of every mix.
    listen_only: bool = False

    def __init__(self, on_failed: Callable[[str], None] | None = None) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.port = WebRtcAudioPort()
        self.track = PortAudioTrack(self.port)
        self._on_failed = on_failed
        self._tasks: set[asyncio.Task[None]] = set()
        self._remote_ready = False
        self._pending: list[RTCIceCandidate | None] = []
        self.closed = False
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    @property
    def connection_state(self) -> str:
        return str(self.pc.connectionState)

    async def accept_offer(self, sdp: str, candidates: Sequence[RTCIceCandidate | None] = ()) -> str:
        """Answer the browser's ``sdp`` offer, with the ``candidates`` it
        trickled so far; return the answer SDP (with every local candidate:
        aiortc gathers before answering).

        :raises ValueError: the offer is not valid SDP, has no audio, or
            lacks what DTLS-SRTP and ICE need (a fingerprint, ICE
            credentials): checked here, because aiortc asserts on them in
            a background task, where the failure would go unreported.
        """
        for needed in ("a=fingerprint:", "a=ice-ufrag:", "a=ice-pwd:"):
            if needed not in sdp:
                raise ValueError(f"the offer has no {needed[2:-1]} (DTLS-SRTP and ICE need it)")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        audio = False
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio" and not audio:
                audio = True
                transceiver.direction = "sendonly" if self.listen_only else "sendrecv"
                transceiver.sender.replaceTrack(self.track)
            else:
                transceiver.direction = "inactive"
        if not audio:
            raise ValueError("the offer has no audio stream")
        self._remote_ready = True
        pending, self._pending = [*candidates, *self._pending], []
        for candidate in pending:
            await self._add_candidate(candidate)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return str(self.pc.localDescription.sdp)

    async def create_offer(self) -> str:
        """Offer audio to a browser (a call the engine places); return the
        offer SDP with every local candidate."""
        self.pc.addTransceiver(self.track, direction="sendrecv")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        """Apply the browser's answer to :meth:`create_offer`'s offer.

        :raises ValueError: the answer is not valid SDP for the offer.
        """
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self._remote_ready = True
        pending, self._pending = self._pending, []
        for candidate in pending:
            await self._add_candidate(candidate)

    async def add_remote_candidate(self, candidate: RTCIceCandidate | None) -> None:
        """A trickled browser candidate (see :func:`parse_candidate`), or
        ``None`` for the end of candidates. Kept until the offer is applied."""
        if not self._remote_ready:
            self._pending.append(candidate)
            return
        await self._add_candidate(candidate)

    async def _add_candidate(self, candidate: RTCIceCandidate | None) -> None:
        if not self.closed:
            await self.pc.addIceCandidate(candidate)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        task = asyncio.get_running_loop().create_task(self._read(track), name="browser-audio-in")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, track: MediaStreamTrack) -> None:
        """Decode, resample to 8 kHz mono and buffer the browser's audio.
        Reading never stops while the track lives: aiortc queues decoded
        frames without bound for a track nobody reads."""
        resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, AudioFrame):
                continue
            for out in resampler.resample(frame):
                self.port._received(out.to_ndarray().astype(np.int16).tobytes())

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed") and not self.closed:
            cb, self._on_failed = self._on_failed, None
            if cb is not None:
                cb(f"WebRTC connection {state}")

    async def close(self) -> None:
        """Close the peer connection and the port (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._on_failed = None
        self.port.close()
        for task in list(self._tasks):
            task.cancel()
        await self.pc.close()
