"""Tables of the event store and of subscription bookkeeping (shared by every service's database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TextClause,
    UniqueConstraint,
    bindparam,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive).

    On SQLite the conversion to and from the stored text (`YYYY-MM-DD HH:MM:SS.ffffff`,
    exactly what SQLAlchemy's DATETIME writes) is one function each way instead of this
    decorator's step plus the dialect's (7.7 -> 3.4 us per value bound; every append,
    webhook message and read-model row has several).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else _aware_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return _read_utc(value)

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return _sqlite_text
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name == "sqlite":
            return _read_utc
        return super().result_processor(dialect, coltype)


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
    return value


def _sqlite_text(value: datetime | None) -> str | None:
    """`value` as SQLite stores a `UTCDateTime`: naive UTC text with six fraction digits."""
    if value is None:
        return None
    return _aware_utc(value).isoformat(" ", "microseconds")[:26]  # without the "+00:00"


def _read_utc(value: Any) -> datetime | None:
    """A stored value (SQLite text or a driver's datetime) as an aware UTC datetime."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


_INSERTS: dict[tuple[Table, tuple[str, ...], str, str], TextClause] = {}


def insert_text(table: Table, columns: tuple[str, ...], dialect: Dialect, on_conflict: str) -> TextClause:
    """`INSERT INTO table (columns) VALUES (:column, ...) <on_conflict>`, typed by the columns.

    For the inserts of hot paths (checkpoints, relay cursors, read-model facts): SQLAlchemy
    gives the dialects' `insert().on_conflict_*()` no cache key, so built with them every
    execution compiled its statement again (~1 ms). This text is built once per table,
    columns, dialect and clause. `{table}` in `on_conflict` stands for the quoted table
    name; PostgreSQL and SQLite (3.24+) read the same `ON CONFLICT` clauses.
    """
    key = (table, columns, dialect.name, on_conflict)
    statement = _INSERTS.get(key)
    if statement is None:
        quote = dialect.identifier_preparer.quote
        name = quote(table.name)
        statement = text(
            f"INSERT INTO {name} ({', '.join(map(quote, columns))}) "
            f"VALUES ({', '.join(':' + c for c in columns)}) " + on_conflict.replace("{table}", name)
        ).bindparams(*(bindparam(c, type_=table.c[c].type) for c in columns))
        _INSERTS[key] = statement
    return statement


store_metadata = MetaData()

events_table = Table(
    "events",
    store_metadata,
    # Assigned by the store under its append lock: gap-free, commit order = position order.
    Column("position", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("stream_id", String(200), nullable=False),
    Column("stream_version", Integer, nullable=False),
    Column("type", String(100), nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("data", JSON, nullable=False),
    Column("partition_key", String(200), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("traceparent", String(64)),
    Column("correlation_id", String(64)),
    Column("causation_id", String(64)),
    Column("actor", String(200)),
    UniqueConstraint("stream_id", "stream_version", name="uq_events_stream_version"),
)
Index("ix_events_partition_key", events_table.c.partition_key, events_table.c.position)

relay_cursors = Table(
    "relay_cursors",
    store_metadata,
    Column("name", String(100), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

checkpoints = Table(
    "subscription_checkpoints",
    store_metadata,
    Column("subscription", String(100), primary_key=True),
    Column("source", String(100), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

dead_letters = Table(
    "dead_letters",
    store_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("subscription", String(100), nullable=False),
    Column("source", String(100), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("partner_id", String(200)),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("envelope", JSON, nullable=False),
    Column("parked_at", UTCDateTime, nullable=False),
    Column("replayed_at", UTCDateTime),
    UniqueConstraint("subscription", "event_id", name="uq_dead_letters_event"),
)

idempotency_keys = Table(
    "idempotency_keys",
    store_metadata,
    Column("client_id", String(200), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("method", String(10), nullable=False),
    Column("path", String(2000), nullable=False),
    Column("body_hash", String(64), nullable=False),
    Column("status", Integer),
    Column("headers", JSON),
    Column("body", Text),
    Column("created_at", UTCDateTime, nullable=False),
)
