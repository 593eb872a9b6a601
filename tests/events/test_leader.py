"""One active worker among replicas: the PostgreSQL advisory lock behind `Leadership`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from events.leader import Leadership, leading
from services.runtime.db import create_engine
from tests.support.databases import fresh_database
from tests.support.platform import eventually


@pytest.fixture
async def pg_engines(postgres_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two engines on one database: two replicas of a service."""
    async with fresh_database(postgres_url, "leader") as url:
        one, two = create_engine(url, pool_size=2), create_engine(url, pool_size=2)
        try:
            yield one, two
        finally:
            await one.dispose()
            await two.dispose()


@pytest.mark.postgres
async def test_one_replica_holds_the_lock_until_it_gives_it_up(pg_engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    name = f"test.{uuid.uuid4().hex}"
    first, second = (Leadership(engine, name, check_interval=0.05) for engine in pg_engines)
    assert await first.hold() and first.held
    assert not await second.hold() and not second.held
    assert await first.hold()  # holding is stable
    await first.release()
    assert await second.hold()
    assert not await first.hold()
    await second.release()


@pytest.mark.postgres
async def test_a_standby_takes_over_when_the_holder_s_connection_dies(
    pg_engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    name = f"test.{uuid.uuid4().hex}"
    first, second = (Leadership(engine, name, check_interval=0.05) for engine in pg_engines)
    assert await first.hold()
    # The holder's process dies: its session ends and the server releases the lock.
    assert first._conn is not None
    await first._conn.invalidate()

    async def second_leads() -> bool:
        return await second.hold()

    await eventually(second_leads, timeout=5)
    # The old holder notices at its next check (its connection came back as a new
    # session, without the lock) and stands by.
    async def first_stands_by() -> bool:
        return not await first.hold()

    await eventually(first_stands_by, timeout=5)
    assert not first.held and await second.hold()
    await second.release()


async def test_a_single_sqlite_process_always_leads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    try:
        leadership = Leadership(engine, "test.sqlite")
        assert await leadership.hold() and leadership.held
        assert await leading(leadership) and await leading(None)
    finally:
        await engine.dispose()
