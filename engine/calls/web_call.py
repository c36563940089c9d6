"""A browser's call, as a scenario sees it: an ordinary :class:`~engine.calls.call.Call`.

A :class:`WebCall` is one leg between the engine and a browser running the
web SDK. Its signalling travels as JSON frames over the browser's WebSocket
(:mod:`engine.web.ws`, protocol in ``docs/sdk-protocol.md``), handed in as a
:class:`SignallingChannel`; its media is an aiortc peer connection
(:class:`~engine.calls.webrtc.BrowserMediaLeg`) made when the scenario first
needs media (early media or answer), so a call the scenario rejects costs no
ICE or DTLS.

Inbound (the browser called; ``direction="inbound"``), mirroring
:class:`~engine.calls.sip_leg.SipCall`::

    call frame -> ALERTING (the rules route ``number``; CallAlerting)
      ring()              -> progress {code 180}
      start_early_media() -> progress {code 183, sdp: our answer}
      answer()            -> connected {sdp unless sent, headers}: Connected
      reject(code)        -> failed {code}: Failed
      hangup()            -> hangup (connected) | failed 480 (not answered)
    browser hangup        -> Disconnected 200 (connected) | 487 Cancelled (ringing)
    socket lost           -> Disconnected 408 "Connection Lost"

Outbound (the engine calls a logged-in user, ``VoxEngine.call_user``;
``direction="outbound"``)::

    incoming {sdp: our offer} -> PROGRESSING
      browser answer {sdp}    -> Connected (headers)
      browser reject {code}   -> Failed code
      browser hangup          -> Failed 603 Decline
      no answer in time       -> Failed 408 (hangup 408 to the browser)
      hangup()                -> hangup 487 to the browser: Disconnected 487

Messages go both ways once connected (``message`` frames,
:attr:`~engine.calls.call.CallEvents.MessageReceived`); digits the browser sends
(``dtmf`` frames; aiortc has no telephone-event) arrive as ``ToneReceived``
with ``mode="signalling"``.

Media: :attr:`WebCall.audio_port` is the leg's raw
:class:`~engine.calls.webrtc.WebRtcAudioPort` (``read_frame()``/``write_frame()``,
20 ms of 8 kHz int16) once media exists. Above it sits one
:class:`~engine.calls.webrtc.LegAudio`, the only writer to the browser's
track: it plays ``say()`` and ``start_playback*()`` on the engine's media
clock while the call is not routed, and it is the call's
:meth:`media_port` for the media graph (conferences, ``send_media_to``),
which then mixes the call's own player into what it sends, exactly as for a
SIP leg's :class:`~engine.calls.rtp_stream.MediaSession`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Protocol

from aiortc import RTCIceCandidate

from engine.calls.call import CallAction, CallError, CallEvents, CallState, check_action
from engine.calls.direct import DirectCallLeg
from engine.media.players import FrameSource
from engine.media.tts import TtsCache, default_tts
from engine.media.clock import MediaClock
from engine.calls.webrtc import WebRtcAudioPort, BrowserMediaLeg, LegAudio, parse_candidate

__all__ = ["WebCall", "SignallingChannel", "LegFactory", "DirectDialer", "wait_background"]

#: Makes the media leg of a call: ``factory(on_failed)``.
LegFactory = Callable[[Callable[[str], None]], BrowserMediaLeg]


#: Negotiations and closings under way, kept alive until they end.
_background: set[asyncio.Task[Any]] = set()


#: Candidates a browser may trickle before its direct call is forwarded.
MAX_KEPT_CANDIDATES = 64


def _keep(task: asyncio.Task[Any]) -> None:
    _background.add(task)
    task.add_done_callback(_background.discard)


async def wait_background(timeout: float = 5.0) -> None:
    """Wait (at most ``timeout`` seconds) for the WebRTC negotiations and
    leg closings still running, so that the engine's shutdown closes every
    peer connection's sockets instead of leaving them to the collector."""
    tasks = [t for t in _background if not t.done()]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


class SignallingChannel(Protocol):
    """Where a call's frames go: the browser's socket."""

    def send_frame(self, frame: dict[str, Any]) -> None: ...


class DirectDialer(Protocol):
    """Who rings a logged-in user for a direct call (the web layer's
    :class:`~engine.web.ws.WebUsers`)."""

    def call_user_direct(self, name: str, caller: WebCall, headers: dict[str, str]) -> WebCall | None: ...


class WebCall(DirectCallLeg):
    """A call leg to a browser (see the module notes).

    :param channel: the browser's socket.
    :param wire_id: the call's id in frames (the browser chose it for its
        own calls); :attr:`id` stays the engine's random id.
    :param offer: the browser's SDP offer.
    :param clock: the engine's media clock (playback runs on it).
    """

    kind = "web"

    def __init__(
        self,
        channel: SignallingChannel,
        wire_id: str,
        *,
        offer: str,
        clock: MediaClock,
        tts: TtsCache | None = None,
        leg_factory: LegFactory | None = None,
        audio: bool = True,
        video: bool = False,
        dialer: DirectDialer | None = None,
        direct: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.channel = channel
        self.wire_id = wire_id
        self.offer = offer
        self.clock = clock
        self.tts = tts
        self.audio = audio
        self.video = video
        self._leg_factory: LegFactory = leg_factory or BrowserMediaLeg
        self.leg: BrowserMediaLeg | None = None
        self._answer_sdp: asyncio.Future[str] | None = None
        self._sdp_sent = False
        self._early = False
        self._answering = False
        #: The leg's audio as the engine drives it (player and media graph).
        self._leg_audio: LegAudio | None = None
        #: Browser candidates trickled before the media leg exists.
        self._early_candidates: list[RTCIceCandidate | None] = []
        #: How :meth:`forward_call_to_user_direct` reaches the callee.
        self.dialer = dialer
        #: A direct call: media goes browser to browser, the engine relays
        #: offer, answer and candidates to :attr:`direct_peer` (see the notes).
        self.direct = direct
        self.direct_peer: WebCall | None = None
        #: Candidates as the browser sent them, kept for a direct call's peer.
        self._raw_candidates: list[dict[str, Any]] = []
        #: The callee's answer SDP (a direct call's outbound leg).
        self.direct_answer: str | None = None
        self.on_ended.append(lambda call: self._cleanup())

    # -- frames out ----------------------------------------------------------------

    def _send(self, kind: str, **fields: Any) -> None:
        frame: dict[str, Any] = {"type": kind, "call": self.wire_id}
        frame.update({k: v for k, v in fields.items() if v is not None})
        try:
            self.channel.send_frame(frame)
        except Exception:
            self.log.exception("cannot send %s to the browser", kind)

    # -- media ---------------------------------------------------------------------

    @property
    def audio_port(self) -> WebRtcAudioPort | None:
        """The browser's audio as 20 ms frames (``None`` before media exists)."""
        return self.leg.port if self.leg is not None else None

    def _ensure_media(self) -> asyncio.Future[str]:
        """Make the media leg and start answering the browser's offer (once);
        the future gives our answer SDP. A bad offer rejects the call (488)."""
        if self._answer_sdp is not None:
            return self._answer_sdp
        if self.direct:
            raise CallError("a direct call has no media in the engine: the callee answers it")
        loop = asyncio.get_running_loop()
        self._answer_sdp = loop.create_future()
        self.leg = self._leg_factory(self._on_media_failed)
        # a listen-only caller is told to send nothing (answered sendonly)
        self.leg.listen_only = self.grant is not None and self.grant.listen_only
        leg, fut = self.leg, self._answer_sdp
        candidates, self._early_candidates = self._early_candidates, []

        async def negotiate() -> None:
            try:
                sdp = await leg.accept_offer(self.offer, candidates)
            except Exception as exc:
                if fut.done():  # the call ended meanwhile (its leg was closed)
                    return
                self.log.warning("cannot answer the browser's offer: %s", exc)
                fut.set_exception(CallError(f"unusable offer: {exc}"))
                fut.exception()  # reported here; nobody else needs to see it
                if self.state == CallState.ALERTING:
                    self._send("failed", code=488, reason="Not Acceptable Here")
                    self._finish(CallState.FAILED, CallEvents.Failed, 488, "Not Acceptable Here")
                return
            if not fut.done():
                fut.set_result(sdp)

        _keep(loop.create_task(negotiate(), name=f"webrtc-{self.id[:8]}"))
        return fut

    def start_outgoing(self, timeout: float) -> None:
        """Offer the call to the browser (``incoming`` with our SDP, or for a
        direct call the caller's); it fails with 408 when not answered
        within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        if self.direct:
            self._no_answer = loop.call_later(timeout, self._on_no_answer)
            self._send("incoming", callerid=self.callerid, display_name=self.display_name,
                       headers=dict(self.headers), sdp=self.offer, direct=True, video=self.video)
            return
        self.leg = leg = self._leg_factory(self._on_media_failed)
        self._no_answer = loop.call_later(timeout, self._on_no_answer)

        async def offer() -> None:
            try:
                sdp = await leg.create_offer()
            except Exception:
                self.log.exception("cannot make a WebRTC offer")
                self._finish(CallState.FAILED, CallEvents.Failed, 500, "Media Error")
                return
            if self.state == CallState.PROGRESSING:
                self._send("incoming", callerid=self.callerid, display_name=self.display_name,
                           headers=dict(self.headers), sdp=sdp)

        _keep(loop.create_task(offer(), name=f"webrtc-offer-{self.id[:8]}"))

    _no_answer: asyncio.TimerHandle | None = None

    def _on_no_answer(self) -> None:
        if self.state == CallState.PROGRESSING:
            self._send("hangup", code=408, reason="No Answer")
            self._finish(CallState.FAILED, CallEvents.Failed, 408, "No Answer")

    def _on_media_failed(self, reason: str) -> None:
        if self.state.ended:
            return
        self.log.warning("%s: ending the call", reason)
        self._send("hangup", code=503, reason=reason)
        if self.was_connected:
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 503, reason)
        else:
            self._finish(CallState.FAILED, CallEvents.Failed, 503, reason)

    def _media_ready(self) -> bool:
        if self.leg is None or self.state.ended:
            return False
        return self.state == CallState.CONNECTED or self._early

    def _leg_audio_port(self) -> LegAudio | None:
        """The leg's :class:`LegAudio` (made with the media leg)."""
        if self.leg is None:
            return None
        if self._leg_audio is None or self._leg_audio.port is not self.leg.port:
            self._leg_audio = LegAudio(self.leg.port, self.clock)
        return self._leg_audio

    def media_port(self) -> LegAudio | None:
        """The media graph's view of this leg (``None`` until media flows:
        answered, or early media)."""
        return self._leg_audio_port() if self._media_ready() else None

    def _play(self, source: FrameSource, done: Callable[[bool], None]) -> None:
        audio = self._leg_audio_port()
        if audio is None:
            raise CallError("no media negotiated")
        audio.start_playback(source, done)

    def _stop_media(self) -> None:
        if self._leg_audio is not None:
            self._leg_audio.stop_playback()

    def _tts(self) -> TtsCache:
        return self.tts if self.tts is not None else default_tts()

    def _cleanup(self) -> None:
        if self._no_answer is not None:
            self._no_answer.cancel()
        self._stop_media()
        if self._leg_audio is not None:
            self._leg_audio.close()
        leg, self.leg = self.leg, None
        if leg is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            _keep(loop.create_task(leg.close(), name=f"webrtc-close-{self.id[:8]}"))
        fut = self._answer_sdp
        if fut is not None and not fut.done():
            fut.cancel()

    # -- scenario actions ---------------------------------------------------------

    def ring(self, headers: dict[str, str] | None = None) -> None:
        """Tell the browser the call rings (``progress`` 180)."""
        check_action(self, CallAction.RING)
        self._send("progress", code=180, reason="Ringing", headers=dict(headers or {}))

    def start_early_media(self, headers: dict[str, str] | None = None) -> None:
        """Answer the browser's offer now (``progress`` 183 with our SDP), so
        audio played before :meth:`answer` is heard."""
        check_action(self, CallAction.START_EARLY_MEDIA)
        if self.direct:
            raise CallError("a direct call has no early media from the engine")
        if self._early:
            return
        self._early = True
        fut = self._ensure_media()
        sent = dict(headers or {})

        def ready(fut: asyncio.Future[str]) -> None:
            if fut.cancelled() or fut.exception() is not None or self.state != CallState.ALERTING:
                return
            if not self._sdp_sent:
                self._sdp_sent = True
                self._send("progress", code=183, reason="Session Progress", sdp=fut.result(), headers=sent)

        fut.add_done_callback(ready)

    def answer(self, headers: dict[str, str] | None = None) -> Awaitable[None]:
        """Answer: our SDP goes to the browser (``connected``) and the call is
        ``CONNECTED`` (the awaitable completes then)."""
        answering = check_action(self, CallAction.ANSWER, answered=self._answering)
        if self.direct:
            raise CallError("a direct call is answered by its callee (forward_call_to_user_direct)")
        if answering:
            self._answering = True
            fut = self._ensure_media()
            sent = dict(headers or {})

            def ready(fut: asyncio.Future[str]) -> None:
                if fut.cancelled() or fut.exception() is not None or self.state != CallState.ALERTING:
                    return
                sdp = None if self._sdp_sent else fut.result()
                self._sdp_sent = True
                self._send("connected", sdp=sdp, headers=sent)
                self._set_state(CallState.CONNECTED)
                self._emit(CallEvents.Connected, headers={})

            fut.add_done_callback(ready)
        return self._connected_future()

    def reject(self, code: int = 486, headers: dict[str, str] | None = None) -> None:
        """Refuse the call: ``failed`` with ``code`` to the browser, Failed here."""
        check_action(self, CallAction.REJECT, answered=self._answering, code=code)
        self._send("failed", code=code, reason="Rejected", headers=dict(headers or {}))
        self._finish(CallState.FAILED, CallEvents.Failed, code, "Rejected")

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        """End the call: ``hangup`` once connected (Disconnected 200), ``failed``
        480 before the answer (Disconnected 480 here, as a SIP call's)."""
        if not check_action(self, CallAction.HANGUP):
            return
        if self.state == CallState.CONNECTED:
            self._send("hangup", code=200, reason="Hangup", headers=dict(headers or {}))
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup")
        elif self.direction == "outbound":
            self._send("hangup", code=487, reason="Cancelled", headers=dict(headers or {}))
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 487, "Cancelled")
        else:
            self._send("failed", code=480, reason="Temporarily Unavailable", headers=dict(headers or {}))
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 480, "Hangup")

    def _rebridged(self) -> None:
        """A browser gets no REFER: ``transferred`` tells it that what it
        hears now comes from the transfer's target (docs/sdk-protocol.md)."""
        self._send("transferred")

    def send_message(self, text: str, headers: dict[str, str] | None = None) -> None:
        """A ``message`` frame to the browser (its SDK's MessageReceived)."""
        check_action(self, CallAction.SEND_MESSAGE)
        self._send("message", text=str(text), headers=dict(headers or {}))

    def send_info(self, mime_type: str, body: str | bytes, headers: dict[str, str] | None = None) -> None:
        """An ``info`` frame (``mime_type``, ``body`` as text) to the browser."""
        check_action(self, CallAction.SEND_INFO)
        text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
        self._send("info", mime_type=mime_type, body=text, headers=dict(headers or {}))

    # -- direct calls (browser to browser) ------------------------------------------

    def forward_call_to_user_direct(self, headers: dict[str, str] | None = None) -> WebCall | None:
        """See :meth:`engine.calls.direct.DirectCallLeg.forward_call_to_user_direct`."""
        peer = super().forward_call_to_user_direct(headers)
        assert peer is None or isinstance(peer, WebCall)
        return peer

    def _offer_answered(self) -> bool:
        return self._answer_sdp is not None

    def _direct_dialer(self) -> Callable[[dict[str, str]], DirectCallLeg | None]:
        dialer = self.dialer
        if dialer is None:
            raise CallError("direct calls need the web SDK's users, and this call has none")
        return lambda headers: dialer.call_user_direct(self.number, self, headers)

    def _forwarded(self, peer: DirectCallLeg) -> None:
        """The candidates this browser trickled so far go to the callee's."""
        assert isinstance(peer, WebCall)
        candidates, self._raw_candidates = self._raw_candidates, []
        self._early_candidates.clear()
        for init in candidates:
            peer._relay_candidate(init)

    def _relay_candidate(self, init: dict[str, Any]) -> None:
        """A candidate of the other browser, passed on as it came."""
        if not self.state.ended:
            self._send("ice", candidate=init)

    def _direct_answered(self, sdp: str | None, headers: dict[str, str]) -> None:
        """The callee's browser answered a direct call: both are connected,
        and the caller's browser gets the callee's answer."""
        self.direct_answer = sdp
        if self._no_answer is not None:
            self._no_answer.cancel()
        super()._direct_answered(sdp, headers)

    def _connect_direct(self, callee: DirectCallLeg, sdp: str | None, headers: dict[str, str]) -> None:
        self._send("connected", sdp=sdp, headers=dict(headers))

    # -- frames in (from the socket handler) --------------------------------------

    def on_remote_hangup(self, headers: dict[str, str]) -> None:
        """The browser hung up: Disconnected 200, or 487 while still ringing
        (Failed 603 when it declines a call we placed)."""
        if self.state.ended:
            return
        if self.state == CallState.CONNECTED:
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup", headers)
        elif self.direction == "outbound":
            self._finish(CallState.FAILED, CallEvents.Failed, 603, "Decline", headers)
        else:
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 487, "Cancelled", headers)

    async def on_remote_answer(self, sdp: str, headers: dict[str, str]) -> None:
        """The browser answered a call we placed: Connected (with ``headers``).

        :raises CallError: not a call we placed, or not ringing any more.
        """
        if self.direction != "outbound" or self.state != CallState.PROGRESSING or self._answering:
            raise CallError("answer is for an incoming call that still rings")
        if self.direct:
            self._direct_answered(sdp, headers)
            return
        if self.leg is None:
            raise CallError("the call has no media leg")
        self._answering = True
        try:
            await self.leg.accept_answer(sdp)
        except Exception as exc:
            self.log.warning("unusable answer from the browser: %s", exc)
            self._send("hangup", code=488, reason="Not Acceptable Here")
            self._finish(CallState.FAILED, CallEvents.Failed, 488, "Not Acceptable Here")
            return
        if self.state != CallState.PROGRESSING:
            return
        self.headers.update(headers)
        self._set_state(CallState.CONNECTED)
        self._emit(CallEvents.Connected, code=200, reason="OK", headers=headers)

    def on_remote_reject(self, code: int, headers: dict[str, str]) -> None:
        """The browser refused a call we placed: Failed ``code``.

        :raises CallError: not a call we placed, or not ringing any more.
        """
        if self.direction != "outbound" or self.state != CallState.PROGRESSING or self._answering:
            raise CallError("reject is for an incoming call that still rings")
        self._finish(CallState.FAILED, CallEvents.Failed, code, "Rejected", headers)

    def on_remote_message(self, text: str, headers: dict[str, str]) -> None:
        """A ``message`` from the browser: MessageReceived.

        :raises CallError: the call is not connected.
        """
        if self.state != CallState.CONNECTED:
            raise CallError("messages need a connected call")
        self._emit(CallEvents.MessageReceived, text=text, headers=headers, mime_type="text/plain")
        self._relay_message(text, headers)

    def on_remote_ice_failed(self, sdp: str | None, sdp_type: str | None) -> None:
        """An ``ice_failed`` frame: relayed to the other browser of a direct
        call (see :meth:`DirectCallLeg._relay_ice_failed`)."""
        self._relay_ice_failed(sdp, sdp_type)

    def _send_ice_failed(self, sdp: str | None, sdp_type: str | None) -> None:
        self._send("ice_failed", sdp=sdp, sdp_type=sdp_type)

    def on_remote_tones(self, tones: str) -> None:
        """Digits from the browser: ToneReceived (mode ``"signalling"``) each.

        :raises CallError: the call has ended.
        """
        if self.state.ended:
            raise CallError("call already ended")
        for digit in tones:
            self._tone_received(digit, "signalling")

    async def on_remote_candidate(self, init: dict[str, Any] | None) -> None:
        """A trickled ICE candidate (``None``: no more). Before media exists
        they are kept with the offer and applied when it is answered.

        :raises ValueError: the candidate is malformed.
        """
        candidate = parse_candidate(init)
        if self.state.ended:
            return
        if self.direct_peer is not None:
            if candidate is not None and init is not None:
                self.direct_peer._relay_candidate(init)
            return
        if self.leg is None:
            self._early_candidates.append(candidate)
            if candidate is not None and init is not None and len(self._raw_candidates) < MAX_KEPT_CANDIDATES:
                self._raw_candidates.append(dict(init))
            return
        await self.leg.add_remote_candidate(candidate)

    def on_connection_lost(self) -> None:
        """The browser's socket closed or timed out: end the call."""
        if self.state.ended:
            return
        if self.was_connected or self.direction == "inbound":
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 408, "Connection Lost")
        else:
            self._finish(CallState.FAILED, CallEvents.Failed, 408, "Connection Lost")

