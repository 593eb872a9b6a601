"""The dispatcher: turns each deliverable event into one stored message per matching endpoint.

It is the handler of a subscription on every service's topic, so the messages are
inserted in the same transaction as the subscription's checkpoint: durable before any
attempt, and never inserted twice for one (endpoint, event).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from events.catalog import is_webhook_deliverable
from events.envelope import RecordedEvent
from services.lifecycle.webhooks import repository
from services.lifecycle.webhooks.domain import matches
from services.runtime.clock import Clock

SUBSCRIPTION_NAME = "webhook-dispatcher"


def payload_of(event: RecordedEvent) -> str:
    """The webhook body: `{type, timestamp, data}` (Standard Webhooks payload structure)."""
    when = event.occurred_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return orjson.dumps({"type": event.type, "timestamp": when, "data": event.data}).decode()


class Dispatcher:
    """Subscription handler creating messages; tells the delivery workers which endpoints have work."""

    def __init__(self, *, clock: Clock, notify: Callable[[list[str]], None] | None = None) -> None:
        self._clock = clock
        self._notify = notify
        self._waiting: list[tuple[Any, list[str]]] = []
        self._watcher: asyncio.Task[None] | None = None

    async def handle(self, conn: AsyncConnection, event: RecordedEvent) -> None:
        """Insert a message for each of the event's partner's enabled endpoints that wants it."""
        # webhook.*, gateway.* and client.* never go out: a delivery outcome must not cause a delivery.
        if not is_webhook_deliverable(event.type):
            return
        partner_id = event.partner_id
        if partner_id is None:
            return
        targets = [
            endpoint_id
            for endpoint_id, patterns in await repository.enabled_endpoints_of(conn, partner_id)
            if matches(patterns, event.type)
        ]
        if not targets:
            return
        now = self._clock.now()
        body = payload_of(event)
        rows: list[dict[str, Any]] = [
            {
                "id": repository.new_id("msg_"),
                "endpoint_id": endpoint_id,
                "partner_id": partner_id,
                "event_id": event.event_id,
                "event_type": event.type,
                "payload": body,
                "traceparent": event.traceparent,
                "event_recorded_at": event.recorded_at,
                "status": "pending",
                "attempts": 0,
                "run": 1,
                "trigger": "event",
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for endpoint_id in targets
        ]
        stored = await repository.insert_messages(conn, rows)
        if self._notify is not None and stored:
            self._notify_after_commit(conn, [m.endpoint_id for m in stored])

    def _notify_after_commit(self, conn: AsyncConnection, endpoint_ids: list[str]) -> None:
        # The rows become visible to the workers only when the subscription commits.
        transaction = conn.sync_connection.get_transaction() if conn.sync_connection is not None else None
        self._waiting.append((transaction, endpoint_ids))
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_commits(), name="webhook-dispatch-notify")

    async def _watch_commits(self) -> None:
        # Polls an in-memory flag (no database round trip) about every millisecond.
        while self._waiting:
            ready: list[str] = []
            still: list[tuple[Any, list[str]]] = []
            for transaction, endpoint_ids in self._waiting:
                if transaction is None or not transaction.is_active:
                    # Committed (or rolled back: then the workers find nothing to do).
                    ready.extend(endpoint_ids)
                else:
                    still.append((transaction, endpoint_ids))
            self._waiting = still
            if ready and self._notify is not None:
                self._notify(list(dict.fromkeys(ready)))
            if still:
                await asyncio.sleep(0.001)
