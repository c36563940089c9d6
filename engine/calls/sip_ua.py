"""The SIP user agent core: INVITE sessions, in-dialog requests, OPTIONS,
MESSAGE and the registrar, turning SIP into :class:`~engine.calls.call.Call`
objects.

The :class:`UserAgent` owns a :class:`~engine.transport.sip_endpoint.SipEndpoint`
(sockets and transactions) and looks calls up by dialog id. Each call is a
:class:`~engine.calls.sip_leg.SipCall`, one INVITE session (RFC 3261 §13-15),
re-exported here.

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
from typing import Any, Callable

from engine.calls.call import CallError, CallEvents, CallState, Dispatcher, MediaHandler
from engine.calls.grants import Grant
from engine.calls.sip_leg import ALLOW, SipCall, add_headers, received_headers
from engine.state.directory import (ContactUpdate, Directory, DirectoryUnavailable, LoginBackoff, LoginGuard,
                                    OutOfOrder, TooManyBindings)
from engine.sip.auth import ClientAuthSession, DigestServer
from engine.sip.offer_answer import SRTP_POLICIES
from engine.sip.message import BRANCH_MAGIC, SipRequest, SipResponse, new_tag
from engine.sip.invite_session import InviteSession, host_port, same_host, same_host_port, uses_tls
from engine.sip.errors import RemoteProtocolError
from engine.sip.refer import parse_replaces
from engine.sip.registrar import Registrar, RegisterAnswered
from engine.security_log import security_event
from engine.sip.transaction import ServerTransaction, Timers
from engine.sip.uri import SipUri, TelUri, format_host, parse_uri
from engine.transport.sip_endpoint import Peer, SecurityPolicy, SipEndpoint, loop_time, request_source

__all__ = ["UaConfig", "Trunk", "UserAgent", "SipCall", "IncomingCallHandler", "received_headers"]

logger = logging.getLogger(__name__)

KNOWN_NOT_ALLOWED = {"UPDATE", "PRACK", "SUBSCRIBE", "PUBLISH"}
#: Option tags we honour in Require (RFC 3891 Replaces, RFC 4488 norefersub).
SUPPORTED: frozenset[str] = frozenset({"replaces", "norefersub"})


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


def _retrieve_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


_same_host = same_host
_host_port = host_port
_same_host_port = same_host_port


_uses_tls = uses_tls


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


IncomingCallHandler = Callable[[SipCall, SipRequest], None]
MessageHandler = Callable[[SipRequest, Peer], int]


class UserAgent:
    """The SIP side of the engine: one endpoint, its calls and registrar.

    :param on_incoming_call: called with each new inbound call (state
        ``ALERTING``). It must answer, reject or hand the call to a
        scenario; exceptions reject it with 500. The INVITE's server
        transaction sends 100 Trying if nothing else was sent 200 ms
        later (RFC 3261 §17.2.1), so a call answered at once costs one
        datagram less.
    :param on_message: called for an out-of-dialog MESSAGE; returns the
        status code to answer with.
    :param media_factory: makes the :class:`~engine.calls.call.MediaHandler` of
        each call.
    :param user_ha1: ``(user, realm, algorithm) -> HA1 | None`` for the
        registrar (users from the store).
    :param directory: the engine's one directory: registrations, the
        endpoint's rate limits and bans, login lockouts.
    :param clock: the time of the registrar (nonces, lockouts) and of the
        endpoint (transactions, admission); tests pass a virtual one.
    """

    def __init__(
        self,
        config: UaConfig,
        *,
        media_factory: Callable[[SipCall], MediaHandler],
        on_incoming_call: IncomingCallHandler | None = None,
        on_message: MessageHandler | None = None,
        directory: Directory,
        user_ha1: Callable[[str, str, str], str | None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.clock: Callable[[], float] = clock if clock is not None else loop_time
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
            clock=self.clock,
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
                if method == "REFER":
                    security_event("refer_unknown_dialog", request_source(request, peer).host)
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
        elif method in ("BYE", "INFO", "NOTIFY"):
            endpoint.send_response(txn, request.create_response(481))
        elif method == "REFER":
            # RFC 3515 §2.4.2 would let a REFER create its own dialog; we take
            # transfers only from a party already in a call with us.
            security_event("refer_outside_dialog", request_source(request, peer).host)
            endpoint.send_response(txn, request.create_response(403, "REFER outside a dialog"))
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
        replaced: SipCall | None = None
        if request.headers.get("Replaces") is not None:
            replaced = self._replaced_call(request, peer)
            if replaced is None:
                endpoint.send_response(txn, request.create_response(481, "Replaced dialog does not exist"))
                return
        from_ = request.from_
        # RFC 3261 §19.1.2/§25.1: the user part's escapes are decoded once,
        # by the URI parser; decoding again would turn a caller's "%250A"
        # into a line feed.
        callerid = _user_of(from_.uri)
        source = request_source(request, peer).host  # the caller, through a front proxy too
        call = SipCall(
            self,
            peer,
            direction="inbound",
            number=_user_of(request.uri),
            callerid=callerid,
            display_name=from_.display_name,
            headers=received_headers(request.headers, source),
        )
        call.source = source
        call.grant = self._invite_identity(request, peer)
        call.invite = request
        call.invite_txn = txn
        call.session = InviteSession.create_uas(request, self.config.timers, peer.reliable)
        call._set_state(CallState.ALERTING)
        self.calls.add(call)
        self._by_invite[txn] = call
        if replaced is not None:
            self._replace(replaced, call)
            return
        if self.on_incoming_call is None:
            call.reject(404)
            return
        try:
            self.on_incoming_call(call, request)
        except Exception:
            logger.exception("incoming call handler failed")
            if call.state == CallState.ALERTING and not call._final_sent:
                call.reject(500)

    def _replaced_call(self, request: SipRequest, peer: Peer) -> SipCall | None:
        """The connected call an INVITE's Replaces names (RFC 3891 §3), or
        ``None`` (then 481): no such dialog, a malformed or repeated header,
        a dialog not confirmed, or ``early-only`` on a confirmed one."""
        values = request.headers.get_all("Replaces")
        try:
            if len(values) != 1:
                raise RemoteProtocolError("more than one Replaces")
            replaces = parse_replaces(values[0])
        except RemoteProtocolError as exc:
            security_event("bad_replaces", request_source(request, peer).host, reason=str(exc))
            return None
        call = self._dialogs.get(replaces.dialog_id)
        if call is None or call.state != CallState.CONNECTED or replaces.early_only:
            security_event("replaces_unknown_dialog", request_source(request, peer).host)
            return None
        return call

    def _replace(self, old: SipCall, new: SipCall) -> None:
        """An INVITE with Replaces for ``old`` (RFC 3891 §3): answer it, and
        once connected put ``new`` in ``old``'s place (the same session,
        its flows and conference seats), then end ``old`` with BYE.
        ``old`` emits ``TransferComplete`` (``e.new_call``) and then
        Disconnected with reason ``Replaced``."""
        new.dispatcher = old.dispatcher
        new.graph = old.graph
        new.grant = old.grant
        adopt = getattr(old.dispatcher, "adopt", None)
        if adopt is not None:
            adopt(new)

        def connected(_: object) -> None:
            if old.state.ended or new.state.ended:
                return
            if old.graph is not None:
                old.graph.replace_node(old, new)
            old._emit(CallEvents.TransferComplete, code=200, reason="Replaced", new_call=new)
            old._send_bye({"Reason": 'SIP;cause=200;text="Call replaced"'})
            old._finish(CallState.DISCONNECTED, CallEvents.Disconnected, 200, "Replaced")

        new.emitter.once(str(CallEvents.Connected), connected)
        try:
            new.answer()
        except CallError as exc:
            logger.warning("answering a replacing INVITE failed: %s", exc)
            if new.state == CallState.ALERTING and not new._final_sent:
                new.reject(500)

    def _invite_identity(self, request: SipRequest, peer: Peer) -> Grant | None:
        """The store user an INVITE proved to be (digest credentials in answer
        to :meth:`SipCall.challenge`, RFC 3261 §22.2), or ``None``: an
        INVITE without valid credentials is an anonymous call, which only
        rules without ``authenticated: true`` take."""
        username = self.registrar.invite_identity(request, request_source(request, peer).host, self.clock())
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
        the directory (all contacts or none); 503 with Retry-After while a
        shared directory is unavailable (RFC 3261 §21.5.4)."""
        try:
            return self._register(request, peer)
        except DirectoryUnavailable:  # the directory logged the outage, once
            response = request.create_response(503)
            response.headers.add("Retry-After", "30")
            return response

    def _register(self, request: SipRequest, peer: Peer) -> SipResponse:
        now = self.clock()
        decision = self.registrar.receive(request, (peer.transport, peer.host, peer.port), now,
                                          origin=request_source(request, peer).host)
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
        add_headers(SipRequest("OPTIONS", target), headers)  # validate early
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
        try:
            bindings = self.directory.bindings(user, now)
        except DirectoryUnavailable as exc:  # the shared directory is down (it logged the outage)
            raise CallError(str(exc)) from None
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
