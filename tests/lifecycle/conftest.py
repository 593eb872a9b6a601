"""The lifecycle service in process: real SQLite (or PostgreSQL) store, test-issued tokens."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from events.catalog import (
    PartnerActivated,
    PartnerAgreementSigned,
    PartnerApproved,
    PartnerRejected,
    SlaTerms,
)
from events.envelope import EventMetadata, RecordedEvent
from events.schema import events_table
from events.store import EventStore
from services.lifecycle.alliances.reactor import AllianceReactor
from services.lifecycle.app import create_app
from services.lifecycle.integrations import handlers as integration_handlers
from services.lifecycle.integrations.domain import (
    GoLive,
    RecordAttempt,
    Register,
    new_integration_id,
)
from services.runtime.app import Runtime, build_runtime
from services.runtime.clock import ManualClock
from services.runtime.migrations import migrate
from services.runtime.settings import Settings
from tests.support.databases import fresh_database
from tests.support.tokens import TestIssuer

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LOOPBACK = ["127.0.0.0/8", "::1/128"]
JSON_PROBLEM = "application/problem+json"


OnboardingEvent = PartnerActivated | PartnerAgreementSigned | PartnerApproved | PartnerRejected


def onboarding_event(event: OnboardingEvent, *, position: int, at: datetime = START) -> RecordedEvent:
    """An onboarding event as its consumers receive it (the envelope the relay publishes)."""
    return RecordedEvent(
        position=position,
        event_id=str(uuid.uuid4()),
        source="onboarding",
        stream_id=f"partner-{event.partner_id}",
        stream_version=position,
        type=event.type,
        schema_version=event.schema_version,
        data=event.payload(),
        partition_key=event.partner_id,
        occurred_at=at,
        recorded_at=at,
        actor="ops-onboarding",
    )


async def start_alliance(
    engine: AsyncEngine, store: EventStore, partner_id: str, *, uptime_target_pct: float | None = None
) -> None:
    """Run the real alliance reactor on a partner's agreement (optional) and activation."""
    reactor = AllianceReactor(store, engine)
    events: list[RecordedEvent] = []
    if uptime_target_pct is not None:
        signed = PartnerAgreementSigned(
            partner_id=partner_id,
            agreement_type="platform_integration",
            starts_on=date(2026, 3, 1),
            ends_on=date(2028, 2, 29),
            sla=SlaTerms(uptime_target_pct=uptime_target_pct),
        )
        events.append(onboarding_event(signed, position=1))
    events.append(onboarding_event(PartnerActivated(partner_id=partner_id, tier="innovation", ends_on=date(2028, 2, 29)), position=2))
    for recorded in events:
        async with engine.begin() as conn:
            await reactor(conn, recorded)


@dataclass
class Lifecycle:
    """A running lifecycle app and ways to call it."""

    app: FastAPI
    http: httpx.AsyncClient
    issuer: TestIssuer
    clock: ManualClock

    @property
    def store(self) -> EventStore:
        return self.app.state.store  # type: ignore[no-any-return]

    @property
    def engine(self) -> AsyncEngine:
        return self.app.state.engine  # type: ignore[no-any-return]

    def ops(self, client_id: str = "ops-alice") -> dict[str, str]:
        return self.issuer.ops(client_id)

    def partner(self, partner_id: str, scopes: str | None = None) -> dict[str, str]:
        if scopes is None:
            return self.issuer.partner(partner_id)
        return self.issuer.partner(partner_id, scopes=scopes)

    async def head(self) -> int:
        return int(await self.store.head_position())

    async def count(self, event_type: str, stream_id: str | None = None) -> int:
        query = select(func.count()).select_from(events_table).where(events_table.c.type == event_type)
        if stream_id is not None:
            query = query.where(events_table.c.stream_id == stream_id)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def start_alliance(self, partner_id: str, *, uptime_target_pct: float | None = None) -> None:
        await start_alliance(self.engine, self.store, partner_id, uptime_target_pct=uptime_target_pct)

    async def post(self, path: str, body: dict[str, Any] | None = None, *, headers: dict[str, str] | None = None, status: int = 200) -> dict[str, Any]:
        response = await self.http.post(path, json=body, headers=headers or self.ops())
        assert response.status_code == status, response.text
        doc: dict[str, Any] = response.json()
        return doc

    async def integration(self, partner_id: str, *, live: bool = False, health_url: str | None = None, **extra: Any) -> dict[str, Any]:
        body = {"kind": "rest_api", "name": "Orders API", **extra}
        if health_url is not None:
            body["health_url"] = health_url
        doc = await self.post("/v1/integrations", body, headers=self.partner(partner_id), status=201)
        if live:
            await self.post(f"/v1/integrations/{doc['id']}/attempts", {"outcome": "succeeded"}, headers=self.partner(partner_id))
            doc = await self.post(f"/v1/integrations/{doc['id']}/go-live", headers=self.partner(partner_id))
        return doc


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def lifecycle(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Lifecycle]:
    """The service on SQLite, and again on PostgreSQL when PARTNERHUB_TEST_POSTGRES_URL is set."""
    settings: dict[str, Any] = {"var_dir": tmp_path, "kafka_bootstrap": None, "webhook_allow_nets": LOOPBACK}
    if request.param == "sqlite":
        async with running(Settings(**settings)) as service:
            yield service
        return
    async with (
        fresh_database(request.getfixturevalue("postgres_url"), "lifecycle") as url,
        running(Settings(**settings, lifecycle_database_url=url)) as service,
    ):
        yield service


class running:
    """`async with running(settings) as service:` a lifecycle app with its lifespan."""

    def __init__(self, settings: Settings, clock: ManualClock | None = None) -> None:
        self.settings = settings
        self.clock = clock or ManualClock(START)
        self.app = create_app(settings, clock=self.clock)
        self.issuer = TestIssuer(settings.token_issuer)
        self.app.state.verifier.set_keys(self.issuer.keyset)
        self._lifespan = self.app.router.lifespan_context(self.app)
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Lifecycle:
        await self._lifespan.__aenter__()
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self._http = httpx.AsyncClient(transport=transport, base_url="http://test")
        return Lifecycle(self.app, self._http, self.issuer, self.clock)

    async def __aexit__(self, *exc: object) -> None:
        assert self._http is not None
        await self._http.aclose()
        await self._lifespan.__aexit__(None, None, None)


@dataclass
class Components:
    """The lifecycle store and database without the app, for driving components directly."""

    runtime: Runtime
    clock: ManualClock

    @property
    def store(self) -> EventStore:
        return self.runtime.store

    @property
    def engine(self) -> AsyncEngine:
        return self.runtime.engine

    async def live_integration(self, partner_id: str, health_url: str, *, target: float = 99.9) -> str:
        """Register an integration, record a succeeded attempt and put it live (real handlers)."""
        if await integration_handlers.alliance_status(self.engine, partner_id) is None:
            await start_alliance(self.engine, self.store, partner_id)
        register = Register(new_integration_id(), partner_id, "rest_api", "Orders API", health_url, target)
        state = await integration_handlers.register(self.store, register, occurred_at=None, metadata=EventMetadata())
        state, _ = await integration_handlers.execute(self.store, state, RecordAttempt("succeeded"))
        state, _ = await integration_handlers.execute(self.store, state, GoLive())
        return state.id

    async def events_of(self, integration_id: str, *types: str) -> list[RecordedEvent]:
        recorded = await self.store.read_stream(f"integration-{integration_id}")
        return [r for r in recorded if r.type in types]

    async def health_of(self, integration_id: str) -> list[str]:
        return [r.data["status"] for r in await self.events_of(integration_id, "integration.health_changed")]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def components(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Components]:
    """A migrated lifecycle database and store on a manual clock (SQLite; PostgreSQL when configured)."""
    async with contextlib.AsyncExitStack() as stack:
        url = None
        if request.param == "postgres":
            url = await stack.enter_async_context(fresh_database(request.getfixturevalue("postgres_url"), "lifecycle"))
        clock = ManualClock(START)
        settings = Settings(var_dir=tmp_path, kafka_bootstrap=None, lifecycle_database_url=url)
        runtime = build_runtime("lifecycle", settings, clock)
        await migrate(runtime.engine, "lifecycle")
        try:
            yield Components(runtime, clock)
        finally:
            await runtime.store.close()
            await runtime.engine.dispose()
