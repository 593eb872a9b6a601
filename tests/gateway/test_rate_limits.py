"""Per-client token buckets sized by tier, with IETF RateLimit headers and Retry-After on 429."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.gateway.ratelimit import MemoryLimiter, Plan
from services.gateway.tiers import record_tiers
from tests.gateway.support import InProcessGateway, Upstream, gateway_settings, in_process_gateway

LIMITS = {
    "default": {"per_second": 0.5, "burst": 3},
    "strategic": {"per_second": 0.5, "burst": 6},
    "ops": {"per_second": 0.5, "burst": 4},
}


@pytest.fixture
async def limited(tmp_path: Path, upstream: Upstream) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(gateway_settings(tmp_path, upstream.url, rate_limits=LIMITS)) as gateway:
        yield gateway


async def _burst(gateway: InProcessGateway, headers: dict[str, str], n: int) -> list[int]:
    return [(await gateway.http.get("/v1/kpis", headers=headers)).status_code for _ in range(n)]


async def test_burst_beyond_the_bucket_is_429_with_retry_after(limited: InProcessGateway, upstream: Upstream) -> None:
    creds = await limited.client(partner_id="ptn-unknown-tier", scopes=["kpis:read"])
    headers = await limited.bearer(creds)
    first = await limited.http.get("/v1/kpis", headers=headers)
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"] == '"default";q=3;w=6'
    assert re.fullmatch(r'"default";r=2;t=\d+', first.headers["ratelimit"])
    statuses = await _burst(limited, headers, 4)
    assert statuses[:2] == [200, 200] and statuses[2:] == [429, 429]
    refused = await limited.http.get("/v1/kpis", headers=headers)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    assert refused.headers["ratelimit"].startswith('"default";r=0;')
    assert len(upstream.seen) == 3


async def test_bucket_is_per_client_and_sized_by_the_learned_tier(limited: InProcessGateway) -> None:
    async with limited.ctx.runtime.engine.begin() as conn:
        await record_tiers(conn, {"ptn-big": "strategic"}, at=limited.ctx.runtime.clock.now())
    await limited.ctx.tiers.load()
    big = await limited.client(partner_id="ptn-big", scopes=["kpis:read"])
    small = await limited.client(partner_id="ptn-small", scopes=["kpis:read"])
    big_statuses = await _burst(limited, await limited.bearer(big), 8)
    small_statuses = await _burst(limited, await limited.bearer(small), 5)
    assert big_statuses.count(200) == 6
    assert small_statuses.count(200) == 3
    ops_statuses = await _burst(limited, await limited.bearer(limited.ops), 6)
    assert ops_statuses.count(200) == 4


def test_bucket_refills_at_the_configured_rate() -> None:
    now = [0.0]
    limiter = MemoryLimiter(clock=lambda: now[0])
    plan = Plan("t", per_second=2, burst=2)
    assert [limiter.take_now("k", plan).allowed for _ in range(3)] == [True, True, False]
    refused = limiter.take_now("k", plan)
    assert refused.retry_after == 1
    now[0] = 0.5  # one token back
    assert limiter.take_now("k", plan).allowed
    assert not limiter.take_now("k", plan).allowed
    now[0] = 100.0  # never more than the burst
    assert [limiter.take_now("k", plan).allowed for _ in range(3)] == [True, True, False]
