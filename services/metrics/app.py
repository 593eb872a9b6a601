"""The metrics service: `uvicorn services.metrics.app:create_app --factory`."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.metrics.api import router as kpi_router
from services.metrics.consumers import ProjectionSetup, projection_subscriptions
from services.metrics.logs import HttpLogReader, SourceHeads, SourceLogs, TokenSource
from services.metrics.ops import STATIC_DIR
from services.metrics.ops import router as ops_router
from services.metrics.readmodel import ReadModels
from services.runtime.app import build_runtime, create_service_app
from services.runtime.clock import Clock
from services.runtime.settings import Settings
from services.runtime.tokens import TokenProvider

DESCRIPTION = """KPI read models built by projections over every service's events.

`GET /v1/kpis?window=7d|30d|90d|all` answers each KPI of DESIGN §3 with value, target,
status (`met` | `breached` | `no_data`), sample size and `as_of` (per source, the newest
event position reflected). `GET /v1/kpis/partners/{id}` is the same for one partner (a
partner client reads only its own). `GET /v1/kpis/series` gives daily values for trend
charts, `GET /v1/kpis/worst` the worst partners per KPI, `GET /v1/kpis/funnel` the partner
funnel. Operations: `GET /admin/consumers`, `GET /metrics` (Prometheus), `GET /dashboard`.
"""


def internal_token(settings: Settings) -> TokenSource | None:
    """The service-to-service token for the sources' log APIs, when an internal client is configured."""
    if not settings.internal_client_id or not settings.internal_client_secret:
        return None
    return TokenProvider(settings)


def create_app(
    settings: Settings | None = None, *, clock: Clock | None = None, logs: SourceLogs | None = None
) -> FastAPI:
    """The metrics service app.

    `logs` replaces the sources' HTTP log APIs (read with the internal client's token)
    by direct access to their stores, for a process that has them at hand (tests).
    """
    settings = settings or Settings()
    runtime = build_runtime("metrics", settings, clock)
    token = internal_token(settings)
    source_logs = logs or HttpLogReader(settings, token)
    runtime.components.append(ProjectionSetup(runtime.engine, source_logs))
    runtime.components.extend(projection_subscriptions(runtime, source_logs))
    app = create_service_app(
        runtime,
        title="partnerhub metrics",
        description=DESCRIPTION,
        routers=[kpi_router, ops_router],
        consumer_status=False,  # its own: per projection, with rebuild floors
    )
    app.state.read_models = ReadModels(runtime.engine, partitions=settings.kafka_partitions)
    # Without an internal client the log APIs refuse us: heads (and so lag) are unknown.
    app.state.source_heads = SourceHeads(source_logs if (token is not None or logs is not None) else None)
    # Under /dashboard/ so that the gateway, which routes /dashboard/** here, serves them too.
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    return app
