"""Sans-IO core of a call's audio stream to a WebSocket bot.

Two wire formats, each the one a family of voice bots already speaks:

- ``"twilio"``: Twilio Media Streams. Text frames of JSON only. To the bot:
  ``connected``, ``start`` (``streamSid``, ``callSid``, ``tracks``,
  ``mediaFormat {encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1}``,
  ``customParameters``), then one ``media`` a 20 ms frame and track
  (``track``, ``chunk``, ``timestamp`` in ms since the start, ``payload``:
  base64 µ-law), ``dtmf``, ``mark`` (echoed when the audio queued before it
  has played, or dropped by a ``clear``) and ``stop``. From the bot:
  ``media`` (µ-law to play), ``mark`` and ``clear`` (drop queued audio:
  barge-in).
- ``"linear16"``: jambonz ``listen``. One JSON text frame of metadata
  first, then binary frames of 16-bit little-endian PCM at 8 or 16 kHz,
  mono for one track or interleaved stereo (inbound left, outbound right)
  for both. From the bot: binary PCM frames to play, and JSON text commands
  ``{"type": "killAudio"}`` (clear) and ``{"type": "mark", "data": {"name": ...}}``.

Theory of operation
-------------------
:class:`StreamCodec` turns what the media graph hands it each 20 ms tick
(:meth:`StreamCodec.media`) into frames, and what the bot sends
(:meth:`StreamCodec.receive`) into audio in a :class:`PlayoutQueue` plus
events. The playout queue is read one frame a tick (:meth:`StreamCodec.playout`),
which also returns the mark echoes due. Nothing here reads a clock or
touches a socket: times are arguments (style.md section 3).

The bot is not trusted: a frame over :attr:`StreamConfig.max_frame_bytes`,
invalid JSON, an unknown event, bad base64 or odd PCM is counted in
:attr:`StreamCodec.bad_frames` and ignored (a :class:`BadFrame` event says
why); what it may queue is capped at :attr:`StreamConfig.max_queue_seconds`
of audio and :attr:`StreamConfig.max_marks` marks, the rest dropped and
counted.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import re
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from engine.media.codecs.g711 import ulaw_decode, ulaw_encode
from engine.media.pcm import FRAME_SAMPLES, Pcm, SAMPLE_RATE

__all__ = [
    "BadFrame",
    "BotCleared",
    "BotEvent",
    "BotStopped",
    "DIRECTIONS",
    "FORMATS",
    "Frame",
    "LatenessMeter",
    "OutgoingFrame",
    "PlayoutQueue",
    "QueueFull",
    "SendQueue",
    "StreamCodec",
    "StreamConfig",
    "StreamConfigError",
    "downsample",
    "upsample",
]

#: Wire formats :class:`StreamCodec` speaks.
FORMATS = ("twilio", "linear16")
#: Which tracks go to the bot: what the caller says, what it hears, or both.
DIRECTIONS = ("both", "inbound", "outbound")
#: A frame on the socket: text (JSON) or binary.
Frame = Union[str, bytes]

_NAME = re.compile(r"^[\x20-\x7e]{1,128}$")  # a mark's name: printable ASCII, bounded


class StreamConfigError(ValueError):
    """A stream asked for with parameters that cannot work (names which)."""


@dataclass(frozen=True)
class StreamConfig:
    """What one stream sends and accepts.

    :param format: ``"twilio"`` or ``"linear16"``.
    :param direction: ``"both"``, ``"inbound"`` (what the caller says) or
        ``"outbound"`` (what the caller hears).
    :param rate: 8000, or 16000 for ``linear16``.
    :param stream_sid: the stream's id (``streamSid``).
    :param call_sid: the call's id (``callSid``).
    :param custom: ``customParameters`` (string to string).
    :param max_queue_seconds: bot audio queued at most (the rest is dropped).
    :param max_frame_bytes: a frame from the bot larger than this is ignored.
    :param max_marks: marks queued at most.
    """

    stream_sid: str
    call_sid: str
    format: str = "twilio"
    direction: str = "both"
    rate: int = SAMPLE_RATE
    account_sid: str = "callbridge"
    custom: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    max_queue_seconds: float = 30.0
    max_frame_bytes: int = 256 * 1024
    max_marks: int = 256

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise StreamConfigError(f"stream format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.direction not in DIRECTIONS:
            raise StreamConfigError(f"stream direction must be one of {', '.join(DIRECTIONS)}, not {self.direction!r}")
        if self.rate not in (8000, 16000):
            raise StreamConfigError(f"stream rate must be 8000 or 16000, not {self.rate!r}")
        if self.format == "twilio" and self.rate != 8000:
            raise StreamConfigError("the twilio format is µ-law at 8000 Hz: rate=16000 needs format='linear16'")
        for what, params in (("custom", self.custom), ("metadata", self.metadata)):
            if not isinstance(params, dict) or len(params) > 64:
                raise StreamConfigError(f"stream {what} parameters must be a dict of at most 64 entries")
            for key, value in params.items():
                if not isinstance(key, str) or not isinstance(value, str) or len(key) > 256 or len(value) > 4096:
                    raise StreamConfigError(f"stream {what} parameters must map strings (keys up to 256 "
                                            f"characters, values up to 4096) to strings: {key!r}")
        if not 0 < self.max_queue_seconds <= 600:
            raise StreamConfigError("max_queue_seconds must be in (0, 600]")

    @property
    def tracks(self) -> list[str]:
        """The tracks sent to the bot, in Twilio's names."""
        return {"both": ["inbound", "outbound"], "inbound": ["inbound"], "outbound": ["outbound"]}[self.direction]


# -- events (what receive() returns) ---------------------------------------------


@dataclass(frozen=True)
class BadFrame:
    """A frame from the bot was ignored; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class BotCleared:
    """The bot dropped its queued audio (``clear`` / ``killAudio``):
    ``samples`` dropped, ``marks`` echoed as cleared."""

    samples: int
    marks: list[str]


@dataclass(frozen=True)
class BotStopped:
    """The bot asked to end the stream (linear16 ``disconnect``)."""


@dataclass(frozen=True)
class QueueFull:
    """Bot audio was dropped: the queue holds :attr:`StreamConfig.max_queue_seconds`."""

    samples: int


BotEvent = Union[BadFrame, BotCleared, BotStopped, QueueFull]


# -- resampling (8 kHz internal <-> 16 kHz on the wire) ----------------------------


def upsample(pcm: Pcm) -> Pcm:
    """8 kHz to 16 kHz: each sample, then the mean of it and the next."""
    x = pcm.astype(np.int32)
    nxt = np.empty_like(x)
    nxt[:-1] = x[1:]
    nxt[-1:] = x[-1:]
    out = np.empty(2 * len(x), dtype=np.int32)
    out[0::2] = x
    out[1::2] = (x + nxt) // 2
    return out.astype(np.int16)


def downsample(pcm: Pcm) -> Pcm:
    """16 kHz to 8 kHz: every other sample after a [1, 2, 1] / 4 low-pass
    centred on it (no half-sample delay)."""
    n = len(pcm) // 2 * 2
    x = pcm[:n].astype(np.int32)
    padded = np.empty(n + 1, dtype=np.int32)
    padded[:n] = x
    padded[n:] = x[-1:] if n else 0
    even = padded[0:n:2]
    after = padded[1:n + 1:2]
    before = np.empty_like(after)
    before[1:] = after[:-1]
    before[:1] = even[:1]
    out: Pcm = ((before + 2 * even + after) // 4).astype(np.int16)
    return out


# -- the bot's audio ----------------------------------------------------------------


class PlayoutQueue:
    """Bot audio waiting to be played, one frame a tick, with marks between.

    A mark's position is the number of samples queued before it; it is due
    once that many have played. :meth:`clear` drops the audio and returns
    every pending mark (Twilio echoes them at a clear).
    """

    def __init__(self, max_samples: int, max_marks: int, frame: int = FRAME_SAMPLES) -> None:
        self.max_samples = max_samples
        self.max_marks = max_marks
        self.frame = frame
        self._chunks: collections.deque[Pcm] = collections.deque()
        self._offset = 0  # samples of _chunks[0] already played
        self.queued = 0   # samples waiting
        self._enqueued = 0  # samples ever queued
        self._played = 0    # samples ever played (or dropped by clear)
        self._marks: collections.deque[tuple[int, str]] = collections.deque()
        #: Samples and marks refused for want of room.
        self.dropped_samples = 0
        self.dropped_marks = 0

    def put(self, pcm: Pcm) -> int:
        """Queue ``pcm``; what does not fit is dropped.

        :return: the samples dropped.
        """
        room = self.max_samples - self.queued
        take = min(room, len(pcm))
        dropped = len(pcm) - take
        if take > 0:
            self._chunks.append(pcm[:take])
            self.queued += take
            self._enqueued += take
        self.dropped_samples += dropped
        return dropped

    def mark(self, name: str) -> bool:
        """A mark after the audio queued so far (``False``: too many, dropped)."""
        if len(self._marks) >= self.max_marks:
            self.dropped_marks += 1
            return False
        self._marks.append((self._enqueued, name))
        return True

    def next_frame(self) -> tuple[Pcm | None, list[str]]:
        """One frame (zero-padded at the end of the audio; ``None`` when
        nothing is queued) and the marks now played."""
        frame: Pcm | None = None
        if self.queued:
            frame = np.zeros(self.frame, dtype=np.int16)
            filled = 0
            while filled < self.frame and self._chunks:
                chunk = self._chunks[0]
                n = min(self.frame - filled, len(chunk) - self._offset)
                frame[filled:filled + n] = chunk[self._offset:self._offset + n]
                filled += n
                self._offset += n
                if self._offset >= len(chunk):
                    self._chunks.popleft()
                    self._offset = 0
            self.queued -= filled
            self._played += filled
        due: list[str] = []
        while self._marks and self._marks[0][0] <= self._played:
            due.append(self._marks.popleft()[1])
        return frame, due

    def clear(self) -> tuple[int, list[str]]:
        """Drop the queued audio: the samples dropped and the pending marks."""
        dropped = self.queued
        self._chunks.clear()
        self._offset = 0
        self.queued = 0
        self._played = self._enqueued
        marks = [name for _, name in self._marks]
        self._marks.clear()
        return dropped, marks


# -- outgoing frames: bounded, oldest media dropped first ----------------------------


@dataclass(frozen=True)
class OutgoingFrame:
    """A frame waiting for the socket: ``stamp`` is the loop time of the
    tick that made it (for lateness), ``media`` whether it may be dropped."""

    data: Frame
    stamp: float
    media: bool


class SendQueue:
    """The frames waiting for the socket, at most ``limit``. When full, the
    oldest media frame goes (counted in :attr:`dropped`); control frames
    (start, mark, dtmf, stop) are never dropped."""

    def __init__(self, limit: int = 250) -> None:
        if limit < 1:
            raise ValueError("a send queue holds at least one frame")
        self.limit = limit
        self._frames: collections.deque[OutgoingFrame] = collections.deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: OutgoingFrame) -> None:
        frames = self._frames
        if len(frames) >= self.limit:
            for i, queued in enumerate(frames):
                if queued.media:
                    del frames[i]
                    self.dropped += 1
                    break
            else:
                if frame.media:
                    self.dropped += 1
                    return
        frames.append(frame)

    def put_front(self, frames: list[OutgoingFrame]) -> None:
        """Frames that must go before everything queued (a new connection's opening)."""
        self._frames.extendleft(reversed(frames))

    def get(self) -> OutgoingFrame | None:
        return self._frames.popleft() if self._frames else None

    def drop_media(self) -> int:
        """Drop every queued media frame (stale after a reconnect); how many."""
        kept = [f for f in self._frames if not f.media]
        n = len(self._frames) - len(kept)
        self._frames = collections.deque(kept)
        self.dropped += n
        return n


class LatenessMeter:
    """The last ``window`` lateness samples (seconds) and their p99."""

    def __init__(self, window: int = 3000) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=window)
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self._values.append(seconds)
        self.count += 1
        if seconds > self.max:
            self.max = seconds

    def percentile(self, q: float) -> float | None:
        if not self._values:
            return None
        return float(np.percentile(np.fromiter(self._values, dtype=np.float64), q))

    @property
    def p99(self) -> float | None:
        return self.percentile(99.0)


# -- the codec -----------------------------------------------------------------------


class StreamCodec:
    """Frames for one stream, both ways (see the module notes).

    :param config: what to send and accept.
    """

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        samples = int(config.max_queue_seconds * SAMPLE_RATE)
        self.queue = PlayoutQueue(samples, config.max_marks)
        self._sequence = 0
        self._chunk = 0
        self._start_ms: float | None = None
        #: Frames from the bot ignored, by reason.
        self.bad_frames: collections.Counter[str] = collections.Counter()
        #: Frames to the bot made, by kind.
        self.sent: collections.Counter[str] = collections.Counter()
        self.received: collections.Counter[str] = collections.Counter()

    # -- to the bot ----------------------------------------------------------

    def _json(self, kind: str, body: dict[str, Any]) -> str:
        self._sequence += 1
        self.sent[kind] += 1
        msg: dict[str, Any] = {"event": kind, "sequenceNumber": str(self._sequence)}
        msg.update(body)
        msg["streamSid"] = self.config.stream_sid
        return json.dumps(msg, separators=(",", ":"))

    def opening(self, now: float) -> list[Frame]:
        """What a new connection starts with: ``connected`` and ``start``
        (twilio), the metadata frame (linear16). ``now`` (seconds) is the
        origin of media timestamps, set by the first opening only."""
        if self._start_ms is None:
            self._start_ms = now * 1000.0
        cfg = self.config
        if cfg.format == "linear16":
            meta: dict[str, Any] = dict(cfg.metadata)
            meta.update({"callSid": cfg.call_sid, "streamSid": cfg.stream_sid, "sampleRate": cfg.rate,
                         "mixType": "stereo" if cfg.direction == "both" else "mono",
                         "tracks": cfg.tracks, "customParameters": dict(cfg.custom)})
            self.sent["metadata"] += 1
            return [json.dumps(meta, separators=(",", ":"))]
        self.sent["connected"] += 1
        connected = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"},
                               separators=(",", ":"))
        start = self._json("start", {"start": {
            "streamSid": cfg.stream_sid, "accountSid": cfg.account_sid, "callSid": cfg.call_sid,
            "tracks": cfg.tracks, "customParameters": dict(cfg.custom),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        return [connected, start]

    def media(self, inbound: Pcm | None, outbound: Pcm | None, now: float) -> list[Frame]:
        """This tick's audio for the bot (``None``: silence), per the
        configured direction; ``now`` in seconds."""
        cfg = self.config
        n = FRAME_SAMPLES
        tracks: list[tuple[str, Pcm]] = []
        for name in cfg.tracks:
            pcm = inbound if name == "inbound" else outbound
            tracks.append((name, np.zeros(n, np.int16) if pcm is None else np.asarray(pcm[:n], np.int16)))
        if cfg.format == "linear16":
            pcms = [upsample(p) if cfg.rate == 16000 else p for _, p in tracks]
            if len(pcms) == 2:
                data = np.empty(2 * len(pcms[0]), dtype="<i2")
                data[0::2] = pcms[0]
                data[1::2] = pcms[1]
            else:
                data = pcms[0].astype("<i2")
            self.sent["media"] += 1
            return [data.tobytes()]
        start = self._start_ms if self._start_ms is not None else now * 1000.0
        stamp = str(max(0, int(round(now * 1000.0 - start))))
        self._chunk += 1
        out: list[Frame] = []
        for name, pcm in tracks:
            payload = base64.b64encode(ulaw_encode(pcm).tobytes()).decode("ascii")
            out.append(self._json("media", {"media": {"track": name, "chunk": str(self._chunk),
                                                      "timestamp": stamp, "payload": payload}}))
        return out

    def dtmf(self, digit: str) -> list[Frame]:
        """A digit the caller pressed."""
        if self.config.format == "linear16":
            self.sent["dtmf"] += 1
            return [json.dumps({"type": "dtmf", "digit": digit}, separators=(",", ":"))]
        return [self._json("dtmf", {"dtmf": {"track": "inbound_track", "digit": digit}})]

    def mark_echo(self, name: str, cleared: bool = False) -> Frame:
        """The echo of a bot's mark: its audio has played (or was cleared)."""
        if self.config.format == "linear16":
            self.sent["mark"] += 1
            return json.dumps({"type": "mark", "data": {"name": name, "event": "cleared" if cleared else "playout"}},
                              separators=(",", ":"))
        return self._json("mark", {"mark": {"name": name}})

    def closing(self) -> list[Frame]:
        """The last frames: ``stop`` (twilio), nothing (linear16: the close says it)."""
        if self.config.format == "linear16":
            return []
        cfg = self.config
        return [self._json("stop", {"stop": {"accountSid": cfg.account_sid, "callSid": cfg.call_sid}})]

    def playout(self) -> tuple[Pcm | None, list[Frame]]:
        """This tick's bot audio (``None``: none queued) and the mark echoes now due."""
        pcm, due = self.queue.next_frame()
        return pcm, [self.mark_echo(name) for name in due]

    # -- from the bot --------------------------------------------------------

    def receive(self, data: Frame) -> tuple[list[BotEvent], list[Frame]]:
        """One frame from the bot: the events it caused, and frames to send
        back now (mark echoes of a clear). Never raises on bad input."""
        if len(data) > self.config.max_frame_bytes:
            return self._bad("oversize"), []
        if self.config.format == "linear16":
            if isinstance(data, bytes):
                return self._pcm(data), []
            return self._linear16_command(data)
        if isinstance(data, bytes):
            return self._bad("binary frame"), []
        try:
            msg = json.loads(data)
        except ValueError:
            return self._bad("invalid JSON"), []
        if not isinstance(msg, dict):
            return self._bad("not a JSON object"), []
        kind = msg.get("event")
        if kind == "media":
            media = msg.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            if not isinstance(payload, str) or not payload:
                return self._bad("media without payload"), []
            try:
                codes = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                return self._bad("bad base64"), []
            self.received["media"] += 1
            return self._queue(ulaw_decode(np.frombuffer(codes, dtype=np.uint8))), []
        if kind == "mark":
            mark = msg.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            return self._mark(name), []
        if kind == "clear":
            return self._clear()
        return self._bad("unknown event"), []

    def _linear16_command(self, text: str) -> tuple[list[BotEvent], list[Frame]]:
        try:
            msg = json.loads(text)
        except ValueError:
            return self._bad("invalid JSON"), []
        if not isinstance(msg, dict):
            return self._bad("not a JSON object"), []
        kind = msg.get("type")
        if kind == "killAudio":
            return self._clear()
        if kind == "mark":
            body = msg.get("data")
            return self._mark(body.get("name") if isinstance(body, dict) else None), []
        if kind == "disconnect":
            self.received["disconnect"] += 1
            return [BotStopped()], []
        return self._bad("unknown event"), []

    def _pcm(self, data: bytes) -> list[BotEvent]:
        width = 2
        if len(data) % width:
            return self._bad("odd PCM length")
        pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
        if self.config.rate == 16000:
            pcm = downsample(pcm)
        self.received["media"] += 1
        return self._queue(pcm)

    def _queue(self, pcm: Pcm) -> list[BotEvent]:
        dropped = self.queue.put(pcm)
        return [QueueFull(dropped)] if dropped else []

    def _mark(self, name: object) -> list[BotEvent]:
        if not isinstance(name, str) or not _NAME.match(name):
            return self._bad("mark without a valid name")
        self.received["mark"] += 1
        if not self.queue.mark(name):
            return [QueueFull(0)]
        return []

    def _clear(self) -> tuple[list[BotEvent], list[Frame]]:
        self.received["clear"] += 1
        samples, marks = self.queue.clear()
        return [BotCleared(samples, marks)], [self.mark_echo(name, cleared=True) for name in marks]

    def _bad(self, reason: str) -> list[BotEvent]:
        self.bad_frames[reason] += 1
        return [BadFrame(reason)]

