"""Reading the KPI read models: SQL gathers the facts, `kpis` does the math.

Every read runs on one connection: the projections' generations are read first and all
queries use them, so an answer never mixes an old and a rebuilt generation. `as_of`
reports, per source, the positions the projections behind the answer have applied.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Integer, Select, Table, bindparam, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.schema import checkpoints, dead_letters
from services.metrics import kpis as k
from services.metrics import tables as t
from services.metrics.projections import PROJECTIONS, SOURCES
from services.metrics.writer import generations

KPI_PROJECTION: dict[str, str] = {name: name for name in k.KPIS}


@dataclass(frozen=True, slots=True)
class Window:
    """A KPI window ending now: events whose time is after `since` (None: all time)."""

    name: str
    since: datetime | None
    now: datetime

    @classmethod
    def of(cls, name: str, now: datetime) -> Window:
        return cls(name, k.window_start(name, now), now)


@dataclass(frozen=True, slots=True)
class DaySpan:
    """A UTC calendar day, cut at now for today."""

    day: date
    start: datetime
    end: datetime


class Snapshot:
    """One consistent view of the read models (one connection, fixed generations)."""

    def __init__(self, conn: AsyncConnection, generations: dict[str, int], *, partitions: int) -> None:
        self.conn = conn
        self.gen = generations
        self.partitions = partitions

    # --- ratio KPIs (aggregated in SQL) ----------------------------------------------------

    async def ratio_by_partner(self, name: str, window: Window) -> dict[str, k.KpiValue]:
        """A ratio KPI (availability, success, retention, webhooks) per partner with data in `window`."""
        table, good = _RATIO_FACTS[name]
        columns: list[Any]
        if good is None:  # api_availability: requests and server errors
            columns = [func.sum(table.c.total), func.sum(table.c.server_errors), func.count()]
        else:
            columns = [func.sum(cast(table.c[good], Integer)), func.count()]
        where = [table.c.generation == self.gen[name], table.c.partner_id.is_not(None)]
        if window.since is not None:
            where.append(table.c.occurred_at > window.since)
        query = select(table.c.partner_id, *columns).where(*where).group_by(table.c.partner_id)
        return {
            str(row[0]): _ratio_value(name, [int(v or 0) for v in row[1:]])
            for row in (await self.conn.execute(query)).all()
        }

    # --- per-partner facts (computed in Python) --------------------------------------------

    async def _partner_rows(self, table: Table, projection: str, partner_id: str | None) -> list[dict[str, Any]]:
        where = [table.c.generation == self.gen[projection]]
        if partner_id is not None:
            where.append(table.c.partner_id == partner_id)
        return [dict(r) for r in (await self.conn.execute(select(table).where(*where))).mappings()]

    async def durations(self, name: str, partner_id: str | None = None) -> dict[str, tuple[datetime | None, datetime | None]]:
        """(start, end) per partner of a duration KPI."""
        if name == "time_to_integration_days":
            rows = await self._partner_rows(t.tti_partners, name, partner_id)
            return {r["partner_id"]: (r["agreement_signed_at"], r["first_live_at"]) for r in rows}
        rows = await self._partner_rows(t.ttp_partners, name, partner_id)
        return {r["partner_id"]: (r["applied_at"], r["activated_at"]) for r in rows}

    async def ratings(self, partner_id: str | None = None) -> list[k.Rating]:
        rows = await self._partner_rows(t.satisfaction_ratings, "partner_satisfaction", partner_id)
        return [k.Rating(r["partner_id"], r["occurred_at"], int(r["position"]), float(r["score"])) for r in rows]

    async def uptime_integrations(self, partner_id: str | None = None) -> list[k.UptimeIntegration]:
        gen = self.gen["integration_uptime"]
        integrations = await self._partner_rows(t.uptime_integrations, "integration_uptime", partner_id)
        where = [t.uptime_transitions.c.generation == gen]
        if partner_id is not None:
            where.append(t.uptime_transitions.c.partner_id == partner_id)
        transitions: dict[str, list[k.Transition]] = defaultdict(list)
        query = select(
            t.uptime_transitions.c.integration_id,
            t.uptime_transitions.c.occurred_at,
            t.uptime_transitions.c.position,
            t.uptime_transitions.c.status,
        ).where(*where)
        for integration_id, at, position, status in (await self.conn.execute(query)).all():
            transitions[integration_id].append(k.Transition(at, int(position), status == "up"))
        return [
            k.UptimeIntegration(
                r["integration_id"],
                r["partner_id"],
                float(r["sla_target_pct"]),
                r["went_live_at"],
                r["retired_at"],
                tuple(transitions.get(r["integration_id"], ())),
            )
            for r in integrations
        ]

    async def funnel_rows(self) -> list[dict[str, Any]]:
        return await self._partner_rows(t.funnel_partners, "partner_funnel", None)

    # --- whole answers ---------------------------------------------------------------------

    async def _ratio_sums(self, window: Window, partner_id: str | None) -> list[int]:
        """The counts behind the four ratio KPIs, in one round trip."""
        subqueries = []
        for table, projection, columns in (
            (t.api_traffic, "api_availability", (t.api_traffic.c.total, t.api_traffic.c.server_errors, None)),
            (t.integration_attempts, "integration_success_rate", (t.integration_attempts.c.succeeded, None)),
            (t.retention_outcomes, "partner_retention", (t.retention_outcomes.c.renewed, None)),
            (t.webhook_outcomes, "webhook_delivery_success", (t.webhook_outcomes.c.delivered, None)),
        ):
            where = [table.c.generation == self.gen[projection]]
            if window.since is not None:
                where.append(table.c.occurred_at > window.since)
            if partner_id is not None:
                where.append(table.c.partner_id == partner_id)
            for column in columns:
                aggregate = func.count() if column is None else func.coalesce(func.sum(cast(column, Integer)), 0)
                subqueries.append(select(aggregate).where(*where).scalar_subquery())
        row = (await self.conn.execute(select(*subqueries))).one()
        return [int(v or 0) for v in row]

    async def kpis(self, window: Window, *, partner_id: str | None = None) -> dict[str, k.KpiValue]:
        """Every KPI over `window` (platform-wide, or for one partner)."""
        since, now = window.since, window.now
        total, errors, windows, succeeded, attempts, renewed, outcomes, delivered, messages = await self._ratio_sums(
            window, partner_id
        )
        table = t.webhook_outcomes
        where = [table.c.generation == self.gen["webhook_delivery_success"], table.c.latency_ms.is_not(None)]
        if since is not None:
            where.append(table.c.occurred_at > since)
        if partner_id is not None:
            where.append(table.c.partner_id == partner_id)
        latencies = [float(v) for v in (await self.conn.execute(select(table.c.latency_ms).where(*where))).scalars()]
        out: dict[str, k.KpiValue] = {}
        out["api_availability"] = k.api_availability(total, errors, windows=windows)
        out["integration_uptime"] = k.integration_uptime(
            await self.uptime_integrations(partner_id), start=since, end=now, detail=partner_id is not None
        )
        out["integration_success_rate"] = k.integration_success_rate(succeeded, attempts - succeeded)
        for name in ("time_to_integration_days", "time_to_partnership_days"):
            pairs = (await self.durations(name, partner_id)).values()
            out[name] = k.duration_kpi(name, k.closed_durations(pairs, since=since))
        out["partner_satisfaction"] = k.partner_satisfaction(k.latest_ratings(await self.ratings(partner_id), since=since))
        out["partner_retention"] = k.partner_retention(renewed, outcomes - renewed)
        out["webhook_delivery_success"] = k.webhook_delivery_success(delivered, messages - delivered, latencies)
        return out

    async def per_partner(self, name: str, window: Window) -> dict[str, k.KpiValue]:
        """KPI `name` for every partner with data in `window`."""
        since, now = window.since, window.now
        if name in _RATIO_FACTS:
            return await self.ratio_by_partner(name, window)
        if name == "integration_uptime":
            by_partner: dict[str, list[k.UptimeIntegration]] = defaultdict(list)
            for integration in await self.uptime_integrations():
                by_partner[integration.partner_id].append(integration)
            return {pid: k.integration_uptime(items, start=since, end=now) for pid, items in by_partner.items()}
        if name == "partner_satisfaction":
            latest = k.latest_ratings(await self.ratings(), since=since)
            return {pid: k.partner_satisfaction({pid: score}) for pid, score in latest.items()}
        pairs = await self.durations(name)
        return {pid: k.duration_kpi(name, k.closed_durations([pair], since=since)) for pid, pair in pairs.items()}

    async def series(self, name: str, days: Sequence[DaySpan]) -> list[tuple[DaySpan, k.KpiValue]]:
        """KPI `name` per UTC day: over the events of that day (uptime: the time of that
        day; satisfaction: each partner's latest rating as of the end of that day)."""
        first = days[0].start
        if name in _RATIO_FACTS:
            return await self._daily_ratio(name, days)
        if name == "integration_uptime":
            integrations = await self.uptime_integrations()
            return [(d, k.integration_uptime(integrations, start=d.start, end=d.end)) for d in days]
        if name == "partner_satisfaction":
            ratings = await self.ratings()
            return [
                (d, k.partner_satisfaction(k.latest_ratings(ratings, since=None, until=d.end))) for d in days
            ]
        pairs = [p for p in (await self.durations(name)).values() if p[1] is not None and p[1] > first]
        return [(d, k.duration_kpi(name, k.closed_durations(pairs, since=d.start, until=d.end))) for d in days]

    async def _daily_ratio(self, name: str, days: Sequence[DaySpan]) -> list[tuple[DaySpan, k.KpiValue]]:
        good = _RATIO_FACTS[name][1]
        params = {"generation": self.gen[name], "first_day": days[0].day.isoformat()}
        rows = (await self.conn.execute(_daily_ratio_query(name), params)).all()
        by_day = {row[0]: [int(v or 0) for v in row[1:]] for row in rows}
        empty = [0, 0, 0] if good is None else [0, 0]
        return [(d, _ratio_value(name, by_day.get(d.day.isoformat(), empty))) for d in days]

    async def partner_known(self, partner_id: str) -> bool:
        """Whether any read model has heard of `partner_id`."""
        for table, projection in (
            (t.funnel_partners, "partner_funnel"),
            (t.tti_partners, "time_to_integration_days"),
            (t.uptime_integrations, "integration_uptime"),
            (t.api_traffic, "api_availability"),
            (t.integration_attempts, "integration_success_rate"),
            (t.webhook_outcomes, "webhook_delivery_success"),
            (t.satisfaction_ratings, "partner_satisfaction"),
            (t.retention_outcomes, "partner_retention"),
        ):
            query = select(table.c.partner_id).where(
                table.c.generation == self.gen[projection], table.c.partner_id == partner_id
            ).limit(1)
            if (await self.conn.execute(query)).first() is not None:
                return True
        return False

    async def as_of(self, names: Iterable[str]) -> dict[str, int]:
        """Per source: the newest position every projection in `names` has applied."""
        reached = await positions(self.conn, names, partitions=self.partitions, gens=self.gen)
        return {source: min(by_projection.values()) for source, by_projection in reached.items()}


_CHECKPOINTS = select(checkpoints.c.subscription, checkpoints.c.source, checkpoints.c.partition, checkpoints.c.position)
_FLOORS = select(t.floors.c.projection, t.floors.c.generation, t.floors.c.source, t.floors.c.position)


async def positions(
    conn: AsyncConnection, names: Iterable[str], *, partitions: int, gens: dict[str, int] | None = None
) -> dict[str, dict[str, int]]:
    """source → projection → the position up to which every event of the source is applied.

    Per partition that is its checkpoint (or the rebuild floor when higher); the source's
    is the lowest over its `partitions` partitions (the subscription raises quiet
    partitions as soon as every earlier event is handled).
    """
    wanted = list(names)
    per_partition: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    subs = {PROJECTIONS[n].subscription for n in wanted}
    # Both tables hold a handful of rows: read them whole with statements built once.
    for subscription, source, partition, position in (await conn.execute(_CHECKPOINTS)).all():
        if subscription not in subs:
            continue
        for name in wanted:
            if PROJECTIONS[name].subscription == subscription:
                per_partition[(source_name(source), name)][int(partition)] = int(position)
    gens = gens if gens is not None else await generations(conn)
    floors: dict[tuple[str, str], int] = {}
    for name, gen, source, position in (await conn.execute(_FLOORS)).all():
        if name in wanted and gens.get(name) == gen:
            floors[(source, name)] = int(position)
    reached: dict[str, dict[str, int]] = {}
    for source in SOURCES:
        reached[source] = {}
        for name in wanted:
            applied = per_partition.get((source, name), {})
            floor = floors.get((source, name), 0)
            reached[source][name] = min(max(applied.get(p, 0), floor) for p in range(partitions))
    return reached


@functools.cache
def _daily_ratio_query(name: str) -> Select[Any]:
    table, good = _RATIO_FACTS[name]
    columns: list[Any]
    if good is None:
        columns = [func.sum(table.c.total), func.sum(table.c.server_errors), func.count()]
    else:
        columns = [func.sum(cast(table.c[good], Integer)), func.count()]
    return (
        select(table.c.day, *columns)
        .where(table.c.generation == bindparam("generation"), table.c.day >= bindparam("first_day"))
        .group_by(table.c.day)
    )


def source_name(checkpoint_source: str) -> str:
    """The service name of a checkpoint's source (a service name or its topic)."""
    parts = checkpoint_source.split(".")
    return parts[-2] if len(parts) >= 3 and parts[-1] == "events" else checkpoint_source


async def parked_counts(conn: AsyncConnection) -> dict[str, int]:
    """Parked (dead-lettered, not replayed) events per subscription."""
    query = (
        select(dead_letters.c.subscription, func.count())
        .where(dead_letters.c.replayed_at.is_(None))
        .group_by(dead_letters.c.subscription)
    )
    return {str(name): int(count) for name, count in (await conn.execute(query)).all()}


# Ratio KPIs: their fact table and the boolean column counting as good (None: traffic sums).
_RATIO_FACTS: dict[str, tuple[Table, str | None]] = {
    "api_availability": (t.api_traffic, None),
    "integration_success_rate": (t.integration_attempts, "succeeded"),
    "partner_retention": (t.retention_outcomes, "renewed"),
    "webhook_delivery_success": (t.webhook_outcomes, "delivered"),
}


def _ratio_value(name: str, sums: list[int]) -> k.KpiValue:
    """The KPI from the sums `ratio_by_partner` and `_daily_ratio` select."""
    if name == "api_availability":
        return k.api_availability(sums[0], sums[1], windows=sums[2])
    good, total = sums
    if name == "integration_success_rate":
        return k.integration_success_rate(good, total - good)
    if name == "partner_retention":
        return k.partner_retention(good, total - good)
    return k.webhook_delivery_success(good, total - good, [])


class ReadModels:
    """Entry point of the KPI API: opens consistent snapshots of the read models."""

    def __init__(self, engine: AsyncEngine, *, partitions: int) -> None:
        self.engine = engine
        self.partitions = partitions

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Snapshot]:
        """A consistent view: one read transaction (REPEATABLE READ on PostgreSQL; on SQLite
        an explicit BEGIN, since the driver would run each SELECT in its own snapshot)."""
        async with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ")
            elif conn.dialect.name == "sqlite":
                await conn.exec_driver_sql("BEGIN")
            try:
                yield Snapshot(conn, await generations(conn), partitions=self.partitions)
            finally:
                await conn.rollback()


def day_spans(now: datetime, days: int) -> list[DaySpan]:
    """The last `days` UTC days ending today; today ends now."""
    spans = []
    for day in k.last_days(now, days):
        start, end = k.day_bounds(day, now)
        spans.append(DaySpan(day, start, min(end, now)))
    return spans
