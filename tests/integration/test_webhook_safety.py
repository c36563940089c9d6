"""Webhook deliveries against hostile receivers (engine.web.webhooks): no
redirect is followed, an endless answer is not read whole, and with
``--webhook-private-networks deny`` (the default) no webhook reaches a
private address, neither named in the URL (refused at registration) nor
behind a host name (refused at delivery, on the resolved addresses)."""

from __future__ import annotations

import logging
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from local_site import local_site

from engine.server import Engine
from engine.state.store import Delivery
from engine.web.webhooks import MAX_RESPONSE_BYTES

from .api_client import Api, error, new_key
from .conftest import EngineFactory, wait_until

RULES = """
rules:
  - {name: Echo, pattern: "echo", scenarios: [answer_wait_hangup]}
"""

#: What the /huge route offers to send: far more than the bound plus
#: every socket buffer between the two ends.
HUGE = 64 * 1024 * 1024


class Receivers:
    """One local HTTP server: ``/hook`` records every request (any method),
    ``/redirect`` answers 302 to ``/hook``, ``/huge`` answers 200 with a
    64 MiB body and records how much of it went out."""

    def __init__(self) -> None:
        self.hooked: list[str] = []
        self.huge_sent = 0
        self.huge_done = False
        self.base = ""

    async def hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.hooked.append(request.method)
        return web.Response(status=204)

    async def redirect(self, request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPFound(f"{self.base}/hook")

    async def huge(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=200)
        resp.content_length = HUGE
        await resp.prepare(request)
        chunk = b"x" * 65536
        try:
            while self.huge_sent < HUGE:
                await resp.write(chunk)
                self.huge_sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client closed the connection: the send is cut
        finally:
            self.huge_done = True
        return resp


@pytest.fixture
async def receivers() -> AsyncIterator[Receivers]:
    rec = Receivers()
    app = web.Application()
    app.router.add_route("*", "/hook", rec.hook)
    app.router.add_post("/redirect", rec.redirect)
    app.router.add_post("/huge", rec.huge)
    async with local_site(app) as base:
        rec.base = base
        yield rec


def subscribe(engine: Engine, url: str) -> str:
    """Subscribe ``url`` to recording.ready behind the API's back and
    publish one event; return the webhook id."""
    assert engine.store is not None and engine.webhooks is not None
    hook = engine.store.create_webhook(url, ["recording.ready"])
    engine.webhooks.refresh()
    engine.webhooks.publish("recording.ready", {"room": "r", "path": "x.wav"})
    return hook.webhook_id


def delivery(engine: Engine, webhook_id: str) -> Delivery:
    assert engine.store is not None
    (only,) = engine.store.list_deliveries(webhook_id)
    return only


async def test_redirect_is_a_failed_attempt_not_followed(make_engine: EngineFactory,
                                                         receivers: Receivers) -> None:
    """A receiver answering 302 to another URL: the attempt is recorded as
    failed with code 302 and retried; the other URL never gets a request."""
    engine = await make_engine(RULES, webhook_private_networks=True, webhook_retry_delay=0.05)
    hook = subscribe(engine, f"{receivers.base}/redirect")
    assert await wait_until(lambda: delivery(engine, hook).attempts >= 2)
    seen = delivery(engine, hook)
    assert (seen.status, seen.last_code, seen.last_error) == ("pending", 302, "HTTP 302")
    assert receivers.hooked == []


async def test_endless_answer_is_read_only_up_to_the_bound(make_engine: EngineFactory,
                                                           receivers: Receivers) -> None:
    """A receiver answering 200 with a 64 MiB body: the delivery is
    recorded as delivered, and the receiver's send is cut well short of the
    body (the engine read at most MAX_RESPONSE_BYTES, then closed)."""
    engine = await make_engine(RULES, webhook_private_networks=True)
    hook = subscribe(engine, f"{receivers.base}/huge")
    assert await wait_until(lambda: receivers.huge_done and delivery(engine, hook).status != "pending",
                            timeout=15)
    seen = delivery(engine, hook)
    assert (seen.status, seen.last_code) == ("delivered", 200)
    assert MAX_RESPONSE_BYTES <= receivers.huge_sent < HUGE // 2


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hooks", "http://[::1]/hooks", "http://10.1.2.3/hooks",
    "https://192.168.0.10/hooks", "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:127.0.0.1]/hooks", "http://0.0.0.0/hooks", "http://224.0.0.1/",
])
async def test_private_address_refused_at_registration(make_engine: EngineFactory,
                                                       http: aiohttp.ClientSession, url: str) -> None:
    """With private networks denied (the default), ``POST /webhooks`` with
    a URL naming a loopback, private, link-local, mapped, unspecified or
    multicast address answers 400 naming the url field."""
    engine = await make_engine(RULES)
    api = Api(engine, http, new_key(engine, "admin"))
    status, body = await api.post("/webhooks", {"url": url, "events": ["room.ended"]})
    assert status == 400 and error(body) == ("invalid_field", "url")
    assert "private address" in body["error"]["message"]
    status, body = await api.post("/webhooks", {"url": "https://hooks.example.com/x",
                                                "events": ["room.ended"]})
    assert status == 201


async def test_private_address_allowed_when_configured(make_engine: EngineFactory,
                                                       http: aiohttp.ClientSession) -> None:
    """With ``--webhook-private-networks allow`` a 127.0.0.1 webhook is accepted."""
    engine = await make_engine(RULES, webhook_private_networks=True)
    api = Api(engine, http, new_key(engine, "admin"))
    status, _ = await api.post("/webhooks", {"url": "http://127.0.0.1:9/hooks", "events": ["room.ended"]})
    assert status == 201


async def test_host_name_resolving_to_loopback_refused_at_delivery(
        make_engine: EngineFactory, receivers: Receivers, caplog: pytest.LogCaptureFixture) -> None:
    """With private networks denied, a webhook to ``localhost`` (a name:
    accepted at registration) is refused when the connector resolves it to
    a loopback address: the attempt fails saying so, a security event is
    logged, and the receiver on 127.0.0.1 gets nothing."""
    engine = await make_engine(RULES, webhook_retry_delay=0.05)
    caplog.set_level(logging.WARNING, logger="callbridge.security")
    hook = subscribe(engine, f"{receivers.base.replace('127.0.0.1', 'localhost')}/hook")
    assert await wait_until(lambda: delivery(engine, hook).attempts >= 1)
    seen = delivery(engine, hook)
    assert seen.status == "pending" and seen.last_code is None
    assert seen.last_error is not None and "localhost" in seen.last_error
    assert "is a private address" in seen.last_error
    assert any("event=webhook_refused" in r.getMessage() and "host=localhost" in r.getMessage()
               for r in caplog.records)
    assert receivers.hooked == []
