"""Who may talk to the SIP endpoint: the limits a server on a public
address needs, apart from the sockets that carry the messages.

:class:`Admission` decides; :class:`~engine.transport.sip_endpoint.SipEndpoint`
acts on its verdicts (drops, stateless 503s, closed connections). Every
counter lives in the :class:`~engine.state.directory.Directory` the engine
hands down (token buckets, bans, the throttle of refusal log lines), so that
nodes sharing a directory share them; the one thing kept here is the count
of stream connections open per source address, which belongs to this
process's sockets.

The checks, in the order the endpoint applies them:

1. a banned source is dropped (:meth:`Admission.is_banned`);
2. a known scanner User-Agent is dropped;
3. an ACK, a CANCEL of a live INVITE and an in-dialog request of a dialog
   we have pass: they belong to something admitted already;
4. any other request takes a token from its source's bucket (``rate``,
   ``burst``); a source over it is banned for ``ban_seconds``;
5. an out-of-dialog MESSAGE also takes one from a stricter bucket of its
   own (each starts a scenario session), and over it gets a 503.

Trusted sources skip 1, 4 and 5. Stream connections (TCP, TLS) are
admitted by :meth:`Admission.open_connection`: at most
``max_tcp_connections`` in all and ``max_tcp_per_source`` accepted from one
untrusted address, none from a banned one.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Callable

from engine.security_log import security_event, security_event_throttled
from engine.sip.message import SipRequest
from engine.state.directory import Directory
from engine.transport.overload import OverloadBounds

__all__ = ["Admission", "SecurityPolicy", "Verdict", "SCANNER_AGENTS"]

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


@dataclass
class SecurityPolicy:
    """Limits for a server on a public address (all on by default).

    :param rate: out-of-dialog requests per second allowed per source address.
    :param burst: how many may arrive at once before the rate applies.
    :param trusted: source addresses exempt from rate limiting and bans
        (a trunk, the benchmark's sipp).
    :param proxies: front proxies' addresses (a SIP load balancer such as
        Kamailio's dispatcher in front of several nodes). They are trusted
        (added to ``trusted``), and a request one of them forwards is taken
        to come from the address in the Via below the proxy's own (its
        ``received`` and ``rport``, which the proxy stamps): that address,
        not the proxy's, is banned, rate limited, logged and matched by the
        rules' ``networks``. Nobody else's Vias are believed.
    :param tcp_idle_timeout: seconds a TCP or TLS connection may take to
        send its first whole SIP message, and to finish any message it has
        begun.
    :param tls_handshake_timeout: seconds a TLS handshake may take, inbound
        or outbound, before the connection is closed (a handshake that never
        ends must not hold a connection slot).
    :param message_rate: out-of-dialog MESSAGEs per second allowed per
        source address (each starts a scenario session); 0 turns it off.
    :param message_burst: how many MESSAGEs may arrive at once.
    :param max_transactions: most live server transactions; a new request
        beyond it gets a stateless 503 (retransmissions, ACKs and CANCELs
        of live INVITEs still reach theirs). An answered INVITE keeps its
        transaction for Timer L (64*T1, 32 s; RFC 6026) at about 1 KB, so
        100,000 bounds them near 100 MB and lets about 3,000 calls a second
        through when sustained (20,000 capped it at 625).
    :param max_tcp_per_source: most TCP and TLS connections together one
        source address may hold open (trusted sources exempt).
    :param overload: the bounds past which the engine sheds new INVITEs
        (:mod:`engine.transport.overload`); they apply to trusted sources
        too: they protect the engine, not against a source.
    :param overload_probe: seconds between two samples of the overload
        signals (loop lag, receive queues, calls being set up).
    :param udp_receive_buffer: bytes asked of the kernel for each SIP UDP
        socket's receive buffer (``SO_RCVBUF``; the kernel caps it at
        ``net.core.rmem_max`` and doubles it for its bookkeeping): room for
        the ACKs and BYEs of a burst while the loop catches up. 0 keeps the
        system's default.
    """

    max_message: int = 65535
    max_uri: int = 512
    rate: float = 50.0
    burst: int = 200
    ban_seconds: float = 60.0
    scanner_agents: tuple[str, ...] = SCANNER_AGENTS
    tcp_idle_timeout: float = 30.0
    tls_handshake_timeout: float = 10.0
    max_tcp_connections: int = 2048
    trusted: frozenset[str] = field(default_factory=frozenset)
    proxies: frozenset[str] = field(default_factory=frozenset)
    message_rate: float = 5.0
    message_burst: int = 20
    max_transactions: int = 100_000
    max_tcp_per_source: int = 20
    overload: OverloadBounds = field(default_factory=OverloadBounds)
    overload_probe: float = 0.05
    udp_receive_buffer: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        self.trusted = frozenset(self.trusted) | frozenset(self.proxies)


class Verdict(enum.Enum):
    """What becomes of a request (:meth:`Admission.check_request`)."""

    #: Goes on to the transaction layer.
    ADMIT = "admit"
    #: Dropped without an answer (a scanner).
    DROP = "drop"
    #: Dropped, and its source is now banned (over the rate).
    BAN = "ban"
    #: Answered with a stateless 503 and Retry-After (over the MESSAGE rate).
    REFUSE = "refuse"


class Admission:
    """The admission policy of one SIP endpoint.

    :param policy: the limits.
    :param directory: where buckets, bans and log throttles are kept (the
        engine's one directory).
    """

    def __init__(self, policy: SecurityPolicy, directory: Directory) -> None:
        self.policy = policy
        self.directory = directory
        #: Accepted stream connections open per source address.
        self._connections: dict[str, int] = {}

    def is_trusted(self, host: str) -> bool:
        return host in self.policy.trusted

    def is_banned(self, host: str, now: float) -> bool:
        """Whether everything from ``host`` is to be dropped (never a trusted source)."""
        return host not in self.policy.trusted and self.directory.is_banned(host, now)

    def is_scanner(self, request: SipRequest) -> bool:
        """Whether ``request`` comes from a known scanner (its User-Agent)."""
        agent = request.headers.get("User-Agent")
        if not agent or not self.policy.scanner_agents:
            return False
        lowered = agent.lower()
        return any(s in lowered for s in self.policy.scanner_agents)

    def check_request(self, request: SipRequest, host: str, now: float,
                      belongs: Callable[[SipRequest], bool]) -> Verdict:
        """Apply the per-source limits to a request from ``host``.

        :param belongs: tells whether a CANCEL or a request with a To tag
            belongs to something admitted already (a live INVITE
            transaction, a dialog we have); those are not counted.
        """
        policy = self.policy
        if self.is_scanner(request):
            return Verdict.DROP
        if host in policy.trusted:
            return Verdict.ADMIT
        method = request.method
        if method == "ACK":
            # An ACK is never counted: it creates no transaction (its INVITE
            # server transaction absorbs it, or the dialog takes it, or it is
            # dropped), and the ACK of a 2xx must never be lost: without it
            # the UAS retransmits the 2xx and then ends the call (RFC 3261
            # §13.3.1.4).
            return Verdict.ADMIT
        if method == "CANCEL" or request.to.tag is not None:
            # A CANCEL of a live INVITE server transaction (or a
            # retransmission of one) belongs to a call already admitted, and
            # dropping it would leave the caller's phone ringing; so does an
            # in-dialog request of a dialog we have. Any other counts like a
            # new request: made-up To tags cost a 481 each.
            if belongs(request):
                return Verdict.ADMIT
        if not self.count(host, now):
            return Verdict.BAN
        if method == "MESSAGE" and request.to.tag is None and policy.message_rate > 0:
            # Each out-of-dialog MESSAGE starts a scenario session: a bucket
            # of its own, stricter than the general one. Over it the source
            # gets 503 with Retry-After, not 403: the refusal is temporary
            # (RFC 3261 §21.5.4), while a 403 says "do not repeat this
            # request" (§21.4.4) of a message that is fine a moment later.
            if not self.directory.hit(
                "message:" + host, now, rate=policy.message_rate, burst=policy.message_burst
            ):
                return Verdict.REFUSE
        return Verdict.ADMIT

    def count(self, host: str, now: float) -> bool:
        """Take one token from ``host``'s bucket; over the rate the source
        is banned for ``ban_seconds`` and ``False`` returned. A trusted
        source, or a rate of 0, is never counted."""
        policy = self.policy
        if policy.rate <= 0 or host in policy.trusted:
            return True
        if self.directory.hit(host, now, rate=policy.rate, burst=policy.burst):
            return True
        self.ban(host, now)
        return False

    def ban(self, host: str, now: float) -> None:
        """Ban ``host`` for ``ban_seconds`` and say so."""
        policy = self.policy
        self.directory.ban(host, now + policy.ban_seconds)
        logger.warning(
            "banning %s for %g s: over %g requests/s", host, policy.ban_seconds, policy.rate
        )
        security_event("banned", host, seconds=policy.ban_seconds, rate=policy.rate)

    def refused(self, event: str, host: str, now: float, **fields: str) -> None:
        """Log a refusal as security event ``event``, throttled per source,
        event and fields."""
        security_event_throttled(self.directory, now, event, host, **fields)

    # -- stream connections ----------------------------------------------------

    def open_connection(self, host: str, now: float, *, inbound: bool, open_now: int,
                        transport: str = "TCP") -> bool:
        """Admit a new stream connection with ``host``: refused beyond
        ``max_tcp_connections`` (``open_now`` are open), from a banned
        source, and (accepted ones, from an untrusted source) beyond
        ``max_tcp_per_source`` from one address. An admitted inbound one is
        counted until :meth:`close_connection`."""
        policy = self.policy
        if open_now >= policy.max_tcp_connections:
            logger.warning("refusing %s connection: %d open", transport, open_now)
            self.refused("cap_reached", host, now, transport=transport, cap="tcp_connections")
            return False
        trusted = host in policy.trusted
        if not trusted and self.directory.is_banned(host, now):
            return False
        if inbound:
            count = self._connections.get(host, 0)
            if not trusted and count >= policy.max_tcp_per_source:
                self.refused("cap_reached", host, now, transport=transport, cap="tcp_per_source")
                return False
            self._connections[host] = count + 1
        return True

    def close_connection(self, host: str) -> None:
        """An inbound connection counted by :meth:`open_connection` closed."""
        left = self._connections.get(host, 1) - 1
        if left > 0:
            self._connections[host] = left
        else:
            self._connections.pop(host, None)

    def connections_from(self, host: str) -> int:
        """Inbound stream connections open from ``host``."""
        return self._connections.get(host, 0)
