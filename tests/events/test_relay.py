"""The relay against a real broker: every event once per partition, in order, CloudEvents-readable."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from events.broker import EmbeddedBroker
from events.catalog import PartnerAgreementSigned, SlaTerms
from events.envelope import EventMetadata, RecordedEvent
from events.kafka import partition_for, topic_partitions
from events.relay import PREV_POSITION_HEADER, Relay, kafka_record
from events.store import EventStore
from tests.events.conftest import (
    append_many,
    applied,
    postgres_engine,
    read_topic,
    utcnow,
    wait_until,
)

PARTITIONS = 6


def positions_by_partition(records: list[Any]) -> dict[int, list[int]]:
    by_partition: dict[int, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition.setdefault(record.partition, []).append(int(dict(record.headers)["ce_sequence"]))
    return by_partition


async def test_every_event_reaches_kafka_once_in_position_order_per_partition(
    broker: EmbeddedBroker, topic: str, store: EventStore
) -> None:
    partners = [f"p{i}" for i in range(20)]
    await append_many(store, partners, per_partner=5)
    relay = Relay(
        store, bootstrap=broker.bootstrap, topic=topic, partitions=PARTITIONS, engine=store.engine, batch_size=37
    )
    await relay.start()
    try:
        await wait_until(lambda: relay.cursor == 100, message="the backlog relayed")
        await append_many(store, partners, per_partner=2)  # while it waits for appends
        await wait_until(lambda: relay.cursor == 140, message="new appends relayed")
        assert await relay.lag() == 0
    finally:
        await relay.stop()

    records = await read_topic(broker.bootstrap, topic, PARTITIONS, count=140)
    assert len(records) == 140
    for record in records:
        assert record.partition == partition_for(record.key, PARTITIONS)
        assert dict(record.headers)["ce_partitionkey"] == record.key
    by_partition = positions_by_partition(records)
    assert sorted(p for positions in by_partition.values() for p in positions) == list(range(1, 141))
    for positions in by_partition.values():
        assert positions == sorted(positions)
    # Each record names its predecessor in the partition (how consumers notice lost records).
    for record in records:
        headers = dict(record.headers)
        positions = by_partition[record.partition]
        index = positions.index(int(headers["ce_sequence"]))
        assert int(headers[PREV_POSITION_HEADER]) == (positions[index - 1] if index else 0)
    assert await relay.persisted_cursor() == 140


async def test_the_next_batch_goes_out_while_the_cursor_write_waits_for_the_database(
    broker: EmbeddedBroker, topic: str, sqlite_store: EventStore
) -> None:
    # Another process holds SQLite's write lock: the relay's cursor write of its first
    # batch waits for it, and the second batch must not (it used to wait behind it).
    await append_many(sqlite_store, [f"p{i}" for i in range(10)], per_partner=1)
    database = sqlite_store.engine.url.database
    assert database is not None
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    relay = Relay(
        sqlite_store, bootstrap=broker.bootstrap, topic=topic, partitions=PARTITIONS, engine=sqlite_store.engine, batch_size=5
    )
    await relay.start()
    try:
        records = await read_topic(broker.bootstrap, topic, PARTITIONS, count=10)
        assert sorted(int(dict(r.headers)["ce_sequence"]) for r in records) == list(range(1, 11))
        assert await relay.persisted_cursor() == 0  # nothing written while the lock is held
    finally:
        other.rollback()
        other.close()
    try:
        await wait_until(lambda: relay.cursor == 10, message="both batches acknowledged")
        async def persisted() -> bool:
            return await relay.persisted_cursor() == 10

        await wait_until(persisted, message="the cursor written once the lock is free")
    finally:
        await relay.stop()


async def test_the_cloudevents_sdk_reads_our_records_as_the_events_appended(
    broker: EmbeddedBroker, topic: str, sqlite_store: EventStore
) -> None:
    metadata = EventMetadata(
        actor="ops-alice",
        correlation_id="req-42",
        causation_id="cmd-7",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    signed = PartnerAgreementSigned(
        partner_id="p-ünï",
        agreement_type="platform_integration",
        starts_on="2026-04-01",  # type: ignore[arg-type]
        ends_on="2028-03-31",  # type: ignore[arg-type]
        sla=SlaTerms(),
    )
    appended = await sqlite_store.append(
        stream_id="partner-p-ünï", expected_version=0, events=[applied("p-ünï", "Ünïcode Ltd"), signed], metadata=metadata
    )
    relay = Relay(sqlite_store, bootstrap=broker.bootstrap, topic=topic, partitions=PARTITIONS, engine=sqlite_store.engine)
    await relay.start()
    try:
        await wait_until(lambda: relay.cursor == 2, message="relayed")
    finally:
        await relay.stop()

    records = sorted(await read_topic(broker.bootstrap, topic, PARTITIONS, count=2), key=lambda r: r.offset)
    assert len(records) == 2
    for record, stored in zip(records, appended, strict=True):
        message = ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
        parsed = ce_kafka.from_binary(message, JSONFormat(), CloudEvent)
        assert parsed.get_attributes() == stored.to_cloudevent().get_attributes()
        assert parsed.get_data() == stored.data == stored.domain().payload()
        assert RecordedEvent.from_kafka(key=record.key, value=record.value, headers=record.headers) == stored
        # The SDK's own encoding and ours read back the same.
        key, value, headers = stored.to_kafka()
        sdk = ce_kafka.from_binary(ce_kafka.KafkaMessage(headers=dict(headers), key=key, value=value), JSONFormat(), CloudEvent)
        assert sdk.get_attributes() == parsed.get_attributes() and sdk.get_data() == parsed.get_data()
        assert (key, sorted(dict(headers))) == (kafka_record(stored)[0], sorted(dict(kafka_record(stored)[2])))
    assert dict(records[0].headers)["ce_traceparent"] == metadata.traceparent.encode()  # type: ignore[union-attr]


@pytest.mark.parametrize("outage", ["appends-during-outage", "restart-while-idle"])
async def test_the_relay_resumes_after_the_broker_restarts_empty(
    tmp_path: Path, topic: str, sqlite_store: EventStore, outage: str
) -> None:
    partners = [f"p{i}" for i in range(10)]
    broker = EmbeddedBroker(log_dir=tmp_path)
    await broker.start()
    relay = Relay(
        sqlite_store,
        bootstrap=broker.bootstrap,
        topic=topic,
        partitions=PARTITIONS,
        engine=sqlite_store.engine,
        topic_check_interval=0.3,
        max_backoff=0.5,
    )
    await relay.start()
    try:
        await append_many(sqlite_store, partners, per_partner=3)
        await wait_until(lambda: relay.cursor == 30, message="relayed before the outage")
        await broker.stop()
        if outage == "appends-during-outage":
            await append_many(sqlite_store, partners, per_partner=3)
            await broker.start()
        else:
            await broker.start()
            await append_many(sqlite_store, partners, per_partner=3)
        await wait_until(lambda: relay.cursor == 60, timeout=20, message="relayed after the restart")
    finally:
        await relay.stop()
        await broker.start()  # no-op when running; the records are read below
        try:
            assert (await topic_partitions(broker.bootstrap))[topic] == PARTITIONS
            records = await read_topic(broker.bootstrap, topic, PARTITIONS, count=30)
        finally:
            await broker.stop()

    # At least once: everything appended after the outage began is on the new broker;
    # a batch sent again after an error repeats records, but never sends an older
    # event after a newer one of its partition that came before it for the first time.
    by_partition = positions_by_partition(records)
    assert set(range(31, 61)) <= {p for positions in by_partition.values() for p in positions}
    for positions in by_partition.values():
        firsts = list(dict.fromkeys(positions))
        assert firsts == sorted(firsts)
    assert relay.errors >= 1
    for record in records:
        assert record.partition == partition_for(record.key, PARTITIONS)


@pytest.mark.postgres
async def test_only_the_lock_holder_relays_and_a_standby_takes_over(
    broker: EmbeddedBroker, topic: str, postgres_url: str
) -> None:
    engine_a, drop = await postgres_engine(postgres_url)
    store = EventStore(engine_a, source="onboarding", now=utcnow)

    def relay() -> Relay:
        return Relay(
            store, bootstrap=broker.bootstrap, topic=topic, partitions=PARTITIONS, engine=engine_a, lock_retry_interval=0.1
        )

    first, second = relay(), relay()
    try:
        await first.start()
        await second.start()
        await append_many(store, [f"p{i}" for i in range(10)], per_partner=5)
        await wait_until(lambda: first.cursor == 50 or second.cursor == 50, message="relayed")
        assert [first.active, second.active].count(True) == 1
        active, standby = (first, second) if first.active else (second, first)

        await active.stop()
        await append_many(store, [f"q{i}" for i in range(10)], per_partner=2)
        await wait_until(lambda: standby.cursor == 70, message="the standby took over")
    finally:
        await first.stop()
        await second.stop()
        await store.close()
        await drop()

    records = await read_topic(broker.bootstrap, topic, PARTITIONS, count=70)
    positions = sorted(int(dict(r.headers)["ce_sequence"]) for r in records)
    assert positions == list(range(1, 71))
