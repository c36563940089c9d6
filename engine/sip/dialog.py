"""SIP dialogs (RFC 3261 §12).

Theory of operation
-------------------

A dialog is the peer-to-peer relationship an INVITE (or SUBSCRIBE, REFER)
sets up: Call-ID, local and remote tags (the dialog id), local and remote
CSeq numbers, local and remote URIs, the remote target (the peer's Contact)
and the route set (the Record-Route of the dialog-creating transaction).

A :class:`Dialog` is created by the UAS from the request
(:meth:`Dialog.create_uas`, §12.1.1) or by the UAC from a 1xx-with-tag or
2xx response (:meth:`Dialog.create_uac`, §12.1.2). It then builds requests
within the dialog (:meth:`Dialog.create_request`, §12.2.1.1, loose and strict
routing; :meth:`Dialog.create_ack` for a 2xx, §13.2.2.4) and checks and
learns from what arrives (:meth:`Dialog.receive_request`, §12.2.2;
:meth:`Dialog.receive_response`, §12.2.1.2; :meth:`Dialog.send_response`).

The dialog is sans-IO and transaction-agnostic: it never adds a Via (the
transport does), never sends anything, and the TU looks it up by
:func:`dialog_id_of`. It does not know about offer/answer or media.

State changes come from one table (``_TRANSITIONS``)::

                 1xx with To tag (UAC) / create_uas(early=True)
                            |
                            v
                       +---------+  RECV_2XX / SEND_2XX to the INVITE
                       |  EARLY  |-------------------------------+
                       +---------+                               |
    RECV_300_699 / SEND_300_699 |  BYE, 408, 481                 v
    to the INVITE; BYE; 408/481 |                          +-----------+
                                |   +----------------------| CONFIRMED |<- 2xx (UAC),
                                v   v   BYE sent or         +-----------+   create_uas()
                          +------------+ received; 408 or
                          | TERMINATED | 481 to any request (§12.2.1.2)
                          +------------+

Inputs not in the table leave the state unchanged (a 2xx to UPDATE in an
early dialog, a 486 to a re-INVITE in a confirmed one).
"""

from __future__ import annotations

from enum import Enum
from typing import Iterable, Mapping

from engine import entropy
from engine.sip.errors import LocalProtocolError, RemoteProtocolError
from engine.sip.headers import CSeq, NameAddr, canonical_name, parse_cseq
from engine.sip.message import Headers, SipMessage, SipRequest, SipResponse
from engine.sip.uri import SipUri, Uri

__all__ = [
    "DialogState",
    "DialogInput",
    "Dialog",
    "TARGET_REFRESH_METHODS",
    "dialog_id_of",
    "request_destination",
]

#: Methods whose Contact replaces the remote target (RFC 3261 §12.2,
#: re-INVITE; RFC 3311 §5.1, UPDATE; RFC 6665 §4.1.2.1 / §4.2.1, SUBSCRIBE
#: and NOTIFY).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY"})
#: Methods that carry our Contact (target refresh, and REFER: RFC 3515 §2).
_CONTACT_METHODS = TARGET_REFRESH_METHODS | {"REFER"}


class DialogState(Enum):
    """The dialog states (RFC 3261 §12; pjsip's EARLY/CONFIRMED names)."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogInput(Enum):
    """What moves a dialog: final responses to the INVITE that created it,
    BYE either way, and 408/481 to any request in the dialog."""

    RECV_2XX = "recv_2xx"
    RECV_300_699 = "recv_300_699"
    SEND_2XX = "send_2xx"
    SEND_300_699 = "send_300_699"
    SEND_BYE = "send_bye"
    RECV_BYE = "recv_bye"
    RECV_408_481 = "recv_408_481"


_D = DialogState
_DI = DialogInput
_TRANSITIONS: dict[tuple[DialogState, DialogInput], DialogState] = {
    # §13.2.2.4 / §13.3.1.4: a 2xx to the INVITE confirms the early dialog.
    (_D.EARLY, _DI.RECV_2XX): _D.CONFIRMED,
    (_D.EARLY, _DI.SEND_2XX): _D.CONFIRMED,
    # §12.3: a non-2xx final response to the INVITE ends its early dialogs.
    (_D.EARLY, _DI.RECV_300_699): _D.TERMINATED,
    (_D.EARLY, _DI.SEND_300_699): _D.TERMINATED,
    # §15: BYE ends the dialog, from the moment it is sent or received.
    (_D.EARLY, _DI.SEND_BYE): _D.TERMINATED,
    (_D.EARLY, _DI.RECV_BYE): _D.TERMINATED,
    (_D.CONFIRMED, _DI.SEND_BYE): _D.TERMINATED,
    (_D.CONFIRMED, _DI.RECV_BYE): _D.TERMINATED,
    # §12.2.1.2: a 481 or 408 to a request in the dialog ends it.
    (_D.EARLY, _DI.RECV_408_481): _D.TERMINATED,
    (_D.CONFIRMED, _DI.RECV_408_481): _D.TERMINATED,
}


def _sip_uri(uri: Uri, what: str) -> SipUri:
    if not isinstance(uri, SipUri):
        raise RemoteProtocolError(f"{what} is not a SIP URI")
    return uri


def _without_tag(addr: NameAddr) -> NameAddr:
    params = {k: v for k, v in addr.params.items() if k != "tag"}
    return NameAddr(addr.uri, addr.display_name, params)


def _with_tag(addr: NameAddr, tag: str) -> str:
    params = {k: v for k, v in addr.params.items() if k != "tag"}
    if tag:
        params["tag"] = tag
    return str(NameAddr(addr.uri, addr.display_name, params))


class Dialog:
    """One dialog, seen from our side (RFC 3261 §12).

    :param local_seq: the CSeq number of the last request we sent; the next
        request uses ``local_seq + 1``.
    :param remote_seq: the CSeq number of the last request the peer sent,
        ``None`` while empty (UAC side before any request from the peer).
    :param local_uri: our From (UAC) or To (UAS) address, without tag.
    :param remote_uri: the peer's address, without tag.
    :param remote_target: where requests go (the peer's Contact URI).
    :param route_set: Route values, in the order they go in requests.
    :param local_contact: our Contact header value (``<sip:...>``), put in
        target-refresh requests.
    :param secure: the ``sips`` flag (§12.1.1: the Request-URI was SIPS).
    """

    __slots__ = (
        "call_id",
        "local_tag",
        "_remote_tag",
        "local_seq",
        "remote_seq",
        "_local_uri",
        "_remote_uri",
        "_remote_target",
        "_route_set",
        "local_contact",
        "secure",
        "state",
        "_local_text",
        "_remote_text",
        "_route_texts",
        "_plan",
    )

    def __init__(
        self,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_seq: int,
        remote_seq: int | None,
        local_uri: NameAddr,
        remote_uri: NameAddr,
        remote_target: SipUri,
        route_set: list[NameAddr],
        local_contact: str,
        secure: bool = False,
        state: DialogState = DialogState.CONFIRMED,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self._remote_tag = remote_tag
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        # Kept as given (a tag included: create_uas hands its request's
        # own To and From), stripped when first read.
        self._local_uri = local_uri
        self._remote_uri = remote_uri
        self._remote_target = remote_target
        self._route_set = route_set
        self.local_contact = local_contact
        self.secure = secure
        self.state = state
        # Header texts, cached so that building a request formats nothing.
        self._local_text: str | None = None
        self._remote_text: str | None = None
        self._route_texts: list[str] | None = None
        self._plan: tuple[SipUri, list[str]] | None = None

    def __repr__(self) -> str:
        return f"<Dialog {self.call_id} {self.local_tag}/{self.remote_tag} {self.state.name}>"

    # ------------------------------------------------------------ fields

    @property
    def id(self) -> tuple[str, str, str]:
        """``(call_id, local_tag, remote_tag)`` (§12)."""
        return (self.call_id, self.local_tag, self._remote_tag)

    @property
    def remote_tag(self) -> str:
        """The peer's tag (empty for an RFC 2543 peer that sent none)."""
        return self._remote_tag

    @remote_tag.setter
    def remote_tag(self, value: str) -> None:
        self._remote_tag = value
        self._remote_text = None

    @property
    def local_uri(self) -> NameAddr:
        """Our From (UAC) or To (UAS) address, without tag."""
        addr = self._local_uri
        if "tag" in addr.params:
            addr = self._local_uri = _without_tag(addr)
        return addr

    @local_uri.setter
    def local_uri(self, value: NameAddr) -> None:
        self._local_uri = value
        self._local_text = None

    @property
    def remote_uri(self) -> NameAddr:
        """The peer's address, without tag."""
        addr = self._remote_uri
        if "tag" in addr.params:
            addr = self._remote_uri = _without_tag(addr)
        return addr

    @remote_uri.setter
    def remote_uri(self, value: NameAddr) -> None:
        self._remote_uri = value
        self._remote_text = None

    @property
    def remote_target(self) -> SipUri:
        """The peer's Contact URI: the Request-URI under loose routing."""
        return self._remote_target

    @remote_target.setter
    def remote_target(self, value: SipUri) -> None:
        self._remote_target = value
        self._plan = None

    @property
    def route_set(self) -> list[NameAddr]:
        """The route set; assign a new list to change it."""
        return self._route_set

    @route_set.setter
    def route_set(self, value: list[NameAddr]) -> None:
        self._route_set = value
        self._route_texts = None
        self._plan = None

    # ------------------------------------------------------------ creation

    @classmethod
    def create_uas(
        cls,
        request: SipRequest,
        local_tag: str,
        local_contact: str,
        *,
        early: bool = False,
        local_seq: int | None = None,
    ) -> Dialog:
        """The UAS side of a new dialog (RFC 3261 §12.1.1).

        Route set = the request's Record-Route in order; remote target = its
        Contact; remote sequence = its CSeq number; remote tag = its From tag.

        :param local_tag: the To tag of our responses.
        :param early: create in EARLY (a 1xx is being sent), else CONFIRMED;
            :meth:`send_response` moves it on.
        :param local_seq: our initial sequence number; random below 2**30
            when ``None`` (§12.1.1 leaves it to us, §8.1.1.5 wants < 2**31).
        :raises RemoteProtocolError: (400) no Contact, or a Contact or
            Record-Route that is not a SIP URI.
        """
        contacts = request.contact
        if not contacts:
            raise RemoteProtocolError("missing Contact header")
        target = _sip_uri(contacts[0].uri, "Contact")
        route_texts = request.headers.get_all("Record-Route")
        # Most calls come without Record-Route: no second search for none.
        routes = request.name_addrs("Record-Route") if route_texts else []
        for route in routes:
            _sip_uri(route.uri, "Record-Route")
        to = request.to
        from_ = request.from_
        dialog = cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag or "",
            local_seq=local_seq if local_seq is not None else entropy.randbelow(2**30),
            remote_seq=request.cseq.number,
            local_uri=to,  # its tag is dropped when read (local_uri)
            remote_uri=from_,
            remote_target=target,
            route_set=routes,
            local_contact=local_contact,
            secure=request.uri.scheme == "sips",
            state=DialogState.EARLY if early else DialogState.CONFIRMED,
        )
        to_text = request.headers.get("To") or ""
        dialog._local_text = to_text if to.tag else f"{to_text};tag={local_tag}"
        dialog._remote_text = request.headers.get("From")
        dialog._route_texts = route_texts
        return dialog

    @classmethod
    def create_uac(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """The UAC side of a new dialog (RFC 3261 §12.1.2).

        Route set = the response's Record-Route reversed; remote target = its
        Contact (the Request-URI when the response has none, which a strict
        peer would refuse: leniency for 18x without Contact); local sequence
        = the request's CSeq number; remote sequence empty. EARLY for a 1xx
        with a To tag, CONFIRMED for a 2xx.

        :raises LocalProtocolError: for a 100, a 1xx without To tag, a
            300-699 response, or a request without From tag.
        :raises RemoteProtocolError: a Contact or Record-Route that is not a
            SIP URI.
        """
        status = response.status
        to_tag = response.to.tag
        if status == 100 or status >= 300:
            raise LocalProtocolError(f"a {status} response does not create a dialog")
        if status < 200 and not to_tag:
            raise LocalProtocolError("a provisional response without To tag creates no dialog")
        local_tag = request.from_.tag
        if not local_tag:
            raise LocalProtocolError("the request has no From tag")
        contacts = response.contact
        target = (
            _sip_uri(contacts[0].uri, "Contact")
            if contacts
            else _sip_uri(request.uri, "Request-URI")
        )
        routes = response.name_addrs("Record-Route")
        for route in routes:
            _sip_uri(route.uri, "Record-Route")
        routes.reverse()
        dialog = cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=to_tag or "",
            local_seq=request.cseq.number,
            remote_seq=None,
            local_uri=_without_tag(request.from_),
            remote_uri=_without_tag(response.to),
            remote_target=target,
            route_set=routes,
            local_contact=request.headers.get("Contact") or "",
            secure=request.uri.scheme == "sips",
            state=DialogState.EARLY if status < 200 else DialogState.CONFIRMED,
        )
        dialog._local_text = request.headers.get("From")
        dialog._remote_text = response.headers.get("To")
        dialog._route_texts = response.headers.get_all("Record-Route")[::-1]
        return dialog

    # ------------------------------------------------------------ requests

    def create_request(
        self,
        method: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> SipRequest:
        """Build a request within the dialog (RFC 3261 §12.2.1.1).

        Increments ``local_seq``; From has our tag, To the peer's; Contact
        for target-refresh methods (and REFER); Max-Forwards 70; Request-URI
        and Route by loose or strict routing. No Via: the transport adds it.
        Sending BYE terminates the dialog (§15.1.1); the dialog can still
        build requests, so that a challenged BYE can be re-sent.

        :param headers: extra headers, added after the standard ones.
        :raises LocalProtocolError: for ACK (use :meth:`create_ack`) and
            CANCEL (use :func:`engine.sip.transaction.create_cancel`).
        """
        if method == "ACK" or method == "CANCEL":
            raise LocalProtocolError(f"{method} is not built with create_request")
        self.local_seq += 1
        request = self._build(method, self.local_seq, headers, body, content_type)
        if method == "BYE":
            self._apply(DialogInput.SEND_BYE)
        return request

    def create_ack(
        self,
        invite_cseq: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> SipRequest:
        """Build the ACK for a 2xx to an INVITE (RFC 3261 §13.2.2.4).

        Built like any request in the dialog, with the INVITE's CSeq number
        and method ACK; ``local_seq`` does not move. Pass the INVITE's
        credentials (Authorization...) in ``headers``.
        """
        return self._build("ACK", invite_cseq, headers, body, content_type)

    def request_destination(self, request: SipRequest) -> SipUri:
        """Where to send a request this dialog built (RFC 3261 §8.1.2).

        Under strict routing the Request-URI (the strict router); otherwise
        the first Route URI, or the Request-URI when there is no Route. The
        transport resolves it (RFC 3263).
        """
        routes = self._route_set
        if routes and "lr" not in _sip_uri(routes[0].uri, "route").params:
            return _sip_uri(request.uri, "Request-URI")
        return request_destination(request)

    def _routing_plan(self) -> tuple[SipUri, list[str]]:
        """The Request-URI and Route values for requests (§12.2.1.1)."""
        plan = self._plan
        if plan is not None:
            return plan
        routes = self._route_set
        texts = self._route_texts
        if texts is None:
            texts = self._route_texts = [str(route) for route in routes]
        if not routes:
            plan = (self._remote_target, [])
        else:
            first = _sip_uri(routes[0].uri, "route")
            if "lr" in first.params:
                # Loose routing: R-URI = remote target, Route = route set.
                plan = (self._remote_target, list(texts))
            else:
                # Strict routing: R-URI = first route (without parameters a
                # Request-URI may not carry, §19.1.1), Route = the rest plus
                # the remote target.
                uri = first.copy(
                    params={k: v for k, v in first.params.items() if k != "method"},
                    headers={},
                )
                plan = (uri, texts[1:] + [f"<{self._remote_target}>"])
        self._plan = plan
        return plan

    def _build(
        self,
        method: str,
        cseq: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
        body: bytes,
        content_type: str | None,
    ) -> SipRequest:
        uri, routes = self._routing_plan()
        if self._local_text is None:
            self._local_text = _with_tag(self.local_uri, self.local_tag)
        if self._remote_text is None:
            self._remote_text = _with_tag(self.remote_uri, self._remote_tag)
        cseq_text = f"{cseq} {method}"
        # Every name below is canonical already (the extra ones are made
        # so): the headers adopt the list as it is.
        items = [("Route", route) for route in routes]
        items += [
            ("Max-Forwards", "70"),
            ("From", self._local_text),
            ("To", self._remote_text),
            ("Call-ID", self.call_id),
            ("CSeq", cseq_text),
        ]
        if method in _CONTACT_METHODS and self.local_contact:
            items.append(("Contact", self.local_contact))
        if headers is not None:
            pairs = headers.items() if isinstance(headers, Mapping) else headers
            items += [(canonical_name(name), value) for name, value in pairs]
        if content_type is not None:
            items.append(("Content-Type", content_type))
        request = SipRequest(method, uri, Headers._from_canonical(items), body)
        # The transaction layer keys the request by its CSeq at once: no
        # parsing back what was just written.
        request.remember(parse_cseq, cseq_text, CSeq(cseq, method))
        return request

    # ------------------------------------------------------------ input

    def receive_request(self, request: SipRequest) -> None:
        """Check and learn from a request within the dialog (RFC 3261 §12.2.2).

        :raises RemoteProtocolError: 500 when the CSeq number is not above
            the remote sequence number (ACK and CANCEL are exempt, they
            reuse their INVITE's); 481 when the dialog is terminated.
        """
        method = request.method
        if method == "ACK" or method == "CANCEL":
            return
        if self.state is DialogState.TERMINATED:
            raise RemoteProtocolError("Call/Transaction Does Not Exist", 481)
        number = request.cseq.number
        if self.remote_seq is not None and number <= self.remote_seq:
            raise RemoteProtocolError("CSeq out of order", 500)
        self.remote_seq = number
        if method in TARGET_REFRESH_METHODS:
            # §12.2.2: a target refresh replaces the remote target.
            contacts = request.contact
            if contacts:
                self.remote_target = _sip_uri(contacts[0].uri, "Contact")
        if method == "BYE":
            self._apply(DialogInput.RECV_BYE)

    def receive_response(self, response: SipResponse) -> None:
        """Learn from a response to a request we sent in the dialog.

        An early dialog gets the remote tag if it had none and moves to
        CONFIRMED on a 2xx to the INVITE, recomputing the route set from
        that 2xx (§13.2.2.4), or to TERMINATED on a 300-699 to it. A 2xx to
        a target refresh replaces the remote target (§12.2.1.2). 408 and 481
        terminate the dialog (§12.2.1.2). Ignored once terminated.
        """
        if self.state is DialogState.TERMINATED:
            return
        status = response.status
        method = response.cseq.method
        if not self._remote_tag:
            tag = response.to.tag
            if tag:
                self.remote_tag = tag
                self._remote_text = response.headers.get("To")
        if status == 408 or status == 481:
            self._apply(DialogInput.RECV_408_481)
            return
        if method == "INVITE" and status >= 200:
            if self.state is DialogState.EARLY and status < 300:
                routes = response.name_addrs("Record-Route")
                for route in routes:
                    _sip_uri(route.uri, "Record-Route")
                routes.reverse()
                self.route_set = routes
                self._route_texts = response.headers.get_all("Record-Route")[::-1]
            self._apply(
                DialogInput.RECV_2XX if status < 300 else DialogInput.RECV_300_699
            )
        if 200 <= status < 300 and method in TARGET_REFRESH_METHODS:
            contacts = response.contact
            if contacts:
                self.remote_target = _sip_uri(contacts[0].uri, "Contact")

    def send_response(self, response: SipResponse) -> None:
        """Note a response we (as UAS) send in the dialog: a final response
        to the INVITE moves an early dialog to CONFIRMED or TERMINATED."""
        if response.cseq.method == "INVITE" and response.status >= 200:
            self._apply(
                DialogInput.SEND_2XX if response.status < 300 else DialogInput.SEND_300_699
            )

    def _apply(self, event: DialogInput) -> None:
        self.state = _TRANSITIONS.get((self.state, event), self.state)


def dialog_id_of(msg: SipMessage, is_uas_side: bool | None = None) -> tuple[str, str, str]:
    """The id of the dialog a message belongs to, from our side (§12).

    :param is_uas_side: whether we are the UAS of the message's transaction:
        for a request we received (or a response we send) the local tag is
        the To tag; for a response we received (or a request we send) it is
        the From tag. Defaults to ``True`` for requests, ``False`` for
        responses, which fits incoming messages.
    :returns: ``(call_id, local_tag, remote_tag)``, a missing tag as ``""``.
    """
    if is_uas_side is None:
        is_uas_side = isinstance(msg, SipRequest)
    to_tag = msg.to.tag or ""
    from_tag = msg.from_.tag or ""
    if is_uas_side:
        return (msg.call_id, to_tag, from_tag)
    return (msg.call_id, from_tag, to_tag)


def request_destination(request: SipRequest) -> SipUri:
    """Where to send a request under loose routing (RFC 3261 §8.1.2): the
    first Route URI if any, else the Request-URI.

    For a request a :class:`Dialog` built, prefer
    :meth:`Dialog.request_destination`, which also handles strict routing.

    :raises LocalProtocolError: when that URI is not a SIP URI.
    """
    routes = request.name_addrs("Route")
    uri = routes[0].uri if routes else request.uri
    if not isinstance(uri, SipUri):
        raise LocalProtocolError(f"cannot send to {uri}: not a SIP URI")
    return uri
