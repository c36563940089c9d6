"""Call objects: one leg each, inbound or outbound, SIP or internal.

A :class:`Call` is what a scenario holds: state, caller id, number, headers,
events (through pyee) and actions (``answer``, ``reject``, ``hangup``,
``ring``, ``start_early_media``, ``send_message``, ``send_info``,
``handle_tones``, ``collect_tones``, ``send_digits``, ``media_stats``).
Two kinds exist now:

- :class:`SipCall`, a leg to a phone, trunk or SIP peer, driven by the
  :class:`~engine.calls.sip_ua.UserAgent` (the INVITE session of pjsip's ``sip_inv``:
  it runs offer/answer but does not manage media itself);
- :class:`InternalCall`, one end of a pair joining two scenario sessions
  (``VoxEngine.call_conference``): answering, hanging up and messages cross
  to the other end.

Media plugs in through :class:`MediaHandler`: the call asks it for SDP offers
and answers and tells it what was negotiated; the media issue gives it RTP.

Listeners are called through the ``dispatcher`` the call was created with
(the scenario session), which catches and reports their exceptions, so a
user callback never kills the engine.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import inspect
import logging
import operator
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generator, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pyee.asyncio import AsyncIOEventEmitter

from engine import entropy
from engine.calls.grants import Grant
from engine.calls.recording import Recording
from engine.calls.speech import GatherResult, SpeechBusy, SpeechEvent, default_speech
from engine.media.asr import AsrError
from engine.media.codecs.telephone_event import ONSET_MODE
from engine.media.dtmf import DtmfBodyError, generate_dtmf, parse_info_body
from engine.media.dtmf_sender import MAX_DURATION, PAUSE, DtmfSenderError, validate_digits
from engine.media.players import DEFAULT_LEVEL, FrameSource, PcmSource, ToneSource
from engine.media.pcm import Pcm
from engine.media.ports import AudioPort
from engine.media.sources import AudioFileError
from engine.media.rtcp_session import MediaStats
from engine.media.tts import TtsCache, default_tts
from engine.transport.audio_fetch import AudioLoader, default_audio_loader

if TYPE_CHECKING:
    from engine.calls.media_stream import MediaStream
    from engine.sip.sdp import SessionDescription

__all__ = [
    "CallEvents",
    "Emitter",
    "CallState",
    "CallEvent",
    "Call",
    "InternalCall",
    "MediaEndpoint",
    "MediaHandler",
    "MediaRouter",
    "Dispatcher",
    "CallError",
    "CallAction",
    "ActionRule",
    "ACTION_RULES",
    "check_action",
    "Action",
    "ExtraFields",
    "Listeners",
    "Playback",
    "SendDigitsAction",
    "MediaStats",
    "DIGIT_MODES",
    "new_call_pair",
    "end_other_end",
    "TransferDialer",
    "TRANSFER_FALLBACKS",
]

#: What ``transfer_to(..., fallback=)`` may be: ``None`` or ``"bridge"``.
TRANSFER_FALLBACKS = (None, "bridge")

logger = logging.getLogger(__name__)


#: Seconds after a call ends when its listeners are dropped (late events
#: such as a retransmitted BYE's are over by then).
RELEASE_AFTER = 0.1

#: What every call does as it ends (:attr:`Call.on_ended`): calls of its
#: methods, made once for all calls rather than three closures a call.
_STOP_PLAYBACK = operator.methodcaller("stop_playback")
_STOP_DIGITS = operator.methodcaller("_stop_digits")
_STOP_RECOGNITION = operator.methodcaller("stop_recognition")

#: Digits kept for the next :meth:`Call.collect_tones` at most.
TYPEAHEAD_MAX = 32

#: The pause of paced digits (INFO, internal calls); tests put virtual time here.
_sleep = asyncio.sleep

#: How :meth:`Call.send_digits` may send: ``"auto"`` picks RFC 4733 when
#: the peer negotiated telephone-event, else SIP INFO; ``"inband"`` plays
#: the tones themselves (ITU-T Q.23 pairs) into the call's audio.
DIGIT_MODES = ("auto", "rfc4733", "info", "inband")


class CallEvents(str, enum.Enum):
    """Names of the events a call emits (VoxEngine's ``CallEvents``)."""

    Alerting = "Alerting"
    Ringing = "Ringing"
    Progress = "Progress"
    Connected = "Connected"
    Disconnected = "Disconnected"
    Failed = "Failed"
    MessageReceived = "MessageReceived"
    InfoReceived = "InfoReceived"
    ReInviteReceived = "ReInviteReceived"
    #: A DTMF digit (``e.tone``) and how it came (``e.mode``: ``"rfc4733"``,
    #: ``"info"`` or ``"inband"``); emitted only while tone handling is on
    #: (:meth:`Call.handle_tones`, or during :meth:`Call.collect_tones`).
    ToneReceived = "ToneReceived"
    #: A playback (:meth:`Call.say`, :meth:`Call.start_playback`) ended:
    #: ``e.playback`` is its handle, ``e.completed`` is ``True`` when it
    #: played to the end, ``False`` when stopped, replaced, failed or the
    #: call ended; ``e.error`` says why it failed (a file not found, an
    #: HTTP 404, corrupt audio, synthesis failed), ``None`` otherwise.
    PlaybackFinished = "PlaybackFinished"
    #: A recording of the call started: ``e.path``, ``e.recording`` (the handle).
    RecordStarted = "RecordStarted"
    #: A recording ended: ``e.path``, ``e.duration`` (seconds).
    RecordStopped = "RecordStopped"
    #: The far end asks us to transfer it (a phone's REFER, RFC 3515):
    #: ``e.target`` (the Refer-To URI), ``e.replaces`` (its Replaces, RFC
    #: 3891, or ``None``), ``e.referred_by``; the listener calls
    #: ``e.accept()`` or ``e.reject(code)``. Without a listener: 603.
    TransferRequested = "TransferRequested"
    #: A transfer of this call completed: ``e.code`` (the sipfrag status),
    #: ``e.new_call`` (the leg now in this one's place, when the engine has it).
    TransferComplete = "TransferComplete"
    #: A transfer failed: ``e.code``/``e.reason`` (the sipfrag or REFER
    #: status), ``e.refused`` (the far end never took it on), ``e.new_call``
    #: (the engine's own call, when ``fallback="bridge"`` placed one).
    TransferFailed = "TransferFailed"
    #: Speech recognised while :meth:`Call.start_recognition` runs:
    #: ``e.text``, ``e.confidence`` (0..1), ``e.final`` (``False``: a partial
    #: result of an utterance still going on).
    SpeechRecognized = "SpeechRecognized"
    #: Recognition could not run or failed: ``e.error`` says why (every
    #: recognition slot taken, hints the recogniser does not know...).
    SpeechError = "SpeechError"

    def __str__(self) -> str:
        return str.__str__(self)  # the value, without the enum's property


class CallState(str, enum.Enum):
    """Where a call is: ``ALERTING`` (inbound, not answered), ``PROGRESSING``
    (outbound, ringing or early media), ``CONNECTED``, ``DISCONNECTED``
    (ended after connecting, or cancelled) and ``FAILED`` (never connected)."""

    NEW = "NEW"
    ALERTING = "ALERTING"
    PROGRESSING = "PROGRESSING"
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    FAILED = "FAILED"

    @property
    def ended(self) -> bool:
        return self in _ENDED


#: The end states (``state.ended``); the call's own hot paths test
#: membership here, without the property's call.
_ENDED = frozenset({CallState.DISCONNECTED, CallState.FAILED})


class CallError(Exception):
    """An action that the call's state does not allow."""


# -- what each action may do in each state --------------------------------------
#
# Every kind of call (SIP, internal, browser, the harness's simulated legs)
# checks a scenario's action against this one table before doing anything
# of its own: an action is done in its ``allowed`` states, does nothing in
# its ``ignored`` ones (answering a call already connected, hanging up one
# already ended) and raises :class:`CallError` with ``refused`` in the
# others. What the action then sends (200 OK, 487, a ``hangup`` frame...)
# is the kind's own business.
#
# A call whose answer is on its way (a SIP 200 OK waiting for its ACK, a
# browser's answer being negotiated) is still ``ALERTING`` but counts as
# ``CONNECTED`` here: it can no longer be rejected or answered again.
#
#   action                       inbound only  allowed                 ignored
#   answer                       yes           ALERTING                NEW PROGRESSING CONNECTED
#   reject                       yes           ALERTING                -
#   hangup                       no            NEW ALERTING            DISCONNECTED FAILED
#                                              PROGRESSING CONNECTED
#   ring, start_early_media      yes           ALERTING                -
#   forward_call_to_user_direct  yes           ALERTING                -
#   send_message, send_info      no            CONNECTED               -


class CallAction(str, enum.Enum):
    """A scenario's action on a call whose state :func:`check_action` checks."""

    ANSWER = "answer"
    REJECT = "reject"
    HANGUP = "hangup"
    RING = "ring"
    START_EARLY_MEDIA = "start_early_media"
    FORWARD_DIRECT = "forward_call_to_user_direct"
    SEND_MESSAGE = "send_message"
    SEND_INFO = "send_info"

    def __str__(self) -> str:
        return str.__str__(self)  # the value, without the enum's property


@dataclass(frozen=True)
class ActionRule:
    """Where one :class:`CallAction` may run.

    :param allowed: the states in which the action is done.
    :param refused: the :class:`CallError` text in every other state (not
        ``ignored``); ``{state}`` becomes the state's name.
    :param ignored: the states in which the action does nothing, silently.
    :param outbound: the :class:`CallError` text for an outbound call, or
        ``None`` when either direction may act.
    """

    allowed: frozenset[CallState]
    refused: str
    ignored: frozenset[CallState] = frozenset()
    outbound: str | None = None


_NOT_ANSWERED = "{action}() needs an inbound call not yet answered"
_LIVE = frozenset({CallState.NEW, CallState.ALERTING, CallState.PROGRESSING, CallState.CONNECTED})

#: The one table of what a scenario may do to a call in each state.
ACTION_RULES: dict[CallAction, ActionRule] = {
    CallAction.ANSWER: ActionRule(
        allowed=frozenset({CallState.ALERTING}), refused="call already ended",
        ignored=frozenset({CallState.NEW, CallState.PROGRESSING, CallState.CONNECTED}),
        outbound="only an inbound call can be answered"),
    CallAction.REJECT: ActionRule(
        allowed=frozenset({CallState.ALERTING}), refused="cannot reject a call in state {state}",
        outbound="only an inbound call can be rejected"),
    CallAction.HANGUP: ActionRule(
        allowed=_LIVE, refused="hangup() of an unknown state {state}",
        ignored=frozenset({CallState.DISCONNECTED, CallState.FAILED})),
    CallAction.RING: ActionRule(
        allowed=frozenset({CallState.ALERTING}), refused=_NOT_ANSWERED.format(action="ring"),
        outbound=_NOT_ANSWERED.format(action="ring")),
    CallAction.START_EARLY_MEDIA: ActionRule(
        allowed=frozenset({CallState.ALERTING}), refused=_NOT_ANSWERED.format(action="start_early_media"),
        outbound=_NOT_ANSWERED.format(action="start_early_media")),
    CallAction.FORWARD_DIRECT: ActionRule(
        allowed=frozenset({CallState.ALERTING}),
        refused="forward_call_to_user_direct() needs a browser's call that still rings",
        outbound="forward_call_to_user_direct() needs a browser's call that still rings"),
    CallAction.SEND_MESSAGE: ActionRule(
        allowed=frozenset({CallState.CONNECTED}), refused="messages need a connected call"),
    CallAction.SEND_INFO: ActionRule(
        allowed=frozenset({CallState.CONNECTED}), refused="INFO needs a connected call"),
}


def check_action(call: Call, action: CallAction, *, answered: bool = False, code: int | None = None) -> bool:
    """Check ``action`` against :data:`ACTION_RULES` in ``call``'s state.

    :param answered: the call's answer is on its way (it then counts as
        ``CONNECTED``; errors still name its real state).
    :param code: a reject's final response code, checked (300-699, RFC 3261
        section 21) after the direction and before the state.
    :returns: ``True`` when the action is to be done, ``False`` when it does
        nothing in this state.
    :raises CallError: the action is not allowed: the direction's, the
        code's or the state's message.
    """
    rule = ACTION_RULES[action]
    if rule.outbound is not None and call.direction != "inbound":
        raise CallError(rule.outbound)
    if code is not None and not 300 <= code <= 699:
        raise CallError(f"reject code must be 300-699, not {code}")
    state = CallState.CONNECTED if answered and call.state == CallState.ALERTING else call.state
    if state in rule.allowed:
        return True
    if state in rule.ignored:
        return False
    raise CallError(rule.refused.format(state=call.state.value))


class ExtraFields:
    """An event whose fields beyond its dataclass ones live in ``extra``
    and read as attributes (``e.playback``, ``e.path``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class CallEvent(ExtraFields):
    """What a listener receives. Fields not relevant to an event keep their
    defaults: ``code``/``reason`` for Failed and Disconnected, ``text`` for
    MessageReceived, ``body``/``mime_type`` for InfoReceived, ``headers``
    (the custom ``X-`` headers of the message) for all."""

    name: str
    call: Call
    headers: dict[str, str] = field(default_factory=dict)
    code: int | None = None
    reason: str | None = None
    text: str | None = None
    body: bytes | None = None
    mime_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: The fields of :class:`CallEvent`; any other goes in its ``extra``.
_EVENT_FIELDS = frozenset(CallEvent.__dataclass_fields__)


class Dispatcher(Protocol):
    """How a call runs its listeners: the scenario session implements it."""

    def run_listener(self, handler: Callable[..., Any], event: Any) -> None: ...


#: Coroutine listeners of calls outside sessions, kept alive until they end.
_direct_tasks: set[asyncio.Future[Any]] = set()


class _DirectDispatcher:
    """Runs listeners in place (for calls outside sessions). A failure, in
    the listener or in the coroutine it returns, is logged and goes no
    further: the emitting code (the SIP stack) never sees it."""

    def run_listener(self, handler: Callable[..., Any], event: Any) -> None:
        name = getattr(event, "name", event)
        try:
            result = handler(event)
        except Exception:
            logger.exception("call listener %r for %s failed", handler, name)
            return
        if not inspect.isawaitable(result):
            return
        try:
            task = asyncio.ensure_future(result)
        except RuntimeError:  # no running loop: the coroutine cannot run
            if inspect.iscoroutine(result):
                result.close()
            logger.error("coroutine listener %r for %s needs a running event loop", handler, name)
            return
        _direct_tasks.add(task)

        def done(task: asyncio.Future[Any]) -> None:
            _direct_tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                logger.error("call listener %r for %s failed", handler, name,
                             exc_info=task.exception())

        task.add_done_callback(done)


#: The dispatcher of calls outside sessions (it keeps no state of its own:
#: one for all, not one made for every call that a session then adopts).
_DIRECT = _DirectDispatcher()


class MediaHandler(Protocol):
    """The media seam: SDP in and out of a call.

    ``create_offer`` and ``create_answer`` return SDP bytes;
    ``create_answer`` raises :class:`~engine.sip.errors.RemoteProtocolError`
    (status 488) when nothing in the offer is acceptable. ``local_sdp`` is
    the last of them as built, so that the INVITE session records it
    without parsing it back (nor copying it: a description, once built, is
    never changed; the next SDP is a new one).
    """

    local_sdp: SessionDescription | None

    def create_offer(self) -> bytes: ...

    def create_answer(self, offer: bytes) -> bytes: ...

    def set_answer(self, answer: bytes) -> None: ...

    def close(self) -> None: ...


class MediaEndpoint(Protocol):
    """What media flows join: a call or a :class:`~engine.calls.conference.Conference`."""

    def send_media_to(self, target: Any) -> None: ...

    def stop_media_to(self, target: Any) -> None: ...


class MediaRouter(Protocol):
    """The media graph as a call drives it
    (:class:`~engine.calls.conference.MediaGraph`). A protocol, not an
    import: :mod:`engine.calls.conference` imports this module, and the
    graph knows calls through its own :class:`~engine.calls.conference.Leg`.
    """

    def connect(self, src: Call, dst: Any, gain: float = 1.0) -> None: ...

    def disconnect(self, src: Call, dst: Any) -> None: ...

    def start_recording(self, node: Call, path: str | Path | None = None) -> Recording: ...

    def start_player(self, node: Call, source: FrameSource,
                     done: Callable[[bool], None] | None = None) -> None: ...

    def stop_player(self, node: Call) -> None: ...

    def start_tap(self, node: Call, sink: Any) -> None: ...

    def stop_tap(self, node: Call, sink: Any) -> None: ...

    def flows(self) -> list[tuple[Any, Any]]: ...

    def replace_node(self, old: Call, new: Call) -> None: ...


@runtime_checkable
class TransferDialer(Protocol):
    """Places the call a transfer leads to, through the scenario's own verbs
    (``call_sip``, ``call_pstn`` and their policy): the scenario session a
    call belongs to (its ``dispatcher``) implements it."""

    def dial_transfer_target(self, target: str, callerid: str | None = None,
                             headers: dict[str, str] | None = None) -> Call: ...


class PlaybackOwner(Protocol):
    """What a :class:`Playback` plays into: a call or a conference."""

    id: str
    _playback: Playback | None

    def _stop_media(self) -> None: ...

    def _playback_done(self, pb: Playback, completed: bool) -> None: ...


class Action:
    """An awaitable handle of a long-running action (style.md section 8):
    awaiting it returns ``True`` once the action completed, ``False`` when
    it was stopped or failed; :meth:`done` says whether it is over. The
    wait is shielded, so a timeout around ``await`` does not end the action."""

    def __init__(self) -> None:
        self._fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        #: ``None`` while running, then whether it completed.
        self.completed: bool | None = None

    def done(self) -> bool:
        return self._fut.done()

    def __await__(self) -> Generator[Any, None, bool]:
        return asyncio.shield(self._fut).__await__()

    def _cancel_task(self) -> bool:
        """Cancel the preparing task, if one runs; whether one did."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            return True
        return False

    def _settle(self, completed: bool) -> bool:
        """Resolve once; ``False`` if already resolved."""
        if self._fut.done():
            return False
        self.completed = completed
        self._fut.set_result(completed)
        return True


class Playback(Action):
    """The handle of one playback. Awaiting it returns once the playback
    has ended: ``True`` when played to the end, ``False`` when stopped or
    failed (see :attr:`CallEvents.PlaybackFinished`). :meth:`stop` ends it
    early."""

    def __init__(self, call: PlaybackOwner, kind: str, what: str | None = None) -> None:
        super().__init__()
        self.call = call
        self.kind = kind
        #: What plays: the text of a ``say``, the path or URL of a file
        #: (``None`` for a player); for logs and the test harness.
        self.what = what
        #: Why it failed (``None`` unless it did).
        self.error: str | None = None

    def __repr__(self) -> str:
        return f"<Playback {self.kind} of {self.call.id[:8]} completed={self.completed}>"

    def stop(self) -> None:
        """End the playback now (``PlaybackFinished`` with ``completed=False``)."""
        if self._fut.done():
            return
        self._cancel_task()
        if self.call._playback is self:
            self.call._stop_media()
        self.call._playback_done(self, False)

    def _resolve(self, completed: bool, error: str | None = None) -> bool:
        if self._fut.done():
            return False
        self.error = error
        return self._settle(completed)


class PlaybackMixin:
    """Playback for anything audio can be played into (calls, conferences):
    ``say``, ``start_playback`` of players, files and URLs, tones, and the
    awaitable :class:`Playback` handles. The host class provides the hooks
    ``_check_media``, ``_play``, ``_stop_media``, ``_tts``, ``_audio``,
    ``_media_ended`` and ``_playback_done``, plus ``id`` and ``log``."""

    id: str
    _playback: Playback | None

    if TYPE_CHECKING:
        @property
        def log(self) -> logging.LoggerAdapter[logging.Logger]: ...

        def _check_media(self) -> None: ...

        def _play(self, source: FrameSource, done: Callable[[bool], None]) -> None: ...

        def _stop_media(self) -> None: ...

        def _tts(self) -> TtsCache: ...

        def _audio(self) -> AudioLoader: ...

        def _media_ended(self) -> bool: ...

        def _playback_done(self, pb: Playback, completed: bool, error: str | None = None) -> None: ...

    @property
    def playback(self) -> Playback | None:
        """The current playback, if any."""
        return self._playback

    def start_playback(self, source: FrameSource | str | os.PathLike[str], loop: bool = False) -> Playback:
        """Play into the call, replacing any current playback: a player
        (:mod:`engine.media.players`), or a WAV, MP3, OGG Vorbis or FLAC
        file given by its path or its http(s) URL (``loop``: repeat it until
        stopped). Needs a connected call or early media (:class:`CallError`
        otherwise).

        A file or URL is read (or downloaded, or taken from the cache) and
        decoded off the event loop; the handle can be awaited at once. If
        that fails (not found, HTTP 404, not audio) the handle ends with
        ``False``, :attr:`Playback.error` and the PlaybackFinished event's
        ``error`` say why, and the call goes on.
        """
        if isinstance(source, (str, os.PathLike)):
            return self._start_file_playback(source, loop)
        if loop:
            raise ValueError("loop=True is for a file or URL; a player loops itself "
                             "(PcmSource(pcm, loop=True))")
        self._check_media()
        pb = Playback(self, "playback")
        self.stop_playback()
        self._playback = pb
        try:
            self._play(source, lambda completed: self._playback_done(pb, completed))
        except Exception:
            self._playback = None
            raise
        return pb

    def start_playback_tone(self, freq: float, seconds: float | None = None,
                            level: float = DEFAULT_LEVEL) -> Playback:
        """Play a ``freq`` Hz tone for ``seconds`` (``None``: until stopped)."""
        return self.start_playback(ToneSource(freq, seconds, level))

    def say(self, text: str, voice: str = "en") -> Playback:
        """Speak ``text`` (TTS, espeak-ng by default; cached on disk). The
        handle can be awaited at once: it covers synthesis and playback."""
        self._check_media()
        if not text.strip():
            raise CallError("say() needs some text")
        tts = self._tts()

        async def speech() -> tuple[Pcm, int]:
            return await tts.get_async(text, voice), tts.rate

        return self._prepare_and_play("say", speech, False, text)

    def _start_file_playback(self, location: str | os.PathLike[str], loop: bool) -> Playback:
        self._check_media()
        loader = self._audio()

        async def audio() -> tuple[Pcm, int]:
            return await loader.load(location), loader.rate

        return self._prepare_and_play("playback", audio, loop, os.fspath(location))

    def _prepare_and_play(self, kind: str, prepare: Callable[[], Awaitable[tuple[Pcm, int]]],
                          loop: bool, what: str | None = None) -> Playback:
        """A handle now; ``prepare()`` (synthesis, download, decoding) in a
        task, then the audio plays if the handle is still current. A failure
        of ``prepare`` ends the handle with ``False`` and an error."""
        pb = Playback(self, kind, what)
        self.stop_playback()
        self._playback = pb

        async def run() -> None:
            try:
                pcm, rate = await prepare()
            except asyncio.CancelledError:
                self._playback_done(pb, False)
                return
            except AudioFileError as exc:
                self.log.warning("playback failed: %s", exc)
                self._playback_done(pb, False, str(exc))
                return
            except Exception as exc:
                what = "speech synthesis" if kind == "say" else "playback"
                self.log.exception("%s failed", what)
                self._playback_done(pb, False, f"{what} failed: {exc}")
                return
            if self._playback is not pb or self._media_ended():
                self._playback_done(pb, False)
                return
            try:
                self._play(PcmSource(pcm, loop=loop, rate=rate),
                           lambda completed: self._playback_done(pb, completed))
            except CallError as exc:
                self.log.warning("%s: %s", kind, exc)
                self._playback_done(pb, False, str(exc))

        pb._task = asyncio.get_running_loop().create_task(run(), name=f"{kind}-{self.id[:8]}")
        return pb

    def stop_playback(self) -> None:
        """Stop the current playback, if any."""
        pb = self._playback
        if pb is not None:
            pb.stop()


class SendDigitsAction(Action):
    """The handle of one :meth:`Call.send_digits`. Awaiting it returns once
    the last digit has been sent: ``True``, or ``False`` when stopped or the
    call ended first. :meth:`stop` ends it early (an RFC 4733 event in
    progress still gets its end packets, so the far end hears no endless tone).

    :ivar digits: what is sent (``a-d`` upper-cased).
    :ivar mode: how: ``"rfc4733"``, ``"info"`` or ``"inband"`` (``"auto"`` resolved).
    """

    def __init__(self, call: Call, digits: str, mode: str, duration: float, gap: float) -> None:
        super().__init__()
        self.call = call
        self.digits = digits
        self.mode = mode
        self.duration = duration
        self.gap = gap
        self._started = False
        #: The playback of in-band tones (``mode="inband"``).
        self._playback: Playback | None = None

    def __repr__(self) -> str:
        return f"<SendDigitsAction {self.digits!r} {self.mode} of {self.call.id[:8]} completed={self.completed}>"

    def stop(self) -> None:
        """Stop sending (digits not yet sent are dropped)."""
        if self._fut.done():
            return
        if self._playback is not None:
            self._playback.stop()
        if not self._cancel_task() and self._started and self.mode != "inband":
            self.call._stop_rtp_digits()
        self._resolve(False)

    def _resolve(self, completed: bool) -> None:
        if self._settle(completed):
            self.call.log.info("digits %r by %s sent (completed=%s)", self.digits, self.mode, completed)


class Emitter(AsyncIOEventEmitter):
    """pyee's asyncio emitter, returning at once for an event nobody
    listens to (the common case: a call emits each state, few scenarios
    listen to each). pyee takes its lock and copies the handler list even
    then, and every ``on()`` emits ``new_listener``, which nothing here
    listens to: about 40 Python calls a call. Reads pyee's ``_events``
    (pyee 13; ``tests/unit/test_call_events.py`` pins it).

    An event somebody listens to runs its handlers here too, as pyee's
    ``AsyncIOEventEmitter`` does (a handler's exception goes to ``error``,
    a coroutine or future it returns is scheduled by pyee's own code), but
    without pyee's four nested calls, its lock (events are emitted on the
    event loop's thread) and its coroutine check of a handler that returned
    ``None``, as the engine's own handlers do."""

    def __init__(self) -> None:
        """pyee's two ``__init__`` (``AsyncIOEventEmitter``'s, then
        ``EventEmitter``'s) in one: the same four attributes, without two
        Python calls for each of the two emitters (a call's, its session's)
        made for every call."""
        self._events: dict[str, collections.OrderedDict[Callable[..., Any], Callable[..., Any]]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: set[asyncio.Future[Any]] = set()

    def remove_all_listeners(self, event: str | None = None) -> None:
        """pyee's, without its lock (handlers are removed on the event
        loop's thread, as they are added): an ended call and session drop
        all theirs."""
        if event is None:
            self._events = {}
        else:
            self._events[event] = collections.OrderedDict()

    def listened(self, event: str) -> bool:
        """Whether ``event`` has a handler (or is ``error``, which raises
        without one): when not, :meth:`emit` does nothing."""
        return event == "error" or event in self._events

    def emit(self, event: str, *args: Any, **kwargs: Any) -> bool:
        handlers = self._events.get(event)
        if not handlers:
            if event == "error":  # pyee raises it: nobody handles it
                return super().emit(event, *args, **kwargs)
            return False
        for handler in list(handlers.values()):  # a handler may add or remove handlers
            try:
                result = handler(*args, **kwargs)
            except Exception as exc:
                self.emit("error", exc)
                continue
            if result is not None:
                AsyncIOEventEmitter._emit_run(self, lambda: result, (), {})
        return True

    def _add_event_handler(self, event: str, k: Callable[..., Any], v: Callable[..., Any]) -> None:
        """pyee's, without its ``new_listener`` event when nobody listens to
        that (nothing in the engine does) and without its lock (handlers are
        added on the event loop's thread)."""
        if "new_listener" in self._events:
            self.emit("new_listener", event, k)
        handlers = self._events.get(event)
        if handlers is None:
            handlers = self._events[event] = collections.OrderedDict()
        handlers[k] = v


class Listeners:
    """``add_event_listener``/``on``/``remove_event_listener`` over a pyee
    ``emitter``, each handler run through the object's ``dispatcher`` (the
    scenario session) so that a failing listener never stops the others."""

    emitter: Emitter
    dispatcher: Dispatcher

    def add_event_listener(self, event: str | enum.Enum, handler: Callable[..., Any]) -> None:
        """Call ``handler(event)`` (a function or a coroutine function) on ``event``."""
        name = str(event)

        def run(ev: Any, handler: Callable[..., Any] = handler) -> None:
            self._dispatch(handler, ev)

        run.__wrapped__ = handler  # type: ignore[attr-defined]
        self.emitter._add_event_handler(name, run, run)  # add_listener's own step (same module)

    on = add_event_listener

    def _dispatch(self, handler: Callable[..., Any], event: Any) -> None:
        """Run one listener (through :attr:`dispatcher`)."""
        self.dispatcher.run_listener(handler, event)

    def remove_event_listener(
        self, event: str | enum.Enum, handler: Callable[..., Any] | None = None
    ) -> None:
        """Remove ``handler`` from ``event`` (every listener of ``event`` when
        ``handler`` is ``None``). Handlers compare by equality, so a bound
        method (``self.on_x``, a new object at each access) is found again."""
        name = str(event)
        for listener in list(self.emitter.listeners(name)):
            if handler is None or getattr(listener, "__wrapped__", None) == handler:
                self.emitter.remove_listener(name, listener)


class Call(PlaybackMixin, Listeners):
    """One call leg, as a scenario sees it.

    :ivar id: unique across nodes (random).
    :ivar direction: ``"inbound"`` or ``"outbound"``.
    :ivar number: the dialed number (inbound) or the number called (outbound).
    :ivar callerid: the caller's number (inbound) or the number we present.
    :ivar display_name: the caller's display name, if any.
    :ivar headers: the ``X-`` headers of the INVITE (inbound) or of the
        answer (outbound), as received: never ``X-Callbridge-*``, which the
        engine drops from whatever a caller sends.
    :ivar grant: what the engine established about the caller
        (:class:`~engine.calls.grants.Grant`: identity, room, role, permissions),
        or ``None`` for an anonymous caller. Only the engine sets it.
    :ivar source: the address the caller's signalling came from (a SIP
        peer's, a browser's socket's), ``None`` for internal calls.
    """

    kind = "call"

    def __init__(
        self,
        *,
        direction: str,
        number: str,
        callerid: str,
        display_name: str | None = None,
        headers: dict[str, str] | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.id = entropy.token_hex(16)
        self.direction = direction
        self.number = number
        self.callerid = callerid
        self.display_name = display_name
        self.headers: dict[str, str] = dict(headers or {})
        self.grant: Grant | None = None
        self.source: str | None = None
        #: The SRTP policy of this leg's media (``mandatory``, ``optional``,
        #: ``off``), set from the matching rule or the outbound call's
        #: options; ``None``: the engine's default for the direction.
        self.srtp: str | None = None
        self.state = CallState.NEW
        self.dispatcher: Dispatcher = dispatcher or _DIRECT
        self.emitter = Emitter()
        self.end_code: int | None = None
        self.end_reason: str | None = None
        #: What answer() returned and waits for the call to connect (made
        #: by the first such future: most calls have one, some none).
        self._connect_waiters: list[asyncio.Future[None]] | None = None
        #: Whether the call ever reached ``CONNECTED`` (it stays true after the end).
        self.was_connected = False
        #: When the call was first connected (seconds since the epoch), for call records.
        self.connected_at: float | None = None
        self.on_ended: list[Callable[[Call], None]] = []
        #: Whether the engine keeps a record of this call
        #: (:class:`~engine.runtime.records.CallRecords` sets it, once).
        self.recorded = False
        self._tones_wanted = False
        self._tone_collectors = 0
        #: What runs when a digit starts (an RFC 4733 event's first packet):
        #: the barge-in of each collect_tones(stop_playback=True) running.
        self._tone_onset_hooks: list[Callable[[], None]] = []
        #: Digits received while tones were handled but nobody collected
        #: (type-ahead); the next :meth:`collect_tones` starts with them.
        #: (A deque's first block is ~600 bytes: made by the first digit, or
        #: the first read of :attr:`typeahead`; most calls get no digit.)
        self._typeahead: collections.deque[str] | None = None
        self._playback: Playback | None = None
        self.on_ended.append(_STOP_PLAYBACK)
        #: The engine's media graph (:mod:`engine.calls.conference`); the session
        #: that adopts the call sets it.
        self.graph: MediaRouter | None = None
        #: send_digits() handles not yet done, in order (the first is sending).
        self._digit_actions: list[SendDigitsAction] = []
        self.on_ended.append(_STOP_DIGITS)
        #: The running start_recognition() (a callable that stops it), if any.
        self._recognition: Callable[[], None] | None = None
        self.on_ended.append(_STOP_RECOGNITION)

    @property
    def typeahead(self) -> collections.deque[str]:
        """Digits received while tones were handled but nobody collected
        (at most ``TYPEAHEAD_MAX``, oldest first); ``clear()`` drops them."""
        if self._typeahead is None:
            self._typeahead = collections.deque(maxlen=TYPEAHEAD_MAX)
        return self._typeahead

    @functools.cached_property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger tagged with the call id, made on first use (most
        calls never log: a thousand live ones would each carry an
        adapter and its dict)."""
        return logging.LoggerAdapter(logger, {"call_id": self.id})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id[:8]} {self.direction} {self.number} {self.state.value}>"

    # -- events ----------------------------------------------------------------

    def _emit(self, name: CallEvents, **fields: Any) -> None:
        text: str = name._value_  # str(name), without a call of its __str__
        if not self.emitter.listened(text):
            return  # no event object for nobody
        if fields.keys() <= _EVENT_FIELDS:  # most events: no extra field
            event = CallEvent(text, self, **fields)
        else:
            extra = {k: fields.pop(k) for k in list(fields) if k not in _EVENT_FIELDS}
            event = CallEvent(text, self, extra=extra, **fields)
        self.emitter.emit(text, event)

    def wait_for(self, event: str | CallEvents, timeout: float | None = None) -> Awaitable[CallEvent]:
        """Wait for the next ``event``. The listener is attached now, so an
        event emitted before the result is awaited still counts. A timeout
        (:class:`asyncio.TimeoutError`) or a cancellation detaches the
        listener and leaves the call as it was."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CallEvent] = loop.create_future()
        name = str(event)

        def once(ev: CallEvent) -> None:
            if not fut.done():
                fut.set_result(ev)

        self.emitter.once(name, once)

        async def wait() -> CallEvent:
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout)
            finally:
                if not fut.done():
                    fut.cancel()
                    try:
                        self.emitter.remove_listener(name, once)
                    except KeyError:  # already gone
                        pass

        return wait()

    def _set_state(self, state: CallState) -> None:
        """Move to ``state``. An ended call keeps its end state: later
        changes are ignored, so the end callbacks run once."""
        if self.state in _ENDED or state == self.state:
            return
        self.state = state
        if state == CallState.CONNECTED:
            self.was_connected = True
            if self.connected_at is None:
                self.connected_at = time.time()
        if logger.isEnabledFor(logging.INFO):  # the call's adapter is made only to log
            self.log.info("state %s", state.value)
        ended = state in _ENDED
        if ended:
            for cb in self.on_ended:
                try:
                    cb(self)
                except Exception:
                    self.log.exception("end callback failed")
        waiters = self._connect_waiters
        if waiters is not None and (self.was_connected or ended):
            self._connect_waiters = None
            for fut in waiters:
                self._settle_connected(fut)

    def _finish(self, state: CallState, event: CallEvents, code: int | None, reason: str | None,
                headers: dict[str, str] | None = None) -> None:
        """End the call once: set the state, then emit Disconnected or Failed."""
        if self._conclude(state, code, reason):
            self._emit(event, code=code, reason=reason, headers=dict(headers or {}))
            try:
                asyncio.get_running_loop().call_later(RELEASE_AFTER, self._release)
            except RuntimeError:
                pass

    def _release(self) -> None:
        """Break the ended call's reference cycles (listeners closing over
        the call, end callbacks) so reference counting frees it promptly."""
        self.emitter.remove_all_listeners()
        self.on_ended.clear()

    def _conclude(self, state: CallState, code: int | None, reason: str | None) -> bool:
        """Set the end state (without emitting); ``False`` if already ended."""
        if self.state in _ENDED:
            return False
        self.end_code, self.end_reason = code, reason
        self._set_state(state)
        return True

    # -- DTMF ----------------------------------------------------------------------

    @property
    def tones_enabled(self) -> bool:
        """Whether ``ToneReceived`` is emitted now."""
        return self._tones_wanted or self._tone_collectors > 0

    def handle_tones(self, enabled: bool = True) -> None:
        """Turn ``ToneReceived`` events on or off (off by default, as in
        VoxEngine). Digits come by RFC 4733, SIP INFO or in-band tones."""
        before = self.tones_enabled
        self._tones_wanted = bool(enabled)
        if self.tones_enabled != before:
            self._tone_handling_changed(self.tones_enabled)

    def _tone_handling_changed(self, enabled: bool) -> None:
        """Hook for the kinds of call: start or stop listening to media."""

    def _tone_received(self, digit: str, mode: str) -> None:
        """A digit arrived (from the media session or an INFO), or, with
        ``mode`` :data:`~engine.media.codecs.telephone_event.ONSET_MODE`, an
        RFC 4733 digit started: that only triggers barge-in (its digit
        follows at the event's end, as long after as the key is held)."""
        if mode == ONSET_MODE:
            if self.tones_enabled and not self.state.ended:
                for hook in list(self._tone_onset_hooks):
                    hook()
            return
        if self.tones_enabled and not self.state.ended:
            if self._tone_collectors == 0:
                self.typeahead.append(digit)
            self._emit(CallEvents.ToneReceived, tone=digit, mode=mode)

    def _info_received(self, mime_type: str, body: bytes, headers: dict[str, str]) -> None:
        """Emit InfoReceived, then ToneReceived (mode ``"info"``) when the
        body is DTMF (``application/dtmf-relay`` or ``application/dtmf``)."""
        self._emit(CallEvents.InfoReceived, mime_type=mime_type, body=body, headers=headers)
        mime = mime_type.split(";", 1)[0].strip().lower()
        if mime not in ("application/dtmf-relay", "application/dtmf"):
            return
        try:
            info = parse_info_body(mime_type, body)
        except DtmfBodyError as exc:
            self.log.warning("INFO %s: %s", mime, exc)
            return
        self._tone_received(info.digit, "info")

    async def collect_tones(
        self,
        max_digits: int | None = None,
        terminator: str | None = None,
        timeout: float | None = None,
        inter_digit_timeout: float | None = None,
        stop_playback: bool = False,
    ) -> str:
        """Collect DTMF digits and return them (tone handling is on meanwhile).

        Digits typed ahead (received while :meth:`handle_tones` was on and
        no collection ran, e.g. during a prompt) count first; call
        ``call.typeahead.clear()`` to drop them. Collection ends when
        ``max_digits`` digits arrived, when a digit of ``terminator`` is
        pressed (it is not included in the result), when
        ``timeout`` seconds have passed since the call of this method, when
        ``inter_digit_timeout`` seconds have passed since the last digit
        (counted from the first digit on, so the caller has ``timeout`` to
        start typing), or when the call ends. Timeouts raise nothing: what
        was collected is returned, possibly ``""``.

        :param terminator: one or more digits that end the input (``"#"``).
        :param stop_playback: barge-in: the first digit (a typed-ahead one
            too; an RFC 4733 digit as soon as its first packet arrives, not
            at its end) stops the call's current playback, so a caller who knows the
            answer need not hear the prompt out; ``timeout`` then counts
            from the prompt's end (or its barge-in). Start the prompt
            without awaiting it, then collect::

                call.say("Please enter your PIN")
                pin = await call.collect_tones(terminator="#", stop_playback=True)
        """
        if max_digits is not None and max_digits < 1:
            raise ValueError("max_digits must be at least 1")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        digits: list[str] = []
        inter: list[asyncio.TimerHandle] = []
        barged: list[bool] = []

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        def on_tone(ev: CallEvent) -> None:
            add(str(ev.tone))

        def barge_in() -> None:
            if stop_playback and not barged and not done.done():
                barged.append(True)
                self.stop_playback()

        def add(tone: str) -> None:
            if done.done():
                return
            barge_in()
            if terminator and tone in terminator:
                finish()
                return
            digits.append(tone)
            if max_digits is not None and len(digits) >= max_digits:
                finish()
                return
            if inter_digit_timeout is not None:
                for h in inter:
                    h.cancel()
                inter[:] = [loop.call_later(inter_digit_timeout, finish)]

        def on_end(call: Call) -> None:
            finish()

        while self._typeahead and not done.done():
            add(self._typeahead.popleft())
        if done.done() or self.state.ended:
            for h in inter:
                h.cancel()
            return "".join(digits)
        overall: list[asyncio.TimerHandle] = []

        def arm(_: object = None) -> None:
            if timeout is not None and not done.done():
                overall.append(loop.call_later(timeout, finish))

        prompt = self._playback if stop_playback else None
        if prompt is not None and not prompt.done():
            prompt._fut.add_done_callback(arm)  # the caller's time starts when the prompt ends
        else:
            arm()
        self.emitter.on(str(CallEvents.ToneReceived), on_tone)
        if stop_playback:
            self._tone_onset_hooks.append(barge_in)  # a digit's start, before its end
        self.on_ended.append(on_end)
        self._tone_collectors += 1
        if self._tone_collectors == 1 and not self._tones_wanted:
            self._tone_handling_changed(True)
        try:
            await done
        finally:
            self._tone_collectors -= 1
            if not self.tones_enabled:
                self._tone_handling_changed(False)
            for h in overall + inter:
                h.cancel()
            try:
                self.emitter.remove_listener(str(CallEvents.ToneReceived), on_tone)
            except KeyError:
                pass
            if on_end in self.on_ended:
                self.on_ended.remove(on_end)
            if barge_in in self._tone_onset_hooks:
                self._tone_onset_hooks.remove(barge_in)
        return "".join(digits)

    # -- speech recognition ------------------------------------------------------

    def _open_recognition(self, hints: list[str] | None, end_silence: float,
                          on_event: Callable[[SpeechEvent], None]) -> Callable[[], None]:
        """Hook: start recognising what the caller says, reporting through
        ``on_event``; returns what stops it. This one taps the call's audio
        in the media graph and feeds the engine's speech service.

        :raises CallError: no recognition slot is free, or bad hints.
        """
        graph = self._require_graph()
        try:
            session = default_speech().open(hints, on_event, end_silence=end_silence)
        except (SpeechBusy, AsrError) as exc:
            raise CallError(str(exc)) from None
        try:
            graph.start_tap(self, session)
        except Exception:
            session.close()
            raise

        def stop() -> None:
            session.close()
            graph.stop_tap(self, session)

        return stop

    def _check_speech(self) -> None:
        if self.state.ended:
            raise CallError("call already ended")
        if not self._media_ready():
            raise CallError(f"speech recognition needs a connected call or early media, not {self.state.value}")

    def start_recognition(self, hints: list[str] | None = None, *, end_silence: float = 0.8) -> None:
        """Recognise what the caller says, continuously, until
        :meth:`stop_recognition` or the call's end: ``SpeechRecognized``
        for each partial and final result, ``SpeechError`` on failure.

        :param hints: the words or phrases expected (``["yes", "no"]``):
            recognition is restricted to them, which makes short answers
            far more reliable; ``None``: open vocabulary.
        :param end_silence: seconds of silence that end an utterance.
        :raises CallError: recognition runs already, every slot is taken
            (``--asr-max-concurrent``), or the hints are unusable.
        """
        self._check_speech()
        if self._recognition is not None:
            raise CallError("recognition is running already: stop_recognition() first")

        def on_event(ev: SpeechEvent) -> None:
            if ev.kind in ("partial", "final") and (ev.text or ev.kind == "partial"):
                self._emit(CallEvents.SpeechRecognized, text=ev.text, confidence=ev.confidence,
                           final=ev.kind == "final")
            elif ev.kind == "error":
                self._emit(CallEvents.SpeechError, error=ev.error)

        try:
            self._recognition = self._open_recognition(hints, end_silence, on_event)
        except CallError as exc:
            self._emit(CallEvents.SpeechError, error=str(exc))
            raise

    def stop_recognition(self) -> None:
        """Stop what :meth:`start_recognition` started (nothing if not running)."""
        stop, self._recognition = self._recognition, None
        if stop is not None:
            stop()

    async def gather(self, *, speech: bool = True, digits: bool = True, hints: list[str] | None = None,
                     timeout: float = 8.0, end_silence: float = 0.8, max_digits: int = 1,
                     terminator: str | None = None, inter_digit_timeout: float = 3.0,
                     prompt: str | None = None, voice: str = "en") -> GatherResult:
        """Ask and wait for one answer, spoken or keyed.

        Plays ``prompt`` (text to speech) if given; the caller may answer
        over it (barge-in: speech or a digit stops it). Returns the first
        of: an utterance recognised (``kind="speech"``, ``text``,
        ``confidence``), digits (``kind="digits"``: ``max_digits`` of them,
        or up to ``terminator``, or what came before ``inter_digit_timeout``),
        nothing within ``timeout`` seconds of the prompt's end
        (``"timeout"``; an utterance under way is waited for), the call's
        end (``"hangup"``), or an error (``"error"``, ``error`` says why;
        ``SpeechError`` is emitted too) such as every recognition slot
        being taken. An utterance that recognises as nothing (a cough) is
        ignored. Runs beside :meth:`start_recognition` only if that is not
        running (one recognition per call)::

            r = await call.gather(prompt="Say yes or no", hints=["yes", "no"], digits=False)
            if r.kind == "speech" and r.text == "yes": ...
        """
        if not speech and not digits:
            raise ValueError("gather needs speech, digits or both")
        if max_digits < 1:
            raise ValueError("max_digits must be at least 1")
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._check_speech()
        done: asyncio.Future[GatherResult] = loop.create_future()
        speaking: list[bool] = [False]
        expired: list[bool] = [False]
        timers: list[asyncio.TimerHandle] = []

        def settle(kind: str, **fields: Any) -> None:
            if not done.done():
                done.set_result(GatherResult(kind, elapsed=loop.time() - started, **fields))

        def on_event(ev: SpeechEvent) -> None:
            if ev.kind == "started":
                speaking[0] = True
                self.stop_playback()  # barge-in
            elif ev.kind == "final":
                speaking[0] = False
                if ev.text:
                    latency = time.monotonic() - ev.speech_end if ev.speech_end else None
                    settle("speech", text=ev.text, confidence=ev.confidence, latency=latency)
                elif expired[0]:
                    settle("timeout")
            elif ev.kind == "error":
                self._emit(CallEvents.SpeechError, error=ev.error)
                settle("error", error=ev.error)

        stop_speech: Callable[[], None] | None = None
        if speech:
            if self._recognition is not None:
                raise CallError("gather(speech=True) while start_recognition() runs: stop_recognition() first")
            try:
                stop_speech = self._open_recognition(hints, end_silence, on_event)
            except CallError as exc:
                self._emit(CallEvents.SpeechError, error=str(exc))
                return GatherResult("error", elapsed=loop.time() - started, error=str(exc))
        if prompt:
            self.say(prompt, voice)
        collector: asyncio.Task[str] | None = None
        if digits:
            collector = asyncio.ensure_future(self.collect_tones(
                max_digits=max_digits, terminator=terminator,
                inter_digit_timeout=inter_digit_timeout if max_digits > 1 else None, stop_playback=True))

            def got_digits(task: asyncio.Task[str]) -> None:
                if not task.cancelled() and task.exception() is None and task.result():
                    settle("digits", digits=task.result())

            collector.add_done_callback(got_digits)

        def expire() -> None:
            expired[0] = True
            if not speaking[0]:
                settle("timeout")

        def arm(_: object = None) -> None:
            timers.append(loop.call_later(timeout, expire))

        prompt_pb = self._playback if prompt else None
        if prompt_pb is not None and not prompt_pb.done():
            prompt_pb._fut.add_done_callback(arm)
        else:
            arm()

        def on_end(call: Call) -> None:
            settle("hangup")

        self.on_ended.append(on_end)
        try:
            return await done
        finally:
            for h in timers:
                h.cancel()
            if on_end in self.on_ended:
                self.on_ended.remove(on_end)
            if stop_speech is not None:
                stop_speech()
            if collector is not None and not collector.done():
                collector.cancel()

    # -- actions (overridden by the kinds of call) -----------------------------

    def _playback_done(self, pb: Playback, completed: bool, error: str | None = None) -> None:
        if self._playback is pb:
            self._playback = None
        if pb._resolve(completed, error):
            self.log.info("playback %s finished (completed=%s)", pb.kind, completed)
            self._emit(CallEvents.PlaybackFinished, playback=pb, completed=completed, error=error)

    def _media_ended(self) -> bool:
        return self.state.ended

    def _check_media(self) -> None:
        """Raise :class:`CallError` unless audio can be played now."""
        if self.state.ended:
            raise CallError("call already ended")
        if not self._media_ready():
            raise CallError(f"playback needs a connected call or early media, not {self.state.value}")

    def _media_ready(self) -> bool:
        """Hook: whether media flows now (connected or early media)."""
        return False

    def _play(self, source: FrameSource, done: Callable[[bool], None]) -> None:
        """Hook: start sending ``source``; ``done(completed)`` at its end."""
        raise CallError("this call has no media")

    def _stop_media(self) -> None:
        """Hook: stop sending the current source."""

    def _tts(self) -> TtsCache:
        return default_tts()

    # -- media routing -----------------------------------------------------------

    def _require_graph(self) -> MediaRouter:
        if self.graph is None:
            raise CallError("this call has no media graph: it gets one when a scenario session adopts it")
        return self.graph

    #: Whether this call is a wire of the media graph with no media of its
    #: own (:class:`InternalCall`): what is sent to it comes out of its peer.
    media_wire = False

    def media_port(self) -> AudioPort | None:
        """Hook: this leg's own audio (``None``: none yet, or a wire like
        :class:`InternalCall`)."""
        return None

    def _wire_peer(self) -> Call | None:
        """Hook: a wire's other end (``None`` for a call with media of its own)."""
        return None

    def send_media_to(self, target: MediaEndpoint) -> None:
        """``target`` (a call, this call for an echo, or a conference) hears this call."""
        self._require_graph().connect(self, target)

    def stop_media_to(self, target: MediaEndpoint) -> None:
        """Stop what :meth:`send_media_to` started (nothing if not sending)."""
        self._require_graph().disconnect(self, target)

    def start_echo(self) -> None:
        """Diagnostics: the caller hears their own audio (send_media_to(self))."""
        self.send_media_to(self)

    def stop_echo(self) -> None:
        self.stop_media_to(self)

    def record(self, path: str | Path | None = None) -> Recording:
        """Record what the call hears and says to a WAV file (default: under
        the data directory's ``recordings/``) until :meth:`Recording.stop`
        or the call's end. ``RecordStarted`` now, ``RecordStopped`` at the end."""
        if self.state.ended:
            raise CallError("call already ended")
        if isinstance(self, InternalCall):
            raise CallError("record() records a call with media of its own, not an internal call")
        rec = self._require_graph().start_recording(self, path)
        rec.on_stopped.append(lambda r: self._emit(CallEvents.RecordStopped, path=str(r.path),
                                                   duration=r.duration))
        self._emit(CallEvents.RecordStarted, path=str(rec.path), recording=rec)
        return rec

    def _audio(self) -> AudioLoader:
        """Hook: where files and URLs are loaded from (and cached)."""
        return default_audio_loader()

    def stream_to(self, url: str, *, direction: str = "both", headers: dict[str, str] | None = None,
                  custom: dict[str, str] | None = None, format: str = "twilio",
                  rate: int = 8000) -> MediaStream:
        """Stream this call's audio to a WebSocket bot and play what it sends
        back (Twilio Media Streams, or jambonz-style ``linear16``): see
        :mod:`engine.calls.media_stream`. Returns the awaitable handle
        (``stop()``, ``stats``; ``StreamStarted``/``StreamStopped``/``StreamError``
        on it and on this call).

        :param url: ``ws://`` or ``wss://``.
        :param direction: ``"both"``, ``"inbound"`` (what the caller says) or
            ``"outbound"`` (what the caller hears).
        :param headers: sent with the WebSocket upgrade (a bot's token).
        :param custom: the ``start`` message's ``customParameters``.
        :param format: ``"twilio"`` (µ-law 8 kHz JSON) or ``"linear16"``.
        :param rate: 8000, or 16000 with ``linear16``.
        :raises CallError: the call has ended or has no media of its own,
            or a parameter is wrong (named).
        """
        from engine.calls.media_stream import start_stream

        if self.state.ended:
            raise CallError("call already ended")
        if self.media_wire:
            raise CallError("stream_to() streams a call with media of its own, not an internal call")
        return start_stream(self, self._require_graph(), url, direction=direction, headers=headers,
                            custom=custom, format=format, rate=rate)
    # -- sending DTMF ----------------------------------------------------------------

    def send_digits(self, digits: str, mode: str = "auto", *, duration: float = 0.1,
                    gap: float = 0.07) -> SendDigitsAction:
        """Send DTMF ``digits`` (``0-9 * # A-D``; ``,`` pauses 0.5 s) to the
        far end, each a ``duration`` s tone followed by ``gap`` s of silence.

        :param mode: ``"rfc4733"``: RFC 4733 telephone-events in the call's
            RTP stream (needs telephone-event negotiated; audio being played
            waits meanwhile); ``"info"``: one SIP INFO
            ``application/dtmf-relay`` per digit (needs a connected call);
            ``"auto"`` (default): RFC 4733 when negotiated, else INFO;
            ``"inband"``: the DTMF tone pairs themselves, played into the
            call's audio as a playback (it replaces what the call plays,
            and stopping it stops them; needs a connected call or early
            media), for peers that understand neither events nor INFO.
        :returns: a handle to await or stop. Digits sent while earlier ones
            are still going out follow them.
        :raises CallError: a bad digit (named, with its position), a bad
            mode or timing, or a call that cannot send digits that way now.
        """
        if self.state.ended:
            raise CallError("call already ended")
        try:
            digits = validate_digits(digits)
        except DtmfSenderError as exc:
            raise CallError(f"send_digits: {exc}") from None
        if mode not in DIGIT_MODES:
            raise CallError(f"send_digits: mode must be one of {', '.join(DIGIT_MODES)}, not {mode!r}")
        if not 0.04 <= duration <= MAX_DURATION:
            raise CallError(f"send_digits: duration must be 0.04 to {MAX_DURATION} s, not {duration}")
        if not 0 <= gap <= MAX_DURATION:
            raise CallError(f"send_digits: gap must be 0 to {MAX_DURATION} s, not {gap}")
        if mode == "inband":
            self._check_media()
        action = SendDigitsAction(self, digits, mode if mode == "inband" else self._digits_mode(mode),
                                  duration, gap)
        pending = [a for a in self._digit_actions if not a.done()]
        self._digit_actions = pending + [action]
        if not pending:
            self._start_digits(action)
        else:
            pending[-1]._fut.add_done_callback(lambda fut: self._start_digits(action))
        return action

    def _start_digits(self, action: SendDigitsAction) -> None:
        if action.done():
            return
        if self.state.ended:
            action._resolve(False)
            return
        action._started = True
        if action.mode == "inband":
            self._start_inband_digits(action)
            return
        try:
            if action.mode == "rfc4733" and self._start_rtp_digits(action):
                return
        except CallError as exc:
            self.log.warning("send_digits: %s", exc)
            action._resolve(False)
            return
        action._task = asyncio.get_running_loop().create_task(
            self._pace_digits(action), name=f"digits-{self.id[:8]}"
        )

    def _start_inband_digits(self, action: SendDigitsAction) -> None:
        """Play ``action``'s digits as tones (``duration`` each, then ``gap``
        of silence; :data:`~engine.media.dtmf_sender.PAUSE` for ``,``) into
        the call: one playback, whose end resolves the action."""
        rate = 8000
        parts: list[npt.NDArray[np.int16]] = []
        for digit in action.digits:
            if digit == ",":
                parts.append(np.zeros(round(PAUSE * rate), dtype=np.int16))
                continue
            parts.append(generate_dtmf(digit, action.duration, rate=rate))
            parts.append(np.zeros(round(action.gap * rate), dtype=np.int16))
        try:
            playback = self.start_playback(PcmSource(np.concatenate(parts)))
        except CallError as exc:
            self.log.warning("send_digits: %s", exc)
            action._resolve(False)
            return
        action._playback = playback

        async def follow() -> None:
            action._resolve(await playback)

        action._task = asyncio.get_running_loop().create_task(follow(), name=f"digits-{self.id[:8]}")

    async def _pace_digits(self, action: SendDigitsAction) -> None:
        """Deliver digits one by one on the RFC 4733 timeline: a digit every
        ``duration + gap`` seconds, :data:`~engine.media.dtmf_sender.PAUSE`
        for each ``,``."""
        try:
            last = len(action.digits) - 1
            for index, digit in enumerate(action.digits):
                if digit == ",":
                    await _sleep(PAUSE)
                    continue
                self._deliver_digit(digit, action)
                if index < last:
                    await _sleep(action.duration + action.gap)
        except asyncio.CancelledError:
            action._resolve(False)
            return
        except CallError as exc:
            self.log.warning("send_digits: %s", exc)
            action._resolve(False)
            return
        action._resolve(True)

    def _stop_digits(self) -> None:
        """Stop the digits being sent and drop those waiting (the call ends)."""
        actions, self._digit_actions = self._digit_actions, []
        for action in actions:
            action.stop()

    def _digits_mode(self, mode: str) -> str:
        """Hook: resolve ``"auto"`` and check the call can send that way."""
        raise CallError("this call cannot send digits")

    def _start_rtp_digits(self, action: SendDigitsAction) -> bool:
        """Hook: start sending RFC 4733 events, resolving ``action`` at the
        end; ``False`` to have :meth:`_deliver_digit` pace them instead."""
        return False

    def _stop_rtp_digits(self) -> None:
        """Hook: stop the RFC 4733 events being sent."""

    def _deliver_digit(self, digit: str, action: SendDigitsAction) -> None:
        """Hook: send one digit now (INFO, or to an internal peer)."""
        raise CallError("this call cannot send digits")

    def media_stats(self) -> MediaStats:
        """Packets, bytes, loss, jitter and round-trip time of the call's
        media (RTP and RTCP, RFC 3550); zeros while no media session ran."""
        return MediaStats()

    # -- signalling -------------------------------------------------------------

    def answer(self, headers: dict[str, str] | None = None) -> Awaitable[None]:
        raise NotImplementedError

    def reject(self, code: int = 486, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def ring(self, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def start_early_media(self, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def send_message(self, text: str, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def send_info(self, mime_type: str, body: str | bytes, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    # -- transfer (engine side; SipCall sends REFER instead) ----------------------

    def transfer_to(self, target: str | Call, *, fallback: str | None = None,
                    callerid: str | None = None, timeout: float = 32.0) -> None:
        """Transfer the party on this call to ``target`` (a URI, placed
        through the scenario's ``call_sip``/``call_pstn``, or another call:
        attended). A SIP leg asks its phone or trunk with REFER; this leg
        (a browser, an internal call) has no such request, so the engine
        re-bridges the media: this call's party then hears ``target``
        instead of whoever it heard. ``TransferComplete`` once joined,
        ``TransferFailed`` when the new call fails."""
        self._check_transfer(target, fallback)
        self._bridge_transfer(target, callerid)

    def _check_transfer(self, target: str | Call, fallback: str | None) -> None:
        if fallback not in TRANSFER_FALLBACKS:
            raise CallError(f"fallback must be None or 'bridge', not {fallback!r}")
        if self.state != CallState.CONNECTED:
            raise CallError(f"transfer needs a connected call, not {self.state.value}")
        if target is self:
            raise CallError("a call cannot be transferred to itself")
        if isinstance(target, Call) and target.state != CallState.CONNECTED:
            raise CallError(f"an attended transfer needs the other call connected, not {target.state.value}")

    def _dial_transfer_target(self, target: str, callerid: str | None,
                              headers: dict[str, str] | None = None) -> Call:
        dialer = self.dispatcher
        if not isinstance(dialer, TransferDialer):
            raise CallError("this call belongs to no scenario session: it cannot place the transfer's call")
        return dialer.dial_transfer_target(target, callerid, headers)

    def _bridge_transfer(self, target: str | Call, callerid: str | None,
                         failed_code: int | None = None, failed_reason: str = "") -> Call:
        """Join this call's party to ``target`` in the media graph (dialing
        it first when it is a URI), leaving its other flows. With
        ``failed_code`` (a refused REFER's fallback) the events are
        ``TransferFailed`` and the join."""
        graph = self._require_graph()
        other = target if isinstance(target, Call) else self._dial_transfer_target(target, callerid)

        def join(_: object = None) -> None:
            if self.state.ended or other.state.ended:
                return
            for src, dst in graph.flows():
                if (src is self and dst is not other) or (dst is self and src is not other):
                    graph.disconnect(src, dst)
            graph.connect(self, other)
            graph.connect(other, self)
            self._rebridged()
            if failed_code is None:
                self._emit(CallEvents.TransferComplete, code=200, reason="OK", new_call=other)

        def failed(ev: CallEvent) -> None:
            if failed_code is None:
                self._emit(CallEvents.TransferFailed, code=ev.code, reason=ev.reason, refused=False,
                           new_call=other)

        if failed_code is not None:
            self._emit(CallEvents.TransferFailed, code=failed_code, reason=failed_reason, refused=True,
                       new_call=other)
        if other.state == CallState.CONNECTED:
            join()
        else:
            other.emitter.once(str(CallEvents.Connected), join)
            other.emitter.once(str(CallEvents.Failed), failed)
        return other

    def _rebridged(self) -> None:
        """This call's party was joined to a transfer's target in the media
        graph: a leg whose far end can be told (a browser) says so."""

    def _connected_future(self) -> asyncio.Future[None]:
        """What ``answer()`` returns: a future done once the call has
        connected (even if it has ended since), failing with
        :class:`CallError` if the call ends without connecting. Awaiting it
        is optional (VoxEngine style): when nobody does, its failure is not
        reported again as "exception never retrieved", since the call's
        Failed or Disconnected event already tells.

        A plain future that :meth:`_set_state` settles, not a task waiting
        for the state to change: a task and its wake-ups were about a
        fiftieth of an answered call's cost."""
        fut: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        if self.was_connected or self.state.ended:
            self._settle_connected(fut)
        elif self._connect_waiters is None:
            self._connect_waiters = [fut]
        else:
            self._connect_waiters.append(fut)
        return fut

    def _settle_connected(self, fut: asyncio.Future[None]) -> None:
        """Resolve one of :meth:`_connected_future`'s futures: the call has
        connected, or it ended first."""
        if fut.done():  # cancelled by whoever awaited it
            return
        if self.was_connected:
            fut.set_result(None)
        else:
            fut.set_exception(CallError(f"call ended before it connected ({self.end_code} {self.end_reason})"))
            fut.exception()  # seen (see _connected_future): no done callback a call to mark it


class InternalCall(Call):
    """One end of a pair of calls between two sessions, joined in memory.

    The caller's end is outbound, the callee's end inbound; the callee
    answers or rejects, either end hangs up, and messages and INFO cross.
    Both ends change state before either emits, so a listener of one end
    already sees the other end's new state (and may act on it).
    """

    kind = "internal"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.peer: InternalCall | None = None
        #: Speech and audio files for ``say`` and ``start_playback`` into
        #: this end (the adopting session sets the engine's; ``None``: the defaults).
        self.tts: TtsCache | None = None
        self.audio: AudioLoader | None = None

    # An internal call is a wire in the media graph: what is played to this
    # end is heard by whatever the other end's session sends it to.

    media_wire = True

    def _wire_peer(self) -> InternalCall | None:
        return self.peer

    def _check_media(self) -> None:
        self._require_graph()
        super()._check_media()

    def _media_ready(self) -> bool:
        return self.graph is not None and self.state in (CallState.CONNECTED, CallState.ALERTING,
                                                         CallState.PROGRESSING)

    def _play(self, source: FrameSource, done: Callable[[bool], None]) -> None:
        self._require_graph().start_player(self, source, done)

    def _stop_media(self) -> None:
        if self.graph is not None:
            self.graph.stop_player(self)

    def _tts(self) -> TtsCache:
        return self.tts or default_tts()

    def _audio(self) -> AudioLoader:
        return self.audio or default_audio_loader()

    def _require_peer(self) -> InternalCall:
        if self.peer is None:
            raise CallError("internal call has no peer")
        return self.peer

    def _end_both(
        self, mine: tuple[CallState, CallEvents, int, str],
        theirs: tuple[CallState, CallEvents, int, str], headers: dict[str, str] | None,
    ) -> None:
        """End this end and the peer: both states first, then both events
        (ours without headers, the peer's with the headers sent to it)."""
        peer = self.peer
        ended_here = self._conclude(mine[0], mine[2], mine[3])
        ended_there = peer is not None and peer._conclude(theirs[0], theirs[2], theirs[3])
        if ended_here:
            self._emit(mine[1], code=mine[2], reason=mine[3], headers={})
        if ended_there:
            assert peer is not None
            peer._emit(theirs[1], code=theirs[2], reason=theirs[3], headers=dict(headers or {}))

    def answer(self, headers: dict[str, str] | None = None) -> Awaitable[None]:
        """Connect both ends: the caller's end gets Connected (with
        ``headers``) first, as a SIP caller gets 200 OK before the callee
        gets the ACK, then this end."""
        if check_action(self, CallAction.ANSWER):
            peer = self._require_peer()
            sent = dict(headers or {})
            self._set_state(CallState.CONNECTED)
            peer_connects = peer.state == CallState.PROGRESSING
            if peer_connects:
                peer.headers.update(sent)
                peer._set_state(CallState.CONNECTED)
                peer._emit(CallEvents.Connected, headers=sent)
            if not self.state.ended:  # a listener of the peer may have hung up
                self._emit(CallEvents.Connected, headers={})
        return self._connected_future()

    def reject(self, code: int = 486, headers: dict[str, str] | None = None) -> None:
        """Refuse the call: Failed with ``code`` on both ends (``headers`` go to the caller)."""
        check_action(self, CallAction.REJECT, code=code)
        failed = (CallState.FAILED, CallEvents.Failed, code, "Rejected")
        self._end_both(failed, failed, headers)

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        """End the call, as a SIP call would: after the answer, Disconnected
        200 on both ends; the callee's end before the answer refuses the call
        (Disconnected 480 here, Failed 480 for the caller); the caller's end
        before the answer cancels it (Disconnected 487 on both). A hangup of
        an ended call does nothing."""
        if not check_action(self, CallAction.HANGUP):
            return
        if self.state == CallState.CONNECTED:
            bye = (CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup")
            self._end_both(bye, bye, headers)
        elif self.direction == "inbound":
            self._end_both((CallState.DISCONNECTED, CallEvents.Disconnected, 480, "Hangup"),
                           (CallState.FAILED, CallEvents.Failed, 480, "Temporarily Unavailable"),
                           headers)
        else:
            cancel = (CallState.DISCONNECTED, CallEvents.Disconnected, 487, "Cancelled")
            self._end_both(cancel, cancel, headers)

    def _before_answer(self, action: CallAction) -> InternalCall:
        check_action(self, action)
        return self._require_peer()

    def ring(self, headers: dict[str, str] | None = None) -> None:
        """Tell the caller the callee is ringing (Ringing on the caller's end)."""
        peer = self._before_answer(CallAction.RING)
        if peer.state == CallState.PROGRESSING:
            peer._emit(CallEvents.Ringing, code=180, reason="Ringing", headers=dict(headers or {}))

    def start_early_media(self, headers: dict[str, str] | None = None) -> None:
        """Tell the caller early media starts (Progress on the caller's end)."""
        peer = self._before_answer(CallAction.START_EARLY_MEDIA)
        if peer.state == CallState.PROGRESSING:
            peer._emit(CallEvents.Progress, code=183, reason="Session Progress",
                       headers=dict(headers or {}))

    def send_message(self, text: str, headers: dict[str, str] | None = None) -> None:
        """MessageReceived (``text``, ``headers``) on the other end."""
        check_action(self, CallAction.SEND_MESSAGE)
        peer = self._require_peer()
        peer._emit(CallEvents.MessageReceived, text=text, headers=dict(headers or {}))

    def _digits_mode(self, mode: str) -> str:
        if self.state != CallState.CONNECTED:
            raise CallError(f"send_digits needs a connected call, not {self.state.value}")
        return "rfc4733" if mode == "auto" else mode

    def _deliver_digit(self, digit: str, action: SendDigitsAction) -> None:
        """The other end gets ToneReceived as if the digit came over SIP:
        mode ``"rfc4733"``, or by ``"info"`` (InfoReceived first, as an
        ``application/dtmf-relay`` INFO would give)."""
        if self.state != CallState.CONNECTED:
            raise CallError("the call is no longer connected")
        if action.mode == "info":
            self.send_info("application/dtmf-relay", dtmf_relay_body(digit, action.duration))
        else:
            self._require_peer()._tone_received(digit, "rfc4733")

    def send_info(self, mime_type: str, body: str | bytes, headers: dict[str, str] | None = None) -> None:
        """InfoReceived (``mime_type``, ``body`` as bytes, ``headers``) on the other end."""
        check_action(self, CallAction.SEND_INFO)
        data = body.encode() if isinstance(body, str) else body
        self._require_peer()._info_received(mime_type, data, dict(headers or {}))


def dtmf_relay_body(digit: str, duration: float) -> str:
    """An ``application/dtmf-relay`` INFO body (the de facto format: Cisco's,
    read by :func:`engine.media.dtmf.parse_dtmf_relay`); Duration in ms."""
    return f"Signal={digit}\r\nDuration={round(duration * 1000)}\r\n"


def end_other_end(ended: Call, other: Call) -> None:
    """End ``other``, the far end of the direct call ``ended``: reject it
    with ``ended``'s failure code (480 without one) while it rings as the
    callee, else hang it up. Shared by :mod:`engine.calls.web_call` and the scenario harness's
    simulation of it."""
    try:
        if other.direction == "inbound" and other.state == CallState.ALERTING:
            code = ended.end_code if ended.end_code is not None and 300 <= ended.end_code <= 699 else 480
            other.reject(code)
        else:
            other.hangup()
    except CallError:
        other.log.exception("ending the other end of a direct call failed")


def new_call_pair(
    *,
    number: str,
    callerid: str,
    display_name: str | None,
    headers: dict[str, str] | None,
    caller_dispatcher: Dispatcher,
    grant: Grant | None = None,
    source: str | None = None,
) -> tuple[InternalCall, InternalCall]:
    """Make the two ends of an internal call: (caller's end, callee's end).

    The callee's end has no dispatcher yet: the session that receives it sets
    one before emitting anything. ``grant`` and ``source`` (the caller's,
    handed on by the calling session) are set on the callee's end.
    """
    out = InternalCall(
        direction="outbound", number=number, callerid=callerid, display_name=display_name,
        headers=headers, dispatcher=caller_dispatcher,
    )
    inc = InternalCall(
        direction="inbound", number=number, callerid=callerid, display_name=display_name,
        headers=headers,
    )
    inc.grant, inc.source = grant, source
    out.peer, inc.peer = inc, out
    out._set_state(CallState.PROGRESSING)
    inc._set_state(CallState.ALERTING)
    return out, inc
