"""HTTPS and WSS on the HTTP port (``tls_cert``/``tls_key``): the API and
the SDK socket through real TLS clients that trust only the development
certificate, the start-up refusals, reloading the pair in place, and
``callbridge serve --tls-cert --tls-key`` as its own process (warning for a
self-signed certificate, SIGHUP)."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from serve_process import free_ports
from tls_certs import make_pair, served_serial, serial_of, trusting

from engine.server import Engine, StartupError
from engine.transport.tls import write_dev_certificate

from .api_client import new_key
from .conftest import EngineFactory
from .test_cli import ROOT

RULES = """\
rules:
  - {name: Web, pattern: "echo", scenarios: [web_echo]}
"""


async def tls_engine(make_engine: EngineFactory, cert: Path, key: Path) -> Engine:
    return await make_engine(RULES, tls_cert=cert, tls_key=key)


async def guest_login(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """``hello`` then ``login`` as a guest over ``ws``; the login reply."""
    await ws.send_json({"type": "hello", "version": 1, "ref": "h"})
    assert (await ws.receive_json(timeout=5))["type"] == "hello"
    await ws.send_json({"type": "login", "guest": "Tls Guest", "ref": "l"})
    reply: dict[str, Any] = await ws.receive_json(timeout=5)
    return reply


async def test_api_over_https_and_sdk_over_wss(make_engine: EngineFactory, tmp_path: Path) -> None:
    """Check a client trusting only the development certificate reaches
    ``/healthz`` and ``/api/v1`` over HTTPS (by address and by the name
    ``localhost``, both in the certificate), logs in as a guest over WSS
    and gets ``login_ok``; and that clear-text HTTP gets nothing."""
    cert, key = write_dev_certificate(tmp_path / "tls")
    engine = await tls_engine(make_engine, cert, key)
    base = f"https://127.0.0.1:{engine.http_port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(cert))) as http:
        for url in (base, f"https://localhost:{engine.http_port}"):
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with http.get(f"{base}/api/v1/users",
                            headers={"Authorization": f"Bearer {new_key(engine)}"}) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{base}/sdk.js") as resp:
            assert resp.status == 200 and "wss:" in await resp.text()
        async with http.ws_connect(f"wss://127.0.0.1:{engine.http_port}/ws") as ws:
            reply = await guest_login(ws)
            assert reply["type"] == "login_ok" and reply["username"].startswith("guest-"), reply
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{engine.http_port}/healthz") as resp:
                await resp.read()


async def test_start_logs_the_certificate_and_warns_about_a_loose_key(
        make_engine: EngineFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Check the start logs the certificate served (subject, serial), the
    self-signed warning, and a warning for a key file other users can read."""
    cert, key = write_dev_certificate(tmp_path / "tls")
    key.chmod(0o644)
    with caplog.at_level(logging.INFO, logger="engine.server"):
        await tls_engine(make_engine, cert, key)
    assert f"serial={serial_of(cert):x} valid until" in caplog.text
    assert "is self-signed: development certificate, not for production" in caplog.text
    assert f"TLS key {key} is readable by every local user: chmod 600 it" in caplog.text


async def test_untrusted_client_is_refused(make_engine: EngineFactory, tmp_path: Path) -> None:
    """Check a client trusting another certificate fails verification: the
    engine serves the configured certificate, not some default."""
    cert, key = write_dev_certificate(tmp_path / "tls")
    other, _ = write_dev_certificate(tmp_path / "other")
    engine = await tls_engine(make_engine, cert, key)
    with pytest.raises(ssl.SSLCertVerificationError):
        await served_serial("127.0.0.1", engine.http_port or 0, trusting(other))
    assert await served_serial("127.0.0.1", engine.http_port or 0, trusting(cert)) == serial_of(cert)


async def test_reload_serves_the_new_certificate_and_keeps_sockets(
        make_engine: EngineFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Check ``reload_tls`` after the files changed: a new TLS connection is
    given the new certificate's serial, a WSS socket opened before still
    answers; then a key that does not match is refused with an error log
    and the certificate before it stays in use."""
    cert, key = write_dev_certificate(tmp_path / "tls")
    old_serial = serial_of(cert)
    (tmp_path / "old.pem").write_bytes(cert.read_bytes())
    engine = await tls_engine(make_engine, cert, key)
    port = engine.http_port or 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(cert))) as http:
        async with http.ws_connect(f"wss://127.0.0.1:{port}/ws") as ws:
            assert (await guest_login(ws))["type"] == "login_ok"
            write_dev_certificate(tmp_path / "tls", overwrite=True)
            new_serial = serial_of(cert)
            assert new_serial != old_serial
            assert await served_serial("127.0.0.1", port, trusting(tmp_path / "old.pem")) == old_serial
            assert engine.reload_tls() is True
            new = trusting(cert)  # only the new certificate: the old one fails verification
            assert await served_serial("127.0.0.1", port, new) == new_serial
            await ws.send_json({"type": "ping", "ts": 1, "ref": "p"})
            assert (await ws.receive_json(timeout=5))["type"] == "pong"
            assert not ws.closed
            # A mismatched pair: refused, the new certificate stays.
            _, stray_key = write_dev_certificate(tmp_path / "stray")
            key.write_bytes(stray_key.read_bytes())
            with caplog.at_level(logging.ERROR, logger="engine.server"):
                assert engine.reload_tls() is False
            assert "TLS reload refused, the previous certificate stays in use" in caplog.text
            assert "does not match the certificate" in caplog.text
            assert await served_serial("127.0.0.1", port, new) == new_serial
            await ws.send_json({"type": "ping", "ts": 2, "ref": "p2"})
            assert (await ws.receive_json(timeout=5))["type"] == "pong"


@pytest.mark.parametrize("case", ["cert only", "key only", "missing cert", "missing key", "mismatch",
                                  "expired", "not yet valid"])
async def test_startup_refuses_unusable_tls(make_engine: EngineFactory, tmp_path: Path, case: str) -> None:
    """Check each unusable TLS setting stops the engine at start-up with a
    sentence naming the fault."""
    cert, key = write_dev_certificate(tmp_path / "tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    expected = {
        "cert only": (dict(tls_cert=cert), "--tls-cert needs --tls-key"),
        "key only": (dict(tls_key=key), "--tls-key needs --tls-cert"),
        "missing cert": (dict(tls_cert=tmp_path / "none.pem", tls_key=key), "none.pem: no such file"),
        "missing key": (dict(tls_cert=cert, tls_key=tmp_path / "none.pem"), "none.pem: no such file"),
        "mismatch": (dict(tls_cert=cert, tls_key=write_dev_certificate(tmp_path / "b")[1]),
                     "does not match the certificate"),
        "expired": (dict(zip(("tls_cert", "tls_key"),
                             make_pair(tmp_path / "old", not_before=now - 30 * day, not_after=now - day))),
                    "has expired: valid until"),
        "not yet valid": (dict(zip(("tls_cert", "tls_key"),
                                   make_pair(tmp_path / "new", not_before=now + day, not_after=now + 30 * day))),
                          "is not valid yet: valid from"),
    }
    overrides, message = expected[case]
    with pytest.raises(StartupError, match=message):
        await make_engine(RULES, **overrides)


def _wait_https(port: int, cert: Path, proc: subprocess.Popen[str]) -> int:
    """Poll ``https://127.0.0.1:port/healthz`` (trusting ``cert``) until 200."""
    from urllib.request import urlopen

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urlopen(f"https://127.0.0.1:{port}/healthz", timeout=1, context=trusting(cert)) as resp:
                return int(resp.status)
        except OSError:
            time.sleep(0.1)
    return 0


def test_serve_with_tls_warns_self_signed_and_reloads_on_sighup(tmp_path: Path) -> None:
    """Check ``callbridge serve`` with the development pair (through the
    ``CALLBRIDGE_TLS_CERT/KEY`` environment) answers over HTTPS, logs the
    self-signed warning, loads a new pair on SIGHUP (the new serial is
    served) and still stops cleanly on SIGTERM; and with ``--tls-cert``
    alone exits 2 saying what is missing."""
    cert, key = write_dev_certificate(tmp_path / "tls")
    sip, http, sip_tls = free_ports(3)
    base = [sys.executable, "-m", "engine", "serve", "--sip-port", str(sip), "--http-port", str(http),
            "--sip-tls-port", str(sip_tls), "--data-dir", str(tmp_path / "data")]
    alone = subprocess.run([*base, "--tls-cert", str(cert)], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert alone.returncode == 2
    assert "callbridge: --tls-cert needs --tls-key" in alone.stderr
    env = dict(os.environ, CALLBRIDGE_TLS_CERT=str(cert), CALLBRIDGE_TLS_KEY=str(key))
    proc = subprocess.Popen(base, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if _wait_https(http, cert, proc) != 200:
            proc.kill()
            _, early = proc.communicate()
            raise AssertionError(f"serve never became healthy over HTTPS (exit {proc.returncode}):\n{early[-3000:]}")
        (tmp_path / "old.pem").write_bytes(cert.read_bytes())
        write_dev_certificate(tmp_path / "tls", overwrite=True)
        proc.send_signal(signal.SIGHUP)
        new = trusting(cert)  # only the new certificate: the old one fails verification

        async def serial_after_reload() -> int:
            for _ in range(100):  # the signal is handled a moment later
                try:
                    return await served_serial("127.0.0.1", http, new)
                except ssl.SSLCertVerificationError:
                    await asyncio.sleep(0.1)
            raise AssertionError("the new certificate is never served after SIGHUP")

        assert asyncio.run(serial_after_reload()) == serial_of(cert)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "development certificate, not for production" in err
    assert "TLS certificate reloaded" in err
    ready = [ln for ln in err.splitlines() if "callbridge ready" in ln]
    assert ready and f"https=127.0.0.1:{http}" in ready[0], json.dumps(ready)
