"""Canned HTTP for ``Net.http_request``: the test says what each URL answers.

:class:`HttpMock` stands in for the :class:`aiohttp.ClientSession` that
:meth:`engine.runtime.runtime.ScenarioRuntime.http_session` hands to
:meth:`engine.runtime.scenario_api._Net.http_request`, so the runtime's own request code
(its timeout, error and logging paths) runs unchanged; only the network is
gone. A response may be delayed (on the virtual clock: a delay longer than
the scenario's ``timeout`` becomes its timeout) or be a network error. A
request nobody registered fails like an unreachable host (``code=0``) and is
remembered, so the harness can fail the test that forgot to register it.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import re
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Callable

import aiohttp

__all__ = ["HttpMock", "HttpExchange", "CannedResponse"]


@dataclass
class CannedResponse:
    """What a registered URL answers (``error``: a network error instead)."""

    status: int = 200
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    error: str | None = None


@dataclass
class HttpExchange:
    """One request a scenario made, and the canned response it got (``None``:
    nothing was registered for it)."""

    method: str
    url: str
    headers: dict[str, str]
    body: str | None
    at: float
    response: CannedResponse | None

    def json(self) -> Any:
        """The request body parsed as JSON."""
        return jsonlib.loads(self.body or "null")


@dataclass
class _Route:
    method: str | None
    url: str | re.Pattern[str]
    response: CannedResponse
    times: int | None

    def matches(self, method: str, url: str) -> bool:
        if self.method is not None and self.method != method.upper():
            return False
        if self.times is not None and self.times <= 0:
            return False
        if isinstance(self.url, re.Pattern):
            return self.url.fullmatch(url) is not None
        if self.url.endswith("*"):
            return url.startswith(self.url[:-1])
        return url == self.url


class _Body:
    """The part of :class:`aiohttp.StreamReader` that ``Net`` reads."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        n = len(self._data) if n < 0 else n
        chunk, self._data = self._data[:n], self._data[n:]
        return chunk


class _Response:
    """The part of :class:`aiohttp.ClientResponse` that ``Net`` reads
    (its body in UTF-8)."""

    charset = "utf-8"

    def __init__(self, canned: CannedResponse) -> None:
        self.status = canned.status
        self.headers = dict(canned.headers)
        self._text = canned.text
        self.content = _Body(canned.text.encode("utf-8"))

    async def text(self, errors: str = "strict") -> str:
        return self._text


class _Request:
    """An ``async with`` block around one canned exchange."""

    def __init__(self, mock: HttpMock, exchange: HttpExchange, timeout: float | None) -> None:
        self.mock = mock
        self.exchange = exchange
        self.timeout = timeout

    async def __aenter__(self) -> _Response:
        canned = self.exchange.response
        if canned is None:
            raise aiohttp.ClientConnectionError(
                f"no canned response for {self.exchange.method} {self.exchange.url} "
                "(register one with app.http.respond)"
            )
        if canned.delay > 0:
            if self.timeout is not None and canned.delay > self.timeout:
                await asyncio.sleep(self.timeout)
                raise asyncio.TimeoutError
            await asyncio.sleep(canned.delay)
        if canned.error is not None:
            raise aiohttp.ClientConnectionError(canned.error)
        return _Response(canned)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None


class HttpMock:
    """Canned responses by URL, and the record of requests made.

    ``respond`` registers an answer. An exact URL beats a prefix or a
    pattern; between equals the later registration wins, so a test can
    change an answer midway.
    """

    closed = False

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._routes: list[_Route] = []
        #: Every request, in order.
        self.requests: list[HttpExchange] = []

    def respond(
        self,
        url: str | re.Pattern[str],
        *,
        method: str | None = "GET",
        status: int = 200,
        text: str = "",
        json: Any = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        error: str | None = None,
        times: int | None = None,
    ) -> None:
        """Answer requests for ``url`` (exact; ending in ``*``: a prefix; a
        compiled regex: a full match) with ``method`` (``None``: any).

        :param json: a body to send as JSON (sets ``text`` and the
            ``Content-Type``).
        :param delay: seconds (virtual) before the answer; longer than the
            request's ``timeout`` makes it time out.
        :param error: fail like a network error with this text instead.
        :param times: answer this many requests, then fall through to older
            registrations (``None``: every one).
        """
        hdrs = dict(headers or {})
        if json is not None:
            text = jsonlib.dumps(json)
            hdrs.setdefault("Content-Type", "application/json")
        canned = CannedResponse(status, text, hdrs, delay, error)
        self._routes.append(_Route(method.upper() if method else None, url, canned, times))

    @property
    def unmatched(self) -> list[HttpExchange]:
        """Requests no registered response answered."""
        return [r for r in self.requests if r.response is None]

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                data: str | bytes | None = None, timeout: Any = None) -> _Request:
        """What ``Net.http_request`` calls (``aiohttp.ClientSession.request``'s shape)."""
        candidates = [r for r in reversed(self._routes) if r.matches(method, str(url))]
        route = min(candidates, key=lambda r: 0 if isinstance(r.url, str) and not r.url.endswith("*") else 1,
                    default=None)
        if route is not None and route.times is not None:
            route.times -= 1
        body = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        exchange = HttpExchange(method.upper(), str(url), dict(headers or {}), body, self._clock(),
                                route.response if route else None)
        self.requests.append(exchange)
        total = getattr(timeout, "total", timeout)
        return _Request(self, exchange, float(total) if total is not None else None)

    async def close(self) -> None:
        return None
