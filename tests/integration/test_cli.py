"""The ``callbridge`` command as a user runs it: ``serve`` (as its own
process), ``rules check``, ``call``, ``users`` and ``rooms``."""

from __future__ import annotations

import asyncio
import os
import signal
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.request import urlopen

import pytest

from serve_process import free_ports

ROOT = Path(__file__).resolve().parents[2]


def callbridge(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def write_app(tmp_path: Path, rules: str, scenarios: dict[str, str]) -> Path:
    (tmp_path / "rules.yaml").write_text(textwrap.dedent(rules))
    scen = tmp_path / "scenarios"
    scen.mkdir()
    for name, source in scenarios.items():
        (scen / f"{name}.py").write_text(textwrap.dedent(source))
    return tmp_path


def test_rules_check_on_the_shipped_rules() -> None:
    """``callbridge rules check`` accepts the repository's rules.yaml and
    says which rule a number reaches: anything the others miss reaches P2P
    (the last rule, ``.*``: calls to users)."""
    result = callbridge("rules", "check", "echo", "nobody")
    assert result.returncode == 0, result.stderr
    assert "rules OK" in result.stdout
    assert "'echo' Echo: matched" in result.stdout
    assert "'nobody' P2P: matched" in result.stdout


def test_rules_check_names_file_line_and_reason(tmp_path: Path) -> None:
    """A bad pattern is reported with the file, the line and the reason."""
    app = write_app(tmp_path, """\
        rules:
          - name: Fwd
            pattern: "conf_["
            scenarios: [s]
        """, {"s": "x = 1\n"})
    result = callbridge("rules", "check", cwd=app)
    assert result.returncode == 1
    assert "rules.yaml:3:" in result.stderr
    assert "not a valid regular expression" in result.stderr


def test_serve_refuses_bad_rules_and_broken_scenarios(tmp_path: Path) -> None:
    """``serve`` stops at start-up, exit code 2, on a rules.yaml naming a
    missing scenario and on a scenario with a syntax error, each time with
    the file, line and reason."""
    app = write_app(tmp_path, """\
        rules:
          - {name: A, pattern: "a", scenarios: [missing_one]}
        """, {"broken": "def f(:\n"})
    sip, http = free_ports(2)
    args = ["serve", "--sip-port", str(sip), "--http-port", str(http)]
    result = callbridge(*args, cwd=app)
    assert result.returncode == 2
    assert "rules.yaml:2:" in result.stderr and "'missing_one' not found" in result.stderr
    (app / "rules.yaml").write_text('rules:\n  - {name: A, pattern: "a", scenarios: [broken]}\n')
    result = callbridge(*args, cwd=app)
    assert result.returncode == 2
    assert "broken.py:1:" in result.stderr and "invalid syntax" in result.stderr


def test_serve_call_and_shutdown(tmp_path: Path) -> None:
    """``callbridge serve`` (its own process) becomes healthy, ``callbridge
    call`` places a call the shipped answer_hangup scenario answers and
    hangs up, the logs are key=value lines with session and call ids, and
    SIGTERM stops the server cleanly (exit 0)."""
    sip, http = free_ports(2)
    env = dict(os.environ, CALLBRIDGE_SIP_PORT=str(sip), CALLBRIDGE_HTTP_PORT=str(http),
               CALLBRIDGE_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with proc:  # the pipes are closed whatever happens
        try:
            # A wait for readiness, not a timing check: a loaded CI machine
            # may take a while to import aiortc and numpy.
            deadline = time.monotonic() + 90
            status = None
            while time.monotonic() < deadline and status != 200 and proc.poll() is None:
                try:
                    with urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1) as resp:
                        status = resp.status
                except OSError:
                    time.sleep(0.1)
            if status != 200:
                proc.kill()
                _, early = proc.communicate()
                raise AssertionError(f"serve never became healthy (exit {proc.returncode}):\n{early[-3000:]}")
            result = callbridge("call", "100", "--to", f"127.0.0.1:{sip}", "--duration", "5",
                                "--header", "X-Trace: cli-test")
            assert result.returncode == 0, result.stdout + result.stderr
            assert result.stdout.splitlines()[:2] == ["Connected 200 OK", "Disconnected 200 BYE"]
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    lines = [ln for ln in err.splitlines() if ln.startswith("ts=")]
    assert any("msg=\"callbridge ready" in ln for ln in lines)
    assert any(" call=" in ln and "state CONNECTED" in ln for ln in lines)
    logs = "".join(p.read_text() for p in (tmp_path / "data" / "logs").glob("sessions-*.log"))
    assert "call from callbridge-cli to 100" in logs


def test_users_and_rooms_commands(tmp_path: Path) -> None:
    """``users`` and ``rooms`` create, list and delete in the store; a
    duplicate or a bad name is refused with a clear message."""
    data = str(tmp_path / "data")
    assert callbridge("users", "--data-dir", data, "create", "alice", "--password", "pw-123456").returncode == 0
    dup = callbridge("users", "--data-dir", data, "create", "alice", "--password", "x1234567")
    assert dup.returncode == 1 and "already exists" in dup.stderr
    assert "alice" in callbridge("users", "--data-dir", data, "list").stdout
    assert callbridge("users", "--data-dir", data, "delete", "alice").returncode == 0
    assert callbridge("users", "--data-dir", data, "delete", "alice").returncode == 1
    made = callbridge("rooms", "--data-dir", data, "create", "1234", "--no-pin")
    assert made.returncode == 0 and "PIN 1234" in made.stdout
    assert "1234" in callbridge("rooms", "--data-dir", data, "list").stdout
    bad = callbridge("rooms", "--data-dir", data, "create", "no spaces")
    assert bad.returncode == 1 and "room" in bad.stderr
    pinned = callbridge("rooms", "--data-dir", data, "create", "class", "--pin", "432198",
                        "--max-participants", "30")
    assert pinned.returncode == 0 and "PIN 432198" in pinned.stdout
    bad_pin = callbridge("rooms", "--data-dir", data, "create", "other", "--pin", "12")
    assert bad_pin.returncode == 1 and "invalid pin: must be 6 to 16 digits" in bad_pin.stderr


def test_rooms_create_draws_a_pin_shown_once(tmp_path: Path) -> None:
    """Check ``rooms create`` without a PIN prints a random 6-digit one
    (the PIN the engine then accepts, with the same key file), a 4-digit
    ``--pin`` is refused naming the field, and ``rooms list`` and the
    database file never show a PIN."""
    from engine.state.store import SqliteStore
    from engine.runtime.tokens import Keys

    data = tmp_path / "data"
    made = callbridge("rooms", "--data-dir", str(data), "create", "weekly")
    assert made.returncode == 0, made.stderr
    pin = re.search(r"PIN ([0-9]+)", made.stdout)
    assert pin is not None and len(pin.group(1)) == 6
    short = callbridge("rooms", "--data-dir", str(data), "create", "other", "--pin", "4321")
    assert short.returncode == 1 and "invalid pin: must be 6 to 16 digits" in short.stderr
    listed = callbridge("rooms", "--data-dir", str(data), "list").stdout
    assert "weekly" in listed and pin.group(1) not in listed
    assert pin.group(1).encode() not in (data / "callbridge.sqlite3").read_bytes()
    keys = Keys.in_directory(data)
    with SqliteStore.in_directory(data, pin_key=keys.pin_key) as store:
        found = store.find_room_by_pin(pin.group(1))
        assert found is not None and (found[0].room_id, found[1]) == ("weekly", "guest")


async def test_unrouted_caller_never_reaches_the_trunk(make_engine) -> None:
    """With a trunk configured, an INVITE for a PSTN-looking number that no
    rule matches gets 404 and nothing is sent to the trunk: the engine does
    not proxy, only a scenario's call_pstn reaches the trunk."""
    trunk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trunk.bind(("127.0.0.1", 0))
    trunk.setblocking(False)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller.setblocking(False)
    try:
        engine = await make_engine(
            'rules:\n  - {name: Only, pattern: "echo", scenarios: [answer_wait_hangup]}\n',
            trunk=f"sip:acct:secret@127.0.0.1:{trunk.getsockname()[1]}",
        )
        port = caller.getsockname()[1]
        invite = (
            f"INVITE sip:+15551234567@127.0.0.1:{engine.ua.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKtoll1;rport\r\n"
            f"From: <sip:attacker@127.0.0.1>;tag=a1\r\nTo: <sip:+15551234567@127.0.0.1>\r\n"
            f"Call-ID: toll-fraud-1\r\nCSeq: 1 INVITE\r\nContact: <sip:attacker@127.0.0.1:{port}>\r\n"
            f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(caller, invite, ("127.0.0.1", engine.ua.port))
        codes = []
        for _ in range(2):
            data = await asyncio.wait_for(loop.sock_recv(caller, 65535), 5)
            codes.append(int(data.split(b" ", 2)[1]))
        assert codes[-1] == 404
        await asyncio.sleep(0.3)
        with pytest.raises(BlockingIOError):
            trunk.recv(65535)
    finally:
        trunk.close()
        caller.close()


def test_users_create_takes_the_password_off_argv(tmp_path: Path) -> None:
    """Check ``--password-stdin`` reads the password from standard input
    (nothing secret in argv), ``--password`` still works but warns that argv
    is public, no password at all (no terminal) is a clear error, and
    ``--sip`` is what gives a user SIP digest hashes."""
    from engine.state.store import SqliteStore

    data = str(tmp_path / "data")
    piped = subprocess.run([sys.executable, "-m", "engine", "users", "--data-dir", data, "create", "alice",
                            "--password-stdin", "--sip"], cwd=ROOT, capture_output=True, text=True,
                           input="s3cret pw\n", timeout=60)
    assert piped.returncode == 0 and "created user alice (SIP enabled)" in piped.stdout
    assert "warning" not in piped.stderr
    visible = callbridge("users", "--data-dir", data, "create", "bob", "--password", "pw-123456")
    assert visible.returncode == 0 and "warning: --password is visible" in visible.stderr
    missing = subprocess.run([sys.executable, "-m", "engine", "users", "--data-dir", data, "create", "cy"],
                             cwd=ROOT, capture_output=True, text=True, input="", timeout=60)
    assert missing.returncode == 1 and "--password-stdin" in missing.stderr
    with SqliteStore.in_directory(data) as store:
        assert store.verify_password("alice", "s3cret pw") and store.verify_password("bob", "pw-123456")
        assert store.sip_ha1("alice", "callbridge", "MD5") and store.sip_ha1("bob", "callbridge", "MD5") is None
        assert store.get_user("cy") is None


def test_serve_refuses_a_proxy_that_is_no_address(tmp_path: Path) -> None:
    """``--sip-proxies`` takes the proxies' source addresses: a name is
    refused at start-up, naming it (it would never match a datagram's
    source, and the operator would think the proxy trusted)."""
    app = write_app(tmp_path, 'rules:\n  - {name: A, pattern: "a", scenarios: [answer]}\n', {"answer": ""})
    sip, http = free_ports(2)
    result = callbridge("serve", "--sip-port", str(sip), "--http-port", str(http),
                        "--sip-proxies", "127.0.0.1, lb.example.com", cwd=app)
    assert result.returncode != 0
    assert "--sip-proxies: 'lb.example.com' is not an IP address" in result.stderr
