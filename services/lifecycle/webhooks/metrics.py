"""Queue depth per endpoint, for dashboards and alerts (Prometheus text or plain rows)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Request, Response
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.lifecycle.webhooks.tables import endpoints, messages
from services.runtime.auth import metrics_audience


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


def prometheus_lines(depths: list[QueueDepth], *, now: datetime | None = None) -> list[str]:
    """`partnerhub_webhook_pending_messages` gauges in the Prometheus text format.

    With `now`, also `partnerhub_webhook_oldest_pending_seconds` (the age of each
    endpoint's oldest waiting message; 0 when none waits): the alert that a queue is
    stuck, where the depth alone only says it is long.
    """
    lines = [
        "# HELP partnerhub_webhook_pending_messages Webhook messages waiting for delivery, per endpoint.",
        "# TYPE partnerhub_webhook_pending_messages gauge",
    ]
    lines += [f"partnerhub_webhook_pending_messages{{{_labels(d)}}} {d.pending}" for d in depths]
    if now is not None:
        lines += [
            "# HELP partnerhub_webhook_oldest_pending_seconds Age of the oldest message waiting, per endpoint.",
            "# TYPE partnerhub_webhook_oldest_pending_seconds gauge",
        ]
        for depth in depths:
            age = 0.0 if depth.oldest_created_at is None else max(0.0, (now - depth.oldest_created_at).total_seconds())
            lines.append(f"partnerhub_webhook_oldest_pending_seconds{{{_labels(depth)}}} {age:.3f}")
    return lines


def metrics_router(engine: AsyncEngine, now: Callable[[], datetime]) -> APIRouter:
    """`GET /metrics` of the lifecycle service: webhook queue depth and age per endpoint.

    Scraped directly by Prometheus inside the deployment (not routed by the gateway,
    whose `/metrics` is the metrics service's KPIs), like the metrics service's own.
    """
    router = APIRouter(tags=["operations"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}},
    )
    async def metrics(request: Request) -> Response:
        """Webhook messages waiting per endpoint, and the age of each endpoint's oldest one."""
        depths = await queue_depths(engine)
        audience = await metrics_audience(request)  # a partner token sees only its own endpoints
        if audience is not None:
            depths = [d for d in depths if d.partner_id == audience]
        lines = prometheus_lines(depths, now=now())
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")

    return router


def _labels(depth: QueueDepth) -> str:
    return (
        f'endpoint_id="{_escape(depth.endpoint_id)}",partner_id="{_escape(depth.partner_id)}",'
        f'disabled="{str(depth.disabled).lower()}"'
    )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
