"""SIP transactions (RFC 3261 §17, with the corrections of RFC 6026).

Theory of operation
-------------------

A transaction is a request plus every response to it, and the state that
absorbs retransmissions on unreliable transports. RFC 3261 §17 defines four
machines, and this module has one class per machine:

* :class:`InviteClientTransaction` (ICT, §17.1.1, RFC 6026 §8.4),
* :class:`NonInviteClientTransaction` (NICT, §17.1.2),
* :class:`InviteServerTransaction` (IST, §17.2.1, RFC 6026 §7.1),
* :class:`NonInviteServerTransaction` (NIST, §17.2.2).

Each machine is a transition table ``(state, input) -> (action, next_state)``
(``_transitions``, set just after each class, as in h2's ``stream.py``). An
input is something we send (``SEND_*``), something the peer sent
(``RECV_*``), a timer that fired (``TIMER_*``) or a transport error. The
action is a method that queues bytes, arms timers and returns events; the
dispatcher :meth:`_Transaction._process` then moves to the next state and
cancels the timers the new state does not run (``_state_timers``). A ``SEND_*``
input that is not in the table raises :class:`LocalProtocolError` (our
misuse); every ``RECV_*`` input has a row in every live state, so messages the
RFC says to absorb are absorbed by an explicit row. Once TERMINATED, a
transaction ignores whatever the peer sends.

The machines are sans-IO: they never read a clock (time is the ``now``
argument), never touch a socket, and queue what they send as ``(bytes,
addr)`` pairs, where ``addr`` is an opaque destination given by the caller.
A message is serialized once; retransmissions reuse the same bytes (but
for a 2xx the TU passes again to an ACCEPTED INVITE server transaction,
whose bytes are not kept: see :meth:`_ServerTransaction._shed`).

On a reliable transport the retransmission timers (A, E, G) are never armed
and Timers D, I, J and K are zero (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).
A zero timer still goes through :meth:`get_timer` / :meth:`handle_timer`, so
the caller must run timers due at ``now`` after every call.

:class:`TransactionLayer` owns the transactions, matches incoming messages to
them (§17.1.3 for responses, §17.2.3 for requests, including the RFC 2543
fallback for branches without the ``z9hG4bK`` cookie), creates server
transactions for new requests, keeps one heap of timer deadlines (lazy
deletion) and one queue of datagrams for the transport adapter, which runs
the aioquic loop: feed :meth:`TransactionLayer.receive`, send
:meth:`TransactionLayer.messages_to_send`, re-arm one timer at
:meth:`TransactionLayer.get_timer`, call :meth:`TransactionLayer.handle_timer`.

Two things that look like transaction work are left to the TU, as RFC 3261
says: the ACK to a 2xx and the retransmission of a 2xx (§13.2.2.4,
§13.3.1.4). The ICT hands every 2xx up (also during Timer M, RFC 6026) and a
2xx matching no transaction comes up as :class:`StrayResponse`; an ACK that
matches no INVITE server transaction comes up as :class:`RequestReceived`
with ``transaction=None``.

Diagrams
--------

INVITE client transaction (§17.1.1.2 Figure 5, RFC 6026 Figure 5)::

                      | INVITE sent; A = T1 (unreliable), B = 64*T1
                      v
   TIMER_A: resend, +-----------+ TIMER_B: TransactionTimedOut
   A = 2A (no cap)  |  CALLING  |--------------------------------+
                    +-----------+                                |
         RECV_1XX: up |    | RECV_2XX: up, M = 64*T1             |
                      v    +--------------------------+          |
                  +------------+ RECV_1XX: up         |          |
                  | PROCEEDING |                      |          |
                  +------------+                      |          |
    RECV_300_699:     |    | RECV_2XX: up, M          v          |
    ACK, up, D (from  |    +------------------> +----------+     |
    CALLING too)      v                         | ACCEPTED | RECV_2XX: up
                 +-----------+ RECV_300_699:    +----------+     |
                 | COMPLETED | re-send ACK           | TIMER_M   |
                 +-----------+                       |           |
                      | TIMER_D (32 s / 0)           |           |
                      v                              v           v
                 +------------------------------------------------+
                 |                  TERMINATED                    |
                 +------------------------------------------------+

Non-INVITE client transaction (§17.1.2.2 Figure 6)::

                      | request sent; E = T1 (unreliable), F = 64*T1
                      v
   TIMER_E: resend, +--------+ TIMER_F: TransactionTimedOut
   E = min(2E, T2)  | TRYING |----------------------------------+
                    +--------+                                  |
        RECV_1XX: up |     | RECV_2XX / RECV_300_699: up, K     |
                     v     +-----------------+                  |
   TIMER_E: resend, +------------+ final: up, K                 |
   E = T2           | PROCEEDING |--------+   |   TIMER_F       |
   RECV_1XX: up     +------------+        |   |  (also here) ---+
                                          v   v                 |
                                      +-----------+ responses   |
                                      | COMPLETED | absorbed    |
                                      +-----------+             |
                                          | TIMER_K (T4 / 0)    |
                                          v                     v
                                      +----------------------------+
                                      |         TERMINATED         |
                                      +----------------------------+

INVITE server transaction (§17.2.1 Figure 7, RFC 6026 Figure 7)::

                      | INVITE received; TRYING timer (200 ms) -> 100
                      v
   RECV_REQUEST:    +------------+ SEND_2XX: sent, L = 64*T1
   re-send last 1xx | PROCEEDING |----------------------------+
   SEND_1XX: sent   +------------+                            v
                      | SEND_300_699: sent,              +----------+
                      | G = T1 (unreliable), H = 64*T1   | ACCEPTED | SEND_2XX: sent
                      v                                  +----------+ RECV_REQUEST:
   RECV_REQUEST,    +-----------+ TIMER_H:                    |       absorbed
   TIMER_G: re-send | COMPLETED | TransactionTimedOut         |       RECV_ACK: up
   G = min(2G, T2)  +-----------+-----------------+           |       (transaction None)
                      | RECV_ACK: I = T4 / 0      |           | TIMER_L
                      v                           |           |
                    +-----------+ RECV_*:         |           |
                    | CONFIRMED | absorbed        |           |
                    +-----------+                 |           |
                      | TIMER_I                   v           v
                    +-----------------------------------------------+
                    |                   TERMINATED                  |
                    +-----------------------------------------------+

Non-INVITE server transaction (§17.2.2 Figure 8)::

                      | request received
                      v
   RECV_REQUEST:    +--------+ SEND_2XX / SEND_300_699: sent,
   absorbed         | TRYING |  J = 64*T1 (unreliable) / 0 ---------+
                    +--------+                                     |
                      | SEND_1XX: sent                             |
                      v                                            |
   RECV_REQUEST:    +------------+ final: sent, J                  |
   re-send last 1xx | PROCEEDING |--------------------------+      |
   SEND_1XX: sent   +------------+                          v      v
                                                         +-----------+ RECV_REQUEST:
                                                         | COMPLETED | re-send final
                                                         +-----------+
                                                              | TIMER_J
                                                              v
                                                         +------------+
                                                         | TERMINATED |
                                                         +------------+

Every live state also has ``TRANSPORT_ERROR -> TERMINATED`` with a
:class:`TransportFailed` event (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2, §18.4).
"""

from __future__ import annotations

import heapq
import sys
import weakref
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, ClassVar, Union

from engine.sip.errors import LocalProtocolError
from engine.sip.message import BRANCH_MAGIC, Headers, SipMessage, SipRequest, SipResponse
from engine.sip.parser import parse_unvalidated

__all__ = [
    "Timers",
    "DEFAULT_TIMERS",
    "TransactionState",
    "TransactionInput",
    "Event",
    "RequestReceived",
    "CancelReceived",
    "ResponseReceived",
    "StrayResponse",
    "TransactionTimedOut",
    "TransportFailed",
    "TransactionTerminated",
    "InviteClientTransaction",
    "NonInviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteServerTransaction",
    "ClientTransaction",
    "ServerTransaction",
    "Transaction",
    "TransactionLayer",
    "client_transaction_key",
    "server_transaction_key",
    "create_cancel",
]


@dataclass(frozen=True, slots=True)
class Timers:
    """Timer values in seconds (RFC 3261 §17.1.1.1 and Table 4).

    :param t1: RTT estimate; the first retransmission interval.
    :param t2: the cap of non-INVITE request and INVITE response
        retransmission intervals.
    :param t4: how long a message may stay in the network (Timers I and K).
    :param d: Timer D on unreliable transports (§17.1.1.2: at least 32 s).
    :param trying: how long an INVITE server transaction waits for the TU to
        send a provisional response before it sends ``100 Trying`` itself
        (§17.2.1: 200 ms); ``None`` never sends one.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0
    trying: float | None = 0.2

    @property
    def timeout(self) -> float:
        """``64*T1``: Timers B, F, H, L, M, and J on unreliable transports."""
        return 64 * self.t1


DEFAULT_TIMERS = Timers()


class TransactionState(Enum):
    """The RFC's state names (RFC 3261 §17, ACCEPTED from RFC 6026)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"

    # Members are singletons compared by identity: hash them so, in C (the
    # state tables look them up several times a message; Enum's own __hash__
    # is a Python function).
    __hash__ = object.__hash__


class TransactionInput(Enum):
    """What drives the machines: sends, receptions, timers, transport errors."""

    SEND_1XX = "send_1xx"
    SEND_2XX = "send_2xx"
    SEND_300_699 = "send_300_699"
    RECV_REQUEST = "recv_request"  # a retransmission of the transaction's request
    RECV_ACK = "recv_ack"
    RECV_1XX = "recv_1xx"
    RECV_2XX = "recv_2xx"
    RECV_300_699 = "recv_300_699"
    TIMER_A = "timer_a"
    TIMER_B = "timer_b"
    TIMER_D = "timer_d"
    TIMER_E = "timer_e"
    TIMER_F = "timer_f"
    TIMER_G = "timer_g"
    TIMER_H = "timer_h"
    TIMER_I = "timer_i"
    TIMER_J = "timer_j"
    TIMER_K = "timer_k"
    TIMER_L = "timer_l"
    TIMER_M = "timer_m"
    TIMER_TRYING = "timer_trying"
    TRANSPORT_ERROR = "transport_error"

    __hash__ = object.__hash__  # identity, in C (see TransactionState)


S = TransactionState
I = TransactionInput  # noqa: E741

_SEND_INPUTS = frozenset({I.SEND_1XX, I.SEND_2XX, I.SEND_300_699})
#: When two timers fall due at the same instant, the one that ends the
#: transaction fires first, so no pointless retransmission goes out.
_TIMER_PRIORITY = {
    I.TIMER_B: 0, I.TIMER_F: 0, I.TIMER_H: 0,
    I.TIMER_D: 1, I.TIMER_I: 1, I.TIMER_J: 1, I.TIMER_K: 1, I.TIMER_L: 1, I.TIMER_M: 1,
    I.TIMER_TRYING: 2, I.TIMER_A: 2, I.TIMER_E: 2, I.TIMER_G: 2,
}


# --------------------------------------------------------------------- events


class Event:
    """Base class of what the transaction layer reports to the TU.

    The events are plain slotted dataclasses, not frozen ones: nothing
    hashes or changes them, and a frozen dataclass sets each field through
    ``object.__setattr__``, which made building the five events of a call
    cost three times a plain one.
    """

    __slots__ = ()


@dataclass(slots=True)
class RequestReceived(Event):
    """A new request arrived.

    :param transaction: the new server transaction to answer through, or
        ``None`` for an ACK that matched no INVITE server transaction (the
        ACK to a 2xx, RFC 3261 §17.2.3 / §13.3.1.4: it belongs to the dialog
        layer and is never answered).
    """

    request: SipRequest
    addr: object
    transaction: ServerTransaction | None


@dataclass(slots=True)
class CancelReceived(Event):
    """A new CANCEL arrived (RFC 3261 §9.2).

    The CANCEL has its own non-INVITE server transaction (``transaction``),
    which the TU answers: 200 when ``invite_transaction`` is not ``None``
    (and then 487 on the INVITE if it is still in PROCEEDING), 481 otherwise.
    """

    request: SipRequest
    addr: object
    transaction: NonInviteServerTransaction
    invite_transaction: InviteServerTransaction | None


@dataclass(slots=True)
class ResponseReceived(Event):
    """A response for a client transaction, to hand to the TU.

    Provisional and final responses come up once each; in the INVITE client
    transaction's ACCEPTED state (RFC 6026 Timer M) every further 2xx comes
    up too, so that the TU can ACK retransmissions and forked 2xx.
    """

    response: SipResponse
    transaction: ClientTransaction


@dataclass(slots=True)
class StrayResponse(Event):
    """A response that matched no client transaction (RFC 3261 §17.1.3).

    Typically a 2xx retransmitted after Timer M: the TU re-sends its ACK.
    Anything else may be dropped.
    """

    response: SipResponse
    addr: object


@dataclass(slots=True)
class TransactionTimedOut(Event):
    """Timer B, F or H fired: no final response (client) or no ACK (IST).

    A :class:`TransactionTerminated` for the same transaction follows.
    """

    transaction: Transaction


@dataclass(slots=True)
class TransportFailed(Event):
    """The transport reported an error for this transaction (RFC 3261 §18.4).

    A :class:`TransactionTerminated` for the same transaction follows.
    """

    transaction: Transaction


@dataclass(slots=True)
class TransactionTerminated(Event):
    """The transaction reached TERMINATED and left the layer."""

    transaction: Transaction


# ---------------------------------------------------------- transaction base

_Action = Callable[[Any, Any, float], list[Event]]
_Table = dict[tuple[TransactionState, TransactionInput], tuple[_Action, TransactionState]]
_Key = tuple[object, ...]


def client_transaction_key(message: SipMessage) -> _Key:
    """The key matching a response to a client transaction (RFC 3261 §17.1.3).

    The branch of the top Via plus the CSeq method, so that a CANCEL (same
    branch as its INVITE) has its own transaction.
    """
    return (message.top_via.branch, message.cseq.method)


def _server_key(request: SipRequest, method: str) -> _Key:
    via = request.top_via
    branch = via.branch
    if branch is not None and branch.startswith(BRANCH_MAGIC):
        # §17.2.3: branch, sent-by and method (ACK matches INVITE).
        # Interned: the sent-by of one peer repeats in thousands of keys.
        return (branch, sys.intern(via.host.lower()), via.port, method)
    # §17.2.3 RFC 2543 fallback: Request-URI, To tag, From tag, Call-ID,
    # CSeq number and top Via.
    return (
        request.uri_text,
        request.to.tag,
        request.from_.tag,
        request.call_id,
        request.cseq.number,
        request.headers.get("Via"),
        method,
    )


def server_transaction_key(request: SipRequest) -> _Key:
    """The key matching a request to a server transaction (RFC 3261 §17.2.3).

    With a ``z9hG4bK`` branch: the branch, the top Via sent-by and the method,
    ACK counting as INVITE. Without: the RFC 2543 fields (Request-URI, To
    tag, From tag, Call-ID, CSeq number, top Via) and the method. An RFC 2543
    ACK is matched differently (by the To tag of the final response), see
    :class:`TransactionLayer`.
    """
    method = request.method
    return _server_key(request, "INVITE" if method == "ACK" else method)


def _ack_key_2543(request: SipRequest) -> _Key:
    """§17.2.3: an RFC 2543 ACK matches an INVITE on these fields, plus the
    To tag of the final response the server transaction sent."""
    return (
        request.uri_text,
        request.from_.tag,
        request.call_id,
        request.cseq.number,
        request.headers.get("Via"),
    )


class _Transaction:
    """What the four machines share: the dispatcher, timers and the queue."""

    __slots__ = (
        "_request",
        "addr",
        "reliable",
        "timers",
        "state",
        "key",
        "_armed",
        "_outbox",
        "_layer",
        "_heap_seq",
        "_heap_deadline",
    )

    _transitions: ClassVar[_Table]
    _state_timers: ClassVar[dict[TransactionState, frozenset[TransactionInput]]]

    def __init__(
        self,
        request: SipRequest,
        addr: object,
        reliable: bool,
        timers: Timers,
        outbox: list[tuple[bytes, object]] | None,
    ) -> None:
        self._request: SipRequest | bytes = request
        self.addr = addr
        self.reliable = reliable
        self.timers = timers
        self.state = TransactionState.TERMINATED  # set by subclasses
        self.key: _Key = ()
        # The armed timers, flat: (timer, deadline, timer, deadline...). A
        # tuple rather than a dict: tens of thousands of transactions wait
        # out Timer L, J or K with one timer, and a one-entry dict costs
        # three times a pair.
        self._armed: tuple[Any, ...] = ()
        self._outbox: list[tuple[bytes, object]] = outbox if outbox is not None else []
        self._layer: TransactionLayer | None = None
        self._heap_seq = -1
        self._heap_deadline = 0.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.state.name}>"

    @property
    def request(self) -> SipRequest:
        """The transaction's request.

        Once a server transaction has sent its final response, this is a
        request re-parsed on each access from the identifying headers kept
        (see :meth:`_ServerTransaction._shed`): enough to build a response.
        """
        request = self._request
        if isinstance(request, bytes):
            parsed = parse_unvalidated(request)
            assert isinstance(parsed, SipRequest)
            return parsed
        return request

    @property
    def method(self) -> str:
        """The method of the transaction's request (the last field of its key)."""
        method = self.key[-1] if self.key else self.request.method
        assert isinstance(method, str)
        return method

    # ------------------------------------------------------------ public

    @property
    def _deadlines(self) -> dict[TransactionInput, float]:
        """The armed timers and their deadlines (a copy)."""
        armed = self._armed
        return dict(zip(armed[::2], armed[1::2]))

    def get_timer(self) -> float | None:
        """The earliest armed timer deadline, or ``None``."""
        armed = self._armed
        if not armed:
            return None
        if len(armed) == 2:
            deadline: float = armed[1]
            return deadline
        earliest: float = min(armed[1::2])
        return earliest

    def handle_timer(self, now: float) -> list[Event]:
        """Fire every timer due at ``now`` (those ending the transaction first)."""
        armed = self._armed
        if len(armed) == 2:  # most fires: the one timer of COMPLETED, ACCEPTED or CONFIRMED
            events: list[Event] = []
            if armed[1] <= now:
                self._armed = ()
                events = self._process(armed[0], None, now)
            self._notify()
            return events
        due = sorted(
            (deadline, _TIMER_PRIORITY[timer], timer)
            for timer, deadline in zip(armed[::2], armed[1::2])
            if deadline <= now
        )
        events = []
        for deadline, _, timer in due:
            if self._deadlines.get(timer) != deadline:
                continue  # cancelled by a timer that fired before it
            self._disarm(timer)
            events += self._process(timer, None, now)
        self._notify()
        return events

    def handle_transport_error(self, now: float) -> list[Event]:
        """The transport could not send for this transaction (RFC 3261 §18.4)."""
        events = self._process(I.TRANSPORT_ERROR, None, now)
        self._notify()
        return events

    def messages_to_send(self) -> list[tuple[bytes, object]]:
        """Drain the queue of ``(bytes, addr)``.

        A transaction created by a :class:`TransactionLayer` shares the
        layer's queue: use :meth:`TransactionLayer.messages_to_send`.
        """
        out = list(self._outbox)
        self._outbox.clear()
        return out

    # ------------------------------------------------------------ machinery

    def _process(self, event: TransactionInput, msg: Any, now: float) -> list[Event]:
        """Run one input through the transition table."""
        state = self.state
        try:
            action, next_state = self._transitions[(state, event)]
        except KeyError:
            if event in _SEND_INPUTS:
                raise LocalProtocolError(
                    f"{type(self).__name__}: cannot {event.value} in state {state.name}"
                ) from None
            return []  # a late message after TERMINATED: nothing to do
        events = action(self, msg, now)
        if next_state is not state:
            self.state = next_state
            allowed = self._state_timers[next_state]
            armed = self._armed
            if armed:
                kept: list[Any] = []
                for i in range(0, len(armed), 2):
                    if armed[i] in allowed:
                        kept += armed[i : i + 2]
                if len(kept) != len(armed):
                    self._armed = tuple(kept)
            if next_state is S.TERMINATED:
                events.append(TransactionTerminated(self))  # type: ignore[arg-type]
        return events

    def _notify(self) -> None:
        layer = self._layer
        if layer is not None:
            layer._reschedule(self)

    def _arm(self, timer: TransactionInput, delay: float, now: float) -> None:
        if timer in self._armed:  # a re-arm (Timers A, E, G): its old deadline goes
            self._disarm(timer)
        self._armed += (timer, now + delay)

    def _disarm(self, timer: TransactionInput) -> None:
        armed = self._armed
        for i in range(0, len(armed), 2):
            if armed[i] is timer:
                self._armed = armed[:i] + armed[i + 2 :]
                return

    def _send(self, data: bytes) -> None:
        self._outbox.append((data, self.addr))

    # Actions shared by all machines. Signature: (self, message, now).

    def _ignore(self, msg: Any, now: float) -> list[Event]:
        return []

    def _timed_out(self, msg: None, now: float) -> list[Event]:
        return [TransactionTimedOut(self)]  # type: ignore[arg-type]

    def _transport_failed(self, msg: None, now: float) -> list[Event]:
        return [TransportFailed(self)]  # type: ignore[arg-type]


# ---------------------------------------------------------- client machines


class _ClientTransaction(_Transaction):
    __slots__ = ("_request_bytes", "_interval")

    def __init__(
        self,
        request: SipRequest,
        addr: object,
        reliable: bool,
        now: float,
        timers: Timers = DEFAULT_TIMERS,
        outbox: list[tuple[bytes, object]] | None = None,
        *,
        key: _Key | None = None,
    ) -> None:
        super().__init__(request, addr, reliable, timers, outbox)
        if key is None:  # the layer passes the key it matched the request by
            if not request.top_via.branch:
                raise LocalProtocolError("a request needs a top Via with a branch")
            key = client_transaction_key(request)
        self.key = key
        self._request_bytes = request.to_bytes()
        self._interval = timers.t1
        self._send(self._request_bytes)

    def receive_response(self, response: SipResponse, now: float) -> list[Event]:
        """Feed a response that matched this transaction (§17.1.3)."""
        status = response.status
        if status < 200:
            event = I.RECV_1XX
        elif status < 300:
            event = I.RECV_2XX
        else:
            event = I.RECV_300_699
        events = self._process(event, response, now)
        self._notify()
        return events

    def _report(self, response: SipResponse, now: float) -> list[Event]:
        return [ResponseReceived(response, self)]  # type: ignore[arg-type]

    def _shed(self) -> None:
        """Once final, keep the request only as the bytes already sent.

        A COMPLETED or ACCEPTED client transaction never retransmits its
        request, yet lives on for Timer K, D or M; the parsed request (a
        header list, a tuple and strings per header, typed headers) is
        dropped, and :attr:`request` re-parses the bytes when asked.
        """
        self._request = self._request_bytes


class InviteClientTransaction(_ClientTransaction):
    """The INVITE client transaction (RFC 3261 §17.1.1, RFC 6026 §8.4).

    Sends the INVITE on creation. Generates the ACK for a 300-699 final
    response itself (§17.1.1.3) and re-sends it for every retransmission of
    that response; a 2xx is never ACKed here (the TU does it, §13.2.2.4).

    :param request: the INVITE, with its top Via and branch.
    :param addr: opaque destination handed back with every queued message.
    :param reliable: whether the transport is reliable (no Timer A, D = 0).
    """

    __slots__ = ("_ack_bytes",)

    def __init__(
        self,
        request: SipRequest,
        addr: object,
        reliable: bool,
        now: float,
        timers: Timers = DEFAULT_TIMERS,
        outbox: list[tuple[bytes, object]] | None = None,
        *,
        key: _Key | None = None,
    ) -> None:
        super().__init__(request, addr, reliable, now, timers, outbox, key=key)
        self.state = S.CALLING
        self._ack_bytes = b""  # set when the ACK is built, in COMPLETED
        if not reliable:
            self._arm(I.TIMER_A, timers.t1, now)  # §17.1.1.2
        self._arm(I.TIMER_B, timers.timeout, now)

    def create_ack(self, response: SipResponse) -> SipRequest:
        """The ACK for a 300-699 final response (RFC 3261 §17.1.1.3).

        Request-URI, Call-ID, From and the CSeq number of the INVITE, the To
        of the response (with its tag), one Via equal to the INVITE's top
        Via (so the same branch), and the INVITE's Route headers.
        """
        invite = self.request
        h = invite.headers
        items = [("Via", h.get("Via") or "")]
        items += [("Route", value) for value in h.get_all("Route")]
        items += [
            ("Max-Forwards", "70"),
            ("From", h.get("From") or ""),
            ("To", response.headers.get("To") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{invite.cseq.number} ACK"),
        ]
        return SipRequest("ACK", invite.uri_text, Headers(items))

    def _timer_a(self, msg: None, now: float) -> list[Event]:
        # §17.1.1.2: retransmit, and double the interval (no cap for INVITE).
        self._send(self._request_bytes)
        self._interval *= 2
        self._arm(I.TIMER_A, self._interval, now)
        return []

    def _accept(self, response: SipResponse, now: float) -> list[Event]:
        # RFC 6026 §8.4: a 2xx moves to Accepted and starts Timer M.
        self._arm(I.TIMER_M, self.timers.timeout, now)
        self._shed()
        return [ResponseReceived(response, self)]

    def _ack_and_report(self, response: SipResponse, now: float) -> list[Event]:
        # §17.1.1.2: ACK the non-2xx, pass it up, Timer D.
        self._ack_bytes = self.create_ack(response).to_bytes()
        self._shed()
        self._send(self._ack_bytes)
        self._arm(I.TIMER_D, 0.0 if self.reliable else self.timers.d, now)
        return [ResponseReceived(response, self)]

    def _resend_ack(self, response: SipResponse, now: float) -> list[Event]:
        # §17.1.1.2: a retransmitted final response is ACKed again, not passed up.
        self._send(self._ack_bytes)
        return []


_ICT = InviteClientTransaction
InviteClientTransaction._transitions = {
    (S.CALLING, I.TIMER_A): (_ICT._timer_a, S.CALLING),
    (S.CALLING, I.TIMER_B): (_ICT._timed_out, S.TERMINATED),
    (S.CALLING, I.RECV_1XX): (_ICT._report, S.PROCEEDING),
    (S.CALLING, I.RECV_2XX): (_ICT._accept, S.ACCEPTED),
    (S.CALLING, I.RECV_300_699): (_ICT._ack_and_report, S.COMPLETED),
    (S.CALLING, I.TRANSPORT_ERROR): (_ICT._transport_failed, S.TERMINATED),
    (S.PROCEEDING, I.RECV_1XX): (_ICT._report, S.PROCEEDING),
    (S.PROCEEDING, I.RECV_2XX): (_ICT._accept, S.ACCEPTED),
    (S.PROCEEDING, I.RECV_300_699): (_ICT._ack_and_report, S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): (_ICT._transport_failed, S.TERMINATED),
    (S.COMPLETED, I.RECV_1XX): (_ICT._ignore, S.COMPLETED),
    (S.COMPLETED, I.RECV_2XX): (_ICT._ignore, S.COMPLETED),
    (S.COMPLETED, I.RECV_300_699): (_ICT._resend_ack, S.COMPLETED),
    (S.COMPLETED, I.TIMER_D): (_ICT._ignore, S.TERMINATED),
    (S.COMPLETED, I.TRANSPORT_ERROR): (_ICT._transport_failed, S.TERMINATED),
    (S.ACCEPTED, I.RECV_1XX): (_ICT._ignore, S.ACCEPTED),
    (S.ACCEPTED, I.RECV_2XX): (_ICT._report, S.ACCEPTED),
    (S.ACCEPTED, I.RECV_300_699): (_ICT._ignore, S.ACCEPTED),
    (S.ACCEPTED, I.TIMER_M): (_ICT._ignore, S.TERMINATED),
    (S.ACCEPTED, I.TRANSPORT_ERROR): (_ICT._transport_failed, S.TERMINATED),
}
InviteClientTransaction._state_timers = {
    S.CALLING: frozenset({I.TIMER_A, I.TIMER_B}),
    S.PROCEEDING: frozenset(),  # §17.1.1.2: Timer B only runs in Calling
    S.COMPLETED: frozenset({I.TIMER_D}),
    S.ACCEPTED: frozenset({I.TIMER_M}),
    S.TERMINATED: frozenset(),
}


class NonInviteClientTransaction(_ClientTransaction):
    """The non-INVITE client transaction (RFC 3261 §17.1.2).

    Sends the request on creation; Timer E retransmits (doubling up to T2,
    then every T2 once a provisional response came), Timer F gives up.
    """

    __slots__ = ()

    def __init__(
        self,
        request: SipRequest,
        addr: object,
        reliable: bool,
        now: float,
        timers: Timers = DEFAULT_TIMERS,
        outbox: list[tuple[bytes, object]] | None = None,
        *,
        key: _Key | None = None,
    ) -> None:
        super().__init__(request, addr, reliable, now, timers, outbox, key=key)
        self.state = S.TRYING
        if not reliable:
            self._arm(I.TIMER_E, timers.t1, now)  # §17.1.2.2
        self._arm(I.TIMER_F, timers.timeout, now)

    def _timer_e_trying(self, msg: None, now: float) -> list[Event]:
        self._send(self._request_bytes)
        self._interval = min(2 * self._interval, self.timers.t2)
        self._arm(I.TIMER_E, self._interval, now)
        return []

    def _timer_e_proceeding(self, msg: None, now: float) -> list[Event]:
        # §17.1.2.2: in Proceeding, Timer E is reset to T2.
        self._send(self._request_bytes)
        self._interval = self.timers.t2
        self._arm(I.TIMER_E, self._interval, now)
        return []

    def _report_final(self, response: SipResponse, now: float) -> list[Event]:
        self._arm(I.TIMER_K, 0.0 if self.reliable else self.timers.t4, now)
        self._shed()
        return [ResponseReceived(response, self)]


_NICT = NonInviteClientTransaction
NonInviteClientTransaction._transitions = {
    (S.TRYING, I.TIMER_E): (_NICT._timer_e_trying, S.TRYING),
    (S.TRYING, I.TIMER_F): (_NICT._timed_out, S.TERMINATED),
    (S.TRYING, I.RECV_1XX): (_NICT._report, S.PROCEEDING),
    (S.TRYING, I.RECV_2XX): (_NICT._report_final, S.COMPLETED),
    (S.TRYING, I.RECV_300_699): (_NICT._report_final, S.COMPLETED),
    (S.TRYING, I.TRANSPORT_ERROR): (_NICT._transport_failed, S.TERMINATED),
    (S.PROCEEDING, I.TIMER_E): (_NICT._timer_e_proceeding, S.PROCEEDING),
    (S.PROCEEDING, I.TIMER_F): (_NICT._timed_out, S.TERMINATED),
    (S.PROCEEDING, I.RECV_1XX): (_NICT._report, S.PROCEEDING),
    (S.PROCEEDING, I.RECV_2XX): (_NICT._report_final, S.COMPLETED),
    (S.PROCEEDING, I.RECV_300_699): (_NICT._report_final, S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): (_NICT._transport_failed, S.TERMINATED),
    (S.COMPLETED, I.RECV_1XX): (_NICT._ignore, S.COMPLETED),
    (S.COMPLETED, I.RECV_2XX): (_NICT._ignore, S.COMPLETED),
    (S.COMPLETED, I.RECV_300_699): (_NICT._ignore, S.COMPLETED),
    (S.COMPLETED, I.TIMER_K): (_NICT._ignore, S.TERMINATED),
    (S.COMPLETED, I.TRANSPORT_ERROR): (_NICT._transport_failed, S.TERMINATED),
}
NonInviteClientTransaction._state_timers = {
    S.TRYING: frozenset({I.TIMER_E, I.TIMER_F}),
    S.PROCEEDING: frozenset({I.TIMER_E, I.TIMER_F}),
    S.COMPLETED: frozenset({I.TIMER_K}),
    S.TERMINATED: frozenset(),
}


# ---------------------------------------------------------- server machines


class _ServerTransaction(_Transaction):
    __slots__ = ("_last_response", "_last_bytes", "_interval")

    def __init__(
        self,
        request: SipRequest,
        addr: object,
        reliable: bool,
        now: float,
        timers: Timers = DEFAULT_TIMERS,
        outbox: list[tuple[bytes, object]] | None = None,
        *,
        key: _Key | None = None,
    ) -> None:
        super().__init__(request, addr, reliable, timers, outbox)
        self.key = key if key is not None else server_transaction_key(request)
        self._last_response: SipResponse | None = None
        self._last_bytes: bytes | None = None
        self._interval = timers.t1

    @property
    def last_response(self) -> SipResponse | None:
        """The most recent response sent through this transaction."""
        last = self._last_response
        if isinstance(last, weakref.ref):
            return last()
        return last

    def receive_request(self, request: SipRequest, now: float) -> list[Event]:
        """Feed a request that matched this transaction (§17.2.3).

        A retransmission of the original request re-sends the last response
        where the RFC says so; an ACK (INVITE transactions only) in COMPLETED
        moves to CONFIRMED.
        """
        method = request.method
        own = self.method
        if method == own:
            event = I.RECV_REQUEST
        elif method == "ACK" and own == "INVITE":
            event = I.RECV_ACK
        else:
            raise LocalProtocolError(f"{method} does not belong to a {own} transaction")
        events = self._process(event, request, now)
        self._notify()
        return events

    def send_response(self, response: SipResponse, now: float) -> list[Event]:
        """Send a response through this transaction.

        :raises LocalProtocolError: when the state does not allow it (a
            response after a final one, except 2xx retransmissions in the
            INVITE ACCEPTED state).
        """
        status = response.status
        if status < 200:
            event = I.SEND_1XX
        elif status < 300:
            event = I.SEND_2XX
        else:
            event = I.SEND_300_699
        events = self._process(event, response, now)
        self._notify()
        return events

    def _transmit(self, response: SipResponse) -> None:
        if response is self.last_response:
            data = self._last_bytes
            if data is not None:
                self._send(data)
                return
        # A first sending, or a 2xx of ours the TU passes again in ACCEPTED
        # (its bytes are not kept, see _shed): a response is not changed
        # once sent, so writing it again gives the bytes it was sent as.
        data = response.to_bytes()
        self._last_response = response
        self._last_bytes = data
        if response.status >= 200:
            self._shed(response)
        self._send(data)

    def _shed(self, response: SipResponse) -> None:
        """After the final response, keep only what the rest of the
        transaction needs.

        A server at 1,000 calls/s holds some 30,000 ACCEPTED or COMPLETED
        transactions (Timers L and J last 64*T1); each keeping its parsed
        INVITE and response would cost hundreds of MB. So the request is cut
        down to its transaction-identifying headers and kept serialized (one
        bytes object instead of a message, a header list and a tuple and a
        string per header; :attr:`request` re-parses it), the response is held weakly (its
        sender, the UAS core, keeps it until the ACK), and a 2xx's bytes,
        which an ACCEPTED transaction never resends by itself, are not kept:
        a 2xx the TU passes again is written again (rare: the UAS core
        retransmits its 2xx outside the transaction). No weak map from
        response to bytes: its entry and removal cost more a call than
        writing the 2xx again costs the few calls whose 2xx is resent so.
        """
        request = self._request
        if isinstance(request, SipRequest):
            # Written as SipMessage.to_bytes writes a request of these
            # headers and no body, without building that request first.
            keep = _IDENTIFYING
            lines = [f"{request.method} {request.uri_text} {request.version}"]
            lines += [f"{name}: {value}" for name, value in request.headers if name in keep]
            lines.append("Content-Length: 0\r\n\r\n")
            self._request = "\r\n".join(lines).encode("utf-8", errors="surrogateescape")
        self._last_response = weakref.ref(response)  # type: ignore[assignment]
        if response.status < 300 and isinstance(self, InviteServerTransaction):
            self._last_bytes = None

    def _send_provisional(self, response: SipResponse, now: float) -> list[Event]:
        self._disarm(I.TIMER_TRYING)
        self._transmit(response)
        return []

    def _resend_last(self, msg: Any, now: float) -> list[Event]:
        # Only in states where a response was sent (PROCEEDING of a NIST,
        # COMPLETED of both).
        assert self._last_bytes is not None
        self._send(self._last_bytes)
        return []


_IDENTIFYING = frozenset({"Via", "From", "To", "Call-ID", "CSeq"})


class InviteServerTransaction(_ServerTransaction):
    """The INVITE server transaction (RFC 3261 §17.2.1, RFC 6026 §7.1).

    Sends ``100 Trying`` if the TU has sent nothing after ``timers.trying``
    (or at once when the INVITE is retransmitted first). A 300-699 final
    response is retransmitted by Timer G until the ACK comes (Timer H gives
    up); a 2xx moves to ACCEPTED, where the TU's own 2xx retransmissions are
    passed to the transport and INVITE retransmissions are absorbed until
    Timer L.
    """

    __slots__ = ("response_to_tag",)

    def __init__(
        self,
        request: SipRequest,
        addr: object,
        reliable: bool,
        now: float,
        timers: Timers = DEFAULT_TIMERS,
        outbox: list[tuple[bytes, object]] | None = None,
        *,
        key: _Key | None = None,
    ) -> None:
        super().__init__(request, addr, reliable, now, timers, outbox, key=key)
        self.state = S.PROCEEDING
        #: The To tag of the final response: an RFC 2543 ACK must carry it.
        self.response_to_tag: str | None = None
        if timers.trying is not None:
            self._arm(I.TIMER_TRYING, timers.trying, now)

    def _send_trying(self, msg: Any, now: float) -> list[Event]:
        # §17.2.1: 100 Trying unless the TU answers within 200 ms; a
        # retransmitted INVITE before any response also gets one at once.
        self._disarm(I.TIMER_TRYING)
        if self._last_bytes is None:
            self._transmit(self.request.create_response(100))
        else:
            self._send(self._last_bytes)
        return []

    def _send_2xx(self, response: SipResponse, now: float) -> list[Event]:
        # RFC 6026 §7.1: 2xx -> Accepted, Timer L.
        self.response_to_tag = response.to.tag
        self._transmit(response)
        self._arm(I.TIMER_L, self.timers.timeout, now)
        return []

    def _retransmit_2xx(self, response: SipResponse, now: float) -> list[Event]:
        # RFC 6026 §7.1: 2xx retransmissions from the TU go to the transport.
        self._transmit(response)
        return []

    def _send_final(self, response: SipResponse, now: float) -> list[Event]:
        # §17.2.1: 300-699 -> Completed, Timer G (unreliable) and Timer H.
        self.response_to_tag = response.to.tag
        self._transmit(response)
        if not self.reliable:
            self._arm(I.TIMER_G, self.timers.t1, now)
        self._arm(I.TIMER_H, self.timers.timeout, now)
        return []

    def _timer_g(self, msg: None, now: float) -> list[Event]:
        self._resend_last(msg, now)
        self._interval = min(2 * self._interval, self.timers.t2)
        self._arm(I.TIMER_G, self._interval, now)
        return []

    def _confirm(self, ack: SipRequest, now: float) -> list[Event]:
        # §17.2.1: ACK -> Confirmed, Timer I (T4, zero when reliable).
        self._arm(I.TIMER_I, 0.0 if self.reliable else self.timers.t4, now)
        return []

    def _ack_to_tu(self, ack: SipRequest, now: float) -> list[Event]:
        # An ACK matching the transaction in Accepted acknowledges the 2xx:
        # it belongs to the dialog layer (RFC 2543 peers, or peers reusing
        # the INVITE branch).
        return [RequestReceived(ack, self.addr, None)]


_IST = InviteServerTransaction
InviteServerTransaction._transitions = {
    (S.PROCEEDING, I.TIMER_TRYING): (_IST._send_trying, S.PROCEEDING),
    (S.PROCEEDING, I.RECV_REQUEST): (_IST._send_trying, S.PROCEEDING),
    (S.PROCEEDING, I.RECV_ACK): (_IST._ignore, S.PROCEEDING),
    (S.PROCEEDING, I.SEND_1XX): (_IST._send_provisional, S.PROCEEDING),
    (S.PROCEEDING, I.SEND_2XX): (_IST._send_2xx, S.ACCEPTED),
    (S.PROCEEDING, I.SEND_300_699): (_IST._send_final, S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): (_IST._transport_failed, S.TERMINATED),
    (S.COMPLETED, I.RECV_REQUEST): (_IST._resend_last, S.COMPLETED),
    (S.COMPLETED, I.RECV_ACK): (_IST._confirm, S.CONFIRMED),
    (S.COMPLETED, I.TIMER_G): (_IST._timer_g, S.COMPLETED),
    (S.COMPLETED, I.TIMER_H): (_IST._timed_out, S.TERMINATED),
    (S.COMPLETED, I.TRANSPORT_ERROR): (_IST._transport_failed, S.TERMINATED),
    (S.CONFIRMED, I.RECV_REQUEST): (_IST._ignore, S.CONFIRMED),
    (S.CONFIRMED, I.RECV_ACK): (_IST._ignore, S.CONFIRMED),
    (S.CONFIRMED, I.TIMER_I): (_IST._ignore, S.TERMINATED),
    (S.CONFIRMED, I.TRANSPORT_ERROR): (_IST._transport_failed, S.TERMINATED),
    (S.ACCEPTED, I.RECV_REQUEST): (_IST._ignore, S.ACCEPTED),
    (S.ACCEPTED, I.RECV_ACK): (_IST._ack_to_tu, S.ACCEPTED),
    (S.ACCEPTED, I.SEND_2XX): (_IST._retransmit_2xx, S.ACCEPTED),
    (S.ACCEPTED, I.TIMER_L): (_IST._ignore, S.TERMINATED),
    (S.ACCEPTED, I.TRANSPORT_ERROR): (_IST._transport_failed, S.TERMINATED),
}
InviteServerTransaction._state_timers = {
    S.PROCEEDING: frozenset({I.TIMER_TRYING}),
    S.COMPLETED: frozenset({I.TIMER_G, I.TIMER_H}),
    S.CONFIRMED: frozenset({I.TIMER_I}),
    S.ACCEPTED: frozenset({I.TIMER_L}),
    S.TERMINATED: frozenset(),
}


class NonInviteServerTransaction(_ServerTransaction):
    """The non-INVITE server transaction (RFC 3261 §17.2.2).

    Absorbs retransmissions until the TU responds, then re-sends the last
    response for each retransmission; Timer J ends COMPLETED.
    """

    __slots__ = ()

    def __init__(
        self,
        request: SipRequest,
        addr: object,
        reliable: bool,
        now: float,
        timers: Timers = DEFAULT_TIMERS,
        outbox: list[tuple[bytes, object]] | None = None,
        *,
        key: _Key | None = None,
    ) -> None:
        super().__init__(request, addr, reliable, now, timers, outbox, key=key)
        self.state = S.TRYING

    def _send_final(self, response: SipResponse, now: float) -> list[Event]:
        # §17.2.2: Timer J = 64*T1 on unreliable transports, zero otherwise.
        self._transmit(response)
        self._arm(I.TIMER_J, 0.0 if self.reliable else self.timers.timeout, now)
        return []


_NIST = NonInviteServerTransaction
NonInviteServerTransaction._transitions = {
    (S.TRYING, I.RECV_REQUEST): (_NIST._ignore, S.TRYING),
    (S.TRYING, I.SEND_1XX): (_NIST._send_provisional, S.PROCEEDING),
    (S.TRYING, I.SEND_2XX): (_NIST._send_final, S.COMPLETED),
    (S.TRYING, I.SEND_300_699): (_NIST._send_final, S.COMPLETED),
    (S.TRYING, I.TRANSPORT_ERROR): (_NIST._transport_failed, S.TERMINATED),
    (S.PROCEEDING, I.RECV_REQUEST): (_NIST._resend_last, S.PROCEEDING),
    (S.PROCEEDING, I.SEND_1XX): (_NIST._send_provisional, S.PROCEEDING),
    (S.PROCEEDING, I.SEND_2XX): (_NIST._send_final, S.COMPLETED),
    (S.PROCEEDING, I.SEND_300_699): (_NIST._send_final, S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): (_NIST._transport_failed, S.TERMINATED),
    (S.COMPLETED, I.RECV_REQUEST): (_NIST._resend_last, S.COMPLETED),
    (S.COMPLETED, I.TIMER_J): (_NIST._ignore, S.TERMINATED),
    (S.COMPLETED, I.TRANSPORT_ERROR): (_NIST._transport_failed, S.TERMINATED),
}
NonInviteServerTransaction._state_timers = {
    S.TRYING: frozenset(),
    S.PROCEEDING: frozenset(),
    S.COMPLETED: frozenset({I.TIMER_J}),
    S.TERMINATED: frozenset(),
}

ClientTransaction = Union[InviteClientTransaction, NonInviteClientTransaction]
ServerTransaction = Union[InviteServerTransaction, NonInviteServerTransaction]
Transaction = Union[ClientTransaction, ServerTransaction]


# ---------------------------------------------------------------- the layer


class TransactionLayer:
    """All the transactions of one endpoint, matched, timed and drained.

    :param timers: the timer values every new transaction uses.

    Terminated transactions leave the layer at once (``len(layer)`` counts
    the live ones). Timers live in one heap of ``(deadline, seq,
    transaction)``; an entry is stale when ``seq`` is no longer the
    transaction's latest, and stale entries are skipped when they reach the
    top (and swept when they outnumber live ones four to one).
    """

    def __init__(self, timers: Timers = DEFAULT_TIMERS) -> None:
        self.timers = timers
        self._client: dict[_Key, ClientTransaction] = {}
        self._server: dict[_Key, ServerTransaction] = {}
        # RFC 2543 INVITE server transactions, by the fields an ACK shares.
        self._ack_2543: dict[_Key, InviteServerTransaction] = {}
        self._outbox: list[tuple[bytes, object]] = []
        self._heap: list[tuple[float, int, _Transaction]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._client) + len(self._server)

    @property
    def server_count(self) -> int:
        """How many server transactions are live (the table a peer grows)."""
        return len(self._server)

    def matches_server(self, request: SipRequest) -> bool:
        """Whether ``request`` (not an ACK) is a retransmission of a live
        server transaction's request, or a CANCEL of a live INVITE server
        transaction (RFC 3261 §17.2.3, §9.2): the requests that create no
        new transaction-table entry beyond what their INVITE brought.

        The transport asks this before :meth:`receive` to answer a request
        statelessly (a 481 to a CANCEL of nothing, a 503 when the table is
        full) without creating a transaction.
        """
        key = _server_key(request, request.method)
        if key in self._server:
            return True
        if request.method == "CANCEL":
            return isinstance(self._server.get(key[:-1] + ("INVITE",)), InviteServerTransaction)
        return False

    # ------------------------------------------------------------ input

    def receive(
        self, msg: SipRequest | SipResponse, addr: object, reliable: bool, now: float
    ) -> list[Event]:
        """Route an incoming (parsed and validated) message.

        :param addr: where it came from, kept as a new server transaction's
            ``addr``: responses are queued to it, so give what the transport
            needs to reach the sender (RFC 3261 §18.2.2, RFC 3581).
        :param reliable: the transport of a new server transaction.
        """
        if isinstance(msg, SipResponse):
            tx = self._client.get(client_transaction_key(msg))
            if tx is None:
                return [StrayResponse(msg, addr)]
            return tx.receive_response(msg, now)
        return self._receive_request(msg, addr, reliable, now)

    def _receive_request(
        self, request: SipRequest, addr: object, reliable: bool, now: float
    ) -> list[Event]:
        method = request.method
        key = _server_key(request, "INVITE" if method == "ACK" else method)
        rfc2543 = len(key) == 7  # the fallback's fields: no z9hG4bK branch
        server: ServerTransaction | None
        if method == "ACK":
            if rfc2543:
                # §17.2.3: the To tag must be the one of our final response.
                server = self._ack_2543.get(_ack_key_2543(request))
                if server is not None and server.response_to_tag != request.to.tag:
                    server = None
            else:
                server = self._server.get(key)
            if server is None:
                return [RequestReceived(request, addr, None)]
            return server.receive_request(request, now)
        server = self._server.get(key)
        if server is not None:
            return server.receive_request(request, now)  # a retransmission
        if method == "INVITE":
            invite = InviteServerTransaction(
                request, addr, reliable, now, self.timers, self._outbox, key=key
            )
            self._add_server(invite)
            if rfc2543:
                self._ack_2543[_ack_key_2543(request)] = invite
            return [RequestReceived(request, addr, invite)]
        nist = NonInviteServerTransaction(
            request, addr, reliable, now, self.timers, self._outbox, key=key
        )
        self._add_server(nist)
        if method == "CANCEL":
            # §9.2: the transaction being cancelled matches with the method
            # taken as the original's; only INVITE is worth cancelling.
            target = self._server.get(key[:-1] + ("INVITE",))
            return [
                CancelReceived(
                    request,
                    addr,
                    nist,
                    target if isinstance(target, InviteServerTransaction) else None,
                )
            ]
        return [RequestReceived(request, addr, nist)]

    def _add_server(self, tx: ServerTransaction) -> None:
        tx._layer = self
        self._server[tx.key] = tx
        self._reschedule(tx)

    # ------------------------------------------------------------ output

    def send_request(
        self, request: SipRequest, addr: object, reliable: bool, now: float
    ) -> ClientTransaction:
        """Start a client transaction: INVITE client for INVITE, else non-INVITE.

        The request must carry its top Via with a branch (the transport
        adds Via). ACK is not sent in a transaction: use
        :meth:`send_stateless`.

        :raises LocalProtocolError: for ACK, a missing branch, or a branch
            and method that a live client transaction already uses.
        """
        method = request.method
        if method == "ACK":
            raise LocalProtocolError("ACK is sent without a transaction: use send_stateless()")
        key = client_transaction_key(request)
        if not key[0]:
            raise LocalProtocolError("a request needs a top Via with a branch")
        if key in self._client:
            raise LocalProtocolError(f"a client transaction already uses branch {key[0]}")
        tx: ClientTransaction
        if method == "INVITE":
            tx = InviteClientTransaction(request, addr, reliable, now, self.timers, self._outbox, key=key)
        else:
            tx = NonInviteClientTransaction(request, addr, reliable, now, self.timers, self._outbox, key=key)
        tx._layer = self
        self._client[key] = tx
        self._reschedule(tx)
        return tx

    def send_response(
        self, transaction: ServerTransaction, response: SipResponse, now: float
    ) -> list[Event]:
        """Send a response through a server transaction of this layer."""
        return transaction.send_response(response, now)

    def send_stateless(self, message: SipMessage | bytes, addr: object) -> None:
        """Queue a message outside any transaction (an ACK to a 2xx, a 2xx
        retransmission after the transaction ended, a stateless error)."""
        data = message if isinstance(message, bytes) else message.to_bytes()
        self._outbox.append((data, addr))

    def handle_transport_error(self, transaction: Transaction, now: float) -> list[Event]:
        """Report a transport failure for a transaction (RFC 3261 §18.4)."""
        return transaction.handle_transport_error(now)

    def messages_to_send(self) -> list[tuple[bytes, object]]:
        """Drain the queue of ``(bytes, addr)`` of all transactions."""
        if not self._outbox:  # most flushes: nothing queued
            return []
        out = list(self._outbox)
        self._outbox.clear()
        return out

    # ------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """The earliest deadline of all transactions, or ``None``."""
        heap = self._heap
        while heap and heap[0][2]._heap_seq != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> list[Event]:
        """Fire every timer due at ``now``, in deadline order."""
        heap = self._heap
        events: list[Event] = []
        while heap and heap[0][0] <= now:
            _, seq, tx = heapq.heappop(heap)
            if tx._heap_seq != seq:
                continue  # stale entry
            tx._heap_seq = -1
            events += tx.handle_timer(now)  # re-schedules itself
        return events

    def _reschedule(self, tx: _Transaction) -> None:
        """Called by a transaction after each input it handled."""
        if tx.state is S.TERMINATED:
            self._forget(tx)
            return
        deadline = tx.get_timer()
        if deadline is None:
            tx._heap_seq = -1
            return
        if tx._heap_seq >= 0 and tx._heap_deadline == deadline:
            return
        self._seq += 1
        tx._heap_seq = self._seq
        tx._heap_deadline = deadline
        heap = self._heap
        heapq.heappush(heap, (deadline, self._seq, tx))
        if len(heap) > 64 and len(heap) > 4 * (len(self._client) + len(self._server)):
            # In place: handle_timer may be iterating over this very list.
            heap[:] = [entry for entry in heap if entry[2]._heap_seq == entry[1]]
            heapq.heapify(heap)

    def _forget(self, tx: _Transaction) -> None:
        tx._heap_seq = -1
        tx._layer = None
        # Keys are unique among live transactions: send_request refuses a
        # duplicate and a matching request never creates a second one.
        if isinstance(tx, _ClientTransaction):
            del self._client[tx.key]
            return
        del self._server[tx.key]
        # An RFC 2543 key has the seven fields of _server_key's fallback.
        if isinstance(tx, InviteServerTransaction) and len(tx.key) == 7:
            # Two RFC 2543 INVITEs may differ only in their To tag: the ACK
            # index then keeps the newer one.
            ack_key = _ack_key_2543(tx.request)
            if self._ack_2543.get(ack_key) is tx:
                del self._ack_2543[ack_key]


# ------------------------------------------------------------------ CANCEL


def create_cancel(invite: SipRequest) -> SipRequest:
    """Build the CANCEL for a request (RFC 3261 §9.1).

    Same Request-URI, Call-ID, From, To (tags included) and CSeq number as
    the request, with CSeq method CANCEL; a single Via equal to the
    request's top Via (so the CANCEL matches its transaction by branch);
    the request's Route headers; Max-Forwards 70.

    The CANCEL goes through its own client transaction to the same address
    as the INVITE. §9.1: send it only once the INVITE got a provisional
    response (its transaction is in PROCEEDING).
    """
    h = invite.headers
    items = [("Via", h.get("Via") or "")]
    items += [("Route", value) for value in h.get_all("Route")]
    items += [
        ("Max-Forwards", "70"),
        ("From", h.get("From") or ""),
        ("To", h.get("To") or ""),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.number} CANCEL"),
    ]
    return SipRequest("CANCEL", invite.uri_text, Headers(items))
