"""Traffic windows: per (partner, route group) and minute, what the gateway answered and how fast.

Every closed window with traffic becomes one `gateway.traffic_window_closed` event in the
gateway's store (the relay publishes it; metrics computes API availability from it).
Ops and anonymous traffic count under partner_id None. On shutdown the open windows are
flushed as partial windows (window_end = the moment of shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from events.catalog import GatewayTrafficWindowClosed
from events.store import EventStore, NewEvent

log = logging.getLogger(__name__)

SAMPLE_CAP = 100_000


@dataclass(slots=True)
class WindowStats:
    """Counts and latency samples of one (partner, route group) in one window."""

    total: int = 0
    server_errors: int = 0
    client_errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, status: int, ms: float) -> None:
        self.total += 1
        if status >= 500:
            self.server_errors += 1
        elif status >= 400:
            self.client_errors += 1
        if len(self.latencies) < SAMPLE_CAP:
            self.latencies.append(ms)
        else:  # reservoir sampling keeps the percentiles honest under heavy traffic
            slot = random.randrange(self.total)
            if slot < SAMPLE_CAP:
                self.latencies[slot] = ms


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


Key = tuple[str | None, str]


class TrafficRecorder:
    """Collects request outcomes and appends a window event per (partner, group) when a window closes."""

    def __init__(self, store: EventStore, *, window_seconds: int, now: Callable[[], datetime]) -> None:
        self._store = store
        self._window = window_seconds
        self._now = now
        self._start: float | None = None
        self._open: dict[Key, WindowStats] = {}
        self._closed: list[tuple[float, float, dict[Key, WindowStats]]] = []
        self._task: asyncio.Task[None] | None = None

    def record(self, partner_id: str | None, group: str, status: int, ms: float) -> None:
        """Count one answered request."""
        now = self._now().timestamp()
        start = now - now % self._window
        if start != self._start:
            self._roll(start)
        stats = self._open.get((partner_id, group))
        if stats is None:
            stats = self._open[(partner_id, group)] = WindowStats()
        stats.add(status, ms)

    def _roll(self, start: float) -> None:
        if self._start is not None and self._open:
            self._closed.append((self._start, self._start + self._window, self._open))
        self._open = {}
        self._start = start

    async def flush(self, *, final: bool = False) -> int:
        """Append events for every closed window (and, when `final`, the open one); returns how many."""
        now = self._now().timestamp()
        if self._start is not None and (final or now >= self._start + self._window):
            if final and self._open:
                self._closed.append((self._start, min(now, self._start + self._window), self._open))
                self._open = {}
                self._start = None
            elif not final:
                self._roll(now - now % self._window)
        appended = 0
        while self._closed:
            start, end, windows = self._closed[0]
            await self._append(start, end, windows)
            self._closed.pop(0)
            appended += len(windows)
        return appended

    async def _append(self, start: float, end: float, windows: dict[Key, WindowStats]) -> None:
        window_start = datetime.fromtimestamp(start, UTC)
        window_end = datetime.fromtimestamp(end, UTC)
        events: list[NewEvent] = []
        for (partner_id, group), stats in sorted(windows.items(), key=lambda item: (item[0][0] or "", item[0][1])):
            latencies = sorted(stats.latencies)
            event = GatewayTrafficWindowClosed(
                partner_id=partner_id,
                route_group=group,
                window_start=window_start.isoformat(),
                window_end=window_end.isoformat(),
                total=stats.total,
                server_errors=stats.server_errors,
                client_errors=stats.client_errors,
                p50_ms=round(percentile(latencies, 0.50), 3),
                p99_ms=round(percentile(latencies, 0.99), 3),
            )
            events.append(NewEvent(event, occurred_at=window_end))
        # One append per window: all of its (partner, group) rows commit together or not at all.
        await self._store.append(
            stream_id=f"traffic-{window_start:%Y%m%dT%H%M%S}", expected_version=None, events=events
        )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._tick(), name="traffic-windows")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush(final=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.flush()
            except Exception:  # windows stay queued; retried next tick
                log.exception("appending traffic windows failed; retrying")
