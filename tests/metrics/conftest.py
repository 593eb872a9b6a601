"""Fixtures of the metrics tests: the metrics app on a real SQLite file, and an event feed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from events import catalog as ev
from events.envelope import RecordedEvent
from events.store import EventStore, NewEvent
from services.metrics.app import create_app
from services.metrics.logs import StoreLogs
from services.metrics.projections import PROJECTIONS, SOURCES
from services.metrics.writer import LiveApplier
from services.runtime.clock import ManualClock
from services.runtime.db import create_engine
from services.runtime.migrations import migrate
from services.runtime.settings import Settings
from tests.support.databases import fresh_database
from tests.support.tokens import TestIssuer

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


def days_ago(days: float, *, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


@dataclass
class Feed:
    """Appends events with explicit times to real source stores (SQLite, one per source) and
    applies each to the metrics read models the way the live handler does (the same
    `LiveApplier`, one transaction per event)."""

    engine: AsyncEngine
    stores: dict[str, EventStore]
    applier: LiveApplier = field(default_factory=LiveApplier)

    async def emit(self, event: ev.DomainEvent, at: datetime) -> RecordedEvent:
        stream = f"{event.type.split('.')[0]}-{event.partner_id}"
        (recorded,) = await self.stores[event.source].append(
            stream_id=stream, expected_version=None, events=[NewEvent(event, occurred_at=at)]
        )
        await self.apply(recorded)
        return recorded

    async def apply(self, recorded: RecordedEvent) -> None:
        async with self.engine.begin() as conn:
            for projection in PROJECTIONS.values():
                await self.applier.apply(conn, projection, recorded)

    def logs(self) -> StoreLogs:
        return StoreLogs(self.stores)


@asynccontextmanager
async def source_stores(var_dir: Path) -> AsyncIterator[dict[str, EventStore]]:
    """One real event store per source service, on SQLite files under `var_dir`."""
    settings = Settings(var_dir=var_dir / "sources", env="test")
    engines = {s: create_engine(settings.database_url_of(s)) for s in SOURCES}
    try:
        for source, engine in engines.items():
            await migrate(engine, source)
        clock = ManualClock(NOW)
        yield {s: EventStore(e, source=s, now=clock.now, group_commit=False) for s, e in engines.items()}
    finally:
        for engine in engines.values():
            await engine.dispose()


@dataclass
class MetricsApp:
    app: FastAPI
    http: httpx.AsyncClient
    issuer: TestIssuer
    clock: ManualClock
    feed: Feed
    settings: Settings

    def ops(self) -> dict[str, str]:
        return self.issuer.ops()

    def partner(self, partner_id: str) -> dict[str, str]:
        return self.issuer.partner(partner_id)


@pytest.fixture
async def metrics_app(tmp_path: Path) -> AsyncIterator[MetricsApp]:
    """The metrics app on SQLite."""
    async with _metrics_app(tmp_path) as m:
        yield m


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_db_app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetricsApp]:
    """The metrics app on SQLite, and on PostgreSQL when PARTNERHUB_TEST_POSTGRES_URL is set."""
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_url")
        async with fresh_database(server, prefix="mx") as url, _metrics_app(tmp_path, metrics_database_url=url) as m:
            yield m
        return
    async with _metrics_app(tmp_path) as m:
        yield m


@asynccontextmanager
async def _metrics_app(tmp_path: Path, **overrides: Any) -> AsyncIterator[MetricsApp]:
    settings = Settings(var_dir=tmp_path, env="test", **overrides)
    clock = ManualClock(NOW)
    app = create_app(settings, clock=clock)
    issuer = TestIssuer(settings.token_issuer)
    app.state.verifier.set_keys(issuer.keyset)
    transport = httpx.ASGITransport(app=app)
    async with (
        source_stores(tmp_path) as stores,
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        yield MetricsApp(app, http, issuer, clock, Feed(app.state.engine, stores), settings)


# --- event builders ------------------------------------------------------------------------


def applied(partner: str, name: str | None = None) -> ev.PartnerApplied:
    return ev.PartnerApplied(
        partner_id=partner,
        name=name or f"Partner {partner}",
        website=f"https://{partner}.example",
        category="ai",
        contact_email=f"alliances@{partner}.example",
    )


def signed(partner: str) -> ev.PartnerAgreementSigned:
    return ev.PartnerAgreementSigned(
        partner_id=partner,
        agreement_type="platform_integration",
        starts_on=date(2026, 1, 1),
        ends_on=date(2027, 1, 1),
        sla=ev.SlaTerms(),
    )


def activated(partner: str) -> ev.PartnerActivated:
    return ev.PartnerActivated(partner_id=partner, tier="innovation")


def registered(partner: str, integration: str, target: float = 99.9) -> ev.IntegrationRegistered:
    return ev.IntegrationRegistered(
        partner_id=partner, integration_id=integration, kind="rest_api", name=integration, sla_uptime_target_pct=target
    )


def went_live(partner: str, integration: str) -> ev.IntegrationWentLive:
    return ev.IntegrationWentLive(partner_id=partner, integration_id=integration)


def health(partner: str, integration: str, status: str) -> ev.IntegrationHealthChanged:
    return ev.IntegrationHealthChanged(partner_id=partner, integration_id=integration, status=status)  # type: ignore[arg-type]


def attempt(partner: str, integration: str, ok: bool) -> ev.IntegrationAttemptRecorded:
    return ev.IntegrationAttemptRecorded(
        partner_id=partner, integration_id=integration, outcome="succeeded" if ok else "failed"
    )


def traffic(partner: str | None, total: int, server_errors: int) -> ev.GatewayTrafficWindowClosed:
    return ev.GatewayTrafficWindowClosed(
        partner_id=partner,
        route_group="partners",
        window_start="2026-01-01T00:00:00Z",
        window_end="2026-01-01T00:01:00Z",
        total=total,
        server_errors=server_errors,
        client_errors=0,
        p50_ms=5.0,
        p99_ms=20.0,
    )


def rated(partner: str, score: float) -> ev.PartnerSatisfactionRated:
    return ev.PartnerSatisfactionRated(partner_id=partner, score=score)


def renewed(partner: str) -> ev.AllianceRenewed:
    return ev.AllianceRenewed(partner_id=partner, ends_on=date(2028, 1, 1))


def terminated(partner: str) -> ev.AllianceTerminated:
    return ev.AllianceTerminated(partner_id=partner, reason="strategy changed")


def delivered(partner: str, latency_ms: float) -> ev.WebhookMessageDelivered:
    return ev.WebhookMessageDelivered(
        partner_id=partner,
        endpoint_id="ep_1",
        message_id=f"msg_{uuid.uuid4().hex[:8]}",
        event_type="partner.activated",
        attempts=1,
        latency_ms=latency_ms,
    )


def failed(partner: str) -> ev.WebhookMessageFailed:
    return ev.WebhookMessageFailed(
        partner_id=partner,
        endpoint_id="ep_1",
        message_id=f"msg_{uuid.uuid4().hex[:8]}",
        event_type="partner.activated",
        attempts=8,
        last_error="HTTP 500",
    )
