"""The event store on SQLite and PostgreSQL: concurrency, commit order, validation, atomic effects."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.catalog import PartnerApplied
from events.envelope import EventMetadata, RecordedEvent
from events.schema import relay_cursors
from events.store import ConcurrencyError, DuplicateEvent, EventStore, InvalidEvent, NewEvent
from tests.events.conftest import applied, diligence, utcnow


@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "one-by-one"])
async def test_concurrent_appends_with_the_same_expected_version_let_exactly_one_win(
    engine: AsyncEngine, group_commit: bool
) -> None:
    store = EventStore(engine, source="onboarding", now=utcnow, group_commit=group_commit)
    try:
        await store.append(stream_id="partner-p1", expected_version=0, events=[applied("p1")])

        results = await asyncio.gather(
            *(
                store.append(stream_id="partner-p1", expected_version=1, events=[diligence("p1", f"try {i}")])
                for i in range(50)
            ),
            return_exceptions=True,
        )

        winners = [r for r in results if isinstance(r, list)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1
        assert len(losers) == 49 and all(isinstance(e, ConcurrencyError) for e in losers)
        events = await store.read_stream("partner-p1")
        assert [e.stream_version for e in events] == [1, 2]
        assert events[1].event_id == winners[0][0].event_id
        assert await store.head_position() == 2
    finally:
        await store.close()


async def test_a_wrong_expected_version_is_refused_with_the_actual_version(store: EventStore) -> None:
    await store.append(stream_id="partner-p1", expected_version=0, events=[applied("p1")])

    with pytest.raises(ConcurrencyError) as caught:
        await store.append(stream_id="partner-p1", expected_version=0, events=[diligence("p1")])

    assert caught.value.actual == 1 and caught.value.expected == 0
    assert await store.stream_version("partner-p1") == 1


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
async def test_an_event_failing_its_schema_is_refused_and_nothing_is_appended(store: EventStore) -> None:
    bad = PartnerApplied.model_construct(
        partner_id="p1", name=12345, website="https://x.example", category="ai_ml", contact_email="a@x.example"
    )

    with pytest.raises(InvalidEvent):
        await store.append(stream_id="partner-p1", expected_version=0, events=[applied("p1"), bad])

    assert await store.head_position() == 0
    assert await store.read_stream("partner-p1") == []


async def test_a_duplicate_event_id_is_refused(store: EventStore) -> None:
    event_id = str(uuid.uuid4())
    await store.append(stream_id="partner-p1", expected_version=0, events=[NewEvent(applied("p1"), event_id)])

    with pytest.raises(DuplicateEvent):
        await store.append(stream_id="partner-p2", expected_version=0, events=[NewEvent(applied("p2"), event_id)])

    assert await store.head_position() == 1


async def test_failing_effects_write_nothing_while_concurrent_appends_succeed(store: EventStore) -> None:
    async def effects_then_fail(conn: AsyncConnection, recorded: list[RecordedEvent]) -> None:
        await conn.execute(insert(relay_cursors).values(name="written-by-effects", position=1, updated_at=utcnow()))
        raise RuntimeError("the read model refused")

    async def effects_ok(conn: AsyncConnection, recorded: list[RecordedEvent]) -> None:
        await conn.execute(
            insert(relay_cursors).values(name=recorded[0].stream_id, position=recorded[0].position, updated_at=utcnow())
        )

    results = await asyncio.gather(
        *(
            store.append(
                stream_id=f"partner-p{i}",
                expected_version=0,
                events=[applied(f"p{i}")],
                effects=effects_then_fail if i == 5 else effects_ok,
            )
            for i in range(10)
        ),
        return_exceptions=True,
    )

    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], RuntimeError)
    assert await store.read_stream("partner-p5") == []
    assert await store.head_position() == 9
    async with store.engine.connect() as conn:
        names = set((await conn.execute(select(relay_cursors.c.name))).scalars())
    assert names == {f"partner-p{i}" for i in range(10) if i != 5}


async def test_envelope_carries_metadata_and_partition_key(store: EventStore) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    metadata = EventMetadata(actor="ops-alice", correlation_id="req-1", traceparent=traceparent)

    [recorded] = await store.append(
        stream_id="partner-p1", expected_version=0, events=[applied("p1")], metadata=metadata
    )

    [read] = await store.read_all(after=0)
    assert read == recorded
    assert read.partition_key == "p1" and read.actor == "ops-alice" and read.traceparent == traceparent
    assert read.recorded_at.tzinfo is not None


async def test_a_reader_tailing_by_position_sees_every_event_once_in_order(
    engine: AsyncEngine, request: pytest.FixtureRequest
) -> None:
    writers, per_writer = 16, 12
    total = writers * per_writer
    on_postgres = engine.dialect.name == "postgresql"
    # PostgreSQL: one store per writer, as separate replicas would have, so that their
    # transactions really race; SQLite has one writer per file by design.
    shared = EventStore(engine, source="onboarding", now=utcnow)
    stores = [
        EventStore(engine, source="onboarding", now=utcnow, group_commit=False) if on_postgres else shared
        for _ in range(writers)
    ]

    async def write(index: int, store: EventStore) -> None:
        partner = f"w{index}"
        for version in range(per_writer):
            event = applied(partner) if version == 0 else diligence(partner, str(version))
            await store.append(stream_id=f"partner-{partner}", expected_version=version, events=[event])

    seen: list[RecordedEvent] = []

    async def tail() -> None:
        after = 0
        while len(seen) < total:
            page = await shared.read_all(after=after, limit=37)
            if not page:
                await shared.wait_for_append(0.01)
                continue
            seen.extend(page)
            after = page[-1].position

    try:
        reader = asyncio.create_task(tail())
        await asyncio.gather(*(write(i, s) for i, s in enumerate(stores)))
        await asyncio.wait_for(reader, 20)
    finally:
        for store in {id(s): s for s in [shared, *stores]}.values():
            await store.close()

    assert [e.position for e in seen] == list(range(1, total + 1))
    assert len({e.event_id for e in seen}) == total
    for index in range(writers):
        versions = [e.stream_version for e in seen if e.stream_id == f"partner-w{index}"]
        assert versions == list(range(1, per_writer + 1))
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(relay_cursors))).scalar_one() == 0
