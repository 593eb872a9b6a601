"""The KPI API (DESIGN.md §3, §4a): KPIs, per-partner KPIs, daily series, worst partners, funnel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from services.metrics import kpis as k
from services.metrics.readmodel import ReadModels, Window, day_spans
from services.runtime.auth import Identity, Ops, require_scopes, visible_partner
from services.runtime.clock import Clock
from services.runtime.problems import not_found

KpiReader = Annotated[Identity, Depends(require_scopes("kpis:read"))]
WindowName = Literal["7d", "30d", "90d", "all"]
KpiName = Literal[
    "api_availability",
    "integration_uptime",
    "integration_success_rate",
    "time_to_integration_days",
    "time_to_partnership_days",
    "partner_satisfaction",
    "partner_retention",
    "webhook_delivery_success",
]
WindowQuery = Annotated[WindowName, Query(description="7d | 30d | 90d | all (by the time of each KPI's closing event)")]
MAX_SERIES_DAYS = 90


class KpiOut(BaseModel):
    """One KPI against its target; extra statistics (mean, median, p90, error budget, …) ride along."""

    model_config = ConfigDict(extra="allow")

    value: float | None
    target: float
    status: Literal["met", "breached", "no_data"]
    sample_size: int
    unit: str
    comparison: str


class KpisOut(BaseModel):
    window: str
    kpis: dict[str, KpiOut]
    as_of: dict[str, int] = Field(description="per source service: the newest event position reflected")
    computed_at: str


class PartnerKpisOut(KpisOut):
    partner_id: str


class SeriesPoint(BaseModel):
    day: str
    value: float | None
    status: str
    sample_size: int


class SeriesOut(BaseModel):
    kpi: str
    target: float
    unit: str
    comparison: str
    points: list[SeriesPoint]


class SeriesSetOut(BaseModel):
    days: int
    series: dict[str, SeriesOut]
    as_of: dict[str, int]


class WorstEntry(BaseModel):
    partner_id: str
    name: str | None
    value: float | None
    status: str
    sample_size: int


class WorstOut(BaseModel):
    window: str
    limit: int
    kpis: dict[str, list[WorstEntry]]
    as_of: dict[str, int]


class FunnelOut(BaseModel):
    counts: dict[str, int]
    total: int
    as_of: dict[str, int]


def _read_models(request: Request) -> ReadModels:
    return request.app.state.read_models  # type: ignore[no-any-return]


def _clock(request: Request) -> Clock:
    return request.app.state.clock  # type: ignore[no-any-return]


ALL_KPIS = list(k.KPIS)

router = APIRouter(prefix="/v1/kpis", tags=["kpis"])


@router.get("", response_model=KpisOut, summary="Platform KPIs")
async def platform_kpis(request: Request, caller: KpiReader, window: WindowQuery = "30d") -> dict[str, Any]:
    """Every KPI over the window, platform-wide, with target, status and `as_of` positions."""
    win = Window.of(window, _clock(request).now())
    async with _read_models(request).snapshot() as snap:
        as_of = await snap.as_of(ALL_KPIS)
        values = await snap.kpis(win)
    return {
        "window": window,
        "kpis": {name: v.to_json() for name, v in values.items()},
        "as_of": as_of,
        "computed_at": win.now.isoformat(),
    }


@router.get(
    "/partners/{partner_id}",
    response_model=PartnerKpisOut,
    summary="One partner's KPIs",
    responses={404: {"description": "Unknown partner, or another partner's"}},
)
async def partner_kpis(
    request: Request,
    caller: KpiReader,
    partner_id: Annotated[str, Path(max_length=200)],
    window: WindowQuery = "30d",
) -> dict[str, Any]:
    """The KPIs of one partner (a partner client may read only its own; ops read any)."""
    visible_partner(caller, partner_id, "partner", partner_id)
    win = Window.of(window, _clock(request).now())
    async with _read_models(request).snapshot() as snap:
        if caller.is_ops and not await snap.partner_known(partner_id):
            raise not_found("partner", partner_id)
        as_of = await snap.as_of(ALL_KPIS)
        values = await snap.kpis(win, partner_id=partner_id)
    return {
        "window": window,
        "partner_id": partner_id,
        "kpis": {name: v.to_json() for name, v in values.items()},
        "as_of": as_of,
        "computed_at": win.now.isoformat(),
    }


@router.get("/series", response_model=SeriesSetOut, summary="Daily KPI series")
async def kpi_series(
    request: Request,
    caller: KpiReader,
    kpi: Annotated[list[KpiName] | None, Query(description="KPIs to include (repeatable); all when absent")] = None,
    days: Annotated[int, Query(ge=1, le=MAX_SERIES_DAYS, description="how many UTC days, ending today")] = 30,
) -> dict[str, Any]:
    """Each KPI per UTC day for the last `days` days (today so far included), for trend charts."""
    spans = day_spans(_clock(request).now(), days)
    names = list(dict.fromkeys(kpi)) if kpi else ALL_KPIS
    out: dict[str, Any] = {}
    async with _read_models(request).snapshot() as snap:
        as_of = await snap.as_of(names)
        for name in names:
            definition = k.KPIS[name]
            points = await snap.series(name, spans)
            out[name] = {
                "kpi": name,
                "target": definition.target,
                "unit": definition.unit,
                "comparison": definition.comparison,
                "points": [
                    {
                        "day": span.day.isoformat(),
                        "value": v.to_json()["value"],
                        "status": v.status,
                        "sample_size": v.sample_size,
                    }
                    for span, v in points
                ],
            }
    return {"days": days, "series": out, "as_of": as_of}


@router.get("/worst", response_model=WorstOut, summary="Worst partners per KPI (ops)")
async def worst_partners(
    request: Request,
    caller: Ops,
    window: WindowQuery = "30d",
    limit: Annotated[int, Query(ge=1, le=50)] = 5,
) -> dict[str, Any]:
    """Per KPI, the partners farthest on the wrong side of the target (partners with data only)."""
    win = Window.of(window, _clock(request).now())
    out: dict[str, list[dict[str, Any]]] = {}
    async with _read_models(request).snapshot() as snap:
        as_of = await snap.as_of(ALL_KPIS)
        names = {r["partner_id"]: r["name"] for r in await snap.funnel_rows()}
        for name in ALL_KPIS:
            ranked = k.worst(await snap.per_partner(name, win), limit)
            out[name] = [
                {
                    "partner_id": pid,
                    "name": names.get(pid),
                    "value": v.to_json()["value"],
                    "status": v.status,
                    "sample_size": v.sample_size,
                }
                for pid, v in ranked
            ]
    return {"window": window, "limit": limit, "kpis": out, "as_of": as_of}


@router.get("/funnel", response_model=FunnelOut, summary="Partner funnel (ops)")
async def partner_funnel(request: Request, caller: Ops) -> dict[str, Any]:
    """How many partners are at each stage: applied → … → active, rejected, terminated."""
    async with _read_models(request).snapshot() as snap:
        as_of = await snap.as_of(["partner_funnel"])
        rows = await snap.funnel_rows()
    counts = k.funnel_counts(k.funnel_status(r["status"], r["terminated_at"] is not None) for r in rows)
    return {"counts": counts, "total": sum(counts.values()), "as_of": as_of}


