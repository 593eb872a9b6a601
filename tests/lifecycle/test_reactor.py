"""The alliance reactor: a real `partner.activated` travels from onboarding through the real broker.

Onboarding runs in process with its relay publishing to an embedded Tansu broker; the
reactor's subscription follows the topic and starts the alliance. Redelivery (the same
record again on Kafka) and a lost checkpoint (everything read again from the log) both
start nothing twice.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition
from fastapi import FastAPI
from sqlalchemy import delete, select

from events.broker import EmbeddedBroker
from events.envelope import RecordedEvent
from events.kafka import partition_for
from events.schema import checkpoints
from events.store import EventStore
from services.lifecycle.alliances.reactor import (
    NAME,
    AllianceReactor,
    started_event_id,
    subscription_for,
)
from services.lifecycle.tables import partner_agreements
from services.onboarding.app import create_app as create_onboarding
from services.runtime.settings import Settings
from tests.lifecycle.conftest import Components
from tests.support.platform import eventually
from tests.support.tokens import TestIssuer

SCORES = dict.fromkeys(
    (
        "technology_leadership",
        "market_position",
        "financial_stability",
        "strategic_fit",
        "integration_capability",
        "cultural_compatibility",
    ),
    7,
)
AGREEMENT = {
    "agreement_type": "platform_integration",
    "starts_on": "2026-04-01",
    "ends_on": "2028-03-31",
    "sla": {"uptime_target_pct": 99.5, "integration_success_target_pct": 95.0, "time_to_integration_target_days": 45},
}


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(log_dir=tmp_path_factory.mktemp("broker"))
    await embedded.start()
    try:
        yield embedded
    finally:
        await embedded.stop()


@dataclass
class OnboardingService:
    app: FastAPI
    http: httpx.AsyncClient
    ops: dict[str, str]
    settings: Settings

    @property
    def store(self) -> EventStore:
        return self.app.state.store  # type: ignore[no-any-return]

    async def post(self, path: str, body: dict[str, Any] | None = None, status: int = 200) -> dict[str, Any]:
        response = await self.http.post(path, json=body, headers=self.ops)
        assert response.status_code == status, response.text
        doc: dict[str, Any] = response.json()
        return doc

    async def activate_partner(self) -> str:
        partner = await self.post(
            "/v1/partners",
            {"name": "Acme", "website": "https://acme.example.com", "category": "ai_ml", "contact_email": "a@acme.example.com"},
            status=201,
        )
        pid = str(partner["id"])
        await self.post(f"/v1/partners/{pid}/assessment", {"scores": SCORES})
        for phase in ("initial_screening", "detailed_evaluation", "final_assessment"):
            await self.post(f"/v1/partners/{pid}/due-diligence", {"phase": phase, "passed": True})
        await self.post(f"/v1/partners/{pid}/approvals", {"decision": "approve", "comment": "ok"})
        await self.post(f"/v1/partners/{pid}/agreement", AGREEMENT)
        await self.post(f"/v1/partners/{pid}/activate")
        return pid


@pytest.fixture
async def onboarding(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[OnboardingService]:
    """The onboarding app with its relay publishing to the broker."""
    # A topic prefix of its own: each test's onboarding store starts again at position 1.
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings(var_dir=tmp_path / "onboarding", kafka_bootstrap=broker.bootstrap, kafka_topic_prefix=prefix)
    app = create_onboarding(settings)
    issuer = TestIssuer(settings.token_issuer)
    app.state.verifier.set_keys(issuer.keyset)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield OnboardingService(app, http, issuer.ops("ops-onboarding"), settings)


@contextlib.asynccontextmanager
async def reactor_running(components: Components, onboarding: OnboardingService, broker: EmbeddedBroker) -> AsyncIterator[tuple[Any, AllianceReactor]]:
    """The lifecycle reactor's subscription (catch-up reads the onboarding store directly)."""
    runtime = components.runtime
    runtime.settings = runtime.settings.model_copy(
        update={"kafka_bootstrap": broker.bootstrap, "kafka_topic_prefix": onboarding.settings.kafka_topic_prefix}
    )
    reactor = AllianceReactor(components.store, components.engine)

    async def read_log(source: str, after: int, limit: int) -> list[RecordedEvent]:
        assert source == "onboarding"
        return await onboarding.store.read_all(after=after, limit=limit)

    subscription = subscription_for(
        runtime, reactor, log_reader=read_log, manual_assignment=True, idle_catchup_interval=600.0
    )
    await subscription.start()
    try:
        yield subscription, reactor
    finally:
        await subscription.stop()


async def started_events(components: Components, partner_id: str) -> list[RecordedEvent]:
    return [e for e in await components.store.read_stream(f"alliance-{partner_id}") if e.type == "alliance.started"]


async def test_activation_travels_through_the_broker_and_starts_the_alliance_once(
    components: Components, onboarding: OnboardingService, broker: EmbeddedBroker
) -> None:
    async with reactor_running(components, onboarding, broker) as (subscription, reactor):
        await subscription.wait_caught_up(15)
        pid = await onboarding.activate_partner()

        async def started() -> bool:
            return len(await started_events(components, pid)) == 1

        await eventually(started, timeout=30)
        # It came over Kafka: the only catch-up was the (empty) one at start.
        assert subscription.catchups == 1
        (event,) = await started_events(components, pid)
        activated = next(e for e in await onboarding.store.read_stream(f"partner-{pid}") if e.type == "partner.activated")
        assert event.data == {"partner_id": pid, "phase": "initiation", "tier": "innovation", "ends_on": "2028-03-31"}
        assert event.event_id == started_event_id(activated.event_id)
        assert (event.causation_id, event.actor) == (activated.event_id, NAME)
        async with components.engine.connect() as conn:
            target = (
                await conn.execute(select(partner_agreements.c.uptime_target_pct).where(partner_agreements.c.partner_id == pid))
            ).scalar_one()
        assert target == 99.5

        # The same record delivered again by Kafka: skipped at the checkpoint.
        settings = onboarding.settings
        key, value, headers = activated.to_kafka()
        partition = partition_for(key, settings.kafka_partitions)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            sent = await producer.send_and_wait(settings.topic_of("onboarding"), value, key=key, headers=headers, partition=partition)
        finally:
            await producer.stop()
        tp = TopicPartition(settings.topic_of("onboarding"), partition)

        async def consumed() -> bool:
            return subscription._offsets.get(tp, 0) > sent.offset

        await eventually(consumed, timeout=30)
        assert len(await started_events(components, pid)) == 1
        assert (reactor.started, reactor.duplicates) == (1, 0)

    # The checkpoint is lost: everything is read again from the log, and still one start.
    async with components.engine.begin() as conn:
        await conn.execute(delete(checkpoints).where(checkpoints.c.subscription == NAME))
    async with reactor_running(components, onboarding, broker) as (subscription, reactor):
        await subscription.wait_caught_up(15)
        assert reactor.duplicates == 1 and reactor.started == 0
    assert len(await started_events(components, pid)) == 1
    assert await components.store.stream_version(f"alliance-{pid}") == 1
