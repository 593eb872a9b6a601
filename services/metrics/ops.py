"""Operations surface of the metrics service: consumer status, Prometheus text, the dashboard.

Lag is computed from positions, never from Kafka offsets (the embedded broker reports
end offsets wrongly): per subscription and source, `lag = source head - newest position
applied` (checkpoints, or the rebuild floor when higher), with the source head read from
the source's log API (`X-Head-Position`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from events.schema import checkpoints, dead_letters
from services.metrics import kpis as k
from services.metrics import tables as t
from services.metrics.logs import SourceHeads
from services.metrics.projections import PROJECTIONS, SOURCES
from services.metrics.readmodel import ReadModels, Window, parked_counts, source_name
from services.runtime.auth import Ops, metrics_audience

STATIC_DIR = Path(__file__).parent / "static"
PARKED_SHOWN = 20
# The page, its script and the vendored chart library come from this origin only.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


async def consumer_status(
    conn: AsyncConnection, heads: dict[str, int | None], *, partitions: int
) -> list[dict[str, Any]]:
    """Per projection: its subscription, generation, positions and lag per source and partition, parked events.

    A partition's position is the subscription's checkpoint, or the projection's rebuild
    floor when higher; the source's position is the lowest of its partitions' (every
    event up to it is applied).
    """
    subs = {p.subscription for p in PROJECTIONS.values()}
    per_partition: dict[str, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
    rows = await conn.execute(
        select(checkpoints.c.subscription, checkpoints.c.source, checkpoints.c.partition, checkpoints.c.position).where(
            checkpoints.c.subscription.in_(list(subs))
        )
    )
    for subscription, source, partition, position in rows.all():
        per_partition[subscription][source_name(source)][int(partition)] = int(position)
    pointer = {
        name: (int(gen), rebuilt_at)
        for name, gen, rebuilt_at in (
            await conn.execute(select(t.projections.c.name, t.projections.c.generation, t.projections.c.rebuilt_at))
        ).all()
    }
    floors: dict[tuple[str, int, str], int] = {
        (name, int(gen), source): int(pos)
        for name, gen, source, pos in (
            await conn.execute(select(t.floors.c.projection, t.floors.c.generation, t.floors.c.source, t.floors.c.position))
        ).all()
    }
    parked = await parked_counts(conn)
    parked_rows = (
        await conn.execute(
            select(dead_letters)
            .where(dead_letters.c.subscription.in_(list(subs)), dead_letters.c.replayed_at.is_(None))
            .order_by(dead_letters.c.id)
            .limit(PARKED_SHOWN)
        )
    ).mappings()
    parked_by_sub: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in parked_rows:
        parked_by_sub[row["subscription"]].append(
            {
                "id": row["id"],
                "source": row["source"],
                "partition": row["partition"],
                "position": row["position"],
                "event_id": row["event_id"],
                "event_type": row["event_type"],
                "partner_id": row["partner_id"],
                "error": row["error"],
                "attempts": row["attempts"],
                "parked_at": row["parked_at"].isoformat() if row["parked_at"] else None,
                "replay": {
                    "method": "POST",
                    "path": f"/admin/services/metrics/consumers/{row['subscription']}/dead-letters/{row['id']}/replay",
                },
            }
        )
    out: list[dict[str, Any]] = []
    for projection in PROJECTIONS.values():
        subscription = projection.subscription
        generation, rebuilt_at = pointer.get(projection.name, (1, None))
        sources = []
        for source in SOURCES:
            checkpointed = per_partition[subscription].get(source, {})
            floor = floors.get((projection.name, generation, source), 0)
            by_partition = {p: max(checkpointed.get(p, 0), floor) for p in range(partitions)}
            position = min(by_partition.values())
            head = heads.get(source)
            sources.append(
                {
                    "source": source,
                    "position": position,
                    "floor": floor,
                    "head": head,
                    "lag": None if head is None else max(0, head - position),
                    "partitions": [
                        {"partition": p, "position": pos, "lag": None if head is None else max(0, head - pos)}
                        for p, pos in by_partition.items()
                    ],
                }
            )
        out.append(
            {
                "subscription": subscription,
                "projection": projection.name,
                "generation": generation,
                "rebuilt_at": rebuilt_at.isoformat() if rebuilt_at else None,
                "sources": sources,
                "parked": parked.get(subscription, 0),
                "parked_events": parked_by_sub.get(subscription, []),
            }
        )
    return out


class _Families(Collector):
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self._families = families

    def collect(self) -> Any:
        return iter(self._families)


async def prometheus_text(request: Request, *, only_partner: str | None = None) -> bytes:
    """Every KPI (per window; per partner for the default window), consumer lag, relay lag.

    `only_partner`: show per-partner series of that partner only (None: of every partner).
    """
    read_models: ReadModels = request.app.state.read_models
    heads: SourceHeads = request.app.state.source_heads
    now = request.app.state.clock.now()
    value = GaugeMetricFamily("partnerhub_kpi_value", "KPI value (percent, days or score)", labels=["kpi", "window"])
    target = GaugeMetricFamily("partnerhub_kpi_target", "KPI target", labels=["kpi"])
    met = GaugeMetricFamily("partnerhub_kpi_met", "1 when the KPI meets its target, 0 when breached", labels=["kpi", "window"])
    samples = GaugeMetricFamily("partnerhub_kpi_sample_size", "Observations behind the KPI", labels=["kpi", "window"])
    partner_value = GaugeMetricFamily(
        "partnerhub_kpi_partner_value", "KPI value of one partner", labels=["kpi", "window", "partner"]
    )
    budget = GaugeMetricFamily(
        "partnerhub_api_error_budget_remaining", "API availability error budget left (1 = untouched)", labels=["window"]
    )
    lag = GaugeMetricFamily(
        "partnerhub_consumer_lag_events",
        "Source head minus the position up to which every event of the source is applied",
        labels=["subscription", "projection", "source"],
    )
    partition_lag = GaugeMetricFamily(
        "partnerhub_consumer_partition_lag_events",
        "Source head minus the partition's checkpoint (quiet partitions are raised as events are handled)",
        labels=["subscription", "projection", "source", "partition"],
    )
    parked = GaugeMetricFamily("partnerhub_consumer_parked_events", "Dead-lettered events", labels=["subscription"])
    head_gauge = GaugeMetricFamily("partnerhub_source_head_position", "Newest position of each source store", labels=["source"])
    relay_lag = GaugeMetricFamily("partnerhub_relay_lag_events", "Events of this service's store not yet on Kafka", labels=["source"])

    for name, definition in k.KPIS.items():
        target.add_metric([name], definition.target)
    head_positions = await heads.get()
    async with read_models.snapshot() as snap:
        for window in k.WINDOWS:
            values = await snap.kpis(Window.of(window, now))
            for name, v in values.items():
                samples.add_metric([name, window], v.sample_size)
                if v.value is not None:
                    value.add_metric([name, window], v.value)
                    met.add_metric([name, window], 1.0 if v.status == "met" else 0.0)
            remaining = values["api_availability"].extra.get("error_budget_remaining")
            if remaining is not None:
                budget.add_metric([window], remaining)
        default = Window.of(k.DEFAULT_WINDOW, now)
        for name in k.KPIS:
            for partner, v in (await snap.per_partner(name, default)).items():
                if v.value is not None and only_partner in (None, partner):
                    partner_value.add_metric([name, default.name, partner], v.value)
        consumers = await consumer_status(snap.conn, head_positions, partitions=read_models.partitions)
    parked_by: dict[str, int] = {}
    for consumer in consumers:
        parked_by.setdefault(consumer["subscription"], consumer["parked"])
        for source in consumer["sources"]:
            if source["lag"] is not None:
                lag.add_metric([consumer["subscription"], consumer["projection"], source["source"]], source["lag"])
            for partition in source["partitions"]:
                if partition["lag"] is not None:
                    partition_lag.add_metric(
                        [consumer["subscription"], consumer["projection"], source["source"], str(partition["partition"])],
                        partition["lag"],
                    )
    for subscription, count in parked_by.items():
        parked.add_metric([subscription], count)
    for source, head in head_positions.items():
        if head is not None:
            head_gauge.add_metric([source], head)
    relay = request.app.state.runtime.relay
    if relay is not None:
        relay_lag.add_metric(["metrics"], await relay.lag())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        _Families(
            [value, target, met, samples, partner_value, budget, lag, partition_lag, parked, head_gauge, relay_lag]
        )
    )
    return bytes(generate_latest(registry))


router = APIRouter(tags=["operations"])


@router.get("/admin/consumers", summary="Consumer positions, lag and parked events (ops)")
async def consumers(request: Request, caller: Ops) -> dict[str, Any]:
    """Each projection's subscription: generation, position and lag per source, parked events."""
    heads = await request.app.state.source_heads.get()
    async with request.app.state.read_models.snapshot() as snap:
        status = await consumer_status(snap.conn, heads, partitions=request.app.state.read_models.partitions)
    relay = request.app.state.runtime.relay
    return {
        "consumers": status,
        "heads": heads,
        "relay": {"source": "metrics", "lag": await relay.lag()} if relay is not None else None,
    }


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}},
)
async def metrics(request: Request) -> Response:
    """KPI gauges (labels kpi, window, partner), consumer lag per source and partition, relay lag."""
    # Prometheus scrapes this service directly, without a token, and sees every partner.
    # Through the gateway (scope kpis:read) a partner client sees only its own series:
    # other partners' ids and KPIs are theirs (tests/hardening/test_isolation.py).
    text = await prometheus_text(request, only_partner=await metrics_audience(request))
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/dashboard", summary="KPI dashboard (HTML)", response_class=FileResponse)
async def dashboard() -> FileResponse:
    """A page for ops: KPIs against targets, 30-day trends, worst partners, consumer lag."""
    return FileResponse(
        STATIC_DIR / "dashboard.html",
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": DASHBOARD_CSP, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )
