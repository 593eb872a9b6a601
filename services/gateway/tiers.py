"""Partner tiers, learned from onboarding's `partner.approved` / `partner.activated` events.

The tier sizes a partner client's rate-limit bucket and goes into its tokens (`tier`).
The table is written by the tier subscription in the transaction of its checkpoint; the
in-memory copy serves the hot path and is re-read periodically (other replicas write too).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.envelope import RecordedEvent
from events.schema import insert_text
from services.gateway.tables import partner_tiers

TIER_EVENTS = ("partner.approved", "partner.activated")


class TierBook:
    """partner_id → tier."""

    def __init__(self, engine: AsyncEngine, *, now: Callable[[], datetime]) -> None:
        self._engine = engine
        self._now = now
        self._tiers: dict[str, str] = {}

    def tier_of(self, partner_id: str) -> str | None:
        """The partner's tier, if the gateway has learned it."""
        return self._tiers.get(partner_id)

    async def load(self) -> None:
        """Re-read every tier from the database."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(partner_tiers.c.partner_id, partner_tiers.c.tier))).all()
        self._tiers = {row.partner_id: row.tier for row in rows}

    async def handle(self, conn: AsyncConnection, event: RecordedEvent) -> None:
        """Subscription handler: keep the partner's tier from approval and activation."""
        await self.handle_batch(conn, [event])

    async def handle_batch(self, conn: AsyncConnection, events: list[RecordedEvent]) -> None:
        """Batch handler: the same, in one upsert for the whole batch (the last tier of each
        partner wins, as it would event by event)."""
        latest: dict[str, str] = {}
        for event in events:
            tier = event.data.get("tier") if event.type in TIER_EVENTS else None
            if event.partner_id and isinstance(tier, str):
                latest[event.partner_id] = tier
        if not latest:
            return
        await record_tiers(conn, latest, at=self._now())
        self._tiers.update(latest)


async def record_tiers(conn: AsyncConnection, tiers: dict[str, str], *, at: datetime) -> None:
    """Insert or update the tier of every partner in `tiers`, in one statement."""
    statement = insert_text(partner_tiers, _COLUMNS, conn.dialect, _UPSERT)
    await conn.execute(statement, [{"partner_id": p, "tier": tier, "updated_at": at} for p, tier in tiers.items()])


_COLUMNS = ("partner_id", "tier", "updated_at")
_UPSERT = "ON CONFLICT (partner_id) DO UPDATE SET tier = excluded.tier, updated_at = excluded.updated_at"
