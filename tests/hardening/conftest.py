"""Shared fixtures of the hardening suite: two fully set-up partners on the session platform.

`tenants` gives partner A and partner B, each activated through the public API (so each
has an alliance), with a partner client holding every scope a partner may hold, an
integration, two webhook endpoints (one to delete) and at least one webhook message.
Everything goes through the gateway with real OAuth tokens.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support.platform import Credentials, RunningPlatform, eventually, free_port

# Every scope a partner client may hold (the registry refuses `admin` and `events:read`).
ALL_PARTNER_SCOPES = [
    "partners:read",
    "partners:write",
    "integrations:read",
    "integrations:write",
    "webhooks:read",
    "webhooks:write",
    "kpis:read",
]
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
AGREEMENT = {"agreement_type": "platform_integration", "starts_on": "2026-01-01", "ends_on": "2028-12-31"}
PHASES = ("initial_screening", "detailed_evaluation", "final_assessment")


@dataclass
class Tenant:
    """One partner with something of its own behind every partner route."""

    partner_id: str
    name: str
    creds: Credentials
    http: httpx.AsyncClient
    token: str
    integration_id: str = ""
    endpoint_id: str = ""
    spare_endpoint_id: str = ""
    message_id: str = ""
    ids: set[str] = field(default_factory=set)

    def secrets_of(self) -> set[str]:
        """Every string naming this tenant, something it owns, or one of its secrets."""
        return {self.partner_id, self.name, self.creds.client_id, *self.ids}


async def send(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request, waiting out a 429 (the gateway's per-client bucket) at most a few times."""
    for _ in range(5):
        response = await http.request(method, url, **kwargs)
        if response.status_code != 429:
            return response
        await asyncio.sleep(min(2.0, float(response.headers.get("retry-after", "1"))))
    return response


async def ok(http: httpx.AsyncClient, method: str, url: str, status: int = 200, **kwargs: Any) -> Any:
    response = await send(http, method, url, **kwargs)
    assert response.status_code == status, f"{method} {url}: {response.status_code} {response.text}"
    return response.json() if response.content else None


async def onboard(ops: httpx.AsyncClient, name: str) -> str:
    """Apply → assess → due diligence ×3 → approve → agreement → activate; the partner's id."""
    partner = await ok(
        ops,
        "POST",
        "/v1/partners",
        201,
        json={"name": name, "website": "https://partner.example", "category": "ai", "contact_email": "a@partner.example"},
    )
    pid = str(partner["id"])
    await ok(ops, "POST", f"/v1/partners/{pid}/assessment", json={"scores": SCORES})
    for phase in PHASES:
        await ok(ops, "POST", f"/v1/partners/{pid}/due-diligence", json={"phase": phase, "passed": True})
    await ok(ops, "POST", f"/v1/partners/{pid}/approvals", json={"decision": "approve", "comment": "ok"})
    await ok(ops, "POST", f"/v1/partners/{pid}/agreement", json=AGREEMENT)
    await ok(ops, "POST", f"/v1/partners/{pid}/activate")
    return pid


async def make_tenant(platform: RunningPlatform, ops: httpx.AsyncClient, label: str, hook_url: str) -> Tenant:
    """A partner with an alliance, an integration, webhook endpoints and a webhook message."""
    name = f"Hardening {label} {secrets.token_hex(4)}"
    pid = await onboard(ops, name)
    creds = await platform.create_client(name=f"{name} client", scopes=ALL_PARTNER_SCOPES, partner_id=pid)
    token = await platform.token(creds)
    http = httpx.AsyncClient(base_url=platform.gateway, headers={"Authorization": f"Bearer {token}"}, timeout=15.0)
    tenant = Tenant(pid, name, creds, http, token)

    async def alliance() -> bool:
        return (await send(http, "GET", f"/v1/alliances/{pid}")).status_code == 200

    await eventually(alliance, timeout=30)
    endpoint = await ok(http, "POST", "/v1/webhooks/endpoints", 201, json={"url": hook_url, "event_types": ["integration.*"]})
    spare = await ok(http, "POST", "/v1/webhooks/endpoints", 201, json={"url": hook_url, "event_types": ["sla.*"]})
    integration = await ok(http, "POST", "/v1/integrations", 201, json={"kind": "rest_api", "name": f"{name} API"})
    tenant.endpoint_id, tenant.spare_endpoint_id = endpoint["id"], spare["id"]
    tenant.integration_id = integration["id"]

    async def message() -> str:
        page = await ok(http, "GET", f"/v1/webhooks/endpoints/{tenant.endpoint_id}/messages")
        assert page["items"], "no webhook message yet"
        return str(page["items"][0]["id"])

    tenant.message_id = await eventually(message, timeout=30)
    tenant.ids = {tenant.integration_id, tenant.endpoint_id, tenant.spare_endpoint_id, tenant.message_id}
    # Secrets are identifiers too: none may ever reach another partner.
    tenant.ids |= {endpoint["secret"], spare["secret"], creds.client_secret, token}
    return tenant


@pytest.fixture(scope="session")
async def tenants(platform: RunningPlatform) -> AsyncIterator[tuple[Tenant, Tenant]]:
    """Partners A and B, built concurrently (webhooks go to a closed loopback port: deliveries fail fast)."""
    ops = await platform.ops_http()
    hook_url = f"http://127.0.0.1:{free_port()}/hooks"
    a, b = await asyncio.gather(
        make_tenant(platform, ops, "Alpha", hook_url), make_tenant(platform, ops, "Beta", hook_url)
    )
    try:
        yield a, b
    finally:
        await a.http.aclose()
        await b.http.aclose()
