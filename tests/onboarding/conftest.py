"""The onboarding service in process: real SQLite (or PostgreSQL) store, test-issued tokens."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.onboarding.app import create_app
from services.runtime.clock import ManualClock
from services.runtime.settings import Settings
from tests.support.databases import fresh_database
from tests.support.tokens import TestIssuer

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

INNOVATION_SCORES = {
    "technology_leadership": 7,
    "market_position": 7,
    "financial_stability": 7,
    "strategic_fit": 7,
    "integration_capability": 7,
    "cultural_compatibility": 7,
}
STRATEGIC_SCORES = dict.fromkeys(INNOVATION_SCORES, 9)
NOT_RECOMMENDED_SCORES = dict.fromkeys(INNOVATION_SCORES, 3)
PHASES = ("initial_screening", "detailed_evaluation", "final_assessment")


def application(name: str = "Acme Robotics") -> dict[str, Any]:
    return {
        "name": name,
        "website": "https://acme-robotics.example.com",
        "category": "ai_ml",
        "contact_email": "alliances@acme-robotics.example.com",
    }


AGREEMENT = {"agreement_type": "platform_integration", "starts_on": "2026-04-01", "ends_on": "2028-03-31"}


@dataclass
class Onboarding:
    """A running onboarding app and ways to call it."""

    app: FastAPI
    http: httpx.AsyncClient
    issuer: TestIssuer
    clock: ManualClock

    def ops(self, client_id: str = "ops-alice") -> dict[str, str]:
        return self.issuer.ops(client_id)

    def partner(self, partner_id: str) -> dict[str, str]:
        return self.issuer.partner(partner_id)

    async def event_count(self) -> int:
        return int(await self.app.state.store.head_position())

    async def create(self, scores: dict[str, int] | None = None, *, name: str = "Acme Robotics") -> str:
        response = await self.http.post("/v1/partners", json=application(name), headers=self.ops())
        assert response.status_code == 201, response.text
        partner_id = str(response.json()["id"])
        if scores is not None:
            await self.ok(f"/v1/partners/{partner_id}/assessment", {"scores": scores})
        return partner_id

    async def ok(self, path: str, body: dict[str, Any] | None = None, *, client_id: str = "ops-alice") -> dict[str, Any]:
        response = await self.http.post(path, json=body, headers=self.ops(client_id))
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        return doc

    async def awaiting_approval(self, scores: dict[str, int] = INNOVATION_SCORES) -> str:
        partner_id = await self.create(scores)
        for phase in PHASES:
            await self.ok(f"/v1/partners/{partner_id}/due-diligence", {"phase": phase, "passed": True})
        return partner_id


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def onboarding(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Onboarding]:
    """The service on SQLite, and again on PostgreSQL when PARTNERHUB_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        async with running(Settings(var_dir=tmp_path, kafka_bootstrap=None)) as service:
            yield service
        return
    async with (
        fresh_database(request.getfixturevalue("postgres_url"), "onboarding") as url,
        running(Settings(var_dir=tmp_path, kafka_bootstrap=None, onboarding_database_url=url)) as service,
    ):
        yield service


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Onboarding]:
    """An onboarding app inside its lifespan, trusting a test issuer, on a manual clock."""
    clock = ManualClock(START)
    app = create_app(settings, clock=clock)
    issuer = TestIssuer(settings.token_issuer)
    app.state.verifier.set_keys(issuer.keyset)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield Onboarding(app, http, issuer, clock)
