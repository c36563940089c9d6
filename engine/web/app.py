"""The aiohttp application: health, the web SDK's WebSocket (``/ws``) and
its JavaScript (``/sdk.js``), the demo video conference page (``/``,
its files under ``/static/``) and the management API under ``/api/v1``
(:mod:`engine.web.api`, a sub-application).

The engine is kept on the app under :data:`ENGINE` (an ``AppKey``), and
``GET /healthz`` answers 200 only once every listener is up (503 before,
with what is missing). Live SDK sockets are kept under :data:`CONNECTIONS`
and closed with GOING_AWAY at shutdown (their calls end first).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web

from engine.web.api import PREFIX, create_api
from engine.web.errors import ApiError, error_response
from engine.web.metrics import scrape
from engine.web.ws import SdkConnection, serve_socket

logger = logging.getLogger(__name__)

__all__ = ["ENGINE", "CONNECTIONS", "STATIC", "create_app"]

ENGINE: web.AppKey[Any] = web.AppKey("engine", object)
CONNECTIONS: web.AppKey[set[SdkConnection]] = web.AppKey("sdk_connections", set)

#: Files served as they are (the JS SDK).
STATIC = Path(__file__).parent / "static"


async def healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    problems = engine.health_problems()
    if problems:
        return web.json_response({"status": "starting", "problems": problems}, status=503)
    return web.json_response(
        {
            "status": "ok",
            "sip": {"hosts": engine.config.sip_hosts, "port": engine.ua.port},
            "sessions": len(engine.runtime.sessions),
            "calls": len(engine.ua.calls),
            "sip_transactions": engine.ua.endpoint.layer.server_count,
            "web_calls": sum(len(conn.calls) for conn in request.app[CONNECTIONS]),
        }
    )


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn errors into ``{"error": {"code", "message", "field"}}`` JSON;
    an unexpected exception is logged and answered 500 ``internal``."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, (exc.reason or "error").lower().replace(" ", "_"),
                              exc.text or exc.reason)
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal", "the engine failed to handle this request")


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus' text format, for an API key with the
    ``metrics`` scope (:mod:`engine.web.metrics`)."""
    return await scrape(request, request.app[ENGINE])


async def sdk_socket(request: web.Request) -> web.StreamResponse:
    """``GET /ws``: the web SDK's signalling (docs/sdk-protocol.md)."""
    return await serve_socket(request, request.app[ENGINE], request.app[CONNECTIONS])


async def sdk_js(request: web.Request) -> web.FileResponse:
    """``GET /sdk.js``: the JS SDK, an ES module. Any origin may import it
    (an application's pages are often served elsewhere); the module then
    connects to this engine's ``/ws``."""
    return web.FileResponse(
        STATIC / "sdk.js",
        headers={
            "Content-Type": "text/javascript; charset=utf-8",
            "Cache-Control": "no-cache",
            "Access-Control-Allow-Origin": "*",
        },
    )


async def client_config(request: web.Request) -> web.Response:
    """``GET /config.json``: what the demo page needs before it connects:
    whether the engine takes guests (``--guests``; off: the page asks for
    a user name and password, or takes a one-time login link)."""
    engine = request.app[ENGINE]
    return web.json_response({"guests": bool(getattr(engine.config, "guest_login", True))},
                             headers={"Cache-Control": "no-cache"})


async def demo_page(request: web.Request) -> web.FileResponse:
    """``GET /``: the demo video conference (static/index.html, app.js,
    app.css): guests join conference N by name, see each other's video peer
    to peer and talk with phone callers through the conference."""
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def close_sockets(app: web.Application) -> None:
    connections = app[CONNECTIONS]
    for conn in list(connections):
        conn.connection_lost()
        if conn.ws.prepared:  # not one still upgrading
            await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def create_app(engine: Any, connections: set[SdkConnection] | None = None) -> web.Application:
    """The HTTP application of ``engine``.

    :param connections: the set live SDK sockets are kept in (the one the
        engine's :class:`~engine.web.ws.WebUsers` reads), or ``None``: a new one.
    """
    app = web.Application(middlewares=[json_errors])
    app[ENGINE] = engine
    if connections is None:
        connections = set()
    app[CONNECTIONS] = connections
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ws", sdk_socket)
    app.router.add_get("/sdk.js", sdk_js)
    app.router.add_get("/", demo_page)
    app.router.add_get("/config.json", client_config)
    app.router.add_static("/static/", STATIC, append_version=False)
    app.add_subapp(PREFIX, create_api(engine, tuple(getattr(engine.config, "cors_origins", ()))))
    app.on_shutdown.append(close_sockets)
    return app
