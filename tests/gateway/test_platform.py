"""The gateway inside the whole platform: tiers learned from onboarding's events over Kafka."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.onboarding.conftest import INNOVATION_SCORES, PHASES, application
from tests.support.platform import RunningPlatform, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return doc


async def test_gateway_learns_the_tier_and_sizes_the_partners_bucket(platform: RunningPlatform) -> None:
    ops = await platform.ops_http()
    created = await ops.post("/v1/partners", json=application("Tiered Widgets"))
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    assert (await ops.post(f"/v1/partners/{pid}/assessment", json={"scores": INNOVATION_SCORES})).status_code == 200
    for phase in PHASES:
        assert (await ops.post(f"/v1/partners/{pid}/due-diligence", json={"phase": phase, "passed": True})).status_code in (200, 201)
    creds = await platform.create_client(name="tiered", scopes=["partners:read", "kpis:read"], partner_id=pid)
    before = _claims(await platform.token(creds))
    assert before["partner_id"] == pid and "tier" not in before
    assert (await ops.post(f"/v1/partners/{pid}/approvals", json={"decision": "approve"})).status_code == 200

    async def tier_in_new_tokens() -> str:
        token = await platform.token(creds)
        assert _claims(token).get("tier") == "innovation"
        return token

    token = await eventually(tier_in_new_tokens, timeout=30)
    partner = await platform.http_for(creds)
    response = await partner.get(f"/v1/partners/{pid}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.headers["ratelimit-policy"].startswith('"innovation";')

    consumers = (await ops.get("/admin/consumers")).json()
    (tiers,) = consumers["consumers"]
    assert tiers["subscription"] == "gateway-tiers" and tiers["parked"] == []
    assert tiers["sources"][0]["source"] == "onboarding"
    assert max(p["position"] for p in tiers["sources"][0]["partitions"]) > 0
