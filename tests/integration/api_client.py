"""A small client of ``/api/v1`` for tests: an engine started by
``make_engine`` with an API key, and requests that return (status, JSON)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from engine.server import Engine


class Api:
    """Requests to one engine's API with one key (``key=None``: no header)."""

    def __init__(self, engine: Engine, http: aiohttp.ClientSession, key: str | None) -> None:
        self.engine = engine
        self.http = http
        self.key = key
        self.base = f"http://127.0.0.1:{engine.http_port}/api/v1"

    def with_key(self, key: str | None) -> Api:
        return Api(self.engine, self.http, key)

    async def call(self, method: str, path: str, body: Any = None, *, raw: str | bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        sent = dict(headers or {})
        if self.key is not None:
            sent.setdefault("Authorization", f"Bearer {self.key}")
        data: str | bytes | None = raw
        if body is not None:
            data = json.dumps(body)
            sent["Content-Type"] = "application/json"
        async with self.http.request(method, self.base + path, data=data, headers=sent) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("DELETE", path, **kw)


def new_key(engine: Engine, *scopes: str) -> str:
    """A fresh API key of ``engine`` as ``KEYID.SECRET``."""
    assert engine.store is not None
    key, secret = engine.store.create_api_key(list(scopes or ("admin",)))
    return f"{key.key_id}.{secret}"


def error(body: Any) -> tuple[str, str | None]:
    """(code, field) of an error answer."""
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    return body["error"]["code"], body["error"]["field"]
