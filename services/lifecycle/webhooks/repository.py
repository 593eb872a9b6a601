"""SQL access to webhook endpoints, messages and attempts (SQLite and PostgreSQL)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.lifecycle.webhooks.tables import attempts, endpoints, messages


@dataclass(frozen=True, slots=True)
class EndpointRow:
    """One endpoint as stored (secrets still sealed)."""

    id: str
    partner_id: str
    url: str
    description: str
    event_types: list[str]
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    disabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Any) -> EndpointRow:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class MessageRow:
    """One message as stored."""

    id: str
    endpoint_id: str
    partner_id: str
    event_id: str
    event_type: str
    payload: str
    traceparent: str | None
    event_recorded_at: datetime
    status: str
    attempts: int
    run: int
    trigger: str
    next_attempt_at: datetime | None
    first_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Any) -> MessageRow:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__slots__})


_last_id_time = 0


def new_id(prefix: str) -> str:
    """`prefix` + 32 hex digits that sort in creation order (time first, then randomness)."""
    global _last_id_time
    now = max(time.time_ns() // 1000, _last_id_time + 1)
    _last_id_time = now
    return f"{prefix}{now:014x}{secrets.token_hex(9)}"


# --- endpoints ---------------------------------------------------------------------------


async def insert_endpoint(engine: AsyncEngine, values: dict[str, Any]) -> None:
    """Store a new endpoint."""
    async with engine.begin() as conn:
        await conn.execute(endpoints.insert().values(**values))


async def get_endpoint(conn_or_engine: AsyncEngine | AsyncConnection, endpoint_id: str) -> EndpointRow | None:
    """The endpoint `endpoint_id`, if it exists."""
    query = select(endpoints).where(endpoints.c.id == endpoint_id)
    if isinstance(conn_or_engine, AsyncConnection):
        row = (await conn_or_engine.execute(query)).first()
    else:
        async with conn_or_engine.connect() as conn:
            row = (await conn.execute(query)).first()
    return EndpointRow.of(row) if row is not None else None


async def list_endpoints(
    engine: AsyncEngine, *, partner_id: str | None, after: tuple[datetime, str] | None, limit: int
) -> list[EndpointRow]:
    """Endpoints in creation order, optionally of one partner, after a (created_at, id) key."""
    query = select(endpoints).order_by(endpoints.c.created_at, endpoints.c.id).limit(limit)
    if partner_id is not None:
        query = query.where(endpoints.c.partner_id == partner_id)
    if after is not None:
        created_at, ident = after
        query = query.where(
            or_(endpoints.c.created_at > created_at, and_(endpoints.c.created_at == created_at, endpoints.c.id > ident))
        )
    async with engine.connect() as conn:
        return [EndpointRow.of(row) for row in (await conn.execute(query)).all()]


async def update_endpoint(
    conn: AsyncConnection, endpoint_id: str, *, expected_version: int, values: dict[str, Any]
) -> bool:
    """Apply `values` if the endpoint is still at `expected_version` (bumps the version)."""
    result = await conn.execute(
        update(endpoints)
        .where(endpoints.c.id == endpoint_id, endpoints.c.version == expected_version)
        .values(**values, version=expected_version + 1)
    )
    return result.rowcount == 1


async def delete_endpoint(engine: AsyncEngine, endpoint_id: str, *, expected_version: int) -> bool:
    """Remove the endpoint with its messages and attempts."""
    async with engine.begin() as conn:
        found = (
            await conn.execute(
                select(endpoints.c.id).where(endpoints.c.id == endpoint_id, endpoints.c.version == expected_version)
            )
        ).first()
        if found is None:
            return False
        await conn.execute(delete(attempts).where(attempts.c.endpoint_id == endpoint_id))
        await conn.execute(delete(messages).where(messages.c.endpoint_id == endpoint_id))
        await conn.execute(delete(endpoints).where(endpoints.c.id == endpoint_id))
    return True


async def enabled_endpoints_of(conn: AsyncConnection, partner_id: str) -> list[tuple[str, list[str]]]:
    """(id, event_types) of the partner's enabled endpoints."""
    query = select(endpoints.c.id, endpoints.c.event_types).where(
        endpoints.c.partner_id == partner_id, endpoints.c.disabled.is_(False)
    )
    return [(row.id, list(row.event_types)) for row in (await conn.execute(query)).all()]


# --- queue depth -------------------------------------------------------------------------


async def pending_depths(engine: AsyncEngine, endpoint_ids: Sequence[str] | None = None) -> dict[str, int]:
    """Pending (not yet delivered nor finally failed) messages per endpoint."""
    query = (
        select(messages.c.endpoint_id, func.count())
        .where(messages.c.status == "pending")
        .group_by(messages.c.endpoint_id)
    )
    if endpoint_ids is not None:
        if not endpoint_ids:
            return {}
        query = query.where(messages.c.endpoint_id.in_(list(endpoint_ids)))
    async with engine.connect() as conn:
        return {str(row[0]): int(row[1]) for row in (await conn.execute(query)).all()}


# --- messages ----------------------------------------------------------------------------


# Both statements are cacheable (the dialects' on_conflict_do_nothing() constructs are not,
# and would be compiled again for every event).
_INSERT_OR_IGNORE = messages.insert().prefix_with("OR IGNORE", dialect="sqlite").returning(*messages.c)
_INSERT_ON_CONFLICT_DO_NOTHING = (
    text(
        f"INSERT INTO {messages.name} ({', '.join(c.name for c in messages.c)}) "
        f"VALUES ({', '.join(':' + c.name for c in messages.c)}) "
        f"ON CONFLICT DO NOTHING RETURNING {', '.join(c.name for c in messages.c)}"
    )
    .bindparams(*(bindparam(c.name, type_=c.type) for c in messages.c))
    .columns(*messages.c)
)


async def insert_messages(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[MessageRow]:
    """Insert messages and return those stored; one already there for the same (endpoint, event) is left alone."""
    if conn.dialect.name == "sqlite":
        return [MessageRow.of(row) for row in (await conn.execute(_INSERT_OR_IGNORE, rows)).all()] if rows else []
    stored: list[MessageRow] = []
    for row in rows:  # a partner has a handful of endpoints: one statement each
        full = {c.name: row.get(c.name) for c in messages.c}
        stored.extend(MessageRow.of(r) for r in (await conn.execute(_INSERT_ON_CONFLICT_DO_NOTHING, full)).all())
    return stored


async def due_endpoints(engine: AsyncEngine) -> list[tuple[str, datetime]]:
    """(endpoint id, earliest next attempt) of enabled endpoints with pending messages."""
    query = (
        select(messages.c.endpoint_id, func.min(messages.c.next_attempt_at))
        .join(endpoints, endpoints.c.id == messages.c.endpoint_id)
        .where(messages.c.status == "pending", endpoints.c.disabled.is_(False))
        .group_by(messages.c.endpoint_id)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [(str(row[0]), row[1]) for row in rows if row[1] is not None]


async def claim_due(
    engine: AsyncEngine, endpoint_id: str, *, now: datetime, lease_until: datetime, limit: int
) -> list[MessageRow]:
    """Take up to `limit` due messages of the endpoint, leasing them until `lease_until`.

    The lease (written in `next_attempt_at`) keeps other workers off a message while its
    attempt is in flight, and makes it due again if this process dies mid-attempt.
    """
    due = (
        select(messages.c.id)
        .where(
            messages.c.endpoint_id == endpoint_id,
            messages.c.status == "pending",
            messages.c.next_attempt_at <= now,
        )
        .order_by(messages.c.next_attempt_at, messages.c.created_at)
        .limit(limit)
        .scalar_subquery()
    )
    statement = (
        update(messages)
        .where(messages.c.id.in_(due), messages.c.status == "pending", messages.c.next_attempt_at <= now)
        .values(next_attempt_at=lease_until)
        .returning(*messages.c)
    )
    async with engine.begin() as conn:
        rows = (await conn.execute(statement)).all()
    claimed = [MessageRow.of(row) for row in rows]
    claimed.sort(key=lambda m: m.created_at)
    return claimed


async def due_messages(
    engine: AsyncEngine, endpoint_id: str, *, now: datetime, limit: int, exclude: Iterable[str] = ()
) -> list[MessageRow]:
    """Up to `limit` due messages of the endpoint, oldest due first, leaving out `exclude`."""
    query = (
        select(messages)
        .where(
            messages.c.endpoint_id == endpoint_id,
            messages.c.status == "pending",
            messages.c.next_attempt_at <= now,
        )
        .order_by(messages.c.next_attempt_at, messages.c.created_at)
        .limit(limit)
    )
    excluded = list(exclude)
    if excluded:
        query = query.where(messages.c.id.not_in(excluded))
    async with engine.connect() as conn:
        return [MessageRow.of(row) for row in (await conn.execute(query)).all()]


async def make_due(engine: AsyncEngine, message_ids: Sequence[str], *, now: datetime) -> None:
    """End the lease of claimed messages that were never attempted."""
    async with engine.begin() as conn:
        await conn.execute(
            update(messages)
            .where(messages.c.id.in_(list(message_ids)), messages.c.status == "pending")
            .values(next_attempt_at=now)
        )


async def get_message(engine: AsyncEngine, message_id: str) -> MessageRow | None:
    """The message `message_id`, if it exists."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
    return MessageRow.of(row) if row is not None else None


async def message_exists(conn: AsyncConnection, message_id: str) -> bool:
    """Whether the message is still stored."""
    return (await conn.execute(select(messages.c.id).where(messages.c.id == message_id))).first() is not None


async def list_messages(
    engine: AsyncEngine,
    endpoint_id: str,
    *,
    status: str | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[MessageRow]:
    """The endpoint's messages, newest first, before a (created_at, id) key."""
    query = (
        select(messages)
        .where(messages.c.endpoint_id == endpoint_id)
        .order_by(messages.c.created_at.desc(), messages.c.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(messages.c.status == status)
    if before is not None:
        created_at, ident = before
        query = query.where(
            or_(messages.c.created_at < created_at, and_(messages.c.created_at == created_at, messages.c.id < ident))
        )
    async with engine.connect() as conn:
        return [MessageRow.of(row) for row in (await conn.execute(query)).all()]


async def attempts_of(engine: AsyncEngine, message_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every attempt of each message, oldest first."""
    ids = list(message_ids)
    found: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return found
    query = select(attempts).where(attempts.c.message_id.in_(ids)).order_by(attempts.c.id)
    async with engine.connect() as conn:
        for row in (await conn.execute(query)).all():
            found[row.message_id].append(dict(row._mapping))
    return found


async def restart_messages(
    engine: AsyncEngine, *, where: Any, now: datetime, trigger: str
) -> list[str]:
    """Put matching messages back to pending for a new schedule run starting now."""
    async with engine.begin() as conn:
        ids = [row[0] for row in (await conn.execute(select(messages.c.id).where(where))).all()]
        if ids:
            await conn.execute(
                update(messages)
                .where(messages.c.id.in_(ids))
                .values(
                    status="pending",
                    attempts=0,
                    run=messages.c.run + 1,
                    trigger=trigger,
                    next_attempt_at=now,
                    first_attempt_at=None,
                    delivered_at=None,
                    updated_at=now,
                )
            )
    return ids
