"""Speech recognition on calls: recognisers run in worker threads, fed by a
tap on the media graph.

:class:`SpeechService` (one per engine) owns the recogniser
(:mod:`engine.media.asr`) and a pool of at most ``max_concurrent`` worker
threads. :meth:`SpeechService.open` starts a :class:`RecognitionSession`,
which is a :class:`~engine.media.bridge.FrameSink`: the call layer hands it
to :meth:`~engine.calls.conference.MediaGraph.start_tap`, and each 20 ms
tick its :meth:`RecognitionSession.write` only puts the frame on a bounded
queue (a full queue drops the frame and counts it: the media tick never
waits on a recogniser). The session's worker thread classifies frames
(VAD), endpoints them (:class:`~engine.media.asr.Endpointer`), feeds the
recogniser and posts :class:`SpeechEvent` objects back to the event loop.

Beyond ``max_concurrent`` sessions, :meth:`SpeechService.open` raises
:class:`SpeechBusy`: recognition costs a core per few calls, so the engine
refuses rather than falls behind. A caller who talks forever is cut at
``max_utterance`` seconds (the utterance ends there and is recognised).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from engine.media.asr import (
    AsrError, Endpointer, Recognizer, RecognitionStream, UtteranceAudio, UtteranceEnded, UtteranceStarted,
    make_recognizer, make_vad, normalize_hints,
)
from engine.media.pcm import Pcm

__all__ = [
    "GatherResult", "RecognitionSession", "SpeechBusy", "SpeechEvent", "SpeechService",
    "default_speech", "set_default_speech",
]

logger = logging.getLogger(__name__)

#: Frames a session queues at most (5 s): beyond, frames are dropped.
QUEUE_FRAMES = 250


class SpeechBusy(Exception):
    """Every recognition slot is taken (``--asr-max-concurrent``)."""


@dataclass(frozen=True)
class SpeechEvent:
    """What a session reports: ``kind`` is ``"started"`` (speech began),
    ``"partial"``, ``"final"`` (``text`` may be ``""``: nothing recognised)
    or ``"error"`` (``error`` says what).

    :param speech_end: ``time.monotonic()`` when the utterance's last voiced
        frame reached the tap (finals only).
    :param reason: why the utterance ended: ``"silence"`` or ``"max_length"``.
    """

    kind: str
    text: str = ""
    confidence: float = 0.0
    reason: str | None = None
    speech_end: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class GatherResult:
    """What :meth:`~engine.calls.call.Call.gather` got.

    :param kind: ``"speech"``, ``"digits"``, ``"timeout"`` (nothing in
        time), ``"hangup"`` (the call ended) or ``"error"`` (``error`` says
        why: recognition busy, bad hints, the recogniser failed).
    :param elapsed: seconds from the call of ``gather`` to its result.
    :param latency: for speech, seconds from the end of the caller's speech
        (the last voiced frame) to the result: ``end_silence`` plus the
        recogniser's own time.
    """

    kind: str
    text: str = ""
    digits: str = ""
    confidence: float = 0.0
    elapsed: float = 0.0
    latency: float | None = None
    error: str | None = None


class RecognitionSession:
    """One call's continuous recognition (see the module notes).

    :param on_event: called on the event loop with each :class:`SpeechEvent`.
    """

    def __init__(self, service: SpeechService, hints: tuple[str, ...] | None,
                 on_event: Callable[[SpeechEvent], None], end_silence: float, max_utterance: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.hints = hints
        self.on_event = on_event
        self.endpointer = Endpointer(end_silence=end_silence, max_utterance=max_utterance)
        self.loop = loop
        self.closed = False
        #: Frames dropped because the worker was behind.
        self.dropped = 0
        self._queue: queue.Queue[tuple[Pcm, float] | None] = queue.Queue(QUEUE_FRAMES)

    # -- the tap (on the media tick) ----------------------------------------------

    def write(self, frame: Pcm) -> None:
        """One frame the call said: queued, never waited on."""
        if self.closed:
            return
        try:
            self._queue.put_nowait((frame, time.monotonic()))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning("speech recognition behind: dropping audio")

    def close(self) -> None:
        """Stop: the worker ends (an utterance in progress is abandoned)."""
        if self.closed:
            return
        self.closed = True
        while True:  # make room for the sentinel
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass

    # -- the worker thread ----------------------------------------------------------

    def _post(self, event: SpeechEvent) -> None:
        if self.closed:
            return
        try:
            self.loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the loop is closed
            pass

    def _deliver(self, event: SpeechEvent) -> None:
        if not self.closed:
            self.on_event(event)

    def run(self) -> None:
        """The worker: VAD, endpointing, recognition, until :meth:`close`."""
        recognizer = self.service.recognizer
        vad = self.service.vad_factory()
        stream: RecognitionStream | None = None
        last_voiced = 0.0
        try:
            while True:
                item = self._queue.get()
                if item is None or self.closed:
                    return
                frame, at = item
                voiced = vad(frame)
                if voiced:
                    last_voiced = at
                for ev in self.endpointer.feed(frame, voiced):
                    if isinstance(ev, UtteranceStarted):
                        stream = recognizer.start(self.hints)
                        stream.feed(ev.pre_roll)
                        self._post(SpeechEvent("started"))
                    elif isinstance(ev, UtteranceAudio) and stream is not None:
                        stream.feed(ev.frame)
                        for hyp in stream.results():
                            self._post(SpeechEvent("partial", hyp.text, hyp.confidence))
                    elif isinstance(ev, UtteranceEnded) and stream is not None:
                        hyp = stream.finish()
                        stream.close()
                        stream = None
                        self._post(SpeechEvent("final", hyp.text, hyp.confidence, ev.reason, last_voiced))
        except AsrError as exc:
            self._post(SpeechEvent("error", error=str(exc)))
        except Exception as exc:
            logger.exception("speech recognition failed")
            self._post(SpeechEvent("error", error=f"speech recognition failed: {exc}"))
        finally:
            if stream is not None:
                try:
                    stream.close()
                except Exception:
                    logger.exception("closing a recognition stream failed")
            self.service._session_done(self)


class SpeechService:
    """The engine's speech recognition: a recogniser and its worker pool.

    :param recognizer: the provider (:func:`~engine.media.asr.make_recognizer`).
    :param max_concurrent: sessions at once (``--asr-max-concurrent``).
    :param max_utterance: seconds after which an utterance is cut.
    """

    def __init__(self, recognizer: Recognizer, max_concurrent: int = 4, max_utterance: float = 15.0,
                 vad_factory: Callable[[], Callable[[Pcm], bool]] = make_vad) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.recognizer = recognizer
        self.max_concurrent = max_concurrent
        self.max_utterance = max_utterance
        self.vad_factory = vad_factory
        self._lock = threading.Lock()
        self._active: set[RecognitionSession] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrent, thread_name_prefix="asr")

    @property
    def active(self) -> int:
        """Sessions running now."""
        return len(self._active)

    def open(self, hints: Sequence[str] | None, on_event: Callable[[SpeechEvent], None], *,
             end_silence: float = 0.8, max_utterance: float | None = None) -> RecognitionSession:
        """Start a session; give it to the media graph as a tap.

        :raises SpeechBusy: ``max_concurrent`` sessions run already.
        :raises AsrError: bad hints (named).
        """
        words = normalize_hints(hints)
        cap = self.max_utterance if max_utterance is None else min(max_utterance, self.max_utterance)
        session = RecognitionSession(self, words, on_event, end_silence, cap, asyncio.get_running_loop())
        with self._lock:
            if len(self._active) >= self.max_concurrent:
                raise SpeechBusy(f"speech recognition busy: {self.max_concurrent} recognitions running "
                                 f"(--asr-max-concurrent)")
            self._active.add(session)
        self._pool.submit(session.run)
        return session

    def _session_done(self, session: RecognitionSession) -> None:
        with self._lock:
            self._active.discard(session)

    def shutdown(self) -> None:
        """Close every session and let the workers go."""
        for session in list(self._active):
            session.close()
        self._pool.shutdown(wait=False)


_default: SpeechService | None = None


def default_speech() -> SpeechService:
    """The engine's speech service (PocketSphinx, 4 at once, unless the
    engine set another with :func:`set_default_speech`)."""
    global _default
    if _default is None:
        _default = SpeechService(make_recognizer("pocketsphinx"))
    return _default


def set_default_speech(service: SpeechService | None) -> None:
    """Make ``service`` the one calls use (the engine, from ``--asr``)."""
    global _default
    _default = service
