"""A call's (or a conference's) audio streamed to a WebSocket bot, both ways.

``call.stream_to(url)`` (and ``conference.stream_to(url)``) returns a
:class:`MediaStream`: an awaitable handle (style.md section 8) with
:meth:`MediaStream.stop`, ``StreamStarted``/``StreamStopped``/``StreamError``
events (:class:`StreamEvents`, on the handle and on the call or conference)
and :attr:`MediaStream.stats`.

In the media graph (:mod:`engine.calls.conference`) a stream is a node of
its own, with a port (pjmedia's passive port):

- for a call, a *tap* (:meth:`MediaGraph.add_tap`) hands it each tick what
  the caller said (``inbound``) and what the caller was sent (``outbound``),
  and the node's port plays the bot's audio to the call (an edge
  ``stream -> call``, mixed with whatever else the call hears);
- for a conference, the node is a member: its port receives the mix minus
  its own voice (the ``inbound`` track) and its audio is heard by all.

Framing, µ-law, the playout queue, marks and the bounds on what the bot may
queue are the sans-IO :mod:`engine.media.stream_codec`; the socket, its
reconnects and the bounded send queue are :mod:`engine.transport.ws_client`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from yarl import URL

from engine.calls.call import Action, CallError, Dispatcher, Emitter, ExtraFields, Listeners, _DirectDispatcher
from engine.media.pcm import Pcm
from engine.media.stream_codec import (
    BadFrame,
    BotCleared,
    BotStopped,
    Frame,
    OutgoingFrame,
    QueueFull,
    SendQueue,
    StreamCodec,
    StreamConfig,
    StreamConfigError,
)
from engine.security_log import security_event
from engine.transport.ws_client import WsClient

__all__ = ["MediaStream", "StreamEvent", "StreamEvents", "check_stream_url", "start_stream"]

logger = logging.getLogger(__name__)

#: Reconnection attempts in a row, and the backoff's first and longest delay (s).
RECONNECT_ATTEMPTS = 5
RECONNECT_BACKOFF = (0.2, 5.0)
#: Frames waiting for the socket at most (5 s of one track).
SEND_QUEUE_FRAMES = 250
#: Header names a scenario may not set on the upgrade request (aiohttp's own).
_RESERVED_HEADERS = frozenset({"host", "upgrade", "connection", "sec-websocket-key",
                               "sec-websocket-version", "sec-websocket-extensions", "content-length"})


class StreamEvents(str, enum.Enum):
    """What a stream emits (on its handle, and on its call or conference)."""

    #: A connection to the bot is up and the opening frames are queued
    #: (``e.reconnect``: not the first connection).
    StreamStarted = "StreamStarted"
    #: The stream ended for good (``e.reason``: ``"stopped"``, ``"call ended"``,
    #: ``"gave up"``, ``"bot disconnected"``).
    StreamStopped = "StreamStopped"
    #: The connection failed or dropped (``e.error``, ``e.retry_in`` seconds
    #: or ``None`` when it gives up).
    StreamError = "StreamError"

    def __str__(self) -> str:
        return self.value


@dataclass
class StreamEvent(ExtraFields):
    """What a stream listener receives; other fields in ``extra``."""

    name: str
    stream: MediaStream
    extra: dict[str, Any] = field(default_factory=dict)


class _Graph(Protocol):
    """The media graph as a stream uses it (:class:`~engine.calls.conference.MediaGraph`)."""

    def connect(self, src: Any, dst: Any, gain: float = 1.0) -> None: ...

    def disconnect(self, src: Any, dst: Any) -> None: ...

    def add_tap(self, node: Any, sink: Any) -> None: ...

    def remove_tap(self, node: Any, sink: Any) -> None: ...


class _Target(Protocol):
    id: str
    emitter: Emitter


@dataclass
class _StreamState:
    ended: bool = False


def check_stream_url(url: str) -> str:
    """``url`` if it is a ``ws://`` or ``wss://`` URL with a host.

    :raises CallError: it is not (names what is wrong).
    """
    if not isinstance(url, str):
        raise CallError(f"stream URL must be a string, not {type(url).__name__}")
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise CallError(f"stream URL is not a URL: {exc}") from None
    if parsed.scheme not in ("ws", "wss"):
        raise CallError(f"stream URL must be ws:// or wss://, not {parsed.scheme or 'no scheme'}://")
    if not parsed.host:
        raise CallError("stream URL has no host")
    if any(c in url for c in "\r\n\x00 "):
        raise CallError("stream URL contains whitespace or control characters")
    return url


def _check_headers(headers: dict[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise CallError("stream headers map strings to strings")
        if not name or any(c in name for c in "\r\n: \t\x00") or any(c in value for c in "\r\n\x00"):
            raise CallError(f"stream header {name!r} has characters a header cannot hold")
        if name.lower() in _RESERVED_HEADERS:
            raise CallError(f"stream header {name!r} is set by the WebSocket handshake itself")
        out[name] = value
    return out


class _StreamPort:
    """The stream's :class:`~engine.media.ports.AudioPort`: :meth:`pull`
    is the bot's audio, :meth:`push` the conference mix (for a conference
    stream)."""

    last_sent: Pcm | None = None

    def __init__(self, stream: MediaStream) -> None:
        self.stream = stream

    def graph_attach(self) -> None:
        pass

    def graph_detach(self) -> None:
        pass

    def pull(self, now: float) -> Pcm | None:
        return self.stream._pull(now)

    def push(self, frame: Pcm | None) -> bool:
        if frame is not None:
            self.stream._push(frame)
        return False


class MediaStream(Action, Listeners):
    """One stream to a bot (see the module notes). Awaiting it returns when
    it ends: ``True`` when stopped (by :meth:`stop`, the call's end or the
    bot), ``False`` when the connection could not be kept."""

    kind = "stream"
    #: A node of the media graph with media of its own (its port).
    media_wire = False

    def __init__(self, target: _Target, graph: _Graph, url: str, config: StreamConfig, *,
                 headers: dict[str, str] | None = None, dispatcher: Dispatcher | None = None,
                 conference: bool = False, attempts: int = RECONNECT_ATTEMPTS,
                 backoff: tuple[float, float] = RECONNECT_BACKOFF,
                 send_queue: int = SEND_QUEUE_FRAMES) -> None:
        super().__init__()
        self.id = config.stream_sid
        self.target = target
        self.graph = graph
        self.url = url
        self.config = config
        self.dispatcher: Dispatcher = dispatcher or _DirectDispatcher()
        self.emitter = Emitter()
        self.codec = StreamCodec(config)
        self.queue = SendQueue(send_queue)
        self.client = WsClient(url, self, self.queue, headers=headers, attempts=attempts, backoff=backoff,
                               max_msg_size=4 * config.max_frame_bytes)
        self.on_ended: list[Callable[[Any], None]] = []
        self.reason: str | None = None
        self._state = _StreamState()
        self._port = _StreamPort(self)
        self._conference = conference
        self._tick_now: float | None = None
        self._started = False
        host = URL(url).host or "?"
        self._src = host

    def __repr__(self) -> str:
        return f"<MediaStream {self.id[:10]} of {self.target.id[:8]} {'ended' if self.ended else 'live'}>"

    @functools.cached_property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return logging.LoggerAdapter(logger, {"stream": self.id, "call_id": self.target.id})

    # -- the media graph's view (a Leg) ---------------------------------------

    @property
    def state(self) -> _StreamState:
        return self._state

    @property
    def ended(self) -> bool:
        return self._state.ended

    def media_port(self) -> _StreamPort | None:
        return None if self._state.ended else self._port

    def _wire_peer(self) -> None:
        return None

    def _pull(self, now: float) -> Pcm | None:
        """The bot's audio for this tick; mark echoes due are queued."""
        self._tick_now = now
        pcm, echoes = self.codec.playout()
        self._send(echoes, now, media=False)
        return pcm

    def _push(self, frame: Pcm) -> None:
        """A conference stream's mix minus its own voice."""
        now = self._tick_now if self._tick_now is not None else asyncio.get_running_loop().time()
        self._send(self.codec.media(frame, None, now), now, media=True)

    def write_tracks(self, inbound: Pcm | None, outbound: Pcm | None) -> None:
        """A call stream's tracks this tick (:class:`~engine.media.bridge.TrackSink`)."""
        if self._state.ended:
            return
        now = self._tick_now if self._tick_now is not None else asyncio.get_running_loop().time()
        self._send(self.codec.media(inbound, outbound, now), now, media=True)

    def send_dtmf(self, digit: str) -> None:
        """Tell the bot the caller pressed ``digit`` (the call's
        ``ToneReceived``, while its tones are handled)."""
        if not self._state.ended:
            self._send(self.codec.dtmf(digit), asyncio.get_running_loop().time(), media=False)

    def _send(self, frames: list[Frame], stamp: float, *, media: bool) -> None:
        if not frames:
            return
        for frame in frames:
            self.queue.put(OutgoingFrame(frame, stamp, media))
        self.client.wake()

    # -- the socket's view (a WsHandler) -------------------------------------

    def on_open(self, attempt: int) -> list[Frame]:
        loop_now = asyncio.get_running_loop().time()
        self.log.info("stream connected (attempt %d)", attempt)
        self._emit(StreamEvents.StreamStarted, reconnect=attempt > 0)
        self._started = True
        return self.codec.opening(loop_now)

    def on_frame(self, data: Frame) -> None:
        try:
            events, replies = self.codec.receive(data)
        except Exception:  # the codec never raises on input; belt and braces
            self.log.exception("stream frame handling failed")
            return
        if replies:
            self._send(replies, asyncio.get_running_loop().time(), media=False)
        for event in events:
            if isinstance(event, BadFrame):
                security_event("stream_bad_frame", self._src, reason=event.reason, stream=self.id[:16])
            elif isinstance(event, QueueFull):
                self.log.info("bot audio over the queue cap: %d samples dropped", event.samples)
            elif isinstance(event, BotCleared):
                self.log.debug("bot cleared %d samples", event.samples)
            elif isinstance(event, BotStopped):
                asyncio.get_running_loop().call_soon(self._end, "bot disconnected", True)

    def on_drop(self, error: str, retry_in: float | None) -> None:
        self.log.info("stream connection lost: %s (retry in %s)", error, retry_in)
        self._emit(StreamEvents.StreamError, error=error, retry_in=retry_in)
        if retry_in is None:
            self._end("gave up", False, close=False)

    # -- the scenario's view --------------------------------------------------

    def start(self) -> None:
        self.client.start()

    def stop(self) -> None:
        """End the stream: ``stop`` to the bot, socket closed, ``StreamStopped``."""
        self._end("stopped", True)

    def clear(self) -> None:
        """Drop the bot's queued audio now (as the bot's own ``clear`` does)."""
        _samples, marks = self.codec.queue.clear()
        self._send([self.codec.mark_echo(m, cleared=True) for m in marks],
                   asyncio.get_running_loop().time(), media=False)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: frames sent and dropped, lateness to the bot (p99, max,
        seconds), bad frames by reason, bot audio queued and dropped, connections."""
        q = self.codec.queue
        return {
            "connections": self.client.connections,
            "frames_sent": self.client.frames_sent,
            "send_dropped": self.queue.dropped,
            "lateness_p99": self.client.lateness.p99,
            "lateness_max": self.client.lateness.max,
            "bad_frames": dict(self.codec.bad_frames),
            "received": dict(self.codec.received),
            "bot_queued_seconds": q.queued / 8000,
            "bot_dropped_samples": q.dropped_samples,
            "bot_dropped_marks": q.dropped_marks,
        }

    def _end(self, reason: str, completed: bool, close: bool = True) -> None:
        if self._state.ended:
            return
        self._state.ended = True
        self.reason = reason
        try:
            self.graph.remove_tap(self.target, self)
            if self._conference:
                self.graph.disconnect(self, self.target)
                self.graph.disconnect(self.target, self)
            else:
                self.graph.disconnect(self, self.target)
        except Exception:
            self.log.exception("stream detach failed")
        for hook in list(self.on_ended):
            try:
                hook(self)
            except Exception:
                self.log.exception("stream end hook failed")
        self.codec.queue.clear()
        last = self.codec.closing() if self._started and close else []
        now = asyncio.get_running_loop().time()
        task = asyncio.get_running_loop().create_task(
            self.client.close([OutgoingFrame(f, now, False) for f in last]))
        _closing.add(task)
        task.add_done_callback(_closing.discard)
        self.log.info("stream ended (%s)", reason)
        self._emit(StreamEvents.StreamStopped, reason=reason)
        self._settle(completed)

    def _emit(self, name: StreamEvents, **extra: Any) -> None:
        event = StreamEvent(str(name), self, extra)
        self.emitter.emit(str(name), event)
        self.target.emitter.emit(str(name), event)


#: Closing sockets, kept alive until they are closed.
_closing: set[asyncio.Task[None]] = set()


def start_stream(target: Any, graph: Any, url: str, *, direction: str = "both",
                 headers: dict[str, str] | None = None, custom: dict[str, str] | None = None,
                 format: str = "twilio", rate: int = 8000, conference: bool = False,
                 **options: Any) -> MediaStream:
    """Check the parameters, make the stream, put it in the graph and connect.

    :raises CallError: a parameter is wrong (names which).
    """
    check_stream_url(url)
    clean_headers = _check_headers(headers)
    if conference and direction == "outbound":
        raise CallError("a conference stream sends the conference's mix: direction 'both' or 'inbound'")
    try:
        config = StreamConfig(stream_sid="MZ" + secrets.token_hex(16), call_sid=str(target.id),
                              format=format, direction="inbound" if conference else direction,
                              rate=rate, custom=dict(custom or {}),
                              metadata={k: str(v) for k, v in _metadata(target).items()})
    except StreamConfigError as exc:
        raise CallError(str(exc)) from None
    stream = MediaStream(target, graph, url, config, headers=clean_headers,
                         dispatcher=getattr(target, "dispatcher", None), conference=conference, **options)
    if conference:
        target.add(stream)
    else:
        graph.add_tap(target, stream)
        graph.connect(stream, target)
        target.on_ended.append(lambda _call: stream._end("call ended", True))

        def on_tone(event: Any) -> None:
            digit = getattr(event, "tone", None)
            if isinstance(digit, str):
                stream.send_dtmf(digit)

        target.emitter.on("ToneReceived", on_tone)
        stream.on_ended.append(lambda _s: target.emitter.remove_listener("ToneReceived", on_tone))
    stream.start()
    return stream


def _metadata(target: Any) -> dict[str, Any]:
    """jambonz-style call facts for the linear16 metadata frame."""
    out: dict[str, Any] = {}
    for key, attr in (("from", "callerid"), ("to", "number"), ("direction", "direction")):
        value = getattr(target, attr, None)
        if isinstance(value, str):
            out[key] = value
    return out
