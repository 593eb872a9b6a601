"""The SLA monitor: rolling 24 h uptime per live integration from its own health transitions.

Every `check_interval` it reads the live integrations and their transitions in the
window (plus the last one before it, which gives the status at the window's start),
computes uptime (unknown time excluded) and appends `sla.breached` when it falls below
the integration's target, `sla.restored` when it is back at or above it. The breach
state lives in the stream, so a restart neither repeats nor forgets a breach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from events.envelope import EventMetadata, RecordedEvent
from events.leader import Leadership, leading
from events.store import ConcurrencyError, EventStore
from services.lifecycle.integrations import handlers
from services.lifecycle.integrations.domain import SLA_WINDOW_HOURS, EvaluateSla
from services.lifecycle.integrations.uptime import rolling_uptime
from services.lifecycle.tables import health_transitions, integrations
from services.runtime.clock import Clock

log = logging.getLogger(__name__)

ACTOR = "lifecycle.sla-monitor"


class SlaMonitor:
    """Component (start/stop) appending `sla.breached` / `sla.restored` on crossings."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        store: EventStore,
        clock: Clock,
        check_interval: float = 30.0,
        window_hours: int = SLA_WINDOW_HOURS,
        leadership: Leadership | None = None,
    ) -> None:
        self._engine = engine
        self._store = store
        self._clock = clock
        self._check_interval = check_interval
        self.window_hours = window_hours
        self._task: asyncio.Task[None] | None = None
        self._leadership = leadership

    async def start(self) -> None:
        """Start evaluating every `check_interval` seconds."""
        self._task = asyncio.create_task(self._run(), name="lifecycle-sla-monitor")

    async def stop(self) -> None:
        """Stop evaluating."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._leadership is not None:
            await self._leadership.release()

    async def _run(self) -> None:
        while True:
            try:
                if await leading(self._leadership):  # one monitor per fleet
                    await self.evaluate()
            except Exception:  # keep monitoring after a database hiccup
                log.exception("SLA evaluation failed")
            await asyncio.sleep(self._check_interval)

    async def evaluate(self) -> list[RecordedEvent]:
        """One round over every live integration; the events it appended."""
        now = self._clock.now()
        window_start = now - timedelta(hours=self.window_hours)
        live = integrations.c.status == "live"
        in_window = (
            select(health_transitions.c.integration_id, health_transitions.c.at, health_transitions.c.status)
            .join(integrations, integrations.c.integration_id == health_transitions.c.integration_id)
            .where(live, health_transitions.c.at >= window_start, health_transitions.c.at <= now)
            .order_by(health_transitions.c.at, health_transitions.c.position)
        )
        last_before = (
            select(health_transitions.c.integration_id, func.max(health_transitions.c.position).label("position"))
            .where(health_transitions.c.at < window_start)
            .group_by(health_transitions.c.integration_id)
            .subquery()
        )
        before = (
            select(health_transitions.c.integration_id, health_transitions.c.at, health_transitions.c.status)
            .join(last_before, last_before.c.position == health_transitions.c.position)
            .join(integrations, integrations.c.integration_id == health_transitions.c.integration_id)
            .where(live)
        )
        timelines: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        targets = select(
            integrations.c.integration_id, integrations.c.sla_uptime_target_pct, integrations.c.sla_status
        ).where(live)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(targets)).all()
            for query in (before, in_window):
                for integration_id, at, status in await conn.execute(query):
                    timelines[integration_id].append((at, status))
        appended: list[RecordedEvent] = []
        for index, (integration_id, target, sla_status) in enumerate(rows):
            if index % 100 == 99:
                await asyncio.sleep(0)  # thousands of integrations must not hold up the probes
            uptime = rolling_uptime(timelines.get(integration_id, ()), window_start=window_start, now=now)
            if uptime is None or (uptime < target) == (sla_status == "breached"):
                continue  # no crossing (the aggregate decides again below for candidates)
            state = await handlers.load(self._engine, integration_id)
            if state is None:
                continue
            try:
                _, recorded = await handlers.execute(
                    self._store, state, EvaluateSla(uptime, self.window_hours), metadata=EventMetadata(actor=ACTOR)
                )
            except ConcurrencyError:
                continue  # the stream moved on; the next round decides again
            appended.extend(recorded)
        return appended
