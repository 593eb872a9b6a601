"""Tier 2½: the dispatcher on real events through a real broker (Tansu), relays and the subscription."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from events.broker import EmbeddedBroker
from events.catalog import (
    AllianceStarted,
    IntegrationRegistered,
    PartnerActivated,
    PartnerApplied,
    WebhookMessageFailed,
)
from events.envelope import RecordedEvent
from events.relay import Relay
from events.schema import store_metadata
from events.store import EventStore
from services.runtime.clock import SystemClock
from services.runtime.db import create_engine
from tests.webhooks.conftest import HarnessFactory, eventually
from tests.webhooks.receiver import Receiver


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(log_dir=tmp_path_factory.mktemp("webhook-broker"))
    await embedded.start()
    try:
        yield embedded
    finally:
        await embedded.stop()


@pytest.fixture
async def onboarding_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'onboarding.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(store_metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


def applied(partner_id: str) -> PartnerApplied:
    return PartnerApplied(
        partner_id=partner_id,
        name=f"Partner {partner_id}",
        website="https://partner.example",
        category="ai_ml",
        contact_email="alliances@partner.example",
    )


async def test_events_from_every_topic_reach_only_their_partners_endpoints(
    harness_factory: HarnessFactory, broker: EmbeddedBroker, onboarding_engine: AsyncEngine, receiver: Receiver
) -> None:
    prefix = f"wh{uuid.uuid4().hex[:8]}"
    onboarding = EventStore(onboarding_engine, source="onboarding", now=SystemClock().now)
    stores: dict[str, EventStore] = {"onboarding": onboarding}

    async def read_log(source: str, after: int, limit: int) -> list[RecordedEvent]:
        store = stores.get(source)
        return await store.read_all(after=after, limit=limit) if store else []

    harness = await harness_factory(
        clock=SystemClock(),
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=prefix,
        subscription_options={"manual_assignment": True, "log_reader": read_log, "idle_catchup_interval": 1.0},
    )
    stores["lifecycle"] = harness.runtime.store
    settings = harness.runtime.settings
    relay = Relay(
        onboarding,
        bootstrap=broker.bootstrap,
        topic=settings.topic_of("onboarding"),
        partitions=settings.kafka_partitions,
        engine=onboarding_engine,
    )
    await relay.start()
    try:
        everything = await harness.create_endpoint("p-a", receiver.url("/a"), ["*"])
        onboarding_only = await harness.create_endpoint("p-b", receiver.url("/b"), ["partner.*"])
        receiver.expect("/a", [everything["secret"]])
        receiver.expect("/b", [onboarding_only["secret"]])

        sent: list[RecordedEvent] = []
        sent += await onboarding.append(stream_id="partner-p-a", expected_version=0, events=[applied("p-a")])
        sent += await onboarding.append(stream_id="partner-p-b", expected_version=0, events=[applied("p-b")])
        sent += await harness.runtime.store.append(
            stream_id="integration-1",
            expected_version=0,
            events=[IntegrationRegistered(partner_id="p-a", integration_id="1", kind="rest_api", name="CRM")],
        )
        sent += await harness.runtime.store.append(
            stream_id="alliance-p-b", expected_version=0, events=[AllianceStarted(partner_id="p-b")]
        )
        sent += await onboarding.append(
            stream_id="partner-p-a", expected_version=1, events=[PartnerActivated(partner_id="p-a", tier="strategic")]
        )
        # An outcome event is relayed like any other and must never turn into a delivery.
        await harness.runtime.store.append(
            stream_id="webhook-x",
            expected_version=None,
            events=[WebhookMessageFailed(partner_id="p-a", endpoint_id="ep_x", message_id="m", event_type="x", attempts=8)],
        )

        await eventually(lambda: len(receiver.at("/a")) == 3 and len(receiver.at("/b")) == 1, timeout=30)
        ids = {e.event_id: e for e in sent}
        got_a = {d.webhook_id: d for d in receiver.at("/a")}
        assert {ids[i].type for i in got_a} == {"partner.applied", "partner.activated", "integration.registered"}
        assert {ids[i].partner_id for i in got_a} == {"p-a"}
        [to_b] = receiver.at("/b")
        assert ids[to_b.webhook_id].type == "partner.applied" and ids[to_b.webhook_id].partner_id == "p-b"
        assert to_b.payload["data"]["partner_id"] == "p-b"
        assert all(d.verified_with == [0] for d in receiver.deliveries)

        # The delivery outcomes went through the broker too; once the dispatcher is past
        # them, nothing more was sent.
        await eventually(lambda: _outcomes_dispatched(harness), timeout=30)
        assert len(receiver.deliveries) == 4
    finally:
        await relay.stop()


async def _outcomes_dispatched(harness) -> bool:  # type: ignore[no-untyped-def]
    from events.subscription import Subscription

    [subscription] = [c for c in harness.runtime.components if isinstance(c, Subscription)]
    delivered = await harness.stored_events("webhook.message_delivered")
    head = await harness.runtime.store.head_position()
    lag = await subscription.lag({"lifecycle": head})
    return len(delivered) == 4 and lag["lifecycle"] == 0


async def test_the_dispatcher_follows_the_topics_of_deliverable_events_and_no_other(
    harness_factory: HarnessFactory, broker: EmbeddedBroker
) -> None:
    from events.catalog import EVENT_TYPES, is_webhook_deliverable
    from events.subscription import Subscription

    harness = await harness_factory(clock=SystemClock(), kafka_bootstrap=broker.bootstrap, topic_prefix="whsrc")
    [subscription] = [c for c in harness.runtime.components if isinstance(c, Subscription)]
    deliverable = {e.source for e in EVENT_TYPES.values() if is_webhook_deliverable(e.type)}
    assert set(subscription.sources) == deliverable == {"onboarding", "lifecycle"}
    # The gateway's topic (client.*, token.*, gateway.*) holds nothing a partner may receive.
    assert not any(is_webhook_deliverable(e.type) for e in EVENT_TYPES.values() if e.source == "gateway")
