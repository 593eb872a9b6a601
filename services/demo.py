"""`partnerhub demo`: a realistic partner portfolio driven through the public API only.

A dozen partners across tiers go from application to active over the last 180 days
(ops-supplied `occurred_at`), integrations record attempts and go live, some
alliances renew or exit, partners rate their satisfaction, and one partner's webhook
endpoint points at a receiver the demo runs itself (verifying every signature).
It ends by printing the KPI table.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from aiohttp import web
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from standardwebhooks import Webhook

console = Console()

CRITERIA = (
    "technology_leadership",
    "market_position",
    "financial_stability",
    "strategic_fit",
    "integration_capability",
    "cultural_compatibility",
)
# Uniform marks give weighted score = the mark: 9 → strategic, 7 → innovation, 5.5 → platform_integration.
PORTFOLIO: list[tuple[str, str, float]] = [
    ("Northwind Analytics", "analytics", 9),
    ("Contoso Cloud", "infrastructure", 8.5),
    ("Fabrikam Payments", "fintech", 7),
    ("Tailspin Security", "security", 7.5),
    ("Wingtip Data", "data", 6.8),
    ("Adatum Identity", "identity", 8.2),
    ("Litware CRM", "crm", 5.5),
    ("Proseware Logistics", "logistics", 6),
    ("Woodgrove Health", "health", 7.2),
    ("Lucerne Media", "media", 5.8),
    ("Alpine Robotics", "iot", 9.1),
    ("Trey Research", "research", 6.6),
]
KINDS = ("rest_api", "webhook", "data_sync", "sso")


@dataclass
class Receiver:
    """The demo's own webhook receiver: verifies every delivery with Standard Webhooks."""

    secret: str | None = None
    received: int = 0
    rejected: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.secret is None:
            return web.Response(status=503)
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
        except Exception:  # noqa: BLE001 - any verification failure is a rejection
            self.rejected += 1
            return web.Response(status=400)
        self.received += 1
        return web.Response(status=204)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if request.match_info["name"].endswith("down") else 200, text="ok")


async def _start_receiver(receiver: Receiver) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/webhooks", receiver.handle)
    app.router.add_get("/health/{name}", receiver.health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, int(port)


class Api:
    """Thin wrapper: every call goes through the gateway and must succeed."""

    def __init__(self, gateway: str, token: str) -> None:
        self.http = httpx.AsyncClient(base_url=gateway, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None, *, ok: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        response = await self.http.request(method, path, json=body)
        if response.status_code not in ok:
            raise RuntimeError(f"{method} {path} → {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    async def close(self) -> None:
        await self.http.aclose()


async def token_for(gateway: str, client_id: str, secret: str) -> str:
    """A client-credentials token from the gateway."""
    async with httpx.AsyncClient(timeout=15.0) as http:
        response = await http.post(gateway + "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
        response.raise_for_status()
        return str(response.json()["access_token"])


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


async def run_demo(gateway: str, client_id: str, client_secret: str, *, seed: int = 7, wait: float = 150.0) -> dict[str, Any]:
    """Drive the portfolio and return the final KPI document."""
    rng = random.Random(seed)
    receiver = Receiver()
    runner, port = await _start_receiver(receiver)
    ops = Api(gateway, await token_for(gateway, client_id, client_secret))
    second = await ops.call("POST", "/admin/clients", {"name": f"demo second approver {int(time.time())}", "scopes": ["admin"]})
    approver2 = Api(gateway, await token_for(gateway, second["client_id"], second["client_secret"]))
    now = datetime.now(UTC).replace(microsecond=0)
    partners: list[str] = []
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("onboarding partners", total=len(PORTFOLIO))
            for index, (name, category, mark) in enumerate(PORTFOLIO):
                applied = now - timedelta(days=175 - index * 14, hours=rng.randint(0, 20))
                t = applied
                latest = now - timedelta(hours=2)
                slug = name.lower().split()[0]
                partner = await ops.call("POST", "/v1/partners", {
                    "name": name, "website": f"https://{slug}.example", "category": category,
                    "contact_email": f"alliances@{slug}.example", "occurred_at": _iso(t),
                })
                pid = partner["id"]
                partners.append(pid)
                t = min(t + timedelta(days=rng.randint(3, 8)), latest)
                result = await ops.call("POST", f"/v1/partners/{pid}/assessment", {"scores": dict.fromkeys(CRITERIA, mark), "occurred_at": _iso(t)})
                for phase in ("initial_screening", "detailed_evaluation", "final_assessment"):
                    t = min(t + timedelta(days=rng.randint(2, 6)), latest)
                    await ops.call("POST", f"/v1/partners/{pid}/due-diligence", {"phase": phase, "passed": True, "findings": "no blocking findings", "occurred_at": _iso(t)})
                t = min(t + timedelta(days=rng.randint(1, 4)), latest)
                await ops.call("POST", f"/v1/partners/{pid}/approvals", {"decision": "approve", "comment": "fits the portfolio", "occurred_at": _iso(t)})
                if result["recommended_tier"] == "strategic":
                    t = min(t + timedelta(hours=6), latest)
                    await approver2.call("POST", f"/v1/partners/{pid}/approvals", {"decision": "approve", "comment": "board approval", "occurred_at": _iso(t)})
                t = min(t + timedelta(days=rng.randint(5, 15)), latest)
                signed = t
                await ops.call("POST", f"/v1/partners/{pid}/agreement", {
                    "agreement_type": rng.choice(["joint_development", "technology_licensing", "platform_integration"]),
                    "starts_on": signed.date().isoformat(), "ends_on": (signed + timedelta(days=365)).date().isoformat(),
                    "sla": {"uptime_target_pct": 99.9, "integration_success_target_pct": 95.0, "time_to_integration_target_days": 60},
                    "occurred_at": _iso(t),
                })
                t = min(t + timedelta(days=rng.randint(2, 10)), latest)
                await ops.call("POST", f"/v1/partners/{pid}/activate", {"occurred_at": _iso(t)})
                progress.advance(task)

            task = progress.add_task("alliances and integrations", total=len(partners))
            for index, pid in enumerate(partners):
                await _wait_alliance(ops, pid)
                partner = await ops.call("GET", f"/v1/partners/{pid}")
                history = await ops.call("GET", f"/v1/partners/{pid}/events?limit=200")
                last = max(datetime.fromisoformat(e["time"].replace("Z", "+00:00")) for e in history["items"])
                t = min(max(last, await _alliance_time(ops, pid)) + timedelta(days=1), now - timedelta(minutes=8))
                health = f"http://127.0.0.1:{port}/health/{pid}{'-down' if index == 3 else ''}"
                integration = await ops.call("POST", "/v1/integrations", {
                    "partner_id": pid, "kind": KINDS[index % 4], "name": f"{partner['name']} {KINDS[index % 4]}",
                    "health_url": health, "occurred_at": _iso(t),
                })
                iid = integration["id"]
                for attempt in range(rng.randint(3, 7)):
                    t = min(t + timedelta(days=rng.randint(1, 6)), now - timedelta(minutes=6))
                    outcome = "failed" if attempt == 0 and rng.random() < 0.6 else "succeeded"
                    await ops.call("POST", f"/v1/integrations/{iid}/attempts", {"outcome": outcome, "detail": "sandbox run", "duration_ms": rng.randint(80, 900), "occurred_at": _iso(t)})
                t = min(t + timedelta(days=rng.randint(1, 10)), now - timedelta(minutes=5))
                await ops.call("POST", f"/v1/integrations/{iid}/go-live", {"occurred_at": _iso(t)})
                t = min(t + timedelta(days=2), now - timedelta(minutes=4))
                await ops.call("POST", f"/v1/alliances/{pid}/phase", {"to": "integration", "occurred_at": _iso(t)})
                rated = min(t + timedelta(days=rng.randint(1, 20)), now - timedelta(minutes=3))
                await ops.call("POST", f"/v1/alliances/{pid}/satisfaction", {"score": rng.choice([7, 8, 8.5, 9, 9.5, 10]), "comment": "quarterly review", "occurred_at": _iso(rated)})
                if index in (0, 2, 5, 8, 10):
                    renewal = min(rated + timedelta(days=1), now - timedelta(minutes=2))
                    await ops.call("POST", f"/v1/alliances/{pid}/renewal", {"ends_on": (now + timedelta(days=730)).date().isoformat(), "occurred_at": _iso(renewal)})
                elif index == 7:
                    await ops.call("POST", f"/v1/alliances/{pid}/exit", {"reason": "strategy changed", "notice_days": 30})
                    await ops.call("POST", f"/v1/alliances/{pid}/terminate", {"force": True, "reason": "mutual agreement to end early"})
                progress.advance(task)

        # A partner's own client creates its webhook endpoint pointing at our receiver.
        partner_client = await ops.call("POST", "/admin/clients", {"name": "demo partner", "partner_id": partners[0], "scopes": ["webhooks:read", "webhooks:write", "integrations:write", "integrations:read", "kpis:read", "partners:read"]})
        partner_api = Api(gateway, await token_for(gateway, partner_client["client_id"], partner_client["client_secret"]))
        endpoint = await partner_api.call("POST", "/v1/webhooks/endpoints", {"url": f"http://127.0.0.1:{port}/webhooks", "event_types": ["integration.*", "alliance.*"], "description": "demo receiver"})
        receiver.secret = endpoint["secret"]
        own = await partner_api.call("POST", "/v1/integrations", {"kind": "webhook", "name": "event feed", "health_url": f"http://127.0.0.1:{port}/health/feed"})
        await partner_api.call("POST", f"/v1/integrations/{own['id']}/attempts", {"outcome": "succeeded", "detail": "first sync"})
        await partner_api.call("POST", f"/v1/integrations/{own['id']}/go-live")
        await partner_api.close()

        with console.status("waiting for every KPI to have data (health probes, traffic windows, webhook deliveries)…"):
            kpis = await _wait_kpis(ops, wait)
    finally:
        await ops.close()
        await approver2.close()
        await runner.cleanup()
    _print_kpis(kpis, receiver)
    return kpis


async def _wait_alliance(ops: Api, pid: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        response = await ops.http.get(f"/v1/alliances/{pid}")
        if response.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"alliance of {pid} did not start within {timeout}s ({response.status_code})")
        await asyncio.sleep(0.1)


async def _alliance_time(ops: Api, pid: str) -> datetime:
    alliance = await ops.call("GET", f"/v1/alliances/{pid}")
    times = [datetime.fromisoformat(str(h.get("occurred_at") or h.get("time")).replace("Z", "+00:00")) for h in alliance.get("history", []) if h.get("occurred_at") or h.get("time")]
    return max(times) if times else datetime.now(UTC) - timedelta(days=1)


async def _wait_kpis(ops: Api, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc: dict[str, Any] = await ops.call("GET", "/v1/kpis?window=30d")
        missing = [name for name, kpi in doc["kpis"].items() if kpi["status"] == "no_data"]
        if not missing or time.monotonic() > deadline:
            if missing:
                console.print(f"[yellow]still no data for {', '.join(missing)} after {timeout:.0f}s")
            return doc
        await asyncio.sleep(1.0)


def _print_kpis(doc: dict[str, Any], receiver: Receiver) -> None:
    table = Table(title=f"partnerhub KPIs (window {doc.get('window')})")
    for column in ("KPI", "value", "target", "status", "sample"):
        table.add_column(column)
    for name, kpi in doc["kpis"].items():
        colour = {"met": "green", "breached": "red"}.get(kpi["status"], "yellow")
        value = kpi.get("value")
        table.add_row(name, "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value),
                      str(kpi.get("target")), f"[{colour}]{kpi['status']}[/]", str(kpi.get("sample_size", "")))
    console.print(table)
    console.print(f"webhook receiver: {receiver.received} deliveries verified, {receiver.rejected} rejected")
