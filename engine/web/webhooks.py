"""Webhook deliveries: queued in the store, POSTed signed, retried with backoff.

:meth:`WebhookDispatcher.publish` queues one delivery per subscribed
webhook (in the store, so a restart loses none) and wakes the sender. The
sender POSTs, per webhook, the oldest pending delivery first, so that a
receiver sees one webhook's events in the order they happened; a failed
attempt (no answer within ``timeout``, or a status other than 2xx) is
retried after 1, 2, 4, ... seconds (at most ``max_delay``), and after
``max_attempts`` the delivery is marked ``failed`` and the next one goes.
Every attempt is recorded (status, attempts, last code and error); an
operator replays a delivery through the API.

Each POST carries the JSON event ``{"id", "event", "created_at", "data"}``
and the headers::

    X-Callbridge-Event: room.started
    X-Callbridge-Delivery: dlv_...
    X-Callbridge-Signature: t=1700000000,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

The timestamp is signed with the body, so a receiver refuses replays older
than a few minutes (:func:`verify_signature`), as Stripe's scheme does.

A webhook URL is someone else's server, so the sender trusts it little:
redirects are not followed (a 3xx is a failed attempt, retried like any
other), at most :data:`MAX_RESPONSE_BYTES` of an answer are read, and
unless ``allow_private`` (``--webhook-private-networks allow``) no
connection goes to a loopback, private, link-local, multicast or otherwise
non-global address. That check is made on the addresses the connector is
about to connect to (a resolver wrapper, and the URL's host when it is an
address), not on a separate lookup, so DNS rebinding cannot slip past it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from typing import Any, Callable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from engine.security_log import security_event
from engine.state.store import Delivery, Store

__all__ = [
    "EVENTS", "MAX_RESPONSE_BYTES", "WebhookDispatcher", "is_private_address", "sign",
    "verify_signature",
]

logger = logging.getLogger(__name__)

#: The events a webhook may subscribe to (``*``: all of them).
EVENTS = (
    "room.started", "room.ended", "participant.joined", "participant.left", "participant.updated",
    "call.started", "call.ended", "recording.started", "recording.stopped", "recording.ready",
    "room.pin_locked",
)


#: The most of a receiver's answer read; the rest is dropped with the connection.
MAX_RESPONSE_BYTES = 64 * 1024


def is_private_address(host: str) -> bool:
    """Whether ``host``, an IP address, is one a webhook must not reach
    when private networks are denied: loopback, private (RFC 1918, ULA),
    shared (RFC 6598), link-local, multicast, unspecified, reserved, or an
    IPv4-mapped form of one of these. Anything not an address is ``False``."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


class PrivateAddressRefused(OSError):
    """A webhook host is, or resolves to, an address that is denied."""

    def __init__(self, host: str, address: str) -> None:
        named = address if address == host else f"{host} ({address})"
        super().__init__(f"refused: {named} is a private address "
                         "(--webhook-private-networks deny)")
        self.host = host


class _PublicOnlyResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver, then refuses the lot if
    any address is private: the connector connects to exactly what this
    returns, so the check is on the addresses actually used."""

    def __init__(self) -> None:
        self._inner = aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if is_private_address(result["host"]):
                raise PrivateAddressRefused(host, result["host"])
        return results

    async def close(self) -> None:
        await self._inner.close()


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int = MAX_RESPONSE_BYTES) -> int:
    """Read at most ``limit`` bytes of ``resp``'s body (dropped); return how many."""
    read = 0
    while read < limit:
        chunk = await resp.content.read(limit - read)
        if not chunk:
            break
        read += len(chunk)
    return read


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Callbridge-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(secret: str, header: str, body: bytes, now: float, tolerance: float = 300.0) -> bool:
    """Check a delivery's signature header, refusing timestamps more than
    ``tolerance`` seconds away from ``now`` (receivers copy this)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={fields.get('v1', '')}")


class WebhookDispatcher:
    """Queues and sends webhook deliveries (see the module documentation).

    :param store: where deliveries are queued and recorded.
    :param max_attempts: attempts before a delivery is marked ``failed``.
    :param base_delay: seconds before the first retry (doubled each time).
    :param max_delay: the longest wait between attempts.
    :param timeout: seconds to wait for a receiver's answer.
    :param allow_private: deliver to loopback, private and link-local
        addresses too (``--webhook-private-networks allow``); denied by default.
    """

    def __init__(
        self, store: Store, *, clock: Callable[[], float] = time.time, max_attempts: int = 8,
        base_delay: float = 1.0, max_delay: float = 300.0, timeout: float = 10.0,
        allow_private: bool = False,
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.allow_private = allow_private
        self._wake = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        #: Events some webhook wants (``None``: not read yet), so that an
        #: event nobody subscribed to (every call's start and end) costs no
        #: database write.
        self._subscribed: set[str] | None = None
        #: Attempts since start, by outcome: ``delivered``, ``retry`` (failed,
        #: another attempt is due), ``failed`` (failed, attempts used up).
        self.outcomes: dict[str, int] = {"delivered": 0, "retry": 0, "failed": 0}

    def refresh(self) -> None:
        """Re-read which events are subscribed (after a webhook is added or removed)."""
        self._subscribed = {e for hook in self.store.list_webhooks() for e in hook.events}

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Queue ``event`` for every webhook subscribed to it."""
        if self._subscribed is None:
            self.refresh()
        assert self._subscribed is not None
        if event not in self._subscribed and "*" not in self._subscribed:
            return
        now = self.clock()
        payload = json.dumps({"id": "evt_" + secrets.token_hex(8), "event": event, "created_at": now,
                              "data": data}, separators=(",", ":"), default=str)
        try:
            queued = self.store.enqueue_event(event, payload, now)
        except Exception:
            logger.exception("cannot queue webhook event %s", event)
            return
        if queued:
            self._wake.set()

    def wake(self) -> None:
        """Look at the queue now (after a replay)."""
        self._wake.set()

    async def run(self) -> None:
        """Send due deliveries until cancelled."""
        connector = aiohttp.TCPConnector(
            resolver=None if self.allow_private else _PublicOnlyResolver())
        self._http = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout, connect=min(5.0, self.timeout)))
        try:
            while True:
                self._wake.clear()
                try:
                    wait = await self.send_due()
                except Exception:
                    logger.exception("webhook delivery round failed")
                    wait = self.base_delay
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self._http.close()
            self._http = None

    async def send_due(self) -> float:
        """Send the head delivery of each webhook that is due; return the
        seconds until the next one is (at most 60)."""
        now = self.clock()
        heads: dict[str, Delivery] = {}
        for delivery in await asyncio.to_thread(self.store.pending_deliveries, 1000):
            heads.setdefault(delivery.webhook_id, delivery)
        due = [d for d in heads.values() if (d.next_attempt_at or 0.0) <= now]
        if due:
            await asyncio.gather(*(self._send(d) for d in due))
            return 0.0
        waits = [(d.next_attempt_at or now) - now for d in heads.values()]
        return max(0.01, min(waits, default=60.0))

    async def _send(self, delivery: Delivery) -> None:
        webhook = self.store.get_webhook(delivery.webhook_id)
        if webhook is None:
            return
        body = delivery.payload.encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "X-Callbridge-Event": delivery.event,
            "X-Callbridge-Delivery": delivery.delivery_id,
            "X-Callbridge-Signature": sign(webhook.secret, int(self.clock()), body),
            "User-Agent": "callbridge-webhooks/0.1",
        }
        code: int | None = None
        error: str | None = None
        assert self._http is not None
        try:
            host = URL(webhook.url).host or ""
            if not self.allow_private and is_private_address(host):
                # An address in the URL never meets the resolver.
                raise PrivateAddressRefused(host, host)
            async with self._http.post(webhook.url, data=body, headers=headers,
                                       allow_redirects=False) as resp:
                code = resp.status
                await _read_bounded(resp)
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except asyncio.TimeoutError:
            error = "timeout"
        except PrivateAddressRefused as exc:
            error = str(exc)
            security_event("webhook_refused", None, webhook=webhook.webhook_id, host=exc.host,
                           reason="private address")
        except aiohttp.ClientConnectorError as exc:
            refused = exc.os_error if isinstance(exc.os_error, PrivateAddressRefused) else None
            if refused is None:
                error = f"{type(exc).__name__}: {exc}"
            else:
                error = str(refused)
                security_event("webhook_refused", None, webhook=webhook.webhook_id,
                               host=refused.host, reason="private address")
        except Exception as exc:  # connection refused, bad URL, ...
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        now = self.clock()
        attempts = delivery.attempts + 1
        next_at: float | None = None
        if error is not None and attempts < self.max_attempts:
            next_at = now + min(self.base_delay * 2 ** (attempts - 1), self.max_delay)
        self.outcomes["delivered" if error is None else "retry" if next_at is not None else "failed"] += 1
        if error is not None:
            logger.info("webhook %s delivery %s attempt %d failed: %s", webhook.webhook_id,
                        delivery.delivery_id, attempts, error)
        self.store.record_delivery_attempt(
            delivery.delivery_id, delivered=error is None, code=code, error=error,
            next_attempt_at=next_at, now=now,
        )
