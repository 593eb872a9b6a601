"""The health prober: calls the `health_url` of every live integration on a schedule.

- One scheduler loop keeps a heap of due times (from the injected clock). Each
  integration has a fixed slot inside the interval (an offset derived from its id,
  counted from the epoch, so it survives restarts), so probes are spread over the
  interval instead of bursting at its start; the next probe is due
  one interval after the previous due time (no drift), and missed rounds are skipped.
- Probes run as tasks under a concurrency bound; each has an overall deadline (the
  probe timeout), so a stuck endpoint holds only its own slot until the deadline, and a
  new probe of an integration is not started while its previous one is still running.
- httpx without redirects: 2xx is up; a redirect, any other status, a timeout, a
  connection error or a destination outside the allow-list is down. Its transport
  (`probe_transport.ProbeTransport`) resolves the host once, connects only to an address
  the allow rule accepted (no DNS-rebinding gap) and closes after the status line; the
  body is never read.
- `integration.health_changed` is appended only when the status differs from the
  stream's (checked against the integration's state, appended at its version).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from events.envelope import EventMetadata
from events.leader import Leadership, leading
from events.store import ConcurrencyError, EventStore
from services.lifecycle.integrations import handlers
from services.lifecycle.integrations.destinations import Network
from services.lifecycle.integrations.domain import ObserveHealth
from services.lifecycle.integrations.probe_transport import DestinationRefused, ProbeTransport
from services.lifecycle.tables import integrations
from services.runtime.clock import Clock

log = logging.getLogger(__name__)

USER_AGENT = "partnerhub-prober/1.0"
ACTOR = "lifecycle.prober"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    status: Literal["up", "down"]
    reason: str
    latency_ms: float


@dataclass(slots=True)
class _Target:
    integration_id: str
    url: str
    due: datetime
    health: str


@dataclass(slots=True)
class ProbeStats:
    """Counters for tests, benchmarks and metrics."""

    probes: int = 0
    completed: int = 0
    transitions: int = 0
    skipped_busy: int = 0
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    """Seconds between a probe's due time and its start (clock time)."""


class HealthProber:
    """Component (start/stop) probing live integrations and recording health transitions."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        store: EventStore,
        clock: Clock,
        interval: float = 30.0,
        timeout: float = 5.0,
        concurrency: int = 100,
        allow_nets: tuple[Network, ...] = (),
        refresh_interval: float = 5.0,
        tick: float = 0.1,
        leadership: Leadership | None = None,
    ) -> None:
        if interval <= 0 or timeout <= 0 or concurrency < 1:
            raise ValueError("interval and timeout must be positive, concurrency at least 1")
        self._engine = engine
        self._store = store
        self._clock = clock
        self.interval = timedelta(seconds=interval)
        self.timeout = timeout
        self._allow = allow_nets
        self._refresh_interval = refresh_interval
        self._tick = tick
        self._semaphore = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._targets: dict[str, _Target] = {}
        self._heap: list[tuple[datetime, str]] = []
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._refresh_now = asyncio.Event()
        # Several replicas: only the holder of the lock probes (None: always this one).
        self._leadership = leadership
        self.stats = ProbeStats()

    # --- component ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start probing (the list of live integrations is read right away)."""
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(self.timeout),
            # No keep-alive: each integration is its own host, probed every interval, far
            # beyond any idle timeout; idle pooled connections only make every request
            # scan them (httpcore checks each for expiry).
            limits=httpx.Limits(max_connections=self._concurrency, max_keepalive_connections=0),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,
            # One short connection per probe, to an address checked against the allow rule.
            transport=ProbeTransport(self._allow),
        )
        self._task = asyncio.create_task(self._run(), name="lifecycle-prober")

    async def stop(self) -> None:
        """Stop the scheduler and cancel probes in flight."""
        tasks = [t for t in (self._task, *self._inflight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._inflight.clear()
        if self._leadership is not None:
            await self._leadership.release()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def refresh(self) -> None:
        """Re-read the live integrations at the next tick (e.g. after one went live)."""
        self._refresh_now.set()

    # --- scheduling ---------------------------------------------------------------------

    async def _run(self) -> None:
        next_refresh = 0.0
        while True:
            if not await leading(self._leadership):
                # A standby: another replica probes. Forget the schedule; on taking over,
                # the live integrations are read again at once.
                self._targets.clear()
                self._heap.clear()
                next_refresh = 0.0
                await asyncio.sleep(self._refresh_interval)
                continue
            if time.monotonic() >= next_refresh or self._refresh_now.is_set():
                self._refresh_now.clear()
                try:
                    await self._refresh()
                except Exception:  # a database hiccup must not stop probing
                    log.exception("reading live integrations failed")
                next_refresh = time.monotonic() + self._refresh_interval
            now = self._clock.now()
            self._dispatch_due(now)
            wait = (self._heap[0][0] - now).total_seconds() if self._heap else self._tick
            await asyncio.sleep(max(0.0, min(wait, self._tick)))

    def _dispatch_due(self, now: datetime) -> None:
        while self._heap and self._heap[0][0] <= now:
            due, integration_id = heapq.heappop(self._heap)
            target = self._targets.get(integration_id)
            if target is None or target.due != due:
                continue  # retired, or rescheduled since this entry was pushed
            target.due = _next_due(due, now, self.interval)
            heapq.heappush(self._heap, (target.due, integration_id))
            if integration_id in self._inflight:
                self.stats.skipped_busy += 1
                continue
            self._inflight[integration_id] = asyncio.create_task(
                self._probe(target, due), name=f"probe:{integration_id}"
            )

    async def _refresh(self) -> None:
        query = select(integrations.c.integration_id, integrations.c.health_url, integrations.c.health).where(
            integrations.c.status == "live", integrations.c.health_url.is_not(None)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        now = self._clock.now()
        live: set[str] = set()
        for integration_id, url, health in rows:
            live.add(integration_id)
            target = self._targets.get(integration_id)
            if target is None:
                due = _first_due(now, self.interval, _offset(integration_id))
                self._targets[integration_id] = _Target(integration_id, url, due, health)
                heapq.heappush(self._heap, (due, integration_id))
            elif integration_id not in self._inflight:
                target.health = health
        for gone in set(self._targets) - live:
            del self._targets[gone]
        if len(self._heap) > 2 * len(self._targets) + 64:
            self._heap = [(t.due, t.integration_id) for t in self._targets.values()]
            heapq.heapify(self._heap)

    # --- probing ------------------------------------------------------------------------

    async def _probe(self, target: _Target, due: datetime) -> None:
        try:
            async with self._semaphore:
                self.stats.lateness.append((self._clock.now() - due).total_seconds())
                self.stats.probes += 1
                result = await self.check(target.url)
            if result.status != target.health:
                await self._record(target, result)
        except asyncio.CancelledError:
            raise
        except Exception:  # one failed probe (or its append) must not stop the others
            log.exception("probing %s failed", target.integration_id)
        finally:
            self.stats.completed += 1
            self._inflight.pop(target.integration_id, None)

    async def check(self, url: str) -> ProbeResult:
        """Call `url` once: up on 2xx, down otherwise (never raises)."""
        assert self._client is not None, "start() the prober first"
        started = time.perf_counter()

        def result(status: Literal["up", "down"], reason: str) -> ProbeResult:
            return ProbeResult(status, reason[:300], round((time.perf_counter() - started) * 1000, 2))

        try:
            async with asyncio.timeout(self.timeout):
                response = await self._client.get(url)  # the status line is the answer
        except DestinationRefused as exc:
            return result("down", str(exc))
        except TimeoutError:
            return result("down", f"no answer within {self.timeout:g}s")
        except httpx.TimeoutException:
            return result("down", f"no answer within {self.timeout:g}s")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return result("down", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        code = response.status_code
        if 200 <= code < 300:
            return result("up", f"HTTP {code}")
        if 300 <= code < 400:
            return result("down", f"HTTP {code} redirect (redirects are not followed)")
        return result("down", f"HTTP {code}")

    async def _record(self, target: _Target, result: ProbeResult) -> None:
        command = ObserveHealth(result.status, result.reason, result.latency_ms)
        for _ in range(3):
            state = await handlers.load(self._engine, target.integration_id)
            if state is None or state.status != "live":
                return
            try:
                new_state, recorded = await handlers.execute(
                    self._store, state, command, metadata=EventMetadata(actor=ACTOR)
                )
            except ConcurrencyError:
                continue  # an attempt or another writer moved the stream: decide again
            target.health = new_state.health
            self.stats.transitions += len(recorded)
            return


def _offset(integration_id: str) -> float:
    """A stable fraction in [0, 1) spreading integrations over the interval."""
    digest = hashlib.blake2b(integration_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _first_due(now: datetime, interval: timedelta, offset: float) -> datetime:
    """The first time at or after `now` in the integration's slot (`offset` of each interval since the epoch)."""
    period = interval.total_seconds()
    phase = offset * period
    rounds = math.ceil((now.timestamp() - phase) / period)
    return datetime.fromtimestamp(rounds * period + phase, tz=UTC)


def _next_due(due: datetime, now: datetime, interval: timedelta) -> datetime:
    nxt = due + interval
    if nxt <= now:
        # Missed rounds (a pause, or a clock moved by hand) are skipped, keeping the offset.
        missed = (now - due) // interval
        nxt = due + interval * (missed + 1)
    return nxt
