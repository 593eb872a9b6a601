"""Async engines for a service's own database (PostgreSQL in production, SQLite embedded)."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson
from sqlalchemy import event, text
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    AsyncAdapt_aiosqlite_ss_cursor,
)
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

    SQLite statements run through `InlineAiosqlite`: on the event loop's thread, and on
    aiosqlite's only when they must wait for a lock another connection holds.

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
        engine = create_async_engine(
            url,
            module=InlineAiosqlite(aiosqlite, sqlite3),
            connect_args={"timeout": SQLITE_LOCK_TIMEOUT, "check_same_thread": False},
            **pooling,
            **json_options,
        )
        _configure_sqlite(engine)
        if not _in_memory(url):
            WriteTurns(SQLITE_LOCK_TIMEOUT).install(engine)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, **json_options)


def _in_memory(url: str) -> bool:
    return ":memory:" in url


T = TypeVar("T")

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


def _run_statement(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> tuple[Any, ...]:
    """Run one statement start to finish: (description, rows, rowcount, lastrowid)."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        if cursor.description:
            return cursor.description, cursor.fetchall(), -1, -1
        return None, None, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


async def _inline(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> tuple[Any, ...]:
    return _run_statement(conn, operation, parameters, many)


def _waiting(call: Callable[[], T], conn: sqlite3.Connection) -> T:
    """`call()` on aiosqlite's thread, with SQLite's busy handler waiting up to the lock timeout."""
    conn.execute(f"PRAGMA busy_timeout={int(SQLITE_LOCK_TIMEOUT * 1000)}")
    try:
        return call()
    finally:
        conn.execute("PRAGMA busy_timeout=0")


def _is_busy(error: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY: a lock held by another connection (SQLITE_BUSY_SNAPSHOT is not retried:
    a read transaction that fell behind a writer fails however long it waits)."""
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY


class _InlineCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's aiosqlite cursor, running each statement on the event loop's thread.

    The stock adapter awaits aiosqlite four times per SELECT (open a cursor, execute,
    fetch all, close) and three times per write. Each await is a round trip to the
    connection's thread: a queue put, a thread wake-up, then a wake-up of the event loop
    through its self-pipe, ~65 µs of CPU on this project's machines. SQLite answers a
    primary-key SELECT in ~4 µs: those trips, not SQLite, were most of a statement's
    cost (~240 µs in four trips, ~137 in one, ~47 inline, through SQLAlchemy).

    aiosqlite's thread exists so that a statement that blocks does not block the event
    loop. On a local file a statement blocks for long only in SQLite's busy handler,
    waiting for a lock another connection holds (the CLI, a rebuild; this process's own
    writers take turns in `WriteTurns` first). So the connections run with a busy timeout
    of 0: a statement runs inline, and only when it finds a lock taken (SQLITE_BUSY, the
    statement did nothing) is it run again on aiosqlite's thread, where the busy handler
    may wait up to the lock timeout. SQLite serialises calls on a connection, and
    SQLAlchemy makes one call at a time on it, so the two threads never use it at once.
    Server-side cursors (`stream()`) keep the stock behaviour.
    """

    __slots__ = ()

    def execute(self, operation: Any, parameters: Any = None) -> None:
        self._run(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        self._run(operation, seq_of_parameters, many=True)

    def _run(self, operation: Any, parameters: Any, *, many: bool) -> None:
        connection = self._connection
        sqlite = connection._connection  # None once closed: the trip raises as it should
        outcome: tuple[Any, ...] | None = None
        if sqlite is not None:
            try:
                # SQLAlchemy's async engine insists that each statement awaits something:
                # a coroutine that finishes at once costs two greenlet switches, no loop turn.
                outcome = self.await_(_inline(sqlite, operation, parameters, many))
            except sqlite3.OperationalError as error:
                if not _is_busy(error):
                    raise
        if outcome is None:
            try:
                # aiosqlite's queue of calls for its thread, as SQLAlchemy's adapter uses it
                # to set the isolation level.
                run = functools.partial(_run_statement, connection._conn, operation, parameters, many)
                outcome = self.await_(connection._execute(_waiting, run, connection._conn))
            except ValueError as error:  # "no active connection": the adapter's OperationalError
                self._adapt_connection._handle_exception(error)
        self.description, rows, self.rowcount, self.lastrowid = outcome
        if rows is not None:
            self._rows = deque(rows)


class _InlineConnection(AsyncAdapt_aiosqlite_connection):
    """Inline cursors; commit and rollback inline too, and only for a transaction that began.

    The pool rolls back every connection it takes back, and most checkouts only read:
    pysqlite opens a transaction at the first write, so there is nothing to roll back
    or commit. A commit may run a WAL checkpoint (SQLite's default, every 1,000 pages),
    which copies pages and syncs the database file on the event loop's thread: ~1 ms
    here, the price of a disk's fsync elsewhere, about once a second under full load.
    """

    __slots__ = ()

    def cursor(self, server_side: bool = False) -> AsyncAdapt_aiosqlite_cursor:
        return AsyncAdapt_aiosqlite_ss_cursor(self) if server_side else _InlineCursor(self)

    def commit(self) -> None:
        self._end("commit")

    def rollback(self) -> None:
        self._end("rollback")

    def _end(self, how: str) -> None:
        try:
            sqlite = self._connection._conn
            if sqlite.in_transaction:
                end = getattr(sqlite, how)
                try:
                    end()
                except sqlite3.OperationalError as error:
                    if not _is_busy(error):
                        raise
                    self.await_(self._connection._execute(_waiting, end, sqlite))
        except Exception as error:  # noqa: BLE001 - as the stock adapter: "no active connection" becomes OperationalError
            self._handle_exception(error)


class InlineAiosqlite(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite DBAPI SQLAlchemy uses, with `_InlineConnection`s."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        adapted = super().connect(*arg, **kw)
        return _InlineConnection(self, adapted._connection)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # Statements run on the event loop's thread and must not wait for a lock there:
        # one that finds a lock taken runs again on aiosqlite's thread (`_InlineCursor`).
        cursor.execute("PRAGMA busy_timeout=0")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


async def ping(engine: AsyncEngine) -> None:
    """Raise if the database does not answer."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
