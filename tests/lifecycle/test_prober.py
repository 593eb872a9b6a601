"""The health prober against real local HTTP servers, on a manual clock."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from events.leader import Leadership
from services.lifecycle.integrations.destinations import networks
from services.lifecycle.integrations.prober import HealthProber, _offset
from tests.lifecycle.conftest import LOOPBACK, Components
from tests.lifecycle.health_servers import HealthServer
from tests.support.platform import eventually

TIMEOUT = 1.0


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    started = await HealthServer().start()
    try:
        yield started
    finally:
        await started.stop()


def prober_for(components: Components, **overrides: object) -> HealthProber:
    options: dict[str, object] = {
        "interval": 30.0,
        "timeout": TIMEOUT,
        "allow_nets": networks(LOOPBACK),
        "refresh_interval": 0.05,
        "tick": 0.01,
    } | overrides
    return HealthProber(engine=components.engine, store=components.store, clock=components.clock, **options)  # type: ignore[arg-type]


async def round_done(prober: HealthProber, started_before: int, expected: int) -> None:
    """Wait until `expected` more probes started and every probe in flight finished."""

    async def check() -> bool:
        stats = prober.stats
        return stats.probes >= started_before + expected and stats.completed == stats.probes

    await eventually(check, timeout=10)


async def test_transitions_are_recorded_once_each_and_a_hanging_endpoint_delays_no_one(
    components: Components, server: HealthServer
) -> None:
    switch = await components.live_integration("ptn_a", server.url("/switch"))
    hang = await components.live_integration("ptn_a", server.url("/hang"))
    redirect = await components.live_integration("ptn_b", server.url("/redirect"))
    healthy = await components.live_integration("ptn_b", server.url("/up"))
    prober = prober_for(components)
    await prober.start()
    try:
        await eventually(lambda: _targets(prober, 4))
        # Round 1: every integration falls due when the clock moves one interval.
        components.clock.advance(30)
        probing_started = time.monotonic()

        async def healthy_recorded() -> bool:
            return await components.health_of(healthy) == ["up"] and await components.health_of(switch) == ["up"]

        await eventually(healthy_recorded, timeout=5)
        # The healthy ones are recorded while the hanging probe still waits for its deadline.
        assert time.monotonic() - probing_started < TIMEOUT
        assert await components.health_of(hang) == []

        async def hang_down() -> bool:
            return await components.health_of(hang) == ["down"]

        await eventually(hang_down, timeout=5)
        (down,) = await components.events_of(hang, "integration.health_changed")
        assert down.data["reason"] == f"no answer within {TIMEOUT:g}s"
        assert TIMEOUT * 1000 <= down.data["latency_ms"] < TIMEOUT * 1000 + 1000
        assert await components.health_of(redirect) == ["down"]
        (redirected,) = await components.events_of(redirect, "integration.health_changed")
        assert redirected.data["reason"] == "HTTP 302 redirect (redirects are not followed)"
        assert server.hits["/redirect-target"] == 0
        await round_done(prober, 0, 4)

        # Round 2: the switchable endpoint goes down.
        server.mode = "down"
        before = prober.stats.probes
        components.clock.advance(30)
        await round_done(prober, before, 4)
        assert await components.health_of(switch) == ["up", "down"]
        (switched,) = (await components.events_of(switch, "integration.health_changed"))[1:]
        assert switched.data["reason"] == "HTTP 503"

        # Round 3: nothing changed, so nothing is recorded.
        before = prober.stats.probes
        components.clock.advance(30)
        await round_done(prober, before, 4)

        # Round 4: back up.
        server.mode = "up"
        before = prober.stats.probes
        components.clock.advance(30)
        await round_done(prober, before, 4)
    finally:
        await prober.stop()

    assert await components.health_of(switch) == ["up", "down", "up"]
    assert await components.health_of(hang) == ["down"]
    assert await components.health_of(redirect) == ["down"]
    assert await components.health_of(healthy) == ["up"]
    assert server.hits["/up"] == 4 and server.hits["/hang"] == 4
    assert prober.stats.transitions == 6


async def test_probes_are_spread_over_the_interval(components: Components, server: HealthServer) -> None:
    ids = [await components.live_integration("ptn_a", server.url("/up")) for _ in range(20)]
    prober = prober_for(components)
    await prober.start()
    try:
        await eventually(lambda: _targets(prober, len(ids)))
        # Half an interval in, exactly those whose slot lies in that half were probed.
        now = components.clock.now().timestamp()
        first_half = sum((_offset(i) * 30 - now) % 30 <= 15 for i in ids)
        assert 0 < first_half < len(ids)
        components.clock.advance(15)
        await round_done(prober, 0, first_half)
        await eventually(lambda: _settled(prober))
        assert prober.stats.probes == first_half
        components.clock.advance(15)
        await round_done(prober, first_half, len(ids) - first_half)
        assert prober.stats.probes == len(ids)
    finally:
        await prober.stop()


async def test_retired_integrations_are_no_longer_probed(components: Components, server: HealthServer) -> None:
    from services.lifecycle.integrations import handlers
    from services.lifecycle.integrations.domain import Retire

    iid = await components.live_integration("ptn_a", server.url("/up"))
    prober = prober_for(components)
    await prober.start()
    try:
        await eventually(lambda: _targets(prober, 1))
        state = await handlers.load(components.engine, iid)
        assert state is not None
        await handlers.execute(components.store, state, Retire("done"))
        await eventually(lambda: _targets(prober, 0))
        components.clock.advance(60)
        await eventually(lambda: _settled(prober))
    finally:
        await prober.stop()
    assert server.hits["/up"] == 0
    assert await components.health_of(iid) == []


async def test_destinations_outside_the_allow_list_are_down_without_a_request(
    components: Components, server: HealthServer
) -> None:
    iid = await components.live_integration("ptn_a", server.url("/up"))
    prober = prober_for(components, allow_nets=())
    await prober.start()
    try:
        await eventually(lambda: _targets(prober, 1))
        components.clock.advance(30)

        async def down() -> bool:
            return await components.health_of(iid) == ["down"]

        await eventually(down)
    finally:
        await prober.stop()
    assert server.hits["/up"] == 0
    (event,) = await components.events_of(iid, "integration.health_changed")
    assert "not allowed" in event.data["reason"]


async def test_only_the_lock_holder_probes_and_a_standby_takes_over(
    components: Components, server: HealthServer
) -> None:
    """Two replicas on one PostgreSQL: each integration is probed once per interval, not twice."""
    if components.engine.dialect.name != "postgresql":
        pytest.skip("one process owns a SQLite file: there is no second replica to elect against")
    integration = await components.live_integration("ptn_a", server.url("/up"))

    def replica() -> HealthProber:
        return prober_for(components, leadership=Leadership(components.engine, "test.prober", check_interval=0.05))

    first, second = replica(), replica()
    await first.start()
    await eventually(lambda: _targets(first, 1))
    await second.start()
    try:
        components.clock.advance(30)
        await round_done(first, 0, 1)
        assert await components.health_of(integration) == ["up"]
        assert second.stats.probes == 0 and not second._targets

        await first.stop()  # gives the lock up; the standby takes over
        await eventually(lambda: _targets(second, 1))
        components.clock.advance(30)
        await round_done(second, 0, 1)
        assert first.stats.probes == 1
    finally:
        await second.stop()
        await first.stop()


async def _targets(prober: HealthProber, count: int) -> bool:
    return len(prober._targets) == count


async def _settled(prober: HealthProber) -> bool:
    return prober.stats.completed == prober.stats.probes and not prober._inflight
