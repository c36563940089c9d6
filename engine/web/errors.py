"""The one shape of an HTTP error: ``{"error": {"code", "message", "field"}}``.

Handlers raise :class:`ApiError` (or let aiohttp raise its ``HTTPException``);
the ``json_errors`` middleware of :mod:`engine.web.app` turns either into
a JSON response, and anything unexpected into a logged 500.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["ApiError", "error_response"]


class ApiError(Exception):
    """A request the API refuses.

    :param status: the HTTP status (4xx).
    :param code: a stable snake_case code for programs (``missing_field``).
    :param message: what to fix, for people.
    :param field: the request field at fault (``schedule.start``), if any.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        super().__init__(message)


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "field": field}}, status=status,
        headers=headers,
    )
