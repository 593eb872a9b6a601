"""Crash consistency under load: kill services and the broker while commands flow through the gateway.

One platform of its own (it is taken apart on purpose). A load generator drives real
commands through the gateway with an ops token: partner journeys (apply → assess → due
diligence ×3 → approve → agreement → activate, one command after the other per partner,
many partners at once) and integration attempts. Each command carries its own
`X-Request-Id`, which the services record as the events' `correlationid`. While it runs:

  (a) onboarding is SIGKILLed and started again;
  (b) the broker is stopped and a fresh, empty one started on the same port (Tansu keeps
      nothing: topics and committed offsets are gone, as after a real broker loss);
  (c) metrics is SIGKILLed and started again.

After each: every command answered 2xx is in its store exactly once (its events, counted
by correlation id in the service's log API, are exactly the events the command makes);
every command answered with an error or not at all is applied fully or not at all; store
positions are gap-free; every activation started exactly one alliance (the reactor, over
Kafka and catch-up); and the KPI read models, once caught up with every source, equal a
rebuild from position 0 (`partnerhub projections rebuild`).

Budget: PARTNERHUB_CRASH_COMMANDS (default 2,000) commands over the three scenarios.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.hardening.conftest import AGREEMENT, PHASES, SCORES, onboard
from tests.support.platform import RunningPlatform, eventually, running_platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOTAL_COMMANDS = int(os.environ.get("PARTNERHUB_CRASH_COMMANDS", "2000"))
SHARES = {"onboarding": 0.35, "broker": 0.35, "metrics": 0.30}
JOURNEY_WORKERS = 10
ATTEMPT_WORKERS = 3
# Events each command appends (approval of a non-strategic partner: recorded + approved).
EVENTS = {"apply": 1, "assess": 1, "due-diligence": 1, "approve": 2, "agreement": 1, "activate": 1, "attempt": 1}
SOURCES = ("onboarding", "lifecycle", "gateway")


@dataclass
class Sent:
    """One command and what the client saw."""

    kind: str
    request_id: str
    status: int | None
    """HTTP status, or None when no answer came (connection reset, timeout)."""
    partner_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Load:
    """Drives commands through the gateway until `budget` of them have been sent."""

    http: httpx.AsyncClient
    budget: int
    integrations: list[str]
    sent: list[Sent] = field(default_factory=list)
    _issued: int = 0

    def _take(self) -> bool:
        if self._issued >= self.budget:
            return False
        self._issued += 1
        return True

    async def command(self, kind: str, path: str, body: dict[str, Any] | None, partner_id: str | None) -> Sent:
        request_id = uuid.uuid4().hex
        headers = {"X-Request-Id": request_id, "Idempotency-Key": request_id}
        backoff = 0.0
        try:
            response = await self.http.post(path, json=body, headers=headers, timeout=15.0)
            status: int | None = response.status_code
            if kind == "apply" and status == 201:
                partner_id = response.json()["id"]
            if response.status_code >= 500:
                backoff = float(response.headers.get("retry-after", "0.25"))
        except httpx.HTTPError:
            status, backoff = None, 0.25
        sent = Sent(kind, request_id, status, partner_id)
        self.sent.append(sent)
        if backoff:
            await asyncio.sleep(min(backoff, 1.0))  # as a real client would, instead of spinning
        return sent

    async def journey_worker(self) -> None:
        while self._take():
            applied = await self.command(
                "apply",
                "/v1/partners",
                {"name": f"Crash {uuid.uuid4().hex[:8]}", "website": "https://crash.example", "category": "ai",
                 "contact_email": "a@crash.example"},
                None,
            )
            pid = applied.partner_id
            if not applied.ok or pid is None:
                continue
            steps: list[tuple[str, str, dict[str, Any] | None]] = [
                ("assess", "assessment", {"scores": SCORES}),
                *[("due-diligence", "due-diligence", {"phase": phase, "passed": True}) for phase in PHASES],
                ("approve", "approvals", {"decision": "approve", "comment": "ok"}),
                ("agreement", "agreement", AGREEMENT),
                ("activate", "activate", None),
            ]
            for kind, suffix, body in steps:
                if not self._take():
                    return
                if not (await self.command(kind, f"/v1/partners/{pid}/{suffix}", body, pid)).ok:
                    break  # the partner's state is unknown now: start another journey

    async def attempt_worker(self, offset: int) -> None:
        for n in itertools.count(offset):
            if not self._take():
                return
            integration = self.integrations[n % len(self.integrations)]
            outcome = "succeeded" if n % 5 else "failed"
            await self.command("attempt", f"/v1/integrations/{integration}/attempts", {"outcome": outcome}, None)

    async def run(self) -> None:
        await asyncio.gather(
            *(self.journey_worker() for _ in range(JOURNEY_WORKERS)),
            *(self.attempt_worker(i) for i in range(ATTEMPT_WORKERS)),
        )


@dataclass
class World:
    platform: RunningPlatform
    ops: httpx.AsyncClient
    integrations: list[str]
    sent: list[Sent] = field(default_factory=list)


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    # No traffic window closes during the test: KPIs then change only with commands.
    # The gateway's circuit breaker probes a restarted upstream after 1 s instead of 10 s.
    env = {"PARTNERHUB_TRAFFIC_WINDOW_SECONDS": "3600", "PARTNERHUB_BREAKER_RESET_TIMEOUT": "1"}
    async with running_platform(tmp_path_factory.mktemp("crash"), extra_env=env) as platform:
        ops = await platform.ops_http()
        partners = await asyncio.gather(*(onboard(ops, f"Crash base {n}") for n in range(3)))
        integrations = []
        for pid in partners:

            async def alliance(pid: str = pid) -> bool:
                return (await ops.get(f"/v1/alliances/{pid}")).status_code == 200

            await eventually(alliance, timeout=30)
            created = await ops.post("/v1/integrations", json={"partner_id": pid, "kind": "rest_api", "name": "crash"})
            assert created.status_code == 201, created.text
            integrations.append(created.json()["id"])
        yield World(platform, ops, integrations)


async def under_load(world: World, share: float, disrupt: Callable[[], Awaitable[None]]) -> list[Sent]:
    """Run a load of `share` of the budget; call `disrupt` once a quarter of it has been sent."""
    load = Load(world.ops, max(40, int(TOTAL_COMMANDS * share)), world.integrations)
    runner = asyncio.create_task(load.run())

    async def quarter_sent() -> bool:
        assert len(load.sent) >= load.budget // 4 or runner.done()
        return True

    await eventually(quarter_sent, timeout=60)
    await disrupt()
    await runner
    world.sent.extend(load.sent)
    refused = Counter(f"{s.kind} {s.status}" for s in load.sent if not s.ok)
    print(f"\n{disrupt.__name__}: {len(load.sent)} commands, {sum(s.ok for s in load.sent)} answered 2xx, others {dict(refused)}")
    return load.sent


# --- what must hold after each scenario ------------------------------------------------------


async def read_log(world: World, service: str) -> list[dict[str, Any]]:
    """A service's whole event log (its log API, called directly with the ops token)."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        response = await world.ops.get(world.platform.url(service) + "/internal/events", params={"after": after, "limit": 10_000})
        assert response.status_code == 200, response.text
        page = response.json()
        events.extend(page["items"])
        if page["next_after"] >= page["head"] or not page["items"]:
            return events
        after = page["next_after"]


async def check_exactly_once(world: World, sent: list[Sent]) -> None:
    logs = {service: await read_log(world, service) for service in ("onboarding", "lifecycle")}
    for service, events in logs.items():
        positions = [int(e["sequence"]) for e in events]
        assert positions == list(range(1, len(events) + 1)), f"{service}: positions are not gap-free"
    # A command's own events, in its own service's store (reactions elsewhere share the correlation id).
    counts = {service: Counter(e.get("correlationid") for e in events) for service, events in logs.items()}

    def events_of(s: Sent) -> int:
        return counts["lifecycle" if s.kind == "attempt" else "onboarding"][s.request_id]

    def applied_as_answered(s: Sent) -> bool:
        return events_of(s) == EVENTS[s.kind] if s.ok else events_of(s) in (0, EVENTS[s.kind])

    wrong = [f"{s.kind} {s.request_id}: status {s.status}, {events_of(s)} events" for s in sent if not applied_as_answered(s)]
    assert not wrong, f"{len(wrong)} commands not applied exactly once (2xx) or all-or-nothing:\n" + "\n".join(wrong[:20])
    assert sum(s.ok for s in sent) >= len(sent) // 2, Counter(s.status for s in sent)

    activated = {s.partner_id for s in world.sent if s.kind == "activate" and s.ok}

    async def one_alliance_each() -> bool:
        started = Counter(
            e["partitionkey"] for e in await read_log(world, "lifecycle") if e["type"] == "alliance.started"
        )
        missing = [pid for pid in activated if started[pid] != 1]
        assert not missing, f"alliance.started not exactly once for {len(missing)} activated partners: {missing[:5]}"
        return True

    try:
        await eventually(one_alliance_each, timeout=60, interval=0.5)
    except AssertionError as exc:
        consumers = (await world.ops.get("/admin/services/lifecycle/consumers")).text
        raise AssertionError(f"{exc}\nlifecycle consumers: {consumers[:3000]}") from None


async def heads(world: World) -> dict[str, int]:
    found = {}
    for source in SOURCES:
        response = await world.ops.get(world.platform.url(source) + "/internal/events", params={"after": 0, "limit": 1})
        found[source] = int(response.headers["x-head-position"])
    return found


async def kpi_answers(world: World) -> dict[str, Any]:
    """What the KPI API answers once the read models reflect every source's newest event."""
    partners = sorted({s.partner_id for s in world.sent if s.kind == "activate" and s.ok})[:3]

    async def caught_up() -> dict[str, Any]:
        expected = await heads(world)
        platform_kpis = (await world.ops.get("/v1/kpis", params={"window": "all"})).json()
        assert {k: platform_kpis["as_of"].get(k) for k in SOURCES} == expected, (platform_kpis["as_of"], expected)
        answers: dict[str, Any] = {"platform": platform_kpis["kpis"], "as_of": platform_kpis["as_of"]}
        for pid in partners:
            answers[pid] = (await world.ops.get(f"/v1/kpis/partners/{pid}", params={"window": "all"})).json()["kpis"]
        answers["funnel"] = (await world.ops.get("/v1/kpis/funnel")).json()["counts"]
        assert await heads(world) == expected, "an event arrived while reading"
        return answers

    return await eventually(caught_up, timeout=90, interval=0.5)


def rebuild(world: World) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "projections", "rebuild"],
        env=world.platform.platform.env(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode()[-2000:] + result.stderr.decode()[-2000:]


async def check_read_models_equal_a_rebuild(world: World) -> None:
    live = await kpi_answers(world)
    await asyncio.to_thread(rebuild, world)
    rebuilt = await kpi_answers(world)
    assert rebuilt == live, "KPI read models differ from a rebuild from zero"


# --- the scenarios --------------------------------------------------------------------------


async def test_a_onboarding_sigkilled_and_restarted_under_load(world: World) -> None:
    platform = world.platform.platform

    async def crash_onboarding() -> None:
        await asyncio.to_thread(platform.kill_service, "onboarding", signal.SIGKILL)
        await asyncio.sleep(0.5)
        platform.start_service("onboarding")
        await platform.wait_ready(services=("onboarding",))

    sent = await under_load(world, SHARES["onboarding"], crash_onboarding)
    assert any(not s.ok for s in sent if s.kind != "attempt"), "the crash interrupted nothing (load too small?)"
    await check_exactly_once(world, sent)
    await check_read_models_equal_a_rebuild(world)


async def test_b_fresh_broker_on_the_same_port_under_load(world: World) -> None:
    broker = world.platform.platform.broker
    port = broker.port

    async def lose_the_broker() -> None:
        await broker.stop()
        await asyncio.sleep(1.0)
        await broker.start()
        assert broker.port == port, "the broker came back on another port"

    sent = await under_load(world, SHARES["broker"], lose_the_broker)
    await check_exactly_once(world, sent)
    await check_read_models_equal_a_rebuild(world)


async def test_c_metrics_sigkilled_and_restarted_under_load(world: World) -> None:
    platform = world.platform.platform

    async def crash_metrics() -> None:
        await asyncio.to_thread(platform.kill_service, "metrics", signal.SIGKILL)
        await asyncio.sleep(0.5)
        platform.start_service("metrics")
        await platform.wait_ready(services=("metrics",))

    sent = await under_load(world, SHARES["metrics"], crash_metrics)
    await check_exactly_once(world, sent)
    await check_read_models_equal_a_rebuild(world)
    assert len(world.sent) >= TOTAL_COMMANDS * 0.95, f"only {len(world.sent)} commands sent"
