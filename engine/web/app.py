"""The aiohttp application: health now; the web SDK's WebSocket, the
management API and static files join it in later issues.

The engine is kept on the app under :data:`ENGINE` (an ``AppKey``), and
``GET /healthz`` answers 200 only once every listener is up (503 before,
with what is missing).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["ENGINE", "create_app"]

ENGINE: web.AppKey[Any] = web.AppKey("engine", object)


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
        }
    )


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn errors into ``{"error": {"code", "message"}}`` JSON."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response(
            {"error": {"code": exc.reason.lower().replace(" ", "_"), "message": exc.text or exc.reason}},
            status=exc.status,
        )


def create_app(engine: Any) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[ENGINE] = engine
    app.router.add_get("/healthz", healthz)
    return app
