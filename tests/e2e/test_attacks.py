"""Attacks on a running ``callbridge serve`` with the shipped rules and
scenarios, as someone on the public side would try them: no credentials,
a browser (the web SDK's protocol over a real WebSocket, an aiortc peer as
its media) and raw SIP over UDP. A fake trunk (a UDP socket) records every
datagram the engine sends it: toll fraud shows there.

The dial-out allow-list is opened wide (``--dial-allow``) so that what
stops the attacker is the permission, not the destination list."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from aiohttp import ClientSession

from sdk_peer import BrowserPeer, SdkSocket
from serve_process import ROOT, ServeProcess
from udp import drain

pytestmark = pytest.mark.e2e


class FakeTrunk:
    """A carrier that records every datagram it gets and answers nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def received(self) -> list[bytes]:
        return drain(self.sock)


@pytest.fixture
def trunk() -> Iterator[FakeTrunk]:
    t = FakeTrunk()
    yield t
    t.sock.close()


def create_room(data_dir: Path, room: str) -> str:
    """``callbridge rooms create ROOM`` (a generated PIN); returns the PIN it printed."""
    env = dict(os.environ, CALLBRIDGE_DATA_DIR=str(data_dir))
    result = subprocess.run([sys.executable, "-m", "engine", "rooms", "create", room], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    pin = re.search(r"\bPIN:? *(\d{6,})", result.stdout, re.IGNORECASE)
    assert pin, result.stdout
    return pin.group(1)


@pytest.fixture
def serve(tmp_path: Path, trunk: FakeTrunk) -> Iterator[ServeProcess]:
    """The shipped application with a trunk, the room ``vault`` (generated PIN)."""
    tmp_path.joinpath("data").mkdir(mode=0o700)
    serve_pin = create_room(tmp_path / "data", "vault")
    proc = ServeProcess(tmp_path, ["--trunk", f"sip:127.0.0.1:{trunk.port}", "--dial-allow", r"\+?[0-9]+",
                                   "--rtp-ports", "42000-42999"])
    proc.vault_pin = serve_pin  # type: ignore[attr-defined]
    try:
        proc.wait_healthy()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


async def guest(http: ClientSession, serve: ServeProcess, name: str = "Mallory") -> SdkSocket:
    sock = SdkSocket(await http.ws_connect(f"http://127.0.0.1:{serve.http_port}/ws"))
    assert (await sock.hello())["type"] == "hello"
    ok = await sock.request({"type": "login", "guest": name})
    assert ok["type"] == "login_ok" and ok["guest"] is True, ok
    return sock


async def call_joinconf(sock: SdkSocket, peer: BrowserPeer, headers: dict[str, str], wire: str = "c1") -> None:
    await sock.send({"type": "call", "call": wire, "number": "joinconf", "sdp": await peer.offer(),
                     "headers": headers, "audio": True, "video": False})


def conference_messages(sock: SdkSocket, kind: str) -> list[dict]:
    return [data for data in (json.loads(f["text"]) for f in sock.frames if f.get("type") == "message")
            if data.get("type") == kind]


def serve_log(serve: ServeProcess) -> str:
    return serve.log_path.read_text(errors="replace")


async def test_guest_browser_cannot_make_the_engine_dial_the_trunk(
        serve: ServeProcess, trunk: FakeTrunk, http: ClientSession) -> None:
    """Check finding 1 and 2 over the web: a guest opens an ad-hoc
    conference with forged X-Callbridge-Role/-Permissions headers and asks
    it to dial an international-network number and an ordinary one; both
    are refused 403 and the trunk receives nothing."""
    sock = await guest(http, serve)
    peer = BrowserPeer()
    try:
        await call_joinconf(sock, peer, {"X-Conference-Id": "fraud1", "X-Callbridge-Role": "moderator",
                                         "X-Callbridge-Permissions": "dial_out", "X-Callbridge-Room": "fraud1"})
        connected = await sock.recv("connected", call="c1", timeout=15)
        if connected.get("sdp"):
            await peer.accept(connected["sdp"])
        for number in ("+88212345678", "+15551230000"):
            await sock.send({"type": "message", "call": "c1",
                             "text": json.dumps({"type": "CALL_PARTICIPANT", "number": number})})
        for _ in range(20):
            if len(conference_messages(sock, "CALL_PARTICIPANT_FAILED")) == 2:
                break
            await sock.recv("message", timeout=5)
        failed = conference_messages(sock, "CALL_PARTICIPANT_FAILED")
        assert [(f["number"], f["code"], f["reason"]) for f in failed] == [
            ("+88212345678", 403, "not allowed to dial out"), ("+15551230000", 403, "not allowed to dial out")]
        await asyncio.sleep(1.0)
        assert trunk.received() == []
        log = serve_log(serve)
        assert "security event=forged_header" in log and "security event=dial_refused" in log
        await sock.send({"type": "hangup", "call": "c1"})
    finally:
        await peer.close()
        await sock.ws.close()


def sip_invite(port: int, number: str, headers: dict[str, str]) -> bytes:
    tag, branch = secrets.token_hex(4), secrets.token_hex(6)
    sdp = ("v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    lines = [f"INVITE sip:{number}@127.0.0.1:{port} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{{local}};branch=z9hG4bK{branch}",
             f"From: <sip:guest-0a1b2c3d4e@127.0.0.1>;tag={tag}", f"To: <sip:{number}@127.0.0.1>",
             f"Call-ID: {secrets.token_hex(8)}", "CSeq: 1 INVITE", "Contact: <sip:x@127.0.0.1:{local}>",
             "Max-Forwards: 70", *(f"{k}: {v}" for k, v in headers.items()),
             "Content-Type: application/sdp", f"Content-Length: {len(sdp)}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + sdp).encode()


async def sip_final(port: int, number: str, headers: dict[str, str]) -> str:
    """Send one INVITE from a fresh UDP socket; the first final response."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        local = sock.getsockname()[1]
        sock.sendto(sip_invite(port, number, headers).replace(b"{local}", str(local).encode()), ("127.0.0.1", port))
        while True:
            data = (await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)).decode()
            if int(data.split(" ", 2)[1]) >= 200:
                return data


async def test_anonymous_sip_caller_reaches_neither_the_conference_nor_the_trunk(
        serve: ServeProcess, trunk: FakeTrunk) -> None:
    """Check finding 1 and 2 over SIP: an INVITE to joinconf with forged
    grants, one straight to a conference, one to an international number
    (P2P would try it as a user name) all get a 401 challenge and start no
    session; the trunk receives nothing."""
    forged = {"X-Conference-Id": "fraud2", "X-Callbridge-Role": "moderator", "X-Callbridge-Room": "vault"}
    for number in ("joinconf", "conf_vault", "conf_fraud2", "+88212345678"):
        final = await sip_final(serve.sip_port, number, forged)
        assert final.startswith("SIP/2.0 401 "), final
        assert "WWW-Authenticate: Digest " in final
    await asyncio.sleep(0.5)
    assert trunk.received() == []
    logs = serve.workdir / "data" / "logs"
    sessions = "".join(p.read_text() for p in logs.glob("*.log")) if logs.exists() else ""
    assert "started by rule" not in sessions


async def test_pin_room_is_closed_to_a_guest_who_knows_its_name(
        serve: ServeProcess, http: ClientSession) -> None:
    """Check finding 3: a guest naming room ``vault`` is refused 403
    (pin_required), with a wrong PIN 403 (wrong_pin), and admitted with the
    room's PIN."""
    sock = await guest(http, serve)
    peers = [BrowserPeer() for _ in range(3)]
    try:
        await call_joinconf(sock, peers[0], {"X-Conference-Id": "vault"}, "c1")
        failed = await sock.recv("failed", call="c1", timeout=10)
        assert failed["code"] == 403 and failed["headers"].get("X-Reason") == "pin_required", failed
        await call_joinconf(sock, peers[1], {"X-Conference-Id": "vault", "X-Conference-Pin": "000000"}, "c2")
        failed = await sock.recv("failed", call="c2", timeout=10)
        assert failed["code"] == 403 and failed["headers"].get("X-Reason") == "wrong_pin", failed
        await call_joinconf(sock, peers[2], {"X-Conference-Id": "vault",
                                             "X-Conference-Pin": serve.vault_pin}, "c3")  # type: ignore[attr-defined]
        await sock.recv("connected", call="c3", timeout=15)
        await sock.send({"type": "hangup", "call": "c3"})
    finally:
        for peer in peers:
            await peer.close()
        await sock.ws.close()


async def test_pin_guessing_from_many_guests_is_stopped(serve: ServeProcess, http: ClientSession) -> None:
    """Check finding 4: a guesser who takes a new guest identity for every
    try is counted by its address: after five wrong PINs even the right PIN
    is refused (too_many_attempts), and the lockout is logged."""
    reasons = []
    for n in range(7):
        sock = await guest(http, serve, f"guesser{n}")
        peer = BrowserPeer()
        try:
            pin = serve.vault_pin if n == 6 else f"{100000 + n}"  # type: ignore[attr-defined]
            await call_joinconf(sock, peer, {"X-Conference-Id": "vault", "X-Conference-Pin": pin})
            failed = await sock.recv("failed", call="c1", timeout=10)
            reasons.append(failed["headers"].get("X-Reason"))
        finally:
            await peer.close()
            await sock.ws.close()
    assert reasons == ["wrong_pin"] * 5 + ["too_many_attempts"] * 2
    assert "security event=pin_lockout src=127.0.0.1 scope=source" in serve_log(serve)
