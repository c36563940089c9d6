"""Webhooks and their deliveries: the queue the webhook sender works through."""

from __future__ import annotations

import json
import secrets
from typing import Any

from engine.state.store.checks import MAX_LIMIT, MAX_VALUE, check_count, check_text, check_time
from engine.state.store.connection import SqliteConnection
from engine.state.store.errors import InvalidValue
from engine.state.store.records import Delivery, Webhook

__all__ = ["SqliteWebhooks"]

_DELIVERY_COLUMNS = (
    "delivery_id, seq, webhook_id, event, payload, created_at, status, attempts,"
    " next_attempt_at, last_code, last_error, delivered_at"
)


def _webhook(row: tuple[Any, ...]) -> Webhook:
    return Webhook(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4])


class SqliteWebhooks(SqliteConnection):
    """The ``webhooks`` and ``webhook_deliveries`` tables of :class:`~engine.state.store.SqliteStore`."""

    def create_webhook(self, url: str, events: tuple[str, ...] | list[str]) -> Webhook:
        """Subscribe ``url`` to ``events`` with a new signing secret.

        :param url: up to 2048 characters (the API checks it is http or https).
        :param events: event names, ``*`` for every event.
        """
        check_text("url", url, 1, 2048)
        if not isinstance(events, (list, tuple)) or not events:
            raise InvalidValue("events", "must be a non-empty list of event names")
        names = tuple(check_text("events", e, 1, 64) for e in events)
        webhook_id = "wh_" + secrets.token_hex(8)
        secret = "whsec_" + secrets.token_urlsafe(32)
        created_at = self._clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO webhooks (webhook_id, url, events, secret, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (webhook_id, url, json.dumps(names), secret, created_at),
            )
        return Webhook(webhook_id, url, names, secret, created_at)

    def get_webhook(self, webhook_id: str) -> Webhook | None:
        """Return the webhook, or ``None``."""
        if not isinstance(webhook_id, str):
            return None
        with self._read() as conn:
            row = conn.execute(
                "SELECT webhook_id, url, events, secret, created_at FROM webhooks"
                " WHERE webhook_id = ?", (webhook_id,),
            ).fetchone()
        return _webhook(row) if row else None

    def list_webhooks(self) -> list[Webhook]:
        """Every webhook, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT webhook_id, url, events, secret, created_at FROM webhooks"
                " ORDER BY rowid"
            ).fetchall()
        return [_webhook(row) for row in rows]

    def delete_webhook(self, webhook_id: str) -> bool:
        """Unsubscribe a webhook and drop its deliveries."""
        if not isinstance(webhook_id, str):
            return False
        with self._write() as conn:
            conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,))
            return conn.execute(
                "DELETE FROM webhooks WHERE webhook_id = ?", (webhook_id,)
            ).rowcount > 0

    def enqueue_event(self, event: str, payload: str, now: float) -> list[Delivery]:
        """Queue a pending delivery, due at ``now``, per webhook subscribed to
        ``event`` (or to ``*``).

        :param payload: the JSON text to POST.
        """
        check_text("event", event, 1, 64)
        check_text("payload", payload, 2, MAX_VALUE)
        now = check_time("now", now)
        queued: list[str] = []
        with self._write() as conn:
            for (webhook_id, events) in conn.execute(
                "SELECT webhook_id, events FROM webhooks ORDER BY rowid"
            ).fetchall():
                names = json.loads(events)
                if event in names or "*" in names:
                    delivery_id = "dlv_" + secrets.token_hex(8)
                    conn.execute(
                        "INSERT INTO webhook_deliveries (delivery_id, webhook_id, event, payload,"
                        " created_at, status, next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                        (delivery_id, webhook_id, event, payload, now, now),
                    )
                    queued.append(delivery_id)
        return [d for d in (self.get_delivery(i) for i in queued) if d is not None]

    def pending_deliveries(self, limit: int = 100) -> list[Delivery]:
        """Pending deliveries, in the order they were queued."""
        check_count("limit", limit, 1, MAX_LIMIT)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE status = 'pending'"
                " ORDER BY seq LIMIT ?", (limit,),
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        """Return the delivery, or ``None``."""
        if not isinstance(delivery_id, str):
            return None
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE delivery_id = ?",
                (delivery_id,),
            ).fetchone()
        return Delivery(*row) if row else None

    def list_deliveries(self, webhook_id: str, limit: int = 100) -> list[Delivery]:
        """A webhook's deliveries, newest first."""
        check_count("limit", limit, 1, MAX_LIMIT)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = ?"
                " ORDER BY seq DESC LIMIT ?", (webhook_id, limit),
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def record_delivery_attempt(
        self, delivery_id: str, *, delivered: bool, code: int | None, error: str | None,
        next_attempt_at: float | None, now: float,
    ) -> Delivery | None:
        """Count one attempt of a delivery.

        :param delivered: it succeeded (``status`` becomes ``delivered``).
        :param next_attempt_at: when to try again after a failure; ``None``
            gives up (``status`` becomes ``failed``).
        """
        now = check_time("now", now)
        status = "delivered" if delivered else ("pending" if next_attempt_at is not None else "failed")
        with self._write() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, status = ?,"
                " next_attempt_at = ?, last_code = ?, last_error = ?, delivered_at = ?"
                " WHERE delivery_id = ?",
                (status, None if delivered else next_attempt_at, code, error,
                 now if delivered else None, delivery_id),
            )
        return self.get_delivery(delivery_id)

    def replay_delivery(self, delivery_id: str, now: float) -> Delivery | None:
        """Make a delivery pending again, due at ``now``, attempts reset."""
        now = check_time("now", now)
        if not isinstance(delivery_id, str):
            return None
        with self._write() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET status = 'pending', attempts = 0,"
                " next_attempt_at = ?, delivered_at = NULL WHERE delivery_id = ?",
                (now, delivery_id),
            )
        return self.get_delivery(delivery_id)
