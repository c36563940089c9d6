"""The asyncio side of a call leg's RTCP: its socket and its one timer.

:class:`RtcpTransport` drives an :class:`~engine.media.rtcp_session.RtcpSession`
the way aioquic's protocol drives a ``QuicConnection``: after each input or
timer it sends what the session queued and re-arms a single ``loop.call_at``
for :meth:`~engine.media.rtcp_session.RtcpSession.get_timer`. No task runs
per call, and the timer is not touched per RTP packet.

The socket is the odd port of the leg's reserved pair
(:class:`~engine.transport.rtp_socket.RtpPortPair`), read with
:class:`~engine.transport.rtp_transport.RtpTransport` (RTCP is rare: one
datagram every few seconds). RTCP is not multiplexed with RTP: our SDP never
carries ``a=rtcp-mux``, so RFC 5761 section 5.1.1 keeps it on its own port.

Where reports go: the address the peer's RTCP comes from once it came
(symmetric RTCP, like symmetric RTP), before that ``default_destination()``
(the owner's guess from SDP and the RTP latch); and only while the owner's
``may_send()`` allows (RTP's send gate: nothing goes to an address nothing
confirmed once the grace is over). Datagrams are accepted only
from the host of that guess, which is where the peer's RTP comes from, so a
stranger on another host cannot feed us reports, a BYE, or keep a dead call
alive; the ones dropped are counted.

With SRTP the transport is handed a ``protector`` (the leg's
:class:`~engine.media.srtp.SrtpContext`, which has ``protect_rtcp`` and
``unprotect_rtcp``): reports are protected (SRTCP, RFC 3711 section 3.4)
just before they are sent, and datagrams unprotected just after they are
read; one that does not authenticate is dropped (counted there).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable, Protocol

from engine.media.rtcp_session import MediaTimedOut, RtcpSession
from engine.transport.rtp_transport import RtpTransport

__all__ = ["RtcpTransport"]

logger = logging.getLogger(__name__)



def _ignore(data: bytes, addr: Any) -> None:
    """The handler of a closed RTCP transport."""


class RtcpProtector(Protocol):
    """SRTCP for one leg (:class:`engine.media.srtp.SrtpContext`)."""

    def protect_rtcp(self, packet: bytes) -> bytes | None: ...

    def unprotect_rtcp(self, packet: bytes) -> bytes | None: ...

class RtcpTransport:
    """RTCP on one socket for one :class:`RtcpSession`.

    :param sock: the RTCP socket of the leg's port pair.
    :param default_destination: where the peer's RTCP port is believed to
        be, or ``None`` while unknown.
    :param on_timeout: called once when the session reports
        :class:`~engine.media.rtcp_session.MediaTimedOut`.
    :param may_send: whether reports may be sent now (always when ``None``).
    :param on_source: called with the source of each datagram accepted.
    :param protector: SRTCP, or ``None`` for plain RTCP; a callable returning
        it is read at each use (the keys may change with a re-INVITE).
    """

    def __init__(
        self,
        sock: socket.socket,
        session: RtcpSession,
        default_destination: Callable[[], Any],
        on_timeout: Callable[[MediaTimedOut], None] | None = None,
        *,
        may_send: Callable[[], bool] | None = None,
        on_source: Callable[[Any], None] | None = None,
        protector: Callable[[], RtcpProtector | None] | None = None,
    ) -> None:
        self.session = session
        self.transport = RtpTransport(sock, self._on_datagram, watched=False)
        self.default_destination = default_destination
        self.on_timeout = on_timeout
        self.may_send = may_send
        self.on_source = on_source
        self.protector = protector
        #: Reports not sent because ``may_send()`` said no.
        self.unsent = 0
        #: The source of the peer's RTCP, once some arrived.
        self.latched: Any = None
        self.dropped = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def destination(self) -> Any:
        """Where reports go now (``None``: nowhere)."""
        if self.may_send is not None and not self.may_send():
            return None
        return self.latched if self.latched is not None else self.default_destination()

    def start(self) -> None:
        """Read the socket and schedule the first report."""
        loop = self._loop = asyncio.get_running_loop()
        self.transport.attach(loop)
        self.session.start(loop.time())
        self.update()

    def update(self) -> None:
        """Re-arm the timer after the session's settings changed."""
        loop = self._loop
        if loop is None:
            return
        when = self.session.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        loop = self._loop
        if loop is None:
            return
        self.session.handle_timer(loop.time())
        self._flush()
        self.update()

    def _flush(self) -> None:
        datagrams = self.session.datagrams_to_send()
        if datagrams:
            addr = self.destination()
            if addr is not None:
                for data in datagrams:
                    self._send(data, addr)
            else:
                self.unsent += len(datagrams)
        while (event := self.session.next_event()) is not None:
            if self.on_timeout is not None:
                try:
                    self.on_timeout(event)
                except Exception:
                    logger.exception("RTP timeout handler failed")

    def _send(self, data: bytes, addr: Any) -> None:
        protector = self.protector() if self.protector is not None else None
        if protector is not None:
            protected = protector.protect_rtcp(data)
            if protected is None:
                return
            data = protected
        self.transport.sendto(data, addr)

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        expected = self.latched if self.latched is not None else self.default_destination()
        if expected is None or addr[0] != expected[0] or self._loop is None:
            self.dropped += 1
            return
        protector = self.protector() if self.protector is not None else None
        if protector is not None:
            plain = protector.unprotect_rtcp(data)
            if plain is None:
                return  # forged or replayed: counted by the protector
            data = plain
        self.latched = addr
        if self.on_source is not None:
            self.on_source(addr)
        self.session.receive(data, self._loop.time())

    def close(self) -> None:
        """Send the last report with BYE, stop the timer and the reading."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None
        loop = self._loop
        if loop is not None:
            bye = self.session.close(loop.time())
            if bye is not None:  # usually not: a call without media sent neither RTP nor RTCP
                addr = self.destination()
                if addr is not None:
                    self._send(bye, addr)
        self.transport.detach()
        self.transport.handler = _ignore  # break the cycle: freed by refcounting
        self._loop = None
