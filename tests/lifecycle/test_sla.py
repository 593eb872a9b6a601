"""The SLA monitor: breach and restore from probed transitions, hours of clock time without waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.lifecycle.integrations.destinations import networks
from services.lifecycle.integrations.prober import HealthProber
from services.lifecycle.integrations.sla import SlaMonitor
from tests.lifecycle.conftest import LOOPBACK, Components
from tests.lifecycle.health_servers import HealthServer
from tests.support.platform import eventually

HOUR = 3600.0


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    started = await HealthServer().start()
    try:
        yield started
    finally:
        await started.stop()


def monitor_for(components: Components) -> SlaMonitor:
    return SlaMonitor(engine=components.engine, store=components.store, clock=components.clock, check_interval=0.02)


async def test_breach_and_restore_follow_the_rolling_24h_uptime(components: Components, server: HealthServer) -> None:
    iid = await components.live_integration("ptn_a", server.url("/switch"), target=99.0)
    prober = HealthProber(
        engine=components.engine,
        store=components.store,
        clock=components.clock,
        interval=30.0,
        timeout=1.0,
        allow_nets=networks(LOOPBACK),
        refresh_interval=0.05,
        tick=0.01,
    )
    monitor = monitor_for(components)
    await prober.start()
    await monitor.start()

    async def health_is(*statuses: str) -> bool:
        return await components.health_of(iid) == list(statuses)

    async def sla_events() -> list[str]:
        return [r.type for r in await components.events_of(iid, "sla.breached", "sla.restored")]

    try:
        await eventually(lambda: _has_targets(prober))
        components.clock.advance(30)
        await eventually(lambda: health_is("up"))
        components.clock.advance(10 * HOUR)  # ten good hours

        server.mode = "down"
        components.clock.advance(30)
        await eventually(lambda: health_is("up", "down"))
        # Down for 5 minutes out of ~10 h: 99.2 %, still above the 99 % target.
        components.clock.advance(300)
        await _rounds(monitor, components, 3)
        assert await sla_events() == []
        # Down for 10 minutes: 98.4 %, breached.
        components.clock.advance(300)
        await eventually(lambda: _equals(sla_events, ["sla.breached"]))
        (breach,) = await components.events_of(iid, "sla.breached")
        assert breach.data["target_pct"] == 99.0 and 98.0 < breach.data["uptime_pct"] < 99.0
        assert breach.data["window_hours"] == 24 and breach.actor == "lifecycle.sla-monitor"

        server.mode = "up"
        components.clock.advance(30)
        await eventually(lambda: health_is("up", "down", "up"))
        components.clock.advance(2 * HOUR)
        await _rounds(monitor, components, 3)
        assert await sla_events() == ["sla.breached"]  # still below: the outage is inside the window

        # Once the outage has rolled out of the 24 h window, the SLA is restored.
        components.clock.advance(24 * HOUR)
        await eventually(lambda: _equals(sla_events, ["sla.breached", "sla.restored"]))
        (restore,) = await components.events_of(iid, "sla.restored")
        assert restore.data["uptime_pct"] == 100.0

        # A restarted monitor neither repeats nor forgets the state.
        await monitor.stop()
        monitor = monitor_for(components)
        await monitor.start()
        await _rounds(monitor, components, 3)
        assert await sla_events() == ["sla.breached", "sla.restored"]
    finally:
        await monitor.stop()
        await prober.stop()


async def test_no_known_time_means_no_verdict(components: Components) -> None:
    iid = await components.live_integration("ptn_a", "http://127.0.0.1:9/never-probed")
    components.clock.advance(48 * HOUR)
    assert await monitor_for(components).evaluate() == []
    assert await components.events_of(iid, "sla.breached", "sla.restored") == []


async def _has_targets(prober: HealthProber) -> bool:
    return bool(prober._targets)


async def _equals(get: object, expected: list[str]) -> bool:
    return await get() == expected  # type: ignore[operator,no-any-return]


async def _rounds(monitor: SlaMonitor, components: Components, count: int) -> None:
    # Evaluate a few times at the current clock (the component's loop does the same).
    for _ in range(count):
        await monitor.evaluate()
