"""Partner tiers, learned from onboarding's `partner.approved` / `partner.activated` events.

The tier sizes a partner client's rate-limit bucket and goes into its tokens (`tier`).
The table is written by the tier subscription in the transaction of its checkpoint; the
in-memory copy serves the hot path and is re-read periodically (other replicas write too).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.envelope import RecordedEvent
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
        if event.type not in TIER_EVENTS:
            return
        partner_id = event.partner_id
        tier = event.data.get("tier")
        if not partner_id or not isinstance(tier, str):
            return
        await record_tier(conn, partner_id=partner_id, tier=tier, at=self._now())
        self._tiers[partner_id] = tier


async def record_tier(conn: AsyncConnection, *, partner_id: str, tier: str, at: datetime) -> None:
    """Insert or update one partner's tier."""
    result = await conn.execute(_UPDATE_TIER, {"b_partner_id": partner_id, "tier": tier, "updated_at": at})
    if result.rowcount == 0:
        await conn.execute(_INSERT_TIER, {"partner_id": partner_id, "tier": tier, "updated_at": at})


# Built once (a statement built per call costs as much as running it).
_UPDATE_TIER = update(partner_tiers).where(partner_tiers.c.partner_id == bindparam("b_partner_id"))
_INSERT_TIER = insert(partner_tiers)
