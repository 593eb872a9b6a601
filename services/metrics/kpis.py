"""The KPI definitions of DESIGN.md §3 and their math: pure functions, no I/O.

Targets are the seeds' (API availability 99.9 %, integration success 95 %, time to
integration 60 days, time to partnership 90 days, satisfaction 8.5/10, retention 85 %,
webhook delivery 99.5 %). Percentages are expressed 0-100.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

Status = Literal["met", "breached", "no_data"]
Comparison = Literal[">=", "<="]

SECONDS_PER_DAY = 86_400.0
WINDOWS: dict[str, timedelta | None] = {
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
    "all": None,
}
DEFAULT_WINDOW = "30d"
DEFAULT_UPTIME_TARGET_PCT = 99.9
# api_availability's error budget is the complement of its target: 0.1 % of requests.
ERROR_BUDGET_FRACTION = 0.001


@dataclass(frozen=True, slots=True)
class KpiDefinition:
    """One row of the DESIGN §3 KPI table."""

    name: str
    title: str
    unit: Literal["percent", "days", "score"]
    target: float
    comparison: Comparison
    definition: str


KPIS: dict[str, KpiDefinition] = {
    k.name: k
    for k in (
        KpiDefinition(
            "api_availability", "API availability", "percent", 99.9, ">=",
            "Σ(total - server_errors) / Σ total over the gateway's traffic windows",
        ),
        KpiDefinition(
            "integration_uptime", "Integration uptime", "percent", DEFAULT_UPTIME_TARGET_PCT, ">=",
            "per integration: up / (up + down) seconds from health transitions, unknown time "
            "excluded; platform = mean over live integrations; met when every one meets its own SLA target",
        ),
        KpiDefinition(
            "integration_success_rate", "Integration success rate", "percent", 95.0, ">=",
            "succeeded / (succeeded + failed) integration attempts",
        ),
        KpiDefinition(
            "time_to_integration_days", "Time to integration", "days", 60.0, "<=",
            "per partner: first integration live - agreement signed; mean over partners that went live",
        ),
        KpiDefinition(
            "time_to_partnership_days", "Time to partnership", "days", 90.0, "<=",
            "per partner: activated - applied; mean over activated partners",
        ),
        KpiDefinition(
            "partner_satisfaction", "Partner satisfaction", "score", 8.5, ">=",
            "mean of each partner's latest rating (0-10)",
        ),
        KpiDefinition(
            "partner_retention", "Partner retention", "percent", 85.0, ">=",
            "renewed / (renewed + terminated) alliances",
        ),
        KpiDefinition(
            "webhook_delivery_success", "Webhook delivery success", "percent", 99.5, ">=",
            "delivered / (delivered + failed) webhook messages",
        ),
    )
}


@dataclass(slots=True)
class KpiValue:
    """A KPI's answer: value against target, with its sample size and extra statistics."""

    name: str
    value: float | None
    target: float
    sample_size: int
    extra: dict[str, Any] = field(default_factory=dict)
    # Set when the KPI's status is not a plain value-vs-target comparison (uptime).
    met: bool | None = None

    @property
    def definition(self) -> KpiDefinition:
        return KPIS[self.name]

    @property
    def status(self) -> Status:
        if self.value is not None and self.met is not None:
            return "met" if self.met else "breached"
        return status_of(self.value, self.target, self.definition.comparison)

    def to_json(self) -> dict[str, Any]:
        """The API shape: {value, target, status, sample_size, unit, comparison, ...}."""
        d = self.definition
        return {
            "value": _clean(self.value),
            "target": self.target,
            "status": self.status,
            "sample_size": self.sample_size,
            "unit": d.unit,
            "comparison": d.comparison,
            **{k: _clean(v) if isinstance(v, float) else v for k, v in self.extra.items()},
        }


def _clean(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, 6)


def status_of(value: float | None, target: float, comparison: Comparison) -> Status:
    """`met` when `value` satisfies `comparison target`, `no_data` when there is no value."""
    if value is None:
        return "no_data"
    met = value >= target if comparison == ">=" else value <= target
    return "met" if met else "breached"


def window_start(window: str, now: datetime) -> datetime | None:
    """Start (exclusive) of `window` ending now; None for `all`."""
    span = WINDOWS[window]
    return None if span is None else now - span


def day_of(at: datetime) -> str:
    """The UTC calendar day of `at` (how daily series are bucketed)."""
    return at.date().isoformat()


def last_days(now: datetime, days: int) -> list[date]:
    """The `days` UTC calendar days ending with today, oldest first."""
    today = now.date()
    return [today - timedelta(days=offset) for offset in range(days - 1, -1, -1)]


def day_bounds(day: date, tz_now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of a UTC calendar day, as aware datetimes in `tz_now`'s zone."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz_now.tzinfo)
    return start, start + timedelta(days=1)


# --- ratio KPIs ----------------------------------------------------------------------------


def ratio_pct(good: int, bad: int) -> float | None:
    """good / (good + bad) in percent; None when there is nothing to count."""
    total = good + bad
    return None if total <= 0 else 100.0 * good / total


def api_availability(total: int, server_errors: int, *, windows: int = 0) -> KpiValue:
    """Σ(total - server_errors) / Σ total, with the error budget left (1 - errors / (0.001 · total))."""
    value = ratio_pct(total - server_errors, server_errors) if total > 0 else None
    budget = None if total <= 0 else 1.0 - server_errors / (ERROR_BUDGET_FRACTION * total)
    return KpiValue(
        "api_availability",
        value,
        KPIS["api_availability"].target,
        total,
        {"requests": total, "server_errors": server_errors, "traffic_windows": windows,
         "error_budget_remaining": budget},
    )


def integration_success_rate(succeeded: int, failed: int) -> KpiValue:
    """succeeded / (succeeded + failed) attempts."""
    return KpiValue(
        "integration_success_rate",
        ratio_pct(succeeded, failed),
        KPIS["integration_success_rate"].target,
        succeeded + failed,
        {"succeeded": succeeded, "failed": failed},
    )


def partner_retention(renewed: int, terminated: int) -> KpiValue:
    """renewed / (renewed + terminated)."""
    return KpiValue(
        "partner_retention",
        ratio_pct(renewed, terminated),
        KPIS["partner_retention"].target,
        renewed + terminated,
        {"renewed": renewed, "terminated": terminated},
    )


def webhook_delivery_success(delivered: int, failed: int, latencies_ms: Sequence[float]) -> KpiValue:
    """delivered / (delivered + failed), with p50/p99 latency from first attempt to delivery."""
    ordered = sorted(latencies_ms)
    return KpiValue(
        "webhook_delivery_success",
        ratio_pct(delivered, failed),
        KPIS["webhook_delivery_success"].target,
        delivered + failed,
        {
            "delivered": delivered,
            "failed": failed,
            "latency_p50_ms": percentile(ordered, 0.50),
            "latency_p99_ms": percentile(ordered, 0.99),
        },
    )


# --- duration KPIs -------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-quantile of sorted values, linearly interpolated between closest ranks (numpy's default)."""
    if not ordered:
        return None
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def days_between(start: datetime, end: datetime) -> float:
    """Elapsed days from `start` to `end` (fractional)."""
    return (end - start).total_seconds() / SECONDS_PER_DAY


def duration_kpi(name: str, durations_days: Iterable[float]) -> KpiValue:
    """mean (the KPI value), median and p90 of per-partner durations in days."""
    ordered = sorted(durations_days)
    mean = sum(ordered) / len(ordered) if ordered else None
    return KpiValue(
        name,
        mean,
        KPIS[name].target,
        len(ordered),
        {"mean": mean, "median": percentile(ordered, 0.5), "p90": percentile(ordered, 0.9)},
    )


def closed_durations(
    pairs: Iterable[tuple[datetime | None, datetime | None]], *, since: datetime | None, until: datetime | None = None
) -> list[float]:
    """Days from start to end of each (start, end) pair whose end falls in (since, until]."""
    out: list[float] = []
    for start, end in pairs:
        if start is None or end is None:
            continue
        if since is not None and end <= since:
            continue
        if until is not None and end > until:
            continue
        out.append(days_between(start, end))
    return out


# --- satisfaction --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rating:
    partner_id: str
    occurred_at: datetime
    position: int
    score: float


def latest_ratings(ratings: Iterable[Rating], *, since: datetime | None, until: datetime | None = None) -> dict[str, float]:
    """Each partner's latest rating among those in (since, until] (ties broken by position)."""
    latest: dict[str, Rating] = {}
    for r in ratings:
        if since is not None and r.occurred_at <= since:
            continue
        if until is not None and r.occurred_at > until:
            continue
        seen = latest.get(r.partner_id)
        if seen is None or (r.occurred_at, r.position) > (seen.occurred_at, seen.position):
            latest[r.partner_id] = r
    return {pid: r.score for pid, r in latest.items()}


def partner_satisfaction(latest: dict[str, float]) -> KpiValue:
    """Mean of each partner's latest rating."""
    scores = list(latest.values())
    mean = sum(scores) / len(scores) if scores else None
    return KpiValue("partner_satisfaction", mean, KPIS["partner_satisfaction"].target, len(scores))


# --- uptime --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transition:
    occurred_at: datetime
    position: int
    up: bool


@dataclass(frozen=True, slots=True)
class UptimeIntegration:
    integration_id: str
    partner_id: str
    sla_target_pct: float
    went_live_at: datetime | None
    retired_at: datetime | None
    transitions: tuple[Transition, ...]


def up_down_seconds(
    transitions: Sequence[Transition], *, start: datetime | None, end: datetime, retired_at: datetime | None = None
) -> tuple[float, float]:
    """Up and down seconds within (start, end] from health transitions.

    Time before the first transition is unknown and excluded. The last state holds
    until `end` (a still-open interval counts up to now) or until retirement.
    """
    ordered = sorted(transitions, key=lambda t: (t.occurred_at, t.position))
    stop = min(end, retired_at) if retired_at is not None else end
    up = down = 0.0
    for index, transition in enumerate(ordered):
        begin = transition.occurred_at
        finish = ordered[index + 1].occurred_at if index + 1 < len(ordered) else stop
        finish = min(finish, stop)
        if start is not None:
            begin = max(begin, start)
        seconds = (finish - begin).total_seconds()
        if seconds <= 0:
            continue
        if transition.up:
            up += seconds
        else:
            down += seconds
    return up, down


def integration_uptime_pct(
    integration: UptimeIntegration, *, start: datetime | None, end: datetime
) -> tuple[float | None, float]:
    """(uptime % in the window or None when no time is known, known seconds)."""
    up, down = up_down_seconds(integration.transitions, start=start, end=end, retired_at=integration.retired_at)
    known = up + down
    return (100.0 * up / known if known > 0 else None), known


def is_live(integration: UptimeIntegration, at: datetime) -> bool:
    """Went live at or before `at` and not retired by then."""
    return (
        integration.went_live_at is not None
        and integration.went_live_at <= at
        and (integration.retired_at is None or integration.retired_at > at)
    )


def integration_uptime(
    integrations: Iterable[UptimeIntegration], *, start: datetime | None, end: datetime, detail: bool = False
) -> KpiValue:
    """Platform uptime: mean over live integrations with known time in the window.

    Status is `met` only when every such integration meets its own SLA target.
    """
    values: list[float] = []
    breaching: list[str] = []
    per_integration: list[dict[str, Any]] = []
    for integration in integrations:
        if not is_live(integration, end):
            continue
        pct, known = integration_uptime_pct(integration, start=start, end=end)
        if pct is None:
            continue
        values.append(pct)
        ok = pct >= integration.sla_target_pct
        if not ok:
            breaching.append(integration.integration_id)
        per_integration.append(
            {
                "integration_id": integration.integration_id,
                "uptime_pct": _clean(pct),
                "target": integration.sla_target_pct,
                "status": "met" if ok else "breached",
                "known_seconds": known,
            }
        )
    mean = sum(values) / len(values) if values else None
    extra: dict[str, Any] = {"breaching": sorted(breaching)}
    if detail:
        extra["integrations"] = sorted(per_integration, key=lambda i: i["integration_id"])
    return KpiValue(
        "integration_uptime", mean, DEFAULT_UPTIME_TARGET_PCT, len(values), extra, met=not breaching
    )


# --- funnel --------------------------------------------------------------------------------

FUNNEL_STATUSES = (
    "applied", "assessed", "due_diligence", "approved", "rejected", "signed", "active", "terminated",
)


def funnel_status(onboarding_status: str | None, terminated: bool) -> str | None:
    """A partner's funnel stage: its onboarding status, or `terminated` once its alliance ended."""
    if terminated:
        return "terminated"
    return onboarding_status


def funnel_counts(statuses: Iterable[str | None]) -> dict[str, int]:
    """Partners per funnel stage (every stage present, zeros included)."""
    counts = dict.fromkeys(FUNNEL_STATUSES, 0)
    for status in statuses:
        if status is not None:
            counts[status] = counts.get(status, 0) + 1
    return counts


def worst(values: dict[str, KpiValue], limit: int) -> list[tuple[str, KpiValue]]:
    """The `limit` partners farthest on the wrong side of the target (those with data only)."""
    with_data = [(pid, v) for pid, v in values.items() if v.value is not None]
    if not with_data:
        return []
    comparison = next(iter(values.values())).definition.comparison
    descending = comparison == "<="  # for "at most" KPIs the largest value is the worst
    with_data.sort(key=lambda item: (-(item[1].value or 0.0) if descending else (item[1].value or 0.0), item[0]))
    return with_data[:limit]
