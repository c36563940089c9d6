"""SIP over UDP and TCP: sockets, the transaction layer's clock, and the
protections a server on a public address needs.

This is the aioquic ``asyncio/protocol.py`` of callbridge: the sans-IO
:class:`~engine.sip.transaction.TransactionLayer` decides, this module moves
bytes. One :class:`SipEndpoint` listens on UDP and TCP on the same port, for
each configured address (IPv4 and IPv6), feeds what arrives to the
transaction layer, sends what it queues, and keeps exactly one timer armed
(``loop.call_at``) for the earliest transaction deadline.

Before a request reaches the transaction layer the :class:`SecurityPolicy`
applies, in order: banned sources are dropped; datagrams over
``max_message`` are dropped (TCP input is bounded by the framer, and a
connection that sends no complete message within ``tcp_idle_timeout`` is
closed: the slow-loris defence); known scanner User-Agents are dropped;
out-of-dialog requests count against a per-source token bucket, and a source
over its rate is banned for ``ban_seconds``; a Request-URI longer than
``max_uri`` gets 414. Malformed requests get a stateless 400 (or 505, 416)
whose reason names the fault; malformed responses are dropped. Responses
always go back to the address and port the request came from (RFC 3581
rport; the top Via gets ``received`` and ``rport``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple

from ..directory import MemoryDirectory
from ..sip.errors import RemoteProtocolError
from ..sip.message import SipRequest, SipResponse, new_branch
from ..sip.parser import ParseError, StreamFramer, parse_message
from ..sip.headers import Via
from ..sip.transaction import (
    CancelReceived,
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    StrayResponse,
    Timers,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
)

__all__ = ["Peer", "SecurityPolicy", "SipEndpoint", "SCANNER_AGENTS"]

logger = logging.getLogger(__name__)

# User-Agent substrings of SIP scanners seen in the wild (lower case).
SCANNER_AGENTS = (
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipscan",
    "vaxsipuseragent",
    "iwar",
    "pplsip",
    "sundayddr",
    "smap",
)


class Peer(NamedTuple):
    """Where a message came from or goes to; hashable, used as the
    transaction layer's opaque address."""

    transport: str  # "UDP" or "TCP"
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


@dataclass
class SecurityPolicy:
    """Limits for a server on a public address (all on by default).

    :param rate: out-of-dialog requests per second allowed per source address.
    :param burst: how many may arrive at once before the rate applies.
    :param trusted: source addresses exempt from rate limiting and bans
        (a trunk, a load balancer, the benchmark's sipp).
    """

    max_message: int = 65535
    max_uri: int = 512
    rate: float = 50.0
    burst: int = 200
    ban_seconds: float = 60.0
    scanner_agents: tuple[str, ...] = SCANNER_AGENTS
    tcp_idle_timeout: float = 30.0
    max_tcp_connections: int = 2048
    trusted: frozenset[str] = field(default_factory=frozenset)


RequestHandler = Callable[[SipRequest, ServerTransaction | None, Peer], None]
CancelHandler = Callable[[SipRequest, ServerTransaction, ServerTransaction | None, Peer], None]
StrayHandler = Callable[[SipResponse, Peer], None]
ClientCallback = Callable[[SipResponse | None], None]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint, family_v6: bool) -> None:
        self.endpoint = endpoint
        self.v6 = family_v6
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        self.endpoint._on_datagram(self, data, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP error: %s", exc)


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.framer = StreamFramer(endpoint.policy.max_message)
        self.last_message = time.monotonic()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer("TCP", host, port)
        if not self.endpoint._tcp_opened(self):
            transport.close()

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        try:
            frames = self.framer.feed(data)
        except ParseError as exc:
            logger.info("closing TCP connection from %s: %s", self.peer.host, exc)
            self.transport.close()
            return
        for frame in frames:
            self.last_message = time.monotonic()
            if frame is None:
                self.transport.write(b"\r\n")  # RFC 5626 §3.5.1 pong
            else:
                self.endpoint._on_message_bytes(frame, self.peer, stream=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint._tcp_closed(self)
        if not self.closed.done():
            self.closed.set_result(None)


class SipEndpoint:
    """SIP on UDP and TCP for a list of local addresses, one port.

    :param on_request: called for each new request (with its server
        transaction; ``None`` for an ACK to a 2xx).
    :param on_cancel: called for a CANCEL (its own transaction and the INVITE
        transaction it cancels, or ``None``).
    :param on_stray_response: called for a response that matches no client
        transaction (a retransmitted 2xx that needs a new ACK).
    """

    def __init__(
        self,
        hosts: Iterable[str],
        port: int,
        *,
        on_request: RequestHandler,
        on_cancel: CancelHandler,
        on_stray_response: StrayHandler,
        policy: SecurityPolicy | None = None,
        directory: MemoryDirectory | None = None,
        timers: Timers | None = None,
        advertised_host: str | None = None,
    ) -> None:
        self.hosts = list(hosts)
        self.port = port
        self.policy = policy or SecurityPolicy()
        self.directory = directory or MemoryDirectory()
        self.layer = TransactionLayer(timers or Timers())
        self.on_request = on_request
        self.on_cancel = on_cancel
        self.on_stray_response = on_stray_response
        self.advertised_host = advertised_host
        self._udp: dict[str, _UdpProtocol] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._tcp: dict[tuple[str, int], _TcpProtocol] = {}
        self._client_cb: dict[ClientTransaction, ClientCallback] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self.stats = {"received": 0, "malformed": 0, "dropped": 0, "banned": 0, "sent": 0}

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP and TCP on every host; the port is shared (0 = pick one)."""
        loop = self._loop = asyncio.get_running_loop()
        try:
            for host in self.hosts:
                v6 = ":" in host
                transport, proto = await loop.create_datagram_endpoint(
                    lambda v6=v6: _UdpProtocol(self, v6), local_addr=(host, self.port)
                )
                if self.port == 0:
                    self.port = transport.get_extra_info("sockname")[1]
                self._udp[host] = proto
                server = await loop.create_server(
                    lambda: _TcpProtocol(self), host, self.port, reuse_address=True
                )
                self._servers.append(server)
        except OSError:
            await self.stop()
            raise
        self._idle_task = loop.create_task(self._reap_idle_tcp())

    async def stop(self) -> None:
        if self._idle_task:
            self._idle_task.cancel()
        if self._timer:
            self._timer.cancel()
        for proto in self._udp.values():
            if proto.transport:
                proto.transport.close()
        for server in self._servers:
            server.close()
        for conn in list(self._tcp.values()):
            if conn.transport:
                conn.transport.close()
        for server in self._servers:
            await server.wait_closed()
        self._udp.clear()
        self._servers.clear()

    @property
    def local_host(self) -> str:
        """The address we put in Via and Contact."""
        return self.advertised_host or self.hosts[0]

    def local_host_for(self, peer: Peer) -> str:
        """Our address in the family of ``peer`` (IPv6 peers get our IPv6 host)."""
        if self.advertised_host:
            return self.advertised_host
        want_v6 = ":" in peer.host
        for host in self.hosts:
            if (":" in host) == want_v6:
                return host
        return self.hosts[0]

    # -- receiving -------------------------------------------------------------

    def _on_datagram(self, proto: _UdpProtocol, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        if len(data) > self.policy.max_message:
            self.stats["dropped"] += 1
            return
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive
        self._on_message_bytes(data, Peer("UDP", addr[0], addr[1]), stream=False)

    def _on_message_bytes(self, data: bytes, peer: Peer, stream: bool) -> None:
        self.stats["received"] += 1
        policy = self.policy
        if peer.host not in policy.trusted and self.directory.is_banned(peer.host, time.monotonic()):
            self.stats["banned"] += 1
            return
        try:
            msg = parse_message(data, stream=stream)
        except ParseError as exc:
            self.stats["malformed"] += 1
            self._answer_malformed(exc, peer)
            return
        except Exception:  # a parser bug must never take the server down
            self.stats["malformed"] += 1
            logger.exception("parser failure on message from %s", peer.host)
            return
        now = time.monotonic()
        if isinstance(msg, SipRequest):
            if not self._admit(msg, peer, now):
                return
            try:
                top = msg.top_via
                top.params["received"] = peer.host
                if "rport" in top.params or peer.transport == "UDP":
                    top.params["rport"] = str(peer.port)
                msg.headers.remove_first("Via")
                msg.headers.prepend("Via", str(top))
            except RemoteProtocolError:
                return
            if len(msg.uri_text) > policy.max_uri:
                self._send_stateless(msg.create_response(414), peer)
                return
        try:
            events = self.layer.receive(msg, peer, peer.reliable, now)
        except RemoteProtocolError as exc:
            if isinstance(msg, SipRequest):
                self._send_stateless(msg.create_response(exc.status, _reason(str(exc))), peer)
            return
        self._dispatch(events)
        self._flush()

    def _admit(self, msg: SipRequest, peer: Peer, now: float) -> bool:
        policy = self.policy
        agent = msg.headers.get("User-Agent")
        if agent and policy.scanner_agents:
            lowered = agent.lower()
            if any(s in lowered for s in policy.scanner_agents):
                self.stats["dropped"] += 1
                return False
        if peer.host in policy.trusted or policy.rate <= 0:
            return True
        if msg.method in ("ACK", "CANCEL") or msg.to.tag is not None:
            return True  # in-dialog requests belong to calls already admitted
        if self.directory.hit(peer.host, now, rate=policy.rate, burst=policy.burst):
            return True
        self.directory.ban(peer.host, now + policy.ban_seconds)
        logger.warning(
            "banning %s for %.0f s: over %.0f requests/s", peer.host, policy.ban_seconds, policy.rate
        )
        self.stats["banned"] += 1
        return False

    def _answer_malformed(self, exc: ParseError, peer: Peer) -> None:
        partial = exc.partial
        if not exc.is_request or not isinstance(partial, SipRequest):
            return
        if partial.method == "ACK":
            return
        if not all(partial.headers.get(h) for h in ("Via", "From", "To", "Call-ID", "CSeq")):
            return
        response = partial.create_response(exc.status, _reason(str(exc)))
        self._send_stateless(response, peer)

    def _dispatch(self, events: list[object]) -> None:
        for event in events:
            try:
                if isinstance(event, ResponseReceived):
                    cb = self._client_cb.get(event.transaction)
                    if cb:
                        cb(event.response)
                elif isinstance(event, RequestReceived):
                    self.on_request(event.request, event.transaction, event.addr)
                elif isinstance(event, CancelReceived):
                    self.on_cancel(event.request, event.transaction, event.invite_transaction, event.addr)
                elif isinstance(event, StrayResponse):
                    self.on_stray_response(event.response, event.addr)
                elif isinstance(event, TransactionTimedOut):
                    cb = self._client_cb.get(event.transaction)  # type: ignore[arg-type]
                    if cb:
                        cb(None)
                elif isinstance(event, TransactionTerminated):
                    self._client_cb.pop(event.transaction, None)  # type: ignore[arg-type]
            except Exception:
                logger.exception("error handling %s", type(event).__name__)

    # -- sending ---------------------------------------------------------------

    def send_request(
        self, request: SipRequest, peer: Peer, on_response: ClientCallback
    ) -> ClientTransaction:
        """Send a request in a new client transaction.

        A top Via is added with a new branch and ``rport``. ``on_response``
        gets each response, and ``None`` when the transaction times out (408)
        or the transport fails.
        """
        self._add_via(request, peer)
        txn = self.layer.send_request(request, peer, peer.reliable, time.monotonic())
        self._client_cb[txn] = on_response
        self._flush()
        return txn

    def send_response(self, transaction: ServerTransaction, response: SipResponse) -> None:
        events = self.layer.send_response(transaction, response, time.monotonic())
        self._dispatch(events)
        self._flush()

    def send_ack(self, request: SipRequest, peer: Peer) -> None:
        """Send an ACK for a 2xx: no transaction (RFC 3261 §17.1.1.3)."""
        if not request.headers.get("Via"):
            self._add_via(request, peer)
        self._send_stateless(request, peer)

    def send_stateless(self, message: SipRequest | SipResponse, peer: Peer) -> None:
        """Send outside any transaction (2xx retransmissions by the UAS core)."""
        self._send_stateless(message, peer)

    def _add_via(self, request: SipRequest, peer: Peer) -> None:
        via = Via(
            peer.transport,
            self.local_host_for(peer),
            self.port,
            {"branch": new_branch(), "rport": None},
        )
        request.headers.prepend("Via", str(via))

    def _send_stateless(self, message: SipRequest | SipResponse, peer: Peer) -> None:
        self._transmit(message.to_bytes(), peer)

    def _flush(self) -> None:
        for data, peer in self.layer.messages_to_send():
            self._transmit(data, peer)  # type: ignore[arg-type]
        self._arm_timer()

    def _transmit(self, data: bytes, peer: Peer) -> None:
        self.stats["sent"] += 1
        if peer.transport == "UDP":
            proto = self._udp_for(peer)
            if proto is not None and proto.transport is not None:
                proto.transport.sendto(data, (peer.host, peer.port))
            return
        conn = self._tcp.get((peer.host, peer.port))
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(data)
            return
        if self._loop is not None:
            self._loop.create_task(self._connect_and_send(data, peer))

    def _udp_for(self, peer: Peer) -> _UdpProtocol | None:
        want_v6 = ":" in peer.host
        for host, proto in self._udp.items():
            if (":" in host) == want_v6:
                return proto
        return None

    async def _connect_and_send(self, data: bytes, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _TcpProtocol(self), peer.host, peer.port), 5.0
            )
        except (OSError, asyncio.TimeoutError) as exc:
            logger.info("TCP connect to %s:%s failed: %s", peer.host, peer.port, exc)
            return
        # The connection is registered under the peer's listening address so
        # that later requests to it reuse the connection.
        self._tcp[(peer.host, peer.port)] = proto
        if proto.transport is not None:
            proto.transport.write(data)

    def _tcp_opened(self, conn: _TcpProtocol) -> bool:
        if len(self._tcp) >= self.policy.max_tcp_connections:
            logger.warning("refusing TCP connection: %d open", len(self._tcp))
            return False
        assert conn.peer is not None
        if conn.peer.host not in self.policy.trusted and self.directory.is_banned(
            conn.peer.host, time.monotonic()
        ):
            return False
        self._tcp[(conn.peer.host, conn.peer.port)] = conn
        return True

    def _tcp_closed(self, conn: _TcpProtocol) -> None:
        for key, value in list(self._tcp.items()):
            if value is conn:
                del self._tcp[key]

    async def _reap_idle_tcp(self) -> None:
        """Close TCP connections that sent no whole message for a while."""
        while True:
            await asyncio.sleep(min(5.0, self.policy.tcp_idle_timeout / 2))
            limit = time.monotonic() - self.policy.tcp_idle_timeout
            for conn in list(self._tcp.values()):
                if conn.last_message < limit and conn.transport is not None:
                    conn.transport.close()

    # -- timers ----------------------------------------------------------------

    def _arm_timer(self) -> None:
        when = self.layer.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None and self._loop is not None:
            # time.monotonic() and loop.time() share a clock on Linux.
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        events = self.layer.handle_timer(time.monotonic())
        self._dispatch(events)
        self._flush()


def _reason(text: str) -> str:
    """A reason phrase safe to put on a status line."""
    return "".join(c if c.isprintable() else " " for c in text)[:100] or "Bad Request"
