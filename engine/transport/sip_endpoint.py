"""SIP over UDP, TCP and TLS: sockets, the transaction layer's clock, and
the protections a server on a public address needs.

This is the aioquic ``asyncio/protocol.py`` of callbridge: the sans-IO
:class:`~engine.sip.transaction.TransactionLayer` decides, this module moves
bytes. One :class:`SipEndpoint` listens on UDP and TCP on the same port, for
each configured address (IPv4 and IPv6), feeds what arrives to the
transaction layer, sends what it queues, and keeps exactly one timer armed
(``loop.call_at``) for the earliest transaction deadline.

SIP over TLS (RFC 3261 §26, RFC 5630) listens on its own port (5061) when a
server context is given, framed like TCP. An accepted TLS connection is
admitted (``max_tcp_per_source``) before its handshake, which must finish
within ``tls_handshake_timeout``. Outbound TLS verifies the server's
certificate against the name of the URI it was reached by
(:meth:`SipEndpoint.expect_tls_server`); a failure fails the transactions
bound there at once with a 503 whose reason names the TLS error. Stream
connections are kept per peer address, so responses and later requests go
back over the connection the peer opened (RFC 3261 §18.2.2, RFC 5923
``alias``).

Before a request reaches the transaction layer the admission policy
(:mod:`engine.transport.admission`: bans, scanners, per-source rates, the
stricter MESSAGE rate, stream connections per source) applies; datagrams over
``max_message`` are dropped (TCP input is bounded by the framer, and a
connection that sends no complete message within ``tcp_idle_timeout`` of
opening, or leaves a message unfinished that long, is closed: the
slow-loris defence; a quiet connection that carries calls stays open); a
Request-URI longer than ``max_uri`` gets 414. A CANCEL that matches no INVITE
transaction gets a stateless 481, and a new request while ``max_transactions``
server transactions are live gets a stateless 503: neither creates a
transaction. Each refusal is a security event (:mod:`engine.security_log`),
logged at most once per ``THROTTLE_PERIOD`` per source and kind. While
overloaded (:mod:`engine.transport.overload`: loop lag, receive-queue fill,
calls being set up, the RTP readers' backlog, the legs whose frames came
late, sampled every ``overload_probe`` seconds), a new INVITE gets a
stateless 503 decided from a look at its head before it is parsed
(:meth:`SipEndpoint._shed`), or is dropped; everything else, which finishes
the calls already accepted, is processed as always. Malformed requests get a stateless 400 (or 505, 416)
whose reason names the fault; malformed responses are dropped. Responses
always go back to the address and port the request came from (RFC 3581
rport; the top Via gets ``received`` and ``rport``).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import re
import socket
import ssl
import struct
import time
from typing import Callable, Iterable, NamedTuple, Sequence, cast

from engine.state.directory import Directory
from engine.security_log import security_event
from engine.transport.admission import SCANNER_AGENTS, Admission, SecurityPolicy, Verdict
from engine.media.jitterbuffer import late_buffers
from engine.transport.overload import OverloadDetector, OverloadLevel
from engine.transport.rtp_transport import SO_MEMINFO, rtp_backlog, watched_transports
from engine.sip.errors import RemoteProtocolError
from engine.sip.message import BRANCH_MAGIC, Headers, SipRequest, SipResponse, new_branch, new_tag
from engine.sip.parser import ParseError, StreamFramer, parse_message
from engine.sip.headers import Via, parse_via, split_header_values
from engine.sip.transaction import (
    CancelReceived,
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    StrayResponse,
    Timers,
    TransactionLayer,
    TransactionState,
    TransactionTerminated,
    TransactionTimedOut,
    TransportFailed,
)

__all__ = ["Peer", "SecurityPolicy", "SipEndpoint", "SCANNER_AGENTS", "UDP_READ_NOT_RELEASED", "loop_time",
           "request_source", "udp_queue_fill"]

logger = logging.getLogger(__name__)

#: Retry-After (seconds) of the stateless 503s this module sends.
RETRY_AFTER = 5

#: Linux ``SO_RCVBUFFORCE``: ``SO_RCVBUF`` beyond ``rmem_max`` (needs CAP_NET_ADMIN).
SO_RCVBUFFORCE = 33

#: The share of a UDP socket's receive buffer that Linux may go on counting
#: for datagrams already read (see :func:`udp_queue_fill`).
UDP_READ_NOT_RELEASED = 0.25


def udp_queue_fill(sock: socket.socket) -> tuple[float, int]:
    """What is certainly still queued in UDP socket ``sock``, a share (0-1)
    of its receive buffer, and the datagrams its kernel dropped on a full
    buffer (Linux ``SO_MEMINFO``).

    The kernel's count of the buffer's memory (``SK_MEMINFO_RMEM_ALLOC``,
    what ``/proc/net/udp`` shows as ``rx_queue``) is not what waits to be
    read: since Linux 4.13 a UDP socket moves its queue to a second,
    reader's queue in one go and gives back the memory of the datagrams
    read from it only once that queue is empty or a quarter of the buffer
    is owed (``udp_rmem_release``, its ``forward_deficit`` against
    ``forward_threshold = sk_rcvbuf >> 2``). Measured here (kernel 6.18, an
    8 MiB buffer): 400 datagrams queued and 399 read, with 100 more
    arrived, still counted as 500; the first memory came back after 911
    reads, a quarter of the buffer. A reader working through a backlog
    it has nearly drained is then counted up to a quarter fuller than it
    is, which is the whole of the overload detector's queue bound. So the
    quarter is taken off: the share returned is a lower bound of what is
    queued, never more than it (and no more than a quarter below it).

    :raises OSError: the system has no ``SO_MEMINFO`` (not Linux).
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36)
    values = struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    fill = 0.0
    if len(values) >= 2 and values[1]:
        fill = max(0.0, values[0] / values[1] - UDP_READ_NOT_RELEASED)
    return fill, values[8] if len(values) >= 9 else 0


# Header names of the quick 503 (RFC 3261 §7.3.3 compact forms included).
_QUICK_NAMES = {b"via": "via", b"v": "via", b"from": "from", b"f": "from", b"to": "to", b"t": "to",
                b"call-id": "call-id", b"i": "call-id", b"cseq": "cseq"}
#: What a keep-alive datagram is made of (RFC 5626 §4.4.1 CRLFs, and the
#: NULs and spaces some phones send).
_KEEPALIVE_BYTES = b"\r\n\x00 "
_BARE_RPORT = re.compile(rb";[ \t]*rport(?=[ \t]*(?:;|$))", re.IGNORECASE)


def loop_time() -> float:
    """The running loop's time (``time.monotonic`` on Linux), the default
    clock of the SIP path."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # no loop yet (construction, tests): the same clock
        return time.monotonic()


class Peer(NamedTuple):
    """Where a message came from or goes to; hashable, used as the
    transaction layer's opaque address."""

    transport: str  # "UDP", "TCP" or "TLS"
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


def request_source(request: SipRequest, peer: Peer) -> Peer:
    """Where ``request``'s sender is: the caller a trusted front proxy
    forwarded it for (:attr:`SipRequest.origin`), else ``peer``, the
    transport's source. Answers still go to ``peer``."""
    origin = request.origin
    return peer if origin is None else Peer(*origin)


def proxied_origin(request: SipRequest) -> tuple[str, str, int] | None:
    """The caller's address of a request a front proxy forwarded: the
    second Via, with the ``received`` and ``rport`` the proxy stamped on it
    (RFC 3261 §18.2.1, RFC 3581 §4), else its sent-by; ``None`` when it has
    one Via (the proxy's own request).

    :raises RemoteProtocolError: the second Via cannot be read (then nobody
        can tell who sent it: never taken for the proxy's own request).
    """
    texts = request.headers.get_all("Via")
    if len(texts) == 1 and "," not in texts[0]:
        return None
    values = [v for text in texts for v in split_header_values(text)]
    if len(values) < 2:
        return None
    via = parse_via(values[1])
    transport = via.transport.upper()
    host = via.params.get("received") or via.host.strip("[]")
    rport = via.params.get("rport")
    if rport and rport.isdigit() and 0 < int(rport) < 65536:
        port = int(rport)
    else:
        port = via.port or (5061 if transport == "TLS" else 5060)
    return (transport, host, port)


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


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand ``data`` to ``protocol`` as its transport would (the TLS
    protocols of asyncio and uvloop are buffered protocols)."""
    if hasattr(protocol, "buffer_updated"):
        protocol = cast(asyncio.BufferedProtocol, protocol)
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    else:
        cast(asyncio.Protocol, protocol).data_received(data)


class _TcpProtocol(asyncio.Protocol):
    """One stream connection, TCP or TLS (the framing is the same: RFC 3261
    §18.3 Content-Length).

    :param kind: ``"TCP"`` or ``"TLS"`` (the :class:`Peer` transport).
    :param server_tls: for an accepted TLS connection, the context of the
        handshake, started once the connection is admitted (so a handshake
        in progress holds one of its source's ``max_tcp_per_source`` slots,
        for at most ``tls_handshake_timeout``). Outbound TLS connections
        are made by ``create_connection(ssl=...)`` and arrive here done.
    """

    def __init__(self, endpoint: SipEndpoint, inbound: bool = False, kind: str = "TCP",
                 server_tls: ssl.SSLContext | None = None) -> None:
        self.endpoint = endpoint
        #: Accepted from a peer (counted against ``max_tcp_per_source``), not opened by us.
        self.inbound = inbound
        self.kind = kind
        self._server_tls = server_tls
        #: Whether :meth:`SipEndpoint._tcp_opened` counted it under its host.
        self.counted = False
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        #: The address an RFC 5923 ``alias`` Via parameter added for it.
        self.alias: Peer | None = None
        self.framer = StreamFramer(endpoint.policy.max_message)
        self.opened = endpoint.clock()
        self.messages = 0  # whole SIP messages received (keep-alives not counted)
        self.partial_since: float | None = None  # when the unfinished message began
        self.closed = asyncio.get_running_loop().create_future()
        self._handshake: asyncio.Task[None] | None = None
        # Data decrypted before _accept_tls resumed (the handshake is over,
        # but self.transport is still the raw one): fed once it is not.
        self._early: list[bytes] = []
        # TLS records (the ClientHello) read before start_tls took the
        # stream: uvloop starts reading after connection_made returns, so
        # its pause_reading() there does nothing. Handed to the TLS layer.
        self._early_records: list[bytes] = []
        #: Whether the server side of a TLS handshake is still to finish.
        self.handshaking = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer(self.kind, host, port)
        if not self.endpoint._tcp_opened(self):
            transport.close()
            return
        if self._server_tls is not None:
            # Nothing may reach data_received before the handshake takes
            # the stream (start_tls pauses too, but only once it runs).
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.handshaking = True
            self._handshake = asyncio.get_running_loop().create_task(
                self._accept_tls(self._server_tls))

    async def _accept_tls(self, context: ssl.SSLContext) -> None:
        """RFC 3261 §26.3.1: the server side of the TLS handshake, bounded
        by ``tls_handshake_timeout``; a failed one closes the connection."""
        raw = self.transport
        assert raw is not None and self.peer is not None
        loop = asyncio.get_running_loop()
        starting = loop.create_task(loop.start_tls(
            raw, self, context, server_side=True,
            ssl_handshake_timeout=self.endpoint.policy.tls_handshake_timeout))
        try:
            # start_tls swaps the transport's protocol for its TLS one at
            # once and schedules that protocol's connection_made and the
            # resumed reading; this step runs after the swap and before
            # those (callbacks run in order), so the records already read
            # reach the TLS layer first (it buffers them until it starts).
            await asyncio.sleep(0)
            if self._early_records and raw.get_protocol() is not self:
                _feed(raw.get_protocol(), b"".join(self._early_records))
            self._early_records.clear()
            tls = await starting
        except asyncio.CancelledError:
            starting.cancel()
            raise
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            self.endpoint._tls_accept_failed(self, exc)
            raw.close()
            self.connection_lost(None)
            return
        if tls is None:  # the connection went away during the handshake
            self.connection_lost(None)
            return
        self.transport = tls
        self.handshaking = False
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        if self.handshaking:
            if self.transport.get_protocol() is self:  # not yet start_tls's: still encrypted
                self._early_records.append(data)
            else:
                self._early.append(data)
            return
        try:
            frames = self.framer.feed(data)
        except ParseError as exc:
            logger.info("closing %s connection from %s: %s", self.kind, self.peer.host, exc)
            self.transport.close()
            return
        for frame in frames:
            if frame is None:
                self.transport.write(b"\r\n")  # RFC 5626 §3.5.1 pong
            else:
                self.messages += 1
                self.endpoint._on_message_bytes(frame, self.peer, stream=True)
        if not self.framer.buffered:
            self.partial_since = None
        elif frames or self.partial_since is None:
            self.partial_since = self.endpoint.clock()  # a new message has begun

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
    :param dialog_exists: tells whether a request with a To tag belongs to a
        dialog we have. Such requests are exempt from the rate limit; with
        this hook, made-up To tags (which cost a 481 and a transaction each)
        are counted like new requests.
    :param tls_context: the server context of SIP over TLS (RFC 3261 §26.2);
        with it, a TLS listener on ``tls_port`` (0 = pick one) on every host.
    :param tls_client_context: how the TLS servers we connect to are
        verified when :meth:`expect_tls_server` named no other context;
        default: the system's CAs, host name checked.
    :param clock: the time of transactions, admission (rates, bans) and
        connection idleness; default :func:`loop_time`. The engine passes
        its user agent's, so the SIP path reads one clock.
    """

    def __init__(
        self,
        hosts: Iterable[str],
        port: int,
        *,
        on_request: RequestHandler,
        on_cancel: CancelHandler,
        on_stray_response: StrayHandler,
        directory: Directory,
        policy: SecurityPolicy | None = None,
        timers: Timers | None = None,
        advertised_host: str | None = None,
        dialog_exists: Callable[[SipRequest], bool] | None = None,
        tls_port: int = 5061,
        tls_context: ssl.SSLContext | None = None,
        tls_client_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.hosts = list(hosts)
        self.clock: Callable[[], float] = clock if clock is not None else loop_time
        self.port = port
        self.policy = policy or SecurityPolicy()
        self.directory = directory
        self.admission = Admission(self.policy, directory)
        self.layer = TransactionLayer(timers or Timers())
        self.on_request = on_request
        self.on_cancel = on_cancel
        self.on_stray_response = on_stray_response
        self.advertised_host = advertised_host
        self.dialog_exists = dialog_exists
        self._udp: dict[str, _UdpProtocol] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self.tls_port = tls_port
        self.tls_context = tls_context
        self._tls_client_context = tls_client_context
        #: Stream connections by the address they reach (the peer's source
        #: address, the listening address we connected to, an RFC 5923
        #: alias): responses and requests to a peer reuse its connection.
        self._tcp: dict[Peer, _TcpProtocol] = {}
        #: The connections themselves (``_tcp`` may name one twice).
        self._conns: set[_TcpProtocol] = set()
        #: TLS servers we may connect to: the name their certificate must
        #: carry and the context that verifies it, by address.
        self._tls_servers: dict[tuple[str, int], tuple[str, ssl.SSLContext]] = {}
        #: Why the transport to a peer failed, while its transactions fail.
        self._failures: dict[object, str] = {}
        self._client_cb: dict[ClientTransaction, ClientCallback] = {}
        self._peers: dict[tuple[object, ...], Peer] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle_task: asyncio.Task[None] | None = None
        # TCP connections being opened: what waits to be sent on each.
        self._connecting: dict[Peer, list[bytes]] = {}
        self._connect_tasks: set[asyncio.Task[None]] = set()
        self.stats = {"received": 0, "malformed": 0, "dropped": 0, "banned": 0, "sent": 0,
                      "refused": 0, "overload_refused": 0, "overload_dropped": 0}
        #: Whether new INVITEs are taken (:mod:`engine.transport.overload`).
        self.overload = OverloadDetector(self.policy.overload)
        #: Where the probe reads the loop lag: how late its callback ran.
        #: Tests replace it to force a lag.
        self.lag_source: Callable[[float], float] | None = None
        #: INVITE server transactions of new calls not answered finally yet.
        self._setting_up: set[InviteServerTransaction] = set()
        self._probe_handle: asyncio.TimerHandle | None = None
        self._probe_due = 0.0
        self._probes = 0
        #: What the kernel gave each UDP socket for its receive buffer.
        self.udp_receive_buffers: dict[str, int] = {}
        self._meminfo = True
        self._episode = {"overload_refused": 0, "overload_dropped": 0}

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP and TCP on every host; the port is shared (0 = pick one).

        With port 0 the UDP socket of the first host picks the port, and the
        others must get the same one; if one of them is taken (another
        program's TCP connection may use that number), another is tried.
        """
        loop = self._loop = asyncio.get_running_loop()
        wanted, wanted_tls = self.port, self.tls_port
        attempts = 20 if wanted == 0 or wanted_tls == 0 else 1
        for attempt in range(attempts):
            self.port, self.tls_port = wanted, wanted_tls
            try:
                await self._bind(loop)
                break
            except OSError as exc:
                await self.stop()
                if attempt == attempts - 1 or exc.errno != errno.EADDRINUSE:
                    raise
                logger.debug("port %d taken on another socket: trying another", self.port)
        self._idle_task = loop.create_task(self._reap_idle_tcp())
        if self.policy.overload_probe > 0:
            self._probe_due = loop.time() + self.policy.overload_probe
            self._probe_handle = loop.call_at(self._probe_due, self._probe)

    async def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        for host in self.hosts:
            transport, proto = await loop.create_datagram_endpoint(
                functools.partial(_UdpProtocol, self, ":" in host), local_addr=(host, self.port)
            )
            self._udp[host] = proto
            self._size_receive_buffer(host, transport)
            if self.port == 0:
                self.port = transport.get_extra_info("sockname")[1]
            server = await loop.create_server(
                lambda: _TcpProtocol(self, inbound=True), host, self.port, reuse_address=True
            )
            self._servers.append(server)
            if self.tls_context is not None:
                context = self.tls_context
                # The handshake starts once the connection is admitted
                # (_TcpProtocol._accept_tls), not in create_server(ssl=).
                server = await loop.create_server(
                    lambda: _TcpProtocol(self, inbound=True, kind="TLS", server_tls=context),
                    host, self.tls_port, reuse_address=True,
                )
                self._servers.append(server)
                if self.tls_port == 0:
                    self.tls_port = server.sockets[0].getsockname()[1]

    def _size_receive_buffer(self, host: str, transport: asyncio.BaseTransport) -> None:
        """Ask for ``udp_receive_buffer`` bytes of receive buffer: a burst of
        datagrams waits there while the loop is busy, and what overflows
        it is lost (an ACK among them ends its call, RFC 3261 §13.3.1.4).
        ``SO_RCVBUFFORCE`` first (beyond ``net.core.rmem_max``, with
        CAP_NET_ADMIN), else ``SO_RCVBUF``; what the kernel gave is read
        back, logged and kept in :attr:`udp_receive_buffers`."""
        sock = transport.get_extra_info("socket")
        wanted = self.policy.udp_receive_buffer
        if sock is None:
            return
        try:
            if wanted > 0:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
            got = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        except OSError as exc:
            logger.debug("SIP UDP %s: cannot size the receive buffer: %s", host, exc)
            return
        self.udp_receive_buffers[host] = got
        logger.debug("SIP UDP %s: receive buffer %d bytes (asked %d; the kernel doubles what it"
                     " grants, capped by net.core.rmem_max)", host, got, wanted)

    def _receive_queues(self) -> tuple[float, int]:
        """The fill (0-1) of the fullest UDP receive buffer and the
        datagrams the kernel dropped on full buffers, summed (Linux
        ``SO_MEMINFO``; ``(0.0, 0)`` where it is not available)."""
        fill, drops = 0.0, 0
        if not self._meminfo:
            return fill, drops
        for proto in self._udp.values():
            sock = proto.transport.get_extra_info("socket") if proto.transport is not None else None
            if sock is None:
                continue
            try:
                one, dropped = udp_queue_fill(sock)
            except OSError:
                self._meminfo = False
                return 0.0, 0
            fill = max(fill, one)
            drops += dropped
        return fill, drops

    def receive_drops(self) -> int:
        """Datagrams the kernel dropped on the SIP UDP sockets' full
        receive buffers since they opened (0 where unknown)."""
        return self._receive_queues()[1]

    def _probe(self) -> None:
        """Sample the overload signals (every ``overload_probe`` seconds):
        how late this callback ran, the receive queues, the calls being set
        up; log the start and the end of an overload episode once each."""
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        lag = now - self._probe_due
        if self.lag_source is not None:
            lag = self.lag_source(lag)
        self._probes += 1
        if self._probes % 20 == 0 and self._setting_up:
            # Answered through a path that bypassed send_response: forget them.
            live = (TransactionState.TRYING, TransactionState.PROCEEDING)
            self._setting_up = {t for t in self._setting_up if t.state in live}
        queue, _ = self._receive_queues()
        media = watched_transports()
        change = self.overload.sample(now, lag=lag, queue=queue, setup_calls=len(self._setting_up),
                                      media_backlog=rtp_backlog(media) or 0, late_legs=late_buffers(),
                                      legs=len(media))
        if change > 0:
            for key in self._episode:
                self._episode[key] = self.stats[key]
            fields = self.overload.describe()
            logger.warning("overload: new INVITEs refused (%s)",
                           " ".join(f"{k}={v}" for k, v in fields.items()))
            security_event("overload", None, **fields)
        elif change < 0:
            logger.warning("overload over: %d new INVITEs refused with 503, %d dropped",
                           self.stats["overload_refused"] - self._episode["overload_refused"],
                           self.stats["overload_dropped"] - self._episode["overload_dropped"])
        self._probe_due = now + self.policy.overload_probe
        self._probe_handle = loop.call_at(self._probe_due, self._probe)

    async def stop(self) -> None:
        if self._probe_handle is not None:
            self._probe_handle.cancel()
            self._probe_handle = None
        if self._idle_task:
            self._idle_task.cancel()
        for task in list(self._connect_tasks):
            task.cancel()
        if self._timer:
            self._timer.cancel()
        for proto in self._udp.values():
            if proto.transport:
                proto.transport.close()
        for server in self._servers:
            server.close()
        for conn in list(self._conns):
            if conn.transport:
                conn.transport.close()
        for server in self._servers:
            await server.wait_closed()
        self._udp.clear()
        self._servers.clear()

    def port_for(self, transport: str) -> int:
        """Our port for ``transport`` (the TLS port for TLS)."""
        return self.tls_port if transport == "TLS" else self.port

    def has_connection(self, peer: Peer) -> bool:
        """Whether an open stream connection reaches ``peer`` (a phone's flow)."""
        conn = self._tcp.get(peer)
        return conn is not None and conn.transport is not None and not conn.transport.is_closing()

    def expect_tls_server(self, peer: Peer, server_hostname: str,
                          context: ssl.SSLContext | None = None) -> None:
        """Before a request goes to ``peer`` over TLS: the name its
        certificate must carry (the host of the URI, RFC 5922 §7.2, not the
        address it resolved to) and the context that verifies it (default:
        ``tls_client_context``)."""
        if len(self._tls_servers) >= 4096:
            self._tls_servers.clear()
        self._tls_servers[(peer.host, peer.port)] = (server_hostname, context or self._client_context())

    def _client_context(self) -> ssl.SSLContext:
        if self._tls_client_context is None:
            self._tls_client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        return self._tls_client_context

    @property
    def local_host(self) -> str:
        """The address we put in Via and Contact."""
        return self.advertised_host or self.hosts[0]

    def listen_host_for(self, peer: Peer) -> str:
        """The address we listen on in the family of ``peer`` (IPv6 peers
        get our IPv6 host; the first host when we have none of theirs)."""
        want_v6 = ":" in peer.host
        for host in self.hosts:
            if (":" in host) == want_v6:
                return host
        return self.hosts[0]

    def local_host_for(self, peer: Peer) -> str:
        """Our address for ``peer`` as we write it in Via and Contact: the
        advertised host, else the listen address of its family."""
        return self.advertised_host or self.listen_host_for(peer)

    # -- receiving -------------------------------------------------------------

    def _on_datagram(self, proto: _UdpProtocol, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        if len(data) > self.policy.max_message:
            self.stats["dropped"] += 1
            return
        if data[:1] in _KEEPALIVE_BYTES and not data.strip(_KEEPALIVE_BYTES):
            return  # keep-alive (a message begins with a letter: no copy of it to tell)
        # One Peer per source address, shared: a Peer is kept by each of the
        # tens of thousands of transactions that outlive their call.
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= 4096:
                self._peers.clear()
            peer = self._peers[addr] = Peer("UDP", addr[0], addr[1])
        self._on_message_bytes(data, peer, stream=False)

    def _on_message_bytes(self, data: bytes, peer: Peer, stream: bool) -> None:
        received_at = time.monotonic()  # the INVITE-to-CallAlerting latency starts here
        now = self.clock()
        self.stats["received"] += 1
        policy = self.policy
        if self.admission.is_banned(peer.host, now):
            self.stats["banned"] += 1
            return
        if self.overload.level and data[:7] == b"INVITE " and self._shed(data, peer):
            return
        try:
            msg = parse_message(data, stream=stream)
        except ParseError as exc:
            self.stats["malformed"] += 1
            self._answer_malformed(exc, peer, now)
            return
        except Exception:  # a parser bug must never take the server down
            self.stats["malformed"] += 1
            logger.exception("parser failure on message from %s", peer.host)
            return
        if isinstance(msg, SipRequest):
            msg.received_at = received_at
            source = peer
            if peer.host in policy.proxies:
                try:
                    origin = msg.origin = proxied_origin(msg)
                except RemoteProtocolError as exc:
                    if msg.method != "ACK":
                        self._send_stateless(msg.create_response(400, _reason(f"Via below the proxy's: {exc}")),
                                             peer)
                    return
                if origin is not None:
                    source = Peer(*origin)
                    if self.admission.is_banned(source.host, now):
                        self.stats["banned"] += 1
                        return
            if self.overload.level and msg.method == "INVITE" and self._is_new_invite(msg):
                # What the quick look of _shed could not decide (folded
                # lines, an RFC 2543 branch, a malformed head).
                if self.overload.level is OverloadLevel.DROP:
                    self.stats["overload_dropped"] += 1
                elif self.admission.count(source.host, now):
                    self.stats["overload_refused"] += 1
                    response = msg.create_response(503, to_tag=new_tag())
                    response.headers.add("Retry-After", str(RETRY_AFTER))
                    self._send_stateless(response, peer)
                else:
                    self.stats["banned"] += 1
                return
            if not self._admit(msg, peer, now, source):
                return
            try:
                top = msg.top_via
                if msg.method != "ACK":  # nothing answers an ACK: no response reads these
                    top.params["received"] = peer.host
                    if "rport" in top.params or peer.transport == "UDP":
                        top.params["rport"] = str(peer.port)
                    text = str(top)
                    msg.headers.replace_first("Via", text)
                    msg.remember(parse_via, text, top)  # no parsing back what we wrote
            except RemoteProtocolError:
                return
            if stream and "alias" in top.params:
                self._add_alias(peer, top)
            if len(msg.uri_text) > policy.max_uri:
                if msg.method != "ACK":
                    self._send_stateless(msg.create_response(414), peer)
                return
            if msg.method != "ACK" and not self._fits(msg, peer, now, source):
                return
        try:
            events = self.layer.receive(msg, peer, peer.reliable, now)
        except RemoteProtocolError as exc:
            if isinstance(msg, SipRequest) and msg.method != "ACK":
                self._send_stateless(msg.create_response(exc.status, _reason(str(exc))), peer)
            return
        self._dispatch(events)
        self._flush()

    def _is_new_invite(self, msg: SipRequest) -> bool:
        """Whether an INVITE starts a new call: no To tag, and not a
        retransmission of a live INVITE server transaction."""
        try:
            return msg.to.tag is None and not self.layer.matches_server(msg)
        except RemoteProtocolError:
            return False  # malformed: the layer answers it

    def _shed(self, data: bytes, peer: Peer) -> bool:
        """While overloaded, refuse (or drop) a new out-of-dialog INVITE
        from a look at its head, before it is parsed and validated.

        A new INVITE is one without a To tag (RFC 3261 §12.1: a request
        within a dialog carries the remote tag) that matches no live
        server transaction (a retransmission goes to its transaction,
        which answers it as before). In :attr:`OverloadLevel.DROP` it is
        dropped unread but for its To header; in ``REFUSE`` it gets a 503
        with Retry-After (RFC 3261 §21.5.4, §20.33) built from its own
        Via, From, To, Call-ID and CSeq lines as §8.2.6 wants (a To tag
        added), the top Via given ``received`` and ``rport`` (RFC 3581
        §4), sent statelessly: no transaction, no dialog, no session.
        Like every stateless answer it counts against the source's rate
        (never a reflector). Anything this look cannot decide (a folded
        line, a missing header, a To with anything like a tag, a branch
        without the RFC 3261 magic cookie) goes on to the full parse,
        where :meth:`_is_new_invite` decides.

        :returns: whether the datagram was dealt with here.
        """
        end = data.find(b"\r\n\r\n")
        if end < 0:
            end = data.find(b"\n\n")
            if end < 0:
                return False
        found: dict[str, bytes] = {}
        vias: list[bytes] = []
        for line in data[:end].split(b"\n")[1:]:
            line = line.rstrip(b"\r")
            if line[:1] in (b" ", b"\t"):
                return False  # folded (RFC 3261 §7.3.1): the parser knows
            name, colon, value = line.partition(b":")
            key = _QUICK_NAMES.get(name.rstrip(b" \t").lower())
            if key is None:
                continue
            if key == "via":
                vias.append(line)
            elif key not in found:
                if key == "to" and b";tag=" in value.replace(b" ", b"").replace(b"\t", b"").lower():
                    return False  # in a dialog (or looks it): processed in full
                found[key] = line
        if not vias or len(found) < 4:
            return False
        if self.overload.level is OverloadLevel.DROP:
            self.stats["overload_dropped"] += 1
            return True
        top_line = vias[0]
        try:
            top_text = top_line.partition(b":")[2].decode("utf-8", errors="surrogateescape")
            top = parse_via(split_header_values(top_text)[0])
            if top.branch is None or not top.branch.startswith(BRANCH_MAGIC):
                return False
            probe = SipRequest("INVITE", "", Headers([("Via", str(top))]))
            if self.layer.matches_server(probe):
                return False  # a retransmission: its transaction answers
        except RemoteProtocolError:
            return False
        now = self.clock()
        if not self.admission.count(peer.host, now):
            self.stats["banned"] += 1
            return True
        if b"," not in top_line:
            top_line = _BARE_RPORT.sub(b"", top_line) + b";received=%s;rport=%d" % (
                peer.host.encode(), peer.port)
        head = [b"SIP/2.0 503 Service Unavailable", top_line, *vias[1:], found["from"],
                found["to"] + b";tag=" + new_tag().encode(), found["call-id"], found["cseq"],
                b"Retry-After: %d" % RETRY_AFTER, b"Content-Length: 0", b"", b""]
        self.stats["overload_refused"] += 1
        self._transmit(b"\r\n".join(head), peer)
        return True

    def _add_alias(self, peer: Peer, via: Via) -> None:
        """RFC 5923 §5: the connection ``peer`` opened also reaches its
        Via sent-by, so requests to the peer's listening port go back over
        it rather than over a new connection (the only way to reach a phone
        behind NAT, and a TLS phone that has no certificate to accept with).

        Honoured only when the sent-by host is the connection's own source
        address: an alias could otherwise capture another host's traffic
        (RFC 5923 §11; we do not authenticate clients' certificates, which
        is how the RFC lets a name be aliased). One alias per connection,
        never displacing another live connection.
        """
        port = via.port if via.port is not None else (5061 if peer.transport == "TLS" else 5060)
        if port == peer.port or via.host.strip("[]").lower() != peer.host.lower():
            return
        conn = self._tcp.get(peer)
        if conn is None:
            return
        key = Peer(peer.transport, peer.host, port)
        if key == conn.alias:
            return
        other = self._tcp.get(key)
        if other is not None and other is not conn and other.transport is not None \
                and not other.transport.is_closing():
            return
        if conn.alias is not None and self._tcp.get(conn.alias) is conn:
            del self._tcp[conn.alias]
        conn.alias = key
        self._tcp[key] = conn

    def _admit(self, msg: SipRequest, peer: Peer, now: float, source: Peer) -> bool:
        """Apply the admission policy to a request from ``source`` (``peer``,
        or the caller a front proxy forwarded it for); ``False``: drop or
        refuse it (a refusal is answered here, to ``peer``)."""
        verdict = self.admission.check_request(msg, source.host, now, self._belongs)
        if verdict is Verdict.ADMIT:
            return True
        if verdict is Verdict.DROP:
            self.stats["dropped"] += 1
        elif verdict is Verdict.BAN:
            self.stats["banned"] += 1
        else:
            self._refuse(msg, peer, now, "rate_limited", source, what="MESSAGE")
        return False

    def _belongs(self, msg: SipRequest) -> bool:
        """Whether a CANCEL matches a live INVITE transaction, or a request
        with a To tag a dialog we have (any, without ``dialog_exists``)."""
        if msg.method == "CANCEL":
            try:
                return self.layer.matches_server(msg)
            except RemoteProtocolError:
                return False
        return self.dialog_exists is None or self.dialog_exists(msg)

    def _fits(self, msg: SipRequest, peer: Peer, now: float, source: Peer) -> bool:
        """Whether a request (not an ACK) may go to the transaction layer.

        A retransmission, or a CANCEL of a live INVITE, reaches its
        transaction whatever the table's size. A CANCEL that matches no
        INVITE transaction gets 481 (RFC 3261 §9.2: the UAS "SHOULD respond
        to the CANCEL with a 481") sent statelessly: a retransmission of it
        gets another 481, so nothing needs to be remembered, where a
        transaction would hold it for Timer J (64*T1, 32 s on UDP). Any
        other new request beyond ``max_transactions`` live server
        transactions gets a stateless 503 with Retry-After.
        """
        layer = self.layer
        try:
            if layer.matches_server(msg):
                return True
        except RemoteProtocolError:
            return True  # malformed: the layer answers it
        if msg.method == "CANCEL":
            self._send_stateless(msg.create_response(481, to_tag=new_tag()), peer)
            return False
        if layer.server_count >= self.policy.max_transactions:
            self._refuse(msg, peer, now, "cap_reached", source, cap="transactions")
            return False
        return True

    def _refuse(self, msg: SipRequest, peer: Peer, now: float, event: str, source: Peer,
                **fields: str) -> None:
        """Answer ``msg`` 503 with Retry-After, statelessly, to ``peer``, and
        report the refusal of ``source`` as security event ``event``."""
        self.stats["refused"] += 1
        response = msg.create_response(503, to_tag=new_tag())
        response.headers.add("Retry-After", str(RETRY_AFTER))
        self._send_stateless(response, peer)
        self._security_event(event, source, now, **fields)

    def _security_event(self, event: str, peer: Peer, now: float, **fields: str) -> None:
        """Log a refusal, throttled per source, event and fields."""
        self.admission.refused(event, peer.host, now, transport=peer.transport, **fields)

    def _answer_malformed(self, exc: ParseError, peer: Peer, now: float) -> None:
        """Answer a malformed request statelessly when it can be answered.

        A response needs a Via to travel back and a CSeq for the client to
        match it (RFC 3261 §17.1.3); with those, a request missing From, To
        or Call-ID still gets its 400 (RFC 4475 §3.3.1). Malformed requests
        count against the source's rate like any other, so that a flood of
        them cannot turn the server into a reflector.
        """
        partial = exc.partial
        if not exc.is_request or not isinstance(partial, SipRequest):
            return
        if partial.method == "ACK":
            return
        headers = partial.headers
        if not headers.get("Via") or not headers.get("CSeq"):
            return
        if not self.admission.count(peer.host, now):
            self.stats["banned"] += 1
            return
        response = partial.create_response(exc.status, _reason(str(exc)))
        self._send_stateless(response, peer)

    def _dispatch(self, events: Sequence[object]) -> None:
        # The kinds a call brings most come first (two requests, two
        # terminations, a response): the tests are exclusive, only their
        # cost depends on the order.
        for event in events:
            try:
                if isinstance(event, RequestReceived):
                    created = event.transaction
                    if isinstance(created, InviteServerTransaction) and event.request.to.tag is None:
                        self._setting_up.add(created)
                    try:
                        self.on_request(event.request, event.transaction, event.addr)  # type: ignore[arg-type]  # a Peer
                    except RemoteProtocolError as exc:
                        # A header parsed lazily by the handler (Contact,
                        # Record-Route...) was malformed: the peer's error, so
                        # it gets the 400 (or the status hint) a parse error
                        # gets, not a transaction left without an answer.
                        self._answer_late_error(event.transaction, event.request, exc)
                elif isinstance(event, TransactionTerminated):
                    self._client_cb.pop(event.transaction, None)  # type: ignore[arg-type]
                    self._setting_up.discard(event.transaction)
                elif isinstance(event, ResponseReceived):
                    client = event.transaction
                    if event.response.status >= 200 and not isinstance(client, InviteClientTransaction):
                        # A non-INVITE transaction's final response is its
                        # last word: the callback (and the call it holds)
                        # need not wait out Timer K (T4) in COMPLETED.
                        cb = self._client_cb.pop(client, None)
                    else:
                        cb = self._client_cb.get(client)
                    if cb:
                        cb(event.response)
                elif isinstance(event, CancelReceived):
                    self.on_cancel(event.request, event.transaction, event.invite_transaction,
                                   event.addr)  # type: ignore[arg-type]  # a Peer (no cast(): a call)
                elif isinstance(event, StrayResponse):
                    self.on_stray_response(event.response, event.addr)  # type: ignore[arg-type]
                elif isinstance(event, TransactionTimedOut):
                    cb = self._client_cb.get(event.transaction)  # type: ignore[arg-type]
                    if cb:
                        cb(None)
                elif isinstance(event, TransportFailed):
                    txn = event.transaction
                    cb = self._client_cb.get(txn)  # type: ignore[arg-type]
                    if cb:
                        reason = self._failures.get(txn.addr, "Transport Failure")
                        cb(txn.request.create_response(503, _reason(reason)))
            except Exception:
                logger.exception("error handling %s", type(event).__name__)

    def _answer_late_error(self, txn: ServerTransaction | None, request: SipRequest,
                           exc: RemoteProtocolError) -> None:
        """Answer ``exc.status`` on ``txn`` unless it has its final answer already."""
        if txn is None or txn.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return
        self.stats["malformed"] += 1
        self.send_response(txn, request.create_response(exc.status, _reason(str(exc))))

    # -- sending ---------------------------------------------------------------

    def send_request(
        self, request: SipRequest, peer: Peer, on_response: ClientCallback
    ) -> ClientTransaction:
        """Send a request in a new client transaction.

        A top Via is added with a new branch and ``rport``, unless the
        request has one already: a CANCEL carries its INVITE's top Via, by
        which the far end finds the INVITE (RFC 3261 §9.1). ``on_response``
        gets each response, and ``None`` when the transaction times out (408)
        or the transport fails.
        """
        if request.method != "CANCEL" or not request.headers.get("Via"):
            self._add_via(request, peer)
        txn = self.layer.send_request(request, peer, peer.reliable, self.clock())
        self._client_cb[txn] = on_response
        self._flush()
        return txn

    def send_response(self, transaction: ServerTransaction, response: SipResponse) -> None:
        if response.status >= 200 and self._setting_up:
            self._setting_up.discard(transaction)
        events = self.layer.send_response(transaction, response, self.clock())
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
            self.port_for(peer.transport),
            {"branch": new_branch(), "rport": None},
        )
        text = str(via)
        request.headers.prepend("Via", text)
        # The transaction layer reads this Via at once (its branch is the
        # transaction's key): no need to parse back what was just written.
        request.remember(parse_via, text, via)

    def send_stateless_bytes(self, data: bytes, peer: Peer) -> None:
        """Send bytes already serialized outside any transaction: a
        remembered ACK, a 2xx the INVITE session retransmits (RFC 3261
        §13.3.1.4)."""
        self._transmit(data, peer)

    def _send_stateless(self, message: SipRequest | SipResponse, peer: Peer) -> None:
        self._transmit(message.to_bytes(), peer)

    def _flush(self) -> None:
        """Send what the transactions queued, then keep the one loop timer
        at their earliest deadline."""
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
        key = peer
        conn = self._tcp.get(key)
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            if conn.handshaking:
                return  # nothing was received on it yet: nothing to answer
            conn.transport.write(data)
            return
        waiting = self._connecting.get(key)
        if waiting is not None:  # one connection per peer, even while it opens
            waiting.append(data)
            return
        if self._loop is not None:
            self._connecting[key] = [data]
            task = self._loop.create_task(self._connect_and_send(peer))
            self._connect_tasks.add(task)
            task.add_done_callback(self._connect_tasks.discard)

    def _udp_for(self, peer: Peer) -> _UdpProtocol | None:
        """Our UDP socket of ``peer``'s family, or ``None`` when we have none."""
        host = self.listen_host_for(peer)
        if (":" in host) != (":" in peer.host):
            return None
        return self._udp.get(host)

    async def _connect_and_send(self, peer: Peer) -> None:
        key = peer
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        name: str | None = None
        timeout = 5.0
        if peer.transport == "TLS":
            name, tls = self._tls_servers.get((peer.host, peer.port)) or (peer.host, self._client_context())
            timeout += self.policy.tls_handshake_timeout
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _TcpProtocol(self, kind=peer.transport), peer.host, peer.port,
                    ssl=tls, server_hostname=name,
                    ssl_handshake_timeout=self.policy.tls_handshake_timeout if tls else None,
                ),
                timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            self._connecting.pop(key, None)
            reason = _connect_failure(peer, name, exc)
            if tls is not None:
                logger.warning("TLS connection to %s:%s (%s) failed: %s", peer.host, peer.port, name, reason)
            else:
                logger.info("TCP connect to %s:%s failed: %s", peer.host, peer.port, exc)
            self._transport_failed(peer, reason)
            return
        except asyncio.CancelledError:
            self._connecting.pop(key, None)
            raise
        # The connection is registered under the peer's listening address so
        # that later requests to it reuse the connection.
        waiting = self._connecting.pop(key, [])
        self._tcp[key] = proto
        if proto.transport is not None and not proto.transport.is_closing():
            for data in waiting:
                proto.transport.write(data)

    def _transport_failed(self, peer: Peer, reason: str = "Transport Failure") -> None:
        """RFC 3261 §18.4: the client transactions bound for ``peer`` fail now
        rather than at Timer B/F; their callbacks get a 503 (§8.1.3.1)
        whose reason says why (a TLS certificate that was not trusted...)."""
        now = self.clock()
        events: list[object] = []
        for txn in [t for t in self._client_cb if t.addr == peer]:
            events += self.layer.handle_transport_error(txn, now)
        self._failures[peer] = reason
        try:
            self._dispatch(events)
        finally:
            self._failures.pop(peer, None)
        self._flush()

    def _tls_accept_failed(self, conn: _TcpProtocol, exc: BaseException) -> None:
        """An inbound TLS handshake failed or timed out: a refusal a peer
        can provoke, logged as a security event."""
        assert conn.peer is not None
        reason = _connect_failure(conn.peer, None, exc)
        logger.info("TLS handshake from %s failed: %s", conn.peer.host, reason)
        self._security_event("tls_handshake_failed", conn.peer, self.clock(),
                             reason=type(exc).__name__)

    def _tcp_opened(self, conn: _TcpProtocol) -> bool:
        """Admit a new stream connection (:meth:`Admission.open_connection`)."""
        assert conn.peer is not None
        if not self.admission.open_connection(conn.peer.host, self.clock(), inbound=conn.inbound,
                                              open_now=len(self._conns), transport=conn.peer.transport):
            return False
        conn.counted = conn.inbound
        self._tcp[conn.peer] = conn
        self._conns.add(conn)
        return True

    def _tcp_closed(self, conn: _TcpProtocol) -> None:
        self._conns.discard(conn)
        for key, value in list(self._tcp.items()):  # its source, alias, where we connected
            if value is conn:
                del self._tcp[key]
        if conn.counted and conn.peer is not None:
            conn.counted = False
            self.admission.close_connection(conn.peer.host)

    async def _reap_idle_tcp(self) -> None:
        """The slow-loris defence: close TCP connections that sent no whole
        message within ``tcp_idle_timeout`` of opening, or that left a
        message unfinished that long. A connection that has carried
        messages and is merely quiet stays: it is how calls and
        registrations over TCP reach the phone (RFC 3261 §18.3)."""
        while True:
            await asyncio.sleep(min(5.0, self.policy.tcp_idle_timeout / 2))
            limit = self.clock() - self.policy.tcp_idle_timeout
            for conn in list(self._conns):
                if conn.transport is None:
                    continue
                stalled = conn.partial_since is not None and conn.partial_since < limit
                if stalled or (conn.messages == 0 and conn.opened < limit):
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
            # ``when`` is on the endpoint's clock, which need not be the loop's.
            self._timer = self._loop.call_later(max(0.0, when - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        events = self.layer.handle_timer(self.clock())
        self._dispatch(events)
        self._flush()


def _connect_failure(peer: Peer, name: str | None, exc: BaseException) -> str:
    """Why a connection to (or from) ``peer`` failed, in words for a
    reason phrase: the TLS verification error names what was wrong with
    the certificate (RFC 5922 §7.3 host name, an untrusted issuer)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return f"TLS certificate not accepted: {detail}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {name or peer.host} failed: {exc.reason or exc}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        what = "TLS handshake" if peer.transport == "TLS" else "connection"
        return f"{what} with {name or peer.host} timed out"
    return f"{peer.transport} connection to {peer.host}:{peer.port} failed: {exc}"


def _reason(text: str) -> str:
    """A reason phrase safe to put on a status line."""
    return "".join(c if c.isprintable() else " " for c in text)[:100] or "Bad Request"
