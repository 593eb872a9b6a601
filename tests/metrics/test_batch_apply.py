"""The live path's batch handler leaves exactly the rows the per-event handler leaves."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from events.envelope import RecordedEvent
from events.store import NewEvent
from services.metrics.consumers import projections_batch_handler, projections_handler
from services.metrics.projections import PROJECTIONS
from services.metrics.writer import LiveApplier, ensure_projections
from services.runtime.db import create_engine
from services.runtime.migrations import migrate
from tests.metrics.conftest import days_ago, source_stores
from tests.metrics.test_rebuild import journey, read_model_rows
from tests.support.databases import fresh_database


@asynccontextmanager
async def metrics_engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url)
    try:
        await migrate(engine, "metrics")
        await ensure_projections(engine)
        yield engine
    finally:
        await engine.dispose()


async def recorded_history(tmp_path: Path) -> list[RecordedEvent]:
    """A mixed history of 25 partners, appended to real source stores."""
    out: list[RecordedEvent] = []
    async with source_stores(tmp_path) as stores:
        for event, ago in journey(random.Random(11), 25):
            stream = f"{event.type.split('.')[0]}-{event.partner_id}"
            out += await stores[event.source].append(
                stream_id=stream, expected_version=None, events=[NewEvent(event, occurred_at=days_ago(ago))]
            )
    return out


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def two_databases(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    if request.param == "sqlite":
        async with (
            metrics_engine(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}") as one,
            metrics_engine(f"sqlite+aiosqlite:///{tmp_path / 'batched.db'}") as batched,
        ):
            yield one, batched
        return
    server = request.getfixturevalue("postgres_url")
    async with (
        fresh_database(server, prefix="mx_one") as one_url,
        fresh_database(server, prefix="mx_batched") as batched_url,
        metrics_engine(one_url) as one,
        metrics_engine(batched_url) as batched,
    ):
        yield one, batched


async def test_batches_of_any_size_leave_the_rows_of_one_event_at_a_time(
    two_databases: tuple[AsyncEngine, AsyncEngine], tmp_path: Path
) -> None:
    one, batched = two_databases
    events = await recorded_history(tmp_path)
    projections = list(PROJECTIONS.values())
    handle = projections_handler(projections, LiveApplier())
    handle_batch = projections_batch_handler(projections, LiveApplier())

    for event in events:
        async with one.begin() as conn:
            await handle(conn, event)
    # Several events of one partner and one integration land in the same batch, so keyed
    # rows are changed more than once per batch (the funnel, time to partnership, uptime).
    rng = random.Random(5)
    start = 0
    while start < len(events):
        size = rng.choice([1, 2, 7, 40, 120])
        async with batched.begin() as conn:
            await handle_batch(conn, events[start : start + size])
        start += size

    expected = await read_model_rows(one)
    assert sum(len(rows) for rows in expected.values()) > 150
    assert await read_model_rows(batched) == expected
