"""`BatchedEffects` (events/store.py), which the partners read model relies on.

One apply per group commit instead of one statement per append; a failing apply falls
back to committing each append alone, so one bad effect fails only its own command.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from events.catalog import PartnerApplied
from events.envelope import RecordedEvent
from events.schema import store_metadata
from events.store import BatchedEffects, EventStore
from services.runtime.clock import ManualClock
from services.runtime.db import create_engine


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(store_metadata.create_all)
    store = EventStore(engine, source="onboarding", now=ManualClock().now)
    try:
        yield store
    finally:
        await store.close()
        await engine.dispose()


def applied(n: int) -> PartnerApplied:
    return PartnerApplied(
        partner_id=f"p{n}", name=f"P{n}", website="https://p.example.com/", category="c", contact_email="a@p.example.com"
    )


async def test_concurrent_appends_share_one_apply(store: EventStore) -> None:
    calls: list[list[tuple[Any, int]]] = []

    async def apply(conn: AsyncConnection, items: list[tuple[Any, list[RecordedEvent]]]) -> None:
        calls.append([(item, recorded[0].stream_version) for item, recorded in items])

    await asyncio.gather(
        *(
            store.append(stream_id=f"s-{n}", expected_version=0, events=[applied(n)], effects=BatchedEffects(apply, n))
            for n in range(10)
        )
    )
    assert calls == [[(n, 1) for n in range(10)]]


async def test_a_failing_apply_fails_only_its_own_append(store: EventStore) -> None:
    applied_items: list[int] = []

    async def apply(conn: AsyncConnection, items: list[tuple[Any, list[RecordedEvent]]]) -> None:
        if any(item == 3 for item, _ in items):
            raise RuntimeError("read model refused item 3")
        applied_items.extend(item for item, _ in items)

    outcomes = await asyncio.gather(
        *(
            store.append(stream_id=f"s-{n}", expected_version=0, events=[applied(n)], effects=BatchedEffects(apply, n))
            for n in range(6)
        ),
        return_exceptions=True,
    )
    assert [isinstance(o, RuntimeError) for o in outcomes] == [False, False, False, True, False, False]
    assert sorted(applied_items) == [0, 1, 2, 4, 5]
    assert await store.stream_version("s-3") == 0
    assert [e.stream_id for e in await store.read_all()] == ["s-0", "s-1", "s-2", "s-4", "s-5"]
