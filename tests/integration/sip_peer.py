"""A scripted SIP peer for the integration tests: real UDP and TCP sockets
on loopback, messages written as text, answers parsed with
:func:`engine.sip.parser.parse_message`.

:class:`UdpPeer` and :class:`TcpPeer` share one small interface: ``send``
bytes, ``recv`` the next parsed message (bounded by a timeout), ``expect``
a response by status (skipping provisional ones and retransmissions on the
way), ``silence`` to assert that nothing arrives. :func:`request` builds a
request as the bytes a phone would send; :class:`Dialog` remembers what a
caller needs to ACK, BYE and re-INVITE inside one call.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from dataclasses import dataclass, field
from typing import Iterable

from engine.sip.message import SipRequest, SipResponse
from engine.sip.parser import StreamFramer, parse_message

Message = SipRequest | SipResponse

#: The longest any single wait for a message may take.
WAIT = 3.0


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def family_ip(host: str) -> str:
    return "IP6" if ":" in host else "IP4"


def sdp_offer(host: str, port: int = 40000, direction: str | None = None, version: int = 1) -> bytes:
    """A PCMU + telephone-event offer from ``host``."""
    lines = [
        "v=0",
        f"o=peer 1000 {version} IN {family_ip(host)} {host}",
        "s=-",
        f"c=IN {family_ip(host)} {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
    ]
    if direction:
        lines.append(f"a={direction}")
    return ("\r\n".join(lines) + "\r\n").encode()


def request(
    method: str,
    uri: str,
    *,
    local: tuple[str, int],
    transport: str = "UDP",
    branch: str | None = None,
    call_id: str | None = None,
    from_tag: str | None = None,
    to_tag: str | None = None,
    to_uri: str | None = None,
    from_uri: str | None = None,
    cseq: int = 1,
    cseq_method: str | None = None,
    rport: bool = True,
    contact: bool = True,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> bytes:
    """The bytes of a request sent from ``local`` (host, port)."""
    host, port = local
    via = f"SIP/2.0/{transport} {bracket(host)}:{port};branch={branch or 'z9hG4bK' + secrets.token_hex(8)}"
    if rport:
        via += ";rport"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        "Max-Forwards: 70",
        f"From: <{from_uri or f'sip:tester@{bracket(host)}'}>;tag={from_tag or secrets.token_hex(4)}",
        f"To: <{to_uri or uri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id or secrets.token_hex(10)}",
        f"CSeq: {cseq} {cseq_method or method}",
    ]
    if contact:
        tp = f";transport={transport.lower()}" if transport != "UDP" else ""
        lines.append(f"Contact: <sip:tester@{bracket(host)}:{port}{tp}>")
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Type: {content_type or 'application/sdp'}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Base:
    transport = "UDP"
    local: tuple[str, int]

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def recv_raw(self, timeout: float = WAIT) -> bytes:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def recv(self, timeout: float = WAIT) -> Message:
        """The next message (parsed and validated)."""
        return parse_message(await self.recv_raw(timeout))

    async def recv_request(self, method: str, timeout: float = WAIT) -> SipRequest:
        """The next request of ``method``, skipping responses and other requests."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - loop.time()))
            if isinstance(msg, SipRequest) and msg.method == method:
                return msg

    async def expect(self, status: int | None = None, *, method: str | None = None,
                     timeout: float = WAIT) -> SipResponse:
        """The next final response (or the next of ``status``) to ``method``;
        requests and other responses on the way are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - loop.time()))
            if not isinstance(msg, SipResponse):
                continue
            if method is not None and msg.cseq.method != method:
                continue
            if status is None and msg.status >= 200:
                return msg
            if status is not None and msg.status == status:
                return msg
            if status is not None and msg.status >= 200:
                raise AssertionError(f"expected {status}, got {msg.status} {msg.reason}")

    async def silence(self, timeout: float = 0.3) -> None:
        """Assert that nothing arrives within ``timeout``."""
        try:
            data = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected message: {data[:200]!r}")

    def drain(self) -> list[bytes]:
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, peer: UdpPeer) -> None:
        self.peer = peer
        self.closed = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        self.peer.sources.append(addr[:2])
        self.peer.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class UdpPeer(_Base):
    """A UDP socket on ``host`` (ephemeral port) talking to ``server``."""

    transport = "UDP"

    def __init__(self, host: str, server: tuple[str, int]) -> None:
        super().__init__()
        self.host = host
        self.server = server
        self.sources: list[tuple[str, int]] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._proto: _UdpProtocol | None = None

    async def open(self, port: int = 0) -> UdpPeer:
        loop = asyncio.get_running_loop()
        self._transport, self._proto = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.host, port)
        )
        self.local = self._transport.get_extra_info("sockname")[:2]
        return self

    def send(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        assert self._transport is not None
        self._transport.sendto(data, to or self.server)

    async def close(self) -> None:
        if self._transport is not None and self._proto is not None:
            self._transport.close()
            await self._proto.closed
            self._transport = None


class TcpPeer(_Base):
    """One TCP connection from ``host`` to ``server``, framed by Content-Length."""

    transport = "TCP"

    def __init__(self, host: str, server: tuple[str, int], max_message: int = 65535) -> None:
        super().__init__()
        self.host = host
        self.server = server
        self.framer = StreamFramer(max_message)
        self.pongs = 0
        self.eof = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    #: The TLS client context (:class:`TlsPeer`); ``None`` over plain TCP.
    tls: ssl.SSLContext | None = None

    async def open(self) -> TcpPeer:
        self._reader, self._writer = await asyncio.open_connection(
            self.server[0], self.server[1], local_addr=(self.host, 0),
            ssl=self.tls, server_hostname=self.server[0] if self.tls else None,
        )
        self.local = self._writer.get_extra_info("sockname")[:2]
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                if data == b"\r\n" and not self.framer.buffered:
                    self.pongs += 1
                    continue
                for frame in self.framer.feed(data):
                    if frame is not None:
                        self.queue.put_nowait(frame)
        except (ConnectionError, OSError):
            pass
        finally:
            self.eof.set()

    def send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    async def closed_by_server(self, timeout: float = WAIT) -> bool:
        try:
            await asyncio.wait_for(self.eof.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def recv_raw(self, timeout: float = WAIT) -> bytes:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self._writer = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


class TlsPeer(TcpPeer):
    """One TLS connection from ``host`` to ``server`` (RFC 3261 §26), the
    server's certificate verified by ``context``; framed like TCP."""

    transport = "TLS"

    def __init__(self, host: str, server: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(host, server)
        self.tls = context


class TcpListener(_Base):
    """A phone listening on TCP: takes the engine's connections and answers
    on the connection the last message came in on."""

    transport = "TCP"

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> TcpListener:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.local = self._server.sockets[0].getsockname()[:2]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        framer = StreamFramer()
        try:
            while data := await reader.read(65536):
                for frame in framer.feed(data):
                    if frame is not None:
                        self._writer = writer
                        self.queue.put_nowait(frame)
        except (ConnectionError, OSError):
            pass

    def send(self, data: bytes) -> None:
        assert self._writer is not None, "no connection yet"
        self._writer.write(data)

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


@dataclass
class Dialog:
    """What a caller (the test) remembers about one call it placed."""

    peer: UdpPeer | TcpPeer
    uri: str
    call_id: str = field(default_factory=lambda: secrets.token_hex(10))
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    to_tag: str | None = None
    cseq: int = 1
    invite_branch: str = field(default_factory=lambda: "z9hG4bK" + secrets.token_hex(8))
    last_invite_cseq: int = 1

    def build(self, method: str, *, cseq: int | None = None, branch: str | None = None,
              body: bytes = b"", headers: Iterable[tuple[str, str]] = (),
              content_type: str | None = None, in_dialog: bool = True) -> bytes:
        return request(
            method, self.uri, local=self.peer.local, transport=self.peer.transport,
            branch=branch, call_id=self.call_id, from_tag=self.from_tag,
            to_tag=self.to_tag if in_dialog else None, cseq=cseq if cseq is not None else self.cseq,
            headers=headers, body=body, content_type=content_type,
        )

    def invite(self, body: bytes | None = None, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send the dialog-creating INVITE (or a re-INVITE once a To tag is known)."""
        if self.to_tag is not None:
            self.cseq += 1
            self.invite_branch = "z9hG4bK" + secrets.token_hex(8)
        self.last_invite_cseq = self.cseq
        offer = sdp_offer(self.peer.local[0]) if body is None else body
        self.peer.send(self.build("INVITE", branch=self.invite_branch, body=offer, headers=headers))

    def learn(self, response: SipResponse) -> None:
        if response.to.tag:
            self.to_tag = response.to.tag

    def ack(self) -> None:
        """ACK a 2xx (a new transaction: its own branch)."""
        self.peer.send(self.build("ACK", cseq=self.last_invite_cseq))

    def send(self, method: str, *, body: bytes = b"", headers: Iterable[tuple[str, str]] = (),
             content_type: str | None = None) -> None:
        self.cseq += 1
        self.peer.send(self.build(method, body=body, headers=headers, content_type=content_type))

    async def call(self, timeout: float = WAIT) -> SipResponse:
        """INVITE, wait for the 200, ACK it; return the 200."""
        self.invite()
        ok = await self.peer.expect(200, method="INVITE", timeout=timeout)
        self.learn(ok)
        self.ack()
        return ok
