"""Per-client token buckets sized by the partner's tier; in process, or shared through Redis.

Each client has a bucket of `burst` tokens refilled at `per_second`; a request takes one.
Answers carry the IETF draft headers (draft-ietf-httpapi-ratelimit-headers):
`RateLimit-Policy: "<tier>";q=<burst>;w=<seconds to refill the whole bucket>` and
`RateLimit: "<tier>";r=<tokens left>;t=<seconds until the bucket is full again>`, plus
`Retry-After` (seconds until one token is back) on 429.

With `PARTNERHUB_REDIS_URL` the bucket lives in Redis and is updated by one Lua script
using Redis' own clock, so any number of gateway processes enforce one limit together.
If Redis cannot be reached, the process falls back to its own buckets (logged), rather
than refusing all traffic.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from services.runtime.auth import Identity

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """A tier's bucket."""

    name: str
    per_second: float
    burst: float

    @property
    def policy(self) -> bytes:
        window = max(1, math.ceil(self.burst / self.per_second))
        return f'"{self.name}";q={int(self.burst)};w={window}'.encode()


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of taking one token."""

    allowed: bool
    remaining: float
    plan: Plan

    @property
    def retry_after(self) -> int:
        """Seconds until one token is back (at least 1)."""
        return max(1, math.ceil((1 - self.remaining) / self.plan.per_second))

    def headers(self) -> list[tuple[bytes, bytes]]:
        plan = self.plan
        reset = max(0, math.ceil((plan.burst - self.remaining) / plan.per_second))
        headers = [
            (b"ratelimit-policy", plan.policy),
            (b"ratelimit", f'"{plan.name}";r={max(0, math.floor(self.remaining))};t={reset}'.encode()),
        ]
        if not self.allowed:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        return headers


class Plans:
    """Tier → plan, from `PARTNERHUB_RATE_LIMITS` (ops and unknown tiers have defaults)."""

    def __init__(self, limits: dict[str, dict[str, float]], tier_of: Callable[[str], str | None]) -> None:
        self._plans = {
            name: Plan(name, float(limit["per_second"]), float(limit["burst"])) for name, limit in limits.items()
        }
        self._tier_of = tier_of

    def get(self, name: str) -> Plan:
        return self._plans.get(name) or self._plans["default"]

    def for_identity(self, identity: Identity) -> Plan:
        """Ops and internal clients: `ops`; partners: their tier as learned, else the token's, else `default`."""
        if identity.partner_id is None:
            return self.get("ops")
        tier = self._tier_of(identity.partner_id) or identity.tier
        return self.get(tier) if tier else self.get("default")


class Limiter(Protocol):
    async def take(self, key: str, plan: Plan) -> Decision: ...

    async def close(self) -> None: ...


class MemoryLimiter:
    """Buckets in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, list[float]] = {}
        self._clock = clock
        self._last_sweep = clock()

    def take_now(self, key: str, plan: Plan) -> Decision:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [plan.burst, now]
        tokens = min(plan.burst, bucket[0] + (now - bucket[1]) * plan.per_second)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        bucket[0], bucket[1] = tokens, now
        if now - self._last_sweep > 60:
            self._sweep(now)
        return Decision(allowed, tokens, plan)

    async def take(self, key: str, plan: Plan) -> Decision:
        return self.take_now(key, plan)

    def _sweep(self, now: float) -> None:
        # A bucket idle this long is full again: forgetting it changes nothing.
        self._last_sweep = now
        for key in [k for k, (_, at) in self._buckets.items() if now - at > 600]:
            del self._buckets[key]

    async def close(self) -> None:
        return None


# KEYS[1] bucket; ARGV: per_second, burst. Returns {allowed, tokens left as a string}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


class RedisLimiter:
    """Buckets in Redis, shared by every gateway process using the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str, timeout: float = 0.5) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._script = self._redis.register_script(_TAKE)
        self._prefix = prefix
        self._fallback = MemoryLimiter()
        self._failing_since: float | None = None

    async def take(self, key: str, plan: Plan) -> Decision:
        try:
            allowed, tokens = await self._script(keys=[self._prefix + key], args=[plan.per_second, plan.burst])
        except Exception as exc:  # noqa: BLE001 - any Redis failure: degrade to local buckets
            now = time.monotonic()
            if self._failing_since is None or now - self._failing_since > 60:
                log.warning("rate limiting falls back to in-process buckets: Redis failed: %s", exc)
                self._failing_since = now
            return self._fallback.take_now(key, plan)
        self._failing_since = None
        return Decision(bool(int(allowed)), float(tokens), plan)

    async def close(self) -> None:
        await self._redis.aclose()
