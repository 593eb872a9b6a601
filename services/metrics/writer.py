"""Applying projection changes to the read-model tables: one event live, or in bulk for a rebuild.

Generations: `mx_projections.generation` names the rows the API reads and the live path
writes. A live write first bumps that row (`writes`), which takes its lock; a rebuild's
swap takes the same lock, so every live write lands wholly before or wholly after a swap
and always in the generation that is current when it commits.
"""

from __future__ import annotations

import functools
import weakref
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Insert as Insert_
from sqlalchemy import Select, Table, Update, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.envelope import RecordedEvent
from events.schema import insert_text
from services.metrics import tables as t
from services.metrics.projections import PROJECTIONS, Insert, Merge, Projection, merged

FIRST_GENERATION = 1


async def ensure_projections(engine: AsyncEngine) -> None:
    """Give every projection its pointer row (generation 1) if it has none yet."""
    async with engine.begin() as conn:
        known = set((await conn.execute(select(t.projections.c.name))).scalars())
        missing = [
            {"name": name, "generation": FIRST_GENERATION, "writes": 0}
            for name in PROJECTIONS
            if name not in known
        ]
        if missing:
            await conn.execute(insert(t.projections), missing)


_GENERATIONS = select(t.projections.c.name, t.projections.c.generation)


async def generations(conn: AsyncConnection) -> dict[str, int]:
    """The generation each projection currently answers from."""
    rows = await conn.execute(_GENERATIONS)
    found = {name: int(gen) for name, gen in rows.all()}
    return {name: found.get(name, FIRST_GENERATION) for name in PROJECTIONS}


_READ_CHUNK = 500  # keys per IN list (SQLite allows 32,766 parameters)


@functools.cache
def _keyed_statements(table: Table, key_column: str) -> tuple[Select[Any], Update, Insert_]:
    """Read of many keyed rows, whole-row update and insert, built once per table.

    The read takes the generation and a list of keys (`k_generation`, `k_keys`); the
    update's SET names every other column as `v_<column>` (a SET may not reuse a
    column's name as its parameter) and its WHERE the row (`k_generation`, `k_key`), so
    that all rows of a batch go in one executemany.
    """
    generation, key = table.c.generation, table.c[key_column]
    read = select(table).where(generation == bindparam("k_generation"), key.in_(bindparam("k_keys", expanding=True)))
    values = [c.name for c in table.columns if c.name not in ("generation", key_column)]
    write = (
        update(table)
        .where(generation == bindparam("k_generation"), key == bindparam("k_key"))
        .values({c: bindparam(f"v_{c}") for c in values})
    )
    return read, write, insert(table)


async def merge_rows(
    conn: AsyncConnection, table: Table, generation: int, key_column: str, changes: dict[Any, list[Merge]]
) -> None:
    """Apply `changes` (per key of `key_column`, in order) to the rows of `generation`.

    One read per 500 keys, one executemany for the new rows (per column set) and one for
    the changed ones, however many rows a batch touches (it was a read and a write per row).
    """
    read, write, add = _keyed_statements(table, key_column)
    keys = list(changes)
    existing: dict[Any, dict[str, Any]] = {}
    for start in range(0, len(keys), _READ_CHUNK):
        chunk = keys[start : start + _READ_CHUNK]
        for found in (await conn.execute(read, {"k_generation": generation, "k_keys": chunk})).mappings():
            existing[found[key_column]] = dict(found)
    added: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # by column set: one executemany each
    updated: list[dict[str, Any]] = []
    for key, merges in changes.items():
        before = existing.get(key)
        row = before
        for change in merges:
            row = merged(row, change)
        assert row is not None
        if before is None:
            added.setdefault(tuple(sorted(row)), []).append({**row, "generation": generation})
        elif row != before:
            params = {f"v_{c}": v for c, v in row.items() if c not in ("generation", key_column)}
            updated.append({**params, "k_generation": generation, "k_key": key})
    for rows in added.values():
        await conn.execute(add, rows)
    if updated:
        await conn.execute(write, updated)


class LiveApplier:
    """Applies one event to a projection inside the subscription's transaction."""

    def __init__(self) -> None:
        # Floors of a generation never change once it is live, so they are cached.
        self._floors: dict[tuple[str, int, str], int] = {}
        # The pointer lock is held until the transaction ends: claim it once per transaction.
        self._claimed: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()

    async def apply(self, conn: AsyncConnection, projection: Projection, event: RecordedEvent) -> None:
        """Apply `event` to `projection` (nothing when it ignores the event or already has it)."""
        await self.apply_batch(conn, [projection], [event])

    async def apply_batch(
        self, conn: AsyncConnection, projections: Sequence[Projection], events: Sequence[RecordedEvent]
    ) -> None:
        """Apply `events` to every projection, leaving what `apply` on each in turn leaves.

        In fewer statements: the facts of a table go in one executemany, and a keyed row
        that several events change is read and written once, with the changes folded in
        event order. Tables belong to one projection each, so only the order within a
        table matters, and it is kept.
        """
        facts: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = {}
        keyed: dict[tuple[Table, int, str], dict[Any, list[Merge]]] = {}
        for projection in projections:
            generation: int | None = None
            for event in events:
                changes = projection.changes(event)
                if not changes:
                    continue
                if generation is None:
                    generation = await self._generation(conn, projection.name)
                if event.position <= await self._floor(conn, projection.name, generation, event.source):
                    continue
                for change in changes:
                    if isinstance(change, Insert):
                        values = {**change.values, "generation": generation}
                        facts.setdefault((change.table, tuple(sorted(values))), []).append(values)
                    else:
                        [(column, key)] = change.key.items()  # keyed tables have a one-column key
                        keyed.setdefault((change.table, generation, column), {}).setdefault(key, []).append(change)
        for (table, columns), rows in facts.items():
            # A fact already there (a re-applied event) is skipped.
            await conn.execute(insert_text(table, columns, conn.dialect, "ON CONFLICT DO NOTHING"), rows)
        for (table, generation, column), by_key in keyed.items():
            await merge_rows(conn, table, generation, column, by_key)

    async def _generation(self, conn: AsyncConnection, name: str) -> int:
        transaction = conn.sync_connection.get_transaction() if conn.sync_connection is not None else None
        claimed = self._claimed.setdefault(transaction, {}) if transaction is not None else {}
        generation = claimed.get(name)
        if generation is None:
            generation = claimed[name] = await claim_generation(conn, name)
        return generation

    async def _floor(self, conn: AsyncConnection, name: str, generation: int, source: str) -> int:
        key = (name, generation, source)
        if key not in self._floors:
            value = (
                await conn.execute(
                    select(t.floors.c.position).where(
                        t.floors.c.projection == name,
                        t.floors.c.generation == generation,
                        t.floors.c.source == source,
                    )
                )
            ).scalar()
            self._floors[key] = int(value or 0)
        return self._floors[key]


_CLAIM = (
    update(t.projections)
    .where(t.projections.c.name == bindparam("b_name"))
    .values(writes=t.projections.c.writes + 1)
    .returning(t.projections.c.generation)
)


async def claim_generation(conn: AsyncConnection, name: str) -> int:
    """Lock projection `name`'s pointer row for this transaction and return its generation."""
    generation = (await conn.execute(_CLAIM, {"b_name": name})).scalar()
    if generation is None:
        await conn.execute(insert(t.projections), {"name": name, "generation": FIRST_GENERATION, "writes": 1})
        return FIRST_GENERATION
    return int(generation)


class BatchApplier:
    """Accumulates a rebuild's changes: facts are flushed in bulk, keyed rows at the swap."""

    def __init__(self, projections: Sequence[Projection], generations: dict[str, int]) -> None:
        self.projections = list(projections)
        self.generations = generations
        self._generation_of: dict[Table, int] = {
            table: generations[p.name] for p in self.projections for table in p.tables
        }
        self._facts: dict[Table, list[dict[str, Any]]] = defaultdict(list)
        self._rows: dict[Table, dict[tuple[Any, ...], dict[str, Any]]] = defaultdict(dict)

    def add(self, event: RecordedEvent) -> int:
        """Fold `event` into the pending changes; returns how many changes it made."""
        count = 0
        for projection in self.projections:
            for change in projection.changes(event):
                count += 1
                if isinstance(change, Insert):
                    self._facts[change.table].append(change.values)
                else:
                    key = tuple(change.key.values())
                    rows = self._rows[change.table]
                    rows[key] = merged(rows.get(key), change)
        return count

    @property
    def pending_facts(self) -> int:
        return sum(len(rows) for rows in self._facts.values())

    def take_facts(self) -> dict[Table, list[dict[str, Any]]]:
        """The accumulated event-level facts, handed over (accumulation starts afresh)."""
        facts, self._facts = self._facts, defaultdict(list)
        return facts

    async def insert_facts(self, conn: AsyncConnection, facts: dict[Table, list[dict[str, Any]]]) -> None:
        """Insert facts taken with `take_facts`."""
        for table, rows in facts.items():
            await self._insert_many(conn, table, rows)

    async def write_rows(self, conn: AsyncConnection) -> None:
        """Insert the keyed rows (done once, in the swap transaction)."""
        for table, rows in self._rows.items():
            await self._insert_many(conn, table, list(rows.values()))

    async def _insert_many(self, conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
        """Bulk insert straight through the driver: a rebuild inserts tens of thousands of rows
        a second, and SQLAlchemy's per-row parameter handling would cost more than SQLite."""
        if not rows:
            return
        compiled = insert(table).compile(dialect=conn.dialect, column_keys=list(table.c.keys()))
        order = list(compiled.positiontup or [])
        processors = [_bind_processor(table, name, conn) for name in order]
        generation = self._generation_of[table]
        params = [
            tuple(
                generation if name == "generation" else (proc(row.get(name)) if proc else row.get(name))
                for name, proc in zip(order, processors, strict=True)
            )
            for row in rows
        ]
        await conn.exec_driver_sql(compiled.string, params)


def _bind_processor(table: Table, name: str, conn: AsyncConnection) -> Any:
    """The driver-level conversion of column `name` (None: the value passes as is)."""
    column_type = table.c[name].type
    return column_type.dialect_impl(conn.dialect).bind_processor(conn.dialect)


async def clear_generation(conn: AsyncConnection, projection: Projection, generation: int) -> None:
    """Delete every row of `projection` in `generation` (a crashed rebuild's leftovers, or a retired generation)."""
    for table in projection.tables:
        await conn.execute(delete(table).where(table.c.generation == generation))
    await conn.execute(
        delete(t.floors).where(t.floors.c.projection == projection.name, t.floors.c.generation == generation)
    )


async def switch_generation(
    conn: AsyncConnection,
    projection: Projection,
    *,
    generation: int,
    floors: dict[str, int],
    now: datetime,
) -> None:
    """Point `projection` at `generation`, whose rows hold every event up to `floors` per source."""
    if floors:
        await conn.execute(
            insert(t.floors),
            [
                {"projection": projection.name, "generation": generation, "source": source, "position": position}
                for source, position in floors.items()
            ],
        )
    await conn.execute(
        update(t.projections)
        .where(t.projections.c.name == projection.name)
        .values(generation=generation, rebuilt_at=now)
    )


def projections_named(names: Iterable[str] | None) -> list[Projection]:
    """The projections called `names` (all when None); KeyError on an unknown name."""
    if names is None:
        return list(PROJECTIONS.values())
    return [PROJECTIONS[name] for name in names]
