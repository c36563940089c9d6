"""What the scenario runtime calls out to, as typed protocols.

The runtime is handed each of these at construction
(:class:`~engine.runtime.runtime.ScenarioRuntime`); ``serve`` wires the real
ones (:func:`engine.wiring.build_runtime`), the test harness its simulated
ones, and unit tests their own doubles.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol, runtime_checkable

import aiohttp

from engine.calls.call import Call, Dispatcher

__all__ = ["Dialer", "WebUsers", "Challengeable", "HttpSessionFactory", "CallEventHook", "LogLineHook"]


class Dialer(Protocol):
    """Places SIP and PSTN calls: :class:`~engine.calls.sip_ua.UserAgent` in
    ``serve``. Each method returns the new outbound leg at once, ringing,
    with its listeners run by ``dispatcher`` (the session placing it)."""

    def call_sip(self, uri: str, *, callerid: str, display_name: str | None,
                 headers: dict[str, str] | None, dispatcher: Dispatcher | None,
                 srtp: str | None = None) -> Call:
        """Call a SIP URI directly (RFC 3261 §8.1)."""
        ...

    def call_pstn(self, number: str, callerid: str, *, display_name: str | None,
                  headers: dict[str, str] | None, dispatcher: Dispatcher | None,
                  srtp: str | None = None) -> Call:
        """Call ``number`` through the SIP trunk; :class:`~engine.calls.call.CallError`
        when none is configured."""
        ...

    def call_registered(self, user: str, *, callerid: str, display_name: str | None,
                        headers: dict[str, str] | None, dispatcher: Dispatcher | None) -> Call:
        """Call the SIP phone registered as ``user`` (RFC 3261 §10)."""
        ...


class WebUsers(Protocol):
    """Browsers logged in with the web SDK: :class:`engine.web.ws.WebUsers`
    in ``serve``."""

    def call_user(self, name: str, *, callerid: str, display_name: str | None,
                  headers: dict[str, str] | None, dispatcher: Dispatcher | None) -> Call | None:
        """Ring ``name``'s browser; ``None`` when ``name`` is not logged in."""
        ...


@runtime_checkable
class Challengeable(Protocol):
    """An inbound call that can be answered with a digest challenge (a SIP
    call: 401 with ``WWW-Authenticate``, RFC 3261 §22.2)."""

    def challenge(self) -> None:
        """Refuse with a challenge; the caller may retry with credentials."""
        ...


#: Hands out the HTTP client ``Net.http_request`` uses (``None`` given to
#: the runtime: its own :class:`aiohttp.ClientSession`, made on first use).
HttpSessionFactory = Callable[[], Awaitable[aiohttp.ClientSession]]

#: Called with ``(event, data)`` for ``call.started`` and ``call.ended``.
CallEventHook = Callable[[str, dict[str, Any]], None]

#: Called with ``(session_id, line)`` for each session log line.
LogLineHook = Callable[[str, str], None]
