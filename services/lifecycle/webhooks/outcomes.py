"""Recording attempt outcomes: message rows, the attempt log, endpoint state and outcome events.

Attempts that finish close together are written in one transaction (one append to the
store carrying every `webhook.*` event of the batch, with the rows as its effects), so
the cost per delivery stays a fraction of a commit. A message resent, recovered or
deleted while its attempt was in flight is "stale": its attempt is still logged, but it
changes nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.catalog import DomainEvent
from events.envelope import EventMetadata, RecordedEvent
from events.store import EventStore
from services.lifecycle.webhooks.domain import AfterAttempt, AttemptResult
from services.lifecycle.webhooks.repository import MessageRow
from services.lifecycle.webhooks.tables import attempts, endpoints, messages

log = logging.getLogger(__name__)

OUTCOME_STREAM = "webhook-deliveries"
"""The store stream of every `webhook.*` event (delivery outcomes and endpoint disables)."""
MAX_BATCH = 500
GATHER_FOR = 0.02
"""Seconds a small batch waits for more outcomes (the delivery itself is already done)."""
GATHER_UNTIL = 32


@dataclass
class Outcome:
    """One finished attempt and what it changes."""

    message: MessageRow
    result: AttemptResult
    decision: AfterAttempt
    attempted_at: datetime
    first_attempt_at: datetime
    now: datetime
    endpoint_was_failing: bool = False
    """Whether the endpoint had a failure record before this attempt (its row changes only on a change)."""
    events: list[DomainEvent] = field(default_factory=list)
    done: asyncio.Future[bool] | None = None


class _Stale(Exception):
    def __init__(self, message_ids: set[str] | None) -> None:
        super().__init__("messages changed during their attempt")
        self.message_ids = message_ids
        """Which ones, when known (None: look them up after the rollback)."""


class OutcomeWriter:
    """Batches outcomes of concurrent attempts into shared transactions."""

    def __init__(self, engine: AsyncEngine, store: EventStore, *, gather_for: float = GATHER_FOR) -> None:
        self.engine = engine
        self.store = store
        self.gather_for = gather_for
        self._pending: list[Outcome] = []
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, outcome: Outcome) -> bool:
        """Write `outcome`; False when the message had changed meanwhile (only its attempt was logged)."""
        outcome.done = asyncio.get_running_loop().create_future()
        self._pending.append(outcome)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all(), name="webhook-outcomes")
        return await outcome.done

    async def close(self) -> None:
        """Stop flushing (outcomes not yet written are lost: their messages stay pending and go out again)."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        for outcome in self._pending:
            if outcome.done is not None and not outcome.done.done():
                outcome.done.cancel()
        self._pending.clear()

    async def _flush_all(self) -> None:
        while self._pending:
            if len(self._pending) < GATHER_UNTIL and self.gather_for > 0:
                # A commit costs the same for one outcome or fifty: let a few more arrive.
                await asyncio.sleep(self.gather_for)
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                stale = await self._write_batch(batch)
            except Exception as exc:  # noqa: BLE001 - one failing batch fails its own attempts only
                for outcome in batch:
                    if outcome.done is not None and not outcome.done.done():
                        outcome.done.set_exception(exc)
                continue
            for outcome in batch:
                if outcome.done is not None and not outcome.done.done():
                    outcome.done.set_result(outcome.message.id not in stale)

    async def _write_batch(self, batch: list[Outcome]) -> set[str]:
        stale: set[str] = set()
        live = batch
        while live:
            try:
                await self._write(live)
                break
            except _Stale as exc:
                found = exc.message_ids
                if found is None:
                    async with self.engine.connect() as conn:
                        found = await _stale(conn, live, check_status=True)
                if not found:
                    raise RuntimeError("an outcome batch conflicted, but every message is as claimed") from exc
                stale |= found
                live = [o for o in live if o.message.id not in stale]
        if stale:
            log.info("%d webhook messages changed during their attempt; kept in the log only", len(stale))
            async with self.engine.begin() as conn:
                await _log_attempts(conn, [o for o in batch if o.message.id in stale], only_existing=True)
        return stale

    async def _write(self, batch: list[Outcome]) -> None:
        events = [event for outcome in batch for event in outcome.events]

        async def effects(conn: AsyncConnection, _recorded: list[RecordedEvent] | None = None) -> None:
            await _write_rows(conn, batch)

        if events:
            await self.store.append(
                stream_id=OUTCOME_STREAM,
                expected_version=None,
                events=events,
                metadata=EventMetadata(actor="webhook-delivery"),
                effects=effects,
            )
        else:
            async with self.engine.begin() as conn:
                await effects(conn)


_UPDATE_MESSAGE = (
    update(messages)
    .where(messages.c.id == bindparam("b_id"), messages.c.run == bindparam("b_run"), messages.c.status == "pending")
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        next_attempt_at=bindparam("b_next"),
        first_attempt_at=bindparam("b_first"),
        delivered_at=bindparam("b_delivered"),
        last_status_code=bindparam("b_code"),
        last_error=bindparam("b_error"),
        updated_at=bindparam("b_now"),
    )
)


async def _write_rows(conn: AsyncConnection, batch: list[Outcome]) -> None:
    rows = [
        {
            "b_id": o.message.id,
            "b_run": o.message.run,
            "b_status": o.decision.status,
            "b_attempts": o.message.attempts + 1,
            "b_next": o.decision.next_attempt_at,
            "b_first": o.first_attempt_at,
            "b_delivered": o.now if o.decision.status == "delivered" else None,
            "b_code": o.result.status_code,
            "b_error": _error(o.result),
            "b_now": o.now,
        }
        for o in batch
    ]
    if conn.dialect.supports_sane_multi_rowcount:
        # SQLite (one writer): the guarded update tells whether every message was still as claimed.
        result = await conn.execute(_UPDATE_MESSAGE, rows)
        if result.rowcount != len(batch):
            raise _Stale(None)
    else:
        # PostgreSQL: lock the rows, find any that changed, then update.
        stale = await _stale(conn, batch, check_status=True)
        if stale:
            raise _Stale(stale)
        await conn.execute(_UPDATE_MESSAGE, rows)
    await _log_attempts(conn, batch)
    await _update_endpoints(conn, batch)


async def _stale(conn: AsyncConnection, batch: list[Outcome], *, check_status: bool) -> set[str]:
    """Messages deleted, resent, recovered or (with `check_status`) recorded since their claim."""
    query = select(messages.c.id, messages.c.run, messages.c.status).where(
        messages.c.id.in_([o.message.id for o in batch])
    )
    found = {row.id: row for row in (await conn.execute(query.with_for_update())).all()}
    stale = set()
    for outcome in batch:
        row = found.get(outcome.message.id)
        if row is None or row.run != outcome.message.run or (check_status and row.status != "pending"):
            stale.add(outcome.message.id)
    return stale


async def _log_attempts(conn: AsyncConnection, batch: list[Outcome], *, only_existing: bool = False) -> None:
    rows: list[dict[str, Any]] = [
        {
            "message_id": o.message.id,
            "endpoint_id": o.message.endpoint_id,
            "attempted_at": o.attempted_at,
            "duration_ms": o.result.duration_ms,
            "status_code": o.result.status_code,
            "outcome": "succeeded" if o.result.succeeded else "failed",
            "error": _error(o.result),
            "response_excerpt": o.result.response_excerpt or None,
            "trigger": o.message.trigger,
        }
        for o in batch
    ]
    if rows and only_existing:
        ids = {r["message_id"] for r in rows}
        existing = {row[0] for row in (await conn.execute(select(messages.c.id).where(messages.c.id.in_(ids)))).all()}
        rows = [r for r in rows if r["message_id"] in existing]  # a deleted message keeps no log
    if rows:
        await conn.execute(attempts.insert(), rows)


async def _update_endpoints(conn: AsyncConnection, batch: list[Outcome]) -> None:
    by_endpoint: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in batch:
        by_endpoint[outcome.message.endpoint_id].append(outcome)
    ep = endpoints.c
    for endpoint_id, outcomes in by_endpoint.items():
        last = outcomes[-1]
        # Only a change of the failure record costs a statement (a healthy endpoint: none).
        if last.decision.status == "delivered" and any(o.endpoint_was_failing for o in outcomes):
            await conn.execute(
                update(endpoints).where(ep.id == endpoint_id, ep.failing_since.is_not(None)).values(failing_since=None)
            )
        elif last.decision.status != "delivered" and not all(o.endpoint_was_failing for o in outcomes):
            await conn.execute(
                update(endpoints)
                .where(ep.id == endpoint_id, ep.failing_since.is_(None))
                .values(failing_since=last.decision.failing_since)
            )
        reasons = [o.decision.disable_reason for o in outcomes if o.decision.disable_reason]
        if reasons:
            await conn.execute(
                update(endpoints)
                .where(ep.id == endpoint_id, ep.disabled.is_(False))
                .values(
                    disabled=True,
                    disabled_reason=reasons[0][:200],
                    disabled_at=last.now,
                    updated_at=last.now,
                    version=ep.version + 1,
                )
            )


def _error(result: AttemptResult) -> str | None:
    return result.error[:500] if result.error else None
