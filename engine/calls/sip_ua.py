"""The SIP user agent core: INVITE sessions, in-dialog requests, OPTIONS,
MESSAGE and the registrar, turning SIP into :class:`~engine.calls.call.Call`
objects.

The :class:`UserAgent` owns a :class:`~engine.transport.sip_endpoint.SipEndpoint`
(sockets and transactions) and looks calls up by dialog id. Each
:class:`SipCall` is one INVITE session (RFC 3261 §13-15):

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

The UA answers what no scenario needs to see: OPTIONS (200 with Allow,
Accept, Supported), requests with unknown ``Require`` extensions (420),
INVITEs with bodies we cannot read (415) or that refuse SDP (406), methods we
do not implement (405/501), and in-dialog requests for unknown dialogs (481).
A caller cannot reach the PSTN trunk except through a scenario that calls
``call_pstn``: the UA never proxies or forwards.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
import ipaddress
import logging
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from engine.calls.call import (
    Call, CallError, CallEvents, CallState, Dispatcher, MediaHandler, MediaStats, SendDigitsAction,
    CallAction, check_action, dtmf_relay_body,
)
from engine.media.players import FrameSource
from engine.media.tts import TtsCache, default_tts
from engine.transport.audio_fetch import AudioLoader, default_audio_loader
from engine.calls.grants import Grant, without_engine_headers
from engine.state.directory import ContactUpdate, LoginBackoff, LoginGuard, MemoryDirectory, OutOfOrder, TooManyBindings
from engine.sip.auth import ClientAuthSession, DigestServer
from engine.sip.dialog import Dialog
from engine.sip.errors import RemoteProtocolError
from engine.sip.offer_answer import SRTP_POLICIES
from engine.sip.headers import NameAddr
from engine.sip.message import BRANCH_MAGIC, Headers, SipRequest, SipResponse, new_call_id, new_tag
from engine.sip.invite_session import (
    AckTimedOut, Answered, CallCancelled, CallFailed, CancelReady, CredentialsWithheld, InviteReady,
    InviteSession, NoAnswer, ProvisionalReceived, Redirected, RedirectRefused, ReInviteRefused,
    Retransmit2xx, host_port, same_host, same_host_port, uses_tls,
)
from engine.sip.invite_session import Event as SessionEvent
from engine.sip.registrar import Registrar, RegisterAnswered
from engine.sip.transaction import ServerTransaction, Timers
from engine.sip.uri import SipUri, TelUri, format_host, parse_uri
from engine.security_log import security_event
from engine.transport.sip_endpoint import Peer, SecurityPolicy, SipEndpoint

if TYPE_CHECKING:
    from engine.media.ports import AudioPort

__all__ = ["UaConfig", "Trunk", "UserAgent", "SipCall", "IncomingCallHandler"]

logger = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, MESSAGE, REGISTER"
KNOWN_NOT_ALLOWED = {"UPDATE", "PRACK", "REFER", "SUBSCRIBE", "NOTIFY", "PUBLISH"}
SUPPORTED: frozenset[str] = frozenset()


@dataclass
class Trunk:
    """A SIP trunk for calls to the PSTN: where to send them and the
    credentials to answer its digest challenges with."""

    host: str
    port: int = 5060
    transport: str = "UDP"
    username: str | None = None
    password: str | None = None
    #: ``sips`` when the trunk was given as a ``sips:`` URI (RFC 5630: TLS
    #: on every hop); its calls then go to ``sips:`` Request-URIs.
    scheme: str = "sip"

    @classmethod
    def from_uri(cls, text: str) -> Trunk:
        """``sip:user:password@host:port;transport=tcp``, or TLS as
        ``sips:host:port`` or ``sip:host;transport=tls`` (port 5061 by default)."""
        uri = parse_uri(text)
        if not isinstance(uri, SipUri):
            raise ValueError(f"trunk must be a sip: or sips: URI, got {text!r}")
        transport = "TLS" if uri.scheme == "sips" else uri.transport
        if transport not in ("UDP", "TCP", "TLS"):
            raise ValueError(f"trunk transport must be udp, tcp or tls, not {transport.lower()!r}")
        port = uri.port or (5061 if transport == "TLS" else 5060)
        return cls(uri.host, port, transport, uri.user, uri.password, uri.scheme)

    def __repr__(self) -> str:  # never print the password
        return f"Trunk({self.username}@{self.host}:{self.port};{self.transport})"


@dataclass
class UaConfig:
    hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    port: int = 5060
    advertised_host: str | None = None
    realm: str = "callbridge"
    user_agent: str = "callbridge/0.1"
    trunk: Trunk | None = None
    invite_timeout: float = 60.0
    policy: SecurityPolicy = field(default_factory=SecurityPolicy)
    timers: Timers = field(default_factory=Timers)
    register_min_expires: int = 60
    register_max_expires: int = 3600
    auth_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    #: Lockouts after wrong REGISTER passwords, per account and per source.
    login_backoff: LoginBackoff = field(default_factory=LoginBackoff)
    #: SIP over TLS: the listener's port and server context (no context:
    #: no listener); how servers we call over TLS are verified (``None``:
    #: the system's CAs), and the trunk in particular (its private CA).
    tls_port: int = 5061
    tls_context: ssl.SSLContext | None = None
    tls_client_context: ssl.SSLContext | None = None
    trunk_tls_context: ssl.SSLContext | None = None


def received_headers(headers: Headers, src: str | None = None) -> dict[str, str]:
    """The ``X-`` headers of a received message, without ``X-Callbridge-*``
    (grants travel as call attributes, :class:`~engine.calls.grants.Grant`;
    reported as a security event when ``src`` sent some)."""
    custom, forged = without_engine_headers(headers.custom())
    if forged and src is not None:
        security_event("forged_header", src, header=forged[0])
    return custom


def _add_headers(request: SipRequest | SipResponse, headers: dict[str, str] | None) -> None:
    for name, value in (headers or {}).items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ValueError(f"invalid header {name!r}")
        request.headers.add(name, value)


def _user_of(uri: Any) -> str:
    if isinstance(uri, SipUri):
        return uri.user or ""
    if isinstance(uri, TelUri):
        return uri.number
    return ""


def _dialog_problem(invite: SipRequest) -> str | None:
    """Why an INVITE cannot create a dialog (RFC 3261 §8.1.1.8: exactly one
    SIP URI in Contact; §12.1.1: Record-Route of SIP URIs), or ``None``.
    Checked before a scenario sees the call, so that answering cannot fail."""
    contacts = invite.contact
    if not contacts:
        if _is_2543(invite) and isinstance(invite.from_.uri, SipUri):
            return None  # RFC 2543 allowed it: the From URI is the target
        return "missing Contact header"
    if len(contacts) != 1 or contacts[0].wildcard or not isinstance(contacts[0].uri, SipUri):
        return "Contact must be one SIP URI"
    if invite.headers.get("Record-Route") is not None and not all(
        isinstance(r.uri, SipUri) for r in invite.name_addrs("Record-Route")
    ):
        return "Record-Route is not a SIP URI"
    return None


def _is_2543(request: SipRequest) -> bool:
    branch = request.top_via.branch
    return branch is None or not branch.startswith(BRANCH_MAGIC)


def _dialog_request(invite: SipRequest) -> SipRequest:
    """The INVITE as a dialog is made from: an RFC 2543 INVITE without
    Contact gets its From URI as the remote target (RFC 4475 §3.4.1)."""
    if invite.headers.get("Contact") is not None:
        return invite
    copy = SipRequest(invite.method, invite.uri_text, invite.headers.copy(), invite.body)
    copy.headers.add("Contact", f"<{invite.from_.uri}>")
    return copy


def _retrieve_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


_same_host = same_host
_host_port = host_port
_same_host_port = same_host_port


def _loop_time() -> float:
    """The running loop's time (``time.monotonic`` on Linux, which the
    transport's transactions use as well)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # no loop yet (construction, tests): the same clock
        return time.monotonic()


_uses_tls = uses_tls


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


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

    def __init__(self, ua: UserAgent, peer: Peer, **kwargs: Any) -> None:
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
        self.on_ended.append(lambda call: self._cleanup())

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
            endpoint._transmit(event.data, self.peer)
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
                  body: bytes = b"") -> SipResponse:
        assert self.invite is not None
        resp = self.invite.create_response(status, reason, to_tag=self.local_tag)
        if status != 100:
            resp.headers.add("Contact", self._contact())
        resp.headers.add("Server", self.ua.config.user_agent)
        if 200 <= status < 300:
            resp.headers.add("Allow", ALLOW)
        _add_headers(resp, headers)
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
        assert self.session is not None
        self.session.send_provisional(response)
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
            response = self._response(200, headers=headers, body=body)
            assert self.invite is not None and self.session is not None
            self.session.send_answer(response, _dialog_request(self.invite),
                                     self._contact(), self.ua.clock())
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
        credentials (:meth:`UserAgent._invite_identity`)."""
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
        if self.session is None or self.session.dialog is None:
            return
        bye = self.session.end_session()
        self._arm()
        assert bye is not None
        _add_headers(bye, headers)
        self.ua.endpoint.send_request(bye, self.peer, lambda resp: None)

    def _in_dialog_request(self, method: str, content_type: str, body: bytes,
                           headers: dict[str, str] | None) -> None:
        if self.state != CallState.CONNECTED or self.dialog is None:
            raise CallError(f"{method} needs a connected call")
        req = self.dialog.create_request(method)
        _add_headers(req, headers)
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
        self.session.send_reinvite_answer(request, resp, self.ua.clock())
        endpoint.send_response(txn, resp)
        self._arm()
        self._emit(CallEvents.ReInviteReceived, body=request.body,
                   headers=received_headers(request.headers))

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

    def _audio_port(self) -> AudioPort | None:
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
        engine's ``rtp_timeout`` is on; see :mod:`engine.calls.sdp_media`)."""
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
        if self.session is not None:
            self.session.close()
        if self.media is not None:
            try:
                self.media.close()
            except Exception:
                self.log.exception("media close failed")
        self.ua.forget(self)


IncomingCallHandler = Callable[[SipCall, SipRequest], None]
MessageHandler = Callable[[SipRequest, Peer], int]


class UserAgent:
    """The SIP side of the engine: one endpoint, its calls and registrar.

    :param on_incoming_call: called with each new inbound call (state
        ``ALERTING``, 100 Trying already sent). It must answer, reject or
        hand the call to a scenario; exceptions reject it with 500.
    :param on_message: called for an out-of-dialog MESSAGE; returns the
        status code to answer with.
    :param media_factory: makes the :class:`~engine.calls.call.MediaHandler` of
        each call.
    :param user_ha1: ``(user, realm, algorithm) -> HA1 | None`` for the
        registrar (users from the store).
    :param clock: the registrar's time (nonces, lockouts); tests pass a
        virtual one.
    """

    def __init__(
        self,
        config: UaConfig,
        *,
        media_factory: Callable[[SipCall], MediaHandler],
        on_incoming_call: IncomingCallHandler | None = None,
        on_message: MessageHandler | None = None,
        directory: MemoryDirectory | None = None,
        user_ha1: Callable[[str, str, str], str | None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.directory = directory or MemoryDirectory()
        self.clock: Callable[[], float] = clock if clock is not None else _loop_time
        #: Per-account and per-source lockouts of wrong REGISTER passwords.
        self.login_guard = LoginGuard(self.directory, config.login_backoff)
        self.media_factory = media_factory
        self.on_incoming_call = on_incoming_call
        self.on_message = on_message
        self._user_ha1 = user_ha1
        self.endpoint = SipEndpoint(
            config.hosts,
            config.port,
            on_request=self._on_request,
            on_cancel=self._on_cancel,
            on_stray_response=self._on_stray_response,
            policy=config.policy,
            directory=self.directory,
            timers=config.timers,
            advertised_host=config.advertised_host,
            dialog_exists=self._has_dialog,
            tls_port=config.tls_port,
            tls_context=config.tls_context,
            tls_client_context=config.tls_client_context,
        )
        self.registrar_auth = DigestServer(config.realm, secret=config.auth_secret)
        self.registrar = Registrar(
            self.registrar_auth, self.login_guard, user_ha1,
            min_expires=config.register_min_expires, max_expires=config.register_max_expires,
        )
        self._dialogs: dict[tuple[str, str, str], SipCall] = {}
        self._by_invite: dict[ServerTransaction, SipCall] = {}
        self._late_acks: OrderedDict[tuple[str, str, str], tuple[bytes, Peer, float]] = OrderedDict()
        self.calls: set[SipCall] = set()

    @property
    def user_ha1(self) -> Callable[[str, str, str], str | None] | None:
        """The registrar's users: ``(user, realm, algorithm) -> HA1 | None``."""
        return self._user_ha1

    @user_ha1.setter
    def user_ha1(self, value: Callable[[str, str, str], str | None] | None) -> None:
        self._user_ha1 = value
        self.registrar.user_ha1 = value

    async def start(self) -> None:
        await self.endpoint.start()
        self.config.port = self.endpoint.port
        self.config.tls_port = self.endpoint.tls_port

    async def stop(self) -> None:
        for call in list(self.calls):
            try:
                call.hangup()
            except Exception:
                logger.exception("hangup at shutdown failed")
        await asyncio.sleep(0)
        await self.endpoint.stop()

    @property
    def port(self) -> int:
        return self.endpoint.port

    def set_timers(self, timers: Timers) -> None:
        """Use ``timers`` (RFC 3261 T1, T2, T4...) for the transactions and
        2xx retransmissions started from now on (tests shorten them)."""
        self.config.timers = timers
        self.endpoint.layer.timers = timers

    def contact_for(self, peer: Peer, sips: bool = False) -> str:
        """Our Contact towards ``peer``: on its transport and our port for
        it; over TLS ``sips:`` when the request was (RFC 5630 §3.1.1),
        else ``sip:...;transport=tls``."""
        host = format_host(self.endpoint.local_host_for(peer))
        port = self.endpoint.port_for(peer.transport)
        if peer.transport == "TLS" and sips:
            return f"<sips:callbridge@{host}:{port}>"
        transport = f";transport={peer.transport.lower()}" if peer.transport != "UDP" else ""
        return f"<sip:callbridge@{host}:{port}{transport}>"

    # -- bookkeeping ---------------------------------------------------------------

    def _has_dialog(self, request: SipRequest) -> bool:
        return (request.call_id, request.to.tag or "", request.from_.tag or "") in self._dialogs

    def register_dialog(self, call: SipCall) -> None:
        assert call.dialog is not None
        self._dialogs[call.dialog.id] = call

    def forget(self, call: SipCall) -> None:
        """Drop an ended call at once.

        Nothing of the call is kept: late in-dialog requests are absorbed by
        their server transactions or get 481, a late ACK is dropped. The one
        thing remembered (for 64*T1) is the ACK of an outbound call, so that
        a retransmitted 2xx is acknowledged again (RFC 3261 §13.2.2.4)
        without keeping the whole call alive.
        """
        self.calls.discard(call)
        if call.invite_txn is not None:
            self._by_invite.pop(call.invite_txn, None)
        if call.dialog is not None:
            key = call.dialog.id
            self._dialogs.pop(key, None)
            if call._ack is not None:
                now = self.clock()
                acks = self._late_acks
                while acks:
                    first = next(iter(acks.values()))
                    if first[2] > now:
                        break
                    acks.popitem(last=False)
                acks[key] = (call._ack.to_bytes(), call.peer, now + self.config.timers.timeout)

    # -- incoming --------------------------------------------------------------

    def _on_request(self, request: SipRequest, txn: ServerTransaction | None, peer: Peer) -> None:
        if txn is None:  # an ACK to a 2xx
            call = self._dialogs.get((request.call_id, request.to.tag or "", request.from_.tag or ""))
            if call is not None:
                call._on_ack(request)
            return
        endpoint = self.endpoint
        method = request.method
        to_tag = request.to.tag
        if to_tag is not None:
            call = self._dialogs.get((request.call_id, to_tag, request.from_.tag or ""))
            if call is None:
                endpoint.send_response(txn, request.create_response(481))
            else:
                call._on_request(request, txn)
            return
        if method not in ("ACK", "CANCEL"):
            unsupported = [
                tag.strip()
                for value in request.headers.get_all("Require")
                for tag in value.split(",")
                if tag.strip() and tag.strip() not in SUPPORTED
            ]
            if unsupported:
                resp = request.create_response(420)
                resp.headers.add("Unsupported", ", ".join(unsupported))
                endpoint.send_response(txn, resp)
                return
        if method == "INVITE":
            self._on_invite(request, txn, peer)
        elif method == "OPTIONS":
            endpoint.send_response(txn, self.options_response(request))
        elif method == "REGISTER":
            endpoint.send_response(txn, self._on_register(request, peer))
        elif method == "MESSAGE":
            status = 404
            if self.on_message is not None:
                try:
                    status = self.on_message(request, peer)
                except Exception:
                    logger.exception("MESSAGE handler failed")
                    status = 500
            response = request.create_response(status)
            if status == 503:  # the session cap: try again later (RFC 3261 §21.5.4)
                response.headers.add("Retry-After", "5")
            endpoint.send_response(txn, response)
        elif method in ("BYE", "INFO"):
            endpoint.send_response(txn, request.create_response(481))
        else:
            endpoint.send_response(txn, self.method_not_allowed(request))

    def options_response(self, request: SipRequest) -> SipResponse:
        resp = request.create_response(200, to_tag=new_tag())
        resp.headers.add("Allow", ALLOW)
        resp.headers.add("Accept", "application/sdp")
        resp.headers.add("Accept-Encoding", "identity")
        resp.headers.add("Accept-Language", "en")
        resp.headers.add("Server", self.config.user_agent)
        return resp

    def method_not_allowed(self, request: SipRequest) -> SipResponse:
        if request.method in KNOWN_NOT_ALLOWED:
            resp = request.create_response(405)
            resp.headers.add("Allow", ALLOW)
            return resp
        resp = request.create_response(501)
        resp.headers.add("Allow", ALLOW)
        return resp

    def _on_invite(self, request: SipRequest, txn: ServerTransaction, peer: Peer) -> None:
        endpoint = self.endpoint
        problem = _dialog_problem(request)
        if problem is not None:
            endpoint.send_response(txn, request.create_response(400, problem))
            return
        ctype = request.content_type
        if request.body and ctype != "application/sdp":
            resp = request.create_response(415)
            resp.headers.add("Accept", "application/sdp")
            endpoint.send_response(txn, resp)
            return
        accept = request.headers.get_all("Accept")
        if accept and not any(
            a.split(";")[0].strip().lower() in ("application/sdp", "application/*", "*/*")
            for a in accept
        ):
            resp = request.create_response(406)
            resp.headers.add("Accept", "application/sdp")
            endpoint.send_response(txn, resp)
            return
        endpoint.send_response(txn, request.create_response(100))
        from_ = request.from_
        # RFC 3261 §19.1.2/§25.1: the user part's escapes are decoded once,
        # by the URI parser; decoding again would turn a caller's "%250A"
        # into a line feed.
        callerid = _user_of(from_.uri)
        call = SipCall(
            self,
            peer,
            direction="inbound",
            number=_user_of(request.uri),
            callerid=callerid,
            display_name=from_.display_name,
            headers=received_headers(request.headers, peer.host),
        )
        call.source = peer.host
        call.grant = self._invite_identity(request, peer)
        call.invite = request
        call.invite_txn = txn
        call.session = InviteSession.create_uas(request, self.config.timers, peer.reliable)
        call._set_state(CallState.ALERTING)
        self.calls.add(call)
        self._by_invite[txn] = call
        if self.on_incoming_call is None:
            call.reject(404)
            return
        try:
            self.on_incoming_call(call, request)
        except Exception:
            logger.exception("incoming call handler failed")
            if call.state == CallState.ALERTING and not call._final_sent:
                call.reject(500)

    def _invite_identity(self, request: SipRequest, peer: Peer) -> Grant | None:
        """The store user an INVITE proved to be (digest credentials in answer
        to :meth:`SipCall.challenge`, RFC 3261 §22.2), or ``None``: an
        INVITE without valid credentials is an anonymous call, which only
        rules without ``authenticated: true`` take."""
        username = self.registrar.invite_identity(request, peer.host, self.clock())
        return Grant(identity=username, authenticated_by="sip-digest") if username else None

    def _on_cancel(self, request: SipRequest, txn: ServerTransaction,
                   invite_txn: ServerTransaction | None, peer: Peer) -> None:
        call = self._by_invite.get(invite_txn) if invite_txn is not None else None
        if call is None:
            self.endpoint.send_response(txn, request.create_response(481))
            return
        self.endpoint.send_response(txn, request.create_response(200))
        call._on_cancel()

    def _on_stray_response(self, response: SipResponse, peer: Peer) -> None:
        if not 200 <= response.status < 300 or response.cseq.method != "INVITE":
            return
        key = (response.call_id, response.from_.tag or "", response.to.tag or "")
        call = self._dialogs.get(key)
        if call is not None:
            call._on_stray_2xx(response)
            return
        late = self._late_acks.get(key)
        if late is not None and late[2] > self.clock():
            self.endpoint.send_stateless_bytes(late[0], late[1])

    # -- registrar (RFC 3261 §10.3) --------------------------------------------

    def _on_register(self, request: SipRequest, peer: Peer) -> SipResponse:
        """Have the registrar read the REGISTER and apply its decision to
        the directory (all contacts or none)."""
        now = self.clock()
        decision = self.registrar.receive(request, (peer.transport, peer.host, peer.port), now)
        if isinstance(decision, RegisterAnswered):
            return decision.response
        directory = self.directory
        try:
            if decision.remove_all:
                directory.remove_all(decision.aor, decision.call_id, decision.cseq, now=now)
                bindings = []
            elif decision.contacts:
                bindings = directory.update_bindings(
                    decision.aor, [ContactUpdate(c.contact, c.expires, c.q) for c in decision.contacts],
                    now=now, call_id=decision.call_id, cseq=decision.cseq, source=decision.source,
                )
            else:  # a query (RFC 3261 §10.2.3)
                bindings = directory.bindings(decision.aor, now)
        except OutOfOrder as exc:
            return self.registrar.refused(decision, "out of order", str(exc))
        except TooManyBindings as exc:
            return self.registrar.refused(decision, "too many bindings", str(exc))
        return self.registrar.accepted(decision, bindings, now, time.time())

    # -- outgoing ----------------------------------------------------------------

    async def resolve(self, uri: SipUri | TelUri) -> Peer:
        """Where to send a request for ``uri`` (RFC 3263 without NAPTR/SRV:
        the host's A/AAAA record, port 5060 by default).

        A ``maddr`` parameter is ignored: RFC 3261 §19.1.1 calls its use
        (a loose source route) strongly discouraged and its mechanisms
        deprecated, and honouring it would send the request to a host the
        URI's host part does not name, past every check made on that host
        (the trunk-only redirect rule, where credentials may go). The
        request goes to the host part; the URI is sent unchanged.
        """
        if not isinstance(uri, SipUri):
            raise OSError("tel: URIs need a trunk")
        if _uses_tls(uri):
            transport = "TLS"
        else:
            transport = uri.transport if uri.transport in ("UDP", "TCP") else "UDP"
        host = uri.host
        port = uri.port or (5061 if transport == "TLS" else 5060)
        if not _is_ip(host):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            host = str(infos[0][4][0])
        peer = Peer(transport, host, port)
        if transport == "TLS":
            # RFC 5922 §7.2: the certificate must carry the URI's host, not
            # the address it resolved to; the trunk's by its own CA.
            trunk = self.config.trunk
            context = self.config.trunk_tls_context if trunk is not None and _same_host_port(
                (uri.host, port), (trunk.host, trunk.port)) else None
            self.endpoint.expect_tls_server(peer, uri.host, context)
        return peer

    def call_sip(
        self,
        uri: str | SipUri,
        *,
        callerid: str = "callbridge",
        display_name: str | None = None,
        headers: dict[str, str] | None = None,
        dispatcher: Dispatcher | None = None,
        auth: ClientAuthSession | None = None,
        peer: Peer | None = None,
        from_host: str | None = None,
        stay_on_host: bool = False,
        srtp: str | None = None,
    ) -> SipCall:
        """Start an outbound call to a SIP URI.

        The call is returned at once, before anything is sent, so listeners
        can be attached; it then ends in ``Connected`` or ``Failed``.

        :param auth: credentials for 401/407 challenges; they are only ever
            sent to ``uri``'s own host:port, never to where a 3xx leads.
        :param stay_on_host: follow a 3xx only to a Contact on ``uri``'s
            host:port; another fails the call with the 3xx code.
        :param srtp: ``mandatory`` or ``optional`` offer SRTP (SDES, over TLS
            only), ``off`` or ``None`` plain RTP.
        """
        if srtp is not None and srtp not in SRTP_POLICIES:
            raise CallError(f"srtp must be one of {', '.join(SRTP_POLICIES)}, not {srtp!r}")
        target = parse_uri(uri) if isinstance(uri, str) else uri
        if not isinstance(target, SipUri):
            raise CallError(f"not a sip: URI: {uri}")
        _add_headers(SipRequest("OPTIONS", target), headers)  # validate early
        call = SipCall(
            self, peer or Peer("UDP", "0.0.0.0", 0), direction="outbound",
            number=target.user or "", callerid=callerid, display_name=display_name,
            dispatcher=dispatcher,
        )
        call.srtp = srtp
        if stay_on_host:
            call._redirect_scope = _host_port(target)
        self.calls.add(call)
        call._set_state(CallState.PROGRESSING)

        async def launch() -> None:
            try:
                call.peer = peer or await self.resolve(target)
            except OSError as exc:
                call._finish(CallState.FAILED, CallEvents.Failed, 404, f"Cannot resolve {target.host}: {exc}")
                return
            host = from_host or self.endpoint.local_host_for(call.peer)
            await call._start_outbound(target, SipUri(host=host, user=callerid), headers, auth)

        asyncio.get_running_loop().create_task(launch())
        return call

    def call_pstn(
        self, number: str, callerid: str, *, display_name: str | None = None,
        headers: dict[str, str] | None = None, dispatcher: Dispatcher | None = None,
        srtp: str | None = None,
    ) -> SipCall:
        """Call ``number`` through the configured trunk, answering its digest
        challenges with the trunk's credentials. A 3xx is followed only to
        the trunk's own host:port: a redirect never turns a trunk call into
        a call to a host the response chose."""
        trunk = self.config.trunk
        if trunk is None:
            raise CallError("no SIP trunk is configured (--trunk)")
        params: dict[str, str | None] = {}
        if trunk.transport != "UDP" and trunk.scheme != "sips":
            params["transport"] = trunk.transport.lower()
        uri = SipUri(host=trunk.host, user=number, port=trunk.port, params=params, scheme=trunk.scheme)
        auth = ClientAuthSession(trunk.username, trunk.password or "") if trunk.username else None
        return self.call_sip(uri, callerid=callerid, display_name=display_name, headers=headers,
                             dispatcher=dispatcher, auth=auth, from_host=trunk.host,
                             stay_on_host=True, srtp=srtp)

    def call_registered(
        self, user: str, *, callerid: str, display_name: str | None = None,
        headers: dict[str, str] | None = None, dispatcher: Dispatcher | None = None,
    ) -> SipCall:
        """Call the phone registered as ``user`` (its most recent binding)."""
        now = self.clock()
        bindings = self.directory.bindings(user, now)
        if not bindings:
            raise CallError(f"user {user!r} is not registered")
        best = max(bindings, key=lambda b: (b.q if b.q is not None else 1.0, b.expires_at))
        target = parse_uri(best.contact)
        if not isinstance(target, SipUri):
            raise CallError(f"cannot call contact {best.contact}")
        # Behind NAT (the Contact names another host than the one the
        # REGISTER came from) only the source address reaches the phone;
        # otherwise the Contact is where it listens (RFC 3261 §10.2.1 lets
        # a third party register it, so the source may be someone else).
        # Over TCP or TLS the phone is reached over the connection it
        # registered on while that is open (RFC 5923, RFC 5626 §5.2): a TLS
        # phone has no certificate to accept a connection of ours with.
        peer = None
        if best.source and not _same_host(target.host, best.source[1]):
            peer = Peer(*best.source)
        elif best.source and best.source[0] != "UDP" and self.endpoint.has_connection(Peer(*best.source)):
            peer = Peer(*best.source)
        return self.call_sip(target, callerid=callerid, display_name=display_name,
                             headers=headers, dispatcher=dispatcher, peer=peer)
