"""Two ``callbridge serve`` nodes behind Kamailio with the shipped
``deploy/kamailio/dispatcher.cfg``: sipp's calls reach both nodes and all
complete (the engine's BYE goes back to sipp through the proxy); each node
judges a call by the caller's address, which Kamailio stamped on the
caller's Via, not by the proxy's: a rule open to 127.0.0.2 only answers
sipp bound to 127.0.0.2 and refuses sipp bound to 127.0.0.3, though both
reach the nodes from the proxy's 127.0.0.1. The proxy relays nobody's
requests to elsewhere but the nodes'. And with the nodes on one Redis
(``--directory``), a phone registered through the proxy with one node is
called by both."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator
from urllib.request import urlopen

import pytest

from kamailio_front import KamailioFront
from serve_process import ROOT, ServeProcess, free_port, free_ports
from sipp_load import answer_hangup_sipp, run_sipp_load
from tools import require_tool

pytestmark = pytest.mark.e2e

RULES = 'rules:\n  - {name: Lab, pattern: "bench", networks: [127.0.0.2/32], scenarios: [answer_hangup]}\n'


def started_calls(port: int) -> int:
    """``callbridge_calls_started`` of the node whose metrics are on ``port``."""
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return int(sum(float(v) for v in re.findall(r"^callbridge_calls_started_total\{[^}]*\} (\S+)$", text, re.M)))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[KamailioFront, list[ServeProcess], list[int]]]:
    require_tool("kamailio")
    require_tool("sipp")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    nodes: list[ServeProcess] = []
    metrics = free_ports(2)
    front: KamailioFront | None = None
    try:
        for i, mport in enumerate(metrics):
            workdir = tmp_path / f"node{i}"
            workdir.mkdir()
            node = ServeProcess(workdir, ["--rules", str(rules), "--scenarios", str(ROOT / "scenarios"),
                                          "--sip-proxies", "127.0.0.1", "--metrics-listen", f"127.0.0.1:{mport}",
                                          "--rtp-ports", f"{30000 + i * 2000}-{31999 + i * 2000}"])
            node.wait_healthy(20)
            nodes.append(node)
        front = KamailioFront(tmp_path / "kamailio", "127.0.0.1", free_port(),
                              [("127.0.0.1", n.sip_port) for n in nodes])
        yield front, nodes, metrics
    finally:
        if front is not None:
            front.stop()
        for node in nodes:
            node.stop()


def test_calls_through_kamailio_reach_both_nodes_as_the_callers(
        cluster: tuple[KamailioFront, list[ServeProcess], list[int]], tmp_path: Path) -> None:
    front, nodes, metrics = cluster
    run = run_sipp_load(answer_hangup_sipp(front.port), 20, 4, tmp_path, local_ip="127.0.0.2")
    assert run.successful == 80 and run.failed == 0, run.log.read_text()[-3000:]
    per_node = [started_calls(port) for port in metrics]
    assert sum(per_node) == 80 and min(per_node) >= 20, per_node  # Call-ID hashed: both take a share
    refused = run_sipp_load(answer_hangup_sipp(front.port), 5, 2, tmp_path, local_ip="127.0.0.3")
    assert refused.successful == 0 and refused.failed == 10
    assert [started_calls(port) for port in metrics] == per_node  # refused before any call started
    logs = "".join(n.log_path.read_text(errors="replace") for n in nodes)
    assert "security event=forbidden src=127.0.0.3" in logs and "src=127.0.0.1 " not in logs


def test_a_dead_node_is_taken_out_of_the_rotation_and_back_when_it_returns(
        cluster: tuple[KamailioFront, list[ServeProcess], list[int]], tmp_path: Path) -> None:
    """Kill one node outright: once the proxy's OPTIONS probes (every 2 s,
    2 s to answer) find it silent, every new call goes to the other node
    and completes, though half the Call-IDs hash to the dead one. A node
    started again on the same port is probed back into the rotation and
    takes calls again."""
    front, nodes, metrics = cluster
    dead = nodes[1]
    dead.proc.kill()
    dead.proc.wait(10)
    time.sleep(8.0)  # a probe interval, its 2 s timeout, and a margin for a busy machine
    before = started_calls(metrics[0])
    run = run_sipp_load(answer_hangup_sipp(front.port), 10, 4, tmp_path, local_ip="127.0.0.2")
    assert run.successful == 40 and run.failed == 0, run.log.read_text()[-3000:]
    assert started_calls(metrics[0]) - before == 40  # all on the live node
    workdir = tmp_path / "node1-again"
    workdir.mkdir()
    back = ServeProcess(workdir, ["--rules", str(tmp_path / "rules.yaml"), "--scenarios", str(ROOT / "scenarios"),
                                  "--sip-proxies", "127.0.0.1", "--rtp-ports", "36000-37999"],
                        sip_port=dead.sip_port)
    nodes.append(back)  # stopped by the fixture
    back.wait_healthy(20)
    time.sleep(5.0)  # the next probes find it
    before = started_calls(metrics[0])
    again = run_sipp_load(answer_hangup_sipp(front.port), 20, 4, tmp_path, local_ip="127.0.0.2")
    assert again.successful == 80 and again.failed == 0, again.log.read_text()[-3000:]
    on_first = started_calls(metrics[0]) - before
    assert 20 <= on_first <= 60, on_first  # the returned node took its share


def test_callers_on_tcp_reach_the_nodes_through_the_proxy(
        cluster: tuple[KamailioFront, list[ServeProcess], list[int]], tmp_path: Path) -> None:
    """sipp over TCP to the proxy (which forwards to the nodes over UDP):
    every call completes, the engine's BYE included, which the proxy
    carries back on sipp's connection, and both nodes take calls."""
    front, _, metrics = cluster
    before = [started_calls(port) for port in metrics]
    run = run_sipp_load(answer_hangup_sipp(front.port) + ["-t", "t1"], 10, 4, tmp_path, local_ip="127.0.0.2")
    assert run.successful == 40 and run.failed == 0, run.log.read_text()[-3000:]
    per_node = [started_calls(port) - b for port, b in zip(metrics, before)]
    assert sum(per_node) == 40 and min(per_node) >= 5, per_node


def test_the_proxy_relays_no_strangers_request_elsewhere(
        cluster: tuple[KamailioFront, list[ServeProcess], list[int]]) -> None:
    """An INVITE to somebody else's address through the proxy (toll fraud,
    reflection) gets 403 from Kamailio and reaches nobody."""
    front, _, _ = cluster
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(("127.0.0.1", 0))
    victim.settimeout(1.0)
    me = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    me.bind(("127.0.0.2", 0))
    me.settimeout(5.0)
    try:
        vport, lport = victim.getsockname()[1], me.getsockname()[1]
        me.sendto((f"INVITE sip:+15550100@127.0.0.1:{vport} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.2:{lport};branch=z9hG4bKrelay1;rport\r\n"
                   "From: <sip:mallory@127.0.0.2>;tag=m1\r\nTo: <sip:+15550100@127.0.0.1>\r\n"
                   "Call-ID: relay-attempt-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
                   "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", front.port))
        answer = me.recv(65535)
        assert answer.startswith(b"SIP/2.0 403 "), answer[:200]
        with pytest.raises(socket.timeout):
            victim.recv(65535)
    finally:
        victim.close()
        me.close()


DIAL_USER = '''
"""On a MESSAGE to 'dial': call the registered user named in its text, hang
up once connected."""
from engine.runtime.scenario import AppEvents, CallEvents, Logger, VoxEngine


def on_message(e):
    out = VoxEngine.call_user(e.text, callerid="5550100")

    def connected(ev):
        Logger.write("connected")
        out.hangup()

    out.add_event_listener(CallEvents.Connected, connected)
    out.add_event_listener(CallEvents.Disconnected, lambda ev: VoxEngine.terminate())
    out.add_event_listener(CallEvents.Failed, lambda ev: VoxEngine.terminate())


VoxEngine.add_event_listener(AppEvents.MessageReceived, on_message)
'''


class Phone:
    """A SIP phone on 127.0.0.2 behind the proxy: registers through it and
    answers every INVITE (200 with SDP), and every BYE."""

    def __init__(self, front: KamailioFront) -> None:
        self.front = front
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.2", 0))
        self.sock.settimeout(5.0)
        self.port = self.sock.getsockname()[1]
        self.invites: list[str] = []

    def register(self, password: str) -> int:
        from engine.sip.auth import ClientAuthSession
        from engine.sip.parser import parse_message

        uri = f"sip:127.0.0.1:{self.front.port}"
        auth = ClientAuthSession("alice", password)
        authorization = None
        for cseq in (1, 2):
            lines = [f"REGISTER {uri} SIP/2.0",
                     f"Via: SIP/2.0/UDP 127.0.0.2:{self.port};branch=z9hG4bKreg{cseq};rport",
                     "From: <sip:alice@127.0.0.1>;tag=ph1", "To: <sip:alice@127.0.0.1>",
                     "Call-ID: phone-registration-1", f"CSeq: {cseq} REGISTER",
                     f"Contact: <sip:alice@127.0.0.2:{self.port}>", "Expires: 600", "Max-Forwards: 70"]
            if authorization:
                lines.append(f"Authorization: {authorization}")
            self.sock.sendto(("\r\n".join(lines + ["Content-Length: 0", "", ""])).encode(),
                             ("127.0.0.1", self.front.port))
            answer = parse_message(self.sock.recv(65535))
            if answer.status != 401:
                return int(answer.status)
            challenge = auth.on_challenge(answer.headers.get_all("WWW-Authenticate"))
            authorization = auth.authorize(challenge.realm, method="REGISTER", uri=uri).to_header()
        return 401

    def answer_calls(self, calls: int, seconds: float) -> None:
        """Answer INVITEs and BYEs until ``calls`` calls were answered and
        hung up, or ``seconds`` passed."""
        from engine.sip.message import SipRequest
        from engine.sip.parser import parse_message
        deadline = time.monotonic() + seconds
        byes = 0
        while byes < calls and time.monotonic() < deadline:
            try:
                data, source = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            msg = parse_message(data)
            if not isinstance(msg, SipRequest):
                continue
            if msg.method == "INVITE":
                self.invites.append(msg.call_id)
                ok = msg.create_response(200, to_tag="ph" + msg.call_id[-6:])
                ok.headers.add("Contact", f"<sip:alice@127.0.0.2:{self.port}>")
                ok.headers.add("Content-Type", "application/sdp")
                ok.body = (f"v=0\r\no=ph 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
                           f"m=audio {self.port + 2 if self.port < 65000 else 40000} RTP/AVP 0\r\n"
                           "a=rtpmap:0 PCMU/8000\r\n").encode()
                self.sock.sendto(ok.to_bytes(), source)
            elif msg.method == "BYE":
                self.sock.sendto(msg.create_response(200).to_bytes(), source)
                byes += 1


def test_a_phone_registered_through_the_proxy_is_called_from_both_nodes(tmp_path: Path) -> None:
    """Two nodes on one Redis behind Kamailio: a phone registers through the
    proxy (with one node, by its Call-ID); MESSAGEs through the proxy, hashed
    to both nodes, each make a node call the phone (``call_user``); every
    call reaches the phone through the proxy, connects and is hung up, and
    both nodes placed some."""
    from redis_server import RedisServer

    require_tool("kamailio")
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "dial_user.py").write_text(DIAL_USER)
    rules = tmp_path / "rules.yaml"
    rules.write_text('rules:\n  - {name: Dial, pattern: "dial", scenarios: [dial_user]}\n')
    password = "s3cret-phone-pw"
    nodes: list[ServeProcess] = []
    front: KamailioFront | None = None
    phone: Phone | None = None
    metrics = free_ports(2)
    with RedisServer() as redis:
        try:
            for i, mport in enumerate(metrics):
                workdir = tmp_path / f"node{i}"
                workdir.mkdir()
                made = subprocess.run([sys.executable, "-m", "engine", "users", "create", "alice", "--sip",
                                       "--password-stdin", "--data-dir", str(workdir / "data")],
                                      input=password + "\n", text=True, capture_output=True, cwd=ROOT)
                assert made.returncode == 0, made.stderr
                node = ServeProcess(workdir, ["--rules", str(rules), "--scenarios", str(scenarios),
                                              "--sip-proxies", "127.0.0.1", "--directory", redis.url,
                                              "--metrics-listen", f"127.0.0.1:{mport}",
                                              "--rtp-ports", f"{34000 + i * 2000}-{35999 + i * 2000}"])
                node.wait_healthy(20)
                nodes.append(node)
            front = KamailioFront(tmp_path / "kamailio", "127.0.0.1", free_port(),
                                  [("127.0.0.1", n.sip_port) for n in nodes])
            phone = Phone(front)
            assert phone.register(password) == 200
            trigger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            trigger.bind(("127.0.0.3", 0))
            tport = trigger.getsockname()[1]
            for n in range(12):
                trigger.sendto((f"MESSAGE sip:dial@127.0.0.1:{front.port} SIP/2.0\r\n"
                                f"Via: SIP/2.0/UDP 127.0.0.3:{tport};branch=z9hG4bKmsg{n};rport\r\n"
                                f"From: <sip:trigger@127.0.0.3>;tag=t{n}\r\nTo: <sip:dial@127.0.0.1>\r\n"
                                f"Call-ID: dial-trigger-{n}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
                                "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nalice").encode(),
                               ("127.0.0.1", front.port))
            phone.answer_calls(12, 30.0)
            trigger.close()
            assert len(phone.invites) == 12, phone.invites
            placed = [started_calls(port) for port in metrics]
            assert sum(placed) == 12 and min(placed) >= 1, placed  # both nodes called the phone
            logs = "".join(n.log_path.read_text(errors="replace") for n in nodes)
            assert logs.count('msg="state CONNECTED"') == 12, logs[-3000:]
        finally:
            if phone is not None:
                phone.sock.close()
            if front is not None:
                front.stop()
            for node in nodes:
                node.stop()
