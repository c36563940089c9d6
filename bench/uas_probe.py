"""bench/uas_probe: the ceiling of Python itself at "answer a call" over UDP.

NOT a SIP server: no parser, no transactions, no dialogs, no retransmission,
no scenario, no media. It answers INVITE with 100 and 200, absorbs ACK and
answers BYE with 200, copying the header lines a response must echo (Via,
From, To, Call-ID, CSeq, full or compact) without parsing them. What it
reaches on this machine, on the same event loop as the engine (uvloop when
installed), is how far Python's own datagram round trip lets any SIP code
go; ``bench/sip_cps.py`` drives it with sipp's built-in ``uac`` (``-d 0``)
and prints callbridge's rate as a ratio of it.

Usage: ``python bench/uas_probe.py PORT`` (binds 127.0.0.1:PORT, prints
``listening`` once bound, runs until SIGTERM or SIGINT).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import cast

COPY = (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")


def reply(request: bytes, status: bytes, extra: bytes = b"") -> bytes:
    """A response to ``request`` with ``status`` (e.g. ``b"200 OK"``): the
    echoed header lines, a To tag on a 200 without one, ``extra`` lines."""
    head = request.partition(b"\r\n\r\n")[0]
    out = [b"SIP/2.0 " + status]
    for line in head.split(b"\r\n")[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in COPY:
            if name in (b"to", b"t") and status.startswith(b"200") and b"tag=" not in line:
                line += b";tag=probe"
            out.append(line)
    out.append(extra + b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"


class ProbeProtocol(asyncio.DatagramProtocol):
    def __init__(self, port: int) -> None:
        self.contact = b"Contact: <sip:probe@127.0.0.1:%d>\r\n" % port
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not an asyncio.DatagramTransport subclass
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if data.startswith(b"INVITE"):
            self.transport.sendto(reply(data, b"100 Trying"), addr)
            self.transport.sendto(reply(data, b"200 OK", self.contact), addr)
        elif data.startswith(b"BYE"):
            self.transport.sendto(reply(data, b"200 OK"), addr)
        # ACK (and anything else): absorbed


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    transport, _ = await loop.create_datagram_endpoint(lambda: ProbeProtocol(port),
                                                       local_addr=("127.0.0.1", port))
    print("listening", flush=True)
    await done.wait()
    transport.close()


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python bench/uas_probe.py PORT", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:  # the engine falls back to asyncio's loop the same way
        asyncio.run(serve(int(sys.argv[1])))
    else:
        uvloop.run(serve(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
