"""Shared fixtures for the transaction and dialog tests.

Messages are built as text and parsed, so every fixture is a message the
parser accepts. :class:`LayerPair` joins two transaction layers in memory
with a loss pattern (h11's ``ConnectionPair``, aiortc's ``set_loss_pattern``)
and runs them on virtual time.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from engine.sip.message import SipRequest, SipResponse, new_branch
from engine.sip.parser import parse_message
from engine.sip.transaction import Event, Timers, TransactionLayer

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
    ) -> None:
        self.client = TransactionLayer(timers)
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
            dropped = self.loss(self.count)
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
