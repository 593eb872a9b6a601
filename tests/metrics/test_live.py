"""Live path: events appended to real source stores travel relay → Kafka (embedded Tansu) →
the metrics subscriptions → read models → KPI API. Numbers are worked out by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from events.broker import EmbeddedBroker
from services.runtime.clock import ManualClock
from tests.metrics.conftest import (
    NOW,
    activated,
    applied,
    attempt,
    days_ago,
    health,
    registered,
    signed,
    traffic,
    went_live,
)
from tests.metrics.live import LivePlatform, live_platform, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture
async def live(tmp_path: Path, broker: EmbeddedBroker) -> AsyncIterator[LivePlatform]:
    async with live_platform(tmp_path, broker, clock=ManualClock(NOW)) as platform:
        yield platform


async def test_kpis_follow_events_and_as_of_reaches_the_heads(live: LivePlatform) -> None:
    await live.append(applied("p1"), days_ago(120))
    await live.append(signed("p1"), days_ago(100))
    await live.append(activated("p1"), days_ago(30, hours=-1))
    await live.append(registered("p1", "i1"), days_ago(60))
    await live.append(went_live("p1", "i1"), days_ago(55))
    await live.append(health("p1", "i1", "up"), days_ago(20))
    await live.append(health("p1", "i1", "down"), days_ago(1))
    for ok in (True, True, True, False):
        await live.append(attempt("p1", "i1", ok), days_ago(2))
    await live.append(traffic("p1", 2000, 1), days_ago(3))

    doc = await live.settled()
    k = doc["kpis"]
    # applied day -120, activated day -29d23h → 90 d 1 h: inside the 30-day window.
    assert k["time_to_partnership_days"]["value"] == pytest.approx(90 + 1 / 24)
    assert k["time_to_partnership_days"]["status"] == "breached"
    assert k["integration_uptime"]["value"] == pytest.approx(100 * 19 / 20)
    assert k["integration_success_rate"]["value"] == pytest.approx(75.0)
    assert k["api_availability"]["value"] == pytest.approx(99.95)
    # Signed day -100, live day -55 → 45 d, but outside the 30-day window.
    assert k["time_to_integration_days"]["status"] == "no_data"
    assert (await live.kpis("90d"))["kpis"]["time_to_integration_days"]["value"] == pytest.approx(45.0)
    assert doc["as_of"] == {"onboarding": 3, "lifecycle": 8, "gateway": 1}

    consumers = (await live.http.get("/admin/consumers", headers=live.ops())).json()
    for consumer in consumers["consumers"]:
        for source in consumer["sources"]:
            assert source["lag"] == 0, consumer
    metrics = (await live.http.get("/metrics")).text
    assert (
        'partnerhub_consumer_lag_events{projection="integration_uptime",source="lifecycle",'
        'subscription="metrics.projections"} 0.0'
    ) in metrics
    assert 'partnerhub_source_head_position{source="lifecycle"} 8.0' in metrics


async def test_went_live_consumed_before_agreement_signed_gives_the_same_answer(live: LivePlatform) -> None:
    # p1: the lifecycle fact arrives (and is consumed) first.
    await live.append(went_live("p1", "i1"), days_ago(5))

    async def lifecycle_consumed() -> bool:
        return (await live.kpis())["as_of"]["lifecycle"] == 1

    await wait_until(lifecycle_consumed)
    assert (await live.kpis())["kpis"]["time_to_integration_days"]["status"] == "no_data"
    await live.append(signed("p1"), days_ago(50))
    # p2: the usual order.
    await live.append(signed("p2"), days_ago(50))
    await wait_until(lambda: _onboarding_at(live, 2))
    await live.append(went_live("p2", "i2"), days_ago(5))

    doc = await live.settled()
    tti = doc["kpis"]["time_to_integration_days"]
    assert (tti["value"], tti["sample_size"]) == (45.0, 2)
    p1 = (await live.kpis(partner_id="p1"))["kpis"]["time_to_integration_days"]["value"]
    p2 = (await live.kpis(partner_id="p2"))["kpis"]["time_to_integration_days"]["value"]
    assert p1 == p2 == 45.0


async def _onboarding_at(live: LivePlatform, position: int) -> bool:
    return bool((await live.kpis())["as_of"]["onboarding"] == position)


async def test_redelivered_records_change_nothing(live: LivePlatform) -> None:
    for ok in (True, False):
        await live.append(attempt("p1", "i1", ok), days_ago(1))
    await live.append(traffic("p1", 100, 1), days_ago(1))
    before = await live.settled()
    # Make every relay publish its whole log again: at-least-once delivery, every record twice.
    for source in ("lifecycle", "gateway"):
        relay = live.sources[source].app.state.runtime.relay
        await relay.stop()
        async with live.store(source).engine.begin() as conn:
            from sqlalchemy import update

            from events.schema import relay_cursors

            await conn.execute(update(relay_cursors).values(position=0))
        published = relay.published
        await relay.start()
        await wait_until(lambda relay=relay, published=published: _published(relay, published + 1))
    await live.append(attempt("p1", "i1", True), days_ago(1))
    after = await live.settled()
    assert after["kpis"]["api_availability"] == before["kpis"]["api_availability"]
    # Only the one new attempt counts: 2 of 3 succeeded.
    assert after["kpis"]["integration_success_rate"]["value"] == pytest.approx(100 * 2 / 3)
    assert after["kpis"]["integration_success_rate"]["sample_size"] == 3


async def _published(relay: object, at_least: int) -> bool:
    return int(relay.published) >= at_least  # type: ignore[attr-defined]
