"""Queue depth per endpoint, for dashboards and alerts (Prometheus text or plain rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lifecycle.webhooks.tables import endpoints, messages


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Messages of one endpoint not yet delivered nor finally failed."""

    endpoint_id: str
    partner_id: str
    disabled: bool
    pending: int
    oldest_created_at: datetime | None


async def queue_depths(engine: AsyncEngine) -> list[QueueDepth]:
    """Every endpoint's pending queue depth (0 included), ordered by endpoint id."""
    pending = (
        select(
            messages.c.endpoint_id,
            func.count().label("pending"),
            func.min(messages.c.created_at).label("oldest"),
        )
        .where(messages.c.status == "pending")
        .group_by(messages.c.endpoint_id)
        .subquery()
    )
    query = (
        select(endpoints.c.id, endpoints.c.partner_id, endpoints.c.disabled, pending.c.pending, pending.c.oldest)
        .outerjoin(pending, pending.c.endpoint_id == endpoints.c.id)
        .order_by(endpoints.c.id)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        QueueDepth(row.id, row.partner_id, bool(row.disabled), int(row.pending or 0), row.oldest) for row in rows
    ]


def prometheus_lines(depths: list[QueueDepth]) -> list[str]:
    """`partnerhub_webhook_pending_messages` gauges in the Prometheus text format."""
    lines = [
        "# HELP partnerhub_webhook_pending_messages Webhook messages waiting for delivery, per endpoint.",
        "# TYPE partnerhub_webhook_pending_messages gauge",
    ]
    for depth in depths:
        labels = f'endpoint_id="{depth.endpoint_id}",partner_id="{_escape(depth.partner_id)}",disabled="{str(depth.disabled).lower()}"'
        lines.append(f"partnerhub_webhook_pending_messages{{{labels}}} {depth.pending}")
    return lines


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
