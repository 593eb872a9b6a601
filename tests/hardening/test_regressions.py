"""What the fuzzer and the isolation matrix found, kept as plain tests (input cases are in test_limits.py)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from events.broker import EmbeddedBroker
from events.envelope import RecordedEvent
from events.store import EventStore
from events.subscription import SourceInfo, Subscription
from tests.events.conftest import append_many, sqlite_engine
from tests.hardening.conftest import Tenant, send
from tests.support.platform import RunningPlatform, eventually


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("service", "path", "methods"),
    [
        ("onboarding", "/v1/partners", {"GET", "POST"}),
        ("lifecycle", "/v1/integrations", {"GET", "POST"}),
        ("lifecycle", "/v1/webhooks/endpoints/ep_x", {"GET", "PATCH", "DELETE"}),
        ("gateway", "/admin/clients", {"GET", "POST"}),
        ("gateway", "/admin/clients/c_x", {"GET", "DELETE"}),
    ],
)
async def test_405_names_every_method_of_the_resource(
    service: str, path: str, methods: set[str], platform: RunningPlatform
) -> None:
    """Starlette named only the first route matching the path in `Allow` (RFC 9110 §15.5.6 wants all)."""
    ops = await platform.ops_http()
    for base in {platform.gateway, platform.url(service)}:
        response = await ops.request("PUT", base + path)
        assert response.status_code == 405, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        allow = {m.strip() for m in response.headers["allow"].split(",")}
        assert methods <= allow, f"{base}{path}: Allow {allow}"


@pytest.mark.e2e
async def test_documents_match_what_the_services_answer(platform: RunningPlatform) -> None:
    async with httpx.AsyncClient(timeout=10.0) as http:
        gateway = (await http.get(platform.gateway + "/openapi.json")).json()
        onboarding = (await http.get(platform.url("onboarding") + "/openapi.json")).json()
        lifecycle = (await http.get(platform.url("lifecycle") + "/openapi.json")).json()
        jwks = await http.get(platform.gateway + "/.well-known/jwks.json")
    # The JWK Set is served as application/jwk-set+json (RFC 7517 §8.5); it was documented as JSON.
    documented = gateway["paths"]["/.well-known/jwks.json"]["get"]["responses"]["200"]["content"]
    assert jwks.headers["content-type"].split(";")[0] in documented
    # Scores are JSON numbers 1–10; the document said "number or string" with no range.
    score = onboarding["components"]["schemas"]["ScoresIn"]["properties"]["market_position"]
    assert (score["type"], score["minimum"], score["maximum"]) == ("number", 1, 10)
    # A partner filtering integrations by another partner gets 404; it was undocumented.
    assert "404" in lifecycle["paths"]["/v1/integrations"]["get"]["responses"]


def partner_labels(text: str) -> set[str]:
    return set(re.findall(r'partner="([^"]+)"', text))


@pytest.mark.e2e
async def test_prometheus_text_shows_a_partner_only_its_own_series(
    platform: RunningPlatform, tenants: tuple[Tenant, Tenant]
) -> None:
    """Through the gateway (kpis:read), /metrics listed every partner's id and KPI values to any partner."""
    a, b = tenants
    ops = await platform.ops_http()

    async def ops_sees_both() -> bool:
        text = (await send(ops, "GET", "/metrics")).text
        assert {a.partner_id, b.partner_id} <= partner_labels(text)
        return True

    await eventually(ops_sees_both, timeout=30, interval=0.5)
    mine = await send(a.http, "GET", "/metrics")
    assert mine.status_code == 200, mine.text
    assert partner_labels(mine.text) == {a.partner_id}
    assert "partnerhub_kpi_value" in mine.text  # platform-wide KPIs stay visible, as in /v1/kpis


@pytest.mark.slow
async def test_a_group_subscription_outlives_the_loss_of_its_broker(tmp_path: Path) -> None:
    """Found by test_crash.py (b): aiokafka's consumer.stop() ended in its own CancelledError when
    the broker was gone, which `suppress(Exception)` let through, so the subscription's task
    died silently (the alliance reactor stopped starting alliances for good)."""
    async with EmbeddedBroker(log_dir=tmp_path / "logs") as broker:
        store = EventStore(await sqlite_engine(tmp_path / "source.db"), source="onboarding", now=lambda: datetime.now(UTC))
        consumer = await sqlite_engine(tmp_path / "consumer.db")
        seen: list[str] = []

        async def handler(conn: AsyncConnection, event: RecordedEvent) -> None:
            seen.append(event.partition_key)

        async def reader(source: str, after: int, limit: int) -> list[RecordedEvent]:
            return await store.read_all(after=after, limit=limit)

        subscription = Subscription(
            "hardening-group",
            sources={"onboarding": SourceInfo(topic="hardening.group", partitions=6)},
            handler=handler,
            engine=consumer,
            bootstrap=broker.bootstrap,
            log_reader=reader,
            idle_catchup_interval=0.5,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
        await append_many(store, ["ptn_before"], 1)
        await subscription.start()
        try:
            await eventually(lambda: _returns(seen == ["ptn_before"]), timeout=20)

            async def assigned() -> bool:
                # A group member with partitions: its fetcher polls the broker all the time.
                member = subscription._consumer
                assert member is not None and member.assignment()
                return True

            await eventually(assigned, timeout=30)
            await broker.stop()
            await asyncio.sleep(7.0)  # past the 5 s topic check: the subscription closes its consumer
            await broker.start()
            await append_many(store, ["ptn_after"], 1)
            await eventually(lambda: _returns(seen == ["ptn_before", "ptn_after"]), timeout=30)
        finally:
            await subscription.stop()
            await store.close()
            await store.engine.dispose()
            await consumer.dispose()


async def _returns(value: bool) -> bool:
    assert value
    return True
