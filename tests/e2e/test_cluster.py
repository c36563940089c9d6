"""Two ``callbridge serve`` nodes behind Kamailio with the shipped
``deploy/kamailio/dispatcher.cfg``: sipp's calls reach both nodes and all
complete (the engine's BYE goes back to sipp through the proxy); each node
judges a call by the caller's address, which Kamailio stamped on the
caller's Via, not by the proxy's: a rule open to 127.0.0.2 only answers
sipp bound to 127.0.0.2 and refuses sipp bound to 127.0.0.3, though both
reach the nodes from the proxy's 127.0.0.1. And the proxy relays nobody's
requests to elsewhere but the nodes'."""

from __future__ import annotations

import re
import socket
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
