"""Simulated call legs and the test's side of them.

A :class:`SimCall` is a real :class:`engine.calls.call.Call`: the scenario holds
it and every event, state change, DTMF collection, playback handle and
listener runs through the engine's own code. Only the transport-facing
hooks are replaced: answering, rejecting and hanging up end or connect the
leg in memory (as :class:`~engine.calls.sip_leg.SipCall` would after the far end's
ACK, final response or BYE), messages and INFO are recorded instead of
sent, ``say`` is recorded as text and lasts as long as the text would take
to speak (no espeak-ng), and playbacks end when their audio would have,
on the virtual clock.

The test holds the other end: an :class:`Endpoint`, the caller of an
inbound call (:class:`Caller`) or the party an outbound call reaches
(:class:`Callee`). Its methods act as that person would (press digits,
send a message, answer, reject, hang up) and its checks read what the
person experienced (what was said and played, messages received, how the
call ended). Checks return a :class:`Verdict`: true or false for ``assert``,
and a ``repr`` that says what was expected and what happened.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from pathlib import Path

import numpy as np

from engine.calls.call import (
    Call, CallAction, CallError, CallEvents, CallState, Dispatcher, Playback, check_action,
)
from engine.calls.direct import DirectCallLeg
from engine.calls.speech import SpeechEvent
from engine.media.players import FrameSource, PcmSource, PlaybackFinished, SilenceSource, ToneSource
from engine.media.pcm import Pcm
from engine.media.tts import TtsCache
from engine.runtime.scenario import Session
from engine.sip.message import REASONS
from engine.sip.uri import SipUri, parse_uri

if TYPE_CHECKING:
    from engine.testing.app import App
    from engine.testing.media import GraphPlayer

__all__ = [
    "SimCall",
    "SimWebCall",
    "Endpoint",
    "Caller",
    "Callee",
    "SimUserAgent",
    "RecordingTts",
    "Speech",
    "Played",
    "Message",
    "Verdict",
    "estimate_speech",
]

DTMF_DIGITS = frozenset("0123456789*#ABCD")

#: Audio longer than this (seconds) with no end in sight counts as endless.
_PROBE_LIMIT = 600.0


def estimate_speech(text: str) -> float:
    """Seconds ``text`` takes to speak: 0.3 s plus 0.4 s a word (150 words
    a minute, a usual TTS rate), at least half a second."""
    return round(max(0.5, 0.3 + 0.4 * len(text.split())), 2)


def _quote(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


class Verdict:
    """The result of a check: truthy when it holds; its ``repr`` (what
    pytest prints for a failed ``assert``) says what was expected and what
    happened instead."""

    __slots__ = ("ok", "message")

    def __init__(self, ok: bool, message: str) -> None:
        self.ok = ok
        self.message = message

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__


# -- records -----------------------------------------------------------------------


@dataclass
class Speech:
    """One ``say``: the text, the voice, when it started (virtual seconds),
    how long it lasts, and its handle. ``via`` names the conference or call
    that spoke when the speech came through the media graph (a
    conference's ``say``, or ``say`` on the other end of a
    ``call_conference``); ``None`` when it was said to this call itself."""

    text: str
    voice: str
    at: float
    duration: float
    playback: Playback
    via: str | None = None

    @property
    def completed(self) -> bool | None:
        """``True`` when it was spoken to the end, ``False`` when cut short,
        ``None`` while it plays."""
        return self.playback.completed


@dataclass
class Played:
    """One playback other than speech: ``description`` names the source
    (``"tone 440 Hz"``, ``"audio 2.0 s"``, a file name...); ``duration`` is
    ``None`` for an endless source (looping music)."""

    description: str
    source: FrameSource
    at: float
    duration: float | None
    playback: Playback
    via: str | None = None

    @property
    def completed(self) -> bool | None:
        return self.playback.completed


@dataclass
class Message:
    """A message (SIP MESSAGE, or the web SDK's) the scenario sent to the endpoint."""

    text: str
    headers: dict[str, str] = field(default_factory=dict)
    at: float = 0.0

    def json(self) -> Any:
        """The text parsed as JSON."""
        return jsonlib.loads(self.text)


@dataclass
class Entry:
    """A line of an endpoint's transcript: what happened, when (virtual seconds)."""

    at: float
    text: str

    def __str__(self) -> str:
        return f"{self.at:8.2f}  {self.text}"


# -- speech --------------------------------------------------------------------------


class RecordingTts(TtsCache):
    """Speech without a synthesizer: silence as long as the text would take
    to speak (:func:`estimate_speech`). The text itself is recorded by
    :meth:`SimCall.say`."""

    def __init__(self, rate: int = 8000) -> None:  # no provider, no cache directory
        self.rate = rate
        self.hits = 0
        self.misses = 0

    def get(self, text: str, voice: str = "en") -> Pcm:
        return np.zeros(int(estimate_speech(text) * self.rate), dtype=np.int16)

    async def get_async(self, text: str, voice: str = "en") -> Pcm:
        return self.get(text, voice)


def describe_source(source: FrameSource) -> str:
    """A short name for a player, for transcripts and messages."""
    if isinstance(source, ToneSource):
        return f"tone {source.freq:g} Hz"
    if isinstance(source, SilenceSource):
        return "silence"
    for attr in ("path", "url", "name", "filename"):
        value = getattr(source, attr, None)
        if value:
            return str(value)
    if isinstance(source, PcmSource):
        return "audio (looped)" if source.loop else f"audio {len(source.pcm) / source.rate:.1f} s"
    return type(source).__name__


def source_duration(source: FrameSource) -> float | None:
    """Seconds ``source`` will play (``None``: endless). Known players are
    measured; others are read frame by frame (players do no I/O) until
    they end or :data:`_PROBE_LIMIT` seconds, past which they count as
    endless."""
    if isinstance(source, PcmSource):
        return None if source.loop else max(0, len(source.pcm) - source.position) / source.rate
    if isinstance(source, ToneSource):
        return None if source.total is None else max(0, source.total - source.position) / source.rate
    if isinstance(source, SilenceSource):
        return None if source.remaining is None else max(0, source.remaining) / source.rate
    duration = getattr(source, "duration", None)
    if isinstance(duration, (int, float)):
        return float(duration)
    rate = getattr(source, "rate", 8000) or 8000
    frame = rate // 50
    samples = 0
    try:
        while samples < _PROBE_LIMIT * rate:
            source.read(frame)
            samples += frame
    except PlaybackFinished:
        return samples / rate
    return None


# -- the leg the scenario holds --------------------------------------------------------


class SimCall(Call):
    """A call leg whose far end is the test (see the module docstring).

    ``kind`` is ``"sip"`` for phone and SIP legs and ``"web"`` for web SDK
    legs (:class:`SimWebCall`, which can also make direct calls), as the
    scenario would see in ``callbridge serve``.
    """

    #: Who ends the call when the engine's API does, for the transcript.
    _by = "the scenario"

    def __init__(self, endpoint: Endpoint, *, kind: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        self.endpoint = endpoint
        #: Whether early media runs (inbound: the scenario started it;
        #: outbound: the callee sent 183).
        self.early_media = False
        self._answering = False
        self._play_end: asyncio.TimerHandle | None = None
        self._speech = RecordingTts()
        #: Running recognitions (gather, start_recognition) that Endpoint.say reaches.
        self._listening: list[Callable[[SpeechEvent], None]] = []

    # -- the far end: what the test does, as the peer's signalling would -------------

    def remote_offer(self) -> None:
        """The far end offers this inbound call (an INVITE arrived): ``ALERTING``."""
        self._set_state(CallState.ALERTING)

    def remote_dialed(self) -> None:
        """The engine's INVITE for this outbound call went out: ``PROGRESSING``."""
        self._set_state(CallState.PROGRESSING)

    def remote_progress(self, event: CallEvents, code: int, reason: str, headers: dict[str, str]) -> None:
        """The far end sent a provisional answer (180 ``Ringing``, 183 ``Progress``)."""
        self._emit(event, code=code, reason=reason, headers=headers)

    def remote_answer(self, headers: dict[str, str]) -> None:
        """The far end answered this outbound call (200 OK): ``Connected``."""
        self.headers.update(headers)
        self._set_state(CallState.CONNECTED)
        self._emit(CallEvents.Connected, code=200, reason="OK", headers=dict(headers))

    def remote_hangup(self, code: int, reason: str, headers: dict[str, str] | None = None) -> None:
        """The far end ended the call (BYE: 200, CANCEL: 487): ``Disconnected``."""
        self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, code, reason, headers)

    def remote_fail(self, code: int, reason: str, headers: dict[str, str] | None = None) -> None:
        """The far end refused the call with a final ``code`` (or it timed out): ``Failed``."""
        self._finish(CallState.FAILED, CallEvents.Failed, code, reason, headers)

    def remote_message(self, text: str, headers: dict[str, str]) -> None:
        """The far end sent a MESSAGE in the dialog (``MessageReceived``)."""
        self._remote_message(text, headers)

    def remote_info(self, mime_type: str, body: bytes, headers: dict[str, str]) -> None:
        """The far end sent an INFO (``InfoReceived``; DTMF bodies also ``ToneReceived``)."""
        self._info_received(mime_type, body, headers)

    def remote_tone(self, digit: str, mode: str) -> None:
        """The far end pressed ``digit`` (RFC 4733 event or in-band tone)."""
        self._tone_received(digit, mode)

    def _open_recognition(self, hints: list[str] | None, end_silence: float,
                          on_event: Callable[[SpeechEvent], None]) -> Callable[[], None]:
        """Recognition on a simulated leg hears what :meth:`Endpoint.say` says (no audio, no recogniser)."""
        self._listening.append(on_event)
        return lambda: self._listening.remove(on_event) if on_event in self._listening else None

    def remote_speech(self, text: str, confidence: float) -> bool:
        """The far end said ``text``: each running recognition gets it as a
        final result. ``False`` when nothing listened."""
        listeners = list(self._listening)
        for on_event in listeners:
            on_event(SpeechEvent("started"))
            on_event(SpeechEvent("final", text, confidence, "silence", None))
        return bool(listeners)

    @property
    def media_ready(self) -> bool:
        """Whether media flows on this leg (connected, or early media)."""
        return self._media_ready()

    # -- signalling (what SipCall sends, done in memory) --------------------------

    def answer(self, headers: dict[str, str] | None = None) -> asyncio.Future[None]:
        """Answer; the caller acknowledges on the next turn of the loop (as
        a SIP caller's ACK arrives after our 200), then ``Connected``."""
        if check_action(self, CallAction.ANSWER, answered=self._answering):
            self._answering = True
            self.endpoint._note("answered by the scenario" + _with_headers(headers))
            asyncio.get_running_loop().call_soon(self._acknowledged)
        return self._connected_future()

    def _acknowledged(self) -> None:
        if self.state == CallState.ALERTING:
            self._set_state(CallState.CONNECTED)
            self._emit(CallEvents.Connected, headers={})

    def reject(self, code: int = 486, headers: dict[str, str] | None = None) -> None:
        check_action(self, CallAction.REJECT, answered=self._answering, code=code)
        self.endpoint._note(f"rejected by {self._by} with {code}" + _with_headers(headers))
        self._finish(CallState.FAILED, CallEvents.Failed, code, None)

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        if not check_action(self, CallAction.HANGUP):
            return
        self.endpoint._note(f"hung up by {self._by}" + _with_headers(headers))
        if self.state == CallState.CONNECTED or (self.direction == "inbound" and self._answering):
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup")
        elif self.direction == "inbound":
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 480, "Hangup")
        else:
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 487, "Cancelled")

    def ring(self, headers: dict[str, str] | None = None) -> None:
        check_action(self, CallAction.RING)
        self.endpoint._note("ringing (180)")

    def start_early_media(self, headers: dict[str, str] | None = None) -> None:
        check_action(self, CallAction.START_EARLY_MEDIA)
        self.early_media = True
        self.endpoint._note("early media (183)")

    def send_message(self, text: str, headers: dict[str, str] | None = None) -> None:
        if self.state != CallState.CONNECTED:
            raise CallError("MESSAGE needs a connected call")
        self.endpoint.messages.append(Message(text, dict(headers or {}), self.endpoint._now()))
        self.endpoint._note(f"message {_quote(text)}" + _with_headers(headers))

    def send_info(self, mime_type: str, body: str | bytes, headers: dict[str, str] | None = None) -> None:
        check_action(self, CallAction.SEND_INFO)
        data = body.encode() if isinstance(body, str) else body
        self.endpoint.infos.append((mime_type, data))
        self.endpoint._note(f"INFO {mime_type} {data!r}")

    def _remote_message(self, text: str, headers: dict[str, str]) -> None:
        """A message from the far end (the test): ``MessageReceived``."""
        self._emit(CallEvents.MessageReceived, text=text, headers=headers, mime_type="text/plain")

    # -- media ---------------------------------------------------------------------------

    def say(self, text: str, voice: str = "en") -> Playback:
        pb = super().say(text, voice)
        self.endpoint.speech.append(Speech(text, voice, self.endpoint._now(), estimate_speech(text), pb))
        self.endpoint._note(f"said {_quote(text)}")
        return pb

    def _media_ready(self) -> bool:
        if self.state == CallState.CONNECTED:
            return True
        return self.state in (CallState.ALERTING, CallState.PROGRESSING) and self.early_media

    def _play(self, source: FrameSource, done: Callable[[bool], None]) -> None:
        duration = source_duration(source)
        current = self._playback
        if current is not None and current.kind != "say":
            what = Path(current.what).name if current.what else describe_source(source)
            self.endpoint.played.append(Played(what, source, self.endpoint._now(), duration, current))
            self.endpoint._note(f"played {what}")
        self._stop_media()
        if duration is not None:
            self._play_end = asyncio.get_running_loop().call_later(duration, self._played_out, done)

    def _played_out(self, done: Callable[[bool], None]) -> None:
        self._play_end = None
        done(True)

    def _stop_media(self) -> None:
        if self._play_end is not None:
            self._play_end.cancel()
            self._play_end = None

    @property
    def playing(self) -> bool:
        """Whether audio with an end (a prompt, not hold music) plays now."""
        return self._play_end is not None

    def _tts(self) -> TtsCache:
        return self._speech


def _with_headers(headers: dict[str, str] | None) -> str:
    return f" with headers {headers}" if headers else ""


class SimWebCall(DirectCallLeg, SimCall):
    """A web SDK leg (``kind == "web"``), with what
    :class:`~engine.calls.web_call.WebCall` adds to a call: direct calls.

    :meth:`forward_call_to_user_direct` is WebCall's own
    (:class:`~engine.calls.direct.DirectCallLeg`): the callee (a
    :class:`Callee` with ``how == "web"`` and ``direct``, rung with the
    caller's headers) joins the caller's session; the callee's answer
    connects both (the caller first); the end, failure or rejection of
    either is passed on to the other (a ringing caller is rejected with the
    callee's code); messages from either browser are relayed to the other.
    Only the hooks differ: the callee is rung through :class:`SimUserAgent`
    and the transcript notes what happened. The engine carries no media for
    such a call: nothing flows in the media graph and the scenario cannot
    play to it.
    """

    def __init__(self, endpoint: Endpoint, **kwargs: Any) -> None:
        super().__init__(endpoint, kind="web", **kwargs)
        #: A direct call (browser to browser): the engine relays only signalling.
        self.direct = False
        #: The other end of a direct call.
        self.direct_peer: SimWebCall | None = None

    def forward_call_to_user_direct(self, headers: dict[str, str] | None = None) -> SimWebCall | None:
        """As :meth:`engine.calls.web_call.WebCall.forward_call_to_user_direct`
        (``None`` when the user is not logged in: :meth:`App.log_in_web_user`)."""
        peer = super().forward_call_to_user_direct(headers)
        assert peer is None or isinstance(peer, SimWebCall)
        return peer

    # -- DirectCallLeg's hooks ------------------------------------------------------------

    def _offer_answered(self) -> bool:
        return self.early_media

    def _direct_dialer(self) -> Callable[[dict[str, str]], DirectCallLeg | None]:
        return lambda headers: self.endpoint.app.ua.call_web_user_direct(self.number, self, headers)

    def _forwarded(self, peer: DirectCallLeg) -> None:
        assert isinstance(peer, SimWebCall)
        self.endpoint._note(f"forwarded directly to {peer.endpoint.name}")

    def _connect_direct(self, callee: DirectCallLeg, sdp: str | None, headers: dict[str, str]) -> None:
        assert isinstance(callee, SimWebCall)
        self.endpoint._note(f"connected directly to {callee.endpoint.name}")

    def _end_for_other_end(self, ended: DirectCallLeg) -> None:
        self._by = f"the engine (the direct call's other end {ended.state.value} {ended.end_code})"
        super()._end_for_other_end(ended)

    # -- what a direct call changes ---------------------------------------------------------

    def answer(self, headers: dict[str, str] | None = None) -> asyncio.Future[None]:
        if self.direct:
            raise CallError("a direct call is answered by its callee (forward_call_to_user_direct)")
        return super().answer(headers)

    def start_early_media(self, headers: dict[str, str] | None = None) -> None:
        if self.direct:
            raise CallError("a direct call has no early media from the engine")
        super().start_early_media(headers)

    def _media_ready(self) -> bool:
        return not self.direct and super()._media_ready()

    def _remote_message(self, text: str, headers: dict[str, str]) -> None:
        super()._remote_message(text, headers)
        self._relay_message(text, headers)


# -- the test's end ---------------------------------------------------------------------


class Endpoint:
    """The person (phone, browser, far party) at the end of one :class:`SimCall`.

    :ivar leg: the call the scenario holds.
    :ivar name: how messages and media flows name it.
    :ivar transport: ``"pstn"``, ``"sip"``, ``"user"`` or ``"web"``.
    """

    role = "endpoint"

    def __init__(self, app: App, *, name: str, transport: str, direction: str, number: str,
                 callerid: str, display_name: str | None, headers: dict[str, str] | None,
                 dispatcher: Dispatcher | None = None) -> None:
        self.app = app
        self.name = name
        self.transport = transport
        self.speech: list[Speech] = []
        self.played: list[Played] = []
        self.messages: list[Message] = []
        self.infos: list[tuple[str, bytes]] = []
        self.transcript: list[Entry] = []
        self.leg: SimCall = (
            SimWebCall(self, direction=direction, number=number, callerid=callerid,
                       display_name=display_name, headers=headers, dispatcher=dispatcher)
            if transport == "web" else
            SimCall(self, kind="sip", direction=direction, number=number, callerid=callerid,
                    display_name=display_name, headers=headers, dispatcher=dispatcher)
        )
        self.leg.on_ended.append(self._ended)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.leg.state.value}>"

    # -- state -----------------------------------------------------------------------

    @property
    def state(self) -> CallState:
        return self.leg.state

    @property
    def code(self) -> int | None:
        """The SIP code the call ended with (``None`` while it lasts)."""
        return self.leg.end_code

    @property
    def reason(self) -> str | None:
        return self.leg.end_reason

    @property
    def connected(self) -> bool:
        return self.leg.state == CallState.CONNECTED

    @property
    def ended(self) -> bool:
        return self.leg.state.ended

    @property
    def direct(self) -> bool:
        """Whether this is one end of a direct call (browser to browser:
        ``forward_call_to_user_direct``; no media through the engine)."""
        return isinstance(self.leg, SimWebCall) and self.leg.direct

    @property
    def direct_peer(self) -> Endpoint | None:
        """The other end of this endpoint's direct call, if any."""
        peer = self.leg.direct_peer if isinstance(self.leg, SimWebCall) else None
        return peer.endpoint if peer is not None else None

    @property
    def said(self) -> list[str]:
        """Everything the scenario said to this endpoint, in order."""
        return [s.text for s in self.speech]

    @property
    def session(self) -> Session | None:
        """The scenario session holding the leg."""
        disp = self.leg.dispatcher
        return disp if isinstance(disp, Session) else None

    @property
    def log(self) -> list[str]:
        """The session log of the scenario holding the leg (text only)."""
        session = self.session
        return self.app.log_of(session.id) if session is not None else []

    @property
    def conferences(self) -> list[str]:
        """Conferences this endpoint joined (its audio reached one of their
        mixers; see :meth:`joined`), in order."""
        return self.app._conferences_of(self)

    # -- the person's actions ------------------------------------------------------------

    def press(self, digits: str, *, interval: float = 0.0, mode: str = "rfc4733") -> None:
        """Press DTMF ``digits`` (``"1234#"``), ``interval`` virtual seconds
        apart. The scenario hears them only while tone handling is on
        (``handle_tones`` or a running ``collect_tones``), as on a real call.

        :param mode: ``"rfc4733"`` (in the RTP stream), or ``"info"`` (SIP
            INFO ``application/dtmf-relay``, parsed by the engine).
        """
        bad = [d for d in digits if d not in DTMF_DIGITS]
        if bad or not digits:
            raise ValueError(f"DTMF digits are 0-9, *, # and A-D, not {digits!r}")
        if mode not in ("rfc4733", "info", "inband"):
            raise ValueError(f"mode must be 'rfc4733', 'info' or 'inband', not {mode!r}")
        self._require(self.leg.media_ready, "press digits", "a connected call or early media")
        heard: list[bool] = []

        def one(digit: str) -> None:
            heard.append(self.leg.tones_enabled and not self.leg.state.ended)
            if mode == "info":
                body = f"Signal={digit}\r\nDuration=160\r\n".encode()
                self.leg.remote_info("application/dtmf-relay", body, {})
            else:
                self.leg.remote_tone(digit, mode)

        for i, digit in enumerate(digits):
            if i and interval > 0:
                self.app.wait(interval)
            last = i == len(digits) - 1
            if i == 0:
                self._note(f"pressed {digits}")
            self.app.act(one, digit, listen=last)
        missed = "".join(d for d, ok in zip(digits, heard) if not ok)
        if missed:
            self._note(f"(the scenario did not hear {missed!r}: tone handling was off)")

    def send_message(self, text: str, headers: dict[str, str] | None = None) -> None:
        """Send a message into the call (``MessageReceived`` on the leg)."""
        self._require(self.connected, "send a message", "a connected call")
        self._note(f"sent message {_quote(text)}")
        self.app.act(self.leg.remote_message, text, dict(headers or {}))

    def send_info(self, mime_type: str, body: str | bytes, headers: dict[str, str] | None = None) -> None:
        """Send a SIP INFO into the call (``InfoReceived``; DTMF bodies also
        give ``ToneReceived``)."""
        self._require(self.connected, "send INFO", "a connected call")
        data = body.encode() if isinstance(body, str) else body
        self._note(f"sent INFO {mime_type}")
        self.app.act(self.leg.remote_info, mime_type, data, dict(headers or {}))

    def say(self, text: str, *, confidence: float = 1.0) -> None:
        """Say ``text`` into the call: a running ``gather(speech=True)`` or
        ``start_recognition`` gets it as recognised speech (as if the
        recogniser heard it exactly, with ``confidence``).

        :raises AssertionError: nothing in the scenario was listening.
        """
        self._require(self.leg.media_ready, "say something", "a connected call or early media")
        heard: list[bool] = []
        self._note(f"said {text!r}")
        self.app.act(lambda: heard.append(self.leg.remote_speech(text, confidence)), listen=True)
        if not heard or not heard[0]:
            raise AssertionError(f"{self._who()} said {text!r} but the scenario was not recognising speech")

    def hang_up(self, headers: dict[str, str] | None = None) -> None:
        """Hang up: BYE once connected (``Disconnected`` 200); a caller
        hanging up before the answer cancels (``Disconnected`` 487)."""
        leg = self.leg
        if leg.state.ended:
            raise AssertionError(f"{self._who()} cannot hang up: the call already ended{self._story()}")
        hdrs = dict(headers or {})
        self._note("hung up")
        if leg.state == CallState.CONNECTED:
            self.app.act(leg.remote_hangup, 200, "BYE", hdrs)
        elif leg.direction == "inbound":
            self.app.act(leg.remote_hangup, 487, "Cancelled", hdrs)
        else:
            raise AssertionError(
                f"{self._who()} cannot hang up a call it has not answered: use reject(){self._story()}"
            )

    def wait(self, seconds: float | None = None) -> None:
        """Do nothing for ``seconds`` of virtual time (see :meth:`App.wait`)."""
        self.app.wait(seconds)

    # -- checks -----------------------------------------------------------------------------

    def heard_speech(self, text: str) -> Verdict:
        """Whether the scenario said something containing ``text`` (case-insensitive)."""
        needle = text.casefold()
        for s in self.speech:
            if needle in s.text.casefold():
                return Verdict(True, f"{self._who()} heard {_quote(s.text)}")
        said = ", ".join(_quote(t, 50) for t in self.said[-4:]) or "nothing"
        return Verdict(False, f"expected {self._who()} to hear {_quote(text)}; it heard {said}"
                       + self._story(said=False))

    def heard_playback(self, what: str = "") -> Verdict:
        """Whether something other than speech was played whose description
        (``"tone 440 Hz"``, a file name...) contains ``what``."""
        needle = what.casefold()
        for p in self.played:
            if needle in p.description.casefold():
                return Verdict(True, f"{self._who()} heard {p.description}")
        played = ", ".join(p.description for p in self.played[-4:]) or "nothing"
        return Verdict(False, f"expected {self._who()} to hear a playback of {what or 'anything'!r};"
                       f" it was played {played}" + self._story())

    def received_message(self, text: str | None = None, *, json: dict[str, Any] | None = None) -> Verdict:
        """Whether the scenario sent a message containing ``text``, or
        whose JSON object contains every item of ``json``."""
        for m in self.messages:
            if text is not None and text in m.text:
                return Verdict(True, f"{self._who()} received {_quote(m.text)}")
            if json is not None:
                try:
                    data = jsonlib.loads(m.text)
                except ValueError:
                    continue
                if isinstance(data, dict) and all(k in data and data[k] == v for k, v in json.items()):
                    return Verdict(True, f"{self._who()} received {_quote(m.text)}")
        want = _quote(text) if text is not None else f"JSON with {json}"
        got = ", ".join(_quote(m.text, 60) for m in self.messages[-3:]) or "none"
        return Verdict(False, f"expected {self._who()} to receive a message {want}; messages: {got}"
                       + self._story())

    def joined(self, conference: str) -> Verdict:
        """Whether this endpoint's audio reached (now or earlier) a mixer of
        the session running ``conference`` (``conf_1234``): its call to the
        conference connected *and* the media was routed. For what flows
        now, see ``app.flows``."""
        joined = self.conferences
        if conference in joined:
            return Verdict(True, f"{self._who()} joined {conference}")
        why = f"it joined {', '.join(joined)}" if joined else "it joined nothing"
        silent: list[str] = []
        failed: list[str] = []
        for name, state, connected in self.app._conference_attempts(self):
            if name not in joined:
                (silent if connected else failed).append(f"{name} ({state})")
        if failed:
            why += f" (calls that did not connect: {', '.join(failed)})"
        if silent:
            why += (f" (calls that connected but whose audio reached no conference there: {', '.join(silent)};"
                    f" media flows: {self.app.flows.describe()})")
        return Verdict(False, f"expected {self._who()} to join {conference}, {why}" + self._story())

    def connected_directly_to(self, other: Endpoint) -> Verdict:
        """Whether this endpoint and ``other`` are connected to each other
        by a direct call (``forward_call_to_user_direct``), now."""
        peer = self.direct_peer
        if peer is other and self.connected and other.connected:
            return Verdict(True, f"{self._who()} is connected directly to {other.name}")
        if peer is None:
            why = "it is not a direct call"
        elif peer is not other:
            why = f"its direct call is with {peer.name}"
        else:
            why = f"{other.name}'s call {other._state_text()[3:]}"
        return Verdict(False, f"expected {self._who()} to be connected directly to {other.name}; {why}"
                       + self._story())

    def ended_with(self, code: int) -> Verdict:
        """Whether the call has ended with SIP ``code``."""
        leg = self.leg
        if leg.state.ended and leg.end_code == code:
            return Verdict(True, f"{self._who()} ended with {code}")
        return Verdict(False, f"expected {self._who()} to end with {code}" + self._story(said=True))

    def logged(self, text: str) -> Verdict:
        """Whether the session holding the leg logged a line containing ``text``."""
        lines = self.log
        for line in lines:
            if text in line:
                return Verdict(True, f"the session logged {_quote(line)}")
        tail = " | ".join(_quote(ln, 60) for ln in lines[-3:]) or "nothing"
        return Verdict(False, f"expected the session to log {_quote(text)}; its last lines: {tail}"
                       + self._story())

    # -- helpers ----------------------------------------------------------------------------

    def _who(self) -> str:
        return "the call"

    def _now(self) -> float:
        return self.app.now

    def _note(self, text: str) -> None:
        self.transcript.append(Entry(self._now(), text))

    def _heard(self, player: GraphPlayer, via: str) -> None:
        """A playback in the media graph reached this endpoint."""
        pb = player.playback
        if pb is None:
            return
        if player.kind == "say":
            self.speech.append(Speech(player.description, "", self._now(), player.duration or 0.0, pb, via))
            self._note(f"heard {_quote(player.description)} from {via}")
        else:
            self.played.append(Played(player.description, player.source, self._now(), player.duration, pb, via))
            self._note(f"heard {player.description} from {via}")

    def _ended(self, call: Call) -> None:
        self._note(f"ended {call.state.value} {call.end_code} {call.end_reason or ''}".rstrip())

    def _state_text(self) -> str:
        leg = self.leg
        if leg.state.ended:
            phrase = leg.end_reason or REASONS.get(leg.end_code or 0, "")
            return f"it ended {leg.state.value} {leg.end_code}" + (f" ({phrase})" if phrase else "")
        return f"it is {leg.state.value}"

    def _story(self, said: bool = True) -> str:
        """``; <state>; last said: '...'; the scenario failed: ...`` for messages."""
        parts = [self._state_text()]
        if said:
            parts.append(f"last said: {_quote(self.said[-1])}" if self.said else "nothing was said to it")
        session = self.session
        if session is not None and session.error:
            parts.append(f"the scenario failed: {session.error}")
        return "; " + "; ".join(parts)

    def _require(self, ok: bool, action: str, needs: str) -> None:
        if not ok:
            raise AssertionError(f"{self._who()} cannot {action}: that needs {needs}{self._story()}")


class Caller(Endpoint):
    """Whoever placed an inbound call (:meth:`App.incoming_call`)."""

    role = "caller"


class Callee(Endpoint):
    """The party an outbound call of the scenario reaches (``call_pstn``,
    ``call_sip``, ``call_user``). It rings until the test answers, rejects
    or lets it time out (408 after :attr:`SimUserAgent.invite_timeout`).

    :ivar how: ``"pstn"``, ``"sip"``, ``"user"`` (a registered phone) or
        ``"web"`` (a browser logged in with :meth:`App.log_in_web_user`).
    :ivar target: what the scenario dialed (number, URI or user name).
    :ivar invite_headers: the headers the scenario sent with the call.
    """

    role = "callee"

    def __init__(self, app: App, *, how: str, target: str, number: str, callerid: str,
                 display_name: str | None, headers: dict[str, str] | None,
                 dispatcher: Dispatcher | None) -> None:
        super().__init__(app, name=target, transport=how, direction="outbound", number=number,
                         callerid=callerid, display_name=display_name, headers=None,
                         dispatcher=dispatcher)
        self.how = how
        self.target = target
        self.invite_headers = dict(headers or {})
        self._timeout: asyncio.TimerHandle | None = None

    def _who(self) -> str:
        return f"the call to {self.target}"

    def _progressing(self, action: str) -> None:
        self._require(self.leg.state == CallState.PROGRESSING, action, "a call still ringing")

    def ring(self, headers: dict[str, str] | None = None) -> None:
        """Send 180 Ringing (``Ringing`` on the leg)."""
        self._progressing("ring")
        self._note("ringing (180)")
        self.app.act(self.leg.remote_progress, CallEvents.Ringing, 180, "Ringing", dict(headers or {}))

    def start_early_media(self, headers: dict[str, str] | None = None) -> None:
        """Send 183 with media (``Progress``; the scenario may play now)."""
        self._progressing("start early media")
        self.leg.early_media = True
        self._note("early media (183)")
        self.app.act(self.leg.remote_progress, CallEvents.Progress, 183, "Session Progress",
                     dict(headers or {}))

    def answer(self, headers: dict[str, str] | None = None) -> None:
        """Answer with 200 OK (``Connected`` on the leg, with ``headers``)."""
        self._progressing("answer")
        self._note("answered")

        def connect() -> None:
            self._cancel_timeout()
            if isinstance(self.leg, SimWebCall) and self.leg.direct:
                self.leg._direct_answered(None, dict(headers or {}))
                return
            self.leg.remote_answer(dict(headers or {}))

        self.app.act(connect)

    def reject(self, code: int = 486, reason: str | None = None, headers: dict[str, str] | None = None) -> None:
        """Refuse with a final ``code`` (486 Busy Here by default; any
        300-699, e.g. 603 Decline, 404, 503): ``Failed`` on the leg."""
        if not 300 <= code <= 699:
            raise ValueError(f"a final failure code is 300-699, not {code}")
        self._progressing("reject")
        phrase = reason or REASONS.get(code, "")
        self._note(f"rejected {code} {phrase}".rstrip())
        self.app.act(self.leg.remote_fail, code, phrase, dict(headers or {}))

    fail = reject

    def busy(self) -> None:
        """Reject with 486 Busy Here."""
        self.reject(486)

    def _cancel_timeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None

    def _no_answer(self) -> None:
        self._timeout = None
        if self.leg.state == CallState.PROGRESSING:
            self._note("no answer")
            self.leg.remote_fail(408, "No Answer")

    def _ended(self, call: Call) -> None:
        self._cancel_timeout()
        super()._ended(call)


# -- the user agent the runtime dials through ---------------------------------------------


class SimUserAgent:
    """What :class:`~engine.runtime.runtime.ScenarioRuntime` needs of the
    :class:`~engine.calls.sip_ua.UserAgent`: ``call_sip``, ``call_pstn`` and
    ``call_registered``. Each returns the :class:`SimCall` of a new
    :class:`Callee` at once, ringing (``PROGRESSING``), as the real one does.

    :ivar trunk: whether a PSTN trunk is configured (``call_pstn`` raises
        :class:`~engine.calls.call.CallError` otherwise, as in ``serve``).
    :ivar registered: users whose SIP phone ``call_user`` can reach.
    :ivar web_users: users logged in with the web SDK; ``call_user`` rings
        their browser (a :class:`Callee` with ``how == "web"``) before any phone.
        Neither: ``call_user`` raises, as in ``serve``.
    :ivar invite_timeout: seconds an unanswered outbound call rings before
        failing with 408 (``UaConfig.invite_timeout``).
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.trunk = True
        self.registered: set[str] = set()
        #: Users logged in with the web SDK (``call_user`` rings their browser first).
        self.web_users: set[str] = set()
        self.invite_timeout = 60.0

    def call_sip(self, uri: str | SipUri, *, callerid: str = "callbridge", display_name: str | None = None,
                 headers: dict[str, str] | None = None, dispatcher: Dispatcher | None = None,
                 srtp: str | None = None) -> SimCall:
        target = parse_uri(uri) if isinstance(uri, str) else uri
        if not isinstance(target, SipUri):
            raise CallError(f"not a sip: URI: {uri}")
        return self._dial("sip", str(uri), target.user or "", callerid, display_name, headers, dispatcher)

    def call_pstn(self, number: str, callerid: str, *, display_name: str | None = None,
                  headers: dict[str, str] | None = None, dispatcher: Dispatcher | None = None,
                  srtp: str | None = None) -> SimCall:
        if not self.trunk:
            raise CallError("no SIP trunk is configured (--trunk)")
        return self._dial("pstn", number, number, callerid, display_name, headers, dispatcher)

    def call_registered(self, user: str, *, callerid: str, display_name: str | None = None,
                        headers: dict[str, str] | None = None, dispatcher: Dispatcher | None = None) -> SimCall:
        if user not in self.registered:
            raise CallError(f"user {user!r} is not registered")
        return self._dial("user", user, user, callerid, display_name, headers, dispatcher)

    def call_web_user_direct(self, user: str, caller: SimWebCall, headers: dict[str, str]) -> SimWebCall | None:
        """The web layer's ``call_user_direct``: ring ``user``'s browser with
        ``caller``'s own offer (a direct call), or ``None`` when not logged in."""
        if user not in self.web_users:
            caller.endpoint._note(f"direct call: {user!r} is not logged in")
            return None
        leg = self._dial("web", user, user, caller.callerid, caller.display_name, headers, caller.dispatcher,
                         direct=True)
        assert isinstance(leg, SimWebCall)
        return leg

    def call_web_user(self, user: str, *, callerid: str, display_name: str | None = None,
                      headers: dict[str, str] | None = None, dispatcher: Dispatcher | None = None) -> SimCall | None:
        """The runtime's ``web_users.call_user``: ring ``user``'s browser if
        logged in (:attr:`web_users`), else ``None`` (the runtime then tries
        a registered phone)."""
        if user not in self.web_users:
            return None
        return self._dial("web", user, user, callerid, display_name, headers, dispatcher)

    def _dial(self, how: str, target: str, number: str, callerid: str, display_name: str | None,
              headers: dict[str, str] | None, dispatcher: Dispatcher | None, direct: bool = False) -> SimCall:
        callee = Callee(self.app, how=how, target=target, number=number, callerid=callerid,
                        display_name=display_name, headers=headers, dispatcher=dispatcher)
        if isinstance(callee.leg, SimWebCall):
            callee.leg.direct = direct
        callee.leg.remote_dialed()
        callee._note(f"dialed by the scenario ({how}{', direct' if direct else ''}) from {callerid!r}"
                     + _with_headers(headers))
        callee._timeout = asyncio.get_running_loop().call_later(self.invite_timeout, callee._no_answer)
        self.app._dialed(callee)
        return callee.leg
