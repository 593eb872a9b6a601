"""End to end: the real platform (broker + four services under uvicorn), driven only through
the gateway with real OAuth tokens; ops supply `occurred_at` so the expected KPIs are
worked out by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import Request

from tests.support.platform import RunningPlatform, eventually, running_platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCORES = {
    "technology_leadership": 7,
    "market_position": 7,
    "financial_stability": 7,
    "strategic_fit": 7,
    "integration_capability": 7,
    "cultural_compatibility": 7,
}


@pytest.fixture(scope="module")
async def platform(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningPlatform]:
    # One-second traffic windows and half-second probes: the gateway reports its traffic
    # (api_availability) and the prober its health transitions (integration_uptime) quickly.
    env = {"PARTNERHUB_TRAFFIC_WINDOW_SECONDS": "1", "PARTNERHUB_PROBE_INTERVAL": "0.5"}
    async with running_platform(tmp_path_factory.mktemp("e2e-metrics"), extra_env=env) as running:
        yield running


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json()  # type: ignore[no-any-return]


async def onboard(ops: httpx.AsyncClient, name: str, applied_at: datetime) -> str:
    """applied day 0 → agreement signed day 10 → activated day 20."""
    day = lambda n: iso(applied_at + timedelta(days=n))  # noqa: E731
    partner = await ok(
        await ops.post(
            "/v1/partners",
            json={"name": name, "website": "https://acme.example", "category": "ai",
                  "contact_email": "alliances@acme.example", "occurred_at": day(0)},
        ),
        201,
    )
    pid = str(partner["id"])
    await ok(await ops.post(f"/v1/partners/{pid}/assessment", json={"scores": SCORES, "occurred_at": day(1)}))
    for n, phase in enumerate(("initial_screening", "detailed_evaluation", "final_assessment"), start=2):
        await ok(
            await ops.post(
                f"/v1/partners/{pid}/due-diligence",
                json={"phase": phase, "passed": True, "findings": "ok", "occurred_at": day(n)},
            )
        )
    await ok(await ops.post(f"/v1/partners/{pid}/approvals", json={"decision": "approve", "comment": "", "occurred_at": day(5)}))
    await ok(
        await ops.post(
            f"/v1/partners/{pid}/agreement",
            json={"agreement_type": "platform_integration", "starts_on": "2026-01-01", "ends_on": "2027-12-31",
                  "occurred_at": day(10)},
        )
    )
    await ok(await ops.post(f"/v1/partners/{pid}/activate", json={"occurred_at": day(20)}))
    return pid


async def test_kpis_through_the_gateway_with_ops_supplied_times(platform: RunningPlatform) -> None:
    ops = await platform.ops_http()
    now = datetime.now(UTC)
    t0 = now - timedelta(days=100)
    pid = await onboard(ops, "Acme", t0)
    # The alliance starts when lifecycle's reactor sees partner.activated.
    await eventually(lambda: _alliance_exists(ops, pid))
    integration = await ok(
        await ops.post(
            "/v1/integrations",
            json={"partner_id": pid, "kind": "rest_api", "name": "orders", "occurred_at": iso(t0 + timedelta(days=21))},
        ),
        201,
    )
    iid = integration["id"]
    for n, outcome in enumerate(("succeeded", "succeeded", "succeeded", "failed")):
        await ok(
            await ops.post(
                f"/v1/integrations/{iid}/attempts",
                json={"outcome": outcome, "occurred_at": iso(t0 + timedelta(days=22, hours=n))},
            )
        )
    # Agreement signed on day 10, first integration live on day 55 → 45.0 days.
    await ok(await ops.post(f"/v1/integrations/{iid}/go-live", json={"occurred_at": iso(t0 + timedelta(days=55))}))
    await ok(await ops.post(f"/v1/alliances/{pid}/satisfaction", json={"score": 9, "comment": "great"}))
    await ok(await ops.post(f"/v1/alliances/{pid}/renewal", json={"ends_on": "2029-12-31"}))

    async def settled() -> dict[str, Any]:
        doc = await ok(await ops.get("/v1/kpis", params={"window": "all"}))
        k = doc["kpis"]
        assert k["time_to_integration_days"]["sample_size"] == 1
        assert k["integration_success_rate"]["sample_size"] == 4
        assert k["partner_retention"]["sample_size"] == 1
        return doc

    doc = await eventually(settled, timeout=30)
    k = doc["kpis"]
    assert k["time_to_integration_days"]["value"] == pytest.approx(45.0)
    assert k["time_to_integration_days"]["status"] == "met"
    assert k["time_to_partnership_days"]["value"] == pytest.approx(20.0)
    assert k["integration_success_rate"]["value"] == pytest.approx(75.0)
    assert k["integration_success_rate"]["status"] == "breached"
    assert k["partner_satisfaction"]["value"] == pytest.approx(9.0)
    assert k["partner_retention"]["value"] == pytest.approx(100.0)
    assert set(doc["as_of"]) == {"onboarding", "lifecycle", "gateway"}
    assert doc["as_of"]["onboarding"] >= 8

    # Window edges through the public API: all of it happened 45-100 days ago.
    k30 = (await ok(await ops.get("/v1/kpis", params={"window": "30d"})))["kpis"]
    assert k30["time_to_integration_days"]["status"] == "no_data"
    assert k30["integration_success_rate"]["status"] == "no_data"
    assert k30["partner_satisfaction"]["value"] == pytest.approx(9.0)  # rated just now
    k90 = (await ok(await ops.get("/v1/kpis", params={"window": "90d"})))["kpis"]
    assert k90["time_to_integration_days"]["value"] == pytest.approx(45.0)  # live on day -45
    assert k90["time_to_partnership_days"]["value"] == pytest.approx(20.0)  # activated on day -80
    assert (await ops.get("/v1/kpis", params={"window": "14d"})).status_code == 422

    # The gateway reports its own traffic: every request above was answered without a 5xx.
    async def traffic_seen() -> dict[str, Any]:
        api = (await ok(await ops.get("/v1/kpis", params={"window": "7d"})))["kpis"]["api_availability"]
        assert api["sample_size"] > 0
        return api

    api = await eventually(traffic_seen, timeout=30)
    assert api["value"] == pytest.approx(100.0)
    assert api["status"] == "met"

    # A partner reads its own KPIs through the gateway, and nobody else's.
    partner = await platform.partner_http(pid)
    own = await ok(await partner.get(f"/v1/kpis/partners/{pid}", params={"window": "all"}))
    assert own["kpis"]["time_to_integration_days"]["value"] == pytest.approx(45.0)
    other = await partner.get("/v1/kpis/partners/ptn_someoneelse0000000", params={"window": "all"})
    assert other.status_code == 404
    assert (await partner.get("/v1/kpis/worst")).status_code == 403

    # The dashboard and its assets are reachable through the gateway without a token.
    async with httpx.AsyncClient(base_url=platform.gateway) as anonymous:
        assert (await anonymous.get("/dashboard")).status_code == 200
        assert (await anonymous.get("/dashboard/static/chart.umd.js")).status_code == 200
        assert (await anonymous.get("/v1/kpis")).status_code == 401
    consumers = await ok(await ops.get("/admin/services/metrics/consumers"))
    assert {c["projection"] for c in consumers["consumers"]} >= {"time_to_integration_days", "partner_funnel"}


async def _alliance_exists(ops: httpx.AsyncClient, pid: str) -> bool:
    return (await ops.get(f"/v1/alliances/{pid}")).status_code == 200


async def test_uptime_and_webhook_kpis_come_from_the_platforms_own_workers(platform: RunningPlatform) -> None:
    """The prober's health transitions and the dispatcher's delivery outcomes reach the KPIs."""
    from fastapi import FastAPI, Response

    from tests.metrics.live import free_port, serve

    receiver = FastAPI()
    deliveries: list[bytes] = []

    @receiver.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @receiver.post("/hook")
    async def hook(request: Request) -> Response:
        deliveries.append(await request.body())
        return Response(status_code=204)

    served = await serve(receiver, free_port())
    try:
        ops = await platform.ops_http()
        pid = await onboard(ops, "Initech", datetime.now(UTC) - timedelta(days=25))
        await eventually(lambda: _alliance_exists(ops, pid))
        await ok(
            await ops.post(
                "/v1/webhooks/endpoints",
                json={"url": f"{served.url}/hook", "event_types": ["integration.*"], "partner_id": pid},
            ),
            201,
        )
        integration = await ok(
            await ops.post(
                "/v1/integrations",
                json={"partner_id": pid, "kind": "rest_api", "name": "events", "health_url": f"{served.url}/health"},
            ),
            201,
        )
        await ok(await ops.post(f"/v1/integrations/{integration['id']}/attempts", json={"outcome": "succeeded"}))
        await ok(await ops.post(f"/v1/integrations/{integration['id']}/go-live", json={}))

        async def reflected() -> dict[str, Any]:
            doc = await ok(await ops.get(f"/v1/kpis/partners/{pid}", params={"window": "7d"}))
            k = doc["kpis"]
            assert k["integration_uptime"]["sample_size"] == 1
            assert k["webhook_delivery_success"]["sample_size"] >= 2  # registered, went_live (, health)
            return k

        k = await eventually(reflected, timeout=60)
        # Up since the first probe, never down: 100 %, and its own 99.9 % target is met.
        assert k["integration_uptime"]["value"] == pytest.approx(100.0)
        assert k["integration_uptime"]["status"] == "met"
        assert k["integration_uptime"]["integrations"][0]["integration_id"] == integration["id"]
        # Every message reached the receiver on its first attempt.
        assert k["webhook_delivery_success"]["value"] == pytest.approx(100.0)
        assert k["webhook_delivery_success"]["latency_p50_ms"] is not None
        assert deliveries
    finally:
        await served.stop()
