"""The dispatcher: turns each deliverable event into one stored message per matching endpoint.

It is the handler of a subscription on every service's topic, so the messages are
inserted in the same transaction as the subscription's checkpoint: durable before any
attempt, and never inserted twice for one (endpoint, event). Once that transaction has
committed, the stored messages are handed to the delivery workers directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import orjson
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncConnection

from events.catalog import is_webhook_deliverable
from events.envelope import RecordedEvent
from services.lifecycle.webhooks import repository
from services.lifecycle.webhooks.domain import matches
from services.lifecycle.webhooks.repository import MessageRow
from services.runtime.clock import Clock

SUBSCRIPTION_NAME = "webhook-dispatcher"


def payload_of(event: RecordedEvent) -> str:
    """The webhook body: `{type, timestamp, data}` (Standard Webhooks payload structure)."""
    when = event.occurred_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return orjson.dumps({"type": event.type, "timestamp": when, "data": event.data}).decode()


StoredCallback = Callable[[list[MessageRow], bool], None]
"""(messages, committed) -> None: called once the dispatching transaction ended."""


@dataclass
class _Pending:
    """Messages stored by one subscription transaction, waiting for it to end."""

    transaction: Any
    connection: Any = None
    messages: list[MessageRow] = field(default_factory=list)
    committing: bool = False
    failed: bool = False


class Dispatcher:
    """Subscription handler creating messages; hands them to the delivery workers once committed.

    `cache_endpoints` keeps each partner's enabled endpoints in memory (for a single
    process, where every change passes through `forget`); otherwise they are read for
    every event.
    """

    def __init__(
        self, *, clock: Clock, on_stored: StoredCallback | None = None, cache_endpoints: bool = False
    ) -> None:
        self._clock = clock
        self._on_stored = on_stored
        self._cache: dict[str, list[tuple[str, list[str]]]] | None = {} if cache_endpoints else None
        self._pending: dict[int, _Pending] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._engines: set[int] = set()

    def forget(self, partner_id: str | None = None) -> None:
        """An endpoint of `partner_id` (None: of anyone) was created, changed or removed."""
        if self._cache is not None:
            if partner_id is None:
                self._cache.clear()
            else:
                self._cache.pop(partner_id, None)

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
            for endpoint_id, patterns in await self._endpoints_of(conn, partner_id)
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
        if self._on_stored is not None and stored:
            self._after_transaction(conn, stored)

    async def _endpoints_of(self, conn: AsyncConnection, partner_id: str) -> list[tuple[str, list[str]]]:
        if self._cache is None:
            return await repository.enabled_endpoints_of(conn, partner_id)
        known = self._cache.get(partner_id)
        if known is None:
            known = await repository.enabled_endpoints_of(conn, partner_id)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[partner_id] = known
        return known

    def _after_transaction(self, conn: AsyncConnection, stored: list[MessageRow]) -> None:
        # The messages exist for the workers only if the subscription's transaction commits:
        # watch it (commit, rollback and error events) and hand them over when it has ended.
        sync = conn.sync_connection
        transaction = sync.get_transaction() if sync is not None else None
        if sync is None or transaction is None:
            self._settle(_Pending(None, messages=list(stored)))
            return
        self._listen(conn)
        pending = self._pending.get(id(transaction))
        if pending is None:
            pending = self._pending[id(transaction)] = _Pending(transaction, sync)
        pending.messages.extend(stored)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="webhook-dispatch-handover")

    def _listen(self, conn: AsyncConnection) -> None:
        # Engine-wide listeners, registered once (per-connection ones cost a dispatch copy
        # per transaction). A failing COMMIT shows only as a database error.
        engine = conn.sync_engine
        if id(engine) in self._engines:
            return
        self._engines.add(id(engine))

        def mark(connection: Any, **flags: bool) -> None:
            for pending in self._pending.values():
                if pending.connection is connection:
                    for name, value in flags.items():
                        setattr(pending, name, value)

        sa_event.listen(engine, "commit", lambda connection: mark(connection, committing=True))
        sa_event.listen(engine, "rollback", lambda connection: mark(connection, failed=True))
        sa_event.listen(engine, "handle_error", lambda context: mark(context.connection, failed=True))

    async def _watch(self) -> None:
        # Polls in-memory flags (no database round trip) about every millisecond.
        while self._pending:
            for key, pending in list(self._pending.items()):
                if not pending.transaction.is_active:
                    del self._pending[key]
                    self._settle(pending)
            if self._pending:
                await asyncio.sleep(0.001)

    def _settle(self, pending: _Pending) -> None:
        if self._on_stored is not None and pending.messages:
            committed = pending.transaction is not None and pending.committing and not pending.failed
            self._on_stored(pending.messages, committed)
