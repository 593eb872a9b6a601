"""Async engines for a service's own database (PostgreSQL in production, SQLite embedded)."""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.util import await_only

from events.envelope import json_text


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and a directory to live in.

    Both keep `pool_size` connections and open up to as many more under load. SQLite's
    default pool kept five: past five concurrent requests every connection was opened
    (a thread, the file, four pragmas) and closed again per request.

    JSON columns (event payloads, envelopes, stored responses) are encoded and decoded
    with orjson, several times faster than the standard library on every append and read.
    """
    parsed = make_url(url)
    json_options: dict[str, Any] = {"json_serializer": json_text, "json_deserializer": orjson.loads}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        pooling: dict[str, Any] = (
            {"poolclass": NullPool} if _in_memory(url) else {"pool_size": pool_size, "max_overflow": pool_size}
        )
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_LOCK_TIMEOUT}, **pooling, **json_options)
        _configure_sqlite(engine)
        if not _in_memory(url):
            WriteTurns(SQLITE_LOCK_TIMEOUT).install(engine)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, **json_options)


def _in_memory(url: str) -> bool:
    return ":memory:" in url


SQLITE_LOCK_TIMEOUT = 30.0
"""Seconds a SQLite writer waits for its turn before 'database is locked'."""

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class WriteTurns:
    """SQLite writers of one engine take turns in an asyncio queue, not in SQLite's busy loop.

    SQLite lets one connection write at a time. A connection that finds the lock taken
    sleeps in SQLite's busy handler, 1, 2, 5, 10 … 100 ms between tries, blocking its
    thread, and the turn goes to whoever retries at the right moment rather than to
    whoever asked first. In a service the group-commit writer, the relay's cursor and
    the consumers' checkpoints all write; under load the commands waited on those sleeps.

    Here a connection takes this engine's turn just before its first write statement,
    where pysqlite's deferred transaction would take SQLite's lock, and gives it back
    once its commit or rollback has returned, so waiting writers wake in order the
    moment the lock is free. Reads never wait (WAL). Other processes on the same file
    (the CLI, a rebuild) still meet SQLite's busy timeout, as before.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
        self._holders: dict[int, asyncio.Lock] = {}

    def install(self, engine: AsyncEngine) -> None:
        sync_engine = engine.sync_engine
        dialect = sync_engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection: Any) -> None:
            try:
                commit(dbapi_connection)
            finally:
                self.release(dbapi_connection)

        def do_rollback(dbapi_connection: Any) -> None:
            try:
                rollback(dbapi_connection)
            finally:
                self.release(dbapi_connection)

        dialect.do_commit = do_commit  # type: ignore[method-assign]
        dialect.do_rollback = do_rollback  # type: ignore[method-assign]
        event.listen(sync_engine, "before_cursor_execute", self._before_execute)
        # Whatever ends a connection's use ends its turn (a turn must never leak).
        event.listen(sync_engine, "checkin", lambda dbapi_connection, _record: self.release(dbapi_connection))
        event.listen(sync_engine, "invalidate", lambda dbapi_connection, _record, _exc: self.release(dbapi_connection))

    def _before_execute(
        self, conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool
    ) -> None:
        if not statement.lstrip()[:7].upper().startswith(_WRITES):
            return
        dbapi_connection = conn.connection.dbapi_connection
        if id(dbapi_connection) in self._holders:
            return
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        try:
            await_only(asyncio.wait_for(lock.acquire(), self.timeout) if lock.locked() else lock.acquire())
        except TimeoutError:
            raise OperationalError(statement, parameters, sqlite3.OperationalError("database is locked")) from None
        self._holders[id(dbapi_connection)] = lock

    def release(self, dbapi_connection: Any) -> None:
        lock = self._holders.pop(id(getattr(dbapi_connection, "dbapi_connection", dbapi_connection)), None)
        if lock is not None:
            lock.release()


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


async def ping(engine: AsyncEngine) -> None:
    """Raise if the database does not answer."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
