"""End to end through the gateway: activation in onboarding starts the alliance in lifecycle.

Real processes (uvicorn), the real broker and real OAuth tokens: an ops client onboards a
partner, the alliance appears through Kafka, and the partner manages its integration
while another partner sees none of it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.platform import RunningPlatform, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

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


async def ok(http: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None, status: int = 200) -> dict[str, Any]:
    response = await http.post(path, json=body)
    assert response.status_code == status, response.text
    doc: dict[str, Any] = response.json()
    return doc


async def activated_partner(ops: httpx.AsyncClient, name: str) -> str:
    partner = await ok(
        ops,
        "/v1/partners",
        {"name": name, "website": "https://example.com", "category": "ai_ml", "contact_email": "a@example.com"},
        status=201,
    )
    pid = str(partner["id"])
    await ok(ops, f"/v1/partners/{pid}/assessment", {"scores": SCORES})
    for phase in ("initial_screening", "detailed_evaluation", "final_assessment"):
        await ok(ops, f"/v1/partners/{pid}/due-diligence", {"phase": phase, "passed": True})
    await ok(ops, f"/v1/partners/{pid}/approvals", {"decision": "approve", "comment": "ok"})
    await ok(ops, f"/v1/partners/{pid}/agreement", AGREEMENT)
    await ok(ops, f"/v1/partners/{pid}/activate")
    return pid


async def test_activation_starts_the_alliance_and_the_partner_runs_its_integration(platform: RunningPlatform) -> None:
    ops = await platform.ops_http()
    pid = await activated_partner(ops, "Lifecycle E2E One")
    other_pid = await activated_partner(ops, "Lifecycle E2E Two")

    async def alliance_started() -> dict[str, Any] | None:
        response = await ops.get(f"/v1/alliances/{pid}")
        return response.json() if response.status_code == 200 else None

    alliance = await eventually(alliance_started, timeout=30)
    assert alliance is not None
    assert (alliance["phase"], alliance["tier"], alliance["ends_on"]) == ("initiation", "innovation", "2028-03-31")

    partner = await platform.partner_http(pid)
    other = await platform.partner_http(other_pid)
    assert (await partner.get(f"/v1/alliances/{pid}")).status_code == 200
    assert (await other.get(f"/v1/alliances/{pid}")).status_code == 404

    # Ops move the phase; the partner reads it but may not change it.
    await ok(ops, f"/v1/alliances/{pid}/phase", {"to": "integration"})
    denied = await partner.post(f"/v1/alliances/{pid}/phase", json={"to": "launch"})
    assert denied.status_code == 403

    created = await ok(partner, "/v1/integrations", {"kind": "rest_api", "name": "Orders API"}, status=201)
    iid = created["id"]
    assert created["partner_id"] == pid and created["sla"]["uptime_target_pct"] == 99.5
    no_success = await partner.post(f"/v1/integrations/{iid}/go-live")
    assert no_success.status_code == 409
    await ok(partner, f"/v1/integrations/{iid}/attempts", {"outcome": "succeeded", "duration_ms": 95})
    live = await ok(partner, f"/v1/integrations/{iid}/go-live")
    assert live["status"] == "live"

    assert (await other.get(f"/v1/integrations/{iid}")).status_code == 404
    stolen = await other.post(f"/v1/integrations/{iid}/retire", json={"reason": "mine"})
    assert stolen.status_code == 404
    listed = (await other.get("/v1/integrations")).json()
    assert all(item["partner_id"] == other_pid for item in listed["items"])
    seen = (await ops.get("/v1/integrations", params={"partner_id": pid})).json()
    assert [item["id"] for item in seen["items"]] == [iid]
