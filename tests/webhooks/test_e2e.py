"""Tier 3: webhooks through the real gateway, real OAuth tokens, the real broker and every service."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import pytest

from tests.support.platform import RunningPlatform, eventually
from tests.webhooks.receiver import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCORES = {
    "technology_leadership": 8,
    "market_position": 7,
    "financial_stability": 7,
    "strategic_fit": 8,
    "integration_capability": 9,
    "cultural_compatibility": 7,
}


AGREEMENT = {"agreement_type": "platform_integration", "starts_on": "2026-01-01", "ends_on": "2028-12-31"}


async def _alliance_started(http: httpx.AsyncClient, partner_id: str) -> bool:
    return (await http.get(f"/v1/alliances/{partner_id}")).status_code == 200


async def call(http: httpx.AsyncClient, method: str, url: str, status: int, **kwargs: Any) -> Any:
    for _ in range(5):
        response = await http.request(method, url, **kwargs)
        if response.status_code != 429:
            break
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
    assert response.status_code == status, f"{method} {url}: {response.status_code} {response.text}"
    return response.json() if response.content else None


async def test_partners_receive_their_own_signed_webhooks_through_the_platform(
    platform: RunningPlatform, receiver: Receiver
) -> None:
    ops = await platform.ops_http()
    partner_ids = []
    for label in ("A", "B"):
        body = {
            "name": f"Webhook e2e {label} {secrets.token_hex(3)}",
            "website": "https://partner.example",
            "category": "ai",
            "contact_email": "alliances@partner.example",
        }
        partner_ids.append((await call(ops, "POST", "/v1/partners", 201, json=body))["id"])
    a, b = partner_ids
    http_a = await platform.partner_http(a)
    http_b = await platform.partner_http(b)
    hook_a = await call(http_a, "POST", "/v1/webhooks/endpoints", 201, json={"url": receiver.url("/a"), "event_types": ["partner.*", "integration.*"]})
    hook_b = await call(http_b, "POST", "/v1/webhooks/endpoints", 201, json={"url": receiver.url("/b"), "event_types": ["*"]})
    receiver.expect("/a", [hook_a["secret"]])
    receiver.expect("/b", [hook_b["secret"]])

    # A is onboarded (onboarding's topic); its activation starts an alliance (a lifecycle
    # reactor), after which it registers an integration (lifecycle's topic).
    await call(ops, "POST", f"/v1/partners/{a}/assessment", 200, json={"scores": SCORES})
    for phase in ("initial_screening", "detailed_evaluation", "final_assessment"):
        await call(ops, "POST", f"/v1/partners/{a}/due-diligence", 200, json={"phase": phase, "passed": True})
    await call(ops, "POST", f"/v1/partners/{a}/approvals", 200, json={"decision": "approve", "comment": "ok"})
    await call(ops, "POST", f"/v1/partners/{a}/agreement", 200, json=AGREEMENT)
    await call(ops, "POST", f"/v1/partners/{a}/activate", 200)

    async def arrived(*wanted: str) -> bool:
        return set(wanted) <= {d.payload["type"] for d in receiver.at("/a")}

    await eventually(lambda: arrived("partner.assessed", "partner.activated"), timeout=60)
    await eventually(lambda: _alliance_started(http_a, a), timeout=60)
    await call(http_a, "POST", "/v1/integrations", 201, json={"kind": "rest_api", "name": "CRM sync"})
    await eventually(lambda: arrived("integration.registered"), timeout=60)
    assert "alliance.started" not in {d.payload["type"] for d in receiver.at("/a")}, "filtered out"
    assert all(d.verified_with == [0] for d in receiver.at("/a"))
    assert {d.payload["data"]["partner_id"] for d in receiver.at("/a")} == {a}
    # B's endpoint may see B's own events (its filter is "*"), never A's.
    assert all(d.payload["data"]["partner_id"] == b for d in receiver.at("/b")), "B's endpoint never sees A's events"

    # The message log, read through the gateway, shows the attempts; B cannot read it.
    page = await call(http_a, "GET", f"/v1/webhooks/endpoints/{hook_a['id']}/messages", 200)
    assert page["items"] and all(m["attempts"] for m in page["items"] if m["status"] == "delivered")
    await call(http_b, "GET", f"/v1/webhooks/endpoints/{hook_a['id']}/messages", 404)
