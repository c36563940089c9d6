"""The INVITE session (RFC 3261 §13-15), sans-IO: pjsip's ``inv_session``.

Theory of operation
-------------------

An :class:`InviteSession` is the UA-core half of a call that sits above the
transactions: what RFC 3261 leaves to the TU. It plays either role:

* UAS (:meth:`InviteSession.create_uas`): provisional and final responses
  to the INVITE, the 2xx retransmission until the ACK comes (T1 doubling to
  T2, §13.3.1.4) and the 64*T1 wait for that ACK (no ACK: BYE), CANCEL
  (487, §9.2), re-INVITEs (a second offer while our 2xx waits for its ACK
  gets 491, §14.2) and the hold they may carry (RFC 3264 §8.4).
* UAC (:meth:`InviteSession.create_uac`): the INVITE, its no-answer timer,
  CANCEL only once a provisional response came (§9.1), one digest retry per
  challenge (401/407, §22.2, at most two) and only while the INVITE goes to
  the host:port the credentials belong to, 3xx follow-up (at most three,
  optionally only to one host:port), the ACK of each 2xx and of every
  retransmission, and the BYE of a second fork's 2xx (§13.2.2.4).

It sends nothing itself and reads no clock: every method takes ``now`` and
returns a list of events (dataclasses, past tense as in h11/h2) that the
adapter acts on; timers are deadlines (:meth:`InviteSession.get_timer`,
:meth:`InviteSession.handle_timer`). It does not manage media: SDP bodies go
through untouched, and the session records the offer/answer exchange in an
:class:`~engine.sip.offer_answer.OfferAnswerState` (pjmedia ``sdp_neg``
driven by ``inv_session``), from which :attr:`InviteSession.remote_hold` is
read. An SDP the offer/answer machine refuses is left to the media layer to
judge (it answers 488); the session then keeps its last good state.

States (pjsip ``PJSIP_INV_STATE_*``)::

    UAC:  NULL -start()-> CALLING -1xx-> EARLY -2xx-> CONFIRMED
                             |             |  3xx/401/407: (new INVITE) CALLING
                             +-------------+-> 300-699 / timeout / CANCEL -> DISCONNECTED
    UAS:  INCOMING -send_provisional()-> EARLY -send_answer()-> CONNECTING -ACK-> CONFIRMED
             |                             |                      | 64*T1: AckTimedOut
             +--- reject / CANCEL ---------+--> DISCONNECTED <----+
    both: CONFIRMED -BYE (either way) / close()-> DISCONNECTED
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from engine.sip.auth import ClientAuthSession
from engine.sip.dialog import Dialog
from engine.sip.errors import LocalProtocolError, RemoteProtocolError
from engine.sip.headers import NameAddr
from engine.sip.message import SipRequest, SipResponse
from engine.sip.offer_answer import NegotiationState, OfferAnswerState
from engine.sip.sdp import SessionDescription, media_direction, parse_sdp
from engine.sip.transaction import Timers, create_cancel
from engine.sip.uri import SipUri, TelUri

__all__ = [
    "AckReceived", "AckTimedOut", "Answered", "CallCancelled", "CallFailed", "CancelReady",
    "CredentialsWithheld", "Event", "InviteReady", "InviteSession", "InviteSessionState",
    "NoAnswer", "ProvisionalReceived", "Redirected", "RedirectRefused", "ReInviteReceived",
    "ReInviteRefused", "Retransmit2xx", "Role", "host_port", "same_host", "same_host_port",
]

logger = logging.getLogger(__name__)

#: A 2xx retransmission timer may fire a hair before its deadline.
_EARLY = 0.001


class Role(enum.Enum):
    UAC = "UAC"
    UAS = "UAS"


class InviteSessionState(enum.Enum):
    """pjsip's ``PJSIP_INV_STATE_*``."""

    NULL = "NULL"
    CALLING = "CALLING"
    INCOMING = "INCOMING"
    EARLY = "EARLY"
    CONNECTING = "CONNECTING"
    CONFIRMED = "CONFIRMED"
    DISCONNECTED = "DISCONNECTED"


# -- events ----------------------------------------------------------------------


class Event:
    """Base class of what the session tells its adapter.

    The events are plain dataclasses, not frozen ones: nothing hashes or
    changes them, and a frozen one sets each field through
    ``object.__setattr__`` (an ACK a call, more for an outbound one).
    """


@dataclass
class Retransmit2xx(Event):
    """UAS: send our 2xx again, outside any transaction (§13.3.1.4)."""

    data: bytes


@dataclass
class AckTimedOut(Event):
    """UAS: no ACK for our 2xx within 64*T1: send ``bye`` and end the call (408)."""

    bye: SipRequest | None


@dataclass
class AckReceived(Event):
    """UAS: the ACK of our (re-)INVITE 2xx. ``first``: it confirms the session."""

    request: SipRequest
    first: bool


@dataclass
class ReInviteReceived(Event):
    """UAS: a re-INVITE to answer (with :meth:`InviteSession.send_reinvite_answer`).

    :param hold: whether its offer puts us on hold (``None``: no offer).
    """

    request: SipRequest
    hold: bool | None


@dataclass
class ReInviteRefused(Event):
    """UAS: a re-INVITE came while our 2xx waits for its ACK: answer ``response`` (491, §14.2)."""

    response: SipResponse


@dataclass
class InviteReady(Event):
    """UAC: send this INVITE in a new client transaction."""

    request: SipRequest


@dataclass
class CancelReady(Event):
    """UAC: send this CANCEL (§9.1)."""

    request: SipRequest


@dataclass
class ProvisionalReceived(Event):
    """UAC: a 101-199 response (``early_sdp``: it carries an SDP answer)."""

    response: SipResponse


@dataclass
class Answered(Event):
    """UAC: a 2xx. Send ``ack`` (and ``bye`` when set). ``fresh``: the first
    2xx, which confirms the session (otherwise a retransmission or another
    fork). ``abandoned``: it came after the call was given up: the adapter
    ends it (the ``bye`` is there)."""

    response: SipResponse
    ack: SipRequest
    bye: SipRequest | None
    fresh: bool
    abandoned: bool


@dataclass
class CallFailed(Event):
    """UAC: the INVITE failed with ``status``."""

    status: int
    reason: str | None
    response: SipResponse | None


@dataclass
class CallCancelled(Event):
    """UAC: our CANCEL took: the 487 came."""


@dataclass
class NoAnswer(Event):
    """UAC: no 2xx within the no-answer time (the CANCEL, if it may go, is
    in a :class:`CancelReady` before this event)."""

    timeout: float


@dataclass
class Redirected(Event):
    """UAC: a 3xx to follow: resolve ``target``, then :meth:`InviteSession.follow`."""

    status: int
    target: SipUri | TelUri


@dataclass
class RedirectRefused(Event):
    """UAC: a 3xx led off the host:port the call must stay on (a security event)."""

    status: int
    host: str


@dataclass
class CredentialsWithheld(Event):
    """UAC: a challenge from where the credentials do not belong (a security event)."""

    status: int


# -- helpers ---------------------------------------------------------------------


def same_host(a: str, b: str) -> bool:
    """Whether two hosts are the same (addresses compared as addresses)."""
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()


def uses_tls(uri: SipUri) -> bool:
    """RFC 3261 §26.2.2 and RFC 5630: ``sips:`` (or the deprecated
    ``;transport=tls``) is reached over TLS."""
    return uri.scheme == "sips" or uri.transport == "TLS"


def host_port(uri: object) -> tuple[str, int] | None:
    """The ``host:port`` a request for ``uri`` goes to (port 5060 by
    default, 5061 over TLS; ``maddr`` is ignored), ``None`` for any other
    URI."""
    if not isinstance(uri, SipUri):
        return None
    return uri.host, uri.port or (5061 if uses_tls(uri) else 5060)


def same_host_port(a: tuple[str, int] | None, b: tuple[str, int] | None) -> bool:
    return a is not None and b is not None and a[1] == b[1] and same_host(a[0], b[0])


def _ours(message: SipRequest | SipResponse, sdp: SessionDescription | None) -> SessionDescription:
    """Our SDP in ``message``: ``sdp`` when the caller built it, else its
    body parsed. Either is the caller's to hand over: the media layer builds
    a new description for each SDP it sends and never changes one after
    (``SipLegMedia.local_sdp`` is replaced, not edited), and a parse is a
    fresh copy; so the offer/answer state keeps a first answer without a
    copy (``owned``)."""
    return sdp if sdp is not None else parse_sdp(message.body)


def _hold(sdp: SessionDescription) -> bool | None:
    """Whether an offer puts the receiver on hold: its first audio stream
    is ``sendonly``/``inactive`` or at 0.0.0.0 (RFC 3264 §8.4)."""
    for media in sdp.media:
        if media.port == 0:
            continue
        direction = media_direction(media, sdp)
        conn = media.connection or sdp.connection
        if conn is not None and conn.address.split("/")[0] == "0.0.0.0":
            return True
        return direction in ("sendonly", "inactive")
    return None


_S = InviteSessionState


class InviteSession:
    """One INVITE session. Build it with :meth:`create_uas` or :meth:`create_uac`.

    :ivar dialog: the dialog, once a 2xx made one (sent or received).
    :ivar offer_answer: the SDP offer/answer state of the dialog.
    """

    # One per call for its whole life, with 32 attributes: past CPython's 30
    # shared keys an instance gets a dict of its own (1.6 KB, measured with
    # bench/memory.py); slots hold the same in 0.3 KB.
    __slots__ = ("role", "timers", "reliable", "state", "dialog", "offer_answer", "remote_hold",
                 "invite", "final_sent", "_pending_2xx", "_pending_bytes", "_pending_cseq", "_rt_next",
                 "_rt_interval",
                 "_rt_deadline", "out_invite", "ack", "cancel_wanted", "cancel_sent", "provisional_seen",
                 "closed", "_no_answer_at", "_no_answer_timeout", "_auth", "_auth_target", "_auth_tries",
                 "redirect_scope", "_redirects", "_cseq", "_headers", "_extra", "_offer", "_tail")

    def __init__(self, role: Role, timers: Timers, reliable: bool) -> None:
        self.role = role
        self.timers = timers
        self.reliable = reliable
        self.state = _S.NULL
        self.dialog: Dialog | None = None
        self.offer_answer = OfferAnswerState()
        #: the last remote offer's hold (RFC 3264 §8.4); ``None``: not known.
        self.remote_hold: bool | None = None
        # UAS
        self.invite: SipRequest | None = None
        self.final_sent = False
        # The 2xx waiting for its ACK, and its bytes once a retransmission
        # needed them (see _start_2xx).
        self._pending_2xx: SipResponse | None = None
        self._pending_bytes: bytes | None = None
        self._pending_cseq = 0
        self._rt_next: float | None = None
        self._rt_interval = 0.0
        self._rt_deadline = 0.0
        # UAC
        self.out_invite: SipRequest | None = None
        self.ack: SipRequest | None = None
        self.cancel_wanted = False
        self.cancel_sent = False
        self.provisional_seen = False
        self.closed = False
        self._no_answer_at: float | None = None
        self._no_answer_timeout = 0.0
        self._auth: ClientAuthSession | None = None
        self._auth_target: tuple[str, int] | None = None
        self._auth_tries = 0
        self.redirect_scope: tuple[str, int] | None = None
        self._redirects = 0
        self._cseq = 1
        self._headers: list[tuple[str, str]] = []
        self._extra: list[tuple[str, str]] = []
        self._offer = b""

    def __repr__(self) -> str:
        return f"<InviteSession {self.role.value} {self.state.value}>"

    # -- timers ------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline, or ``None``."""
        retransmit, no_answer = self._rt_next, self._no_answer_at
        if retransmit is None:
            return no_answer
        if no_answer is None:
            return retransmit
        return min(retransmit, no_answer)

    def handle_timer(self, now: float) -> list[Event]:
        """Run what is due at ``now``."""
        events: list[Event] = []
        if self._rt_next is not None and now >= self._rt_next - _EARLY:
            events += self._fire_2xx(now)
        if self._no_answer_at is not None and now >= self._no_answer_at - _EARLY:
            self._no_answer_at = None
            if self.dialog is None and not self.closed:
                self.cancel_wanted = True
                events += self._cancel_if_allowed()
                self.state = _S.DISCONNECTED
                events.append(NoAnswer(self._no_answer_timeout))
        return events

    # -- UAS ---------------------------------------------------------------------

    @classmethod
    def create_uas(cls, invite: SipRequest, timers: Timers, reliable: bool) -> InviteSession:
        """A session for a received INVITE (its 100 is the transaction's)."""
        session = cls(Role.UAS, timers, reliable)
        session.invite = invite
        session.state = _S.INCOMING
        if invite.body:
            session.remote_hold = session._receive_offer(invite.body)
        return session

    def send_provisional(self, response: SipResponse, sdp: SessionDescription | None = None) -> None:
        """Record a 101-199 we send (a 183 may carry our early answer).

        :param sdp: the parsed form of ``response.body`` when the caller
            built it (saves parsing our own SDP back)."""
        self._need(Role.UAS, _S.INCOMING, _S.EARLY)
        self.state = _S.EARLY
        if response.body and self.offer_answer.state is NegotiationState.REMOTE_OFFER:
            self._oa(lambda oa: oa.record_answer(_ours(response, sdp), owned=True))

    def send_answer(self, response: SipResponse, dialog_request: SipRequest, contact: str,
                    now: float, sdp: SessionDescription | None = None) -> Dialog:
        """Record our 2xx to the INVITE: the dialog starts, and the 2xx is
        retransmitted until the ACK (§13.3.1.4). Returns the dialog.

        :param sdp: the parsed form of ``response.body`` when the caller
            built it (saves parsing our own SDP back)."""
        self._need(Role.UAS, _S.INCOMING, _S.EARLY)
        assert self.invite is not None
        self.dialog = Dialog.create_uas(dialog_request, response.to.tag or "", contact)
        self.final_sent = True
        self.state = _S.CONNECTING
        self._sdp_in_2xx(response, sdp)
        self._start_2xx(response, self.invite.cseq.number, now)
        return self.dialog

    def send_final(self, response: SipResponse) -> None:
        """Record a 300-699 to the INVITE (reject, challenge, 480, 487)."""
        self._need(Role.UAS, _S.INCOMING, _S.EARLY)
        self.final_sent = True
        self.state = _S.DISCONNECTED
        if self.offer_answer.state is NegotiationState.REMOTE_OFFER:
            self._oa(lambda oa: oa.reject_offer())

    def receive_cancel(self) -> bool:
        """A CANCEL of the INVITE: ``True`` when the adapter must answer the
        INVITE with 487 (:meth:`send_final`) and end the call (§9.2)."""
        return self.role is Role.UAS and not self.final_sent and self.state in (_S.INCOMING, _S.EARLY)

    def receive_ack(self, request: SipRequest) -> list[Event]:
        """An ACK for a 2xx of ours: ends the retransmission. Others are ignored."""
        if self._pending_2xx is None or request.cseq.number != self._pending_cseq:
            return []
        self._stop_2xx()
        if request.body and self.offer_answer.state is NegotiationState.LOCAL_OFFER:
            self._oa(lambda oa: oa.receive_answer(parse_sdp(request.body)))
        first = self.state is _S.CONNECTING
        self.state = _S.CONFIRMED
        return [AckReceived(request, first)]

    @property
    def awaiting_ack(self) -> bool:
        """Whether a 2xx of ours waits for its ACK."""
        return self._pending_2xx is not None

    def receive_reinvite(self, request: SipRequest) -> list[Event]:
        """A re-INVITE in the dialog (§14.2)."""
        if self._pending_2xx is not None:
            return [ReInviteRefused(request.create_response(491))]
        hold: bool | None = None
        if request.body:
            hold = self._receive_offer(request.body)
            self.remote_hold = hold
        return [ReInviteReceived(request, hold)]

    def send_reinvite_answer(self, request: SipRequest, response: SipResponse, now: float,
                             sdp: SessionDescription | None = None) -> None:
        """Record our 2xx to a re-INVITE: retransmitted until its ACK."""
        self._sdp_in_2xx(response, sdp)
        self._start_2xx(response, request.cseq.number, now)

    def _sdp_in_2xx(self, response: SipResponse, sdp: SessionDescription | None) -> None:
        if not response.body:
            return
        if self.offer_answer.state is NegotiationState.REMOTE_OFFER:
            self._oa(lambda oa: oa.record_answer(_ours(response, sdp), owned=True))
        else:  # offer in our 2xx, answer in the ACK (RFC 3264 §3)
            self._oa(lambda oa: oa.send_offer(_ours(response, sdp)))

    def _start_2xx(self, response: SipResponse, cseq: int, now: float) -> None:
        t1, t2 = self.timers.t1, self.timers.t2
        # Serialized only if it must be sent again: the transaction writes
        # it once already, and nearly every 2xx is ACKed within T1. A 2xx
        # is not changed once sent (the INVITE server transaction resends
        # it from the bytes of its first sending too), so the bytes written
        # later are those the transaction sent.
        self._pending_2xx = response
        self._pending_bytes = None
        self._pending_cseq = cseq
        self._rt_deadline = now + 64 * t1
        if self.reliable:  # a reliable transport needs no retransmission, only the timeout
            self._rt_next, self._rt_interval = self._rt_deadline, 0.0
        else:
            self._rt_next, self._rt_interval = now + t1, min(2 * t1, t2)

    def _stop_2xx(self) -> None:
        self._pending_2xx = None
        self._pending_bytes = None
        self._rt_next = None

    def _fire_2xx(self, now: float) -> list[Event]:
        response = self._pending_2xx
        if response is None:
            self._rt_next = None
            return []
        if now >= self._rt_deadline - _EARLY:
            self._stop_2xx()
            logger.info("no ACK for our 2xx within 64*T1")
            return [AckTimedOut(self.end_session('SIP;cause=408;text="ACK Timeout"'))]
        # Never past the deadline: give up at 64*T1, not at the next T2 step.
        interval = self._rt_interval
        self._rt_next = now + min(interval, self._rt_deadline - now)
        self._rt_interval = min(2 * interval, self.timers.t2)
        data = self._pending_bytes
        if data is None:
            data = self._pending_bytes = response.to_bytes()
        return [Retransmit2xx(data)]

    # -- UAC ---------------------------------------------------------------------

    @classmethod
    def create_uac(
        cls,
        timers: Timers,
        reliable: bool,
        *,
        from_: NameAddr,
        to: NameAddr,
        call_id: str,
        headers: Sequence[tuple[str, str]],
        extra: Sequence[tuple[str, str]],
        offer: bytes,
        auth: ClientAuthSession | None = None,
        auth_target: tuple[str, int] | None = None,
        redirect_scope: tuple[str, int] | None = None,
    ) -> InviteSession:
        """A session for an INVITE we send.

        :param headers: headers after From/To/Call-ID/CSeq (Contact,
            User-Agent, Allow), then the credentials, then ``extra`` (the
            caller's custom headers), then the SDP ``offer``.
        :param auth: credentials for 401/407, sent only to ``auth_target``.
        :param redirect_scope: follow a 3xx only to this host:port.
        """
        session = cls(Role.UAC, timers, reliable)
        session._headers = [("Max-Forwards", "70"), ("From", str(from_)), ("To", str(to)),
                            ("Call-ID", call_id)]
        session._tail = list(headers)
        session._extra = list(extra)
        session._offer = offer
        session._auth = auth
        session._auth_target = auth_target
        session.redirect_scope = redirect_scope
        return session

    _tail: list[tuple[str, str]]

    def start(self, uri: SipUri | TelUri, now: float, no_answer: float) -> list[Event]:
        """Send the INVITE; give up after ``no_answer`` seconds without a 2xx."""
        self._need(Role.UAC, _S.NULL)
        self._no_answer_at = now + no_answer
        self._no_answer_timeout = no_answer
        return [self._invite(uri)]

    def _invite(self, uri: SipUri | TelUri, authorization: tuple[str, str] | None = None) -> InviteReady:
        req = SipRequest("INVITE", uri)
        h = req.headers
        for name, value in self._headers:
            h.add(name, value)
        h.add("CSeq", f"{self._cseq} INVITE")
        for name, value in self._tail:
            h.add(name, value)
        if authorization:
            h.add(*authorization)
        for name, value in self._extra:
            h.add(name, value)
        h.add("Content-Type", "application/sdp")
        req.body = self._offer
        self.out_invite = req
        self.provisional_seen = False  # a CANCEL waits for this INVITE's 1xx
        self.state = _S.CALLING
        if self._offer and self.offer_answer.state in (NegotiationState.IDLE, NegotiationState.DONE):
            self._oa(lambda oa: oa.send_offer(parse_sdp(self._offer)))
        return InviteReady(req)

    def follow(self, target: SipUri | TelUri) -> list[Event]:
        """Send the INVITE to where a :class:`Redirected` led."""
        if self.closed or self.cancel_wanted:
            return []
        return [self._invite(target)]

    def cancel(self) -> list[Event]:
        """Give the call up: CANCEL now, or once a provisional response comes (§9.1)."""
        self.cancel_wanted = True
        self._no_answer_at = None
        return self._cancel_if_allowed()

    def _cancel_if_allowed(self) -> list[Event]:
        if self.out_invite is None or not self.provisional_seen or self.cancel_sent:
            return []  # RFC 3261 §9.1: wait for a provisional response; once
        self.cancel_sent = True
        return [CancelReady(create_cancel(self.out_invite))]

    def receive_response(self, resp: SipResponse | None) -> list[Event]:
        """A response to our INVITE (``None``: the transaction timed out or
        the transport failed)."""
        if resp is None:
            self.state = _S.DISCONNECTED
            return [CallFailed(408, "Request Timeout", None)]
        code = resp.status
        if code < 200:
            # RFC 3261 §9.1: any provisional response, 100 included, allows
            # the CANCEL that a hangup before it had to hold back.
            self.provisional_seen = True
            if self.cancel_wanted:
                return self._cancel_if_allowed()
            if code == 100:
                return []
            if self.state is _S.CALLING:
                self.state = _S.EARLY
            if resp.body and self.offer_answer.state is NegotiationState.LOCAL_OFFER:
                self._oa(lambda oa: oa.receive_answer(parse_sdp(resp.body)))
            return [ProvisionalReceived(resp)]
        if code < 300:
            return self._on_2xx(resp)
        if self.offer_answer.state is NegotiationState.LOCAL_OFFER:
            self._oa(lambda oa: oa.reject_offer())
        events: list[Event] = []
        if code in (401, 407) and self._auth is not None and self._auth_tries < 2 and not self.cancel_wanted:
            retry = self._retry_with_auth(resp)
            if isinstance(retry, InviteReady):
                return [retry]
            events += retry
        if 300 <= code < 400 and self._redirects < 3 and not self.cancel_wanted:
            contacts = resp.contact
            if contacts and isinstance(contacts[0].uri, (SipUri, TelUri)):
                target = contacts[0].uri
                if self.redirect_scope is not None and not same_host_port(host_port(target), self.redirect_scope):
                    # A trunk call stays a call to the trunk: a 3xx must not
                    # turn it into a call to a host the response chose.
                    self.state = _S.DISCONNECTED
                    host = target.host if isinstance(target, SipUri) else "tel:"
                    return events + [RedirectRefused(code, host), CallFailed(code, resp.reason, resp)]
                self._redirects += 1
                self._cseq += 1
                return events + [Redirected(code, target)]
        self.state = _S.DISCONNECTED
        if self.cancel_wanted and code == 487:
            return events + [CallCancelled()]
        return events + [CallFailed(code, resp.reason, resp)]

    def _retry_with_auth(self, resp: SipResponse) -> InviteReady | list[Event]:
        """Answer a 401/407 with the credentials, unless the INVITE went
        elsewhere than where they belong (a 3xx moved it): a redirect must
        never hand the trunk's password, even hashed, to another host."""
        assert self._auth is not None and self.out_invite is not None
        uri = self.out_invite.uri
        if not same_host_port(host_port(uri), self._auth_target):
            return [CredentialsWithheld(resp.status)]
        name = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
        reply = "Authorization" if resp.status == 401 else "Proxy-Authorization"
        try:
            challenge = self._auth.on_challenge(resp.headers.get_all(name))
            creds = self._auth.authorize(challenge.realm, method="INVITE", uri=self.out_invite.uri_text,
                                         body=self._offer)
        except RemoteProtocolError as exc:
            logger.warning("cannot answer the challenge: %s", exc)
            return []
        self._auth_tries += 1
        self._cseq += 1
        assert isinstance(uri, (SipUri, TelUri))
        return self._invite(uri, (reply, creds.to_header()))

    def _on_2xx(self, resp: SipResponse) -> list[Event]:
        assert self.out_invite is not None
        if self.dialog is not None:
            if resp.to.tag != self.dialog.remote_tag:
                # A second fork answered: acknowledge and end it (RFC 3261 §13.2.2.4).
                extra = Dialog.create_uac(self.out_invite, resp)
                return [Answered(resp, extra.create_ack(resp.cseq.number), extra.create_request("BYE"),
                                 False, False)]
            assert self.ack is not None
            return [Answered(resp, self.ack, None, False, False)]
        self.dialog = Dialog.create_uac(self.out_invite, resp)
        self.ack = self.dialog.create_ack(resp.cseq.number)
        self._no_answer_at = None
        if self.closed or self.cancel_wanted:
            self.state = _S.DISCONNECTED
            return [Answered(resp, self.ack, self.dialog.create_request("BYE"), True, True)]
        self.state = _S.CONFIRMED
        if resp.body and self.offer_answer.state is NegotiationState.LOCAL_OFFER:
            self._oa(lambda oa: oa.receive_answer(parse_sdp(resp.body)))
        return [Answered(resp, self.ack, None, True, False)]

    def receive_stray_2xx(self, resp: SipResponse) -> list[Event]:
        """A 2xx retransmission after the INVITE transaction ended: ACK it again."""
        if self.ack is None:
            return []
        return [Answered(resp, self.ack, None, False, False)]

    # -- both ----------------------------------------------------------------------

    def end_session(self, reason: str | None = None) -> SipRequest | None:
        """End a session that has a dialog: the BYE to send (with a ``Reason``
        header when given), ``None`` without a dialog. Stops the 2xx
        retransmission."""
        self._stop_2xx()
        self.state = _S.DISCONNECTED
        if self.dialog is None:
            return None
        bye = self.dialog.create_request("BYE")
        if reason is not None:
            bye.headers.add("Reason", reason)
        return bye

    def receive_bye(self) -> None:
        """The peer ended the session (the dialog checked the BYE)."""
        self._stop_2xx()
        self.state = _S.DISCONNECTED

    def close(self) -> None:
        """The call is over: no more timers; a late 2xx gets ACK and BYE."""
        self.closed = True
        self._stop_2xx()
        self._no_answer_at = None

    # -- internals -----------------------------------------------------------------

    def _need(self, role: Role, *states: InviteSessionState) -> None:
        if self.role is not role or self.state not in states:
            raise LocalProtocolError(f"not allowed for a {self.role.value} session in {self.state.value}")

    def _receive_offer(self, body: bytes) -> bool | None:
        """Record the peer's offer (parsed once) and say whether it puts us
        on hold; ``None`` when it does not parse (the media layer answers)."""
        try:
            sdp = parse_sdp(body)
        except RemoteProtocolError as exc:
            logger.debug("offer/answer step refused: %s", exc)
            return None
        self._oa(lambda oa: oa.receive_offer(sdp, owned=True))  # parsed here, only read after
        return _hold(sdp)

    def _oa(self, step: Callable[[OfferAnswerState], object]) -> None:
        """Apply one offer/answer step. An SDP the machine refuses (it does
        not parse, or comes at the wrong time) is the media layer's to
        answer; the state stays as it was."""
        try:
            step(self.offer_answer)
        except (LocalProtocolError, RemoteProtocolError) as exc:
            logger.debug("offer/answer step refused: %s", exc)
