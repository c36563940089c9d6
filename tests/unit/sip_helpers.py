"""Shared fixtures for the transaction and dialog tests.

Messages are built as text and parsed, so every fixture is a message the
parser accepts. :class:`LayerPair` joins two transaction layers in memory
with a loss pattern (h11's ``ConnectionPair``, aiortc's ``set_loss_pattern``)
and runs them on virtual time.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from engine.sip.dialog import Dialog
from engine.sip.invite_session import (
    AckTimedOut, Answered, CancelReady, InviteReady, InviteSession, Redirected, ReInviteRefused,
    Retransmit2xx,
)
from engine.sip.invite_session import Event as SessionEvent
from engine.sip.message import SipRequest, SipResponse, new_branch, new_tag
from engine.sip.parser import parse_message
from engine.sip.transaction import (
    CancelReceived, Event, InviteServerTransaction, NonInviteServerTransaction, RequestReceived,
    ResponseReceived, StrayResponse, Timers, TransactionLayer, TransactionState, TransactionTimedOut,
)

CLIENT_ADDR = ("192.0.2.1", 5060)
SERVER_ADDR = ("192.0.2.2", 5060)


def make_request(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bKabc123",
    uri: str = "sip:bob@biloxi.example.com",
    via_host: str = "pc33.atlanta.example.com",
    via_port: int | None = 5060,
    call_id: str = "a84b4c76e66710",
    from_tag: str | None = "1928301774",
    to_tag: str | None = None,
    cseq: int = 314159,
    cseq_method: str | None = None,
    contact: str | None = "<sip:alice@pc33.atlanta.example.com>",
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipRequest:
    """An RFC 3261 §24.2-style request, parsed from text."""
    port = f":{via_port}" if via_port is not None else ""
    via = f"SIP/2.0/UDP {via_host}{port}"
    if branch is not None:
        via += f";branch={branch}"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        "Max-Forwards: 70",
        "To: Bob <sip:bob@biloxi.example.com>" + (f";tag={to_tag}" if to_tag else ""),
        "From: Alice <sip:alice@atlanta.example.com>"
        + (f";tag={from_tag}" if from_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += [f"{name}: {value}" for name, value in extra]
    lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    msg = parse_message(data)
    assert isinstance(msg, SipRequest)
    return msg


def make_response(
    request: SipRequest,
    status: int,
    *,
    to_tag: str | None = "a6c85cf",
    contact: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> SipResponse:
    """A response to ``request`` (§8.2.6), round-tripped through the parser."""
    response = request.create_response(status, to_tag=to_tag)
    if contact is not None:
        response.headers.add("Contact", contact)
    for name, value in extra:
        response.headers.add(name, value)
    parsed = parse_message(response.to_bytes())
    assert isinstance(parsed, SipResponse)
    return parsed


def parse(data: bytes) -> SipRequest | SipResponse:
    return parse_message(data)


def add_via(request: SipRequest, host: str = "client.example.com") -> SipRequest:
    """What the transport does before a request goes out: a top Via."""
    request.headers.prepend("Via", f"SIP/2.0/UDP {host}:5060;branch={new_branch()}")
    return request


class Agent(Protocol):
    """A TU in the pair harness: it may have timers of its own."""

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def on_event(self, event: Event, now: float) -> None: ...


class LayerPair:
    """Two transaction layers joined in memory, with a loss pattern.

    Every message either way gets a number (1, 2, ...); ``loss(n)`` says
    whether message ``n`` is dropped. Messages are serialized and parsed on
    the way, like on a real wire.
    """

    def __init__(
        self,
        timers: Timers = Timers(),
        loss: Callable[[int], bool] = lambda n: False,
        reliable: bool = False,
        drop: Callable[[str], bool] = lambda line: False,
    ) -> None:
        self.client = TransactionLayer(timers)
        #: ``drop(first line)``: also drop every message whose first line matches.
        self.drop = drop
        self.server = TransactionLayer(timers)
        self.loss = loss
        self.reliable = reliable
        self.now = 0.0
        self.count = 0
        #: ``(number, direction, first line, dropped)`` for every message.
        self.trace: list[tuple[int, str, str, bool]] = []
        self.client_agent: Agent | None = None
        self.server_agent: Agent | None = None

    def _carry(self, src: TransactionLayer, dst: TransactionLayer, direction: str) -> list[Event]:
        events: list[Event] = []
        src_addr = CLIENT_ADDR if src is self.client else SERVER_ADDR
        dst_addr = SERVER_ADDR if src is self.client else CLIENT_ADDR
        for data, addr in src.messages_to_send():
            assert addr == dst_addr, (addr, dst_addr)
            self.count += 1
            first = data.split(b"\r\n", 1)[0].decode()
            dropped = self.loss(self.count) or self.drop(first)
            self.trace.append((self.count, direction, data.split(b"\r\n", 1)[0].decode(), dropped))
            if dropped:
                continue
            events += dst.receive(parse(data), src_addr, self.reliable, self.now)
        return events

    def pump(self) -> None:
        """Deliver messages both ways until both queues are empty."""
        while True:
            to_server = self._carry(self.client, self.server, "->")
            for event in to_server:
                if self.server_agent is not None:
                    self.server_agent.on_event(event, self.now)
            to_client = self._carry(self.server, self.client, "<-")
            for event in to_client:
                if self.client_agent is not None:
                    self.client_agent.on_event(event, self.now)
            if not to_server and not to_client and not self.client._outbox and not self.server._outbox:
                return

    def next_timer(self) -> float | None:
        timers = [self.client.get_timer(), self.server.get_timer()]
        for agent in (self.client_agent, self.server_agent):
            if agent is not None:
                timers.append(agent.get_timer())
        due = [t for t in timers if t is not None]
        return min(due) if due else None

    def step(self) -> bool:
        """Advance to the next timer and fire it; ``False`` when none is left."""
        self.pump()
        deadline = self.next_timer()
        if deadline is None:
            return False
        assert deadline >= self.now
        self.now = deadline
        for layer, agent in (
            (self.client, self.client_agent),
            (self.server, self.server_agent),
        ):
            for event in layer.handle_timer(self.now):
                if agent is not None:
                    agent.on_event(event, self.now)
            if agent is not None:
                timer = agent.get_timer()
                if timer is not None and timer <= self.now:
                    agent.handle_timer(self.now)
        self.pump()
        return True

    def run(self, limit: float = 600.0) -> None:
        """Step until nothing is scheduled (or virtual time passes ``limit``)."""
        while self.now <= limit and self.step():
            pass


# ------------------------------------------------------------ INVITE session agents


class SessionUas:
    """The UAS of the pair harness, on the real :class:`InviteSession`:
    180 at once, 200 after ``answer_after`` seconds (retransmitted until the
    ACK, §13.3.1.4), 200 to a BYE, 200 (with the offer's answer echoed) to a
    re-INVITE. Every session event is kept in ``events``."""

    def __init__(self, pair: LayerPair, timers: Timers = Timers(), answer_after: float | None = 2.0,
                 body: bytes = b"") -> None:
        self.pair = pair
        self.timers = timers
        self.answer_after = answer_after
        self.body = body
        self.session: InviteSession | None = None
        self.tx: InviteServerTransaction | None = None
        self.ok: SipResponse | None = None
        self.tag = new_tag()
        self.ring_at: float | None = None
        self.invites = 0
        self.acked = False
        self.bye_received = False
        self.cancelled = False
        self.events: list[SessionEvent] = []

    @property
    def dialog(self) -> Dialog | None:
        return self.session.dialog if self.session is not None else None

    def _respond(self, txn: object, response: SipResponse, now: float) -> None:
        assert isinstance(txn, (InviteServerTransaction, NonInviteServerTransaction))
        self.pair.server.send_response(txn, response, now)

    def on_event(self, event: Event, now: float) -> None:
        if isinstance(event, CancelReceived):
            self._respond(event.transaction, event.request.create_response(200), now)
            assert self.session is not None and self.tx is not None
            if self.session.receive_cancel():
                terminated = self.tx.request.create_response(487, to_tag=self.tag)
                self.session.send_final(terminated)
                self._respond(self.tx, terminated, now)
                self.ring_at = None
                self.cancelled = True
            return
        if not isinstance(event, RequestReceived):
            return
        request = event.request
        if request.method == "INVITE" and request.to.tag is None:
            assert isinstance(event.transaction, InviteServerTransaction)
            self.invites += 1
            self.tx = event.transaction
            self.session = InviteSession.create_uas(request, self.timers, self.pair.reliable)
            ringing = request.create_response(180, to_tag=self.tag)
            self.session.send_provisional(ringing)
            self._respond(self.tx, ringing, now)
            if self.answer_after is not None:
                self.ring_at = now + self.answer_after
        elif request.method == "ACK":
            assert event.transaction is None and self.session is not None and self.dialog is not None
            self.dialog.receive_request(request)
            for e in self.session.receive_ack(request):
                self.events.append(e)
                self.acked = True
        elif request.method == "INVITE":  # re-INVITE
            assert self.session is not None and self.dialog is not None
            self.dialog.receive_request(request)
            for e in self.session.receive_reinvite(request):
                self.events.append(e)
                if isinstance(e, ReInviteRefused):
                    self._respond(event.transaction, e.response, now)
                    return
            ok = request.create_response(200)
            ok.headers.add("Contact", "<sip:bob@192.0.2.2>")
            if request.body:
                ok.headers.add("Content-Type", "application/sdp")
                ok.body = request.body
            self.session.send_reinvite_answer(request, ok, now)
            self._respond(event.transaction, ok, now)
        elif request.method == "BYE":
            assert self.dialog is not None and self.session is not None
            self.dialog.receive_request(request)
            self.session.receive_bye()
            self.bye_received = True
            self._respond(event.transaction, request.create_response(200), now)

    def get_timer(self) -> float | None:
        due = [t for t in (self.ring_at, self.session.get_timer() if self.session else None) if t is not None]
        return min(due) if due else None

    def handle_timer(self, now: float) -> None:
        assert self.tx is not None and self.session is not None
        if self.ring_at is not None and self.ring_at <= now:
            self.ring_at = None
            ok = self.tx.request.create_response(200, to_tag=self.tag)
            ok.headers.add("Contact", "<sip:bob@192.0.2.2>")
            if self.body:
                ok.headers.add("Content-Type", "application/sdp")
                ok.body = self.body
            self.ok = ok
            self.session.send_answer(ok, self.tx.request, "<sip:bob@192.0.2.2>", now)
            self._respond(self.tx, ok, now)
        for e in self.session.handle_timer(now):
            self.events.append(e)
            if isinstance(e, Retransmit2xx):
                assert self.ok is not None
                if self.tx.state is TransactionState.ACCEPTED:
                    self._respond(self.tx, self.ok, now)
                else:
                    self.pair.server.send_stateless(e.data, CLIENT_ADDR)
            elif isinstance(e, AckTimedOut) and e.bye is not None and self.send_bye_on_timeout:
                self.pair.server.send_request(add_via(e.bye, "server.example.com"), CLIENT_ADDR,
                                              self.pair.reliable, now)

    #: Send the BYE of :class:`AckTimedOut` (the plain UAC of test_transaction
    #: does not answer BYEs, so its pair leaves it off).
    send_bye_on_timeout = False


class SessionUac:
    """The UAC of the pair harness, on the real :class:`InviteSession`:
    sends what the session asks for (INVITEs, CANCEL, ACK, BYE), answers a
    BYE with 200, and keeps every session event in ``events``."""

    def __init__(self, pair: LayerPair, session: InviteSession) -> None:
        self.pair = pair
        self.session = session
        self.events: list[SessionEvent] = []
        self.invites: list[SipRequest] = []
        self.bye_received = False

    def perform(self, events: list[SessionEvent], now: float) -> None:
        for e in events:
            self.events.append(e)
            if isinstance(e, InviteReady):
                self.invites.append(e.request)
                self.pair.client.send_request(add_via(e.request), SERVER_ADDR, self.pair.reliable, now)
            elif isinstance(e, CancelReady):
                self.pair.client.send_request(e.request, SERVER_ADDR, self.pair.reliable, now)
            elif isinstance(e, Answered):
                ack = e.ack if e.ack.headers.get("Via") else add_via(e.ack)
                self.pair.client.send_stateless(ack, SERVER_ADDR)
                if e.bye is not None:
                    self.pair.client.send_request(add_via(e.bye), SERVER_ADDR, self.pair.reliable, now)
            elif isinstance(e, Redirected):
                self.perform(self.session.follow(e.target), now)

    def on_event(self, event: Event, now: float) -> None:
        if isinstance(event, ResponseReceived) and event.response.cseq.method == "INVITE":
            self.perform(self.session.receive_response(event.response), now)
        elif isinstance(event, StrayResponse) and event.response.cseq.method == "INVITE":
            if 200 <= event.response.status < 300:
                self.perform(self.session.receive_stray_2xx(event.response), now)
        elif isinstance(event, TransactionTimedOut) and event.transaction.method == "INVITE":
            self.perform(self.session.receive_response(None), now)
        elif isinstance(event, RequestReceived) and event.request.method == "BYE":
            assert event.transaction is not None
            self.bye_received = True
            self.session.receive_bye()
            self.pair.client.send_response(event.transaction, event.request.create_response(200), now)

    def get_timer(self) -> float | None:
        return self.session.get_timer()

    def handle_timer(self, now: float) -> None:
        self.perform(self.session.handle_timer(now), now)
