"""Tests for ``Net.http_request`` (:mod:`engine.runtime.scenario`) against a real
aiohttp server on 127.0.0.1: results, timeouts and network errors, which
come back as ``code=0`` with ``error`` and never as exceptions."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engine.runtime.router import parse_rules
from engine.runtime.scenario import HTTP_MAX_BODY, HttpResponse, Net, ScenarioRuntime, Session
from engine.state.directory import MemoryDirectory


class Site:
    """A small HTTP server: ``/hello``, ``/echo`` and ``/slow`` (which
    answers only when released, so the test never waits for it)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/hello", self.hello)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/huge", self.huge)
        self.server = TestServer(app, host="127.0.0.1")

    async def hello(self, request: web.Request) -> web.Response:
        return web.Response(text="héllo", headers={"X-Test": "yes"})

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.text()
        return web.json_response(
            {"method": request.method, "body": body, "x": request.headers.get("X-Client")},
            status=201,
        )

    async def slow(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(text="late")

    async def huge(self, request: web.Request) -> web.StreamResponse:
        """An answer 4 MiB longer than HTTP_MAX_BODY, written in 64 KiB chunks."""
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        chunk = b"a" * 65536
        try:
            for _ in range((HTTP_MAX_BODY + 4 * 2**20) // len(chunk)):
                await resp.write(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client stopped reading and closed
        return resp

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    server = Site()
    await server.server.start_server()
    yield server
    server.release.set()
    await server.server.close()


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[Session]:
    """A running scenario session (Net is only available inside one)."""
    (tmp_path / "idle.py").write_text("")
    rules = parse_rules('rules: [{name: Api, pattern: "api", scenarios: [idle]}]',
                        scenarios_dir=tmp_path)
    runtime = ScenarioRuntime(rules, tmp_path, ua=None, directory=MemoryDirectory())
    yield runtime.start_session(rules.rules[0])
    await runtime.stop()


async def request(session: Session, url: str, **kwargs: Any) -> HttpResponse:
    """Run Net.http_request inside ``session``, as scenario code would."""
    result: HttpResponse = await session.spawn(Net.http_request(url, **kwargs))
    return result


async def test_get_returns_code_text_and_headers(site: Site, session: Session) -> None:
    """Check a GET returns the status, the decoded text and the headers."""
    response = await request(session, site.url("/hello"))
    assert (response.code, response.text, response.error) == (200, "héllo", None)
    assert response.headers["X-Test"] == "yes"


async def test_post_sends_method_headers_and_body(site: Site, session: Session) -> None:
    """Check method, headers and body reach the server, and json() parses the answer."""
    response = await request(session, site.url("/echo"), method="POST",
                             headers={"X-Client": "scenario"}, body='{"pin": 1}')
    assert response.code == 201
    assert response.json() == {"method": "POST", "body": '{"pin": 1}', "x": "scenario"}


async def test_timeout_returns_code_0(site: Site, session: Session) -> None:
    """Check a request slower than its timeout returns code 0, error
    'timeout', and a line in the session log."""
    response = await request(session, site.url("/slow"), timeout=0.05)
    assert (response.code, response.text, response.headers, response.error) == (0, "", {}, "timeout")
    assert any("timeout after 0.05 s" in line for line in session.log_lines)
    assert not session.terminated


async def test_network_errors_return_code_0(session: Session) -> None:
    """Check a refused connection and a URL that cannot be requested both
    return code 0 with an error text, and the session goes on."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = await request(session, f"http://127.0.0.1:{port}/")
    assert refused.code == 0 and refused.error and "connect" in refused.error.lower()
    bad = await request(session, "not a url")
    assert bad.code == 0 and bad.error
    assert not session.terminated and session.error is None


async def test_long_body_is_cut_at_the_limit(site: Site, session: Session) -> None:
    """Check an answer longer than HTTP_MAX_BODY keeps its code, is cut at
    the limit (never read whole), and says so in ``error``."""
    result = await request(session, site.url("/huge"))
    assert result.code == 200
    assert len(result.text) == HTTP_MAX_BODY and set(result.text) == {"a"}
    assert result.error == f"body over {HTTP_MAX_BODY} bytes: cut"
