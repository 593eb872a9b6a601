"""Kafka helpers and the embedded broker, measured against a real Tansu process."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from events.broker import EmbeddedBroker
from events.kafka import (
    TopicMismatch,
    broker_reachable,
    ensure_topics,
    make_producer,
    partition_for,
    topic_partitions,
)


@pytest.mark.parametrize("partitions", [6, 4])
async def test_partition_for_matches_where_the_broker_puts_each_key(
    broker: EmbeddedBroker, topic: str, partitions: int
) -> None:
    await ensure_topics(broker.bootstrap, [topic], partitions)
    keys = [f"partner-{uuid.uuid4()}".encode() for _ in range(150)] + [b"", b"a", b"\xff\x00\x10"]
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        # aiokafka's default partitioner decides; the broker reports where each record went.
        futures = [await producer.send(topic, value=b"v", key=key) for key in keys]
        placed = [(await future).partition for future in futures]
    finally:
        await producer.stop()

    assert placed == [partition_for(key, partitions) for key in keys]
    assert len(set(placed)) == partitions


async def test_ensure_topics_creates_with_the_configured_count_once(broker: EmbeddedBroker, topic: str) -> None:
    other = topic.replace(".events", ".other")

    assert await ensure_topics(broker.bootstrap, [topic, other], 6) == {topic, other}
    assert await ensure_topics(broker.bootstrap, [topic, other], 6) == set()

    counts = await topic_partitions(broker.bootstrap)
    assert counts[topic] == 6 and counts[other] == 6


async def test_a_topic_auto_created_by_a_metadata_request_is_detected_and_repaired(
    broker: EmbeddedBroker, topic: str
) -> None:
    # Measured Tansu behaviour this module exists for: merely asking for an unknown
    # topic's metadata creates it, with 4 partitions.
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert (await topic_partitions(broker.bootstrap))[topic] == 4

    with pytest.raises(TopicMismatch):
        await ensure_topics(broker.bootstrap, [topic], 6)
    assert await ensure_topics(broker.bootstrap, [topic], 6, recreate_mismatched=True) == {topic}

    assert (await topic_partitions(broker.bootstrap))[topic] == 6


async def test_idempotent_producers_fail_on_tansu_so_ours_are_not(broker: EmbeddedBroker, topic: str) -> None:
    await ensure_topics(broker.bootstrap, [topic], 2)
    idempotent = make_producer(broker.bootstrap, enable_idempotence=True, request_timeout_ms=3000)
    with pytest.raises(KafkaError, match="UnknownError"):
        try:
            await asyncio.wait_for(idempotent.start(), 10)
        finally:
            await idempotent.stop()

    producer = make_producer(broker.bootstrap)
    await producer.start()
    try:
        metadata = await producer.send_and_wait(topic, b"v", key=b"k")
    finally:
        await producer.stop()
    assert metadata.partition == partition_for(b"k", 2)


async def test_a_fetch_beyond_the_end_answers_nothing_but_reports_the_high_watermark(
    broker: EmbeddedBroker, topic: str
) -> None:
    # What subscriptions rely on to notice a broker that restarted empty: no
    # OffsetOutOfRange, but the fetch response's high watermark is right.
    await ensure_topics(broker.bootstrap, [topic], 1)
    producer = make_producer(broker.bootstrap)
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(topic, b"v", key=b"k", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 10)
        received = []
        deadline = asyncio.get_running_loop().time() + 5
        while consumer.highwater(tp) is None and asyncio.get_running_loop().time() < deadline:
            received += (await consumer.getmany(timeout_ms=200)).get(tp, [])
        assert received == []
        assert consumer.highwater(tp) == 3 and await consumer.position(tp) == 10
    finally:
        await consumer.stop()


async def test_a_restarted_broker_acknowledges_records_for_topics_it_does_not_have(
    tmp_path: Path, topic: str
) -> None:
    # Why the relay checks its topic before it moves its cursor.
    broker = EmbeddedBroker(log_dir=tmp_path)
    await broker.start()
    producer = make_producer(broker.bootstrap)
    try:
        await ensure_topics(broker.bootstrap, [topic], 2)
        await producer.start()
        await producer.send_and_wait(topic, b"before", key=b"k", partition=1)
        await broker.stop()
        await broker.start()

        acknowledged = await asyncio.wait_for(producer.send_and_wait(topic, b"after", key=b"k", partition=1), 15)

        assert acknowledged.partition == 1
        assert topic not in await topic_partitions(broker.bootstrap)
    finally:
        await producer.stop()
        await broker.stop()


async def test_broker_reachable_tells_a_live_broker_from_a_closed_port(broker: EmbeddedBroker) -> None:
    assert await broker_reachable(broker.bootstrap, timeout=2.0)
    assert not await broker_reachable("127.0.0.1:1", timeout=0.5)


async def test_embedded_broker_restarts_empty_on_the_same_port(tmp_path: Path, topic: str) -> None:
    broker = EmbeddedBroker(log_dir=tmp_path)
    async with broker:
        port = broker.port
        pid = broker.pid
        await ensure_topics(broker.bootstrap, [topic], 3)
        assert topic in await topic_partitions(broker.bootstrap)
    assert not broker.running
    assert not await broker_reachable(f"127.0.0.1:{port}", timeout=0.5)

    async with broker:
        assert broker.port == port and broker.pid != pid
        assert topic not in await topic_partitions(broker.bootstrap)

    assert broker.log_path.parent == tmp_path
    assert "listening on" in broker.log_path.read_text()


def test_the_cli_can_start_and_stop_it_without_an_event_loop(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_dir=tmp_path)
    broker.start_blocking()
    try:
        assert broker.running
        assert asyncio.run(broker_reachable(broker.bootstrap))
    finally:
        broker.stop_blocking()
    assert not broker.running and broker.pid is None
