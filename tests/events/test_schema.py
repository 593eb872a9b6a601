"""UTCDateTime: aware UTC in and out on both databases; on SQLite, the text SQLAlchemy's DATETIME writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import DateTime, text
from sqlalchemy.dialects import sqlite

from events.schema import UTCDateTime
from events.store import EventStore, NewEvent
from tests.events.conftest import applied

TIMES = [
    datetime(2025, 6, 1, 10, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),
    datetime(2025, 1, 1, tzinfo=UTC),
    datetime(5, 1, 1, 0, 0, 0, 999999, tzinfo=UTC),
]


@pytest.mark.parametrize("value", TIMES)
def test_sqlite_binding_is_the_text_sqlalchemys_datetime_writes(value: datetime) -> None:
    dialect = sqlite.dialect()
    ours = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    theirs = DateTime().dialect_impl(dialect).bind_processor(dialect)
    read = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)

    assert ours(value) == theirs(value.astimezone(UTC).replace(tzinfo=None))
    assert read(ours(value)) == value and read(ours(value)).tzinfo is UTC


def test_a_naive_datetime_is_refused() -> None:
    dialect = sqlite.dialect()
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().dialect_impl(dialect).bind_processor(dialect)(datetime(2025, 1, 1))


async def test_times_come_back_aware_and_equal(store: EventStore) -> None:
    for n, at in enumerate(TIMES):
        await store.append(stream_id=f"partner-t{n}", expected_version=0, events=[NewEvent(applied(f"t{n}"), occurred_at=at)])

    events = await store.read_all(after=0, limit=10)

    assert [e.occurred_at for e in events] == TIMES
    assert all(e.occurred_at.tzinfo is UTC and e.recorded_at.tzinfo is UTC for e in events)
    if store.engine.dialect.name == "sqlite":
        async with store.engine.connect() as conn:
            stored = (await conn.execute(text("SELECT occurred_at FROM events ORDER BY position"))).scalars().all()
        assert stored == ["2025-06-01 08:00:00.000005", "2025-01-01 00:00:00.000000", "0005-01-01 00:00:00.999999"]
