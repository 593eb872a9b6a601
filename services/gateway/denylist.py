"""The gateway's side of revocation: record revoked tokens, serve the deny-list to services."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.catalog import TokenRevoked
from events.envelope import EventMetadata, RecordedEvent
from events.store import EventStore
from services.gateway.tables import revocations
from services.runtime.auth import Identity
from services.runtime.revocations import Fetch, Revocation, unix


async def revoke_token(store: EventStore, identity: Identity, metadata: EventMetadata | None) -> Revocation:
    """Append `token.revoked` for `identity`'s token; its row commits in the same transaction."""
    expires_at = datetime.fromtimestamp(identity.expires_at, UTC)

    async def effects(conn: AsyncConnection, recorded: list[RecordedEvent]) -> None:
        await conn.execute(
            insert(revocations).values(
                position=recorded[0].position,
                kind="token",
                client_id=identity.client_id,
                jti=identity.token_id,
                expires_at=expires_at,
                revoked_at=recorded[0].occurred_at,
            )
        )

    recorded = await store.append(
        stream_id=f"client-{identity.client_id}",
        expected_version=None,
        events=[
            TokenRevoked(
                client_id=identity.client_id,
                jti=identity.token_id,
                expires_at=expires_at,
                partner_id=identity.partner_id,
            )
        ],
        metadata=metadata,
        effects=effects,
    )
    return Revocation(
        position=recorded[0].position,
        kind="token",
        client_id=identity.client_id,
        jti=identity.token_id,
        expires_at=float(identity.expires_at),
    )


async def read_revocations(engine: AsyncEngine, *, after: int, limit: int, now: datetime) -> list[Revocation]:
    """Revocations after store position `after` that still matter (tokens not yet expired)."""
    query = (
        select(revocations)
        .where(
            revocations.c.position > after,
            or_(revocations.c.expires_at.is_(None), revocations.c.expires_at > now),
        )
        .order_by(revocations.c.position)
        .limit(limit)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [_revocation(row) for row in rows]


def _revocation(row: Any) -> Revocation:
    return Revocation(
        position=int(row.position),
        kind=row.kind,
        client_id=row.client_id,
        jti=row.jti,
        expires_at=unix(row.expires_at),
    )


def database_fetch(engine: AsyncEngine, now: Any) -> Fetch:
    """A `Fetch` reading the deny-list straight from the gateway's database."""

    async def fetch(after: int, limit: int) -> list[Revocation]:
        return await read_revocations(engine, after=after, limit=limit, now=now())

    return fetch
