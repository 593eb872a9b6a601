"""The tier book: what the tier subscription writes, per event and per batch."""

from __future__ import annotations

from sqlalchemy import select

from events.catalog import PartnerActivated, PartnerApproved, PartnerRejected
from services.gateway.tables import partner_tiers
from tests.gateway.support import InProcessGateway
from tests.lifecycle.conftest import onboarding_event

HISTORY = [
    onboarding_event(PartnerApproved(partner_id="ptn-a", tier="platform_integration", approvers=["ops"]), position=1),
    onboarding_event(PartnerRejected(partner_id="ptn-b", reason="no"), position=2),  # not a tier event
    onboarding_event(PartnerApproved(partner_id="ptn-c", tier="innovation", approvers=["ops"]), position=3),
    onboarding_event(PartnerActivated(partner_id="ptn-a", tier="strategic"), position=4),  # the later tier wins
]


async def tiers_in(gateway: InProcessGateway) -> dict[str, str]:
    async with gateway.ctx.runtime.engine.connect() as conn:
        rows = (await conn.execute(select(partner_tiers.c.partner_id, partner_tiers.c.tier))).all()
    return {row.partner_id: row.tier for row in rows}


async def test_a_batch_leaves_the_tiers_that_one_event_at_a_time_leaves(gateway: InProcessGateway) -> None:
    book = gateway.ctx.tiers
    async with gateway.ctx.runtime.engine.begin() as conn:
        await book.handle_batch(conn, HISTORY[:3])
    async with gateway.ctx.runtime.engine.begin() as conn:
        await book.handle_batch(conn, HISTORY[3:])
    batched = await tiers_in(gateway)
    assert batched == {"ptn-a": "strategic", "ptn-c": "innovation"}
    assert {p: book.tier_of(p) for p in ("ptn-a", "ptn-b", "ptn-c")} == {
        "ptn-a": "strategic", "ptn-b": None, "ptn-c": "innovation",
    }

    async with gateway.ctx.runtime.engine.begin() as conn:
        await conn.execute(partner_tiers.delete())
    for event in HISTORY:
        async with gateway.ctx.runtime.engine.begin() as conn:
            await book.handle(conn, event)
    assert await tiers_in(gateway) == batched
    await book.load()
    assert book.tier_of("ptn-a") == "strategic"
