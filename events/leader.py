"""One active worker among replicas: a PostgreSQL session advisory lock on its own connection.

The relay (one publisher per store), the health prober and the SLA monitor (one prober
per fleet, so an integration is probed once per interval and not once per replica) run
on every replica but work only while they hold their lock; a standby takes over within
`check_interval` of the holder's death, because the server releases a session lock when
its connection closes. On SQLite the one process that owns the file is always the leader.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """The signed 64-bit advisory lock key of `name`."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class Leadership:
    """`await hold()` says whether this process is the active one (taking the lock if free)."""

    def __init__(self, engine: AsyncEngine, name: str, *, check_interval: float = 5.0) -> None:
        self.engine = engine
        self.name = name
        self.check_interval = check_interval
        self._key = lock_key(name)
        self._is_postgres = engine.dialect.name == "postgresql"
        self._conn: AsyncConnection | None = None
        self._pid = 0
        self._next_check = 0.0

    @property
    def held(self) -> bool:
        """Whether the lock was held at the last `hold()` (always True on SQLite)."""
        return not self._is_postgres or self._conn is not None

    async def hold(self) -> bool:
        """True while this process holds the lock; tries to take it when nobody does.

        The held lock's connection is checked every `check_interval`; when it is gone the
        lock is gone with it (the server released it), and this answers False until the
        lock is taken again. Raises SQLAlchemyError when the database cannot be reached.
        """
        if not self._is_postgres:
            return True
        if self._conn is not None:
            if time.monotonic() < self._next_check:
                return True
            try:
                # The same server session still holds it; a connection SQLAlchemy quietly
                # re-established after a drop has a new backend and no lock.
                pid = (await self._conn.execute(text("SELECT pg_backend_pid()"))).scalar()
            except SQLAlchemyError as exc:
                pid, reason = None, repr(exc)
            else:
                reason = "the lock's session ended"
            if pid is not None and pid == self._pid:
                self._next_check = time.monotonic() + self.check_interval
                return True
            log.warning("%s: lost the lock: %s", self.name, reason)
            await self._drop()
            return False
        conn = await self.engine.connect()
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            got, pid = (
                await conn.execute(text("SELECT pg_try_advisory_lock(:k), pg_backend_pid()"), {"k": self._key})
            ).one()
        except BaseException:
            await conn.invalidate()
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._conn, self._pid = conn, int(pid)
        self._next_check = time.monotonic() + self.check_interval
        log.info("%s: took the lock; this process is the active one", self.name)
        return True

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await conn.invalidate()
                await conn.close()

    async def release(self) -> None:
        """Give the lock up (a standby may take it at once)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            await conn.close()
        except (SQLAlchemyError, OSError):
            # Closing the session for good releases the lock on the server.
            with contextlib.suppress(SQLAlchemyError, OSError):
                await conn.invalidate()
                await conn.close()


async def leading(leadership: Leadership | None) -> bool:
    """Whether this replica does the work now (None: a single process, always; a database
    that cannot be asked: not now)."""
    if leadership is None:
        return True
    try:
        return await leadership.hold()
    except SQLAlchemyError as exc:
        log.warning("%s: cannot ask for the lock: %r", leadership.name, exc)
        return False
