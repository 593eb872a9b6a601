"""Subscriptions against a real broker: exact read models through restarts, duplicates and poison."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.broker import EmbeddedBroker
from events.envelope import EventMetadata, RecordedEvent
from events.kafka import partition_for
from events.relay import Relay
from events.store import EventStore
from events.subscription import (
    DeadLetterAlreadyReplayed,
    SourceInfo,
    Subscription,
    list_dead_letters,
    replay_dead_letter,
)
from tests.events.conftest import (
    append_many,
    applied,
    log_client,
    log_token,
    postgres_engine,
    read_topic,
    sqlite_engine,
    wait_until,
)

PARTITIONS = 6
read_model = MetaData()
partner_counts = Table(
    "partner_counts",
    read_model,
    Column("partner_id", String(100), primary_key=True),
    Column("events", Integer, nullable=False),
)


async def count_event(conn: AsyncConnection, event: RecordedEvent) -> None:
    """The read model: how many events each partner has."""
    changed = await conn.execute(
        update(partner_counts)
        .where(partner_counts.c.partner_id == event.partition_key)
        .values(events=partner_counts.c.events + 1)
    )
    if changed.rowcount == 0:
        await conn.execute(insert(partner_counts).values(partner_id=event.partition_key, events=1))


async def count_events(conn: AsyncConnection, events: list[RecordedEvent]) -> None:
    """The same read model, one statement per partner per batch."""
    for partner, n in Counter(e.partition_key for e in events).items():
        changed = await conn.execute(
            update(partner_counts)
            .where(partner_counts.c.partner_id == partner)
            .values(events=partner_counts.c.events + n)
        )
        if changed.rowcount == 0:
            await conn.execute(insert(partner_counts).values(partner_id=partner, events=n))


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {p: n for p, n in (await conn.execute(select(partner_counts))).all()}


async def expected_counts(store: EventStore) -> dict[str, int]:
    return dict(Counter(e.partition_key for e in await store.read_all(after=0, limit=100_000)))


async def consumer_db(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(read_model.create_all)
    return engine


@contextlib.asynccontextmanager
async def subscribed(
    store: EventStore, consumer: AsyncEngine, bootstrap: str, topic: str, **options: Any
) -> AsyncIterator[Subscription]:
    """A running subscription on `topic`, catching up through `store`'s HTTP log API."""
    settings: dict[str, Any] = {
        "handler": count_event,
        "manual_assignment": True,
        "max_retries": 2,
        "retry_backoff": 0.01,
        "idle_catchup_interval": 60.0,
        "broker_check_interval": 0.2,
    }
    settings.update(options)
    async with log_client(store) as http:
        subscription = Subscription(
            "partner-counts",
            sources={"onboarding": SourceInfo(topic=topic, partitions=PARTITIONS, log_url="http://onboarding")},
            engine=consumer,
            bootstrap=bootstrap,
            log_client=http,
            token_provider=log_token,
            **settings,
        )
        await subscription.start()
        try:
            yield subscription
        finally:
            await subscription.stop()


@contextlib.asynccontextmanager
async def relaying(store: EventStore, bootstrap: str, topic: str, **options: Any) -> AsyncIterator[Relay]:
    relay = Relay(
        store, bootstrap=bootstrap, topic=topic, partitions=PARTITIONS, engine=store.engine, max_backoff=0.5, **options
    )
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


@pytest.fixture
async def consumer(engine: AsyncEngine) -> AsyncEngine:
    """The subscriber's own database (SQLite, and PostgreSQL when configured)."""
    return await consumer_db(engine)


async def test_catches_up_from_the_log_api_then_follows_kafka(
    broker: EmbeddedBroker, topic: str, sqlite_store: EventStore, consumer: AsyncEngine
) -> None:
    partners = [f"p{i}" for i in range(12)]
    await append_many(sqlite_store, partners, per_partner=4)  # before any relay: only the log has them

    async with subscribed(sqlite_store, consumer, broker.bootstrap, topic) as subscription:
        await subscription.wait_caught_up(10)
        assert await counts(consumer) == await expected_counts(sqlite_store)
        caught_up_passes = subscription.catchups

        async with relaying(sqlite_store, broker.bootstrap, topic):
            await append_many(sqlite_store, partners, per_partner=3)
            expected = await expected_counts(sqlite_store)
            await wait_until(lambda: _equals(consumer, expected), message="Kafka delivered the new events")

        # Only Kafka delivered the second round: no further pass over the log.
        assert subscription.catchups == caught_up_passes
        head = await sqlite_store.head_position()
        assert await subscription.lag({"onboarding": head}) == {"onboarding": 0}
        positions = (await subscription.positions())["onboarding"]
        assert set(positions) == set(range(PARTITIONS)) and max(positions.values()) == head


async def _equals(engine: AsyncEngine, expected: dict[str, int]) -> bool:
    return await counts(engine) == expected


async def test_read_model_stays_exact_when_the_broker_restarts_mid_stream(
    tmp_path: Path, topic: str, sqlite_store: EventStore
) -> None:
    consumer = await consumer_db(await sqlite_engine(tmp_path / "consumer.db"))
    broker = EmbeddedBroker(log_dir=tmp_path)
    await broker.start()
    partners = [f"p{i}" for i in range(30)]

    async def slow_count(conn: AsyncConnection, event: RecordedEvent) -> None:
        await asyncio.sleep(0.002)  # so that records wait in the broker when it dies
        await count_event(conn, event)

    try:
        async with (
            relaying(sqlite_store, broker.bootstrap, topic, topic_check_interval=0.3) as relay,
            subscribed(sqlite_store, consumer, broker.bootstrap, topic, handler=slow_count) as subscription,
        ):
            await subscription.wait_caught_up(10)

            async def write(rounds: int) -> None:
                for _ in range(rounds):
                    await append_many(sqlite_store, partners, per_partner=1)
                    await asyncio.sleep(0.01)

            await write(5)
            await wait_until(lambda: relay.cursor == 150, message="all relayed")
            await wait_until(lambda: subscription.applied >= 30, message="some events applied over Kafka")
            assert subscription.catchups == 1 and subscription.applied < 150
            # Hold the Kafka consumer still (paused partitions are not fetched) so that the
            # next records are relayed and acknowledged but never read before the broker
            # loses them; left running, it could prefetch everything and lose nothing.
            kafka = subscription._consumer
            assert kafka is not None
            kafka.pause(*kafka.assignment())
            await write(10)
            await wait_until(lambda: relay.cursor == 450, message="the next records relayed")
            await broker.stop()  # everything in it is gone: relayed, not yet consumed records too
            await broker.start()  # same port, empty
            with contextlib.suppress(Exception):  # the subscription may have replaced it by now
                kafka.resume(*kafka.assignment())
            await write(3)

            expected = await expected_counts(sqlite_store)
            assert sum(expected.values()) == 30 * 18
            await wait_until(lambda: _equals(consumer, expected), timeout=30, message="an exact read model")
            assert subscription.catchups > 1, "the loss was noticed and filled from the log API"
            assert relay.errors >= 1
            assert await subscription.lag({"onboarding": await sqlite_store.head_position()}) == {"onboarding": 0}
    finally:
        await broker.stop()
        await consumer.dispose()


async def test_a_source_log_that_is_down_at_start_is_read_once_it_answers(
    broker: EmbeddedBroker, topic: str, sqlite_store: EventStore, sqlite: AsyncEngine
) -> None:
    consumer = await consumer_db(sqlite)
    await append_many(sqlite_store, [f"p{i}" for i in range(5)], per_partner=4)
    down = True

    async def log_reader(source: str, after: int, limit: int) -> list[RecordedEvent]:
        if down:
            raise ConnectionRefusedError("onboarding is not up yet")
        return await sqlite_store.read_all(after=after, limit=limit)

    async with subscribed(
        sqlite_store, consumer, broker.bootstrap, topic, log_reader=log_reader, idle_catchup_interval=0.3
    ) as subscription:
        await subscription.wait_caught_up(10)  # the pass ended, without the source
        assert await counts(consumer) == {}
        down = False
        expected = await expected_counts(sqlite_store)
        await wait_until(lambda: _equals(consumer, expected), message="caught up once the log answered")
        assert subscription.catchups >= 2


async def test_redelivering_a_whole_partition_changes_nothing(
    broker: EmbeddedBroker, topic: str, sqlite_store: EventStore, sqlite: AsyncEngine
) -> None:
    consumer = await consumer_db(sqlite)
    partners = [f"p{i}" for i in range(12)]
    target = partition_for(b"p0", PARTITIONS)
    async with (
        relaying(sqlite_store, broker.bootstrap, topic),
        subscribed(sqlite_store, consumer, broker.bootstrap, topic) as subscription,
    ):
        await append_many(sqlite_store, partners, per_partner=5)
        expected = await expected_counts(sqlite_store)
        await wait_until(lambda: _equals(consumer, expected), message="everything applied")
        applied_before = subscription.applied

        # The whole partition again, as a rewinding broker or a second relay would send it.
        records = [r for r in await read_topic(broker.bootstrap, topic, PARTITIONS, count=60) if r.partition == target]
        assert records
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        try:
            for record in records:
                await producer.send(topic, value=record.value, key=record.key, headers=list(record.headers), partition=target)
            await producer.flush()
        finally:
            await producer.stop()
        # A new event behind the copies shows when the consumer has read past them.
        await sqlite_store.append(stream_id="partner-p0", expected_version=5, events=[applied("p0", "later")])
        await wait_until(
            lambda: _equals(consumer, {**expected, "p0": expected["p0"] + 1}), message="the event after the copies"
        )

    assert subscription.applied == applied_before + 1
    assert await counts(consumer) == {**expected, "p0": expected["p0"] + 1}


async def test_events_of_other_types_move_the_checkpoints_without_being_decoded(
    broker: EmbeddedBroker, topic: str, sqlite_store: EventStore, sqlite: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    from_kafka = RecordedEvent.from_kafka.__func__  # type: ignore[attr-defined]

    def counting(cls: type[RecordedEvent], **record: Any) -> RecordedEvent:
        event: RecordedEvent = from_kafka(cls, **record)
        decoded.append(event.type)
        return event

    monkeypatch.setattr(RecordedEvent, "from_kafka", classmethod(counting))
    consumer = await consumer_db(sqlite)
    partners = [f"p{i}" for i in range(12)]
    async with (
        relaying(sqlite_store, broker.bootstrap, topic),
        subscribed(sqlite_store, consumer, broker.bootstrap, topic, event_types={"partner.applied"}) as subscription,
    ):
        await subscription.wait_caught_up(10)
        catchups = subscription.catchups
        await append_many(sqlite_store, partners, per_partner=4)  # one partner.applied, three diligence each
        head = await sqlite_store.head_position()

        async def caught_up() -> bool:
            return await subscription.lag({"onboarding": head}) == {"onboarding": 0}

        await wait_until(caught_up, message="every event, handled or not, checkpointed")
        assert await counts(consumer) == dict.fromkeys(partners, 1)
        assert decoded == ["partner.applied"] * len(partners)  # the 36 others were passed by type
        # The checkpoints passed every event, handled or not (each partition stands at the
        # head, every event up to it being applied), and no catch-up from the log was needed.
        assert (await subscription.positions())["onboarding"] == dict.fromkeys(range(PARTITIONS), head)
        assert subscription.catchups == catchups

    async with subscribed(sqlite_store, consumer, broker.bootstrap, topic, event_types={"partner.applied"}) as again:
        await again.wait_caught_up(10)  # a restart reads the log from the checkpoints: nothing is applied twice
    assert await counts(consumer) == dict.fromkeys(partners, 1)


@pytest.mark.parametrize("batched", [False, True], ids=["per-event", "batch-handler"])
async def test_a_poison_event_is_parked_while_other_partners_keep_flowing(
    broker: EmbeddedBroker, topic: str, sqlite_store: EventStore, consumer: AsyncEngine, batched: bool
) -> None:
    attempts: Counter[str] = Counter()
    batches: list[int] = []

    def is_poison(event: RecordedEvent) -> bool:
        return event.partition_key == "poison" and event.stream_version == 2

    async def picky(conn: AsyncConnection, event: RecordedEvent) -> None:
        if is_poison(event):
            attempts[event.event_id] += 1
            raise ValueError("cannot handle this one")
        await count_event(conn, event)

    async def picky_batch(conn: AsyncConnection, events: list[RecordedEvent]) -> None:
        batches.append(len(events))
        if any(is_poison(e) for e in events):
            raise ValueError("cannot handle this batch")
        await count_events(conn, events)

    partners = ["poison", *(f"p{i}" for i in range(8))]
    options: dict[str, Any] = {"handler": picky, "max_retries": 3}
    if batched:
        options["batch_handler"] = picky_batch
    async with (
        relaying(sqlite_store, broker.bootstrap, topic),
        subscribed(sqlite_store, consumer, broker.bootstrap, topic, **options) as subscription,
    ):
        await append_many(sqlite_store, partners, per_partner=3)
        expected = await expected_counts(sqlite_store)
        expected["poison"] -= 1
        await wait_until(lambda: _equals(consumer, expected), message="all but the poison event applied")
        assert subscription.parked == 1
        assert bool(batches) == batched

    [parked] = await list_dead_letters(consumer, subscription="partner-counts")
    [poison] = [e for e in await sqlite_store.read_stream("partner-poison") if e.stream_version == 2]
    assert attempts[poison.event_id] == 4 and parked.attempts == 4
    assert parked.partner_id == "poison" and parked.event_id == poison.event_id
    assert parked.envelope == poison.to_json() and "cannot handle this one" in parked.error
    assert parked.partition == partition_for(b"poison", PARTITIONS) and parked.position == poison.position

    replayed = await replay_dead_letter(consumer, "partner-counts", parked.id, count_event)
    assert replayed == poison
    assert (await counts(consumer))["poison"] == 3
    assert await list_dead_letters(consumer, subscription="partner-counts") == []
    with pytest.raises(DeadLetterAlreadyReplayed):
        await replay_dead_letter(consumer, "partner-counts", parked.id, count_event)


async def test_a_consumer_group_commits_offsets_after_the_effects_and_the_next_member_carries_on(
    broker: EmbeddedBroker, topic: str, sqlite_store: EventStore, sqlite: AsyncEngine
) -> None:
    consumer = await consumer_db(sqlite)
    partners = [f"p{i}" for i in range(6)]
    group = dict(manual_assignment=False, session_timeout_ms=2000, heartbeat_interval_ms=300)
    async with relaying(sqlite_store, broker.bootstrap, topic):
        async with subscribed(sqlite_store, consumer, broker.bootstrap, topic, **group) as first:
            await first.wait_caught_up(10)
            await append_many(sqlite_store, partners, per_partner=3)
            expected = await expected_counts(sqlite_store)
            await wait_until(lambda: _equals(consumer, expected), timeout=20, message="the group member applied all")
            assert first.applied == 18
        # Offsets are committed once the effects are: the next member need not re-read.
        assert await committed_offsets(broker.bootstrap, first.group_id, topic) == 18

        async with subscribed(sqlite_store, consumer, broker.bootstrap, topic, **group) as second:
            await append_many(sqlite_store, partners, per_partner=1)
            expected = await expected_counts(sqlite_store)
            await wait_until(lambda: _equals(consumer, expected), timeout=20, message="the next member applied the rest")
            # The catch-up on start applied the new events or Kafka did; nothing twice.
            assert second.applied == 6


async def committed_offsets(bootstrap: str, group_id: str, topic: str) -> int:
    """The sum of the group's committed offsets over `topic`'s partitions."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    await reader.start()
    try:
        return sum([await reader.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS)])
    finally:
        await reader.stop()


async def test_offsets_are_committed_on_an_interval_and_handed_over_on_close(
    broker: EmbeddedBroker, topic: str, sqlite_store: EventStore, sqlite: AsyncEngine
) -> None:
    consumer = await consumer_db(sqlite)
    group = dict(manual_assignment=False, session_timeout_ms=2000, heartbeat_interval_ms=300)
    async with relaying(sqlite_store, broker.bootstrap, topic):
        async with subscribed(
            sqlite_store, consumer, broker.bootstrap, topic, offset_commit_interval=3600, **group
        ) as subscription:
            await subscription.wait_caught_up(10)
            await append_many(sqlite_store, ["p0", "p1", "p2"], per_partner=2)
            await wait_until(lambda: _equals(consumer, {"p0": 2, "p1": 2, "p2": 2}), timeout=20, message="applied")
            # The first batch commits at once (a new member finds where the group got to)...
            first = await committed_offsets(broker.bootstrap, subscription.group_id, topic)
            assert 0 < first <= 6

            await append_many(sqlite_store, ["p3", "p4", "p5"], per_partner=2)
            expected = await expected_counts(sqlite_store)
            await wait_until(lambda: _equals(consumer, expected), timeout=20, message="the rest applied")
            # ... the next ones wait for the interval: the checkpoints are what count.
            assert await committed_offsets(broker.bootstrap, subscription.group_id, topic) == first
            assert subscription.applied == 12
        # Closing commits what was read, so the next member does not read it again.
        assert await committed_offsets(broker.bootstrap, subscription.group_id, topic) == 12


async def test_one_trace_runs_from_the_origin_through_the_relay_into_the_consumer(
    broker: EmbeddedBroker, topic: str, sqlite_store: EventStore, sqlite: AsyncEngine
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    consumer = await consumer_db(sqlite)
    origin_trace, origin_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    metadata = EventMetadata(traceparent=f"00-{origin_trace}-{origin_span}-01")

    async with subscribed(sqlite_store, consumer, broker.bootstrap, topic, tracer_provider=provider) as subscription:
        await subscription.wait_caught_up(10)
        async with relaying(sqlite_store, broker.bootstrap, topic, tracer_provider=provider):
            await sqlite_store.append(
                stream_id="partner-p1", expected_version=0, events=[applied("p1")], metadata=metadata
            )
            await wait_until(lambda: _equals(consumer, {"p1": 1}), message="applied")

    spans = exporter.get_finished_spans()
    [producer] = [s for s in spans if s.kind == SpanKind.PRODUCER]
    [processed] = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert producer.name == f"send {topic}" and processed.name == f"process {topic}"
    for span in (producer, processed):
        assert format(span.context.trace_id, "032x") == origin_trace
        assert span.parent is not None and format(span.parent.span_id, "016x") == origin_span
    assert [link.context.span_id for link in processed.links] == [producer.context.span_id]
    assert processed.attributes is not None and processed.attributes["partnerhub.delivery"] == "kafka"
    provider.shutdown()


@pytest.mark.postgres
async def test_two_replicas_reading_every_partition_apply_each_event_once(
    broker: EmbeddedBroker, topic: str, sqlite_store: EventStore, postgres_url: str
) -> None:
    engine, drop = await postgres_engine(postgres_url)
    consumer = await consumer_db(engine)
    try:
        async with (
            relaying(sqlite_store, broker.bootstrap, topic),
            subscribed(sqlite_store, consumer, broker.bootstrap, topic) as first,
            subscribed(sqlite_store, consumer, broker.bootstrap, topic) as second,
        ):
            await append_many(sqlite_store, [f"p{i}" for i in range(12)], per_partner=5)
            expected = await expected_counts(sqlite_store)
            await wait_until(lambda: _equals(consumer, expected), message="both replicas done")
            await wait_until(lambda: first.applied + second.applied >= 60, message="applied counted")
            assert first.applied + second.applied == 60
        assert await counts(consumer) == expected
    finally:
        await drop()
