"""The `partners` read model: the public record of a partner, kept in step with its stream."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.envelope import RecordedEvent
from services.onboarding.domain import Partner
from services.onboarding.tables import partners


def record_of(partner: Partner, *, created_at: datetime, updated_at: datetime) -> dict[str, Any]:
    """The partner as the API shows it (`GET /v1/partners/{id}`)."""
    assessment = partner.assessment
    agreement = partner.agreement
    return {
        "id": partner.id,
        "status": partner.status,
        "name": partner.name,
        "website": partner.website,
        "category": partner.category,
        "contact_email": partner.contact_email,
        "tier": partner.tier,
        "assessment": None
        if assessment is None
        else {
            "scores": dict(assessment.scores),
            "weighted_score": assessment.weighted_score,
            "recommended_tier": assessment.recommended_tier,
            "scoring_model": assessment.scoring_model,
        },
        "due_diligence": {
            "phases": [
                {"phase": r.phase, "passed": r.passed, "findings": r.findings} for r in partner.due_diligence
            ],
            "next_phase": partner.next_phase if "record_due_diligence" in partner.allowed else None,
        },
        "approvals": {
            "required": partner.approvals_required,
            "approvers": list(partner.approvers),
            "decisions": [
                {"approver": a.approver, "decision": a.decision, "comment": a.comment} for a in partner.approvals
            ],
        },
        "agreement": None
        if agreement is None
        else {
            "agreement_type": agreement.agreement_type,
            "starts_on": agreement.starts_on.isoformat(),
            "ends_on": agreement.ends_on.isoformat(),
            "sla": agreement.sla.model_dump(mode="json"),
        },
        "rejection": None
        if partner.status != "rejected"
        else {"reason": partner.rejection_reason, "rejected_by": partner.rejected_by},
        "allowed_commands": list(partner.allowed),
        "version": partner.version,
        "created_at": created_at.isoformat(),
        "updated_at": updated_at.isoformat(),
    }


@dataclass(slots=True)
class Pending:
    """A partner's new state, written by the transaction that appends its events."""

    partner: Partner
    created_at: datetime | None  # None: these events start the stream
    record: dict[str, Any] | None = None


async def save_all(conn: AsyncConnection, items: list[tuple[Any, list[RecordedEvent]]]) -> None:
    """Write every `Pending` of a group commit: one insert and one update statement at most."""
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for pending, recorded in items:
        assert isinstance(pending, Pending)
        partner, last = pending.partner, recorded[-1]
        created_at = pending.created_at or recorded[0].occurred_at
        pending.record = record_of(partner, created_at=created_at, updated_at=last.occurred_at)
        row = {
            "status": partner.status,
            "tier": partner.tier,
            "version": last.stream_version,
            "record": pending.record,
            "updated_at": last.occurred_at,
        }
        if pending.created_at is None:
            inserts.append({"id": partner.id, "created_position": recorded[0].position, "created_at": created_at, **row})
        else:
            updates.append({"partner_id": partner.id, **row})
    if inserts:
        await conn.execute(insert(partners), inserts)
    if updates:
        await conn.execute(update(partners).where(partners.c.id == bindparam("partner_id")), updates)


@dataclass(frozen=True, slots=True)
class Row:
    record: dict[str, Any]
    version: int
    created_position: int


_ONE = select(partners.c.record, partners.c.version, partners.c.created_position).where(
    partners.c.id == bindparam("partner_id")
)


async def get(engine: AsyncEngine, partner_id: str) -> Row | None:
    """One partner's record and version."""
    async with engine.connect() as conn:
        row = (await conn.execute(_ONE, {"partner_id": partner_id})).first()
    return None if row is None else Row(row.record, row.version, row.created_position)


async def page(
    engine: AsyncEngine,
    *,
    status: str | None,
    only_partner: str | None,
    after_position: int,
    limit: int,
) -> tuple[list[Row], bool]:
    """Records in creation order after `after_position`; whether more follow."""
    query = (
        select(partners.c.record, partners.c.version, partners.c.created_position)
        .where(partners.c.created_position > after_position)
        .order_by(partners.c.created_position)
        .limit(limit + 1)
    )
    if status is not None:
        query = query.where(partners.c.status == status)
    if only_partner is not None:
        query = query.where(partners.c.id == only_partner)
    async with engine.connect() as conn:
        rows = [Row(r.record, r.version, r.created_position) for r in (await conn.execute(query)).all()]
    return rows[:limit], len(rows) > limit
