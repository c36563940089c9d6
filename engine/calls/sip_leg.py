"""One SIP call leg: :class:`SipCall`, the asyncio adapter of one
:class:`~engine.sip.invite_session.InviteSession` (RFC 3261 §13-15) and its
media handler. The :class:`~engine.calls.sip_ua.UserAgent` creates the legs
and hands them what the endpoint receives; a leg knows its user agent only
through :class:`SipLegOwner`, so this module does not import ``sip_ua``.

Inbound::

    INVITE -> 100 -> [ring(): 180 | start_early_media(): 183+SDP]
           -> answer(): 200+SDP, retransmitted (T1 doubling to T2) until ACK
              (RFC 3261 §13.3.1.4; no ACK within 64*T1 -> BYE)
           -> ACK: Connected
           | reject(code) | CANCEL: 487, Disconnected

Outbound::

    INVITE -> 1xx (Ringing / Progress) -> 2xx: ACK, Connected
           -> 401/407: retry once with digest credentials, only while the
              INVITE goes to the host:port the credentials belong to
           -> 3xx: follow the first Contact (at most 3 times); a trunk call
              (call_pstn) only to a Contact on the trunk's host:port
              (otherwise it fails with the 3xx code)
           -> 4xx-6xx or timeout: Failed(code, reason)
    hangup() before an answer: CANCEL once a provisional response came.
"""

from __future__ import annotations

import asyncio
import functools
import operator
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from engine.calls.call import (
    Call, CallAction, CallError, CallEvents, CallState, MediaHandler, MediaStats, SendDigitsAction,
    check_action, dtmf_relay_body,
)
from engine.calls.grants import without_engine_headers
from engine.media.players import FrameSource
from engine.media.tts import TtsCache, default_tts
from engine.security_log import security_event
from engine.sip.auth import ClientAuthSession
from engine.sip.dialog import Dialog
from engine.sip.errors import RemoteProtocolError
from engine.sip.headers import NameAddr
from engine.sip.invite_session import (
    AckTimedOut, Answered, CallCancelled, CallFailed, CancelReady, CredentialsWithheld, InviteReady,
    InviteSession, NoAnswer, ProvisionalReceived, Redirected, RedirectRefused, ReInviteRefused,
    Retransmit2xx, host_port,
)
from engine.sip.invite_session import Event as SessionEvent
from engine.sip.message import Headers, SipRequest, SipResponse, new_call_id, new_tag
from engine.sip.refer import (
    ReferBudget, ReferClient, ReferEvent, ReferFailed, ReferNotifier, ReferSucceeded, ReferTarget, Replaces,
    parse_refer_to,
)
from engine.sip.registrar import Registrar
from engine.sip.transaction import ServerTransaction, Timers
from engine.sip.uri import SipUri, TelUri, parse_uri
from engine.transport.audio_fetch import AudioLoader, default_audio_loader
from engine.transport.sip_endpoint import Peer, SipEndpoint

if TYPE_CHECKING:
    from engine.media.ports import AudioPort

__all__ = ["ALLOW", "SipCall", "SipLegOwner", "SipLegSettings", "TransferRequest", "add_headers",
           "received_headers"]

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, MESSAGE, REGISTER, REFER, NOTIFY"

#: What a leg does as it ends (one for all legs, not a closure a leg).
_CLEANUP = operator.methodcaller("_cleanup")

#: Seconds a scenario has to accept or reject a REFER before it gets 603.
TRANSFER_DECISION_TIMEOUT = 8.0


def received_headers(headers: Headers, src: str | None = None) -> dict[str, str]:
    """The ``X-`` headers of a received message, without ``X-Callbridge-*``
    (grants travel as call attributes, :class:`~engine.calls.grants.Grant`;
    reported as a security event when ``src`` sent some)."""
    custom, forged = without_engine_headers(headers.custom())
    if forged and src is not None:
        security_event("forged_header", src, header=forged[0])
    return custom


def add_headers(request: SipRequest | SipResponse, headers: dict[str, str] | None) -> None:
    for name, value in (headers or {}).items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ValueError(f"invalid header {name!r}")
        request.headers.add(name, value)


def _dialog_request(invite: SipRequest) -> SipRequest:
    """The INVITE as a dialog is made from: an RFC 2543 INVITE without
    Contact gets its From URI as the remote target (RFC 4475 §3.4.1)."""
    if invite.headers.get("Contact") is not None:
        return invite
    copy = SipRequest(invite.method, invite.uri_text, invite.headers.copy(), invite.body)
    copy.headers.add("Contact", f"<{invite.from_.uri}>")
    return copy




class SipLegSettings(Protocol):
    """The user agent's settings a leg reads (:class:`~engine.calls.sip_ua.UaConfig`)."""

    @property
    def user_agent(self) -> str: ...
    @property
    def timers(self) -> Timers: ...
    @property
    def invite_timeout(self) -> float: ...


class SipLegOwner(Protocol):
    """What a :class:`SipCall` needs of the user agent that made it
    (:class:`~engine.calls.sip_ua.UserAgent`)."""

    @property
    def config(self) -> SipLegSettings: ...
    @property
    def endpoint(self) -> SipEndpoint: ...
    @property
    def registrar(self) -> Registrar: ...
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def media_factory(self) -> Callable[[SipCall], MediaHandler]: ...

    def contact_for(self, peer: Peer, sips: bool = False) -> str: ...
    def register_dialog(self, call: SipCall) -> None: ...
    def forget(self, call: SipCall) -> None: ...
    def options_response(self, request: SipRequest) -> SipResponse: ...
    def method_not_allowed(self, request: SipRequest) -> SipResponse: ...
    async def resolve(self, uri: SipUri | TelUri) -> Peer: ...


class SipCall(Call):
    """A call leg over SIP: the asyncio adapter of one
    :class:`~engine.sip.invite_session.InviteSession` (which holds the
    dialog, the 2xx retransmission, the no-answer timer, CANCEL, digest
    retries and redirects) and its media handler.

    It feeds the session what the endpoint hands up, performs the events the
    session returns (:meth:`_perform`) and keeps one timer armed at the
    session's next deadline (:meth:`_arm`), on the UA's clock.
    """

    kind = "sip"

    def __init__(self, ua: SipLegOwner, peer: Peer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ua = ua
        self.peer = peer
        self.session: InviteSession | None = None
        self.media: MediaHandler | None = None
        self.local_tag = new_tag()
        # inbound
        self.invite: SipRequest | None = None
        self.invite_txn: ServerTransaction | None = None
        self._early_sdp_sent = False
        # outbound
        self._out_txn: Any = None
        # Where a 3xx may lead (``None``: anywhere); set by call_sip.
        self._redirect_scope: tuple[str, int] | None = None
        # One timer, armed at the session's next deadline. It calls a
        # method, not a closure that re-arms itself: such a closure is a
        # reference cycle that would keep every answered call alive until a
        # full garbage collection.
        self._timer: asyncio.TimerHandle | None = None
        # Transfer (RFC 3515): REFERs the peer may still send, the
        # subscription of one we accepted, the one we sent, and their timer.
        self._transfer: TransferRequest | None = None
        self._notifier: ReferNotifier | None = None
        self._refer_client: ReferClient | None = None
        self._refer_plan: tuple[str | Call, str | None, str | None] | None = None
        self._refer_timer: asyncio.TimerHandle | None = None
        self.on_ended.append(_CLEANUP)

    @functools.cached_property
    def _refer_budget(self) -> ReferBudget:
        """REFERs the peer may still send (made by the first: most calls get none)."""
        return ReferBudget()

    @property
    def dialog(self) -> Dialog | None:
        """The session's dialog, once a 2xx made one."""
        return self.session.dialog if self.session is not None else None

    @property
    def _final_sent(self) -> bool:
        return self.session is not None and self.session.final_sent

    @property
    def _ack(self) -> SipRequest | None:
        return self.session.ack if self.session is not None else None

    # -- the session's timer and events -------------------------------------------

    def _arm(self) -> None:
        """Re-arm the one timer at the session's next deadline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.session.get_timer() if self.session is not None else None
        if when is not None:
            delay = max(0.0, when - self.ua.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.session is not None:
            self._run(self.session.handle_timer(self.ua.clock()))

    def _run(self, events: list[SessionEvent]) -> None:
        for event in events:
            self._perform(event)
        self._arm()

    def _perform(self, event: SessionEvent) -> None:
        """Do what one session event asks for."""
        endpoint = self.ua.endpoint
        if isinstance(event, Retransmit2xx):
            endpoint.send_stateless_bytes(event.data, self.peer)
        elif isinstance(event, AckTimedOut):
            self.log.warning("no ACK for our 200 OK: ending the call")
            if event.bye is not None:
                endpoint.send_request(event.bye, self.peer, lambda resp: None)
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 408, "ACK Timeout")
        elif isinstance(event, InviteReady):
            self._out_txn = endpoint.send_request(event.request, self.peer, self._on_invite_response)
        elif isinstance(event, CancelReady):
            endpoint.send_request(event.request, self.peer, lambda resp: None)
        elif isinstance(event, ProvisionalReceived):
            self._on_provisional(event.response)
        elif isinstance(event, Answered):
            self._on_answered(event)
        elif isinstance(event, CallFailed):
            if event.response is None:
                self._finish(CallState.FAILED, CallEvents.Failed, event.status, event.reason)
            else:
                self._finish(CallState.FAILED, CallEvents.Failed, event.status, event.reason,
                             received_headers(event.response.headers))
        elif isinstance(event, CallCancelled):
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 487, "Cancelled")
        elif isinstance(event, NoAnswer):
            if self.state == CallState.PROGRESSING:
                self.log.info("no answer within %.0f s", event.timeout)
                self._finish(CallState.FAILED, CallEvents.Failed, 408, "No Answer")
        elif isinstance(event, Redirected):
            self.log.info("redirected (%d) to %s", event.status, event.target)
            asyncio.get_running_loop().create_task(self._follow(event.target))
        elif isinstance(event, RedirectRefused):
            security_event("redirect_refused", self.peer.host, status=event.status, host=event.host)
        elif isinstance(event, CredentialsWithheld):
            security_event("credentials_withheld", self.peer.host, status=event.status)

    # -- inbound -----------------------------------------------------------------

    def _contact(self, uri: object = None) -> str:
        """Our Contact for this call: ``sips:`` when its Request-URI is one
        (RFC 3261 §12.1.1, §8.1.1.8), on the transport it travels."""
        if uri is None:
            uri = self.invite.uri if self.invite is not None else getattr(self, "_to", None)
            uri = getattr(uri, "uri", uri)
        return self.ua.contact_for(self.peer, sips=isinstance(uri, SipUri) and uri.scheme == "sips")

    def _send_response(self, response: SipResponse) -> None:
        assert self.invite_txn is not None
        self.ua.endpoint.send_response(self.invite_txn, response)

    def _send_final(self, response: SipResponse) -> None:
        """A 300-699 to the INVITE."""
        assert self.session is not None
        self.session.send_final(response)
        self._send_response(response)

    def _response(self, status: int, reason: str | None = None, headers: dict[str, str] | None = None,
                  body: bytes = b"", contact: str | None = None) -> SipResponse:
        """A response to the INVITE; ``contact``: our Contact, when the
        caller has it already (else :meth:`_contact`)."""
        assert self.invite is not None
        resp = self.invite.create_response(status, reason, to_tag=self.local_tag)
        if status != 100:
            resp.headers.add("Contact", contact if contact is not None else self._contact())
        resp.headers.add("Server", self.ua.config.user_agent)
        if 200 <= status < 300:
            resp.headers.add("Allow", ALLOW)
        if headers:
            add_headers(resp, headers)
        if body:
            resp.headers.add("Content-Type", "application/sdp")
            resp.body = body
        return resp

    def ring(self, headers: dict[str, str] | None = None) -> None:
        """Send 180 Ringing (inbound, before answer)."""
        check_action(self, CallAction.RING)
        response = self._response(180, headers=headers)
        assert self.session is not None
        self.session.send_provisional(response)
        self._send_response(response)

    def start_early_media(self, headers: dict[str, str] | None = None) -> None:
        """Send 183 Session Progress with our SDP answer, so that audio
        played now is heard before the call is answered."""
        check_action(self, CallAction.START_EARLY_MEDIA)
        body = self._local_answer()
        if body is None:
            return
        self._early_sdp_sent = True
        response = self._response(183, headers=headers, body=body)
        assert self.session is not None and self.media is not None
        self.session.send_provisional(response, self.media.local_sdp)
        self._send_response(response)

    def _local_answer(self) -> bytes | None:
        """Our SDP answer to the INVITE's offer (made once). ``None`` after
        rejecting the call with 488 when nothing is acceptable."""
        if self._answer_sdp is not None:
            return self._answer_sdp
        assert self.invite is not None
        if self.media is None:
            self.media = self.ua.media_factory(self)
            self._tone_handling_changed(self.tones_enabled)
        try:
            if self.invite.body:
                self._answer_sdp = self.media.create_answer(self.invite.body)
            else:  # offer in our 200, answer in the ACK (RFC 3264 §3)
                self._answer_sdp = self.media.create_offer()
        except RemoteProtocolError as exc:
            self.reject(exc.status if exc.status >= 400 else 488)
            return None
        return self._answer_sdp

    _answer_sdp: bytes | None = None

    def answer(self, headers: dict[str, str] | None = None) -> Awaitable[None]:
        """Answer with 200 OK and SDP; the returned awaitable completes when
        the caller's ACK arrives (the call is then ``CONNECTED``)."""
        if check_action(self, CallAction.ANSWER, answered=self._final_sent):
            body = self._local_answer()
            if body is None:
                return self._connected_future()
            contact = self._contact()
            response = self._response(200, headers=headers, body=body, contact=contact)
            assert self.invite is not None and self.session is not None
            self.session.send_answer(response, _dialog_request(self.invite), contact,
                                     self.ua.clock(), self.media.local_sdp if self.media else None)
            self.ua.register_dialog(self)
            self._send_response(response)
            self._arm()
        return self._connected_future()

    def reject(self, code: int = 486, headers: dict[str, str] | None = None) -> None:
        """Refuse an inbound call with a final response (default 486 Busy Here)."""
        check_action(self, CallAction.REJECT, answered=self._final_sent, code=code)
        self._send_final(self._response(code, headers=headers))
        self._finish(CallState.FAILED, CallEvents.Failed, code, None)

    def challenge(self) -> None:
        """Refuse an inbound call with 401 and a digest challenge (RFC 3261
        §22.2): a rule that takes authenticated callers only was matched.
        A phone that has the user's password sends the INVITE again with
        credentials (:meth:`~engine.calls.sip_ua.UserAgent._invite_identity`)."""
        if self.direction != "inbound" or self.state != CallState.ALERTING or self._final_sent:
            raise CallError(f"cannot challenge a call in state {self.state.value}")
        assert self.invite is not None
        self._send_final(self.ua.registrar.challenge(self.invite, self.ua.clock()))
        self._finish(CallState.FAILED, CallEvents.Failed, 401, None)

    def _on_ack(self, request: SipRequest) -> None:
        if self.session is None:
            return
        events = self.session.receive_ack(request)
        self._arm()
        if not events:
            return
        if request.body and self.media is not None and not (self.invite and self.invite.body):
            try:
                self.media.set_answer(request.body)
            except RemoteProtocolError:
                self.log.warning("bad SDP answer in ACK")
        if self.state == CallState.ALERTING:
            self._set_state(CallState.CONNECTED)
            self._watch_media()
            self._emit(CallEvents.Connected, headers=received_headers(request.headers))

    def _on_cancel(self) -> None:
        if self.session is None or not self.session.receive_cancel() or self.state != CallState.ALERTING:
            return
        self._send_final(self._response(487))
        self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 487, "Cancelled")

    # -- outbound ----------------------------------------------------------------

    async def _start_outbound(
        self, uri: SipUri | TelUri, from_uri: SipUri, headers: dict[str, str] | None,
        auth: ClientAuthSession | None,
    ) -> None:
        self.media = self.ua.media_factory(self)
        self._tone_handling_changed(self.tones_enabled)
        try:
            offer = self.media.create_offer()
        except Exception:
            self.log.exception("media offer failed")
            self._finish(CallState.FAILED, CallEvents.Failed, 500, "Media Error")
            return
        if self.state.ended:  # hung up before the INVITE could leave
            return
        self.session = InviteSession.create_uac(
            self.ua.config.timers, self.peer.reliable,
            from_=NameAddr(from_uri, self.display_name, {"tag": self.local_tag}),
            to=NameAddr(uri),
            call_id=new_call_id(),
            headers=[("Contact", self._contact()),
                     ("User-Agent", self.ua.config.user_agent), ("Allow", ALLOW)],
            extra=list((headers or {}).items()),
            offer=offer,
            auth=auth,
            auth_target=host_port(uri) if auth is not None else None,
            redirect_scope=self._redirect_scope,
        )
        self._run(self.session.start(uri, self.ua.clock(), self.ua.config.invite_timeout))

    def _on_invite_response(self, resp: SipResponse | None) -> None:
        if self.session is not None:
            self._run(self.session.receive_response(resp))

    def _on_provisional(self, resp: SipResponse) -> None:
        code = resp.status
        if resp.body and self.media is not None:
            try:
                self.media.set_answer(resp.body)
            except RemoteProtocolError:
                self.log.warning("bad early SDP in %d", code)
        if self.state == CallState.PROGRESSING:
            event = CallEvents.Progress if resp.body or code == 183 else CallEvents.Ringing
            self._emit(event, code=code, reason=resp.reason, headers=received_headers(resp.headers))

    async def _follow(self, target: SipUri | TelUri) -> None:
        try:
            self.peer = await self.ua.resolve(target)
        except OSError as exc:
            self._finish(CallState.FAILED, CallEvents.Failed, 404, f"Cannot resolve: {exc}")
            return
        if self.session is not None:
            self._run(self.session.follow(target))

    def _on_answered(self, event: Answered) -> None:
        endpoint = self.ua.endpoint
        endpoint.send_ack(event.ack, self.peer)
        if not event.fresh:  # a retransmission, or a second fork (ACK and BYE)
            if event.bye is not None:
                endpoint.send_request(event.bye, self.peer, lambda r: None)
            return
        self.ua.register_dialog(self)
        if event.abandoned:
            assert event.bye is not None
            endpoint.send_request(event.bye, self.peer, lambda r: None)
            if not self.state.ended:
                self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 487, "Cancelled")
            return
        resp = event.response
        if self.media is not None and resp.body:
            try:
                self.media.set_answer(resp.body)
            except RemoteProtocolError as exc:
                self.log.warning("unusable SDP answer: %s", exc)
                self._send_bye({"Reason": 'SIP;cause=488;text="Not Acceptable Here"'})
                self._finish(CallState.FAILED, CallEvents.Failed, 488, "Not Acceptable Here")
                return
        self.headers.update(received_headers(resp.headers))
        self._set_state(CallState.CONNECTED)
        self._watch_media()
        self._emit(CallEvents.Connected, code=resp.status, reason=resp.reason,
                   headers=received_headers(resp.headers))

    def _on_stray_2xx(self, resp: SipResponse) -> None:
        if self.session is not None:
            self._run(self.session.receive_stray_2xx(resp))

    # -- both directions ---------------------------------------------------------

    def hangup(self, headers: dict[str, str] | None = None) -> None:
        """End the call: BYE when connected, CANCEL while an outbound call
        rings, 480 for an inbound call not yet answered."""
        if not check_action(self, CallAction.HANGUP):
            return
        awaiting_ack = self.session is not None and self.session.awaiting_ack
        if self.state == CallState.CONNECTED or (self.direction == "inbound" and awaiting_ack):
            self._send_bye(headers)
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Hangup")
        elif self.direction == "inbound":
            if not self._final_sent:
                self._send_final(self._response(480, headers=headers))
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 480, "Hangup")
        else:
            if self.session is not None:
                self._run(self.session.cancel())
            self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 487, "Cancelled")

    def _send_bye(self, headers: dict[str, str] | None = None) -> None:
        """Send BYE. Every caller ends the call right after (``_finish``),
        whose :meth:`_cleanup` cancels the timer and closes the session: the
        timer is not re-armed here only to be cancelled at once."""
        if self.session is None or self.session.dialog is None:
            return
        bye = self.session.end_session()
        assert bye is not None
        if headers:
            add_headers(bye, headers)
        self.ua.endpoint.send_request(bye, self.peer, lambda resp: None)

    def _in_dialog_request(self, method: str, content_type: str, body: bytes,
                           headers: dict[str, str] | None) -> None:
        if self.state != CallState.CONNECTED or self.dialog is None:
            raise CallError(f"{method} needs a connected call")
        req = self.dialog.create_request(method)
        add_headers(req, headers)
        req.headers.add("Content-Type", content_type)
        req.body = body
        self.ua.endpoint.send_request(req, self.peer, lambda resp: None)

    def send_message(self, text: str, headers: dict[str, str] | None = None) -> None:
        """Send a SIP MESSAGE (text/plain) inside the call's dialog."""
        self._in_dialog_request("MESSAGE", "text/plain;charset=utf-8", text.encode(), headers)

    def send_info(self, mime_type: str, body: str | bytes, headers: dict[str, str] | None = None) -> None:
        """Send a SIP INFO with ``body`` of type ``mime_type``."""
        data = body.encode() if isinstance(body, str) else body
        self._in_dialog_request("INFO", mime_type, data, headers)

    def _on_request(self, request: SipRequest, txn: ServerTransaction) -> None:
        """An in-dialog request other than ACK."""
        endpoint = self.ua.endpoint
        assert self.dialog is not None and self.session is not None
        try:
            self.dialog.receive_request(request)
        except RemoteProtocolError as exc:
            endpoint.send_response(txn, request.create_response(exc.status, str(exc)))
            return
        method = request.method
        custom = received_headers(request.headers)
        if method == "BYE":
            endpoint.send_response(txn, request.create_response(200))
            self.session.receive_bye()
            self._arm()
            if self.state == CallState.CONNECTED or self.direction == "inbound":
                self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "BYE", custom)
            else:
                self._finish(CallState.FAILED, CallEvents.Failed, 487, "BYE", custom)
        elif method == "INVITE":
            self._on_reinvite(request, txn)
        elif method == "INFO":
            endpoint.send_response(txn, request.create_response(200))
            self._info_received(request.content_type or "", request.body, custom)
        elif method == "MESSAGE":
            endpoint.send_response(txn, request.create_response(200))
            self._emit(CallEvents.MessageReceived,
                       text=request.body.decode("utf-8", errors="replace"), headers=custom,
                       mime_type=request.content_type)
        elif method == "OPTIONS":
            endpoint.send_response(txn, self.ua.options_response(request))
        elif method == "REFER":
            self._on_refer(request, txn)
        elif method == "NOTIFY":
            self._on_notify(request, txn)
        else:
            endpoint.send_response(txn, self.ua.method_not_allowed(request))

    def _on_reinvite(self, request: SipRequest, txn: ServerTransaction) -> None:
        """A re-INVITE: answer its offer (hold/unhold, new address) with 200."""
        endpoint = self.ua.endpoint
        assert self.session is not None
        for event in self.session.receive_reinvite(request):
            if isinstance(event, ReInviteRefused):  # RFC 3261 §14.2
                endpoint.send_response(txn, event.response)
                return
        body = b""
        if request.body and self.media is not None:
            try:
                body = self.media.create_answer(request.body)
            except RemoteProtocolError as exc:
                endpoint.send_response(txn, request.create_response(488, str(exc)))
                return
        elif self.media is not None:
            body = self.media.create_offer()
        resp = request.create_response(200)
        resp.headers.add("Contact", self._contact())
        if body:
            resp.headers.add("Content-Type", "application/sdp")
            resp.body = body
        self.session.send_reinvite_answer(request, resp, self.ua.clock(),
                                          self.media.local_sdp if body and self.media else None)
        endpoint.send_response(txn, resp)
        self._arm()
        self._emit(CallEvents.ReInviteReceived, body=request.body,
                   headers=received_headers(request.headers))

    # -- transfer (RFC 3515, RFC 3891, RFC 4488) ---------------------------------

    def _on_refer(self, request: SipRequest, txn: ServerTransaction) -> None:
        """A REFER in our dialog: the peer asks us to transfer it. Refused
        when the call is not connected (403), too often (403, a security
        event), malformed (400, a security event) or while another transfer
        of this call is pending (491); else ``TransferRequested``, and 603
        when no listener decides."""
        endpoint = self.ua.endpoint
        src = self.source or self.peer.host
        if self.state != CallState.CONNECTED:
            endpoint.send_response(txn, request.create_response(403, "Call not connected"))
            return
        if not self._refer_budget.take(self.ua.clock()):
            security_event("refer_rate", src, call=self.id)
            endpoint.send_response(txn, request.create_response(403, "Too many REFERs"))
            return
        try:
            target = parse_refer_to(request.headers.get_all("Refer-To"))
        except RemoteProtocolError as exc:
            security_event("bad_refer", src, reason=str(exc))
            endpoint.send_response(txn, request.create_response(exc.status, str(exc)))
            return
        if self._transfer is not None and not self._transfer.done or (
                self._notifier is not None and self._notifier.get_timer() is not None):
            endpoint.send_response(txn, request.create_response(491))
            return
        transfer = TransferRequest(self, request, txn, target)
        self._transfer = transfer
        if not self.emitter.listeners(str(CallEvents.TransferRequested)):
            self.log.info("REFER to %s refused: no TransferRequested listener", target.uri)
            transfer.reject(603)
            return
        transfer._deadline = asyncio.get_running_loop().call_later(
            TRANSFER_DECISION_TIMEOUT, transfer._expire)
        self._emit(CallEvents.TransferRequested, target=str(target.uri), replaces=target.replaces,
                   referred_by=request.headers.get("Referred-By"), request=transfer,
                   accept=transfer.accept, reject=transfer.reject, headers=received_headers(request.headers))

    def _start_notifying(self, transfer: TransferRequest, notifier: ReferNotifier, new: Call) -> None:
        """A REFER we accepted: report the new call's progress in NOTIFYs
        (RFC 3515 §2.4.5), put it in our place in the media graph once it
        answers, then end this leg (BYE after the final NOTIFY)."""
        self._notifier = notifier
        # This leg's flows now, in case the transferor hangs up before the
        # new call answers (then remove_node has dropped them).
        graph = self.graph
        flows = [(s, d) for s, d in graph.flows() if s is self or d is self] if graph is not None else []
        self._notify(100, "Trying")
        self._arm_refer()
        ringing = [False]

        def progress(ev: Any) -> None:
            if not ringing[0]:
                ringing[0] = True
                self._notify(180 if ev.code is None or ev.code == 100 else ev.code, ev.reason)

        def connected(ev: Any) -> None:
            new.emitter.remove_listener(str(CallEvents.Ringing), progress)
            new.emitter.remove_listener(str(CallEvents.Progress), progress)
            if graph is not None and not new.state.ended:
                if not self.state.ended:
                    graph.replace_node(self, new)
                else:
                    for src, dst in flows:
                        a, b = (new if src is self else src), (new if dst is self else dst)
                        if not getattr(a, "state", CallState.CONNECTED).ended and \
                                not getattr(b, "state", CallState.CONNECTED).ended:
                            graph.connect(a, b)
            self._notify(200, "OK")
            self._emit(CallEvents.TransferComplete, code=200, reason="OK", new_call=new)
            if not self.state.ended:
                self._send_bye({"Reason": 'SIP;cause=200;text="Call transferred"'})
                self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Transferred")

        def failed(ev: Any) -> None:
            new.emitter.remove_listener(str(CallEvents.Connected), connected)
            code = ev.code if isinstance(ev.code, int) and 300 <= ev.code <= 699 else 500
            self._notify(code, ev.reason)
            self._emit(CallEvents.TransferFailed, code=code, reason=ev.reason, refused=False, new_call=new)

        if new.state == CallState.CONNECTED:
            connected(None)
            return
        new.emitter.on(str(CallEvents.Ringing), progress)
        new.emitter.on(str(CallEvents.Progress), progress)
        new.emitter.once(str(CallEvents.Connected), connected)
        new.emitter.once(str(CallEvents.Failed), failed)

    def _notify(self, status: int, reason: str | None) -> None:
        notifier = self._notifier
        if notifier is None or self.state.ended:
            return
        self._send_notify(notifier.notify(status, reason, self.ua.clock()))

    def _send_notify(self, request: SipRequest | None) -> None:
        if request is not None:
            self.ua.endpoint.send_request(request, self.peer, lambda resp: None)
        self._arm_refer()

    def transfer_to(self, target: str | Call, *, fallback: str | None = None,
                    callerid: str | None = None, timeout: float = 32.0) -> None:
        """Transfer the phone or trunk on this call with REFER (RFC 3515).

        :param target: a ``sip:``/``sips:`` URI (blind transfer), or another
            connected SIP call (attended: the Refer-To carries ``Replaces``
            naming that call's dialog, RFC 3891 §7.1, so its far end takes
            our place there). Another call that is no SIP call is joined
            in the engine instead (no REFER can name it).
        :param fallback: ``"bridge"``: when the far end refuses the REFER
            (405, 501, 603...) or sends no final NOTIFY within ``timeout``,
            the engine places the call (``target``'s URI, through the
            scenario's ``call_sip``/``call_pstn``) and joins the two legs
            in the media graph. ``TransferFailed`` is emitted either way.
        :param callerid: the caller id of a call the fallback places.

        ``TransferComplete`` (``e.code``: the sipfrag status) is followed by
        this leg's end (BYE, Disconnected with reason ``Transferred``);
        ``TransferFailed`` carries the sipfrag or REFER status in ``e.code``.
        """
        self._check_transfer(target, fallback)
        if self.dialog is None:
            raise CallError("transfer needs a dialog")
        if self._refer_client is not None and not self._refer_client.done:
            raise CallError("a transfer of this call is already under way")
        replaces: Replaces | None = None
        if isinstance(target, Call):
            other_dialog = target.dialog if isinstance(target, SipCall) else None
            if other_dialog is None:
                self._bridge_transfer(target, callerid)
                return
            uri = other_dialog.remote_target
            replaces = Replaces.of_dialog(other_dialog)
        else:
            try:
                parsed = parse_uri(target)
            except RemoteProtocolError as exc:
                raise CallError(f"bad transfer target {target!r}: {exc}") from None
            if not isinstance(parsed, SipUri):
                raise CallError(f"REFER needs a sip: or sips: URI, not {target!r}")
            uri = parsed
        client = ReferClient(self.dialog, uri, replaces, self.ua.clock(), timeout)
        self._refer_client = client
        self._refer_plan = (target, fallback, callerid)
        self.ua.endpoint.send_request(client.create_refer(), self.peer, self._on_refer_response)
        self._arm_refer()

    def _on_refer_response(self, resp: SipResponse | None) -> None:
        if self._refer_client is not None:
            self._on_refer_events(self._refer_client.receive_response(resp))

    def _on_notify(self, request: SipRequest, txn: ServerTransaction) -> None:
        """A NOTIFY of the REFER we sent (RFC 3515 §2.4.5); any other gets
        481 (no such subscription, RFC 6665 §4.1.3)."""
        endpoint = self.ua.endpoint
        client = self._refer_client
        if client is None or not client.matches(request):
            endpoint.send_response(txn, request.create_response(481, "Subscription does not exist"))
            return
        try:
            events = client.receive_notify(request)
        except RemoteProtocolError as exc:
            endpoint.send_response(txn, request.create_response(exc.status, str(exc)))
            return
        endpoint.send_response(txn, request.create_response(200))
        self._on_refer_events(events)

    def _on_refer_events(self, events: list[ReferEvent]) -> None:
        for event in events:
            if isinstance(event, ReferSucceeded):
                self.log.info("transferred (%d %s)", event.status, event.reason)
                self._emit(CallEvents.TransferComplete, code=event.status, reason=event.reason, new_call=None)
                if not self.state.ended:
                    self._send_bye({"Reason": 'SIP;cause=200;text="Call transferred"'})
                    self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Transferred")
            elif isinstance(event, ReferFailed):
                self.log.info("transfer failed (%d %s)", event.status, event.reason)
                plan = self._refer_plan
                if event.refused and plan is not None and plan[1] == "bridge" and not self.state.ended:
                    try:
                        self._bridge_transfer(plan[0], plan[2], event.status, event.reason)
                        continue
                    except CallError as exc:
                        self.log.warning("transfer fallback failed: %s", exc)
                self._emit(CallEvents.TransferFailed, code=event.status, reason=event.reason,
                           refused=event.refused, new_call=None)
        self._arm_refer()

    def _arm_refer(self) -> None:
        """One timer for the subscription's expiry and the REFER's deadline."""
        if self._refer_timer is not None:
            self._refer_timer.cancel()
            self._refer_timer = None
        if self.state.ended:
            return
        due = [t for t in (self._notifier.get_timer() if self._notifier is not None else None,
                           self._refer_client.get_timer() if self._refer_client is not None else None)
               if t is not None]
        if due:
            delay = max(0.0, min(due) - self.ua.clock())
            self._refer_timer = asyncio.get_running_loop().call_later(delay, self._on_refer_timer)

    def _on_refer_timer(self) -> None:
        self._refer_timer = None
        now = self.ua.clock()
        if self._notifier is not None:
            request = self._notifier.handle_timer(now)
            if request is not None and not self.state.ended:
                self.ua.endpoint.send_request(request, self.peer, lambda resp: None)
        if self._refer_client is not None:
            self._on_refer_events(self._refer_client.handle_timer(now))
        self._arm_refer()

    def _tone_handling_changed(self, enabled: bool) -> None:
        """Have the media session report RTP DTMF (RFC 4733, in-band) while
        tones are handled; INFO digits need nothing from it."""
        set_listener = getattr(self.media, "set_tone_listener", None)
        if set_listener is not None:
            set_listener(self._tone_received if enabled else None)

    # -- media ---------------------------------------------------------------------

    def _media_ready(self) -> bool:
        if getattr(self.media, "negotiated", None) is None:
            return False
        if self.state == CallState.CONNECTED:
            return True
        if self.state == CallState.ALERTING:
            return self._early_sdp_sent  # 183 with SDP sent: early media
        return self.state == CallState.PROGRESSING  # early SDP received

    def _play(self, source: FrameSource, done: Callable[[bool], None]) -> None:
        start = getattr(self.media, "start_playback", None)
        if start is None or not start(source, done):
            raise CallError("no media negotiated")

    def _stop_media(self) -> None:
        stop = getattr(self.media, "stop_playback", None)
        if stop is not None:
            stop()

    def media_port(self) -> AudioPort | None:
        port = getattr(self.media, "audio_port", None)
        return port() if port is not None and self._media_ready() else None

    def _tts(self) -> TtsCache:
        tts = getattr(self.media, "tts", None)
        return tts if isinstance(tts, TtsCache) else default_tts()

    def _audio(self) -> AudioLoader:
        audio = getattr(self.media, "audio", None)
        return audio if isinstance(audio, AudioLoader) else default_audio_loader()

    def media_stats(self) -> MediaStats:
        stats = getattr(self.media, "media_stats", None)
        return stats() if stats is not None else MediaStats()

    def _watch_media(self) -> None:
        """Connected: have the media hang up on RTP inactivity (if the
        engine's ``rtp_timeout`` is on; see :mod:`engine.calls.sip_media`)."""
        watch = getattr(self.media, "watch_rtp", None)
        if watch is not None:
            try:
                watch(self._on_rtp_timeout)
            except Exception:  # media trouble must not stop the call connecting
                self.log.exception("starting the media session failed")

    def _on_rtp_timeout(self, event: Any) -> None:
        """No RTP nor RTCP for the engine's ``rtp_timeout`` while media was
        expected: the peer is gone (crashed, lost its network) without a
        BYE. End the call with BYE; the scenario sees Disconnected 408
        "RTP timeout"."""
        if self.state != CallState.CONNECTED:
            return
        self.log.warning("no RTP for %.1f s: hanging up", getattr(event, "idle", 0.0))
        self._send_bye({"Reason": 'SIP;cause=408;text="RTP timeout"'})
        self._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 408, "RTP timeout")

    # -- sending DTMF ----------------------------------------------------------------

    def _digits_mode(self, mode: str) -> str:
        rtp_ok = self._media_ready() and bool(getattr(self.media, "telephone_event", False))
        info_ok = self.state == CallState.CONNECTED and self.dialog is not None
        if mode == "auto":
            mode = "rfc4733" if rtp_ok else "info"
        if mode == "rfc4733" and not rtp_ok:
            if not self._media_ready():
                raise CallError(f"RFC 4733 digits need a connected call or early media, not {self.state.value}")
            raise CallError("the peer did not negotiate telephone-event: send the digits with mode='info'")
        if mode == "info" and not info_ok:
            raise CallError(f"INFO digits need a connected call, not {self.state.value}")
        return mode

    def _start_rtp_digits(self, action: SendDigitsAction) -> bool:
        start = getattr(self.media, "start_digits", None)
        if start is None or not start(action.digits, action.duration, action.gap, action._resolve):
            raise CallError("telephone-event is no longer negotiated")
        return True

    def _stop_rtp_digits(self) -> None:
        stop = getattr(self.media, "stop_digits", None)
        if stop is not None:
            stop()

    def _deliver_digit(self, digit: str, action: SendDigitsAction) -> None:
        """One SIP INFO ``application/dtmf-relay`` (``Signal=``, ``Duration=`` in ms)."""
        self.send_info("application/dtmf-relay", dtmf_relay_body(digit, action.duration))

    def _cleanup(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._refer_timer is not None:
            self._refer_timer.cancel()
            self._refer_timer = None
        if self.session is not None:
            self.session.close()
        if self.media is not None:
            try:
                self.media.close()
            except Exception:
                self.log.exception("media close failed")
        self.ua.forget(self)


class TransferRequest:
    """A REFER waiting for the scenario's decision (``e.request`` of
    ``TransferRequested``; ``e.accept`` and ``e.reject`` are its methods).

    :ivar target: the parsed Refer-To (:class:`~engine.sip.refer.ReferTarget`).
    """

    def __init__(self, call: SipCall, request: SipRequest, txn: ServerTransaction, target: ReferTarget) -> None:
        self.call = call
        self.request = request
        self.txn = txn
        self.target = target
        self.done = False
        self._deadline: asyncio.TimerHandle | None = None

    def _decide(self) -> None:
        if self.done:
            raise CallError("this transfer request was already answered")
        self.done = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def accept(self, target: str | None = None, callerid: str | None = None) -> Call:
        """Take the transfer: 202 Accepted, then the engine places the call
        to ``target`` (default: the Refer-To URI, with its Replaces when it
        carried one) through the scenario's own ``call_sip``/``call_pstn``
        and their policy, reports its progress in NOTIFYs, puts it in this
        call's place in the media graph once answered and ends this call.
        Returns the new call.

        :raises CallError: the call could not be placed (the REFER then
            gets 603); ``DialRefused`` when the dial-out policy refuses.
        """
        self._decide()
        call = self.call
        headers = {"Replaces": str(self.target.replaces)} if self.target.replaces is not None else None
        try:
            if call.state != CallState.CONNECTED or call.dialog is None:
                raise CallError(f"the call is {call.state.value}: it cannot be transferred")
            new = call._dial_transfer_target(target or str(self.target.uri), callerid,
                                             headers if target is None else None)
        except Exception:
            self._respond(self.request.create_response(603))
            raise
        notifier = ReferNotifier(call.dialog, self.request, call.ua.clock())
        self._respond(notifier.accept(self.request))
        call._start_notifying(self, notifier, new)
        return new

    def reject(self, code: int = 603) -> None:
        """Refuse the transfer with ``code`` (400-699; default 603 Decline)."""
        if not 400 <= code <= 699:
            raise CallError(f"a transfer is rejected with 400-699, not {code}")
        self._decide()
        self._respond(self.request.create_response(code))

    def _expire(self) -> None:
        self._deadline = None
        if not self.done:
            self.call.log.info("no decision on the REFER within %.0f s: 603", TRANSFER_DECISION_TIMEOUT)
            self.reject(603)

    def _respond(self, response: SipResponse) -> None:
        self.call.ua.endpoint.send_response(self.txn, response)
