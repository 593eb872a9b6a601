"""Fixtures of the metrics tests: the metrics app on a real SQLite file, and an event feed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from events import catalog as ev
from events.envelope import RecordedEvent
from services.metrics.app import create_app
from services.metrics.projections import PROJECTIONS
from services.metrics.writer import LiveApplier
from services.runtime.clock import ManualClock
from services.runtime.settings import Settings
from tests.support.tokens import TestIssuer

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


def days_ago(days: float, *, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


@dataclass
class Feed:
    """Records events of each source with explicit times and applies them as the live
    handlers do (same `LiveApplier`, one transaction per event)."""

    engine: AsyncEngine
    applier: LiveApplier = field(default_factory=LiveApplier)
    positions: dict[str, int] = field(default_factory=dict)

    async def emit(self, event: ev.DomainEvent, at: datetime) -> RecordedEvent:
        position = self.positions.get(event.source, 0) + 1
        self.positions[event.source] = position
        recorded = RecordedEvent(
            position=position,
            event_id=str(uuid.uuid4()),
            source=event.source,
            stream_id=f"{event.source}-{event.partner_id}",
            stream_version=position,
            type=event.type,
            schema_version=event.schema_version,
            data=event.payload(),
            partition_key=event.partner_id or "",
            occurred_at=at,
            recorded_at=at,
        )
        await self.apply(recorded)
        return recorded

    async def apply(self, recorded: RecordedEvent) -> None:
        for projection in PROJECTIONS.values():
            async with self.engine.begin() as conn:
                await self.applier.apply(conn, projection, recorded)


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
    settings = Settings(var_dir=tmp_path, env="test")
    clock = ManualClock(NOW)
    app = create_app(settings, clock=clock)
    issuer = TestIssuer(settings.token_issuer)
    app.state.verifier.set_keys(issuer.keyset)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield MetricsApp(app, http, issuer, clock, Feed(app.state.engine), settings)


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
