"""Integration command handlers: state from the read model, decide, append with effects.

The `integrations` row is written in the same transaction as every event of the stream
(`projection.project`), so it is the stream's state at `version`; appending at that
version keeps concurrent writers (API, prober, SLA monitor) from overwriting each other.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from events.envelope import EventMetadata, RecordedEvent
from events.store import EventStore, NewEvent
from services.lifecycle.integrations.domain import (
    DEFAULT_SLA_UPTIME_PCT,
    Command,
    Integration,
    Register,
    decide,
    evolve,
    stream_of,
)
from services.lifecycle.projection import INTEGRATION_ROW, integration_from_row, project
from services.lifecycle.tables import alliances, partner_agreements


async def load(engine: AsyncEngine, integration_id: str) -> Integration | None:
    """The integration's current state (None when unknown)."""
    async with engine.connect() as conn:
        row = (await conn.execute(INTEGRATION_ROW, {"integration_id": integration_id})).first()
    return integration_from_row(row._mapping) if row is not None else None


async def register(
    store: EventStore, command: Register, *, occurred_at: datetime | None, metadata: EventMetadata
) -> Integration:
    """Register a new integration (its stream must not exist)."""
    events = decide(None, command)
    recorded = await store.append(
        stream_id=stream_of(command.integration_id),
        expected_version=0,
        events=[NewEvent(e, occurred_at=occurred_at) for e in events],
        metadata=metadata,
        effects=project,
    )
    state: Integration | None = None
    for event in recorded:
        state = evolve(state, event.domain(), event.occurred_at)
    assert state is not None
    return state


async def execute(
    store: EventStore,
    state: Integration,
    command: Command,
    *,
    occurred_at: datetime | None = None,
    metadata: EventMetadata | None = None,
) -> tuple[Integration, list[RecordedEvent]]:
    """Run `command` on `state`, appending at `state.version`; the new state and its events."""
    events = decide(state, command)
    if not events:
        return state, []
    recorded = await store.append(
        stream_id=stream_of(state.id),
        expected_version=state.version,
        events=[NewEvent(e, occurred_at=occurred_at) for e in events],
        metadata=metadata,
        effects=project,
    )
    for event in recorded:
        state = evolve(state, event.domain(), event.occurred_at)
    return state, recorded


async def default_uptime_target(engine: AsyncEngine, partner_id: str) -> float:
    """The uptime target of the partner's agreement, or the seeds' 99.9 %."""
    query = select(partner_agreements.c.uptime_target_pct).where(partner_agreements.c.partner_id == partner_id)
    async with engine.connect() as conn:
        value = (await conn.execute(query)).scalar_one_or_none()
    return float(value) if value is not None else DEFAULT_SLA_UPTIME_PCT


async def alliance_status(engine: AsyncEngine, partner_id: str) -> str | None:
    """`active`, `exiting` or `terminated`; None when the partner has no alliance."""
    query = select(alliances.c.status).where(alliances.c.partner_id == partner_id)
    async with engine.connect() as conn:
        value = (await conn.execute(query)).scalar_one_or_none()
    return str(value) if value is not None else None
