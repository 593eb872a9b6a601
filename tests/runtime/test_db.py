"""The services' engines: SQLite keeps its connections and its writers take turns."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.runtime import db
from services.runtime.db import create_engine


async def test_sqlite_keeps_pool_size_connections_open_between_requests(tmp_path: Path) -> None:
    # SQLAlchemy's default for a SQLite file keeps five; each further connection was
    # opened (a thread, the file, the pragmas) and closed again by every request.
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}", pool_size=8)
    all_open = asyncio.Event()
    opened = 0

    async def request() -> None:
        nonlocal opened
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            opened += 1
            if opened == 8:
                all_open.set()
            await all_open.wait()

    try:
        await asyncio.wait_for(asyncio.gather(*(request() for _ in range(8))), 10)
        assert engine.sync_engine.pool.checkedin() == 8  # type: ignore[attr-defined]
        async with engine.connect() as conn:  # a connection from the pool, not a new one
            assert engine.sync_engine.pool.checkedin() == 7  # type: ignore[attr-defined]
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
    finally:
        await engine.dispose()


async def _table(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (n INTEGER PRIMARY KEY)"))


async def test_sqlite_writers_take_turns_instead_of_failing_on_the_busy_timeout(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}")
    await _table(engine)
    first_wrote = asyncio.Event()
    order: list[str] = []

    async def first() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            first_wrote.set()
            await asyncio.sleep(0.3)  # holds SQLite's write lock meanwhile
            order.append("first commits")

    async def second() -> None:
        await first_wrote.wait()
        async with engine.begin() as conn:
            # Without turns this connection would sleep in SQLite's busy handler and give
            # up after 50 ms ("database is locked"); with them it waits for its turn.
            await conn.execute(text("PRAGMA busy_timeout=50"))
            await conn.execute(text("INSERT INTO t VALUES (2)"))
            order.append("second wrote")

    try:
        await asyncio.wait_for(asyncio.gather(first(), second()), 10)
        assert order == ["first commits", "second wrote"]
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 2
    finally:
        await engine.dispose()


async def test_a_sqlite_turn_ends_with_a_rollback_or_a_failed_statement(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}")
    await _table(engine)
    try:
        with pytest.raises(RuntimeError):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
                raise RuntimeError("handler failed")
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
                await conn.execute(text("INSERT INTO t VALUES (1)"))
        async with engine.connect() as conn:
            await conn.execute(text("INSERT INTO t VALUES (3)"))
            await conn.rollback()
        async with asyncio.timeout(2):  # every turn above was given back
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (4)"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT n FROM t"))).scalars().all() == [4]
    finally:
        await engine.dispose()


async def test_a_sqlite_writer_that_waits_past_the_lock_timeout_gets_database_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "SQLITE_LOCK_TIMEOUT", 0.2)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}")
    await _table(engine)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    try:
        await holding.wait()
        with pytest.raises(OperationalError, match="database is locked"):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (2)"))
    finally:
        release.set()
        await holder
        await engine.dispose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call queued for an aiosqlite connection's thread, by function name."""
    seen: list[str] = []
    queue = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await queue(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return seen


async def test_sqlite_statements_run_on_the_event_loop_thread_without_a_trip(
    tmp_path: Path, trips: list[str]
) -> None:
    # SQLAlchemy's stock adapter made four trips to aiosqlite's thread per SELECT
    # (cursor, execute, fetchall, close) and three per write; the pool's rollback after
    # a read made one more. With no other connection holding a lock, none is made.
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'trips.db'}")
    try:
        await _table(engine)
        async with engine.connect() as conn:  # a warm pooled connection
            await conn.execute(text("SELECT 1"))
        trips.clear()

        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            await conn.execute(text("INSERT INTO t VALUES (:n)"), [{"n": 2}, {"n": 3}])
            await conn.execute(text("UPDATE t SET n = n + 10 WHERE n > 1"))
        async with engine.connect() as conn:
            await conn.execute(text("INSERT INTO t VALUES (4)"))  # rolled back when the block ends
        assert trips == []
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT n FROM t ORDER BY n"))).scalars().all() == [1, 12, 13]
    finally:
        await engine.dispose()


async def test_a_sqlite_write_waiting_for_another_process_lock_leaves_the_event_loop_running(
    tmp_path: Path, trips: list[str]
) -> None:
    # Another process (the CLI, a rebuild) holding the write lock makes our first write
    # sleep in SQLite's busy handler. That sleep must happen on aiosqlite's thread: the
    # service keeps reading and answering meanwhile.
    path = tmp_path / "other.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await _table(engine)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t VALUES (1)")

        async def write() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (2)"))

        writer = asyncio.create_task(write())
        reads = 0
        deadline = asyncio.get_running_loop().time() + 0.5
        while asyncio.get_running_loop().time() < deadline:
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
            reads += 1
            await asyncio.sleep(0.01)
        assert not writer.done()  # still waiting for the other process
        assert reads >= 10  # ~40 at a 10 ms pace; a blocked loop would manage one at most
        # The write found the lock taken and went to wait on the thread; the reads stayed
        # inline (the trips besides are new pooled connections being opened).
        assert [trip for trip in trips if trip in ("_waiting", "_run_statement")] == ["_waiting"]
        threading.Timer(0.05, other.commit).start()
        await asyncio.wait_for(writer, 10)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT n FROM t ORDER BY n"))).scalars().all() == [1, 2]
    finally:
        other.close()
        await engine.dispose()


async def test_a_sqlite_write_waiting_past_the_lock_timeout_for_another_process_gets_database_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "SQLITE_LOCK_TIMEOUT", 0.2)
    path = tmp_path / "other.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await _table(engine)
        other.execute("BEGIN IMMEDIATE")
        started = asyncio.get_running_loop().time()
        with pytest.raises(OperationalError, match="database is locked"):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
        assert asyncio.get_running_loop().time() - started >= 0.2  # waited out the timeout, not 0
        other.execute("ROLLBACK")
        async with engine.begin() as conn:  # the connection is usable, with its inline timeout back at 0
            await conn.execute(text("INSERT INTO t VALUES (2)"))
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 0
    finally:
        other.close()
        await engine.dispose()


async def test_inline_statements_report_rows_counts_and_errors_as_before(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'results.db'}")
    try:
        await _table(engine)
        async with engine.begin() as conn:
            inserted = await conn.execute(text("INSERT INTO t VALUES (:n)"), [{"n": 1}, {"n": 2}, {"n": 3}])
            assert inserted.rowcount == 3
            single = await conn.execute(text("INSERT INTO t VALUES (10)"))
            assert single.lastrowid == 10
            updated = await conn.execute(text("UPDATE t SET n = n + 100 WHERE n < 3"))
            assert updated.rowcount == 2
            result = await conn.execute(text("SELECT n, n * 2 AS twice FROM t ORDER BY n"))
            assert list(result.keys()) == ["n", "twice"]
            assert [tuple(row) for row in result] == [(3, 6), (10, 20), (101, 202), (102, 204)]
            assert (await conn.execute(text("SELECT n FROM t WHERE n < 0"))).first() is None
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (4)"))
                await conn.execute(text("INSERT INTO t VALUES (3)"))
        async with engine.connect() as conn:  # the failed transaction left nothing behind
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 4
        async with engine.connect() as conn:
            streamed = await conn.stream(text("SELECT n FROM t ORDER BY n"))  # server-side cursor
            assert [row[0] async for row in streamed] == [3, 10, 101, 102]
    finally:
        await engine.dispose()
