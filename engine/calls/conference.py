"""Conferences and media routing: a directed graph of audio flows.

Scenarios route media with three verbs (VoxEngine's): ``a.send_media_to(b)``
(``a``'s audio is heard by ``b``), ``a.stop_media_to(b)`` and
``VoxEngine.send_media_between(a, b)`` (both ways), where ``a`` and ``b`` are
calls or :class:`Conference` objects. A conference mixes what flows into it
and sends each receiver the *mix minus its own voice*; per endpoint it can
mute (take no audio in), make deaf (send no audio out) and set a volume.

Theory of operation
-------------------
One :class:`MediaGraph` per engine is a sink of the media clock (pjmedia's
conference bridge: passive ports plus a connection matrix). The scenario's
verbs only edit the graph's edges and mark it dirty; on the next tick the
graph compiles them into a plan of two :class:`~engine.media.mixer.FlowMatrix`
stages over numbered rows:

- the *source rows*: every call leg with media of its own (a SIP leg's
  :class:`~engine.calls.rtp_stream.MediaSession`, later a browser leg) that
  sends or records, plus every player of a conference or internal call;
- stage 1 sums the rows flowing into each conference (``int32``, with each
  endpoint's volume as the gain);
- stage 2 gives each receiving leg the sum of its direct sources plus, for
  each conference it hears, that conference's sum *minus its own row times
  its weight in that sum* -- mix-minus as one subtraction, so a 100-party
  conference costs 200 gathered rows, not 100 x 99;
- saturation to ``int16`` happens once, at the end.

Internal calls (``VoxEngine.call_conference`` pairs) have no media of their
own: they are wires. Audio sent to one end comes out of the other end, so
at compile time an edge ``x -> A`` with ``A``'s peer ``B`` becomes ``x ->``
every target of ``B``. That is what makes the canonical application work: the
gatekeeper's ``send_media_between(phone, conf_leg)`` and the conference
session's ``conference.add(its_leg)`` compile to ``phone <-> conference``,
and mix-minus still keeps the phone from hearing itself.

Conferences linked to conferences merge their sources (each source counted
once, so two conferences joined both ways act as one).

Per tick the graph hands its plan to the port-level mixer,
:class:`~engine.media.bridge.Bridge`: it pulls one frame from every source
leg (decoded, or silence), reads every player, applies the two stages and
pushes each receiving leg its frame (plus the leg's own player, mixed in by
the leg). Recorders get a call's incoming plus outgoing audio, or a
conference's sum.

The graph knows calls only through the :class:`Leg` protocol (their state,
their end, their port, and whether they are a wire), so :mod:`engine.calls.call`
never needs this module: ``call.graph`` is typed by its own small protocol.
"""

from __future__ import annotations

import enum
import functools
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeGuard, Union, runtime_checkable

from engine.calls.call import (CallError, Dispatcher, Emitter, ExtraFields, Listeners, Playback, PlaybackMixin,
                               _DirectDispatcher)
from engine.calls.recording import Recording
from engine.media.bridge import Bridge, BridgePlan, FrameSink, TrackSink
from engine.media.clock import MediaClock
from engine.media.dtx import Suppressor
from engine.media.mixer import FlowMatrix
from engine.media.pcm import SAMPLE_RATE
from engine.media.players import FrameSource
from engine.media.ports import AudioPort, PortOwner
from engine.media.recorder import RecorderError, WavRecorder
from engine.media.tts import TtsCache, default_tts
from engine.transport.audio_fetch import AudioLoader, default_audio_loader

if TYPE_CHECKING:
    from engine.calls.media_stream import MediaStream

__all__ = [
    "Conference",
    "ConferenceError",
    "ConferenceEvent",
    "ConferenceEvents",
    "Leg",
    "MediaGraph",
    "Node",
    "Recording",
]

logger = logging.getLogger(__name__)

Done = Callable[[bool], None]


class ConferenceError(CallError):
    """A media routing request that cannot be done (names the reason)."""


class _HasEnded(Protocol):
    @property
    def ended(self) -> bool: ...


@runtime_checkable
class Leg(PortOwner, Protocol):
    """A call as the media graph routes it (:class:`~engine.calls.call.Call`
    and its subclasses): a leg with media of its own, whose port the bridge
    drives, or a *wire* (:attr:`media_wire`, an internal call) whose other
    end carries on what is sent to it."""

    @property
    def state(self) -> _HasEnded:
        """The call's state (``state.ended``: it is over)."""

    @property
    def on_ended(self) -> list[Callable[[Any], None]]:
        """Called with the call when it ends."""

    @property
    def media_wire(self) -> bool:
        """Whether it is a wire with no media of its own (an internal call)."""

    def _wire_peer(self) -> Leg | None:
        """A wire's other end (``None``: none, or not a wire)."""


Node = Union[Leg, "Conference"]


class ConferenceEvents(str, enum.Enum):
    """What a conference emits (``conference.add_event_listener``)."""

    #: ``e.endpoint`` (a call or conference) started sending to or receiving from it.
    EndpointAdded = "EndpointAdded"
    #: ``e.endpoint`` left: removed, its flows stopped, or its call ended.
    EndpointRemoved = "EndpointRemoved"
    #: A playback of the conference ended (``e.playback``, ``e.completed``).
    PlaybackFinished = "PlaybackFinished"
    #: A recording started (``e.path``).
    RecordStarted = "RecordStarted"
    #: A recording ended (``e.path``, ``e.duration`` seconds).
    RecordStopped = "RecordStopped"
    #: The conference was stopped (by the scenario or its session's end).
    Stopped = "Stopped"

    def __str__(self) -> str:
        return self.value


@dataclass
class ConferenceEvent(ExtraFields):
    """What a conference listener receives; other fields in ``extra``."""

    name: str
    conference: Conference
    endpoint: Node | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Member:
    sending: bool = False
    receiving: bool = False
    mute: bool = False
    deaf: bool = False
    volume: float = 1.0


@dataclass
class _Player:
    source: FrameSource
    done: Done | None


class Conference(PlaybackMixin, Listeners):
    """A mixing point in the media graph (``VoxEngine.create_conference()``).

    Endpoints are calls (and other conferences) that send audio to it or
    receive its mix. :meth:`add` does both; ``call.send_media_to(conf)`` and
    ``conf.send_media_to(call)`` one way each.
    """

    def __init__(self, graph: MediaGraph, name: str | None = None,
                 dispatcher: Dispatcher | None = None, tts: TtsCache | None = None,
                 audio: AudioLoader | None = None) -> None:
        self.id = secrets.token_hex(8)
        self.name = name or f"conference-{self.id}"
        self.graph = graph
        self.dispatcher: Dispatcher = dispatcher or _DirectDispatcher()
        self.emitter = Emitter()
        self.stopped = False
        self._members: dict[Node, _Member] = {}
        self._playback: Playback | None = None
        self._tts_cache = tts
        self._audio_loader = audio
        self.recordings: list[Recording] = []

    def __repr__(self) -> str:
        return f"<Conference {self.name} {len(self._members)} endpoints{' stopped' if self.stopped else ''}>"

    # -- events (add_event_listener, on, remove_event_listener: Listeners) --------

    def _emit(self, name: ConferenceEvents, endpoint: Node | None = None, **extra: Any) -> None:
        self.emitter.emit(str(name), ConferenceEvent(str(name), self, endpoint, extra))

    # -- endpoints --------------------------------------------------------------

    @property
    def endpoints(self) -> list[Node]:
        """Calls and conferences connected to it, in joining order."""
        return list(self._members)

    def __contains__(self, node: object) -> bool:
        return node in self._members

    def add(self, endpoint: Node, *, mute: bool = False, deaf: bool = False, volume: float = 1.0) -> None:
        """Join ``endpoint`` both ways: it is heard (unless ``mute``) and hears
        everyone else (unless ``deaf``)."""
        self.graph._check_node(endpoint)
        self._check_live()
        if endpoint is self:
            raise ConferenceError("a conference cannot join itself")
        m = self._member(endpoint)
        m.sending = m.receiving = True
        m.mute, m.deaf = bool(mute), bool(deaf)
        m.volume = _check_volume(volume)
        self.graph._changed()

    def remove(self, endpoint: Node) -> None:
        """Disconnect ``endpoint`` both ways (nothing if it is not here)."""
        if self._members.pop(endpoint, None) is not None:
            self.graph._changed()
            self._emit(ConferenceEvents.EndpointRemoved, endpoint)

    def set_mute(self, endpoint: Node, mute: bool = True) -> None:
        """Take no audio from ``endpoint`` (or again, with ``False``)."""
        self._require(endpoint).mute = bool(mute)
        self.graph._changed()

    def set_deaf(self, endpoint: Node, deaf: bool = True) -> None:
        """Send no audio to ``endpoint`` (or again, with ``False``)."""
        self._require(endpoint).deaf = bool(deaf)
        self.graph._changed()

    def set_volume(self, endpoint: Node, volume: float) -> None:
        """Linear gain on what ``endpoint`` contributes (1.0 as is, 0..4)."""
        self._require(endpoint).volume = _check_volume(volume)
        self.graph._changed()

    def is_muted(self, endpoint: Node) -> bool:
        return self._require(endpoint).mute

    def is_deaf(self, endpoint: Node) -> bool:
        return self._require(endpoint).deaf

    def _require(self, endpoint: Node) -> _Member:
        try:
            return self._members[endpoint]
        except KeyError:
            raise ConferenceError(f"{endpoint!r} is not in {self.name}") from None

    def _member(self, endpoint: Node) -> _Member:
        m = self._members.get(endpoint)
        if m is None:
            m = self._members[endpoint] = _Member()
            self.graph._watch(endpoint)
            self._emit(ConferenceEvents.EndpointAdded, endpoint)
        return m

    def _drop_if_idle(self, endpoint: Node) -> None:
        m = self._members.get(endpoint)
        if m is not None and not m.sending and not m.receiving:
            self.remove(endpoint)

    def _check_live(self) -> None:
        if self.stopped:
            raise ConferenceError(f"{self.name} has been stopped")

    # -- flows ------------------------------------------------------------------

    def send_media_to(self, target: Node) -> None:
        """``target`` hears this conference's mix (minus its own voice)."""
        self.graph.connect(self, target)

    def stop_media_to(self, target: Node) -> None:
        self.graph.disconnect(self, target)

    # -- playback (PlaybackMixin: say, start_playback, tones) and recording ------

    @functools.cached_property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return logging.LoggerAdapter(logger, {"conference": self.name})

    def _check_media(self) -> None:
        self._check_live()

    def _media_ended(self) -> bool:
        return self.stopped

    def _play(self, source: FrameSource, done: Callable[[bool], None]) -> None:
        self._check_live()
        self.graph.start_player(self, source, done)

    def _stop_media(self) -> None:
        self.graph.stop_player(self)

    def _tts(self) -> TtsCache:
        return self._tts_cache or default_tts()

    def _audio(self) -> AudioLoader:
        return self._audio_loader or default_audio_loader()

    def _playback_done(self, pb: Playback, completed: bool, error: str | None = None) -> None:
        if self._playback is pb:
            self._playback = None
        if pb._resolve(completed, error):
            self._emit(ConferenceEvents.PlaybackFinished, playback=pb, completed=completed, error=error)

    def record(self, path: str | Path | None = None) -> Recording:
        """Record the conference's mix to a WAV (default: under the data
        directory's ``recordings/``); ``RecordStarted``/``RecordStopped``."""
        self._check_live()
        rec = self.graph.start_recording(self, path)
        self.recordings.append(rec)
        rec.on_stopped.append(
            lambda r: self._emit(ConferenceEvents.RecordStopped, path=str(r.path), duration=r.duration))
        self._emit(ConferenceEvents.RecordStarted, path=str(rec.path))
        return rec

    def stream_to(self, url: str, *, direction: str = "both", headers: dict[str, str] | None = None,
                  custom: dict[str, str] | None = None, format: str = "twilio",
                  rate: int = 8000) -> MediaStream:
        """Stream the conference's mix to a WebSocket bot (its ``inbound``
        track: the mix minus the bot) and mix in what the bot sends back,
        as :meth:`Call.stream_to <engine.calls.call.Call.stream_to>` does
        for a call; the stream ends with the conference."""
        from engine.calls.media_stream import start_stream

        self._check_live()
        stream = start_stream(self, self.graph, url, direction=direction, headers=headers, custom=custom,
                              format=format, rate=rate, conference=True)
        self.emitter.on(str(ConferenceEvents.Stopped), lambda _e: stream._end("conference stopped", True))
        return stream

    # -- end --------------------------------------------------------------------

    def stop(self) -> None:
        """End the conference: endpoints removed, playback and recordings
        stopped, ``Stopped``. Idempotent."""
        if self.stopped:
            return
        self.stop_playback()
        for endpoint in list(self._members):
            self.remove(endpoint)
        self.stopped = True
        self.graph._forget(self)
        self._emit(ConferenceEvents.Stopped)


def _is_wire(node: Node) -> TypeGuard[Leg]:
    """An internal call: what is sent to it comes out of its other end."""
    return not isinstance(node, Conference) and node.media_wire


def _is_media_leg(node: Node) -> TypeGuard[Leg]:
    """A call with media of its own (a port the bridge pulls and pushes)."""
    return not isinstance(node, Conference) and not node.media_wire


def _check_volume(volume: float) -> float:
    v = float(volume)
    if not 0.0 <= v <= 4.0:
        raise ConferenceError(f"volume must be between 0 and 4, not {volume}")
    return v


@dataclass(eq=False)
class _Plan:
    """A compiled graph: the bridge's plan, plus what the graph needs to
    know about it (which legs it drives, which players it reads)."""

    bridge: BridgePlan[Leg]
    legs: set[Leg]                       # every leg the graph drives
    players: list[_Player]               # the bridge's player rows, in order


def _listen_only(node: object) -> bool:
    """Whether ``node`` is a call whose grant only listens (role
    ``subscriber``): its audio goes nowhere, whatever the routing."""
    grant = getattr(node, "grant", None)
    return bool(getattr(grant, "listen_only", False))


class MediaGraph:
    """The engine's media routing (see the module notes).

    :param clock: the media clock that ticks it while it has work.
    :param rate: the internal sample rate (8000 now).
    :param recordings_dir: where :meth:`start_recording` puts files by default.
    :param silence_suppression: send legs nothing while their mix is
        silence (:mod:`engine.media.dtx`; ``--silence-suppression``).
    """

    def __init__(self, clock: MediaClock, rate: int = SAMPLE_RATE,
                 recordings_dir: Path | str = Path("data") / "recordings",
                 silence_suppression: bool = False) -> None:
        self.clock = clock
        self.rate = rate
        self.samples = rate // 50
        #: The port-level mixer that runs the compiled plan each tick.
        self.bridge: Bridge[Leg] = Bridge(self.samples)
        if silence_suppression:
            self.bridge.dtx = Suppressor()
        self.recordings_dir = Path(recordings_dir)
        self._edges: dict[Node, dict[Node, float]] = {}
        self._conferences: dict[Conference, None] = {}
        self._players: dict[Node, _Player] = {}
        self._recordings: dict[Node, list[Recording]] = {}
        #: Track taps (media streams): each tapped leg's sinks.
        self._track_taps: dict[Leg, list[TrackSink]] = {}
        #: Sinks that only receive (speech recognition): a leg's received
        #: audio, or a conference's mix, one frame a tick.
        self._taps: dict[Node, list[FrameSink]] = {}
        self._watched: set[Leg] = set()
        self._plan: _Plan | None = None
        #: Nodes whose audio goes nowhere (a moderator muted them).
        self._muted: set[Node] = set()
        #: Called with each recording once its file is complete (the engine
        #: sends the ``recording.ready`` webhook from here).
        self.on_recording_done: list[Callable[[Recording], None]] = []
        self.ticks = 0
        #: The clock's skipped ticks at this graph's last tick (``None``: it
        #: was idle, off the clock, so skips since are not its own).
        self._skips_seen: int | None = None

    @property
    def tick_times(self) -> list[tuple[float, float, float, float]] | None:
        """When a list (benches): each tick appends ``(start, pull, mix, push)``,
        its ``perf_counter`` start and the seconds each phase took."""
        return self.bridge.tick_times

    @tick_times.setter
    def tick_times(self, times: list[tuple[float, float, float, float]] | None) -> None:
        self.bridge.tick_times = times

    @property
    def conferences(self) -> tuple[Conference, ...]:
        """The conferences open now (the engine's metrics count them)."""
        return tuple(self._conferences)

    @property
    def _attached(self) -> dict[Leg, AudioPort]:
        """The legs whose ports the bridge drives now."""
        return self.bridge.attached

    # -- editing ----------------------------------------------------------------

    def create_conference(self, name: str | None = None, dispatcher: Dispatcher | None = None,
                          tts: TtsCache | None = None, audio: AudioLoader | None = None) -> Conference:
        conf = Conference(self, name, dispatcher, tts, audio)
        self._conferences[conf] = None
        return conf

    def connect(self, src: Node, dst: Node, gain: float = 1.0) -> None:
        """``dst`` hears ``src`` (idempotent; ``gain`` for call-to-call flows)."""
        self._check_node(src)
        self._check_node(dst)
        if isinstance(dst, Conference):
            if src is dst:
                raise ConferenceError("a conference cannot send media to itself")
            dst._check_live()
            dst._member(src).sending = True
        elif isinstance(src, Conference):
            src._check_live()
            src._member(dst).receiving = True
        else:
            self._watch(src)
            self._watch(dst)
            self._edges.setdefault(src, {})[dst] = float(gain)
        self._changed()

    def disconnect(self, src: Node, dst: Node) -> None:
        """Stop the flow ``src -> dst`` (nothing if there is none)."""
        if isinstance(dst, Conference):
            m = dst._members.get(src)
            if m is not None:
                m.sending = False
                dst._drop_if_idle(src)
        elif isinstance(src, Conference):
            m = src._members.get(dst)
            if m is not None:
                m.receiving = False
                src._drop_if_idle(dst)
        else:
            out = self._edges.get(src)
            if out is not None and out.pop(dst, None) is not None and not out:
                del self._edges[src]
        self._changed()

    def set_muted(self, node: Node, muted: bool = True) -> None:
        """Mute (or unmute) everything ``node`` sends: its audio reaches no
        leg and no conference, however it is routed. Muting a conference's
        internal leg mutes the caller behind it (a browser or a phone alike),
        which is how a room moderator mutes a participant."""
        self._check_node(node)
        if not muted and _listen_only(node):
            raise ConferenceError(f"{node!r} is listen-only (role subscriber): it cannot be unmuted")
        if muted:
            self._muted.add(node)
        else:
            self._muted.discard(node)
        self._changed()

    def is_muted(self, node: Node) -> bool:
        return node in self._muted

    def flows(self) -> list[tuple[Node, Node]]:
        """Every flow as the scenario set it: ``(source, target)`` pairs."""
        result = [(s, d) for s, out in self._edges.items() for d in out]
        for conf in self._conferences:
            for node, m in conf._members.items():
                if m.sending:
                    result.append((node, conf))
                if m.receiving:
                    result.append((conf, node))
        return result

    def remove_node(self, node: Node) -> None:
        """Forget every flow, player and recording of ``node`` (its call ended)."""
        self._edges.pop(node, None)
        for out in list(self._edges.values()):
            out.pop(node, None)
        for src in [s for s, out in self._edges.items() if not out]:
            del self._edges[src]
        for conf in list(self._conferences):
            conf.remove(node)
        self.stop_player(node)
        if not isinstance(node, Conference):
            self._track_taps.pop(node, None)
        for rec in list(self._recordings.get(node, ())):
            self._stop_recording(rec)
        self._taps.pop(node, None)
        if not isinstance(node, Conference):
            self._watched.discard(node)
        self._muted.discard(node)
        self._changed()

    def replace_node(self, old: Node, new: Node) -> None:
        """Put ``new`` in ``old``'s place: every flow to or from ``old``, its
        conference memberships (mute, deaf, volume) and its moderator mute
        move to ``new`` (a transfer, an INVITE with Replaces, RFC 3891).
        ``old`` keeps its players and recordings until it ends."""
        self._check_node(new)
        for src, out in list(self._edges.items()):
            if old in out:
                gain = out.pop(old)
                if src is not new:
                    out[new] = gain
            if not out:
                del self._edges[src]
        moved = self._edges.pop(old, None)
        if moved:
            moved.pop(new, None)
            if moved:
                self._edges.setdefault(new, {}).update(moved)
        self._watch(new)
        for conf in self._conferences:
            member = conf._members.pop(old, None)
            if member is not None:
                conf._members[new] = member
        if old in self._muted:
            self._muted.discard(old)
            self._muted.add(new)
        self._changed()

    def _check_node(self, node: object) -> None:
        if isinstance(node, Conference):
            if node.graph is not self:
                raise ConferenceError(f"{node!r} belongs to another engine")
            return
        if not isinstance(node, Leg):
            raise ConferenceError(f"media flows join calls and conferences, not {type(node).__name__}")
        if node.state.ended:
            raise ConferenceError(f"{node!r} has ended")

    def _watch(self, node: Node) -> None:
        if not isinstance(node, Conference) and node not in self._watched:
            self._watched.add(node)
            node.on_ended.append(self.remove_node)

    def _forget(self, conf: Conference) -> None:
        self._conferences.pop(conf, None)
        # its recordings end with it (a room recorded from the start ends
        # when its session does, and recording.ready must follow)
        for rec in list(self._recordings.get(conf, ())):
            self._stop_recording(rec)
        self._taps.pop(conf, None)
        for out in self._edges.values():
            out.pop(conf, None)
        for other in list(self._conferences):
            other.remove(conf)
        self._changed()

    def _changed(self) -> None:
        self._plan = None
        try:
            self.clock.add(self)
        except RuntimeError:  # no running loop (tools, unit tests)
            pass

    # -- players and recorders --------------------------------------------------

    def start_player(self, node: Node, source: FrameSource, done: Done | None = None) -> None:
        """Play ``source`` to ``node`` (a conference or an internal call;
        a media leg plays through its own session), replacing any player."""
        self.stop_player(node)
        self._players[node] = _Player(source, done)
        self._changed()

    def stop_player(self, node: Node) -> None:
        player = self._players.pop(node, None)
        if player is not None:
            self._changed()
            if player.done is not None:
                player.done(False)

    def start_recording(self, node: Node, path: str | Path | None = None) -> Recording:
        """Record ``node`` (a call: what it hears and says; a conference:
        its mix) to a WAV file.

        :raises ConferenceError: the file cannot be created.
        """
        self._check_node(node)
        if path is None:
            day = time.strftime("%Y-%m-%d", time.gmtime())
            path = self.recordings_dir / day / f"{getattr(node, 'id', 'x')}-{secrets.token_hex(4)}.wav"
        try:
            recorder = WavRecorder(Path(path), self.rate)
        except RecorderError as exc:
            raise ConferenceError(str(exc)) from None
        rec = Recording(self, node, recorder)
        rec.on_stopped.append(self._recording_done)
        self._watch(node)
        self._recordings.setdefault(node, []).append(rec)
        self._changed()
        return rec

    def add_tap(self, node: Node, sink: TrackSink) -> None:
        """Hand ``sink`` each tick what the call ``node`` said and what it
        was sent, apart (:meth:`~engine.media.bridge.TrackSink.write_tracks`),
        until :meth:`remove_tap` or the call's end."""
        self._check_node(node)
        if not _is_media_leg(node):
            raise ConferenceError("a tap needs a call with media of its own, not a conference or an internal call")
        self._watch(node)
        self._track_taps.setdefault(node, []).append(sink)
        self._changed()

    def remove_tap(self, node: Node, sink: TrackSink) -> None:
        """Stop what :meth:`add_tap` started (nothing if it is not there)."""
        if isinstance(node, Conference):
            return
        sinks = self._track_taps.get(node)
        if sinks is not None and sink in sinks:
            sinks.remove(sink)
            if not sinks:
                del self._track_taps[node]
            self._changed()

    def start_tap(self, node: Node, sink: FrameSink) -> None:
        """Give ``sink`` what ``node`` says (a call: its received audio,
        without what it hears; a conference: its mix), one 20 ms frame per
        tick, until :meth:`stop_tap` or the node's end. ``sink.write`` runs
        on the media tick: it must only queue the frame."""
        self._check_node(node)
        if _is_wire(node):
            raise ConferenceError(f"{node!r} is an internal call with no audio of its own to tap")
        self._watch(node)
        self._taps.setdefault(node, []).append(sink)
        self._changed()

    def stop_tap(self, node: Node, sink: FrameSink) -> None:
        """Stop what :meth:`start_tap` started (nothing if not tapped)."""
        sinks = self._taps.get(node)
        if sinks is not None and sink in sinks:
            sinks.remove(sink)
            if not sinks:
                del self._taps[node]
            self._changed()

    def _recording_done(self, rec: Recording) -> None:
        for hook in list(self.on_recording_done):
            try:
                hook(rec)
            except Exception:
                logger.exception("recording hook failed")

    def _stop_recording(self, rec: Recording) -> None:
        recs = self._recordings.get(rec.node)
        if recs is not None and rec in recs:
            recs.remove(rec)
            if not recs:
                del self._recordings[rec.node]
            self._changed()
        rec._finish()

    # -- compiling --------------------------------------------------------------

    def _targets(self, src: Node, seen: set[Leg]) -> list[tuple[Node, float]]:
        """Where ``src``'s audio ends up: legs and conferences, through
        internal-call wires."""
        out: list[tuple[Node, float]] = []
        if src in self._muted or _listen_only(src):
            return out
        for dst, gain in self._edges.get(src, {}).items():
            out.extend(self._resolve(dst, gain, seen))
        for conf in self._conferences:
            m = conf._members.get(src)
            if m is not None and m.sending and not m.mute:
                out.append((conf, m.volume))
        return out

    def _resolve(self, dst: Node, gain: float, seen: set[Leg]) -> list[tuple[Node, float]]:
        """A target: itself, or for an internal call the targets of its other end."""
        if not isinstance(dst, Conference) and dst.media_wire:
            peer = dst._wire_peer()
            if peer is None or peer in seen or peer.state.ended:
                return []
            seen.add(peer)
            return [(n, g * gain) for n, g in self._targets(peer, seen)]
        return [(dst, gain)]

    def _compile(self) -> _Plan:
        rows: dict[Node, int] = {}          # source legs and players -> row
        sources: list[Leg] = []
        players: list[Node] = []
        conf_index = {c: i for i, c in enumerate(self._conferences)}
        direct_conf: list[dict[int, float]] = [{} for _ in conf_index]   # row -> gain into conference
        conf_links: list[set[int]] = [set() for _ in conf_index]         # conferences feeding each
        receivers: dict[Leg, dict[int, float]] = {}                      # leg -> {row: gain}
        hears_conf: dict[Leg, set[int]] = {}

        def row_of(leg: Leg) -> int:
            if leg not in rows:
                rows[leg] = len(sources)
                sources.append(leg)
            return rows[leg]

        def flow(row: int, target: Node, gain: float) -> None:
            if isinstance(target, Conference):
                if target in conf_index:
                    d = direct_conf[conf_index[target]]
                    d[row] = max(d.get(row, 0.0), gain)
            else:
                recv = receivers.setdefault(target, {})
                recv[row] = recv.get(row, 0.0) + gain

        # Legs with media of their own, as sources.
        legs = [n for n in self._watched if not n.media_wire and not n.state.ended]
        for leg in legs:
            for target, gain in self._targets(leg, set()):
                flow(row_of(leg), target, gain)
        # Conferences as sources: receivers hear their sums.
        for conf, ci in conf_index.items():
            for node, m in conf._members.items():
                if isinstance(node, Conference) and m.sending and not m.mute and node in conf_index:
                    conf_links[ci].add(conf_index[node])  # node's sources flow into conf
                if not m.receiving or m.deaf:
                    continue
                for target, _gain in self._resolve(node, 1.0, set()):
                    if isinstance(target, Conference):
                        if target is not conf and target in conf_index:
                            conf_links[conf_index[target]].add(ci)
                    else:
                        hears_conf.setdefault(target, set()).add(ci)
        # Players, after the legs: rows S..S+P-1 (rows are renumbered below).
        player_targets: list[list[tuple[Node, float]]] = []
        for node in self._players:
            players.append(node)
            player_targets.append(self._resolve(node, 1.0, set()) if _is_wire(node) else [(node, 1.0)])
        # Recorded legs need their incoming audio.
        for node in [*self._recordings, *self._taps]:
            if _is_media_leg(node):
                row_of(node)
        for leg in self._track_taps:
            row_of(leg)
        for leg in hears_conf:
            row_of(leg)  # for subtracting its own voice
        num_legs = len(sources)
        for p, targets in enumerate(player_targets):
            for target, gain in targets:
                if _is_media_leg(target) and target is players[p]:
                    continue  # a leg's own player is mixed by the leg
                flow(num_legs + p, target, gain)
        num_rows = num_legs + len(players)

        # Full membership of each conference through conference links.
        full: list[dict[int, float]] = []
        for ci in range(len(conf_index)):
            merged: dict[int, float] = {}
            todo, seen = [ci], {ci}
            while todo:
                c = todo.pop()
                for row, g in direct_conf[c].items():
                    merged[row] = max(merged.get(row, 0.0), g)
                for up in conf_links[c]:
                    if up not in seen:
                        seen.add(up)
                        todo.append(up)
            full.append(merged)
        stage1 = FlowMatrix(num_rows, len(full),
                            [(row, ci, g) for ci, m in enumerate(full) for row, g in m.items()])
        recv_list = list(dict.fromkeys([*receivers, *hears_conf]))
        recv_index = {leg: i for i, leg in enumerate(recv_list)}
        edges2: list[tuple[int, int, float]] = []
        for leg, i in recv_index.items():
            for row, g in receivers.get(leg, {}).items():
                edges2.append((row, i, g))
            own = rows.get(leg)
            for ci in hears_conf.get(leg, ()):
                edges2.append((num_rows + ci, i, 1.0))
                w = full[ci].get(own, 0.0) if own is not None else 0.0
                if w:
                    edges2.append((own, i, -w))  # type: ignore[arg-type]
        stage2 = FlowMatrix(num_rows + len(full), len(recv_list), edges2)
        leg_rec: list[tuple[FrameSink, Leg, int | None, int | None]] = []
        mix_rec: list[tuple[FrameSink, int]] = []
        for node, recs in self._recordings.items():
            for rec in recs:
                if isinstance(node, Conference):
                    if node in conf_index:
                        mix_rec.append((rec.recorder, conf_index[node]))
                else:
                    leg_rec.append((rec.recorder, node, rows.get(node), recv_index.get(node)))
        leg_taps = [(sink, leg, rows.get(leg), recv_index.get(leg))
                    for leg, sinks in self._track_taps.items() for sink in sinks]
        taps: list[tuple[FrameSink, int]] = []
        for node, sinks in self._taps.items():
            if isinstance(node, Conference):
                if node in conf_index:
                    mix_rec.extend((sink, conf_index[node]) for sink in sinks)
            elif node in rows:
                taps.extend((sink, rows[node]) for sink in sinks)
        driven = set(sources) | set(recv_list)
        silent = [leg for leg in sources if leg not in recv_index]
        playing = [self._players[node] for node in players]
        bridge = BridgePlan(sources, [player.source for player in playing], recv_list, stage1, stage2,
                            leg_rec, mix_rec, silent, leg_taps=leg_taps, taps=taps)
        return _Plan(bridge, driven, playing)

    # -- ticking ----------------------------------------------------------------

    def _detach_stale(self, plan: _Plan) -> None:
        for leg in [leg for leg in self.bridge.attached if leg not in plan.legs or leg.state.ended]:
            try:
                self.bridge.detach(leg)
            except Exception:
                logger.exception("detaching %r failed", leg)

    def tick(self, now: float) -> bool:
        """One 20 ms frame for every flow (a :class:`MediaClock` sink): the
        bridge pulls every source, mixes, pushes every receiver."""
        plan = self._plan
        if plan is None:
            plan = self._plan = self._compile()
            self._detach_stale(plan)
        if plan.bridge.idle:
            self._skips_seen = None
            return False
        skipped = self.clock.skipped
        seen, self._skips_seen = self._skips_seen, skipped
        if seen is not None and skipped != seen:
            self.bridge.record_gap(plan.bridge, skipped - seen)  # recordings keep time
        self.ticks += 1
        finished = self.bridge.tick(plan.bridge, now)
        for p in finished:
            player = plan.players[p]
            for node, current in list(self._players.items()):
                if current is player:
                    del self._players[node]
                    self._plan = None
                    if current.done is not None:
                        current.done(True)
        return True

    async def stop(self) -> None:
        """Stop every conference and recording (engine shutdown)."""
        for conf in list(self._conferences):
            conf.stop()
        for recs in list(self._recordings.values()):
            for rec in list(recs):
                self._stop_recording(rec)
        self._taps.clear()
        self._track_taps.clear()
        for leg in list(self.bridge.attached):
            self.bridge.detach(leg)
